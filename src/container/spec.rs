//! The container's process as kubelet and containerd define it, from the CRI ContainerConfig and
//! the image config: command line, environment, user and groups, capabilities, and the paths
//! hidden or made read-only by default. Pure functions, so every rule is unit-tested.

use std::collections::BTreeSet;

use crate::image::manifest::ContainerDefaults;

/// The command line: Kubernetes' `command` replaces the image's Entrypoint (and then its Cmd
/// too), `args` replaces its Cmd.
pub fn command_line(image: &ContainerDefaults, command: &[String], args: &[String]) -> Vec<String> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    match (command.is_empty(), args.is_empty()) {
        (true, true) => [entrypoint, cmd].concat(),
        (true, false) => [entrypoint, args.to_vec()].concat(),
        (false, true) => command.to_vec(),
        (false, false) => [command.to_vec(), args.to_vec()].concat(),
    }
}

/// The environment: the image's, then the config's, a later value replacing an earlier one of
/// the same name in place.
pub fn environment(image: &ContainerDefaults, config: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image.env.clone().unwrap_or_default();
    for (key, value) in config {
        let entry = format!("{key}={value}");
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => *existing = entry,
            None => out.push(entry),
        }
    }
    out
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The user's groups from the image's /etc/group plus the supplemental ones, sorted.
    pub additional_gids: Vec<u32>,
}

/// What the pod spec says about the user, beside the image's `User`.
#[derive(Debug, Clone, Default)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<i64>,
    pub run_as_username: &'a str,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: &'a [i64],
    /// SupplementalGroupsPolicy Strict: the image's /etc/group memberships are not added.
    pub strict_groups: bool,
}

/// Resolves the user against the image's /etc/passwd and /etc/group contents. The pod's
/// settings win over the image's `User` ("name", "uid", "name:group", "uid:gid").
pub fn resolve_user(
    request: &UserRequest,
    image_user: &str,
    passwd: &str,
    group: &str,
) -> Result<User, String> {
    let (image_user, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(String, u32, u32)> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && pred(&f) {
                Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    // The user: by uid or by name, from the pod or else from the image.
    let (name, uid, mut gid) = if let Some(uid) = request.run_as_user {
        let uid = u32::try_from(uid).map_err(|_| format!("run_as_user {uid} is out of range"))?;
        match passwd_entry(&|f| f[2].parse() == Ok(uid)) {
            Some((name, _, gid)) => (Some(name), uid, gid),
            None => (None, uid, 0),
        }
    } else {
        let wanted = if request.run_as_username.is_empty() {
            image_user
        } else {
            request.run_as_username
        };
        if wanted.is_empty() {
            (Some("root".to_string()), 0, 0)
        } else if let Ok(uid) = wanted.parse::<u32>() {
            match passwd_entry(&|f| f[2].parse() == Ok(uid)) {
                Some((name, _, gid)) => (Some(name), uid, gid),
                None => (None, uid, 0),
            }
        } else {
            let (name, uid, gid) = passwd_entry(&|f| f[0] == wanted)
                .ok_or_else(|| format!("user {wanted:?} is not in the image's /etc/passwd"))?;
            (Some(name), uid, gid)
        }
    };
    // The group: the pod's, else the image's `user:group`, else the user's primary group.
    if let Some(g) = request.run_as_group {
        gid = u32::try_from(g).map_err(|_| format!("run_as_group {g} is out of range"))?;
    } else if let Some(g) = image_group.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    let mut additional: BTreeSet<u32> = BTreeSet::new();
    if let Some(name) = name.as_ref().filter(|_| !request.strict_groups) {
        additional.extend(
            group_entries(group)
                .filter(|(_, _, members)| members.iter().any(|m| m == name))
                .map(|(_, gid, _)| gid),
        );
    }
    for g in request.supplemental_groups {
        additional.insert(
            u32::try_from(*g).map_err(|_| format!("supplemental group {g} is out of range"))?,
        );
    }
    additional.remove(&gid);
    // (uid_t)-1 means "leave unchanged" to the kernel's set*id calls; no process can have it.
    if let Some(id) = [uid, gid]
        .into_iter()
        .chain(additional.iter().copied())
        .find(|id| *id == u32::MAX)
    {
        return Err(format!("{id} is not a valid user or group id"));
    }
    additional.remove(&gid);
    // The primary group is a supplementary group too, first, as containerd and Docker set it
    // (so `id -G` and ContainerStatus.user list it).
    Ok(User {
        uid,
        gid,
        additional_gids: std::iter::once(gid).chain(additional).collect(),
    })
}

/// /etc/group lines as (name, gid, members).
fn group_entries(group: &str) -> impl Iterator<Item = (String, u32, Vec<String>)> + '_ {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| {
                m.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some((f[0].to_string(), f[2].parse().ok()?, members))
    })
}

/// The capabilities a container gets by default, as containerd grants them.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The default set with the pod's adds and drops ("ALL" allowed in either; names with or
/// without the CAP_ prefix). `all_known` is every capability this kernel has.
pub fn capabilities(
    add: &[String],
    drop: &[String],
    all_known: &[&str],
) -> Result<Vec<String>, String> {
    let normalize = |c: &str| -> Result<String, String> {
        let upper = c.to_ascii_uppercase();
        let name = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if name == "CAP_ALL" || all_known.contains(&name.as_str()) {
            Ok(name)
        } else {
            Err(format!("unknown capability {c:?}"))
        }
    };
    let add: Vec<String> = add.iter().map(|c| normalize(c)).collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop
        .iter()
        .map(|c| normalize(c))
        .collect::<Result<_, _>>()?;
    let mut set: BTreeSet<String> = if add.iter().any(|c| c == "CAP_ALL") {
        all_known.iter().map(|c| c.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    };
    if drop.iter().any(|c| c == "CAP_ALL") {
        set.clear();
    }
    for c in &drop {
        set.remove(c);
    }
    // Adds come last: `drop: [ALL], add: [NET_BIND_SERVICE]` keeps that one, as in Kubernetes.
    set.extend(add.into_iter().filter(|c| c != "CAP_ALL"));
    Ok(set.into_iter().collect())
}

/// Paths hidden from unprivileged containers, as containerd hides them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths read-only in unprivileged containers, as containerd makes them.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ContainerDefaults {
        let v = |s: &[&str]| (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect());
        ContainerDefaults {
            entrypoint: v(entrypoint),
            cmd: v(cmd),
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            ..Default::default()
        }
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_line_follows_kubernetes() {
        let img = image(&["/entry"], &["--flag"]);
        assert_eq!(command_line(&img, &[], &[]), strings(&["/entry", "--flag"]));
        assert_eq!(
            command_line(&img, &[], &strings(&["x"])),
            strings(&["/entry", "x"])
        );
        assert_eq!(command_line(&img, &strings(&["sh"]), &[]), strings(&["sh"]));
        assert_eq!(
            command_line(&img, &strings(&["sh"]), &strings(&["-c", "true"])),
            strings(&["sh", "-c", "true"])
        );
        assert_eq!(
            command_line(&image(&[], &["sh"]), &[], &[]),
            strings(&["sh"])
        );
    }

    #[test]
    fn environment_overrides_in_place() {
        let env = environment(
            &image(&[], &[]),
            &[("A".into(), "pod".into()), ("B".into(), "2".into())],
        );
        assert_eq!(env, strings(&["PATH=/bin", "A=pod", "B=2"]));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\ndefault-user:x:1000:1000::/home:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n";

    #[test]
    fn users_and_groups() {
        let r = UserRequest::default();
        assert_eq!(resolve_user(&r, "", PASSWD, GROUP).unwrap().uid, 0);
        let u = resolve_user(&r, "www-data", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        let u = resolve_user(&r, "1003:1004", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1003, 1004));
        let u = resolve_user(&r, "www-data:1004", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 1004));
        // The image's group membership and the pod's supplemental groups.
        let u = resolve_user(
            &UserRequest {
                supplemental_groups: &[1234],
                ..Default::default()
            },
            "1000",
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![1000, 1234, 50000])
        );
        // Strict: only the pod's groups, none from the image's /etc/group.
        let u = resolve_user(
            &UserRequest {
                supplemental_groups: &[1234],
                strict_groups: true,
                ..Default::default()
            },
            "1000",
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(u.additional_gids, vec![1000, 1234]);
        // The pod's settings win over the image's.
        let u = resolve_user(
            &UserRequest {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                ..Default::default()
            },
            "www-data",
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        let u = resolve_user(
            &UserRequest {
                run_as_username: "www-data",
                ..Default::default()
            },
            "",
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(u.uid, 33);
        assert!(resolve_user(&r, "nobody-here", PASSWD, GROUP).is_err());
        for request in [
            UserRequest {
                run_as_user: Some(u32::MAX as i64),
                ..Default::default()
            },
            UserRequest {
                run_as_user: Some(0),
                run_as_group: Some(u32::MAX as i64),
                ..Default::default()
            },
            UserRequest {
                supplemental_groups: &[u32::MAX as i64],
                ..Default::default()
            },
        ] {
            let reason = resolve_user(&request, "", PASSWD, GROUP).unwrap_err();
            assert!(reason.contains("4294967295"), "{reason}");
        }
        assert!(resolve_user(&r, "4294967295", PASSWD, GROUP).is_err());
        assert!(resolve_user(&r, "root:nogroup", PASSWD, GROUP).is_err());
    }

    #[test]
    fn capability_adds_and_drops() {
        let all = [
            "CAP_CHOWN",
            "CAP_SYS_ADMIN",
            "CAP_NET_RAW",
            "CAP_KILL",
            "CAP_SETUID",
        ];
        let caps = capabilities(&strings(&["SYS_ADMIN"]), &strings(&["NET_RAW"]), &all).unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(caps.contains(&"CAP_CHOWN".to_string()));
        let caps = capabilities(&strings(&["KILL"]), &strings(&["ALL"]), &all).unwrap();
        assert_eq!(caps, strings(&["CAP_KILL"]));
        assert!(
            capabilities(&[], &strings(&["ALL"]), &all)
                .unwrap()
                .is_empty()
        );
        let caps = capabilities(&strings(&["ALL"]), &[], &all).unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(capabilities(&strings(&["NOT_A_CAP"]), &[], &all).is_err());
    }
}
