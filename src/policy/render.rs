//! The effective policy rendered back to a complete policy file.

use super::raw::{
    RawBreaker, RawBreakers, RawDocker, RawPolicy, RawResilience, RawSandbox, RawSecurity, RawTerrarium, Seconds, Size,
};
use super::*;

impl Policy {
    /// The effective policy as a complete policy file: every key, defaults filled
    /// in. Parsing the result gives back an equal policy.
    pub fn to_yaml(&self) -> String {
        self.render(Shown::Full)
    }

    /// [`Policy::to_yaml`] for people other than the operator (approvers, the audit
    /// log): each mount's host directory is replaced by [`HIDDEN_SOURCE`], so that
    /// no host path leaves the host's configuration (H12).
    pub fn to_yaml_redacted(&self) -> String {
        self.render(Shown::Redacted)
    }

    /// [`Policy::to_yaml`] for the reviewer of a policy change: what [`Policy::to_yaml_redacted`]
    /// hides is shown by digest (`<sha256:…>` of each mount's host directory, of
    /// the webhook's path, of the alert command's arguments), so that a change of
    /// any of them shows in the diff while none of them is shown.
    pub fn to_yaml_for_review(&self) -> String {
        self.render(Shown::Digests)
    }

    fn render(&self, shown: Shown) -> String {
        let digest = |text: &str| {
            use sha2::Digest as _;
            format!("<sha256:{}>", &crate::hex::encode(&sha2::Sha256::digest(text.as_bytes()))[..16])
        };
        let b = |p: &BreakerPolicy| RawBreaker {
            failure_threshold: p.failure_threshold,
            recovery_timeout: Seconds(p.recovery_timeout.as_secs_f64()),
            log_failures: p.log_failures,
        };
        let raw = RawPolicy {
            security: RawSecurity {
                sandbox: RawSandbox {
                    enabled: self.enabled,
                    timeout: Seconds(self.timeout.as_secs_f64()),
                    max_memory: Size(self.max_memory),
                    allowed_modules: self.allowed_modules.iter().cloned().collect(),
                    cpu_quota: self.cpu_quota,
                    network_disabled: self.network_disabled,
                    readonly_filesystem: self.readonly_filesystem,
                    docker: RawDocker {
                        image: self.docker.image.clone(),
                        network: self.docker.network.clone(),
                        security_opt: self.docker.security_opt.clone(),
                        cap_drop: self.docker.cap_drop.clone(),
                    },
                },
            },
            resilience: Some(RawResilience {
                circuit_breaker: RawBreakers {
                    api: b(&self.breakers.api),
                    database: b(&self.breakers.database),
                    file_io: b(&self.breakers.file_io),
                },
            }),
            terrarium: Some(RawTerrarium {
                tier: Some(self.tier.to_string()),
                allowed_tiers: Some(self.allowed_tiers.iter().map(|t| t.to_string()).collect()),
                max_output: Some(Size(self.max_output)),
                max_code_size: Some(Size(self.max_code_size)),
                fuel: self.fuel,
                min_isolation: Some(self.min_isolation.to_string()),
                findings: Some(if self.deny_findings { "deny" } else { "warn" }.to_string()),
                read_only_mounts: (!self.read_only_mounts.is_empty()).then(|| {
                    self.read_only_mounts
                        .iter()
                        .map(|m| raw::RawMount {
                            source: match shown {
                                Shown::Full => m.source.display().to_string(),
                                Shown::Digests => digest(&m.source.display().to_string()),
                                Shown::Redacted => HIDDEN_SOURCE.into(),
                            },
                            target: m.target.clone(),
                        })
                        .collect()
                }),
            }),
            audit: self.retention_days.map(|d| raw::RawAudit { retention_days: Some(d) }),
            commands: (!self.commands.allow.is_empty() || self.commands.deny.is_some()).then(|| raw::RawCommands {
                allow: (!self.commands.allow.is_empty()).then(|| {
                    self.commands
                        .allow
                        .iter()
                        .map(|(program, args)| raw::RawAllowedCommand { program: program.clone(), args: args.clone() })
                        .collect()
                }),
                deny: self.commands.deny.clone(),
            }),
            approvals: Some(raw::RawApprovals {
                critical: Some(self.approvals.critical.iter().map(|c| c.as_str().to_string()).collect()),
                timeout: Some(Seconds(self.approvals.timeout.as_secs_f64())),
            }),
            sessions: Some(self.sessions.to_raw()),
            functions: (!self.functions.is_empty())
                .then(|| self.functions.iter().map(|(k, f)| (k.clone(), f.to_raw())).collect()),
            workspaces: self.workspaces.to_raw(),
            // Notifiers' addresses may carry a relay's secret path: shown to the
            // operator (`policy check`), not to approvers.
            alerts: match shown {
                Shown::Full => self.alerts.to_raw(),
                Shown::Digests => self.alerts.to_raw().map(|mut a| {
                    a.webhook = a.webhook.map(|w| match w.strip_prefix("http://").and_then(|r| r.split_once('/')) {
                        Some((authority, path)) => format!("http://{authority}/{}", digest(path)),
                        None => w,
                    });
                    a.command = a.command.map(|argv| match argv.split_first() {
                        Some((program, rest)) if !rest.is_empty() => vec![program.clone(), digest(&rest.join("\0"))],
                        _ => argv,
                    });
                    a
                }),
                Shown::Redacted => None,
            },
        };
        serde_yaml::to_string(&raw).unwrap_or_else(|e| format!("# cannot render policy: {e}\n"))
    }
}

/// How much of the host's configuration a rendering shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// Everything (the operator's `policy check`).
    Full,
    /// Mount sources and notifiers' addresses by digest (a policy change's reviewer).
    Digests,
    /// Neither (approvers of runs, the audit log).
    Redacted,
}
