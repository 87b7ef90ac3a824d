//! Which process is which, across pid reuse: a pid with its start time (clock
//! ticks since boot, from `/proc`). Used to tell whether the owner of a container,
//! of an audit journal or of a waiting approval is still running. Also this
//! process's own descriptor limit.

/// Start time of process `pid` in clock ticks since boot (field 22 of its stat).
pub fn start_time(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_string)
}

/// Whether the process `pid` that started at `start` is still running.
pub fn alive(pid: &str, start: &str) -> bool {
    start_time(pid).is_some_and(|s| s == start)
}

/// This process: `(pid, start time)`.
pub fn me() -> (String, String) {
    let pid = std::process::id().to_string();
    let start = start_time(&pid).unwrap_or_default();
    (pid, start)
}

/// Lifts this process's soft limit on open descriptors to its hard limit, as
/// servers do: every connection is a descriptor, and a burst of clients should meet
/// 429s, not refused accepts.
#[cfg(any(feature = "cli", feature = "internals"))]
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    #[allow(unsafe_code, reason = "getrlimit/setrlimit have no safe wrapper in std")]
    // SAFETY: both calls only read or write the live local `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_different_start_time_is_not() {
        let (pid, start) = me();
        assert!(alive(&pid, &start));
        assert!(!alive(&pid, "1"));
        assert!(!alive("999999999", &start));
    }
}
