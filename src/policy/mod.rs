//! Policies: what a snippet may do and how much it may use.
//!
//! A policy file is YAML. Its core is the security guidelines' schema
//! (`security.sandbox.*`, `resilience.circuit_breaker.*`); Terrarium's own settings
//! live under `terrarium:`. Parsing happens in two stages: `raw.rs` mirrors the file
//! and rejects unknown keys, then [`Policy::from_yaml`] validates it into a typed
//! [`Policy`] whose fields cannot be set to nonsense afterwards.
//!
//! # Security
//! Every error names the file, the line and the field path, so an operator never
//! runs under a policy other than the one they wrote. A per-request override can
//! only tighten a policy ([`Policy::tighten`]); there is no way to loosen one from a
//! request.

pub(crate) mod raw;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use raw::{
    RawBreaker, RawBreakers, RawDocker, RawPolicy, RawResilience, RawSandbox, RawSecurity, RawTerrarium, Seconds, Size,
};

/// The policy shipped as `policies/default.yaml`: the guidelines' values.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../../policies/default.yaml");

/// Default cap on stdout + stderr captured from one run, in bytes.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
/// Default cap on the size of one snippet's source, in bytes.
pub const DEFAULT_MAX_CODE_SIZE: u64 = 1 << 20;
/// Smallest `max_memory` a policy may set.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Longest `timeout` a policy may set, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 24.0 * 3600.0;

/// An isolation tier, lightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// RustPython, capability-free, in-process or in a forked worker.
    Rustpython,
    /// CPython compiled to WASI, under wasmtime.
    Wasm,
    /// CPython in a hardened Docker container.
    Docker,
}

impl Tier {
    /// Every tier, lightest first.
    pub const ALL: [Tier; 3] = [Tier::Rustpython, Tier::Wasm, Tier::Docker];

    /// The name used in policies, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Rustpython => "rustpython",
            Tier::Wasm => "wasm",
            Tier::Docker => "docker",
        }
    }

    /// Parses a tier name.
    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tier serves a request: a fixed one, or the router's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierChoice {
    /// The lightest allowed tier that can serve the request.
    #[default]
    Auto,
    /// Exactly this tier; never another.
    Fixed(Tier),
}

impl TierChoice {
    /// Parses `auto` or a tier name.
    pub fn parse(name: &str) -> Option<TierChoice> {
        if name == "auto" { Some(TierChoice::Auto) } else { Tier::parse(name).map(TierChoice::Fixed) }
    }
}

impl fmt::Display for TierChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierChoice::Auto => f.write_str("auto"),
            TierChoice::Fixed(t) => t.fmt(f),
        }
    }
}

/// The hardening the docker tier applies (`security.sandbox.docker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPolicy {
    /// Image to run.
    pub image: String,
    /// Docker network mode; `none` unless the policy enables networking.
    pub network: String,
    /// `--security-opt` entries.
    pub security_opt: Vec<String>,
    /// Capabilities dropped.
    pub cap_drop: Vec<String>,
}

/// One circuit breaker's settings (`resilience.circuit_breaker.NAME`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive host faults that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker waits before one trial.
    pub recovery_timeout: Duration,
    /// Whether every failure is logged.
    pub log_failures: bool,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy { failure_threshold: 3, recovery_timeout: Duration::from_secs(60), log_failures: true }
    }
}

/// The three breakers the guidelines name.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BreakerPolicies {
    /// External APIs (the docker engine counts as one).
    pub api: BreakerPolicy,
    /// The audit database.
    pub database: BreakerPolicy,
    /// File input and output.
    pub file_io: BreakerPolicy,
}

/// A validated policy. Fields are read through accessors; the only way to change
/// one is [`Policy::tighten`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    enabled: bool,
    timeout: Duration,
    max_memory: u64,
    allowed_modules: BTreeSet<String>,
    cpu_quota: u64,
    network_disabled: bool,
    readonly_filesystem: bool,
    docker: DockerPolicy,
    breakers: BreakerPolicies,
    tier: TierChoice,
    allowed_tiers: Vec<Tier>,
    max_output: u64,
    max_code_size: u64,
    fuel: Option<u64>,
    read_only_mounts: Vec<ReadOnlyMount>,
    min_isolation: Tier,
    deny_findings: bool,
    retention_days: Option<u32>,
    commands: CommandPolicy,
    approvals: ApprovalPolicy,
}

/// An operation the policy can make wait for a human's approval
/// (`approvals.critical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Critical {
    /// A request that would run in the docker tier.
    DockerTier,
    /// A request that asks for a writable scratch directory.
    WritableScratch,
    /// A system command that is not allow-listed (without it, such a command is
    /// denied).
    UnlistedCommand,
}

impl Critical {
    /// Every critical operation.
    pub const ALL: [Critical; 3] = [Critical::DockerTier, Critical::WritableScratch, Critical::UnlistedCommand];

    /// Its name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Critical::DockerTier => "docker_tier",
            Critical::WritableScratch => "writable_scratch",
            Critical::UnlistedCommand => "unlisted_command",
        }
    }
}

/// The `approvals` section: which operations wait for a human (see
/// [`crate::approval`]) and how long before an undecided one is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// The critical operations.
    pub critical: BTreeSet<Critical>,
    /// How long a critical operation waits for a decision.
    pub timeout: Duration,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            critical: [Critical::UnlistedCommand].into_iter().collect(),
            timeout: Duration::from_secs(DEFAULT_APPROVAL_SECS),
        }
    }
}

/// How long a critical operation waits for a human when the policy does not say.
const DEFAULT_APPROVAL_SECS: u64 = 300;
/// The longest `approvals.timeout`, and the longest a caller may wait for a
/// decision: a day.
pub const MAX_APPROVAL_SECS: f64 = 86_400.0;

/// What [`Policy::to_yaml_redacted`] shows instead of a mount's host directory.
pub const HIDDEN_SOURCE: &str = "(a host directory, pinned by the operator)";

/// The `commands` section: system commands that may run (in the docker tier) and
/// those that never do. Checked by [`crate::command::decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandPolicy {
    /// (program, argument patterns): each argument must match one pattern.
    pub allow: Vec<(String, Vec<String>)>,
    /// Programs that never run; `None`: [`crate::command::DEFAULT_DENY`].
    pub deny: Option<Vec<String>>,
}

/// A host directory the policy lets snippets read, and where they see it
/// (`terrarium.read_only_mounts`). Tiers with a file system mount it read-only (the
/// wasm tier preopens it read-only, the docker tier bind-mounts it read-only); the
/// rustpython tier has no file system and never shows it.
///
/// The source is pinned when the policy is loaded ([`crate::dirs::Pinned`]): resolved,
/// every directory above it owned by root or this user and writable by no one else,
/// its identity recorded; tiers check that identity again at every run, so another
/// user cannot swap a path component for a link to somewhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyMount {
    /// Absolute host path of a directory, resolved.
    pub source: std::path::PathBuf,
    /// Absolute path inside the sandbox, normalised (no repeated or trailing `/`).
    pub target: String,
    /// The source's identity, as the policy was loaded.
    pub pinned: crate::dirs::Pinned,
}

/// Sandbox paths a read-only mount may not cover: the root, what the tiers mount
/// themselves, and the kernel's views.
#[rustfmt::skip]
const RESERVED_TARGETS: &[&str] = &[
    "/", "/tmp", "/scratch", "/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib32", "/lib64", "/libx32",
    "/bin", "/sbin", "/boot", "/run", "/var",
];

/// Tightening applied to one request. Each field, when set, must be no looser than
/// the policy's own value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// A shorter deadline.
    pub timeout: Option<Duration>,
    /// A smaller memory cap, in bytes.
    pub max_memory: Option<u64>,
    /// A smaller output cap, in bytes.
    pub max_output: Option<u64>,
    /// A subset of the allowed modules.
    pub allowed_modules: Option<BTreeSet<String>>,
}

/// Why a policy could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: cannot read policy: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML, or does not match the schema.
    #[error("{origin}:{line}: {message}")]
    Invalid {
        /// File name, or `<policy>` for text given directly.
        origin: String,
        /// 1-based line of the offending field (0 when unknown).
        line: usize,
        /// What is wrong, starting with the field path.
        message: String,
    },
    /// A per-request override tried to loosen the policy.
    #[error("{field}: an override may only tighten the policy ({requested} is looser than the policy's {allowed})")]
    Loosening {
        /// The field.
        field: &'static str,
        /// What was asked.
        requested: String,
        /// What the policy allows.
        allowed: String,
    },
}

impl Policy {
    /// The default policy (`policies/default.yaml`).
    pub fn default_policy() -> Policy {
        // The embedded default is checked by a unit test; failing here would be a
        // build defect, not an input error.
        #[expect(clippy::expect_used, reason = "the built-in policy is validated by tests")]
        Policy::from_yaml(DEFAULT_POLICY_YAML, "policies/default.yaml").expect("built-in default policy is valid")
    }

    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// [`PolicyError::Read`] when the file cannot be read, [`PolicyError::Invalid`]
    /// naming the line and field when it is not a valid policy.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let bytes =
            std::fs::read(path).map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|_| PolicyError::Invalid {
            origin: origin.clone(),
            line: 0,
            message: "the file is not UTF-8 text".into(),
        })?;
        Policy::from_yaml(&text, &origin)
    }

    /// Validates policy text. `origin` names it in errors.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] naming the line and field.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            return Err(PolicyError::Invalid { origin: origin.into(), line: 0, message: "the policy is empty".into() });
        }
        let raw: RawPolicy = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, origin))?;
        let invalid = |path: &str, message: String| PolicyError::Invalid {
            origin: origin.into(),
            line: locate(text, path).unwrap_or(0),
            message: format!("{path}: {message}"),
        };
        Policy::validate(raw, invalid)
    }

    fn validate(raw: RawPolicy, invalid: impl Fn(&str, String) -> PolicyError) -> Result<Policy, PolicyError> {
        let sb = raw.security.sandbox;
        if sb.timeout.0 > MAX_TIMEOUT_SECS {
            return Err(invalid(
                "security.sandbox.timeout",
                format!("{} seconds is longer than the maximum of {MAX_TIMEOUT_SECS}", sb.timeout.0),
            ));
        }
        if sb.max_memory.0 < MIN_MEMORY {
            return Err(invalid(
                "security.sandbox.max_memory",
                format!(
                    "{} is below the minimum of {}",
                    raw::format_size(sb.max_memory.0),
                    raw::format_size(MIN_MEMORY)
                ),
            ));
        }
        let mut allowed_modules = BTreeSet::new();
        for m in &sb.allowed_modules {
            if !is_module_name(m) {
                return Err(invalid("security.sandbox.allowed_modules", format!("{m:?} is not a module name")));
            }
            allowed_modules.insert(m.clone());
        }
        if !(1000..=1_000_000).contains(&sb.cpu_quota) {
            return Err(invalid(
                "security.sandbox.cpu_quota",
                format!("{} is outside 1000..=1000000 microseconds per 100 ms period", sb.cpu_quota),
            ));
        }
        if sb.network_disabled && sb.docker.network != "none" {
            return Err(invalid(
                "security.sandbox.docker.network",
                format!("{:?} contradicts network_disabled: true (use \"none\")", sb.docker.network),
            ));
        }
        if sb.docker.image.trim().is_empty() {
            return Err(invalid("security.sandbox.docker.image", "must not be empty".into()));
        }
        let breakers = match raw.resilience {
            None => BreakerPolicies::default(),
            Some(r) => {
                let one = |name: &str, b: RawBreaker| {
                    if b.failure_threshold == 0 {
                        return Err(invalid(
                            &format!("resilience.circuit_breaker.{name}.failure_threshold"),
                            "must be at least 1".into(),
                        ));
                    }
                    Ok(BreakerPolicy {
                        failure_threshold: b.failure_threshold,
                        recovery_timeout: Duration::from_secs_f64(b.recovery_timeout.0.min(MAX_TIMEOUT_SECS)),
                        log_failures: b.log_failures,
                    })
                };
                let cb = r.circuit_breaker;
                BreakerPolicies {
                    api: one("api", cb.api)?,
                    database: one("database", cb.database)?,
                    file_io: one("file_io", cb.file_io)?,
                }
            }
        };
        let retention_days = raw.audit.and_then(|a| a.retention_days);
        if let Some(d) = retention_days
            && !(1..=36_500).contains(&d)
        {
            return Err(invalid(
                "audit.retention_days",
                format!("{d} is outside 1..=36500 (omit it to keep every event)"),
            ));
        }
        let t = raw.terrarium.unwrap_or_default();
        let allowed_tiers = match t.allowed_tiers {
            None => Tier::ALL.to_vec(),
            Some(names) => {
                let mut tiers = Vec::new();
                for n in names {
                    let tier = Tier::parse(&n).ok_or_else(|| {
                        invalid("terrarium.allowed_tiers", format!("{n:?} is not a tier (rustpython, wasm, docker)"))
                    })?;
                    if !tiers.contains(&tier) {
                        tiers.push(tier);
                    }
                }
                if tiers.is_empty() {
                    return Err(invalid("terrarium.allowed_tiers", "must name at least one tier".into()));
                }
                tiers.sort();
                tiers
            }
        };
        let tier = match t.tier.as_deref() {
            None => TierChoice::Auto,
            Some(name) => TierChoice::parse(name).ok_or_else(|| {
                invalid("terrarium.tier", format!("{name:?} is not a tier (auto, rustpython, wasm, docker)"))
            })?,
        };
        if let TierChoice::Fixed(fixed) = tier
            && !allowed_tiers.contains(&fixed)
        {
            return Err(invalid("terrarium.tier", format!("{fixed} is not in terrarium.allowed_tiers")));
        }
        let max_output = t.max_output.map_or(DEFAULT_MAX_OUTPUT, |s| s.0);
        if max_output == 0 {
            return Err(invalid("terrarium.max_output", "must be at least 1 byte".into()));
        }
        let max_code_size = t.max_code_size.map_or(DEFAULT_MAX_CODE_SIZE, |s| s.0);
        if max_code_size == 0 || max_code_size > 64 << 20 {
            return Err(invalid(
                "terrarium.max_code_size",
                format!("{} is outside 1..=64m", raw::format_size(max_code_size)),
            ));
        }
        let mut read_only_mounts = Vec::new();
        for (i, m) in t.read_only_mounts.unwrap_or_default().into_iter().enumerate() {
            let path = format!("terrarium.read_only_mounts[{i}]");
            let clean = |p: &str| {
                p.starts_with('/')
                    && !p.split('/').any(|c| c == ".." || c == ".")
                    && !p.contains(':')
                    && !p.chars().any(char::is_control)
            };
            if !clean(&m.source) {
                return Err(invalid(
                    &format!("{path}.source"),
                    format!("{:?} must be an absolute path without '.', '..', ':' or control characters", m.source),
                ));
            }
            // `//etc` and `/etc/` are `/etc`.
            let target = format!("/{}", m.target.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>().join("/"));
            let target = target.as_str();
            if !clean(&m.target)
                || RESERVED_TARGETS
                    .iter()
                    .any(|r| target == *r || (r.len() > 1 && target.starts_with(&format!("{r}/"))))
                || target.is_empty()
            {
                return Err(invalid(
                    &format!("{path}.target"),
                    format!(
                        "{:?} must be an absolute path without '.', '..' or ':', outside {}",
                        m.target,
                        RESERVED_TARGETS.join(", ")
                    ),
                ));
            }
            if read_only_mounts.iter().any(|(_, _, o): &(String, String, String)| o == target) {
                return Err(invalid(&format!("{path}.target"), format!("{target:?} is mounted twice")));
            }
            read_only_mounts.push((path, m.source, target.to_string()));
        }
        // Pinned once every entry reads well (a missing directory is the last thing
        // worth reporting).
        let read_only_mounts = read_only_mounts
            .into_iter()
            .map(|(path, source, target)| {
                let pinned = crate::dirs::Pinned::new(std::path::Path::new(&source), "mount source")
                    .map_err(|e| invalid(&format!("{path}.source"), e.to_string()))?;
                Ok(ReadOnlyMount { source: pinned.path.clone(), target, pinned })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        let min_isolation = match t.min_isolation.as_deref() {
            None => Tier::Rustpython,
            Some(name) => Tier::parse(name).ok_or_else(|| {
                invalid("terrarium.min_isolation", format!("{name:?} is not a tier (rustpython, wasm, docker)"))
            })?,
        };
        if !allowed_tiers.iter().any(|t| *t >= min_isolation) {
            return Err(invalid(
                "terrarium.min_isolation",
                format!("{min_isolation} is above every tier in terrarium.allowed_tiers"),
            ));
        }
        if let TierChoice::Fixed(fixed) = tier
            && fixed < min_isolation
        {
            return Err(invalid(
                "terrarium.tier",
                format!("{fixed} is below terrarium.min_isolation ({min_isolation})"),
            ));
        }
        let deny_findings = match t.findings.as_deref() {
            None | Some("deny") => true,
            Some("warn") => false,
            Some(other) => {
                return Err(invalid("terrarium.findings", format!("{other:?} is not deny or warn")));
            }
        };
        if t.fuel == Some(0) {
            return Err(invalid("terrarium.fuel", "must be at least 1 (omit it for no fuel limit)".into()));
        }
        let commands = command_policy(raw.commands.unwrap_or_default(), &invalid)?;
        let approvals = approval_policy(raw.approvals.unwrap_or_default(), &invalid)?;
        Ok(Policy {
            enabled: sb.enabled,
            timeout: Duration::from_secs_f64(sb.timeout.0),
            max_memory: sb.max_memory.0,
            allowed_modules,
            cpu_quota: sb.cpu_quota,
            network_disabled: sb.network_disabled,
            readonly_filesystem: sb.readonly_filesystem,
            docker: DockerPolicy {
                image: sb.docker.image,
                network: sb.docker.network,
                security_opt: sb.docker.security_opt,
                cap_drop: sb.docker.cap_drop,
            },
            breakers,
            tier,
            allowed_tiers,
            max_output,
            max_code_size,
            fuel: t.fuel,
            read_only_mounts,
            min_isolation,
            deny_findings,
            retention_days,
            commands,
            approvals,
        })
    }

    /// Returns this policy with `o` applied.
    ///
    /// # Errors
    /// [`PolicyError::Loosening`] when any override is looser than the policy.
    pub fn tighten(&self, o: &Overrides) -> Result<Policy, PolicyError> {
        let mut p = self.clone();
        if let Some(t) = o.timeout {
            if t > self.timeout || t.is_zero() {
                return Err(PolicyError::Loosening {
                    field: "timeout",
                    requested: format!("{}s", t.as_secs_f64()),
                    allowed: format!("{}s", self.timeout.as_secs_f64()),
                });
            }
            p.timeout = t;
        }
        if let Some(m) = o.max_memory {
            if m > self.max_memory || m < MIN_MEMORY {
                return Err(PolicyError::Loosening {
                    field: "max_memory",
                    requested: raw::format_size(m),
                    allowed: format!(
                        "{} (minimum {})",
                        raw::format_size(self.max_memory),
                        raw::format_size(MIN_MEMORY)
                    ),
                });
            }
            p.max_memory = m;
        }
        if let Some(m) = o.max_output {
            if m > self.max_output || m == 0 {
                return Err(PolicyError::Loosening {
                    field: "max_output",
                    requested: raw::format_size(m),
                    allowed: raw::format_size(self.max_output),
                });
            }
            p.max_output = m;
        }
        if let Some(mods) = &o.allowed_modules {
            if let Some(extra) = mods.iter().find(|m| !self.allowed_modules.contains(*m)) {
                return Err(PolicyError::Loosening {
                    field: "allowed_modules",
                    requested: extra.clone(),
                    allowed: format!("{:?}", self.allowed_modules),
                });
            }
            p.allowed_modules = mods.clone();
        }
        Ok(p)
    }

    /// Whether the sandbox may run anything at all. A disabled sandbox denies every
    /// request; it never runs code unconfined.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// Wall-clock deadline of one run.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Memory cap of one run, in bytes.
    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }
    /// Modules user code may import (a listed package allows its submodules).
    pub fn allowed_modules(&self) -> &BTreeSet<String> {
        &self.allowed_modules
    }
    /// Whether `name` (possibly dotted) may be imported by user code.
    pub fn allows_module(&self, name: &str) -> bool {
        module_allowed(&self.allowed_modules, name)
    }
    /// CPU quota in microseconds per 100 ms period (docker tier).
    pub fn cpu_quota(&self) -> u64 {
        self.cpu_quota
    }
    /// Whether networking is off (it always is in the rustpython and wasm tiers).
    pub fn network_disabled(&self) -> bool {
        self.network_disabled
    }
    /// Whether the root filesystem is read-only (docker tier).
    pub fn readonly_filesystem(&self) -> bool {
        self.readonly_filesystem
    }
    /// Docker hardening.
    pub fn docker(&self) -> &DockerPolicy {
        &self.docker
    }
    /// Circuit breaker settings.
    pub fn breakers(&self) -> &BreakerPolicies {
        &self.breakers
    }
    /// Tier selection.
    pub fn tier(&self) -> TierChoice {
        self.tier
    }
    /// Tiers this policy allows, lightest first.
    pub fn allowed_tiers(&self) -> &[Tier] {
        &self.allowed_tiers
    }
    /// Cap on captured stdout + stderr, in bytes.
    pub fn max_output(&self) -> u64 {
        self.max_output
    }
    /// Cap on the source size of one snippet, in bytes.
    pub fn max_code_size(&self) -> u64 {
        self.max_code_size
    }
    /// Fuel budget (wasm tier), when set.
    pub fn fuel(&self) -> Option<u64> {
        self.fuel
    }

    /// Days the audit log keeps events (`audit.retention_days`; `None`: forever).
    pub fn retention_days(&self) -> Option<u32> {
        self.retention_days
    }

    /// The lightest tier this policy lets a request run on
    /// (`terrarium.min_isolation`; tiers are ordered rustpython < wasm < docker).
    pub fn min_isolation(&self) -> Tier {
        self.min_isolation
    }

    /// Whether a static-analysis finding of severity deny refuses the run on every
    /// tier (`terrarium.findings: deny`, the default) or is only reported (`warn`;
    /// the rustpython tier still refuses, its walls rely on the analysis).
    pub fn deny_findings(&self) -> bool {
        self.deny_findings
    }

    /// This policy with `modules` as its whitelist, built by the host (listing a
    /// tier's modules, the red-team parity table); no request can reach it, since
    /// overrides only ever tighten.
    pub fn with_allowed_modules(&self, modules: &[&str]) -> Policy {
        let mut p = self.clone();
        p.allowed_modules = modules.iter().map(|m| m.to_string()).collect();
        p
    }

    /// The `commands` section as written (validated).
    pub fn commands(&self) -> &CommandPolicy {
        &self.commands
    }

    /// The `approvals` section (defaults filled in).
    pub fn approvals(&self) -> &ApprovalPolicy {
        &self.approvals
    }

    /// Whether `op` waits for a human's approval.
    pub fn is_critical(&self, op: Critical) -> bool {
        self.approvals.critical.contains(&op)
    }

    /// The rules system commands are checked against.
    pub fn command_rules(&self) -> crate::command::CommandRules {
        let deny = match &self.commands.deny {
            Some(d) => d.clone(),
            None => crate::command::DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
        };
        let allow = self
            .commands
            .allow
            .iter()
            .filter_map(|(program, args)| {
                let patterns: Vec<&str> = args.iter().map(String::as_str).collect();
                // Compiled once already when the policy was loaded.
                crate::command::AllowRule::new(program, &patterns).ok()
            })
            .collect();
        let approvable = self.approvals.critical.contains(&Critical::UnlistedCommand);
        crate::command::CommandRules { allow, deny, approvable }
    }

    /// Host directories snippets may read, read-only (tiers with a file system).
    pub fn read_only_mounts(&self) -> &[ReadOnlyMount] {
        &self.read_only_mounts
    }

    /// The effective policy as a complete policy file: every key, defaults filled
    /// in. Parsing the result gives back an equal policy.
    pub fn to_yaml(&self) -> String {
        self.render(true)
    }

    /// [`Policy::to_yaml`] for people other than the operator (approvers, the audit
    /// log): each mount's host directory is replaced by [`HIDDEN_SOURCE`], so that
    /// no host path leaves the host's configuration (H12).
    pub fn to_yaml_redacted(&self) -> String {
        self.render(false)
    }

    fn render(&self, sources: bool) -> String {
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
                            source: if sources { m.source.display().to_string() } else { HIDDEN_SOURCE.into() },
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
        };
        serde_yaml::to_string(&raw).unwrap_or_else(|e| format!("# cannot render policy: {e}\n"))
    }
}

/// Checks the `commands` section: programs are plain names or absolute paths,
/// patterns compile, and no program is both allowed and denied.
fn command_policy(
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
        crate::command::AllowRule::new(&a.program, &patterns).map_err(|e| invalid(&format!("{field}.args"), e))?;
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
        if let Some((p, _)) = allow.iter().find(|(p, _)| crate::command::denied(p, deny)) {
            return Err(invalid("commands", format!("{p:?} is both allowed and denied")));
        }
    } else if let Some((p, _)) = allow.iter().find(|(p, _)| crate::command::denied(p, crate::command::DEFAULT_DENY)) {
        return Err(invalid(
            "commands.allow",
            format!("{p:?} is in the built-in deny list; list commands.deny yourself to allow it"),
        ));
    }
    Ok(CommandPolicy { allow, deny: raw.deny })
}

/// Checks the `approvals` section: known operation names, a timeout in range.
fn approval_policy(
    raw: raw::RawApprovals,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<ApprovalPolicy, PolicyError> {
    let mut p = ApprovalPolicy::default();
    if let Some(names) = raw.critical {
        p.critical.clear();
        for (i, name) in names.iter().enumerate() {
            let Some(op) = Critical::ALL.into_iter().find(|c| c.as_str() == name) else {
                let known: Vec<&str> = Critical::ALL.iter().map(|c| c.as_str()).collect();
                return Err(invalid(
                    &format!("approvals.critical[{i}]"),
                    format!("{name:?} is not one of {}", known.join(", ")),
                ));
            };
            p.critical.insert(op);
        }
    }
    if let Some(Seconds(secs)) = raw.timeout {
        if !(secs > 0.0 && secs <= MAX_APPROVAL_SECS) {
            return Err(invalid(
                "approvals.timeout",
                format!("{secs} seconds: expected 0 < seconds ≤ {MAX_APPROVAL_SECS}"),
            ));
        }
        p.timeout = Duration::from_secs_f64(secs);
    }
    Ok(p)
}

/// Parses a size such as `"512m"` (binary units), as policy files write them.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn parse_size(text: &str) -> Result<u64, String> {
    Size::parse(text).map(|s| s.0)
}

/// Whether `name` (possibly dotted) is in `allowed` or is a submodule of an entry.
pub fn module_allowed(allowed: &BTreeSet<String>, name: &str) -> bool {
    let mut prefix = name;
    loop {
        if allowed.contains(prefix) {
            return true;
        }
        match prefix.rfind('.') {
            Some(i) => prefix = &prefix[..i],
            None => return false,
        }
    }
}

fn is_module_name(m: &str) -> bool {
    !m.is_empty()
        && m.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        })
}

/// Turns a `serde_yaml` error into one that starts with the file and line.
fn yaml_error(e: &serde_yaml::Error, origin: &str) -> PolicyError {
    let line = e.location().map_or(0, |l| l.line());
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C"; the line is already in front.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        message = format!("(top level): {message}");
    }
    PolicyError::Invalid { origin: origin.into(), line, message }
}

/// Finds the 1-based line of a dotted key path in block-style YAML.
fn locate(text: &str, path: &str) -> Option<usize> {
    let mut want = path.split('.');
    let mut key = want.next()?;
    // Indentation of the section being searched: keys must sit exactly at `level`
    // (learnt from the section's first line), and a shallower line ends it.
    let mut parent: Option<usize> = None;
    let mut level: Option<usize> = Some(0);
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent.is_some_and(|p| indent <= p) {
            return None;
        }
        let level_here = *level.get_or_insert(indent);
        if indent != level_here {
            continue;
        }
        let name = trimmed.split(':').next().unwrap_or("").trim().trim_matches('"');
        if name == key && trimmed.contains(':') {
            match want.next() {
                Some(next) => {
                    key = next;
                    parent = Some(indent);
                    level = None;
                }
                None => return Some(i + 1),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_the_guidelines() {
        let p = Policy::default_policy();
        assert!(p.enabled());
        assert_eq!(p.timeout(), Duration::from_secs(10));
        assert_eq!(p.max_memory(), 512 << 20);
        assert_eq!(p.allowed_modules().iter().map(String::as_str).collect::<Vec<_>>(), ["json", "math", "time"]);
        assert_eq!(p.cpu_quota(), 100_000);
        assert!(p.network_disabled() && p.readonly_filesystem());
        assert_eq!(p.docker().network, "none");
        assert_eq!(p.docker().cap_drop, ["ALL"]);
        assert_eq!(p.breakers().database.failure_threshold, 3);
        assert_eq!(p.tier(), TierChoice::Auto);
    }

    #[test]
    fn effective_policy_round_trips() {
        let p = Policy::default_policy();
        let again = Policy::from_yaml(&p.to_yaml(), "<effective>").expect("round trip");
        assert_eq!(p, again);
    }

    #[test]
    fn locate_follows_nesting() {
        let text = "a:\n  b: 1\n  c:\n    d: 2\nc:\n  d: 3\n";
        assert_eq!(locate(text, "a.c.d"), Some(4));
        assert_eq!(locate(text, "c.d"), Some(6));
        assert_eq!(locate(text, "a.x"), None);
    }

    #[test]
    fn overrides_only_tighten() {
        let p = Policy::default_policy();
        let tighter = p
            .tighten(&Overrides { timeout: Some(Duration::from_secs(1)), ..Overrides::default() })
            .expect("tighter timeout");
        assert_eq!(tighter.timeout(), Duration::from_secs(1));
        assert!(p.tighten(&Overrides { timeout: Some(Duration::from_secs(11)), ..Overrides::default() }).is_err());
        assert!(p.tighten(&Overrides { max_memory: Some(1 << 30), ..Overrides::default() }).is_err());
        let os: BTreeSet<String> = ["os".to_string()].into();
        assert!(p.tighten(&Overrides { allowed_modules: Some(os), ..Overrides::default() }).is_err());
    }

    #[test]
    fn submodules_of_allowed_packages_are_allowed() {
        let p = Policy::default_policy();
        assert!(p.allows_module("json"));
        assert!(p.allows_module("json.decoder"));
        assert!(!p.allows_module("jsonx"));
        assert!(!p.allows_module("os.path"));
    }
}
