//! Stop signals: the one StopContainer sends first. The container's config (`stop_signal`, a
//! CRI `Signal`, Kubernetes 1.33+) wins over the image's StopSignal, which wins over SIGTERM.
//! Signals are kept as Linux numbers; the CRI names them (`SIGRTMINPLUS3` is SIGRTMIN+3).

use crate::cri;

/// The first real-time signal as the C library and Go number it: the kernel's 32 and 33 are
/// taken by glibc's threads, so `SIGRTMIN` is 34 (as Docker and containerd count).
const RTMIN: i32 = 34;
/// The last real-time signal (the kernel's `_NSIG - 1`).
const RTMAX: i32 = 64;

/// The default when neither the config nor the image names one.
pub const DEFAULT: i32 = libc::SIGTERM;

/// The classic signals by name, aliases after the name each number is reported as.
const NAMED: &[(&str, i32)] = &[
    ("SIGABRT", libc::SIGABRT),
    ("SIGALRM", libc::SIGALRM),
    ("SIGBUS", libc::SIGBUS),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGFPE", libc::SIGFPE),
    ("SIGHUP", libc::SIGHUP),
    ("SIGILL", libc::SIGILL),
    ("SIGINT", libc::SIGINT),
    ("SIGIO", libc::SIGIO),
    ("SIGKILL", libc::SIGKILL),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGPROF", libc::SIGPROF),
    ("SIGPWR", libc::SIGPWR),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGSYS", libc::SIGSYS),
    ("SIGTERM", libc::SIGTERM),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    // Aliases: reported under the names above.
    ("SIGCLD", libc::SIGCHLD),
    ("SIGIOT", libc::SIGABRT),
    ("SIGPOLL", libc::SIGIO),
];

/// A signal's number from its CRI-style name (`SIGUSR1`, `SIGRTMIN`, `SIGRTMINPLUS3`,
/// `SIGRTMAXMINUS2`), upper case with the `SIG` prefix.
fn number_of(name: &str) -> Option<i32> {
    if let Some(&(_, n)) = NAMED.iter().find(|(known, _)| *known == name) {
        return Some(n);
    }
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        return rt_offset(rest, "PLUS").map(|n| RTMIN + n);
    }
    if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        return rt_offset(rest, "MINUS").map(|n| RTMAX - n);
    }
    None
}

/// What follows `SIGRTMIN` or `SIGRTMAX`: nothing, or `sep` and a count within the range.
fn rt_offset(rest: &str, sep: &str) -> Option<i32> {
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(sep)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i32>().ok().filter(|n| *n <= RTMAX - RTMIN)
}

/// The CRI name of a signal number: the first name of `NAMED`, or the real-time one counted
/// from the nearer end as the CRI enum does (SIGRTMIN+0..15, SIGRTMAX-14..0).
fn cri_name_of(number: i32) -> Option<String> {
    if let Some((name, _)) = NAMED.iter().find(|(_, n)| *n == number) {
        return Some((*name).to_string());
    }
    match number {
        RTMIN => Some("SIGRTMIN".into()),
        RTMAX => Some("SIGRTMAX".into()),
        n if (RTMIN + 1..=RTMIN + 15).contains(&n) => Some(format!("SIGRTMINPLUS{}", n - RTMIN)),
        n if (RTMAX - 14..RTMAX).contains(&n) => Some(format!("SIGRTMAXMINUS{}", RTMAX - n)),
        _ => None,
    }
}

/// An image's StopSignal (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1`) as a number.
pub fn parse_image_signal(name: &str) -> Option<i32> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Ok(n) = name.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = name
        .to_ascii_uppercase()
        .replacen('+', "PLUS", 1)
        .replacen('-', "MINUS", 1);
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    number_of(&full)
}

/// The config's `stop_signal` as a number: None for RUNTIME_DEFAULT, an error naming the
/// value when it is not a CRI signal.
pub fn from_cri(signal: i32) -> Result<Option<i32>, String> {
    let known = cri::Signal::try_from(signal)
        .map_err(|_| format!("{signal} is not a signal the CRI defines"))?;
    if known == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    number_of(known.as_str_name())
        .map(Some)
        .ok_or_else(|| format!("{} has no number on Linux", known.as_str_name()))
}

/// The CRI signal of a number; RUNTIME_DEFAULT for one the CRI has no name for.
pub fn to_cri(number: i32) -> cri::Signal {
    cri_name_of(number)
        .and_then(|name| cri::Signal::from_str_name(&name))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

/// The signal StopContainer sends first: the config's, else the image's, else SIGTERM.
pub fn choose(config_signal: i32, image_signal: &str) -> Result<i32, String> {
    Ok(from_cri(config_signal)?
        .or_else(|| parse_image_signal(image_signal))
        .unwrap_or(DEFAULT))
}

/// The stop signal ContainerStatus reports: the config's as it was given (an alias stays an
/// alias), else the one in use.
pub fn reported(config_signal: i32, in_use: i32) -> cri::Signal {
    match cri::Signal::try_from(config_signal) {
        Ok(cri::Signal::RuntimeDefault) | Err(_) => to_cri(in_use),
        Ok(given) => given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_stop_signals() {
        assert_eq!(parse_image_signal("SIGTERM"), Some(15));
        assert_eq!(parse_image_signal("quit"), Some(3));
        assert_eq!(parse_image_signal("9"), Some(9));
        assert_eq!(parse_image_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_image_signal("RTMAX-1"), Some(63));
        assert_eq!(parse_image_signal("SIGRTMAX"), Some(64));
        assert_eq!(parse_image_signal("SIGCLD"), Some(17));
        assert_eq!(parse_image_signal("SIGNOPE"), None);
        assert_eq!(parse_image_signal("SIGRTMIN+31"), None);
        assert_eq!(parse_image_signal("SIGRTMIN+"), None);
        assert_eq!(parse_image_signal("SIGRTMIN5"), None);
        assert_eq!(parse_image_signal("65"), None);
        assert_eq!(parse_image_signal("0"), None);
        assert_eq!(parse_image_signal(""), None);
    }

    #[test]
    fn every_cri_signal_has_a_number_that_maps_back() {
        for value in 1..=65 {
            let signal = cri::Signal::try_from(value).unwrap();
            let number = from_cri(value).unwrap().unwrap();
            assert!((1..=64).contains(&number), "{signal:?} -> {number}");
            let back = to_cri(number);
            // Aliases map back to the name their number is reported under.
            assert_eq!(from_cri(back as i32).unwrap(), Some(number), "{signal:?}");
        }
        assert_eq!(from_cri(cri::Signal::Sigrtmin as i32).unwrap(), Some(34));
        assert_eq!(
            from_cri(cri::Signal::Sigrtminplus15 as i32).unwrap(),
            Some(49)
        );
        assert_eq!(
            from_cri(cri::Signal::Sigrtmaxminus14 as i32).unwrap(),
            Some(50)
        );
        assert_eq!(from_cri(cri::Signal::Sigrtmax as i32).unwrap(), Some(64));
        assert_eq!(to_cri(37), cri::Signal::Sigrtminplus3);
        assert_eq!(to_cri(62), cri::Signal::Sigrtmaxminus2);
        assert_eq!(to_cri(6), cri::Signal::Sigabrt);
        assert_eq!(to_cri(33), cri::Signal::RuntimeDefault);
    }

    #[test]
    fn config_wins_over_image_over_sigterm() {
        let usr2 = cri::Signal::Sigusr2 as i32;
        assert_eq!(choose(usr2, "SIGUSR1"), Ok(libc::SIGUSR2));
        assert_eq!(choose(0, "SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(choose(0, ""), Ok(libc::SIGTERM));
        assert_eq!(choose(0, "SIGBOGUS"), Ok(libc::SIGTERM));
        assert!(choose(66, "").unwrap_err().contains("66"));
        assert!(choose(-1, "").is_err());
    }

    #[test]
    fn status_reports_the_signal_in_use() {
        let cld = cri::Signal::Sigcld as i32;
        assert_eq!(reported(cld, libc::SIGCHLD), cri::Signal::Sigcld);
        assert_eq!(reported(0, libc::SIGUSR1), cri::Signal::Sigusr1);
        assert_eq!(reported(0, libc::SIGTERM), cri::Signal::Sigterm);
        assert_eq!(reported(0, 40), cri::Signal::Sigrtminplus6);
    }
}
