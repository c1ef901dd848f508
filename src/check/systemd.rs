//! What the systemd cgroup driver needs of the host: systemd as PID 1, and its D-Bus system bus
//! reachable (a connect to the bus socket; no D-Bus conversation).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::{Finding, Level, finding};

/// Where the system bus listens unless `$DBUS_SYSTEM_BUS_ADDRESS` says otherwise.
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
pub const SYSTEM_BUS_ENV: &str = "DBUS_SYSTEM_BUS_ADDRESS";

pub fn check_pid1() -> Finding {
    pid1_finding(std::fs::read_to_string("/proc/1/comm"))
}

fn pid1_finding(comm: std::io::Result<String>) -> Finding {
    const WHAT: &str = "systemd as PID 1";
    match comm {
        Ok(comm) if comm.trim_end() == "systemd" => finding(Level::Ok, WHAT, "PID 1 is systemd"),
        Ok(comm) => finding(
            Level::Fail,
            WHAT,
            format!(
                "PID 1 is {:?}; the systemd driver needs systemd as init",
                comm.trim_end()
            ),
        ),
        Err(e) => finding(Level::Fail, WHAT, format!("cannot read /proc/1/comm: {e}")),
    }
}

pub fn check_system_bus() -> Finding {
    let (address, from) = match std::env::var(SYSTEM_BUS_ENV) {
        Ok(a) if !a.is_empty() => (a, format!("${SYSTEM_BUS_ENV}")),
        _ => (DEFAULT_SYSTEM_BUS.to_string(), "default".to_string()),
    };
    bus_finding(&address, &from)
}

/// Connects to the addresses of a D-Bus address string in order; the first that accepts wins.
fn bus_finding(address: &str, from: &str) -> Finding {
    const WHAT: &str = "D-Bus system bus";
    let mut failures = Vec::new();
    for entry in address.split(';').filter(|e| !e.is_empty()) {
        match parse_address(entry) {
            Ok(target) => match target.connect() {
                Ok(()) => {
                    return finding(
                        Level::Ok,
                        WHAT,
                        format!("{target} accepts connections ({from})"),
                    );
                }
                Err(e) => failures.push(format!("{target}: {e}")),
            },
            Err(reason) => failures.push(format!("{entry:?}: {reason}")),
        }
    }
    if failures.is_empty() {
        failures.push(format!("no address in {address:?}"));
    }
    finding(
        Level::Fail,
        WHAT,
        format!("cannot connect ({from}): {}", failures.join("; ")),
    )
}

/// A unix socket a D-Bus address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusSocket {
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading NUL).
    Abstract(Vec<u8>),
}

impl std::fmt::Display for BusSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusSocket::Path(p) => write!(f, "{}", p.display()),
            BusSocket::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

impl BusSocket {
    fn connect(&self) -> std::io::Result<()> {
        match self {
            BusSocket::Path(path) => UnixStream::connect(path).map(drop),
            BusSocket::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                UnixStream::connect_addr(&addr).map(drop)
            }
        }
    }
}

/// One D-Bus server address (`transport:key=value,...`, values %-escaped); only the unix
/// transport with `path` or `abstract` can be checked by a connect.
pub fn parse_address(entry: &str) -> Result<BusSocket, String> {
    let (transport, params) = entry
        .split_once(':')
        .ok_or_else(|| "not transport:key=value".to_string())?;
    if transport != "unix" {
        return Err(format!("transport {transport:?} is not checked"));
    }
    for param in params.split(',') {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = unescape(value).ok_or_else(|| format!("bad escape in {value:?}"))?;
        match key {
            "path" => {
                let path = String::from_utf8(value).map_err(|_| "path is not UTF-8".to_string())?;
                return Ok(BusSocket::Path(PathBuf::from(path)));
            }
            "abstract" => return Ok(BusSocket::Abstract(value)),
            _ => {}
        }
    }
    Err("a unix address without path= or abstract=".to_string())
}

/// D-Bus address value unescaping: `%XX` is a byte, anything else stands for itself.
fn unescape(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_must_be_systemd() {
        assert_eq!(pid1_finding(Ok("systemd\n".into())).level, Level::Ok);
        let f = pid1_finding(Ok("process_api\n".into()));
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("process_api"), "{}", f.detail);
        let f = pid1_finding(Err(std::io::ErrorKind::PermissionDenied.into()));
        assert_eq!(f.level, Level::Fail);
    }

    #[test]
    fn bus_addresses_parse() {
        assert_eq!(
            parse_address(DEFAULT_SYSTEM_BUS),
            Ok(BusSocket::Path("/run/dbus/system_bus_socket".into()))
        );
        assert_eq!(
            parse_address("unix:guid=abc,path=/tmp/a%20b%2cc"),
            Ok(BusSocket::Path("/tmp/a b,c".into()))
        );
        assert_eq!(
            parse_address("unix:abstract=/tmp/dbus-x"),
            Ok(BusSocket::Abstract(b"/tmp/dbus-x".to_vec()))
        );
        assert!(parse_address("tcp:host=localhost,port=1").is_err());
        assert!(parse_address("unix:tmpdir=/tmp").is_err());
        assert!(parse_address("unix:path=/x%zz").is_err());
        assert!(parse_address("/run/dbus/system_bus_socket").is_err());
    }

    #[test]
    fn the_bus_is_reachable_when_its_socket_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let f = bus_finding(&address, "test");
        assert_eq!(f.level, Level::Fail, "{}", f.detail);
        assert!(f.detail.contains("bus"), "{}", f.detail);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // The first address that accepts wins.
        let f = bus_finding(&format!("tcp:host=x,port=1;{address}"), "test");
        assert_eq!(f.level, Level::Ok, "{}", f.detail);
        assert!(
            f.detail.contains(&socket.display().to_string()),
            "{}",
            f.detail
        );
        assert_eq!(bus_finding("", "test").level, Level::Fail);
    }
}
