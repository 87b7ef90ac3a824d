//! Loading a policy: YAML text to a validated [`Policy`], every error located at
//! its file, line and field.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::commands::command_policy;
use super::raw::{self, RawPolicy};
use super::*;

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
        let sessions = super::sessions::session_policy(raw.sessions.unwrap_or_default(), sb.max_memory.0, &invalid)?;
        let functions = super::functions::function_policy(raw.functions.unwrap_or_default(), &invalid)?;
        let workspaces = super::workspaces::workspace_policy(raw.workspaces.unwrap_or_default(), &invalid)?;
        let alerts = super::alerts::alert_policy(raw.alerts.unwrap_or_default(), &invalid)?;
        Ok(Policy {
            enabled: sb.enabled,
            timeout: Duration::from_secs_f64(sb.timeout.0),
            max_memory: sb.max_memory.0,
            allowed_modules: std::sync::Arc::new(allowed_modules),
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
            sessions,
            functions: std::sync::Arc::new(functions),
            workspaces,
            alerts,
        })
    }
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
pub(super) fn locate(text: &str, path: &str) -> Option<usize> {
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
