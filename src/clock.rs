//! Wall-clock time as the CRI carries it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}
