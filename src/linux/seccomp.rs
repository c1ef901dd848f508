//! seccomp: an OCI seccomp profile compiled to a classic-BPF program for the host, the call that
//! installs it, the built-in RuntimeDefault profile, and the reader of Localhost profile files
//! (OCI or Docker form). Pure Rust, no C library.
//!
//! The program filters the host's own ABI and those of the profile's `architectures` the host
//! can also run (on x86_64: i386 and x32; on arm64: 32-bit ARM), each with its own syscall
//! numbers for the profile's names, as libseccomp builds containerd's filters. A syscall made
//! under any other audit architecture kills the process; on x86_64 an x32 syscall fails with
//! ENOSYS unless the profile lists x32.

mod abi;

use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde_json::{Map, Value};

use abi::{Abi, Multiplexed, X32_SYSCALL_BIT};

/// The kernel's limit on the length of a classic-BPF program (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

#[cfg(target_arch = "x86_64")]
const NATIVE: Option<(Arch, &str)> = Some((Arch::ScmpArchX86_64, "amd64"));
#[cfg(target_arch = "aarch64")]
const NATIVE: Option<(Arch, &str)> = Some((Arch::ScmpArchAarch64, "arm64"));
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE: Option<(Arch, &str)> = None;

// Offsets into struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// The instructions the compiler emits (opcode values as in <linux/bpf_common.h>).
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Syscall numbers compared before one shared return: keeps every conditional jump short.
const NAMES_PER_BLOCK: usize = 128;

/// Why a profile could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("seccomp is not supported on {0}")]
    UnsupportedHost(&'static str),
    #[error("defaultAction: {0}")]
    DefaultAction(ActionError),
    #[error("syscalls[{rule}]: {error}")]
    Action { rule: usize, error: ActionError },
    #[error(
        "syscalls[{rule}].args[{arg}]: argument index {index} out of range (a syscall has arguments 0 to 5)"
    )]
    ArgumentIndex {
        rule: usize,
        arg: usize,
        index: usize,
    },
    #[error(
        "the seccomp profile compiles to {0} instructions, more than the kernel's {MAX_INSTRUCTIONS}"
    )]
    TooLong(usize),
    #[error("seccomp compiler: bad jump target at instruction {0}")]
    BadJump(usize),
    #[error(
        "seccomp compiler: jump of {offset} at instruction {pc} is too long (a rule has too many argument conditions)"
    )]
    JumpTooLong { pc: usize, offset: usize },
}

/// Why an action cannot be expressed as a seccomp return value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("errnoRet {0} out of range (0 to 4095)")]
    Errno(u32),
    #[error("errnoRet {0} out of range (0 to 65535)")]
    TraceData(u32),
    #[error("SCMP_ACT_NOTIFY is not supported (crius runs no seccomp agent)")]
    Notify,
}

/// A profile rule, checked: its SECCOMP_RET_* value and conditions.
struct Rule<'a> {
    names: &'a [String],
    action: u32,
    args: &'a [LinuxSeccompArg],
}

/// Compiles `profile` for the host. Syscall names an ABI does not have are skipped; rules are
/// tried in order and the first whose argument conditions all hold wins; nothing matching
/// means the profile's default action. `flags` are not consulted.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, CompileError> {
    let native = Abi::native().ok_or(CompileError::UnsupportedHost(std::env::consts::ARCH))?;
    compile_for(profile, native)
}

/// [`compile`] for a host whose own ABI is `native`.
fn compile_for(
    profile: &LinuxSeccomp,
    native: Abi,
) -> Result<Vec<libc::sock_filter>, CompileError> {
    let default_action = action_value(profile.default_action(), profile.default_errno_ret())
        .map_err(CompileError::DefaultAction)?;
    let rules = checked_rules(profile)?;
    let abis = filtered_abis(profile, native);

    let mut asm = Asm::default();
    let sections: Vec<(Abi, usize)> = abis.iter().map(|&abi| (abi, asm.label())).collect();
    let x32_section = sections
        .iter()
        .find(|(abi, _)| *abi == Abi::X32)
        .map(|&(_, label)| label);
    emit_arch_dispatch(&mut asm, &sections);
    for &(abi, label) in &sections {
        asm.bind(label);
        // x32 arrives from the x86_64 section with the syscall number already in A.
        if abi != Abi::X32 {
            asm.stmt(LD_W_ABS, OFF_NR);
        }
        if abi == Abi::X86_64 {
            emit_x32_split(&mut asm, x32_section);
        }
        for rule in &rules {
            emit_rule(&mut asm, abi, rule);
        }
        asm.ret(default_action);
    }

    let program = asm.finish()?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(CompileError::TooLong(program.len()));
    }
    Ok(program)
}

/// The profile's rules with their actions and argument indexes checked.
fn checked_rules(profile: &LinuxSeccomp) -> Result<Vec<Rule<'_>>, CompileError> {
    let mut rules = Vec::new();
    for (i, rule) in profile.syscalls().iter().flatten().enumerate() {
        let action = action_value(rule.action(), rule.errno_ret())
            .map_err(|error| CompileError::Action { rule: i, error })?;
        let args = rule.args().as_deref().unwrap_or_default();
        if let Some((j, arg)) = args.iter().enumerate().find(|(_, a)| a.index() > 5) {
            return Err(CompileError::ArgumentIndex {
                rule: i,
                arg: j,
                index: arg.index(),
            });
        }
        rules.push(Rule {
            names: rule.names(),
            action,
            args,
        });
    }
    Ok(rules)
}

/// The ABIs the program filters: the host's own always (as a libseccomp filter always holds
/// its native arch), then those of the profile's `architectures` the host also runs. Listed
/// architectures the host cannot run are left out: their syscalls never arrive.
fn filtered_abis(profile: &LinuxSeccomp, native: Abi) -> Vec<Abi> {
    let listed = profile.architectures().as_deref().unwrap_or_default();
    let mut abis = vec![native];
    abis.extend(
        native
            .compat()
            .iter()
            .filter(|abi| listed.contains(&abi.arch())),
    );
    abis
}

/// Sends each audit architecture to its section (the first, the native one, right after this
/// dispatch) and kills the process on any other. x32 shares x86_64's audit arch: the x86_64
/// section sends it on.
fn emit_arch_dispatch(asm: &mut Asm, sections: &[(Abi, usize)]) {
    asm.stmt(LD_W_ABS, OFF_ARCH);
    let mut by_arch = sections.iter().filter(|(abi, _)| *abi != Abi::X32);
    if let Some(&(native, label)) = by_arch.next() {
        asm.jump(JEQ_K, native.audit_arch(), Dest::To(label), Dest::Next);
    }
    for &(abi, label) in by_arch {
        let other = asm.label();
        asm.jump(JEQ_K, abi.audit_arch(), Dest::Next, Dest::To(other));
        asm.ja(label);
        asm.bind(other);
    }
    asm.ret(libc::SECCOMP_RET_KILL_PROCESS);
}

/// With the syscall number in A: x32 numbers go to the x32 section, or fail with ENOSYS when
/// the profile does not list x32, so that they never meet the x86_64 rules.
fn emit_x32_split(asm: &mut Asm, x32_section: Option<usize>) {
    let not_x32 = asm.label();
    asm.jump(JGE_K, X32_SYSCALL_BIT, Dest::Next, Dest::To(not_x32));
    match x32_section {
        Some(label) => asm.ja(label),
        None => asm.ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    }
    asm.bind(not_x32);
}

/// One rule in one ABI's section: its names by this ABI's numbers, then those the ABI also
/// reaches through a multiplexer. A holds the syscall number before and after.
fn emit_rule(asm: &mut Asm, abi: Abi, rule: &Rule) {
    for block in numbers_of(abi, rule.names).chunks(NAMES_PER_BLOCK) {
        if rule.args.is_empty() {
            emit_plain_rule(asm, block, rule.action);
        } else {
            emit_conditional_rule(asm, abi, block, rule.args, rule.action);
        }
    }
    for (multiplexer, calls) in multiplexed_calls(abi, rule.names) {
        emit_multiplexed_rule(asm, abi, multiplexer, &calls, rule.args, rule.action);
    }
}

/// `abi`'s numbers for `names`, each once, in the names' order; names it lacks are skipped.
fn numbers_of(abi: Abi, names: &[String]) -> Vec<u32> {
    let mut numbers: Vec<u32> = Vec::new();
    for nr in names.iter().filter_map(|name| abi.number(name)) {
        if !numbers.contains(&nr) {
            numbers.push(nr);
        }
    }
    numbers
}

/// The multiplexers `abi` also reaches `names` through, each with the call numbers concerned.
fn multiplexed_calls(abi: Abi, names: &[String]) -> Vec<(u32, Vec<u32>)> {
    let mut by_multiplexer: Vec<(u32, Vec<u32>)> = Vec::new();
    for Multiplexed { syscall, call } in names.iter().filter_map(|name| abi.multiplexed(name)) {
        match by_multiplexer.iter_mut().find(|(nr, _)| *nr == syscall) {
            Some((_, calls)) if calls.contains(&call) => {}
            Some((_, calls)) => calls.push(call),
            None => by_multiplexer.push((syscall, vec![call])),
        }
    }
    by_multiplexer
}

/// `nr in block → action`; A holds the syscall number before and after.
fn emit_plain_rule(asm: &mut Asm, block: &[u32], action: u32) {
    let hit = asm.label();
    let miss = asm.label();
    for (k, &nr) in block.iter().enumerate() {
        let otherwise = if k + 1 == block.len() {
            Dest::To(miss)
        } else {
            Dest::Next
        };
        asm.jump(JEQ_K, nr, Dest::To(hit), otherwise);
    }
    asm.bind(hit);
    asm.ret(action);
    asm.bind(miss);
}

/// `nr in block && every condition → action`; the conditions load arguments into A, so the
/// miss path reloads the syscall number.
fn emit_conditional_rule(
    asm: &mut Asm,
    abi: Abi,
    block: &[u32],
    args: &[LinuxSeccompArg],
    action: u32,
) {
    let body = asm.label();
    let miss = asm.label();
    for &nr in block {
        asm.jump(JEQ_K, nr, Dest::To(body), Dest::Next);
    }
    asm.ja(miss);
    asm.bind(body);
    for arg in args {
        emit_condition(asm, abi, arg, miss);
    }
    asm.ret(action);
    asm.bind(miss);
    asm.stmt(LD_W_ABS, OFF_NR);
}

/// `nr == multiplexer && arg0 in calls && every condition but those on argument 0 → action`.
/// As libseccomp does, the call number replaces the rule's conditions on argument 0 (the
/// multiplexed call's own arguments sit in memory the filter cannot read); the others stay.
/// Only i386 multiplexes, a 32-bit ABI: the call number is compared on the low 32 bits.
fn emit_multiplexed_rule(
    asm: &mut Asm,
    abi: Abi,
    multiplexer: u32,
    calls: &[u32],
    args: &[LinuxSeccompArg],
    action: u32,
) {
    let body = asm.label();
    let miss = asm.label();
    asm.jump(JEQ_K, multiplexer, Dest::Next, Dest::To(miss));
    asm.stmt(LD_W_ABS, arg_offsets(0).0);
    for (k, &call) in calls.iter().enumerate() {
        let otherwise = if k + 1 == calls.len() {
            Dest::To(miss)
        } else {
            Dest::Next
        };
        asm.jump(JEQ_K, call, Dest::To(body), otherwise);
    }
    asm.bind(body);
    for arg in args.iter().filter(|a| a.index() != 0) {
        emit_condition(asm, abi, arg, miss);
    }
    asm.ret(action);
    asm.bind(miss);
    asm.stmt(LD_W_ABS, OFF_NR);
}

/// Falls through when the argument satisfies the condition, jumps to `fail` otherwise.
fn emit_condition(asm: &mut Asm, abi: Abi, arg: &LinuxSeccompArg, fail: usize) {
    if abi.has_32_bit_args() {
        emit_condition_32(asm, arg, fail);
    } else {
        emit_condition_64(asm, arg, fail);
    }
}

/// The condition on the argument's low 32 bits, against the value's low 32 bits (libseccomp
/// drops the upper halves for 32-bit ABIs the same way).
fn emit_condition_32(asm: &mut Asm, arg: &LinuxSeccompArg, fail: usize) {
    let (lo_off, _) = arg_offsets(arg.index() as u32);
    let value = arg.value() as u32;
    let (fail, next) = (Dest::To(fail), Dest::Next);
    asm.stmt(LD_W_ABS, lo_off);
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => asm.jump(JEQ_K, value, next, fail),
        LinuxSeccompOperator::ScmpCmpNe => asm.jump(JEQ_K, value, fail, next),
        LinuxSeccompOperator::ScmpCmpGt => asm.jump(JGT_K, value, next, fail),
        LinuxSeccompOperator::ScmpCmpGe => asm.jump(JGE_K, value, next, fail),
        LinuxSeccompOperator::ScmpCmpLt => asm.jump(JGE_K, value, fail, next),
        LinuxSeccompOperator::ScmpCmpLe => asm.jump(JGT_K, value, fail, next),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // (arg & value) == valueTwo
            asm.stmt(AND_K, value);
            asm.jump(JEQ_K, arg.value_two().unwrap_or(0) as u32, next, fail);
        }
    }
}

/// The condition on the whole 64-bit argument: the high halves decide unless they are equal.
fn emit_condition_64(asm: &mut Asm, arg: &LinuxSeccompArg, fail: usize) {
    let (lo_off, hi_off) = arg_offsets(arg.index() as u32);
    let value = arg.value();
    let (hi, lo) = ((value >> 32) as u32, value as u32);
    let fail = Dest::To(fail);
    let next = Dest::Next;
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JEQ_K, hi, next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JEQ_K, lo, next, fail);
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            let pass = asm.label();
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JEQ_K, hi, next, Dest::To(pass));
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JEQ_K, lo, fail, next);
            asm.bind(pass);
        }
        op @ (LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe) => {
            let pass = asm.label();
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JGT_K, hi, Dest::To(pass), next);
            asm.jump(JEQ_K, hi, next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            let code = if op == LinuxSeccompOperator::ScmpCmpGt {
                JGT_K
            } else {
                JGE_K
            };
            asm.jump(code, lo, next, fail);
            asm.bind(pass);
        }
        op @ (LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe) => {
            let pass = asm.label();
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JGE_K, hi, next, Dest::To(pass));
            asm.jump(JEQ_K, hi, next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            // The low half fails when it is >= (LT) or > (LE) the value's.
            let code = if op == LinuxSeccompOperator::ScmpCmpLt {
                JGE_K
            } else {
                JGT_K
            };
            asm.jump(code, lo, fail, next);
            asm.bind(pass);
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // (arg & value) == valueTwo
            let datum = arg.value_two().unwrap_or(0);
            asm.stmt(LD_W_ABS, hi_off);
            asm.stmt(AND_K, hi);
            asm.jump(JEQ_K, (datum >> 32) as u32, next, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.stmt(AND_K, lo);
            asm.jump(JEQ_K, datum as u32, next, fail);
        }
    }
}

/// Offsets of the low and high 32-bit halves of argument `index`.
fn arg_offsets(index: u32) -> (u32, u32) {
    let base = OFF_ARGS + 8 * index;
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

/// The SECCOMP_RET_* value of an action; errno defaults to EPERM.
fn action_value(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<u32, ActionError> {
    let errno = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => {
            // The kernel caps errno at MAX_ERRNO.
            if errno > 4095 {
                return Err(ActionError::Errno(errno));
            }
            libc::SECCOMP_RET_ERRNO | errno
        }
        LinuxSeccompAction::ScmpActTrace => {
            if errno > libc::SECCOMP_RET_DATA {
                return Err(ActionError::TraceData(errno));
            }
            libc::SECCOMP_RET_TRACE | errno
        }
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(ActionError::Notify);
        }
    })
}

#[derive(Clone, Copy)]
enum Dest {
    Next,
    To(usize),
}

enum Op {
    Stmt {
        code: u16,
        k: u32,
    },
    Jump {
        code: u16,
        k: u32,
        jt: Dest,
        jf: Dest,
    },
    Ja(usize),
}

/// A forward-only assembler: jumps name labels, resolved to offsets by `finish`.
#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    /// The label now names the next instruction emitted.
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.ops.len());
    }

    fn stmt(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Stmt { code, k });
    }

    fn ret(&mut self, action: u32) {
        self.stmt(RET_K, action);
    }

    fn jump(&mut self, code: u16, k: u32, jt: Dest, jf: Dest) {
        self.ops.push(Op::Jump { code, k, jt, jf });
    }

    fn ja(&mut self, label: usize) {
        self.ops.push(Op::Ja(label));
    }

    fn offset(&self, pc: usize, label: usize) -> Result<usize, CompileError> {
        match self.labels[label] {
            Some(target) if target > pc && target < self.ops.len() => Ok(target - pc - 1),
            _ => Err(CompileError::BadJump(pc)),
        }
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, CompileError> {
        let short = |pc: usize, dest: Dest| -> Result<u8, CompileError> {
            let offset = match dest {
                Dest::Next => 0,
                Dest::To(label) => self.offset(pc, label)?,
            };
            u8::try_from(offset).map_err(|_| CompileError::JumpTooLong { pc, offset })
        };
        let mut out = Vec::with_capacity(self.ops.len());
        for (pc, op) in self.ops.iter().enumerate() {
            out.push(match *op {
                Op::Stmt { code, k } => insn(code, k, 0, 0),
                Op::Jump { code, k, jt, jf } => insn(code, k, short(pc, jt)?, short(pc, jf)?),
                Op::Ja(label) => {
                    let offset = self.offset(pc, label)?;
                    let off = u32::try_from(offset)
                        .map_err(|_| CompileError::JumpTooLong { pc, offset })?;
                    insn(JA, off, 0, 0)
                }
            });
        }
        Ok(out)
    }
}

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs `program` as a seccomp filter on the calling thread. The caller has already set
/// no_new_privs (or holds CAP_SYS_ADMIN). Allocation-free and async-signal-safe, so it may run
/// in a child forked from a multi-threaded process.
pub fn install(program: &[libc::sock_filter]) -> Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    let len = u16::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    let prog_ptr: *const libc::sock_fprog = &prog;
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, 0, prog) only reads `prog` and the `len`
    // instructions it points to, both alive for the whole call; the kernel copies the program
    // and never writes through the pointer despite its *mut type.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
            0 as libc::c_ulong,
            prog_ptr,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    if errno != Errno::ENOSYS {
        return Err(errno);
    }
    // Kernels before 3.17 only have the prctl interface.
    // SAFETY: as above; PR_SET_SECCOMP with SECCOMP_MODE_FILTER reads the same struct.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::c_ulong::from(libc::SECCOMP_MODE_FILTER),
            prog_ptr,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// [`install`], with the error as a message (allocated only on failure).
pub fn apply(program: &[libc::sock_filter]) -> Result<(), String> {
    install(program).map_err(|e| {
        format!(
            "installing the seccomp filter ({} instructions): {e}",
            program.len()
        )
    })
}

/// Allowed to every container, as containerd's default profile allows them.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Since Linux 4.8 ptrace cannot be used to step around the filter.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // Architecture-specific: each ABI's section skips the names that ABI lacks.
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// personality(2) personas allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
/// 0xffffffff, which only queries.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls a capability makes available.
const CAPABILITY_SYSCALLS: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// AF_VSOCK: a path to the host's hypervisor services, denied as containerd's default profile
/// denies it.
const AF_VSOCK: u64 = 40;

/// The RuntimeDefault profile for a container holding `capabilities` (names like
/// "CAP_SYS_ADMIN"): everything denied with EPERM except the syscalls containers use, plus
/// those each capability unlocks, through the host's own ABI and its 32-bit compat ones, as
/// containerd's default profile does.
pub fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    let held: Vec<String> = capabilities.iter().map(|c| cap_name(c)).collect();
    let has = |cap: &str| held.iter().any(|c| c == cap);

    let mut rules = vec![rule(
        DEFAULT_ALLOWED,
        LinuxSeccompAction::ScmpActAllow,
        None,
        &[],
    )];
    for persona in PERSONALITIES {
        rules.push(rule(
            &["personality"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            &[condition(0, LinuxSeccompOperator::ScmpCmpEq, persona, None)],
        ));
    }
    rules.push(rule(
        &["socket"],
        LinuxSeccompAction::ScmpActAllow,
        None,
        &[condition(
            0,
            LinuxSeccompOperator::ScmpCmpNe,
            AF_VSOCK,
            None,
        )],
    ));
    for (cap, names) in CAPABILITY_SYSCALLS {
        if has(cap) {
            rules.push(rule(names, LinuxSeccompAction::ScmpActAllow, None, &[]));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // Threads and processes, but no new namespaces.
        rules.push(rule(
            &["clone"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            &[condition(
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0),
            )],
        ));
        // clone3's flags sit behind a pointer the filter cannot read: ENOSYS sends libc back
        // to clone.
        rules.push(rule(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
            &[],
        ));
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(libc::EPERM as u32))
        .set_architectures(Abi::native().map(runtime_default_arches))
        .set_syscalls(Some(rules));
    profile
}

/// The host's own architecture and its compat ones, as containerd's default profile lists
/// them: 32-bit binaries run under RuntimeDefault with the same syscalls allowed.
fn runtime_default_arches(native: Abi) -> Vec<Arch> {
    std::iter::once(native)
        .chain(native.compat().iter().copied())
        .map(Abi::arch)
        .collect()
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: &[LinuxSeccompArg],
) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_errno_ret(errno_ret)
        .set_args((!args.is_empty()).then(|| args.to_vec()));
    rule
}

fn condition(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let builder = match value_two {
        Some(v) => builder.value_two(v),
        None => builder,
    };
    // Every field has a default, so building cannot fail.
    builder.build().expect("LinuxSeccompArg has defaults")
}

/// "sys_admin", "SYS_ADMIN" and "CAP_SYS_ADMIN" all name CAP_SYS_ADMIN.
fn cap_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// Reads a Localhost profile: the OCI form, or the Docker form whose `includes`/`excludes`
/// select rules by the container's `capabilities`, the architecture and the kernel version.
pub fn load_profile(json: &str, capabilities: &[String]) -> Result<LinuxSeccomp, String> {
    let host = Host {
        arch: NATIVE,
        capabilities: capabilities.iter().map(|c| cap_name(c)).collect(),
        kernel: &host_kernel,
    };
    parse_profile(json, &host)
}

/// What the Docker form's conditions are evaluated against.
struct Host<'a> {
    arch: Option<(Arch, &'static str)>,
    capabilities: Vec<String>,
    kernel: &'a dyn Fn() -> Result<KernelVersion, String>,
}

type KernelVersion = (u64, u64, u64);

fn host_kernel() -> Result<KernelVersion, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading the kernel version: {e}"))?;
    parse_kernel_version(release.trim(), true)
        .ok_or_else(|| format!("unrecognised kernel version {:?}", release.trim()))
}

/// "5.10", "5.10.3"; with `lenient`, a suffix like "-generic" is ignored.
fn parse_kernel_version(s: &str, lenient: bool) -> Option<KernelVersion> {
    let mut parts = [0u64; 3];
    let mut count = 0;
    for (i, part) in s.split('.').enumerate() {
        if i == 3 {
            return lenient.then_some((parts[0], parts[1], parts[2]));
        }
        let digits: &str = if lenient {
            let end = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            &part[..end]
        } else {
            part
        };
        parts[i] = digits.parse().ok()?;
        count += 1;
        if lenient && digits.len() != part.len() {
            break;
        }
    }
    (count >= 2).then_some((parts[0], parts[1], parts[2]))
}

fn parse_profile(json: &str, host: &Host) -> Result<LinuxSeccomp, String> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| format!("seccomp profile is not JSON: {e}"))?;
    let root = root
        .as_object()
        .ok_or("seccomp profile: expected a JSON object")?;
    let err = |what: &str, e: String| format!("seccomp profile: {what}: {e}");

    let mut profile = LinuxSeccomp::default();
    let default_action =
        get(root, "defaultAction").ok_or("seccomp profile: defaultAction is missing")?;
    profile.set_default_action(parse_action(default_action).map_err(|e| err("defaultAction", e))?);
    if let Some(v) = get(root, "defaultErrnoRet") {
        profile.set_default_errno_ret(Some(as_u32(v).map_err(|e| err("defaultErrnoRet", e))?));
    }

    let mut arches = Vec::new();
    if let Some(v) = get(root, "architectures") {
        for (i, name) in strings(v)
            .map_err(|e| err("architectures", e))?
            .iter()
            .enumerate()
        {
            arches.push(parse_arch(name).map_err(|e| err(&format!("architectures[{i}]"), e))?);
        }
    }
    if let Some(v) = get(root, "archMap") {
        if !arches.is_empty() {
            return Err(
                "seccomp profile: both architectures and archMap are given; use one".into(),
            );
        }
        let entries = v
            .as_array()
            .ok_or_else(|| err("archMap", "expected an array".into()))?;
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("archMap[{i}]");
            let entry = entry
                .as_object()
                .ok_or_else(|| err(&at, "expected an object".into()))?;
            let main = get(entry, "architecture")
                .ok_or_else(|| err(&at, "architecture is missing".into()))?;
            let main =
                parse_arch(as_str(main).map_err(|e| err(&at, e))?).map_err(|e| err(&at, e))?;
            let mut subs = Vec::new();
            if let Some(v) = get(entry, "subArchitectures") {
                let at = format!("{at}.subArchitectures");
                for name in strings(v).map_err(|e| err(&at, e))? {
                    subs.push(parse_arch(&name).map_err(|e| err(&at, e))?);
                }
            }
            // Only the host's entry applies.
            if host.arch.map(|(a, _)| a) == Some(main) {
                arches.push(main);
                arches.extend(subs);
            }
        }
    }
    if !arches.is_empty() {
        profile.set_architectures(Some(arches));
    }

    if let Some(v) = get(root, "flags") {
        let mut flags = Vec::new();
        for (i, name) in strings(v).map_err(|e| err("flags", e))?.iter().enumerate() {
            flags.push(
                LinuxSeccompFilterFlag::from_str(name)
                    .map_err(|_| err(&format!("flags[{i}]"), format!("unknown flag {name:?}")))?,
            );
        }
        profile.set_flags(Some(flags));
    }
    if let Some(v) = get(root, "listenerPath") {
        profile.set_listener_path(Some(as_str(v).map_err(|e| err("listenerPath", e))?.into()));
    }
    if let Some(v) = get(root, "listenerMetadata") {
        profile.set_listener_metadata(Some(
            as_str(v).map_err(|e| err("listenerMetadata", e))?.into(),
        ));
    }

    if let Some(v) = get(root, "syscalls") {
        let entries = v
            .as_array()
            .ok_or_else(|| err("syscalls", "expected an array".into()))?;
        let mut rules = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("syscalls[{i}]");
            if let Some(rule) = parse_rule(entry, host).map_err(|e| err(&at, e))? {
                rules.push(rule);
            }
        }
        profile.set_syscalls(Some(rules));
    }
    Ok(profile)
}

/// One entry of `syscalls`; None when its includes/excludes leave it out on this host.
fn parse_rule(entry: &Value, host: &Host) -> Result<Option<LinuxSyscall>, String> {
    let entry = entry.as_object().ok_or("expected an object")?;
    let names = match (get(entry, "names"), get(entry, "name")) {
        (Some(_), Some(_)) => return Err("both name and names are given; use one".into()),
        (Some(v), None) => strings(v).map_err(|e| format!("names: {e}"))?,
        (None, Some(v)) => vec![as_str(v).map_err(|e| format!("name: {e}"))?.to_string()],
        (None, None) => return Err("names is missing".into()),
    };
    let action = get(entry, "action").ok_or("action is missing")?;
    let action = parse_action(action).map_err(|e| format!("action: {e}"))?;
    let errno_ret = match get(entry, "errnoRet") {
        Some(v) => Some(as_u32(v).map_err(|e| format!("errnoRet: {e}"))?),
        None => None,
    };
    let mut args = Vec::new();
    if let Some(v) = get(entry, "args") {
        let list = v.as_array().ok_or("args: expected an array")?;
        for (j, arg) in list.iter().enumerate() {
            args.push(parse_arg(arg).map_err(|e| format!("args[{j}]: {e}"))?);
        }
    }
    if let Some(v) = get(entry, "includes")
        && !filter_holds(v, host, true).map_err(|e| format!("includes: {e}"))?
    {
        return Ok(None);
    }
    if let Some(v) = get(entry, "excludes")
        && filter_holds(v, host, false).map_err(|e| format!("excludes: {e}"))?
    {
        return Ok(None);
    }
    let mut rule = LinuxSyscall::default();
    rule.set_names(names)
        .set_action(action)
        .set_errno_ret(errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    Ok(Some(rule))
}

/// Whether a Docker `includes` (every listed condition holds: all caps held, the host among the
/// arches, the kernel at least minKernel) or `excludes` (any listed condition holds) matches.
fn filter_holds(v: &Value, host: &Host, includes: bool) -> Result<bool, String> {
    let filter = v.as_object().ok_or("expected an object")?;
    let mut results = Vec::new();
    if let Some(v) = get(filter, "caps") {
        let caps = strings(v).map_err(|e| format!("caps: {e}"))?;
        if !caps.is_empty() {
            let held = |c: &String| host.capabilities.contains(&cap_name(c));
            results.push(if includes {
                caps.iter().all(held)
            } else {
                caps.iter().any(held)
            });
        }
    }
    if let Some(v) = get(filter, "arches") {
        let arches = strings(v).map_err(|e| format!("arches: {e}"))?;
        if !arches.is_empty() {
            let ours = host.arch.map(|(_, name)| name);
            results.push(arches.iter().any(|a| Some(a.as_str()) == ours));
        }
    }
    if let Some(v) = get(filter, "minKernel") {
        let wanted = as_str(v).map_err(|e| format!("minKernel: {e}"))?;
        let wanted = parse_kernel_version(wanted, false)
            .ok_or_else(|| format!("minKernel: {wanted:?} is not a version like \"5.10\""))?;
        results.push((host.kernel)()? >= wanted);
    }
    Ok(if includes {
        results.iter().all(|&r| r)
    } else {
        results.iter().any(|&r| r)
    })
}

fn parse_arg(v: &Value) -> Result<LinuxSeccompArg, String> {
    let obj = v.as_object().ok_or("expected an object")?;
    let index = get(obj, "index").ok_or("index is missing")?;
    let index = as_u64(index).map_err(|e| format!("index: {e}"))?;
    if index > 5 {
        return Err(format!(
            "index {index} out of range (a syscall has arguments 0 to 5)"
        ));
    }
    let value = match get(obj, "value") {
        Some(v) => as_u64(v).map_err(|e| format!("value: {e}"))?,
        None => 0,
    };
    let value_two = match get(obj, "valueTwo") {
        Some(v) => Some(as_u64(v).map_err(|e| format!("valueTwo: {e}"))?),
        None => None,
    };
    let op = get(obj, "op").ok_or("op is missing")?;
    let op = as_str(op).map_err(|e| format!("op: {e}"))?;
    let op = LinuxSeccompOperator::from_str(op).map_err(|_| {
        format!("op: unknown operator {op:?} (SCMP_CMP_NE, _LT, _LE, _EQ, _GE, _GT or _MASKED_EQ)")
    })?;
    Ok(condition(index as usize, op, value, value_two))
}

fn parse_action(v: &Value) -> Result<LinuxSeccompAction, String> {
    let name = as_str(v)?;
    LinuxSeccompAction::from_str(name).map_err(|_| format!("unknown action {name:?}"))
}

fn parse_arch(name: &str) -> Result<Arch, String> {
    Arch::from_str(name).map_err(|_| format!("unknown architecture {name:?}"))
}

/// A member, a JSON null counting as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn as_str(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, found {v}"))
}

fn as_u64(v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("expected a non-negative integer, found {v}"))
}

fn as_u32(v: &Value) -> Result<u32, String> {
    u32::try_from(as_u64(v)?).map_err(|_| format!("{v} is too large"))
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("expected an array, found {v}"))?;
    list.iter()
        .map(|item| as_str(item).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use syscalls::Sysno;

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn nr(name: &str) -> u32 {
        Sysno::from_str(name).unwrap().id() as u32
    }

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn profile(default: LinuxSeccompAction, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
        let mut p = LinuxSeccomp::default();
        p.set_default_action(default).set_syscalls(Some(rules));
        p
    }

    /// Checks what the kernel's verifier checks of a seccomp program: known instructions,
    /// aligned in-bounds loads, forward jumps that land inside, a return at the end.
    fn verify(prog: &[libc::sock_filter]) {
        assert!(!prog.is_empty() && prog.len() <= MAX_INSTRUCTIONS);
        for (pc, ins) in prog.iter().enumerate() {
            let next = pc + 1;
            match ins.code {
                LD_W_ABS => assert!(ins.k % 4 == 0 && ins.k + 4 <= 64, "load at {pc}"),
                AND_K | RET_K => {}
                JA => assert!(next + (ins.k as usize) < prog.len(), "ja at {pc}"),
                JEQ_K | JGT_K | JGE_K => {
                    assert!(next + (ins.jt as usize) < prog.len(), "jt at {pc}");
                    assert!(next + (ins.jf as usize) < prog.len(), "jf at {pc}");
                }
                code => panic!("unexpected opcode {code:#x} at {pc}"),
            }
        }
        assert_eq!(prog.last().unwrap().code, RET_K);
    }

    /// Runs a classic-BPF seccomp program on one syscall.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let ins = prog[pc];
            pc += 1;
            let taken = |cond: bool| if cond { ins.jt } else { ins.jf } as usize;
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                AND_K => a &= ins.k,
                JA => pc += ins.k as usize,
                JEQ_K => pc += taken(a == ins.k),
                JGT_K => pc += taken(a > ins.k),
                JGE_K => pc += taken(a >= ins.k),
                RET_K => return ins.k,
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
    }

    fn native() -> u32 {
        Abi::native().unwrap().audit_arch()
    }

    fn call(prog: &[libc::sock_filter], name: &str, args: [u64; 6]) -> u32 {
        run(prog, native(), nr(name), args)
    }

    #[test]
    fn default_profile_fits_and_verifies() {
        for held in [caps(&[]), caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"])] {
            let prog = compile(&runtime_default(&held)).unwrap();
            verify(&prog);
            assert!(prog.len() < MAX_INSTRUCTIONS, "{} instructions", prog.len());
        }
    }

    #[test]
    fn default_profile_decisions() {
        let prog = compile(&runtime_default(&[])).unwrap();
        assert_eq!(call(&prog, "read", [0; 6]), ALLOW);
        assert_eq!(call(&prog, "exit_group", [0; 6]), ALLOW);
        assert_eq!(call(&prog, "kexec_load", [0; 6]), EPERM);
        assert_eq!(call(&prog, "keyctl", [0; 6]), EPERM);
        assert_eq!(call(&prog, "mount", [0; 6]), EPERM);
        assert_eq!(call(&prog, "chroot", [0; 6]), EPERM);
        // Numbers no syscall has yet.
        assert_eq!(run(&prog, native(), 999, [0; 6]), EPERM);

        assert_eq!(call(&prog, "personality", [0; 6]), ALLOW);
        assert_eq!(
            call(&prog, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(call(&prog, "personality", [5, 0, 0, 0, 0, 0]), EPERM);
        // Only the exact 64-bit value counts.
        assert_eq!(call(&prog, "personality", [1 << 32, 0, 0, 0, 0, 0]), EPERM);

        assert_eq!(
            call(&prog, "socket", [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(call(&prog, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]), EPERM);

        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        let newns = libc::SIGCHLD as u64 | libc::CLONE_NEWNS as u64;
        assert_eq!(call(&prog, "clone", [thread, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&prog, "clone", [newns, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            call(&prog, "clone", [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            call(&prog, "clone3", [0; 6]),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(call(&prog, "unshare", [0; 6]), EPERM);

        let admin = compile(&runtime_default(&caps(&["CAP_SYS_ADMIN"]))).unwrap();
        assert_eq!(call(&admin, "clone", [newns, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&admin, "clone3", [0; 6]), ALLOW);
        assert_eq!(call(&admin, "mount", [0; 6]), ALLOW);
        assert_eq!(call(&admin, "unshare", [0; 6]), ALLOW);
        assert_eq!(call(&admin, "chroot", [0; 6]), EPERM);

        let chroot = compile(&runtime_default(&caps(&["sys_chroot"]))).unwrap();
        assert_eq!(call(&chroot, "chroot", [0; 6]), ALLOW);
    }

    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    /// Runs `name`, by `abi`'s number, through the program as a call made through `abi`.
    fn abi_call(prog: &[libc::sock_filter], abi: Abi, name: &str, args: [u64; 6]) -> u32 {
        let nr = abi
            .number(name)
            .unwrap_or_else(|| panic!("{abi:?} has no {name}"));
        run(prog, abi.audit_arch(), nr, args)
    }

    /// RuntimeDefault as it is compiled on a `host` machine.
    fn default_program(host: Abi, capabilities: &[&str]) -> Vec<libc::sock_filter> {
        let mut p = runtime_default(&caps(capabilities));
        p.set_architectures(Some(runtime_default_arches(host)));
        let prog = compile_for(&p, host).unwrap();
        verify(&prog);
        prog
    }

    #[test]
    fn default_profile_lists_the_compat_architectures() {
        assert_eq!(
            runtime_default_arches(Abi::X86_64),
            [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        assert_eq!(
            runtime_default_arches(Abi::Aarch64),
            [Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
        let native = Abi::native().unwrap();
        assert_eq!(
            runtime_default(&[]).architectures().as_deref(),
            Some(&runtime_default_arches(native)[..])
        );
        for host in [Abi::X86_64, Abi::Aarch64] {
            for held in [&[][..], &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"][..]] {
                let prog = default_program(host, held);
                assert!(prog.len() < MAX_INSTRUCTIONS, "{} instructions", prog.len());
            }
        }
    }

    #[test]
    fn i386_decisions() {
        use Abi::I386;
        let prog = default_program(Abi::X86_64, &[]);
        for name in [
            "write",
            "exit",
            "exit_group",
            "read",
            "mmap2",
            "_llseek",
            "fcntl64",
            "chown32",
            "sigreturn",
            "waitpid",
            "set_thread_area",
            "arch_prctl",
            "modify_ldt",
            "socketcall",
            "ipc",
        ] {
            assert_eq!(abi_call(&prog, I386, name, [0; 6]), ALLOW, "{name}");
        }
        for name in [
            "kexec_load",
            "mount",
            "umount",
            "unshare",
            "setns",
            "keyctl",
            "chroot",
            "iopl",
            "vm86",
            "vm86old",
            "clock_settime",
        ] {
            assert_eq!(abi_call(&prog, I386, name, [0; 6]), EPERM, "{name}");
        }
        assert_eq!(run(&prog, I386.audit_arch(), 999, [0; 6]), EPERM);
        // x86_64's numbers mean nothing here: 59 (x86_64 execve) is i386's oldolduname.
        assert_eq!(run(&prog, I386.audit_arch(), 59, [0; 6]), EPERM);

        // Argument filters see the low 32 bits, all the syscall gets.
        let personality = |arg: u64| abi_call(&prog, I386, "personality", [arg, 0, 0, 0, 0, 0]);
        assert_eq!(personality(0), ALLOW);
        assert_eq!(personality(0x20008), ALLOW);
        assert_eq!(personality(0xffff_ffff), ALLOW);
        assert_eq!(personality(5), EPERM);
        assert_eq!(personality(0x1_0000_0005), EPERM);
        assert_eq!(personality(0xdead_0000_0000_0000), ALLOW);

        let socket = |family: u64| abi_call(&prog, I386, "socket", [family, 1, 0, 0, 0, 0]);
        assert_eq!(socket(libc::AF_INET as u64), ALLOW);
        assert_eq!(socket(AF_VSOCK), EPERM);
        assert_eq!(socket((1 << 32) | AF_VSOCK), EPERM);
        // socketcall(2) is allowed whatever it carries, as containerd's profile allows it.
        assert_eq!(
            abi_call(&prog, I386, "socketcall", [1, 0x1000, 0, 0, 0, 0]),
            ALLOW
        );

        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        let newns = libc::SIGCHLD as u64 | libc::CLONE_NEWNS as u64;
        let clone = |flags: u64| abi_call(&prog, I386, "clone", [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(thread), ALLOW);
        assert_eq!(clone(newns), EPERM);
        assert_eq!(clone(libc::CLONE_NEWUSER as u64), EPERM);
        assert_eq!(abi_call(&prog, I386, "clone3", [0; 6]), ENOSYS);

        let admin = default_program(Abi::X86_64, &["CAP_SYS_ADMIN"]);
        assert_eq!(abi_call(&admin, I386, "unshare", [0; 6]), ALLOW);
        assert_eq!(abi_call(&admin, I386, "mount", [0; 6]), ALLOW);
        assert_eq!(
            abi_call(&admin, I386, "clone", [newns, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(abi_call(&admin, I386, "kexec_load", [0; 6]), EPERM);
    }

    /// Every syscall both ABIs have gets the same answer through either; those only i386 has
    /// are allowed exactly when the profile names them.
    #[test]
    fn i386_decides_as_x86_64_does_by_name() {
        for held in [
            &[][..],
            &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_TIME"][..],
        ] {
            let prog = default_program(Abi::X86_64, held);
            let allowed: Vec<String> = runtime_default(&caps(held))
                .syscalls()
                .iter()
                .flatten()
                .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
                .flat_map(|r| r.names().clone())
                .collect();
            for sysno in syscalls::x86::Sysno::iter() {
                let name = sysno.name();
                let got = abi_call(&prog, Abi::I386, name, [0; 6]);
                let want = match Abi::X86_64.number(name) {
                    Some(_) => abi_call(&prog, Abi::X86_64, name, [0; 6]),
                    None if allowed.iter().any(|n| n == name) => ALLOW,
                    None => EPERM,
                };
                assert_eq!(got, want, "{name} with {held:?}");
            }
        }
    }

    /// x32 calls: every x86_64 syscall x32 has gets x86_64's answer at x32's number; x86_64's
    /// own numbers with the x32 bit are refused.
    #[test]
    fn x32_decides_as_x86_64_does_by_name() {
        let prog = default_program(Abi::X86_64, &[]);
        for sysno in syscalls::x86_64::Sysno::iter() {
            let name = sysno.name();
            if Abi::X32.number(name).is_some() {
                let want = abi_call(&prog, Abi::X86_64, name, [0; 6]);
                assert_eq!(abi_call(&prog, Abi::X32, name, [0; 6]), want, "{name}");
            }
        }
        let x86_64 = Abi::X86_64.audit_arch();
        for name in ["execve", "ioctl", "rt_sigaction", "recvmsg"] {
            assert_eq!(abi_call(&prog, Abi::X32, name, [0; 6]), ALLOW, "{name}");
            let nr = X32_SYSCALL_BIT | Abi::X86_64.number(name).unwrap();
            assert_eq!(run(&prog, x86_64, nr, [0; 6]), EPERM, "{name}");
        }
        assert_eq!(abi_call(&prog, Abi::X32, "kexec_load", [0; 6]), EPERM);
        assert_eq!(abi_call(&prog, Abi::X32, "unshare", [0; 6]), EPERM);
        assert_eq!(run(&prog, x86_64, X32_SYSCALL_BIT | 999, [0; 6]), EPERM);
        let socket = |family: u64| abi_call(&prog, Abi::X32, "socket", [family, 1, 0, 0, 0, 0]);
        assert_eq!(socket(libc::AF_UNIX as u64), ALLOW);
        assert_eq!(socket(AF_VSOCK), EPERM);
        assert_eq!(socket((1 << 32) | AF_VSOCK), EPERM);
    }

    #[test]
    fn unlisted_architectures_are_killed_and_unlisted_x32_refused() {
        let prog = default_program(Abi::X86_64, &[]);
        for arch in [Abi::Aarch64.audit_arch(), Abi::Arm.audit_arch(), 0x1234] {
            assert_eq!(run(&prog, arch, 1, [0; 6]), KILL, "{arch:#x}");
        }
        let arm64 = default_program(Abi::Aarch64, &[]);
        for arch in [Abi::X86_64.audit_arch(), Abi::I386.audit_arch()] {
            assert_eq!(run(&arm64, arch, 1, [0; 6]), KILL, "{arch:#x}");
        }

        let allow_write = |arches: Option<Vec<Arch>>| {
            let mut p = profile(
                LinuxSeccompAction::ScmpActErrno,
                vec![rule(
                    &["write"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    &[],
                )],
            );
            p.set_architectures(arches);
            let prog = compile_for(&p, Abi::X86_64).unwrap();
            verify(&prog);
            prog
        };
        for arches in [
            None,
            Some(vec![]),
            Some(vec![Arch::ScmpArchX86_64]),
            Some(vec![Arch::ScmpArchS390x, Arch::ScmpArchArm]),
        ] {
            let prog = allow_write(arches.clone());
            assert_eq!(abi_call(&prog, Abi::X86_64, "write", [0; 6]), ALLOW);
            assert_eq!(
                abi_call(&prog, Abi::I386, "write", [0; 6]),
                KILL,
                "{arches:?}"
            );
            assert_eq!(
                abi_call(&prog, Abi::X32, "write", [0; 6]),
                ENOSYS,
                "{arches:?}"
            );
        }
        // The host's own architecture is filtered even when the profile leaves it out.
        let prog = allow_write(Some(vec![Arch::ScmpArchX86]));
        assert_eq!(abi_call(&prog, Abi::X86_64, "write", [0; 6]), ALLOW);
        assert_eq!(abi_call(&prog, Abi::X86_64, "read", [0; 6]), EPERM);
        assert_eq!(abi_call(&prog, Abi::I386, "write", [0; 6]), ALLOW);
        assert_eq!(abi_call(&prog, Abi::I386, "read", [0; 6]), EPERM);
        assert_eq!(abi_call(&prog, Abi::X32, "write", [0; 6]), ENOSYS);
        let prog = allow_write(Some(vec![Arch::ScmpArchX32, Arch::ScmpArchX86_64]));
        assert_eq!(abi_call(&prog, Abi::X32, "write", [0; 6]), ALLOW);
        assert_eq!(abi_call(&prog, Abi::X32, "read", [0; 6]), EPERM);
        assert_eq!(abi_call(&prog, Abi::I386, "write", [0; 6]), KILL);
    }

    #[test]
    fn arm_compat_on_arm64_hosts() {
        use Abi::{Aarch64, Arm};
        let prog = default_program(Aarch64, &[]);
        for name in [
            "write",
            "exit_group",
            "mmap2",
            "set_tls",
            "cacheflush",
            "breakpoint",
            "arm_fadvise64_64",
            "arm_sync_file_range",
        ] {
            assert_eq!(abi_call(&prog, Arm, name, [0; 6]), ALLOW, "{name}");
        }
        for name in ["mount", "unshare", "kexec_load", "usr26"] {
            assert_eq!(abi_call(&prog, Arm, name, [0; 6]), EPERM, "{name}");
        }
        assert_eq!(
            abi_call(&prog, Arm, "personality", [5, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            abi_call(&prog, Arm, "socket", [AF_VSOCK, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            abi_call(
                &prog,
                Arm,
                "clone",
                [libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        for name in ["write", "newfstatat", "fstat", "clone"] {
            assert_eq!(abi_call(&prog, Aarch64, name, [0; 6]), ALLOW, "{name}");
        }
        assert_eq!(abi_call(&prog, Aarch64, "mount", [0; 6]), EPERM);
    }

    /// On i386 a socket or IPC rule also covers socketcall(2) or ipc(2) carrying its call
    /// number, the call number standing in for conditions on argument 0, as in libseccomp.
    #[test]
    fn multiplexed_calls_on_i386() {
        use Abi::{I386, X86_64};
        use LinuxSeccompOperator::*;
        let edom = libc::SECCOMP_RET_ERRNO | libc::EDOM as u32;
        let mut p = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![
                rule(
                    &["socket"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    &[condition(0, ScmpCmpEq, libc::AF_INET as u64, None)],
                ),
                rule(
                    &["socketpair"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    &[
                        condition(0, ScmpCmpEq, libc::AF_UNIX as u64, None),
                        condition(1, ScmpCmpEq, 7, None),
                    ],
                ),
                rule(
                    &["send", "recv"],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    &[],
                ),
                rule(
                    &["semget", "bind", "shmat"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EDOM as u32),
                    &[],
                ),
            ],
        );
        p.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]));
        let prog = compile_for(&p, X86_64).unwrap();
        verify(&prog);
        let socketcall = |args: [u64; 6]| abi_call(&prog, I386, "socketcall", args);
        let ipc = |args: [u64; 6]| abi_call(&prog, I386, "ipc", args);

        assert_eq!(abi_call(&prog, I386, "socket", [2, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(abi_call(&prog, I386, "socket", [1, 1, 0, 0, 0, 0]), EPERM);
        assert_eq!(socketcall([1, 0x1000, 0, 0, 0, 0]), ALLOW);
        assert_eq!(socketcall([2, 0x1000, 0, 0, 0, 0]), edom);
        assert_eq!(socketcall([3, 0x1000, 0, 0, 0, 0]), EPERM);
        // socketpair's argument-1 condition stays, on socketcall's own argument 1.
        assert_eq!(socketcall([8, 7, 0, 0, 0, 0]), ALLOW);
        assert_eq!(socketcall([8, 0x1000, 0, 0, 0, 0]), EPERM);
        assert_eq!(socketcall([9, 0x1000, 0, 0, 0, 0]), ALLOW);
        assert_eq!(socketcall([10, 0x1000, 0, 0, 0, 0]), ALLOW);
        assert_eq!(socketcall([11, 0x1000, 0, 0, 0, 0]), EPERM);
        assert_eq!(ipc([2, 0, 0, 0, 0, 0]), edom);
        assert_eq!(ipc([21, 0, 0, 0, 0, 0]), edom);
        assert_eq!(ipc([1, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(abi_call(&prog, I386, "semget", [0; 6]), edom);
        assert_eq!(abi_call(&prog, I386, "shmat", [0; 6]), edom);
        assert_eq!(abi_call(&prog, I386, "bind", [0; 6]), edom);

        assert_eq!(abi_call(&prog, X86_64, "socket", [2, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(abi_call(&prog, X86_64, "socket", [1, 1, 0, 0, 0, 0]), EPERM);
        assert_eq!(abi_call(&prog, X86_64, "semget", [0; 6]), edom);
    }

    #[test]
    fn every_operator_compares_64_bits() {
        use LinuxSeccompOperator::*;
        let value: u64 = 0x0000_0001_0000_0005;
        let samples: [u64; 12] = [
            0,
            5,
            6,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0004,
            0x1_0000_0005,
            0x1_0000_0006,
            0x1_ffff_ffff,
            0x2_0000_0005,
            0x8000_0000_0000_0005,
            u64::MAX,
        ];
        let mask: u64 = 0xff00_0000_0000_00ff;
        let datum: u64 = 0x0100_0000_0000_0005;
        let expected = |op: LinuxSeccompOperator, x: u64| match op {
            ScmpCmpEq => x == value,
            ScmpCmpNe => x != value,
            ScmpCmpLt => x < value,
            ScmpCmpLe => x <= value,
            ScmpCmpGt => x > value,
            ScmpCmpGe => x >= value,
            ScmpCmpMaskedEq => x & mask == datum,
        };
        let ops = [
            ScmpCmpEq,
            ScmpCmpNe,
            ScmpCmpLt,
            ScmpCmpLe,
            ScmpCmpGt,
            ScmpCmpGe,
            ScmpCmpMaskedEq,
        ];
        let hit = libc::SECCOMP_RET_ERRNO | libc::EDOM as u32;
        for op in ops {
            let (v, v2) = if op == ScmpCmpMaskedEq {
                (mask, Some(datum))
            } else {
                (value, None)
            };
            let p = profile(
                LinuxSeccompAction::ScmpActAllow,
                vec![rule(
                    &["read"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EDOM as u32),
                    &[condition(3, op, v, v2)],
                )],
            );
            let prog = compile(&p).unwrap();
            verify(&prog);
            let mut extra = samples.to_vec();
            extra.extend([datum, datum | 0x00ff_ffff_ffff_ff00, datum ^ 1]);
            for x in extra {
                let got = call(&prog, "read", [0, 0, 0, x, 0, 0]);
                let want = if expected(op, x) { hit } else { ALLOW };
                assert_eq!(got, want, "{op:?} with {x:#x}");
            }
            // Other syscalls and other arguments are not looked at.
            assert_eq!(call(&prog, "write", [0, 0, 0, value, 0, 0]), ALLOW);
        }
    }

    #[test]
    fn conditions_are_anded_and_rules_tried_in_order() {
        use LinuxSeccompOperator::*;
        let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![
                rule(
                    &["write", "read"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(1),
                    &[
                        condition(0, ScmpCmpEq, 7, None),
                        condition(2, ScmpCmpGt, 100, None),
                    ],
                ),
                rule(&["read"], LinuxSeccompAction::ScmpActErrno, Some(2), &[]),
                rule(&["read"], LinuxSeccompAction::ScmpActErrno, Some(3), &[]),
                rule(
                    &["not_a_syscall", "write"],
                    LinuxSeccompAction::ScmpActTrap,
                    None,
                    &[condition(1, ScmpCmpEq, 9, None)],
                ),
                rule(&["getpid"], LinuxSeccompAction::ScmpActLog, None, &[]),
                rule(
                    &["gettid"],
                    LinuxSeccompAction::ScmpActKillProcess,
                    None,
                    &[],
                ),
                rule(
                    &["getppid"],
                    LinuxSeccompAction::ScmpActTrace,
                    Some(42),
                    &[],
                ),
            ],
        );
        let prog = compile(&p).unwrap();
        verify(&prog);
        assert_eq!(call(&prog, "read", [7, 0, 101, 0, 0, 0]), errno(1));
        assert_eq!(call(&prog, "write", [7, 0, 101, 0, 0, 0]), errno(1));
        assert_eq!(call(&prog, "read", [7, 0, 100, 0, 0, 0]), errno(2));
        assert_eq!(call(&prog, "read", [6, 0, 101, 0, 0, 0]), errno(2));
        assert_eq!(
            call(&prog, "write", [6, 9, 0, 0, 0, 0]),
            libc::SECCOMP_RET_TRAP
        );
        assert_eq!(call(&prog, "write", [6, 8, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&prog, "getpid", [0; 6]), libc::SECCOMP_RET_LOG);
        assert_eq!(
            call(&prog, "gettid", [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(call(&prog, "getppid", [0; 6]), libc::SECCOMP_RET_TRACE | 42);
    }

    #[test]
    fn long_rules_keep_jumps_short() {
        let all: Vec<String> = Sysno::iter().map(|s| s.name().to_string()).collect();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        assert!(names.len() > 2 * NAMES_PER_BLOCK);
        let cond = condition(0, LinuxSeccompOperator::ScmpCmpEq, 1, None);
        let p = profile(
            LinuxSeccompAction::ScmpActKillThread,
            vec![
                rule(&names, LinuxSeccompAction::ScmpActErrno, Some(5), &[cond]),
                rule(&names, LinuxSeccompAction::ScmpActAllow, None, &[]),
            ],
        );
        let prog = compile(&p).unwrap();
        verify(&prog);
        for sysno in Sysno::iter() {
            let nr = sysno.id() as u32;
            assert_eq!(
                run(&prog, native(), nr, [1, 0, 0, 0, 0, 0]),
                libc::SECCOMP_RET_ERRNO | 5
            );
            assert_eq!(run(&prog, native(), nr, [2, 0, 0, 0, 0, 0]), ALLOW);
        }
        assert_eq!(
            run(&prog, native(), 5000, [0; 6]),
            libc::SECCOMP_RET_KILL_THREAD
        );
    }

    #[test]
    fn unsupported_and_invalid_rules_are_refused() {
        let notify = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["read"],
                LinuxSeccompAction::ScmpActNotify,
                None,
                &[],
            )],
        );
        assert_eq!(
            compile(&notify).unwrap_err(),
            CompileError::Action {
                rule: 0,
                error: ActionError::Notify
            }
        );
        assert!(
            compile(&notify)
                .unwrap_err()
                .to_string()
                .contains("SCMP_ACT_NOTIFY")
        );
        let bad_index = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["read"],
                LinuxSeccompAction::ScmpActAllow,
                None,
                &[condition(6, LinuxSeccompOperator::ScmpCmpEq, 0, None)],
            )],
        );
        assert!(
            compile(&bad_index)
                .unwrap_err()
                .to_string()
                .contains("syscalls[0].args[0]")
        );
        let mut bad_errno = profile(LinuxSeccompAction::ScmpActErrno, vec![]);
        bad_errno.set_default_errno_ret(Some(70000));
        assert_eq!(
            compile(&bad_errno).unwrap_err().to_string(),
            "defaultAction: errnoRet 70000 out of range (0 to 4095)"
        );
    }

    fn test_host(capabilities: &[&str]) -> Host<'static> {
        Host {
            arch: NATIVE,
            capabilities: capabilities.iter().map(|c| cap_name(c)).collect(),
            kernel: &|| Ok((5, 10, 0)),
        }
    }

    #[test]
    fn oci_form_round_trips() {
        let original = runtime_default(&caps(&["CAP_SYS_PTRACE"]));
        let json = serde_json::to_string(&original).unwrap();
        assert_eq!(load_profile(&json, &[]).unwrap(), original);
    }

    #[test]
    fn docker_form_selects_rules_by_host() {
        let (_, goarch) = NATIVE.unwrap();
        let (main, main_name) = match NATIVE.unwrap().0 {
            Arch::ScmpArchX86_64 => (Arch::ScmpArchX86_64, "SCMP_ARCH_X86_64"),
            _ => (Arch::ScmpArchAarch64, "SCMP_ARCH_AARCH64"),
        };
        let json = format!(
            r#"{{
              "defaultAction": "SCMP_ACT_ERRNO",
              "defaultErrnoRet": 1,
              "archMap": [
                {{"architecture": "{main_name}", "subArchitectures": []}},
                {{"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]}}
              ],
              "syscalls": [
                {{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"}},
                {{"name": "chroot", "action": "SCMP_ACT_ALLOW", "includes": {{"caps": ["CAP_SYS_CHROOT"]}}}},
                {{"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {{"caps": ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]}}}},
                {{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {{"caps": ["CAP_SYS_ADMIN"]}},
                  "args": [{{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}}]}},
                {{"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {{"arches": ["{goarch}"]}}}},
                {{"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "includes": {{"arches": ["s390x"]}}}},
                {{"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "includes": {{"minKernel": "4.8"}}}},
                {{"names": ["getuid"], "action": "SCMP_ACT_ALLOW", "includes": {{"minKernel": "6.1"}}}},
                {{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {{"caps": ["CAP_SYS_ADMIN"]}}}}
              ]
            }}"#
        );
        let plain = parse_profile(&json, &test_host(&["CAP_SYS_CHROOT"])).unwrap();
        assert_eq!(plain.architectures().as_deref(), Some(&[main][..]));
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .iter()
                .flatten()
                .map(|r| r.names().join(","))
                .collect()
        };
        assert_eq!(
            names(&plain),
            [
                "read,write",
                "chroot",
                "clone",
                "getpid",
                "gettid",
                "clone3"
            ]
        );
        let clone = &plain.syscalls().as_ref().unwrap()[2];
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.value_two(), arg.op()),
            (
                0,
                0x7e02_0000,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq
            )
        );
        assert_eq!(plain.syscalls().as_ref().unwrap()[5].errno_ret(), Some(38));

        let admin = parse_profile(&json, &test_host(&["SYS_ADMIN", "CAP_SYS_CHROOT"])).unwrap();
        assert_eq!(
            names(&admin),
            ["read,write", "chroot", "mount", "getpid", "gettid"]
        );
        compile(&admin).unwrap();
    }

    #[test]
    fn localhost_profiles_choose_their_architectures() {
        let host = |arch: (Arch, &'static str)| Host {
            arch: Some(arch),
            capabilities: Vec::new(),
            kernel: &|| Ok((6, 1, 0)),
        };
        let docker = r#"{
          "defaultAction": "SCMP_ACT_ERRNO",
          "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
          ],
          "syscalls": [{"names": ["write"], "action": "SCMP_ACT_ALLOW"}]
        }"#;
        let p = parse_profile(docker, &host((Arch::ScmpArchX86_64, "amd64"))).unwrap();
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        let prog = compile_for(&p, Abi::X86_64).unwrap();
        for abi in [Abi::X86_64, Abi::I386, Abi::X32] {
            assert_eq!(abi_call(&prog, abi, "write", [0; 6]), ALLOW, "{abi:?}");
            assert_eq!(abi_call(&prog, abi, "read", [0; 6]), EPERM, "{abi:?}");
        }
        let p = parse_profile(docker, &host((Arch::ScmpArchAarch64, "arm64"))).unwrap();
        let prog = compile_for(&p, Abi::Aarch64).unwrap();
        assert_eq!(abi_call(&prog, Abi::Arm, "write", [0; 6]), ALLOW);
        assert_eq!(abi_call(&prog, Abi::Arm, "read", [0; 6]), EPERM);

        let oci = r#"{
          "defaultAction": "SCMP_ACT_ERRNO",
          "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
          "syscalls": [{"names": ["write"], "action": "SCMP_ACT_ALLOW"}]
        }"#;
        let p = parse_profile(oci, &host((Arch::ScmpArchX86_64, "amd64"))).unwrap();
        let prog = compile_for(&p, Abi::X86_64).unwrap();
        assert_eq!(abi_call(&prog, Abi::I386, "write", [0; 6]), ALLOW);
        assert_eq!(abi_call(&prog, Abi::X32, "write", [0; 6]), ENOSYS);
    }

    #[test]
    fn profile_errors_name_the_problem() {
        let host = test_host(&[]);
        let err = |json: &str| parse_profile(json, &host).unwrap_err();
        assert!(err("[]").contains("expected a JSON object"));
        assert!(err("{").contains("not JSON"));
        assert!(err(r#"{"syscalls": []}"#).contains("defaultAction is missing"));
        assert!(
            err(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#)
                .contains("unknown action \"SCMP_ACT_NOPE\"")
        );
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}"#,
        );
        assert!(e.contains("syscalls[0]") && e.contains("\"ALLOW\""), "{e}");
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}, {"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(
            e.contains("syscalls[0]") && e.contains("names is missing"),
            "{e}"
        );
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(e.contains("syscalls[0]: args[0]: value"), "{e}");
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}"#,
        );
        assert!(e.contains("unknown operator \"EQ\""), "{e}");
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "archMap": []}"#,
        );
        assert!(e.contains("archMap"), "{e}");
        let e = err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]}"#);
        assert!(
            e.contains("architectures[0]") && e.contains("x86_64"),
            "{e}"
        );
        let e = err(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#,
        );
        assert!(e.contains("minKernel"), "{e}");
        // The one-name-after-another form both accepts.
        let ok = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "read", "action": "SCMP_ACT_ERRNO"}]}"#;
        assert_eq!(
            parse_profile(ok, &host)
                .unwrap()
                .syscalls()
                .as_ref()
                .unwrap()[0]
                .names(),
            &["read"]
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            parse_kernel_version("6.18.44-fc-v595", true),
            Some((6, 18, 44))
        );
        assert_eq!(
            parse_kernel_version("5.4.0-150-generic", true),
            Some((5, 4, 0))
        );
        assert_eq!(parse_kernel_version("6.1-rc1", true), Some((6, 1, 0)));
        assert_eq!(parse_kernel_version("4.8", false), Some((4, 8, 0)));
        assert_eq!(parse_kernel_version("4", false), None);
        assert_eq!(parse_kernel_version("4.x", false), None);
        assert!(host_kernel().is_ok());
    }

    /// Forks a child that sets no_new_privs, installs `program`, then runs `checks`; the
    /// child's exit code (0 when every check held) comes back. Between fork and _exit the
    /// child only makes raw syscalls: the test harness is multi-threaded.
    fn in_filtered_child(program: &[libc::sock_filter], checks: fn() -> i32) -> i32 {
        // SAFETY: the child touches only memory prepared before the fork and calls only
        // async-signal-safe functions (prctl, seccomp, raw syscalls, _exit), never returning.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integers only; _exit ends the child
            // without running the parent's atexit handlers or destructors.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                if install(program).is_err() {
                    libc::_exit(101);
                }
                libc::_exit(checks());
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child, writing its status into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// The errno of a raw syscall that must fail.
    fn failed_with(rc: libc::c_long) -> i32 {
        if rc == -1 {
            nix::errno::Errno::last_raw()
        } else {
            0
        }
    }

    #[test]
    fn filter_works_in_the_kernel() {
        use LinuxSeccompOperator::*;
        let p = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![
                rule(
                    &["mkdirat"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EACCES as u32),
                    &[],
                ),
                rule(
                    &["getpgid"],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EDOM as u32),
                    &[condition(0, ScmpCmpEq, 0xdead_0000_0000_0001, None)],
                ),
            ],
        );
        let program = compile(&p).unwrap();
        let code = in_filtered_child(&program, || {
            // SAFETY: raw syscalls with integer arguments and a static C string.
            unsafe {
                let rc = libc::syscall(
                    libc::SYS_mkdirat,
                    libc::AT_FDCWD,
                    c"/nonexistent-crius-seccomp-test/dir".as_ptr(),
                    0o755,
                );
                if failed_with(rc) != libc::EACCES {
                    return 1;
                }
                if failed_with(libc::syscall(libc::SYS_getpgid, 0xdead_0000_0000_0001u64))
                    != libc::EDOM
                {
                    return 2;
                }
                // Same low half, other high half: not the rule's value, so the kernel answers.
                if failed_with(libc::syscall(libc::SYS_getpgid, 0xbeef_0000_0000_0001u64))
                    == libc::EDOM
                {
                    return 3;
                }
                if libc::syscall(libc::SYS_getpgid, 0) < 0 {
                    return 4;
                }
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed in the child");
    }

    #[test]
    fn default_profile_works_in_the_kernel() {
        let program = compile(&runtime_default(&[])).unwrap();
        let code = in_filtered_child(&program, || {
            // SAFETY: raw syscalls with integer or null arguments; any that the filter let
            // through (unshare, personality) only change this child.
            unsafe {
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 1;
                }
                if failed_with(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS)) != libc::EPERM
                {
                    return 2;
                }
                if failed_with(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0))
                    != libc::ENOSYS
                {
                    return 3;
                }
                if failed_with(libc::syscall(libc::SYS_personality, 5)) != libc::EPERM {
                    return 4;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) < 0 {
                    return 5;
                }
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed in the child");
    }

    // i386 syscall numbers for the checks below, which run where nothing may be looked up.
    #[cfg(target_arch = "x86_64")]
    const I386_GETPID: u32 = 20;
    #[cfg(target_arch = "x86_64")]
    const I386_PERSONALITY: u32 = 136;
    #[cfg(target_arch = "x86_64")]
    const I386_UNSHARE: u32 = 310;
    #[cfg(target_arch = "x86_64")]
    const I386_SOCKET: u32 = 359;

    /// An i386 syscall made from this 64-bit process through `int 0x80`, which the kernel
    /// takes as AUDIT_ARCH_I386; the raw result, -errno on failure.
    #[cfg(target_arch = "x86_64")]
    fn int80(nr: u32, arg0: u32, arg1: u32) -> i32 {
        let ret: i32;
        // SAFETY: int 0x80 with integer arguments only, none a pointer. ebx (which LLVM keeps
        // for itself) gets the first argument by swapping the whole of rbx in and back; r8-r11,
        // which kernels before 4.17 cleared, are declared clobbered; no stack is touched.
        unsafe {
            std::arch::asm!(
                "xchg {arg0}, rbx",
                "int 0x80",
                "xchg {arg0}, rbx",
                arg0 = inout(reg) u64::from(arg0) => _,
                inlateout("eax") nr as i32 => ret,
                in("ecx") arg1,
                in("edx") 0u32,
                in("esi") 0u32,
                in("edi") 0u32,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                out("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// Whether this kernel runs i386 syscalls (CONFIG_IA32_EMULATION, not turned off at boot):
    /// without them `int 0x80` faults, which a throwaway child finds out.
    #[cfg(target_arch = "x86_64")]
    fn ia32_emulation_works() -> bool {
        // SAFETY: the child makes one raw syscall and _exits, touching nothing else.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = if int80(I386_GETPID, 0, 0) > 0 { 0 } else { 1 };
            // SAFETY: _exit ends the child without running the parent's handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child, writing its status into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_syscalls_are_filtered_in_the_kernel() {
        for (name, nr) in [
            ("getpid", I386_GETPID),
            ("personality", I386_PERSONALITY),
            ("unshare", I386_UNSHARE),
            ("socket", I386_SOCKET),
        ] {
            assert_eq!(Abi::I386.number(name), Some(nr), "{name}");
        }
        if !ia32_emulation_works() {
            eprintln!("skipped: this kernel does not run i386 syscalls");
            return;
        }
        let program = compile(&runtime_default(&[])).unwrap();
        let code = in_filtered_child(&program, || {
            let eperm = -libc::EPERM;
            if int80(I386_GETPID, 0, 0) <= 0 {
                return 1;
            }
            if int80(I386_UNSHARE, libc::CLONE_NEWUTS as u32, 0) != eperm {
                return 2;
            }
            if int80(I386_PERSONALITY, 5, 0) != eperm {
                return 3;
            }
            if int80(I386_PERSONALITY, 0xffff_ffff, 0) < 0 {
                return 4;
            }
            if int80(I386_SOCKET, AF_VSOCK as u32, libc::SOCK_STREAM as u32) != eperm {
                return 5;
            }
            if int80(I386_SOCKET, libc::AF_UNIX as u32, libc::SOCK_STREAM as u32) < 0 {
                return 6;
            }
            0
        });
        assert_eq!(code, 0, "check {code} failed in the child");
    }
}
