//! The system call ABIs a seccomp filter tells apart, and each one's syscall numbers by name.
//!
//! Numbers come from the `syscalls` crate's tables (generated from the kernel's own), plus what
//! those lack, taken from the kernel's sources: x32's renumbered calls and the calls x32 does
//! not have (arch/x86/entry/syscalls/syscall_64.tbl, abi "x32" and "64"), ARM's private calls
//! (arch/arm/include/uapi/asm/unistd.h) and the call numbers of the i386 multiplexers
//! socketcall(2) and ipc(2) (include/uapi/linux/net.h, include/uapi/linux/ipc.h). Resolved this
//! way every name agrees with libseccomp's syscalls.csv, which containerd's filters use.

use std::str::FromStr;

use oci_spec::runtime::Arch;

/// x32 syscalls run under the x86_64 audit arch with this bit set in their number.
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

/// One way into the kernel: an audit architecture, and for x32 the number bit that marks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Abi {
    X86_64,
    X32,
    I386,
    Aarch64,
    Arm,
}

impl Abi {
    /// The ABI crius itself is built for; None where it has no seccomp support.
    pub(super) const fn native() -> Option<Abi> {
        if cfg!(target_arch = "x86_64") {
            Some(Abi::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Abi::Aarch64)
        } else {
            None
        }
    }

    /// The other ABIs a process on a host of this ABI can call the kernel through, as
    /// containerd's default profile lists them.
    pub(super) fn compat(self) -> &'static [Abi] {
        match self {
            Abi::X86_64 => &[Abi::I386, Abi::X32],
            Abi::Aarch64 => &[Abi::Arm],
            Abi::X32 | Abi::I386 | Abi::Arm => &[],
        }
    }

    /// The value of seccomp_data.arch for a syscall made through this ABI.
    pub(super) fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
            Abi::Arm => AUDIT_ARCH_ARM,
        }
    }

    /// The OCI name of this ABI.
    pub(super) fn arch(self) -> Arch {
        match self {
            Abi::X86_64 => Arch::ScmpArchX86_64,
            Abi::X32 => Arch::ScmpArchX32,
            Abi::I386 => Arch::ScmpArchX86,
            Abi::Aarch64 => Arch::ScmpArchAarch64,
            Abi::Arm => Arch::ScmpArchArm,
        }
    }

    /// Whether only the low 32 bits of an argument reach the syscall. Conditions are then
    /// decided on those bits alone, as libseccomp does for these ABIs: what a 32-bit task
    /// leaves in a register's upper half must not steer the filter.
    pub(super) fn has_32_bit_args(self) -> bool {
        matches!(self, Abi::X32 | Abi::I386 | Abi::Arm)
    }

    /// This ABI's number for the syscall `name`, as seccomp_data.nr shows it (x32's with
    /// [`X32_SYSCALL_BIT`] set); None when the ABI has no such syscall.
    pub(super) fn number(self, name: &str) -> Option<u32> {
        match self {
            Abi::X86_64 => x86_64_number(name),
            Abi::X32 => x32_number(name).map(|nr| nr | X32_SYSCALL_BIT),
            Abi::I386 => syscalls::x86::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            Abi::Aarch64 => aarch64_number(name),
            Abi::Arm => arm_number(name),
        }
    }

    /// Where this ABI also reaches `name` through a multiplexer: the multiplexer's syscall
    /// number and the call number its first argument carries.
    pub(super) fn multiplexed(self, name: &str) -> Option<Multiplexed> {
        if self != Abi::I386 {
            return None;
        }
        let (multiplexer, call) = match lookup(SOCKETCALL_CALLS, name) {
            Some(call) => ("socketcall", call),
            None => ("ipc", lookup(IPC_CALLS, name)?),
        };
        Some(Multiplexed {
            syscall: self.number(multiplexer)?,
            call,
        })
    }
}

/// A syscall reached through a multiplexer: `syscall(call, …)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Multiplexed {
    pub(super) syscall: u32,
    pub(super) call: u32,
}

fn lookup(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, nr)| nr)
}

fn x86_64_number(name: &str) -> Option<u32> {
    syscalls::x86_64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

/// x32 has the x86_64 numbers of the "common" calls and its own for the renumbered ones.
fn x32_number(name: &str) -> Option<u32> {
    if let Some(nr) = lookup(X32_RENUMBERED, name) {
        return Some(nr);
    }
    if X86_64_ONLY.contains(&name) {
        return None;
    }
    x86_64_number(name)
}

fn aarch64_number(name: &str) -> Option<u32> {
    let name = lookup_alias(AARCH64_ALIASES, name);
    syscalls::aarch64::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

fn arm_number(name: &str) -> Option<u32> {
    if let Some(nr) = lookup(ARM_PRIVATE, name) {
        return Some(nr);
    }
    syscalls::arm::Sysno::from_str(name)
        .ok()
        .map(|s| s.id() as u32)
}

fn lookup_alias<'a>(aliases: &[(&str, &'a str)], name: &'a str) -> &'a str {
    aliases
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |&(_, alias)| alias)
}

/// The x32 numbers of the calls x32 has at other numbers than x86_64 (syscall_64.tbl, abi
/// "x32"; their x86_64 numbers are abi "64", which x32 cannot call).
const X32_RENUMBERED: &[(&str, u32)] = &[
    ("rt_sigaction", 512),
    ("rt_sigreturn", 513),
    ("ioctl", 514),
    ("readv", 515),
    ("writev", 516),
    ("recvfrom", 517),
    ("sendmsg", 518),
    ("recvmsg", 519),
    ("execve", 520),
    ("ptrace", 521),
    ("rt_sigpending", 522),
    ("rt_sigtimedwait", 523),
    ("rt_sigqueueinfo", 524),
    ("sigaltstack", 525),
    ("timer_create", 526),
    ("mq_notify", 527),
    ("kexec_load", 528),
    ("waitid", 529),
    ("set_robust_list", 530),
    ("get_robust_list", 531),
    ("vmsplice", 532),
    ("move_pages", 533),
    ("preadv", 534),
    ("pwritev", 535),
    ("rt_tgsigqueueinfo", 536),
    ("recvmmsg", 537),
    ("sendmmsg", 538),
    ("process_vm_readv", 539),
    ("process_vm_writev", 540),
    ("setsockopt", 541),
    ("getsockopt", 542),
    ("io_setup", 543),
    ("io_submit", 544),
    ("execveat", 545),
    ("preadv2", 546),
    ("pwritev2", 547),
];

/// The x86_64-only calls (syscall_64.tbl, abi "64") with no x32 counterpart.
const X86_64_ONLY: &[&str] = &[
    "uselib",
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "set_thread_area",
    "get_thread_area",
    "epoll_ctl_old",
    "epoll_wait_old",
    "vserver",
];

/// ARM's private calls, at __ARM_NR_BASE (0x0f0000) + n; the 64-bit kernel serves them to
/// AArch32 tasks at the same numbers.
const ARM_PRIVATE: &[(&str, u32)] = &[
    ("breakpoint", 0x0f_0001),
    ("cacheflush", 0x0f_0002),
    ("usr26", 0x0f_0003),
    ("usr32", 0x0f_0004),
    ("set_tls", 0x0f_0005),
    ("get_tls", 0x0f_0006),
];

/// Names the `syscalls` crate spells otherwise on aarch64: (kernel/libseccomp name, crate name).
const AARCH64_ALIASES: &[(&str, &str)] = &[("newfstatat", "fstatat")];

/// socketcall(2)'s call numbers (SYS_SOCKET …).
const SOCKETCALL_CALLS: &[(&str, u32)] = &[
    ("socket", 1),
    ("bind", 2),
    ("connect", 3),
    ("listen", 4),
    ("accept", 5),
    ("getsockname", 6),
    ("getpeername", 7),
    ("socketpair", 8),
    ("send", 9),
    ("recv", 10),
    ("sendto", 11),
    ("recvfrom", 12),
    ("shutdown", 13),
    ("setsockopt", 14),
    ("getsockopt", 15),
    ("sendmsg", 16),
    ("recvmsg", 17),
    ("accept4", 18),
    ("recvmmsg", 19),
    ("sendmmsg", 20),
];

/// ipc(2)'s call numbers (SEMOP …).
const IPC_CALLS: &[(&str, u32)] = &[
    ("semop", 1),
    ("semget", 2),
    ("semctl", 3),
    ("semtimedop", 4),
    ("msgsnd", 11),
    ("msgrcv", 12),
    ("msgget", 13),
    ("msgctl", 14),
    ("shmat", 21),
    ("shmdt", 22),
    ("shmget", 23),
    ("shmctl", 24),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_by_abi() {
        assert_eq!(Abi::X86_64.number("write"), Some(1));
        assert_eq!(Abi::I386.number("write"), Some(4));
        assert_eq!(Abi::I386.number("mmap2"), Some(192));
        assert_eq!(Abi::I386.number("socket"), Some(359));
        assert_eq!(Abi::I386.number("send"), None);
        assert_eq!(Abi::X86_64.number("mmap2"), None);
        assert_eq!(Abi::X32.number("write"), Some(X32_SYSCALL_BIT | 1));
        assert_eq!(Abi::X32.number("execve"), Some(X32_SYSCALL_BIT | 520));
        assert_eq!(Abi::X32.number("set_thread_area"), None);
        assert_eq!(Abi::X32.number("not_a_syscall"), None);
        assert_eq!(Abi::Aarch64.number("newfstatat"), Some(79));
        assert_eq!(Abi::Aarch64.number("open"), None);
        assert_eq!(Abi::Arm.number("write"), Some(4));
        assert_eq!(Abi::Arm.number("set_tls"), Some(0x0f_0005));
        assert_eq!(Abi::Arm.number("arm_fadvise64_64"), Some(270));
    }

    #[test]
    fn multiplexers_are_i386_only() {
        let socketcall = Abi::I386.number("socketcall").unwrap();
        let ipc = Abi::I386.number("ipc").unwrap();
        assert_eq!(
            Abi::I386.multiplexed("socket"),
            Some(Multiplexed {
                syscall: socketcall,
                call: 1
            })
        );
        assert_eq!(
            Abi::I386.multiplexed("recv"),
            Some(Multiplexed {
                syscall: socketcall,
                call: 10
            })
        );
        assert_eq!(
            Abi::I386.multiplexed("shmctl"),
            Some(Multiplexed {
                syscall: ipc,
                call: 24
            })
        );
        assert_eq!(Abi::I386.multiplexed("write"), None);
        assert_eq!(Abi::X86_64.multiplexed("socket"), None);
        assert_eq!(Abi::Arm.multiplexed("socket"), None);
    }

    #[test]
    fn every_renumbered_x32_call_was_x86_64_only() {
        for (name, nr) in X32_RENUMBERED {
            assert!((512..=547).contains(nr), "{name}");
            assert!(x86_64_number(name).is_some(), "{name}");
        }
        for name in X86_64_ONLY {
            assert!(x86_64_number(name).is_some(), "{name}");
        }
    }
}
