//! The policy's `commands` section: which system commands may run (in the docker
//! tier), compiled into [`CommandRules`] once, when the policy is loaded.
//! `crate::command` checks command lines against them.

use regex::Regex;

use super::raw;
use super::{Critical, Policy, PolicyError};

/// The `commands` section: system commands that may run (in the docker tier) and
/// those that never do. Checked by the command rules (`Sandbox::run_command`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandPolicy {
    /// (program, argument patterns): each argument must match one pattern.
    pub allow: Vec<(String, Vec<String>)>,
    /// Programs that never run; `None`: `DEFAULT_DENY` (shells, interpreters, privilege and network tools).
    pub deny: Option<Vec<String>>,
}

/// One allow rule: a program (by name, or by absolute path when it contains `/`) and
/// one pattern per argument position (whole-argument regular expressions).
#[derive(Debug, Clone)]
pub struct AllowRule {
    /// The program.
    pub program: String,
    /// Argument `i` must match pattern `i` (anchored at both ends), and there are
    /// exactly as many arguments as patterns.
    pub args: Vec<Regex>,
    /// Whether pattern `i` starts with a literal `-`: only such a pattern matches
    /// an argument that starts with `-` (an option).
    pub options: Vec<bool>,
}

/// An argument pattern that is not a valid regular expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument pattern {index} {pattern:?}: {message}")]
pub struct PatternError {
    /// Which argument (0-based).
    pub index: usize,
    /// The pattern as written.
    pub pattern: String,
    /// What the regular-expression parser said.
    pub message: String,
}

impl AllowRule {
    /// A rule for `program` whose `i`-th argument matches `patterns[i]`.
    ///
    /// # Errors
    /// A pattern that is not a valid regular expression on its own (checked before
    /// it is anchored, so that `a)|(.*` cannot break out of the anchoring), with
    /// which one.
    pub fn new(program: &str, patterns: &[&str]) -> Result<AllowRule, PatternError> {
        let args = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Regex::new(p).and_then(|_| Regex::new(&format!("^(?:{p})$"))).map_err(|e| PatternError {
                    index: i,
                    pattern: p.to_string(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        let options = patterns.iter().map(|p| p.starts_with('-')).collect();
        Ok(AllowRule { program: program.to_string(), args, options })
    }

    /// Whether `args` match this rule's patterns position by position (an option
    /// only where the pattern itself starts with `-`).
    pub(crate) fn admits(&self, args: &[String]) -> bool {
        args.len() == self.args.len()
            && args
                .iter()
                .zip(self.args.iter().zip(&self.options))
                .all(|(a, (p, option))| p.is_match(a) && (*option || !a.starts_with('-')))
    }
}

/// The rules a command is checked against.
#[derive(Debug, Clone, Default)]
pub struct CommandRules {
    /// Programs that may run, with their argument patterns.
    pub allow: Vec<AllowRule>,
    /// Programs that never run (checked first): names, paths or name patterns
    /// where `*` stands for any run of characters.
    pub deny: Vec<String>,
    /// Whether a command that is not allow-listed may wait for a human's approval
    /// (`unlisted_command` in the policy's `approvals.critical`); if not, it is denied.
    pub approvable: bool,
}

/// Programs denied when a policy names none, by name pattern: deletion and disk
/// tools, shells (`*sh`), interpreters of every version (`python*`, `perl*`, …),
/// multi-call binaries (`busybox`), programs that run other programs, network
/// clients, privilege and permission changes.
pub const DEFAULT_DENY: &[&str] = &[
    // Deletion and disks.
    "rm",
    "rmdir",
    "shred",
    "dd",
    "mkfs*",
    "fdisk",
    "sfdisk",
    "parted",
    "mount",
    "umount",
    // Shells, interpreters of any version or prefix, multi-call binaries.
    "*sh",
    "fish",
    "busybox*",
    "toybox*",
    "*python*",
    "pypy*",
    "*perl*",
    "*ruby*",
    "irb*",
    "*node*",
    "deno",
    "bun",
    "php*",
    "lua*",
    "tclsh*",
    "wish*",
    "*awk",
    "dc",
    "java",
    "jshell",
    "R",
    "Rscript",
    "osascript",
    // Programs that run another program: the dynamic loader, launchers, debuggers.
    "ld-*",
    "ld.so*",
    "ld64*",
    "env",
    "xargs",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "stdbuf",
    "setsid",
    "setarch",
    "linux32",
    "linux64",
    "flock",
    "chrt",
    "taskset",
    "prlimit",
    "numactl",
    "unbuffer",
    "catchsegv",
    "valgrind",
    "strace",
    "ltrace",
    "gdb",
    "watch",
    "script",
    "expect",
    "systemd-run",
    "start-stop-daemon",
    "runuser",
    "sg",
    "newgrp",
    "sudo*",
    "su",
    "doas",
    "pkexec",
    "time",
    "setpriv",
    "find",
    "gosu",
    "su-exec",
    "tini",
    "dumb-init",
    "chpst",
    "fakeroot",
    "bwrap",
    "proot",
    "firejail",
    "sh.*",
    "pip*",
    "pydoc*",
    "idle*",
    "2to3*",
    "vi",
    "vim*",
    "nvim",
    "view",
    "ex",
    "emacs*",
    "ed",
    "less",
    "more",
    "man",
    // Network clients.
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "socat",
    "scp",
    "sftp",
    "rsync",
    "telnet",
    "ftp",
    // Permissions, privileges, processes, the system.
    "chmod",
    "chown",
    "chgrp",
    "chroot",
    "setcap",
    "capsh",
    "unshare",
    "nsenter",
    "kill",
    "pkill",
    "killall",
    "reboot",
    "shutdown",
    "halt",
    "poweroff",
    "systemctl",
    "docker",
    "podman",
    "crontab",
    "at",
];

/// Whether `name` matches deny pattern `pattern` (`*`: any run of characters).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether `program` (as a path or by its last component) matches any of `deny`.
pub fn denied(program: &str, deny: &[impl AsRef<str>]) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    deny.iter().any(|d| name_matches(d.as_ref(), program) || name_matches(d.as_ref(), base))
}

impl CommandRules {
    /// No program allowed; [`DEFAULT_DENY`] denied.
    pub fn default_rules() -> CommandRules {
        CommandRules { allow: Vec::new(), deny: DEFAULT_DENY.iter().map(|s| s.to_string()).collect(), approvable: true }
    }
}

/// Checks the `commands` section: programs are plain names or absolute paths,
/// patterns compile, and no program is both allowed and denied.
pub(super) fn command_policy(
    raw: raw::RawCommands,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<CommandPolicy, PolicyError> {
    let mut allow = Vec::new();
    for (i, a) in raw.allow.unwrap_or_default().into_iter().enumerate() {
        let field = format!("commands.allow[{i}]");
        let plain = !a.program.is_empty()
            && !a.program.chars().any(|c| c.is_whitespace() || c.is_control())
            && (!a.program.contains('/') || a.program.starts_with('/'));
        if !plain {
            return Err(invalid(
                &format!("{field}.program"),
                format!("{:?} is not a program name or absolute path", a.program),
            ));
        }
        let patterns: Vec<&str> = a.args.iter().map(String::as_str).collect();
        AllowRule::new(&a.program, &patterns).map_err(|e| invalid(&format!("{field}.args"), e.to_string()))?;
        allow.push((a.program, a.args));
    }
    if let Some(deny) = &raw.deny {
        for (i, d) in deny.iter().enumerate() {
            if d.is_empty() || d == "*" || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    &format!("commands.deny[{i}]"),
                    format!("{d:?} is not a program name, path or name pattern (`*` alone would deny everything)"),
                ));
            }
        }
        if let Some((p, _)) = allow.iter().find(|(p, _)| denied(p, deny)) {
            return Err(invalid("commands", format!("{p:?} is both allowed and denied")));
        }
    } else if let Some((p, _)) = allow.iter().find(|(p, _)| denied(p, DEFAULT_DENY)) {
        return Err(invalid(
            "commands.allow",
            format!("{p:?} is in the built-in deny list; list commands.deny yourself to allow it"),
        ));
    }
    Ok(CommandPolicy { allow, deny: raw.deny })
}

impl Policy {
    /// The rules system commands are checked against.
    pub fn command_rules(&self) -> CommandRules {
        let deny = match &self.commands.deny {
            Some(d) => d.clone(),
            None => DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
        };
        let allow = self
            .commands
            .allow
            .iter()
            .filter_map(|(program, args)| {
                let patterns: Vec<&str> = args.iter().map(String::as_str).collect();
                // Compiled once already when the policy was loaded.
                AllowRule::new(program, &patterns).ok()
            })
            .collect();
        let approvable = self.approvals.critical.contains(&Critical::UnlistedCommand);
        CommandRules { allow, deny, approvable }
    }
}
