//! Device rules on cgroup v2: v2 has no devices controller; access to device nodes is decided
//! by an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup. This module
//! compiles the OCI spec's device rules (in order, the last matching rule deciding, as the v1
//! devices controller applies them) into such a program and attaches it.
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! where the low 16 bits of `access_type` are the device type (block 1, char 2) and the high
//! 16 bits the access asked for (mknod 1, read 2, write 4), and answers 1 (allow) or 0 (deny).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// One eBPF instruction, as the kernel reads it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes (include/uapi/linux/bpf.h, bpf_common.h): class | operation | source.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const ALU64_MOV_X: u8 = 0xbf; // dst = src
const ALU64_AND_K: u8 = 0x57; // dst &= imm
const ALU64_RSH_K: u8 = 0x77; // dst >>= imm
const JMP_JEQ_K: u8 = 0x15; // if dst == imm: pc += off
const JMP_JNE_K: u8 = 0x55; // if dst != imm: pc += off
const EXIT: u8 = 0x95; // return r0

// Registers: r1 holds the context on entry (then serves as scratch), r0 the answer.
const R0: u8 = 0;
const R1: u8 = 1;
const ACCESS: u8 = 2;
const TYPE: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// Loads the context's three fields into the registers the rules test.
fn prologue() -> Vec<Insn> {
    vec![
        insn(LDX_MEM_W, ACCESS, R1, 0, 0),
        insn(LDX_MEM_W, MAJOR, R1, 4, 0),
        insn(LDX_MEM_W, MINOR, R1, 8, 0),
        insn(ALU64_MOV_X, TYPE, ACCESS, 0, 0),
        insn(ALU64_AND_K, TYPE, 0, 0, 0xffff),
        insn(ALU64_RSH_K, ACCESS, 0, 0, 16),
    ]
}

fn answer(allow: bool) -> [Insn; 2] {
    [
        insn(ALU64_MOV_K, R0, 0, 0, i32::from(allow)),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// `rwm` as access bits; letters the kernel does not know are ignored.
fn access_bits(access: Option<&str>) -> i32 {
    access.unwrap_or("rwm").chars().fold(0, |bits, c| {
        bits | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// A rule for every device, type and access (`a *:* rwm`): it sets the default.
fn is_catch_all(rule: &LinuxDeviceCgroup) -> bool {
    matches!(rule.typ(), None | Some(LinuxDeviceType::A))
        && rule.major().is_none_or(|m| m < 0)
        && rule.minor().is_none_or(|m| m < 0)
        && access_bits(rule.access().as_deref()) == ACC_ALL
}

/// One rule's test: falls through to the next rule unless the request matches, then answers.
/// An allow rule matches when it grants every access asked for; a deny rule when it takes
/// away any of them (a read-write open of a device denied for writing is denied).
fn rule_block(rule: &LinuxDeviceCgroup) -> Vec<Insn> {
    // Each test jumps to the end of the block; the offsets are set once its length is known.
    let mut tests: Vec<Insn> = Vec::new();
    let device_type = match rule.typ() {
        Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
        // A pipe (`p`) is no device node the kernel asks about: the rule never matches.
        Some(LinuxDeviceType::P) => Some(-1),
        _ => None,
    };
    if let Some(t) = device_type {
        tests.push(insn(JMP_JNE_K, TYPE, 0, 0, t));
    }
    if let Some(major) = rule.major().filter(|m| *m >= 0) {
        tests.push(insn(JMP_JNE_K, MAJOR, 0, 0, major as i32));
    }
    if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
        tests.push(insn(JMP_JNE_K, MINOR, 0, 0, minor as i32));
    }
    let bits = access_bits(rule.access().as_deref());
    if bits != ACC_ALL {
        tests.push(insn(ALU64_MOV_X, R1, ACCESS, 0, 0));
        if rule.allow() {
            // Asked for anything beyond the rule: not this rule.
            tests.push(insn(ALU64_AND_K, R1, 0, 0, ACC_ALL & !bits));
            tests.push(insn(JMP_JNE_K, R1, 0, 0, 0));
        } else {
            // Asked for nothing the rule denies: not this rule.
            tests.push(insn(ALU64_AND_K, R1, 0, 0, bits));
            tests.push(insn(JMP_JEQ_K, R1, 0, 0, 0));
        }
    }
    let mut block = tests;
    block.extend(answer(rule.allow()));
    let len = block.len();
    for (i, insn) in block.iter_mut().enumerate() {
        if matches!(insn.code, JMP_JNE_K | JMP_JEQ_K) {
            // pc + 1 + off lands just past the block.
            insn.off = (len - i - 1) as i16;
        }
    }
    block
}

/// The program for `rules`, applied in order with the last matching rule deciding. What no rule
/// matches is denied, unless the rules begin by allowing everything.
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // Everything before the last catch-all rule is overridden by it.
    let start = rules.iter().rposition(is_catch_all);
    let default_allow = start.is_some_and(|i| rules[i].allow());
    let rest = match start {
        Some(i) => &rules[i + 1..],
        None => rules,
    };
    let mut program = prologue();
    // Last rule first: the first block that matches answers.
    for rule in rest.iter().rev() {
        program.extend(rule_block(rule));
    }
    program.extend(answer(default_allow));
    program
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("loading the device program: {source}: {log}")]
    Load { source: std::io::Error, log: String },
    #[error("opening cgroup {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("attaching the device program to cgroup {path}: {source}")]
    Attach {
        path: String,
        source: std::io::Error,
    },
}

// bpf(2) commands, program and attach types, flags (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `program` into the kernel; the verifier's log comes with a refusal.
fn load(program: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"crius_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: `attr` is a properly laid out prefix of `union bpf_attr` for BPF_PROG_LOAD (the
    // kernel zero-extends the rest); the instruction, license and log buffers it points to
    // outlive the call, and the log's size is the buffer's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]).trim().to_string();
        return Err(DeviceFilterError::Load { source, log });
    }
    // SAFETY: the kernel just returned this descriptor for the loaded program; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Compiles `rules` and attaches the program to the cgroup directory `dir` (beside any
/// program a parent has: every one must allow an access). It stays attached, held by the
/// cgroup, until the cgroup is removed.
pub fn attach(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), DeviceFilterError> {
    let program = load(&compile(rules))?;
    let path = dir.display().to_string();
    let cgroup = std::fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(|source| DeviceFilterError::Open {
            path: path.clone(),
            source,
        })?;
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH layout of `union bpf_attr`, naming two descriptors
    // that stay open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(DeviceFilterError::Attach {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::oci::device_rule as rule;

    /// Runs a program of the opcodes `compile` emits on one request.
    fn run(program: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let mut reg = [0u64; 11];
        let ctx = [(access << 16) | typ, major, minor];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            let jump = |taken: bool| if taken { i.off as isize } else { 0 };
            let mut next = 1isize;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, R1 as usize, "loads only from the context");
                    reg[dst] = ctx[i.off as usize / 4] as u64;
                }
                ALU64_MOV_K => reg[dst] = imm,
                ALU64_MOV_X => reg[dst] = reg[src],
                ALU64_AND_K => reg[dst] &= imm,
                ALU64_RSH_K => reg[dst] >>= imm,
                JMP_JEQ_K => next += jump(reg[dst] == imm),
                JMP_JNE_K => next += jump(reg[dst] != imm),
                EXIT => return reg[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc = (pc as isize + next) as usize;
        }
    }

    const C: u32 = DEV_CHAR as u32;
    const B: u32 = DEV_BLOCK as u32;
    const R: u32 = ACC_READ as u32;
    const W: u32 = ACC_WRITE as u32;
    const M: u32 = ACC_MKNOD as u32;

    #[test]
    fn deny_all_then_allowed_devices() {
        let rules = [
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(136), None, "rw"),
            rule(true, Some(LinuxDeviceType::C), Some(5), Some(1), "r"),
        ];
        let p = compile(&rules);
        assert_eq!(run(&p, C, R | W, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, C, M, 1, 3), 1);
        assert_eq!(run(&p, C, R | W, 1, 5), 0, "/dev/zero is not allowed");
        assert_eq!(
            run(&p, B, R, 1, 3),
            0,
            "a block device with the same numbers"
        );
        assert_eq!(run(&p, C, R | W, 136, 7), 1, "any pty");
        assert_eq!(run(&p, C, M, 136, 7), 0, "no mknod of ptys");
        assert_eq!(run(&p, C, R, 5, 1), 1);
        assert_eq!(run(&p, C, R | W, 5, 1), 0, "write was not granted");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let rules = [
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(5), "rwm"),
            rule(false, Some(LinuxDeviceType::C), Some(1), Some(5), "w"),
        ];
        let p = compile(&rules);
        assert_eq!(run(&p, C, R, 1, 5), 1);
        assert_eq!(run(&p, C, W, 1, 5), 0);
        assert_eq!(
            run(&p, C, R | W, 1, 5),
            0,
            "read-write takes the denied write"
        );
        let again = [rules[0].clone(), rules[2].clone(), rules[1].clone()];
        assert_eq!(run(&compile(&again), C, R | W, 1, 5), 1);
    }

    #[test]
    fn privileged_allows_everything_and_no_rules_deny_everything() {
        let all = compile(&[rule(true, Some(LinuxDeviceType::A), None, None, "rwm")]);
        assert_eq!(run(&all, B, R | W | M, 8, 0), 1);
        let none = compile(&[]);
        assert_eq!(run(&none, C, R, 1, 3), 0);
        // What comes before the last catch-all does not matter.
        let reset = compile(&[
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwm"),
            rule(false, None, None, None, "rwm"),
        ]);
        assert_eq!(run(&reset, C, R, 1, 3), 0);
    }

    /// The kernel's verifier takes the program and the kernel enforces it: a child moved into a
    /// cgroup v2 directory may read /dev/zero but not /dev/full. Needs root and a cgroup2
    /// mount (the host's, or the hybrid one at /sys/fs/cgroup/unified).
    #[test]
    fn the_kernel_enforces_the_program() {
        let Some(mount) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        else {
            eprintln!("no cgroup2 mount here: skipped");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let dir = mount.join(format!("crius-devices-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let rules = [
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(5), "rwm"),
        ];
        attach(&dir, &rules).unwrap();
        let script = format!(
            "echo $$ > {}/cgroup.procs && head -c 1 /dev/zero >/dev/stdout 2>&1 && echo zero-ok; \
             head -c 1 /dev/full 2>&1 || echo full-denied",
            dir.display()
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("zero-ok"), "{text}");
        assert!(text.contains("full-denied"), "{text}");
    }
}
