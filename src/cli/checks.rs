//! The deployment checks `terrarium doctor` runs besides the tiers: the kernel
//! features the isolated mode and the docker tier rely on, the policy's dangerous
//! combinations, and the permissions of everything under the state directory.
//! Each is one [`Check`]: `ok`, `WARN` (works, but weaker than it should be) or
//! `FAILED`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Level {
    Ok,
    Warn,
    Failed,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Check {
    pub(super) name: String,
    pub(super) level: Level,
    pub(super) detail: String,
}

impl Check {
    pub(super) fn new(name: &str, level: Level, detail: impl Into<String>) -> Check {
        Check { name: name.to_string(), level, detail: detail.into() }
    }

    pub(super) fn of(name: &str, r: Result<String, String>) -> Check {
        match r {
            Ok(d) => Check::new(name, Level::Ok, d),
            Err(d) => Check::new(name, Level::Failed, d),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The kernel features isolated mode relies on (seccomp filters, user and network
/// namespaces, pidfds) and the cgroup controllers the docker tier's limits need.
pub(super) fn kernel() -> Vec<Check> {
    let mut out = Vec::new();
    let status = read("/proc/self/status").unwrap_or_default();
    let seccomp = status.lines().any(|l| l.starts_with("Seccomp_filters:"))
        && read("/proc/sys/kernel/seccomp/actions_avail").is_some_and(|a| a.contains("kill_process"));
    out.push(if seccomp {
        Check::new("kernel: seccomp", Level::Ok, "filters with kill_process (every isolated child runs under one)")
    } else {
        Check::new(
            "kernel: seccomp",
            Level::Failed,
            "no seccomp filters with kill_process: isolated mode cannot confine",
        )
    });
    let count = |p: &str| read(p).and_then(|v| v.parse::<u64>().ok());
    let userns = count("/proc/sys/user/max_user_namespaces").unwrap_or(0);
    let unprivileged = read("/proc/sys/kernel/unprivileged_userns_clone").is_none_or(|v| v != "0");
    out.push(match (userns, unprivileged || crate::dirs::euid() == 0) {
        (0, _) => Check::new("kernel: user namespaces", Level::Failed, "max_user_namespaces is 0"),
        (_, false) => Check::new(
            "kernel: user namespaces",
            Level::Failed,
            "kernel.unprivileged_userns_clone is 0 and Terrarium does not run as root",
        ),
        (n, true) => Check::new("kernel: user namespaces", Level::Ok, format!("up to {n}")),
    });
    out.push(match count("/proc/sys/user/max_net_namespaces") {
        Some(0) => Check::new("kernel: network namespaces", Level::Failed, "max_net_namespaces is 0"),
        Some(n) => Check::new("kernel: network namespaces", Level::Ok, format!("up to {n}")),
        None => Check::new("kernel: network namespaces", Level::Warn, "max_net_namespaces is not readable"),
    });
    out.push(match pidfd() {
        Ok(()) => Check::new("kernel: pidfd", Level::Ok, "pidfd_open works (kills reach the right child)"),
        Err(e) => Check::new("kernel: pidfd", Level::Failed, format!("pidfd_open failed: {e}")),
    });
    let controllers = read("/sys/fs/cgroup/cgroup.controllers");
    out.push(match controllers {
        Some(c) => {
            let missing: Vec<&str> =
                ["memory", "pids", "cpu"].into_iter().filter(|w| !c.split_whitespace().any(|x| x == *w)).collect();
            if missing.is_empty() {
                Check::new("kernel: cgroups", Level::Ok, "v2 with memory, pids and cpu (the docker tier's limits)")
            } else {
                Check::new(
                    "kernel: cgroups",
                    Level::Failed,
                    format!("v2 without {}: the docker tier's limits would not hold", missing.join(", ")),
                )
            }
        }
        None if Path::new("/sys/fs/cgroup/memory").is_dir() => {
            Check::new("kernel: cgroups", Level::Warn, "v1 (the docker tier's limits hold; v2 is preferred)")
        }
        None => {
            Check::new("kernel: cgroups", Level::Failed, "no cgroup hierarchy: the docker tier's limits would not hold")
        }
    });
    out
}

/// Whether `pidfd_open` works on this kernel.
fn pidfd() -> std::io::Result<()> {
    // SAFETY: pidfd_open on this process's own pid with no flags; the descriptor
    // it returns is closed at once.
    #[allow(unsafe_code, reason = "pidfd_open has no safe wrapper in std or libc")]
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this function just opened and owns.
    #[allow(unsafe_code, reason = "closing a raw descriptor")]
    unsafe {
        libc::close(i32::try_from(fd).unwrap_or(-1));
    }
    Ok(())
}

/// The policy's dangerous combinations ([`crate::Policy::hazards`]), one `WARN`
/// each, or one `ok`.
pub(super) fn policy(policy: &crate::Policy, origin: &str) -> Vec<Check> {
    let hazards = policy.hazards();
    if hazards.is_empty() {
        return vec![Check::new("policy", Level::Ok, format!("{origin}: valid, no dangerous combination"))];
    }
    hazards.into_iter().map(|h| Check::new("policy", Level::Warn, format!("{origin}: {h}"))).collect()
}

/// Files whose contents are secret or tamper evident (read by no one else).
fn private(name: &str) -> bool {
    ["audit.db", "baseline.json", "stopped.json", "token"].iter().any(|p| name.starts_with(p))
}

/// Everything under the state directory `home`: owned by this user, writable by no
/// one else, the log and its companions readable by no one else, no links (which
/// Terrarium never follows, and which would point its operators elsewhere). At
/// most 200,000 entries are looked at.
pub(super) fn permissions(home: &Path) -> Check {
    const MOST: usize = 200_000;
    let me = crate::dirs::euid();
    let mut problems = Vec::new();
    let mut seen = 0usize;
    let mut pending = vec![home.to_path_buf()];
    while let Some(p) = pending.pop() {
        seen += 1;
        let shown = p.strip_prefix(home).map_or_else(|_| p.display().to_string(), |r| format!("./{}", r.display()));
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{shown} cannot be checked ({e})"));
                continue;
            }
        };
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() {
            problems.push(format!("{shown} is a symbolic link"));
            continue;
        }
        if meta.uid() != me {
            problems.push(format!("{shown} is owned by uid {}, not {me}", meta.uid()));
        }
        if mode & 0o022 != 0 && !(meta.is_dir() && mode & 0o1000 != 0) {
            problems.push(format!("{shown} is writable by others (mode {mode:o})"));
        }
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if private(&name) && meta.is_file() && mode & 0o077 != 0 {
            problems.push(format!("{shown} is open to others (mode {mode:o}; want owner only)"));
        }
        if meta.is_dir() && seen < MOST {
            match std::fs::read_dir(&p) {
                Ok(entries) => pending.extend(entries.filter_map(Result::ok).map(|e| e.path())),
                Err(e) => problems.push(format!("{shown} cannot be listed ({e})")),
            }
        }
    }
    let capped = if seen >= MOST { format!(" (the first {MOST} entries)") } else { String::new() };
    if problems.is_empty() {
        return Check::new("permissions", Level::Ok, format!("{seen} entries under {}{capped}", home.display()));
    }
    let n = problems.len();
    problems.truncate(20);
    let more = if n > 20 { format!("; and {} more", n - 20) } else { String::new() };
    Check::new("permissions", Level::Failed, format!("{}{more}{capped}", problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_files_and_links_under_the_state_directory_are_named() {
        let home = tempfile::tempdir().expect("home");
        let set = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        set(home.path(), 0o700);
        std::fs::write(home.path().join("audit.db"), "x").expect("write");
        set(&home.path().join("audit.db"), 0o600);
        assert_eq!(super::permissions(home.path()).level, super::Level::Ok, "{:?}", super::permissions(home.path()));
        set(&home.path().join("audit.db"), 0o644);
        std::fs::create_dir(home.path().join("w")).expect("mkdir");
        set(&home.path().join("w"), 0o777);
        std::os::unix::fs::symlink("/etc", home.path().join("link")).expect("symlink");
        let c = super::permissions(home.path());
        assert_eq!(c.level, super::Level::Failed);
        for needle in
            ["./audit.db is open to others (mode 644", "./w is writable by others", "./link is a symbolic link"]
        {
            assert!(c.detail.contains(needle), "{needle}: {}", c.detail);
        }
    }

    #[test]
    fn this_machine_has_what_isolated_mode_needs() {
        // The isolated tier's own tests run here: each feature it relies on is seen.
        for c in super::kernel() {
            assert_ne!(c.level, super::Level::Failed, "{c:?}");
        }
    }
}
