//! Dangerous combinations: settings a valid policy may hold that weaken a wall an
//! operator probably relies on. `terrarium doctor` names each one (`WARN`); the
//! policy still loads, since each can be deliberate.

use super::{Policy, Tier};

/// Programs an allow rule should never name: a shell, an interpreter or a program
/// that runs another program turns an argument pattern into arbitrary code.
const RUNS_ANYTHING: &[&str] = &[
    "*sh", "busybox*", "toybox*", "*python*", "pypy*", "*perl*", "*ruby*", "*node*", "php*", "lua*", "*awk", "env",
    "xargs", "nohup", "timeout", "sudo", "su", "doas", "ld-*", "ld.so*", "find", "make", "git",
];

/// Host directories whose contents a sandbox should never read.
const SENSITIVE_MOUNTS: &[&str] =
    &["/", "/etc", "/root", "/home", "/proc", "/sys", "/dev", "/run", "/var/run", "/boot"];

impl Policy {
    /// Each dangerous combination this policy holds, as one sentence naming the
    /// key and what it opens (empty when none).
    pub fn hazards(&self) -> Vec<String> {
        let mut found = Vec::new();
        if !self.network_disabled() {
            found.push(format!(
                "security.sandbox.network_disabled is false: docker runs get network {:?} (they can reach hosts)",
                self.docker().network
            ));
        }
        if !self.readonly_filesystem() {
            found.push("security.sandbox.readonly_filesystem is false: docker runs can write the image's root".into());
        }
        if !self.docker().cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            found.push("security.sandbox.docker.cap_drop does not drop ALL capabilities".into());
        }
        if !self.docker().security_opt.iter().any(|o| o.starts_with("no-new-privileges")) {
            found.push(
                "security.sandbox.docker.security_opt lacks no-new-privileges (set-uid programs gain root)".into(),
            );
        }
        let rules = self.command_rules();
        for rule in &rules.allow {
            if super::denied(&rule.program, RUNS_ANYTHING) {
                found.push(format!(
                    "commands.allow lists {:?}, a shell, interpreter or launcher: an argument it accepts can run \
                     anything",
                    rule.program
                ));
            }
        }
        if self.commands().deny.is_some() {
            for must in ["*sh", "*python*", "env", "xargs", "sudo"] {
                if !rules.deny.iter().any(|d| d == must) {
                    found.push(format!("commands.deny replaces the default list and leaves out {must:?}"));
                }
            }
        }
        if !self.deny_findings() {
            found.push("terrarium.findings is warn: snippets the static analysis refuses still run".into());
        }
        for m in self.read_only_mounts() {
            let source = m.source.to_string_lossy();
            if SENSITIVE_MOUNTS.iter().any(|s| source == *s) || source.contains("docker.sock") {
                found.push(format!("a read-only mount shows the host's {source} to every run"));
            }
        }
        if self.workspaces().allow.iter().any(|w| w == "*") {
            found.push("workspaces.allow is \"*\": every caller may create and change any workspace".into());
        }
        if self.allowed_tiers().contains(&Tier::Docker)
            && self.docker().image.split(':').nth(1).is_none_or(|t| t == "latest")
        {
            found.push(format!(
                "security.sandbox.docker.image {:?} has no fixed tag: what runs changes with the registry",
                self.docker().image
            ));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use crate::Policy;

    fn with(extra: &str, from: &str, to: &str) -> Vec<String> {
        let mut text = crate::policy::DEFAULT_POLICY_YAML.to_string();
        for (f, t) in from.split('|').zip(to.split('|')) {
            text = text.replacen(f, t, 1);
        }
        let text = format!("{text}\n{extra}");
        Policy::from_yaml(&text, "<hazards test>").expect("policy").hazards()
    }

    #[test]
    fn the_default_policy_has_none() {
        assert_eq!(Policy::default_policy().hazards(), Vec::<String>::new());
    }

    #[test]
    fn each_dangerous_combination_is_named() {
        let net = with("", "network_disabled: true|network: \"none\"", "network_disabled: false|network: \"bridge\"");
        assert!(net.iter().any(|h| h.contains("network_disabled is false")), "{net:?}");
        let shell =
            with("commands:\n  allow:\n    - program: python3\n      args: ['-c', '.*']\n  deny: [rm, sh]\n", "", "");
        assert!(shell.iter().any(|h| h.contains("commands.allow lists \"python3\"")), "{shell:?}");
        assert!(shell.iter().any(|h| h.contains("leaves out \"*python*\"")), "{shell:?}");
        let warn = with("terrarium:\n  findings: warn\n", "", "");
        assert!(warn.iter().any(|h| h.contains("findings is warn")), "{warn:?}");
        let caps = with("", "cap_drop: [\"ALL\"]", "cap_drop: [\"NET_RAW\"]");
        assert!(caps.iter().any(|h| h.contains("cap_drop")), "{caps:?}");
        let nnp = with("", "security_opt: [\"no-new-privileges\"]", "security_opt: []");
        assert!(nnp.iter().any(|h| h.contains("no-new-privileges")), "{nnp:?}");
        let image = with("", "python:3.12-slim", "python");
        assert!(image.iter().any(|h| h.contains("no fixed tag")), "{image:?}");
        let all = with("workspaces:\n  allow: [\"*\"]\n", "", "");
        assert!(all.iter().any(|h| h.contains("workspaces.allow")), "{all:?}");
    }
}
