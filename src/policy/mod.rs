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

mod alerts;
mod commands;
mod functions;
mod hazards;
mod load;
mod overrides;
pub(crate) mod raw;
mod render;
mod sessions;
mod workspaces;

pub use alerts::{AlertPolicy, webhook_target};
pub use commands::{AllowRule, CommandPolicy, CommandRules, DEFAULT_DENY, PatternError, denied, name_matches};
pub use functions::{FunctionSpec, is_function_name};
pub use overrides::{Overrides, timeout_secs};
pub use sessions::{
    DEFAULT_IDLE_SECS, DEFAULT_LIFETIME_SECS, DEFAULT_MAX_CELLS, DEFAULT_MAX_OPEN, MAX_OPEN, MAX_SESSION_SECS,
    SessionPolicy,
};
pub use workspaces::{Quota, WorkspacePolicy, valid_workspace_name};

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use raw::SizeError;
use raw::{RawBreaker, Seconds, Size};

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
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
pub use crate::breaker::Settings as BreakerPolicy;

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
    /// Shared: every request's policy is a copy of this one, and an interpreter
    /// job carries the set to another thread without copying it.
    allowed_modules: Arc<BTreeSet<String>>,
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
    sessions: SessionPolicy,
    /// The `functions` section, by name (shared: every request's policy is a copy).
    functions: Arc<std::collections::BTreeMap<String, FunctionSpec>>,
    workspaces: WorkspacePolicy,
    alerts: AlertPolicy,
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
    /// A run's change set to a workspace, before it becomes a version.
    WorkspaceChange,
}

impl Critical {
    /// Every critical operation.
    pub const ALL: [Critical; 4] =
        [Critical::DockerTier, Critical::WritableScratch, Critical::UnlistedCommand, Critical::WorkspaceChange];

    /// Its name in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Critical::DockerTier => "docker_tier",
            Critical::WritableScratch => "writable_scratch",
            Critical::UnlistedCommand => "unlisted_command",
            Critical::WorkspaceChange => "workspace_change",
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

/// A host directory the policy lets snippets read, and where they see it
/// (`terrarium.read_only_mounts`). Tiers with a file system mount it read-only (the
/// wasm tier preopens it read-only, the docker tier bind-mounts it read-only); the
/// rustpython tier has no file system and never shows it.
///
/// The source is pinned when the policy is loaded (held by handle): resolved,
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

impl crate::breaker::Breakers {
    /// The breakers `policy` configures: `api`, `database` and `file_io`, and one
    /// per tier with the `api` settings (a tier's engine is a dependency like an
    /// API), named after the tier.
    pub fn from_policy(policy: &Policy) -> crate::breaker::Breakers {
        let b = policy.breakers();
        let named = [("api", b.api), ("database", b.database), ("file_io", b.file_io)]
            .into_iter()
            .chain(Tier::ALL.iter().map(|t| (t.as_str(), b.api)));
        crate::breaker::Breakers::new(named)
    }

    /// The breaker of `tier` (every set built by [`Self::from_policy`] has one).
    pub fn tier(&self, tier: Tier) -> &crate::breaker::Breaker {
        self.named(tier.as_str())
    }
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

    /// [`Policy::allowed_modules`], shared rather than copied.
    #[cfg(feature = "rustpython")]
    pub(crate) fn allowed_modules_shared(&self) -> Arc<BTreeSet<String>> {
        self.allowed_modules.clone()
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
        p.allowed_modules = Arc::new(modules.iter().map(|m| m.to_string()).collect());
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

    /// The host functions snippets may call (`functions`), by name.
    pub fn functions(&self) -> &std::collections::BTreeMap<String, FunctionSpec> {
        &self.functions
    }

    /// Lowers the memory cap of a whole session to at most `bytes` (a caller's
    /// tighter memory cap applies to the sessions it opens too).
    pub fn cap_session_memory(&mut self, bytes: u64) {
        self.sessions.max_memory = self.sessions.max_memory.min(bytes);
    }

    /// The `sessions` section (defaults filled in).
    pub fn sessions(&self) -> &SessionPolicy {
        &self.sessions
    }

    /// Which workspaces runs may mount, where they live, their quotas
    /// (`workspaces`).
    pub fn workspaces(&self) -> &WorkspacePolicy {
        &self.workspaces
    }

    /// Where events that need a human are sent, and how often (`alerts`).
    pub fn alerts(&self) -> &AlertPolicy {
        &self.alerts
    }

    /// This policy as a session's process is held to: the session's memory cap
    /// (`sessions.max_memory`) instead of one run's.
    #[cfg(any(feature = "wasm", feature = "docker"))]
    pub(crate) fn for_session(&self) -> Policy {
        Policy { max_memory: self.sessions.max_memory, ..self.clone() }
    }

    /// Whether `op` waits for a human's approval.
    pub fn is_critical(&self, op: Critical) -> bool {
        self.approvals.critical.contains(&op)
    }

    /// Host directories snippets may read, read-only (tiers with a file system).
    pub fn read_only_mounts(&self) -> &[ReadOnlyMount] {
        &self.read_only_mounts
    }
}

/// Parses a size such as `"512m"` (binary units), as policy files write them.
///
/// # Errors
/// Text that is not a size, or a size too large to count.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
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

#[cfg(test)]
mod tests {
    use super::load::locate;
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
