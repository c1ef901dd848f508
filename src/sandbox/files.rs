//! The files every container of a pod sees: /etc/hostname, /etc/hosts and /etc/resolv.conf.

use crate::cri;

/// resolv.conf from the sandbox's DNS config; without one, the host's own file as it is.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>, host_resolv_conf: &str) -> String {
    let Some(dns) =
        dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    else {
        return host_resolv_conf.to_string();
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// /etc/hosts of a pod with its own network: loopback names and the pod's hostname on its
/// addresses. A host-network pod gets the host's file instead (kubelet may mount its own over
/// either).
pub fn hosts(hostname: &str, pod_ips: &[std::net::IpAddr]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// The pod's hostname: the config's, else the pod name (what kubelet would have sent), cut to
/// the 64 bytes the kernel allows.
pub fn hostname(config: &cri::PodSandboxConfig) -> String {
    let name = if config.hostname.is_empty() {
        config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config_or_host() {
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), "nameserver 1.1.1.1\n"),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(None, "nameserver 1.1.1.1\n"),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(
            resolv_conf(Some(&cri::DnsConfig::default()), "host\n"),
            "host\n"
        );
    }

    #[test]
    fn hosts_and_hostname() {
        let h = hosts("web-0", &["10.1.0.5".parse().unwrap()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.1.0.5\tweb-0\n"));
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".repeat(70),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(hostname(&config).len(), 64);
        let config = cri::PodSandboxConfig {
            hostname: "web-0".into(),
            ..config
        };
        assert_eq!(hostname(&config), "web-0");
    }
}
