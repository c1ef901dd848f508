//! The checks of a RunPodSandbox request, made before anything of the pod exists: a bad field
//! is INVALID_ARGUMENT naming it and the cause, and nothing is created or changed. Also how
//! the pod agent's start-up failures that are the caller's doing (a sysctl the kernel refuses)
//! become the caller's error.

use std::net::IpAddr;
use std::path::{Component, Path};
use std::process::ExitStatus;

use crate::container::validate::{no_nul, resources};
use crate::cri;
use crate::error::{Error, Result};

use super::record::SandboxRecord;
use super::{files, sysctl};

/// The longest pod name, namespace or uid: a Kubernetes name (a DNS subdomain). They go to
/// the CNI plugins in one environment variable, which the kernel bounds.
const METADATA_MAX: usize = 253;
/// The longest hostname the kernel takes (`__NEW_UTS_LEN`).
pub const HOSTNAME_MAX: usize = 64;
/// The longest file name (`NAME_MAX`): one component of a cgroup path.
const NAME_MAX: usize = 255;
/// `PATH_MAX`, with its terminating NUL.
const PATH_MAX: usize = 4096;
/// What a cgroup parent leaves room for: the hierarchy's mount point and controller
/// (`/sys/fs/cgroup/net_cls,net_prio/`), the sandbox's or container's own cgroup
/// (`/crius-<12 hex>`) and the longest interface file name written in it.
const CGROUP_PATH_ROOM: usize = 128;
/// The longest cgroup parent accepted.
pub const CGROUP_PARENT_MAX: usize = PATH_MAX - CGROUP_PATH_ROOM;

/// Checks a RunPodSandbox request; the first bad field is the error.
pub fn pod_config(config: &cri::PodSandboxConfig, runtime_handler: &str) -> Result<()> {
    metadata(config.metadata.as_ref())?;
    runtime_handler_is_default(runtime_handler)?;
    let probe = SandboxRecord::new(String::new(), config.clone(), String::new(), 0);
    hostname(config, !probe.host_network())?;
    log_directory(&config.log_directory)?;
    string_map("config.labels", &config.labels)?;
    string_map("config.annotations", &config.annotations)?;
    if let Some(dns) = &config.dns_config {
        dns_config(dns)?;
    }
    for (i, mapping) in config.port_mappings.iter().enumerate() {
        port_mapping(&format!("config.port_mappings[{i}]"), mapping)?;
    }
    if let Some(linux) = &config.linux {
        linux_config(linux, &probe)?;
    }
    probe
        .cgroup_parent()
        .map_err(|reason| Error::invalid("config.linux.cgroup_parent", reason))?;
    Ok(())
}

fn metadata(meta: Option<&cri::PodSandboxMetadata>) -> Result<()> {
    let meta = meta.ok_or_else(|| Error::invalid("config.metadata", "missing"))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        let field = format!("config.metadata.{field}");
        if value.is_empty() {
            return Err(Error::invalid(field, "empty"));
        }
        no_nul(&field, value)?;
        if value.len() > METADATA_MAX {
            return Err(Error::invalid(
                field,
                format!(
                    "{} bytes long; at most {METADATA_MAX} (a Kubernetes name)",
                    value.len()
                ),
            ));
        }
        // CNI plugins get them as `K8S_POD_NAME=<name>;…` in CNI_ARGS.
        if value.contains([';', '=']) {
            return Err(Error::invalid(
                field,
                format!("{value:?} has ';' or '=', which CNI_ARGS cannot carry"),
            ));
        }
    }
    Ok(())
}

fn runtime_handler_is_default(runtime_handler: &str) -> Result<()> {
    if runtime_handler.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        "runtime_handler",
        format!("{runtime_handler:?} is not a runtime handler of crius (only the default, \"\")"),
    ))
}

/// The hostname as given: no NUL, at most 64 bytes. In a UTS namespace of its own the pod's
/// hostname (the pod name when none is given) goes into /etc/hostname and /etc/hosts and onto
/// the agent's command line, so it has no whitespace or control characters and does not start
/// with '-'.
fn hostname(config: &cri::PodSandboxConfig, own_uts: bool) -> Result<()> {
    no_nul("config.hostname", &config.hostname)?;
    if config.hostname.len() > HOSTNAME_MAX {
        return Err(Error::invalid(
            "config.hostname",
            format!(
                "{} bytes long; the kernel takes at most {HOSTNAME_MAX}",
                config.hostname.len()
            ),
        ));
    }
    if !own_uts {
        return Ok(());
    }
    let field = if config.hostname.is_empty() {
        "config.metadata.name (the hostname when none is given)"
    } else {
        "config.hostname"
    };
    let effective = files::hostname(config);
    if effective.starts_with('-')
        || effective
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            field,
            format!(
                "{effective:?} is not a hostname (whitespace, control characters or a leading '-')"
            ),
        ));
    }
    Ok(())
}

/// The pod's log directory: none, or an absolute path without `..`.
fn log_directory(dir: &str) -> Result<()> {
    let field = "config.log_directory";
    if dir.is_empty() {
        return Ok(());
    }
    no_nul(field, dir)?;
    if !dir.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{dir:?} is not an absolute path"),
        ));
    }
    if Path::new(dir)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(Error::invalid(field, format!("{dir:?} contains \"..\"")));
    }
    Ok(())
}

/// Labels and annotations: no NUL in keys or values.
pub fn string_map(field: &str, map: &std::collections::HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        no_nul(&format!("{field} key {key:?}"), key)?;
        no_nul(&format!("{field}[{key:?}]"), &map[key])?;
    }
    Ok(())
}

/// resolv.conf lines: nameservers are IP addresses, searches and options single words.
fn dns_config(dns: &cri::DnsConfig) -> Result<()> {
    for (i, server) in dns.servers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            return Err(Error::invalid(
                format!("config.dns_config.servers[{i}]"),
                format!("{server:?} is not an IP address"),
            ));
        }
    }
    for (list, values) in [("searches", &dns.searches), ("options", &dns.options)] {
        for (i, value) in values.iter().enumerate() {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::invalid(
                    format!("config.dns_config.{list}[{i}]"),
                    format!("{value:?} is not one word without control characters"),
                ));
            }
        }
    }
    Ok(())
}

/// A port mapping: container port 1-65535, host port 0 (none) or 1-65535, a known protocol,
/// and a host IP that is an address when given.
pub fn port_mapping(field: &str, mapping: &cri::PortMapping) -> Result<()> {
    if !(1..=65535).contains(&mapping.container_port) {
        return Err(Error::invalid(
            format!("{field}.container_port"),
            format!("{} is not a port (1-65535)", mapping.container_port),
        ));
    }
    if !(0..=65535).contains(&mapping.host_port) {
        return Err(Error::invalid(
            format!("{field}.host_port"),
            format!(
                "{} is not a port (1-65535, or 0 for none)",
                mapping.host_port
            ),
        ));
    }
    if cri::Protocol::try_from(mapping.protocol).is_err() {
        return Err(Error::invalid(
            format!("{field}.protocol"),
            format!(
                "{} is not a protocol (TCP = 0, UDP = 1, SCTP = 2)",
                mapping.protocol
            ),
        ));
    }
    if !mapping.host_ip.is_empty() && mapping.host_ip.parse::<IpAddr>().is_err() {
        return Err(Error::invalid(
            format!("{field}.host_ip"),
            format!("{:?} is not an IP address", mapping.host_ip),
        ));
    }
    Ok(())
}

fn linux_config(linux: &cri::LinuxPodSandboxConfig, probe: &SandboxRecord) -> Result<()> {
    cgroup_parent(&linux.cgroup_parent)?;
    if let Some(security) = &linux.security_context
        && let Some(options) = &security.namespace_options
    {
        let field = "config.linux.security_context.namespace_options";
        namespace_options(field, options)?;
        if super::userns::pod_mappings(field, options.userns_options.as_ref())?.is_some() {
            super::userns::check_shape(field, options)?;
        }
    }
    let mut names: Vec<&String> = linux.sysctls.keys().collect();
    names.sort();
    for name in names {
        sysctl_setting(name, &linux.sysctls[name], probe)?;
    }
    if let Some(r) = &linux.resources {
        resources("config.linux.resources", r)?;
    }
    if let Some(r) = &linux.overhead {
        resources("config.linux.overhead", r)?;
    }
    Ok(())
}

/// The cgroup parent: no NUL, no empty, `.` or `..` components, each at most NAME_MAX bytes,
/// and short enough that the pod's and its containers' cgroup files stay under PATH_MAX.
pub fn cgroup_parent(parent: &str) -> Result<()> {
    let field = "config.linux.cgroup_parent";
    no_nul(field, parent)?;
    if parent.len() > CGROUP_PARENT_MAX {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes long; at most {CGROUP_PARENT_MAX} fit (PATH_MAX {PATH_MAX} less room for \
                 the cgroup mount and the pod's own cgroup)",
                parent.len()
            ),
        ));
    }
    let trimmed = parent.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(());
    }
    for component in trimmed.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(Error::invalid(
                field,
                format!("{parent:?} has an empty, \".\" or \"..\" component"),
            ));
        }
        if component.len() > NAME_MAX {
            return Err(Error::invalid(
                field,
                format!(
                    "a component is {} bytes long; at most {NAME_MAX} (NAME_MAX)",
                    component.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Namespace modes are values the CRI defines.
pub fn namespace_options(field: &str, options: &cri::NamespaceOption) -> Result<()> {
    for (name, mode) in [
        ("network", options.network),
        ("pid", options.pid),
        ("ipc", options.ipc),
    ] {
        if cri::NamespaceMode::try_from(mode).is_err() {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                format!("{mode} is not a namespace mode (POD, CONTAINER, NODE, TARGET)"),
            ));
        }
    }
    Ok(())
}

/// One sysctl: a well-formed name the pod may set (namespaced by a namespace of its own) that
/// this kernel has, and a value without NUL. Whether the kernel takes the value only writing
/// it tells: the pod agent does, and a refusal becomes [`agent_exit_error`].
fn sysctl_setting(name: &str, value: &str, probe: &SandboxRecord) -> Result<()> {
    let field = format!("config.linux.sysctls[{name:?}]");
    no_nul(&field, name)?;
    no_nul(&field, value)?;
    if name.is_empty() || name.contains('=') || name.split(['.', '/']).any(str::is_empty) {
        return Err(Error::invalid(
            field,
            "not a sysctl name (dot-separated, no empty parts, no '=')",
        ));
    }
    if let Some(reason) = sysctl::refusal(name, probe.host_network(), probe.host_ipc()) {
        return Err(Error::invalid(field, reason));
    }
    if !Path::new(&sysctl::proc_path(name)).is_file() {
        return Err(Error::invalid(
            field,
            format!(
                "no such sysctl on this kernel ({} does not exist)",
                sysctl::proc_path(name)
            ),
        ));
    }
    Ok(())
}

/// The error for a pod agent that exited while starting: a sysctl the kernel refused is the
/// caller's mistake, named; anything else is the runtime's.
pub fn agent_exit_error(status: ExitStatus, log: &str) -> Error {
    match sysctl::Refused::from_agent_exit(status, log) {
        Some(refused) => Error::invalid(
            format!("config.linux.sysctls[{:?}]", refused.name),
            format!("the kernel refused the value: {}", refused.reason),
        ),
        None => Error::Internal(format!("pod agent exited ({status}): {}", log.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::process::ExitStatusExt;

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            log_directory: "/var/log/pods/default_web_u1".into(),
            ..Default::default()
        }
    }

    fn field_of(config: &cri::PodSandboxConfig) -> String {
        match pod_config(config, "") {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn with_linux(edit: impl FnOnce(&mut cri::LinuxPodSandboxConfig)) -> cri::PodSandboxConfig {
        let mut c = config();
        edit(c.linux.get_or_insert_with(Default::default));
        c
    }

    fn with_port(mapping: cri::PortMapping) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            port_mappings: vec![mapping],
            ..config()
        }
    }

    #[test]
    fn a_good_config_passes() {
        pod_config(&config(), "").unwrap();
        let c = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    container_port: 80,
                    host_port: 8080,
                    protocol: cri::Protocol::Tcp as i32,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    container_port: 65535,
                    host_port: 0,
                    protocol: cri::Protocol::Sctp as i32,
                    host_ip: "::1".into(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..config()
        };
        pod_config(&c, "").unwrap();
    }

    #[test]
    fn ports_out_of_range_or_unknown_protocols_are_refused() {
        let good = cri::PortMapping {
            container_port: 80,
            host_port: 8080,
            ..Default::default()
        };
        for (mapping, field) in [
            (
                cri::PortMapping {
                    host_port: 70000,
                    ..good.clone()
                },
                "config.port_mappings[0].host_port",
            ),
            (
                cri::PortMapping {
                    host_port: 65536,
                    ..good.clone()
                },
                "config.port_mappings[0].host_port",
            ),
            (
                cri::PortMapping {
                    host_port: -1,
                    ..good.clone()
                },
                "config.port_mappings[0].host_port",
            ),
            (
                cri::PortMapping {
                    container_port: 0,
                    ..good.clone()
                },
                "config.port_mappings[0].container_port",
            ),
            (
                cri::PortMapping {
                    container_port: 65536,
                    ..good.clone()
                },
                "config.port_mappings[0].container_port",
            ),
            (
                cri::PortMapping {
                    protocol: 7,
                    ..good.clone()
                },
                "config.port_mappings[0].protocol",
            ),
            (
                cri::PortMapping {
                    host_ip: "300.1.1.1".into(),
                    ..good.clone()
                },
                "config.port_mappings[0].host_ip",
            ),
        ] {
            assert_eq!(field_of(&with_port(mapping)), field);
        }
    }

    #[test]
    fn names_and_hostnames() {
        let mut c = config();
        c.metadata.as_mut().unwrap().namespace = "a\0b".into();
        assert_eq!(field_of(&c), "config.metadata.namespace");
        let mut c = config();
        c.metadata.as_mut().unwrap().uid.clear();
        assert_eq!(field_of(&c), "config.metadata.uid");
        let mut c = config();
        c.metadata.as_mut().unwrap().name = "n".repeat(254);
        assert_eq!(field_of(&c), "config.metadata.name");
        let mut c = config();
        c.metadata.as_mut().unwrap().name = "n".repeat(253);
        c.hostname = "h".into();
        pod_config(&c, "").unwrap();
        let mut c = config();
        c.metadata.as_mut().unwrap().name = "x;K8S_POD_NAMESPACE=kube-system".into();
        assert_eq!(field_of(&c), "config.metadata.name");
        let c = cri::PodSandboxConfig {
            hostname: "h".repeat(65),
            ..config()
        };
        assert_eq!(field_of(&c), "config.hostname");
        pod_config(
            &cri::PodSandboxConfig {
                hostname: "h".repeat(64),
                ..config()
            },
            "",
        )
        .unwrap();
        let c = cri::PodSandboxConfig {
            hostname: "a\0".into(),
            ..config()
        };
        assert_eq!(field_of(&c), "config.hostname");
        let c = cri::PodSandboxConfig {
            hostname: "web\n10.0.0.1 evil".into(),
            ..config()
        };
        assert_eq!(field_of(&c), "config.hostname");
        let mut c = cri::PodSandboxConfig {
            hostname: String::new(),
            ..config()
        };
        c.metadata.as_mut().unwrap().name = "a b".into();
        assert!(field_of(&c).starts_with("config.metadata.name"));
        assert!(matches!(
            pod_config(&config(), "kata"),
            Err(Error::InvalidArgument { field, .. }) if field == "runtime_handler"
        ));
    }

    #[test]
    fn log_directory_is_absolute() {
        for dir in ["var/log/pods", "/var/log/../../tmp", "/a\0"] {
            let c = cri::PodSandboxConfig {
                log_directory: dir.into(),
                ..config()
            };
            assert_eq!(field_of(&c), "config.log_directory", "{dir:?}");
        }
    }

    #[test]
    fn labels_annotations_and_dns() {
        let c = cri::PodSandboxConfig {
            labels: HashMap::from([("a".into(), "b\0".into())]),
            ..config()
        };
        assert_eq!(field_of(&c), "config.labels[\"a\"]");
        let c = cri::PodSandboxConfig {
            annotations: HashMap::from([("a\0".into(), "b".into())]),
            ..config()
        };
        assert!(field_of(&c).starts_with("config.annotations key"));
        let c = cri::PodSandboxConfig {
            dns_config: Some(cri::DnsConfig {
                servers: vec!["dns.example".into()],
                ..Default::default()
            }),
            ..config()
        };
        assert_eq!(field_of(&c), "config.dns_config.servers[0]");
        let c = cri::PodSandboxConfig {
            dns_config: Some(cri::DnsConfig {
                searches: vec!["a\nnameserver 1.2.3.4".into()],
                ..Default::default()
            }),
            ..config()
        };
        assert_eq!(field_of(&c), "config.dns_config.searches[0]");
    }

    #[test]
    fn cgroup_parents() {
        for parent in [
            "/kubepods/a\0b",
            "/kubepods//pod",
            "/kubepods/../x",
            "/kubepods/./x",
            "kubepods.slice",
        ] {
            let c = with_linux(|l| l.cgroup_parent = parent.into());
            assert_eq!(field_of(&c), "config.linux.cgroup_parent", "{parent:?}");
        }
        let long_component = format!("/kubepods/{}", "c".repeat(256));
        let c = with_linux(|l| l.cgroup_parent = long_component);
        assert_eq!(field_of(&c), "config.linux.cgroup_parent");
        let long_path = "/abc".repeat(CGROUP_PARENT_MAX / 4 + 1);
        let c = with_linux(|l| l.cgroup_parent = long_path);
        assert_eq!(field_of(&c), "config.linux.cgroup_parent");
        let fits = format!("/kubepods/{}", "c".repeat(255));
        pod_config(&with_linux(|l| l.cgroup_parent = fits), "").unwrap();
    }

    #[test]
    fn sysctls_must_exist_and_be_namespaced() {
        let sysctl = |name: &str, value: &str| {
            with_linux(|l| l.sysctls = HashMap::from([(name.to_string(), value.to_string())]))
        };
        // Present on every kernel with IPC namespaces.
        pod_config(&sysctl("kernel.shm_rmid_forced", "1"), "").unwrap();
        for (name, value) in [
            ("kernel.shm_rmid_forced", "1\0"),
            ("net.no_such_thing.at_all", "1"),
            ("net.ipv4", "1"),
            ("net..ipv4.ip_forward", "1"),
            ("net.ipv4.ip_forward=1", "1"),
            ("", "1"),
            ("vm.swappiness", "10"),
        ] {
            let field = field_of(&sysctl(name, value));
            assert!(
                field.starts_with("config.linux.sysctls["),
                "{name:?}: {field}"
            );
        }
    }

    #[test]
    fn namespace_modes_and_resources() {
        let c = with_linux(|l| {
            l.security_context = Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    ipc: 9,
                    ..Default::default()
                }),
                ..Default::default()
            })
        });
        assert_eq!(
            field_of(&c),
            "config.linux.security_context.namespace_options.ipc"
        );
        let c = with_linux(|l| {
            l.overhead = Some(cri::LinuxContainerResources {
                cpu_period: -5,
                ..Default::default()
            })
        });
        assert_eq!(field_of(&c), "config.linux.overhead.cpu_period");
    }

    #[test]
    fn a_refused_sysctl_is_the_callers_error() {
        let refused = sysctl::Refused {
            name: "net.core.somaxconn".into(),
            reason: "Invalid argument (os error 22)".into(),
        };
        let log = format!("some line\n{}\n", refused.log_line());
        let status = ExitStatus::from_raw(sysctl::REFUSED_EXIT_STATUS << 8);
        match agent_exit_error(status, &log) {
            Error::InvalidArgument { field, reason } => {
                assert_eq!(field, "config.linux.sysctls[\"net.core.somaxconn\"]");
                assert!(reason.contains("Invalid argument"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // The same line with another status is not trusted, nor another status alone.
        let failed = ExitStatus::from_raw(1 << 8);
        assert!(matches!(agent_exit_error(failed, &log), Error::Internal(_)));
        assert!(matches!(
            agent_exit_error(status, "crius pod-agent: bringing lo up: EPERM"),
            Error::Internal(_)
        ));
    }
}
