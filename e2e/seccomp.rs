//! seccomp and 32-bit programs: under RuntimeDefault an i386 binary runs, and the syscalls the
//! profile refuses are refused through the i386 ABI (`int 0x80`) too. The binaries are built
//! here, byte by byte: static ELF32 executables of a few instructions each.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crius::cri;

use crate::containers::{
    busybox, container_config, exec, remove_all, run, security, sh, start_pod,
};
use crate::harness::Daemon;
use crate::images::pull;

/// Where the one PT_LOAD segment (headers, code, data) is mapped.
const LOAD_ADDRESS: u32 = 0x0804_8000;
/// An ELF32 header and one program header.
const HEADERS_LEN: u32 = 52 + 32;

// i386 syscall numbers (arch/x86/entry/syscalls/syscall_32.tbl).
const I386_EXIT: u32 = 1;
const I386_WRITE: u32 = 4;
const I386_UNSHARE: u32 = 310;

/// i386 instructions, enough for straight-line syscalls.
mod i386 {
    /// `mov r32, imm32` for eax (0), ecx (1), edx (2), ebx (3).
    fn mov(register: u8, value: u32) -> Vec<u8> {
        let mut bytes = vec![0xb8 + register];
        bytes.extend(value.to_le_bytes());
        bytes
    }
    pub fn mov_eax(value: u32) -> Vec<u8> {
        mov(0, value)
    }
    pub fn mov_ecx(value: u32) -> Vec<u8> {
        mov(1, value)
    }
    pub fn mov_edx(value: u32) -> Vec<u8> {
        mov(2, value)
    }
    pub fn mov_ebx(value: u32) -> Vec<u8> {
        mov(3, value)
    }
    /// `int 0x80`: the i386 syscall, number in eax, arguments in ebx, ecx, edx…
    pub fn int80() -> Vec<u8> {
        vec![0xcd, 0x80]
    }
    /// `neg eax; mov ebx, eax`: a syscall's -errno becomes the next syscall's first argument.
    pub fn negated_result_to_ebx() -> Vec<u8> {
        vec![0xf7, 0xd8, 0x89, 0xc3]
    }
}

/// A static ELF32 i386 executable: `code` (given the address `data` will have) entered at its
/// first byte, followed by `data`, all in one read+execute segment.
fn elf32(code: impl Fn(u32) -> Vec<u8>, data: &[u8]) -> Vec<u8> {
    let entry = LOAD_ADDRESS + HEADERS_LEN;
    let code_len = code(0).len() as u32;
    let code = code(entry + code_len);
    let size = HEADERS_LEN + code_len + data.len() as u32;

    let mut elf = Vec::new();
    // e_ident: ELF, 32-bit, little-endian, version 1, System V.
    elf.extend(b"\x7fELF\x01\x01\x01\x00");
    elf.extend([0; 8]);
    for half in [2u16, 3] {
        elf.extend(half.to_le_bytes()); // e_type EXEC, e_machine 386
    }
    for word in [1, entry, 52, 0, 0] {
        elf.extend(word.to_le_bytes()); // e_version, e_entry, e_phoff, e_shoff, e_flags
    }
    for half in [52u16, 32, 1, 0, 0, 0] {
        elf.extend(half.to_le_bytes()); // e_ehsize, e_phentsize, e_phnum, e_shentsize…
    }
    // PT_LOAD of the whole file at LOAD_ADDRESS, PF_R | PF_X.
    for word in [1, 0, LOAD_ADDRESS, LOAD_ADDRESS, size, size, 5, 0x1000] {
        elf.extend(word.to_le_bytes());
    }
    assert_eq!(elf.len() as u32, HEADERS_LEN);
    elf.extend(code);
    elf.extend(data);
    elf
}

/// `write(1, "hello32\n", 8); exit(0)`.
fn hello32() -> Vec<u8> {
    let message = b"hello32\n";
    let code = |at: u32| {
        [
            i386::mov_eax(I386_WRITE),
            i386::mov_ebx(1),
            i386::mov_ecx(at),
            i386::mov_edx(message.len() as u32),
            i386::int80(),
            i386::mov_eax(I386_EXIT),
            i386::mov_ebx(0),
            i386::int80(),
        ]
        .concat()
    };
    elf32(code, message)
}

/// `exit(-unshare(CLONE_NEWUSER))`: exits with the errno, 0 when the user namespace was made.
fn unshare32() -> Vec<u8> {
    let code = |_: u32| {
        [
            i386::mov_eax(I386_UNSHARE),
            i386::mov_ebx(libc::CLONE_NEWUSER as u32),
            i386::int80(),
            i386::negated_result_to_ebx(),
            i386::mov_eax(I386_EXIT),
            i386::int80(),
        ]
        .concat()
    };
    elf32(code, &[])
}

fn write_executable(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whether this kernel runs i386 binaries (CONFIG_IA32_EMULATION, not turned off at boot).
fn host_runs_i386(hello: &Path) -> bool {
    match Command::new(hello).output() {
        Ok(out) => out.status.success() && out.stdout == b"hello32\n",
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_runs_i386_binaries_and_filters_their_syscalls() {
    let daemon = Daemon::start("").await;
    let bin = daemon.dir.path().join("i386");
    fs::create_dir(&bin).unwrap();
    write_executable(&bin.join("hello32"), &hello32());
    write_executable(&bin.join("unshare32"), &unshare32());
    if !cfg!(target_arch = "x86_64") || !host_runs_i386(&bin.join("hello32")) {
        eprintln!("skipped: this host does not run i386 binaries");
        return;
    }
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "compat32", |_| {}).await;
    let with_binaries = |name: &str, profile: cri::security_profile::ProfileType| {
        let mut c = container_config(name, &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/i386".into(),
            host_path: bin.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        }];
        security(&mut c).seccomp = Some(cri::SecurityProfile {
            profile_type: profile as i32,
            localhost_ref: String::new(),
        });
        c
    };
    use cri::security_profile::ProfileType::{RuntimeDefault, Unconfined};
    let confined = run(&daemon, &pod, with_binaries("confined", RuntimeDefault)).await;
    let unconfined = run(&daemon, &pod, with_binaries("unconfined", Unconfined)).await;
    let (out, _) = sh(&daemon, &confined, "grep '^Seccomp:' /proc/self/status").await;
    assert_eq!(out.trim(), "Seccomp:\t2");

    let r = exec(&daemon, &confined, &["/i386/hello32"], 10)
        .await
        .unwrap();
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.exit_code),
        ("hello32\n", 0),
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );

    // unshare is not RuntimeDefault's without CAP_SYS_ADMIN: through int 0x80 it fails with
    // the profile's EPERM, where without seccomp the same binary makes its user namespace.
    let r = exec(&daemon, &confined, &["/i386/unshare32"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, libc::EPERM, "{r:?}");
    let r = exec(&daemon, &unconfined, &["/i386/unshare32"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    remove_all(&daemon, &pod).await;
}
