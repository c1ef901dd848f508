//! A pod's user namespace as the CRI asks for it (`namespace_options.userns_options`): NODE
//! keeps the host's; POD gets the pod its own, with exactly the one uid and one gid range
//! kubelet sends, mapping container id 0. Anything else is the caller's mistake.

use crate::cri;
use crate::error::{Error, Result};
use crate::linux::userns::{IdRange, PodMappings};

/// The pod's mappings when it asks for a user namespace of its own; None for the host's.
pub fn pod_mappings(
    field: &str,
    options: Option<&cri::UserNamespace>,
) -> Result<Option<PodMappings>> {
    let Some(options) = options else {
        return Ok(None);
    };
    let field = format!("{field}.userns_options");
    match cri::NamespaceMode::try_from(options.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if options.uids.is_empty() && options.gids.is_empty() {
                Ok(None)
            } else {
                Err(Error::invalid(
                    field,
                    "mode NODE uses the host's user namespace and takes no uid or gid mappings",
                ))
            }
        }
        Ok(cri::NamespaceMode::Pod) => Ok(Some(PodMappings {
            uids: one_range(&format!("{field}.uids"), &options.uids)?,
            gids: one_range(&format!("{field}.gids"), &options.gids)?,
        })),
        Ok(mode) => Err(Error::invalid(
            format!("{field}.mode"),
            format!(
                "{} user namespaces are not supported: POD (its own) or NODE (the host's)",
                mode.as_str_name()
            ),
        )),
        Err(_) => Err(Error::invalid(
            format!("{field}.mode"),
            format!("{} is not a namespace mode", options.mode),
        )),
    }
}

/// Exactly one range, from container id 0, of at least one id, not reaching past the last id
/// nor mapping the host's root.
fn one_range(field: &str, mappings: &[cri::IdMapping]) -> Result<IdRange> {
    let [mapping] = mappings else {
        return Err(Error::invalid(
            field,
            format!(
                "{} mappings given; a pod's user namespace takes exactly one range",
                mappings.len()
            ),
        ));
    };
    let what = format!(
        "the mapping {{container_id {}, host_id {}, length {}}}",
        mapping.container_id, mapping.host_id, mapping.length
    );
    if mapping.container_id != 0 {
        return Err(Error::invalid(
            field,
            format!("{what} does not map container id 0 (the pod's root)"),
        ));
    }
    let range = IdRange {
        host: mapping.host_id,
        length: mapping.length,
    };
    if mapping.length == 0 || range.last().is_none() {
        return Err(Error::invalid(
            field,
            format!("{what} is empty or reaches past the last id"),
        ));
    }
    if mapping.host_id == 0 {
        return Err(Error::invalid(
            field,
            format!("{what} maps the pod's root to the host's root"),
        ));
    }
    Ok(range)
}

/// FAILED_PRECONDITION for a pod asking for its own user namespace on a host that cannot give
/// one (user namespaces disabled, or no idmapped mounts: Linux before 5.12).
pub fn host_supports(config: &cri::PodSandboxConfig) -> Result<()> {
    let asked = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
        .is_some_and(|u| u.mode == cri::NamespaceMode::Pod as i32);
    if asked && !crate::linux::userns::kernel_supports() {
        return Err(Error::FailedPrecondition(
            "this host cannot give pods user namespaces: /proc/sys/user/max_user_namespaces \
             is 0, or the kernel lacks idmapped mounts (mount_setattr, Linux 5.12)"
                .into(),
        ));
    }
    Ok(())
}

/// A user namespace of the pod's own goes with its own network, IPC and PID-or-container
/// namespaces: the host's are not the pod's to share (kubelet refuses the same).
pub fn check_shape(field: &str, options: &cri::NamespaceOption) -> Result<()> {
    let node = cri::NamespaceMode::Node as i32;
    for (name, mode) in [
        ("network", options.network),
        ("pid", options.pid),
        ("ipc", options.ipc),
    ] {
        if mode == node {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                "the host's namespace cannot be used by a pod with a user namespace of its own",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    fn pod(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        }
    }

    fn refusal(options: &cri::UserNamespace) -> String {
        match pod_mappings("ns", Some(options)) {
            Err(e @ Error::InvalidArgument { .. }) => e.to_string(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn kubelets_pod_mappings_are_taken() {
        let got = pod_mappings(
            "ns",
            Some(&pod(
                vec![mapping(0, 65536, 65536)],
                vec![mapping(0, 131072, 65536)],
            )),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            got.uids,
            IdRange {
                host: 65536,
                length: 65536
            }
        );
        assert_eq!(
            got.gids,
            IdRange {
                host: 131072,
                length: 65536
            }
        );
        assert_eq!(pod_mappings("ns", None).unwrap(), None);
        let node = cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(pod_mappings("ns", Some(&node)).unwrap(), None);
    }

    #[test]
    fn anything_else_is_refused_naming_the_mapping() {
        let two = refusal(&pod(
            vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
            vec![mapping(0, 1000, 100000)],
        ));
        assert!(
            two.contains("ns.userns_options.uids") && two.contains("2 mappings"),
            "{two}"
        );
        let not_root = refusal(&pod(
            vec![mapping(1, 1000, 100000)],
            vec![mapping(1, 1000, 100000)],
        ));
        assert!(
            not_root.contains("container_id 1") && not_root.contains("container id 0"),
            "{not_root}"
        );
        let none = refusal(&pod(vec![], vec![]));
        assert!(none.contains("0 mappings"), "{none}");
        let empty = refusal(&pod(vec![mapping(0, 1000, 0)], vec![mapping(0, 1000, 1)]));
        assert!(empty.contains("empty"), "{empty}");
        let past = refusal(&pod(
            vec![mapping(0, u32::MAX, 2)],
            vec![mapping(0, 1000, 1)],
        ));
        assert!(past.contains("past the last id"), "{past}");
        let host_root = refusal(&pod(vec![mapping(0, 1000, 10)], vec![mapping(0, 0, 10)]));
        assert!(
            host_root.contains("ns.userns_options.gids") && host_root.contains("host's root"),
            "{host_root}"
        );
        for mode in [cri::NamespaceMode::Container, cri::NamespaceMode::Target] {
            let m = refusal(&cri::UserNamespace {
                mode: mode as i32,
                ..Default::default()
            });
            assert!(m.contains("mode") && m.contains("not supported"), "{m}");
        }
        let node_with_maps = refusal(&cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            uids: vec![mapping(0, 1000, 10)],
            gids: vec![],
        });
        assert!(node_with_maps.contains("NODE"), "{node_with_maps}");
    }

    #[test]
    fn host_namespaces_do_not_go_with_a_pod_user_namespace() {
        let mut options = cri::NamespaceOption::default();
        assert!(check_shape("ns", &options).is_ok());
        options.network = cri::NamespaceMode::Node as i32;
        assert!(
            check_shape("ns", &options)
                .unwrap_err()
                .to_string()
                .contains("ns.network")
        );
        options.network = cri::NamespaceMode::Pod as i32;
        options.pid = cri::NamespaceMode::Node as i32;
        assert!(check_shape("ns", &options).is_err());
    }
}
