//! Placeholder until the BPF compiler lands.
use oci_spec::runtime::LinuxSeccomp;
pub fn compile(_profile: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, String> {
    Ok(vec![])
}
pub fn apply(_program: &[libc::sock_filter]) -> Result<(), String> {
    Ok(())
}
pub fn runtime_default(_capabilities: &[String]) -> LinuxSeccomp {
    LinuxSeccomp::default()
}
pub fn load_profile(_json: &str, _capabilities: &[String]) -> Result<LinuxSeccomp, String> {
    Ok(LinuxSeccomp::default())
}
