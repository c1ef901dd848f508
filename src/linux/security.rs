//! The last steps before execve, shared by a container's first process and the commands exec'd
//! in it: rlimits, user and groups, capabilities, no_new_privs, seccomp, then exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxSeccomp, PosixRlimitType, Process};

use super::SetupError;
use super::seccomp;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applies the process's rlimits to this process.
pub fn set_rlimits(process: &Process) -> Result<(), SetupError> {
    for limit in process.rlimits().iter().flatten() {
        let resource = match limit.typ() {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        };
        let value = libc::rlimit {
            rlim_cur: limit.soft(),
            rlim_max: limit.hard(),
        };
        // SAFETY: setrlimit reads the struct, which lives across the call.
        if unsafe { libc::setrlimit(resource, &value) } != 0 {
            return Err(SetupError::io(
                format!("setting {:?}", limit.typ()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn cap_set(caps: &Option<Capabilities>) -> Result<CapsHashSet, SetupError> {
    caps.iter()
        .flatten()
        .map(|c| {
            // The spec's names lack the CAP_ prefix that the kernel's names have.
            format!("CAP_{c}")
                .parse::<Capability>()
                .map_err(|e| SetupError::from(format!("capability {c}: {e}")))
        })
        .collect()
}

/// Everything after the root filesystem is in place: credentials, capabilities,
/// no_new_privs, seccomp, the working directory, and execve of `args`. Returns only on error.
pub fn finish_and_exec(
    process: &Process,
    args: &[String],
    profile: Option<&LinuxSeccomp>,
) -> Result<Infallible, SetupError> {
    let program = args
        .first()
        .ok_or_else(|| "no command to run".to_string())?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let path = find_executable(program, &env)?;
    let c_path = cstring(path.as_os_str().as_encoded_bytes())?;
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<Result<_, _>>()?;

    let caps = process.capabilities().clone().unwrap_or_default();
    let bounding = cap_set(caps.bounding())?;
    let effective = cap_set(caps.effective())?;
    let permitted = cap_set(caps.permitted())?;
    let inheritable = cap_set(caps.inheritable())?;
    let ambient = cap_set(caps.ambient())?;
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let filter = profile
        .map(seccomp::compile)
        .transpose()
        .map_err(|e| e.to_string())?;
    // Without no_new_privs only a privileged process may install a filter: do it while still
    // root with every capability (the filter allows the calls that follow, as the default does).
    if !no_new_privs && let Some(filter) = &filter {
        seccomp::apply(filter)?;
    }

    // Dropping from the bounding set needs CAP_SETPCAP, so it comes before the user change.
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    let user = process.user();
    // SAFETY: prctl with PR_SET_KEEPCAPS takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(SetupError::io(
            "PR_SET_KEEPCAPS",
            std::io::Error::last_os_error(),
        ));
    }
    let groups: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups {groups:?}: {e}"))?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setgid {gid}: {e}"))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setuid {uid}: {e}"))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    // Each capset must keep effective within permitted: shrink effective before permitted.
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| format!("inheritable caps: {e}"))?;
    caps::set(None, CapSet::Effective, &effective).map_err(|e| format!("effective caps: {e}"))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|e| format!("permitted caps: {e}"))?;
    for cap in ambient {
        caps::raise(None, CapSet::Ambient, cap).map_err(|e| format!("ambient {cap}: {e}"))?;
    }

    if no_new_privs {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integers only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SetupError::io(
                "PR_SET_NO_NEW_PRIVS",
                std::io::Error::last_os_error(),
            ));
        }
        if let Some(filter) = &filter {
            seccomp::apply(filter)?;
        }
    }
    let cwd = process.cwd();
    std::env::set_current_dir(cwd).map_err(SetupError::at_io(format!(
        "changing to the working dir {}",
        cwd.display()
    )))?;
    match nix::unistd::execve(&c_path, &c_args, &c_env) {
        Err(e) => Err(SetupError::os(format!("exec {:?}", path.display()), e)),
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, SetupError> {
    CString::new(bytes).map_err(|_| SetupError {
        message: "an argument or variable contains a NUL byte".to_string(),
        errno: Some(nix::errno::Errno::EINVAL),
    })
}

/// `program` as execvp finds it: a path when it has a slash, else the first executable file
/// of that name in the container's PATH.
fn find_executable(program: &str, env: &[String]) -> Result<std::path::PathBuf, SetupError> {
    if program.contains('/') {
        return Ok(program.into());
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path_var.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(SetupError {
        message: format!("exec: {program:?}: executable file not found in $PATH"),
        errno: Some(nix::errno::Errno::ENOENT),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
