//! The systemd cgroup driver: pods and containers are placed the way kubelet's systemd driver
//! expects and runc and crun place them, in transient units systemd creates over D-Bus. A pod's
//! agent and each container get a scope (`crius-<id>.scope`, `Delegate=yes`) in the slice
//! kubelet names (`kubepods-burstable-pod<uid>.slice`; systemd makes a slice nobody has
//! started yet). Limits systemd knows are set as unit properties, so it never resets them;
//! those it does not know are written to the scope's files (the unit is delegated to us).

use std::time::Duration;

use futures_util::StreamExt;
use zbus::{OwnedObjectPath, Variant as Value};

use super::CgroupVersion;
use crate::cri;

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a unit's start or stop job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("connecting to systemd over the system bus: {0}")]
    Connect(zbus::Error),
    #[error("systemd: {method} {unit}: {source}")]
    Call {
        method: &'static str,
        unit: String,
        source: zbus::Error,
    },
    #[error("systemd: {what} of {unit} ended {result:?}")]
    Job {
        what: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd: {what} of {unit} did not finish within {secs}s", secs = JOB_TIMEOUT.as_secs())]
    Timeout { what: &'static str, unit: String },
}

impl SystemdError {
    /// systemd refused to start a unit because it exists already.
    pub fn is_unit_exists(&self) -> bool {
        matches!(self, SystemdError::Call { source: zbus::Error::MethodError(name, _, _), .. }
            if name.as_str() == "org.freedesktop.systemd1.UnitExists")
    }
}

/// A connection to systemd's manager.
pub struct Systemd {
    conn: zbus::Connection,
    version: CgroupVersion,
}

/// `name=value` unit properties, as StartTransientUnit and SetUnitProperties take them.
pub type Properties = Vec<(&'static str, Value<'static>)>;

impl Systemd {
    /// Connects to the system bus and asks systemd for its job signals.
    pub async fn connect(version: CgroupVersion) -> Result<Systemd, SystemdError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(SystemdError::Connect)?;
        let systemd = Systemd { conn, version };
        systemd.call("Subscribe", "", &()).await?;
        Ok(systemd)
    }

    async fn call<B>(
        &self,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> Result<zbus::Message, SystemdError>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.conn
            .call_method(Some(DESTINATION), PATH, Some(MANAGER), method, body)
            .await
            .map_err(|source| SystemdError::Call {
                method,
                unit: unit.to_string(),
                source,
            })
    }

    /// Starts a transient scope holding `pids` in `slice`, delegated to us, with `limits`.
    pub async fn start_scope(
        &self,
        unit: &str,
        slice: &str,
        pids: &[u32],
        limits: Option<&cri::LinuxContainerResources>,
    ) -> Result<(), SystemdError> {
        let mut properties: Properties = vec![
            ("Description", Value::from(format!("crius {unit}"))),
            ("Slice", Value::from(slice.to_string())),
            ("PIDs", Value::from(pids.to_vec())),
            ("Delegate", Value::from(true)),
            // No ordering on shutdown targets: pods go with the pod, not with the boot.
            ("DefaultDependencies", Value::from(false)),
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        if let Some(limits) = limits {
            properties.extend(resource_properties(self.version, limits));
        }
        self.start_transient(unit, properties).await
    }

    /// Starts a transient slice with `limits` (a pod's parent, when nobody made it).
    pub async fn start_slice(
        &self,
        unit: &str,
        limits: Option<&cri::LinuxContainerResources>,
    ) -> Result<(), SystemdError> {
        let mut properties: Properties = vec![
            ("Description", Value::from(format!("crius {unit}"))),
            ("DefaultDependencies", Value::from(false)),
        ];
        if let Some(limits) = limits {
            properties.extend(resource_properties(self.version, limits));
        }
        self.start_transient(unit, properties).await
    }

    async fn start_transient(
        &self,
        unit: &str,
        properties: Properties,
    ) -> Result<(), SystemdError> {
        let jobs = self.job_signals(unit).await?;
        let aux: Vec<(&str, Properties)> = Vec::new();
        let reply = self
            .call("StartTransientUnit", unit, &(unit, "fail", properties, aux))
            .await?;
        let job = job_path(&reply, "StartTransientUnit", unit)?;
        wait_job(jobs, &job, "start", unit).await
    }

    /// Sets `limits` on a running unit (UpdateContainerResources), for this boot only.
    pub async fn set_limits(
        &self,
        unit: &str,
        limits: &cri::LinuxContainerResources,
    ) -> Result<(), SystemdError> {
        let properties = resource_properties(self.version, limits);
        if properties.is_empty() {
            return Ok(());
        }
        self.call("SetUnitProperties", unit, &(unit, true, properties))
            .await
            .map(|_| ())
    }

    /// Stops a unit and forgets it; a unit systemd does not know is already gone.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), SystemdError> {
        let jobs = self.job_signals(unit).await?;
        match self.call("StopUnit", unit, &(unit, "replace")).await {
            Ok(reply) => {
                let job = job_path(&reply, "StopUnit", unit)?;
                wait_job(jobs, &job, "stop", unit).await?;
            }
            Err(e) if is_no_such_unit(&e) => {}
            Err(e) => return Err(e),
        }
        match self.call("ResetFailedUnit", unit, &(unit,)).await {
            Err(e) if !is_no_such_unit(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether systemd has `unit` loaded and active.
    pub async fn is_active(&self, unit: &str) -> bool {
        let Ok(reply) = self.call("GetUnit", unit, &(unit,)).await else {
            return false;
        };
        let Ok(path) = reply.body().deserialize::<OwnedObjectPath>() else {
            return false;
        };
        let state = self
            .conn
            .call_method(
                Some(DESTINATION),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Unit", "ActiveState"),
            )
            .await;
        state
            .ok()
            .and_then(|m| m.body().deserialize::<zbus::OwnedVariant>().ok())
            .and_then(|v| String::try_from(v).ok())
            .is_some_and(|s| s == "active")
    }

    /// The manager's JobRemoved signals, subscribed to before the job exists so its end is
    /// never missed.
    async fn job_signals(&self, unit: &str) -> Result<zbus::MessageStream, SystemdError> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(DESTINATION)
            .interface(MANAGER)
            .member("JobRemoved")
            .build();
        let rule = rule.map_err(|source| SystemdError::Call {
            method: "AddMatch",
            unit: unit.to_string(),
            source,
        })?;
        zbus::MessageStream::for_match_rule(rule, &self.conn, None)
            .await
            .map_err(|source| SystemdError::Call {
                method: "AddMatch",
                unit: unit.to_string(),
                source,
            })
    }
}

fn is_no_such_unit(e: &SystemdError) -> bool {
    matches!(e, SystemdError::Call { source: zbus::Error::MethodError(name, _, _), .. }
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

fn job_path(
    reply: &zbus::Message,
    method: &'static str,
    unit: &str,
) -> Result<OwnedObjectPath, SystemdError> {
    reply
        .body()
        .deserialize::<OwnedObjectPath>()
        .map_err(|source| SystemdError::Call {
            method,
            unit: unit.to_string(),
            source,
        })
}

/// Waits for JobRemoved of `job`; its result must be "done".
async fn wait_job(
    mut jobs: zbus::MessageStream,
    job: &OwnedObjectPath,
    what: &'static str,
    unit: &str,
) -> Result<(), SystemdError> {
    let ended = async {
        while let Some(Ok(message)) = jobs.next().await {
            // JobRemoved(u id, o job, s unit, s result)
            if let Ok((_, path, _, result)) = message
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
                && path == *job
            {
                return Some(result);
            }
        }
        None
    };
    match tokio::time::timeout(JOB_TIMEOUT, ended).await {
        Ok(Some(result)) if result == "done" => Ok(()),
        Ok(Some(result)) => Err(SystemdError::Job {
            what,
            unit: unit.to_string(),
            result,
        }),
        Ok(None) | Err(_) => Err(SystemdError::Timeout {
            what,
            unit: unit.to_string(),
        }),
    }
}

/// The unit properties for the CRI limits systemd knows (zero fields are left alone, as the
/// CRI means them). The rest (hugetlb, `unified` keys, swap on v1) are written to files.
pub fn resource_properties(version: CgroupVersion, r: &cri::LinuxContainerResources) -> Properties {
    let mut p: Properties = Vec::new();
    if r.cpu_shares > 0 {
        match version {
            CgroupVersion::V2 => p.push((
                "CPUWeight",
                Value::from(super::resources::shares_to_weight(r.cpu_shares as u64)),
            )),
            CgroupVersion::V1 => p.push(("CPUShares", Value::from(r.cpu_shares as u64))),
        }
    }
    if r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period as u64
        } else {
            100_000
        };
        // systemd takes the quota per second of wall time.
        let per_sec = (r.cpu_quota as u64).saturating_mul(1_000_000) / period;
        p.push(("CPUQuotaPerSecUSec", Value::from(per_sec)));
        p.push(("CPUQuotaPeriodUSec", Value::from(period)));
    }
    if r.memory_limit_in_bytes > 0 {
        let name = match version {
            CgroupVersion::V2 => "MemoryMax",
            CgroupVersion::V1 => "MemoryLimit",
        };
        p.push((name, Value::from(r.memory_limit_in_bytes as u64)));
    }
    if version == CgroupVersion::V2 {
        if let Some(mask) = cpu_list_mask(&r.cpuset_cpus) {
            p.push(("AllowedCPUs", Value::from(mask)));
        }
        if let Some(mask) = cpu_list_mask(&r.cpuset_mems) {
            p.push(("AllowedMemoryNodes", Value::from(mask)));
        }
    }
    p
}

/// A cpuset list (`0-3,8`) as the little-endian bit mask systemd's AllowedCPUs takes; None
/// for an empty or unreadable list (validation refused those already).
pub fn cpu_list_mask(list: &str) -> Option<Vec<u8>> {
    if list.trim().is_empty() {
        return None;
    }
    let mut mask: Vec<u8> = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ),
            None => {
                let n = part.trim().parse::<usize>().ok()?;
                (n, n)
            }
        };
        if first > last || last >= 8192 {
            return None;
        }
        for cpu in first..=last {
            if mask.len() <= cpu / 8 {
                mask.resize(cpu / 8 + 1, 0);
            }
            mask[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    Some(mask)
}

/// A slice's cgroup path: `kubepods-burstable-pod1.slice` is
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`, as systemd nests
/// slices by the dashes in their names. The root slice (`-.slice`) is the root.
pub fn slice_path(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a systemd slice name (the systemd cgroup driver takes slices like \
             kubepods-burstable-pod<uid>.slice)"
        ));
    };
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'\\'))
    {
        return Err(format!("{slice:?} is not a valid systemd slice name"));
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path.join("/"))
}

/// The scope of a pod's agent or of a container.
pub fn scope_name(id: &str) -> String {
    format!("crius-{id}.scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(
            slice_path("kubepods-burstable-pod1a2b.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice"
        );
        assert_eq!(slice_path("system.slice").unwrap(), "system.slice");
        assert_eq!(slice_path("-.slice").unwrap(), "");
        for bad in [
            "/kubepods/burstable",
            "kubepods",
            "a--b.slice",
            "-a.slice",
            "a/b.slice",
            ".slice",
        ] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_lists_become_masks() {
        assert_eq!(cpu_list_mask("0-3,8"), Some(vec![0x0f, 0x01]));
        assert_eq!(cpu_list_mask("1"), Some(vec![0x02]));
        assert_eq!(cpu_list_mask(""), None);
        assert_eq!(cpu_list_mask("3-1"), None);
    }

    #[test]
    fn limits_as_unit_properties() {
        let r = cri::LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        };
        let names = |p: &Properties| p.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let v2 = resource_properties(CgroupVersion::V2, &r);
        assert_eq!(
            names(&v2),
            [
                "CPUWeight",
                "CPUQuotaPerSecUSec",
                "CPUQuotaPeriodUSec",
                "MemoryMax",
                "AllowedCPUs"
            ]
        );
        assert_eq!(v2[0].1, Value::from(39u64));
        assert_eq!(v2[1].1, Value::from(500_000u64));
        let v1 = resource_properties(CgroupVersion::V1, &r);
        assert_eq!(
            names(&v1),
            [
                "CPUShares",
                "CPUQuotaPerSecUSec",
                "CPUQuotaPeriodUSec",
                "MemoryLimit"
            ]
        );
        assert!(resource_properties(CgroupVersion::V2, &Default::default()).is_empty());
    }
}
