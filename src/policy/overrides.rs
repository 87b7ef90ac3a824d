//! Per-request overrides: they tighten a policy, never loosen it.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{MIN_MEMORY, Policy, PolicyError, raw};

/// A requested timeout of `seconds` as a duration: `None` unless it is a positive,
/// finite number (capped at about 31 years, past any policy's). Every front end
/// reads a caller's `timeout` with it and words its own error.
pub fn timeout_secs(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)))
}

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
    /// A smaller fuel budget (any budget, when the policy sets none).
    pub fuel: Option<u64>,
}

impl Policy {
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
        if let Some(f) = o.fuel {
            if f == 0 || self.fuel.is_some_and(|allowed| f > allowed) {
                return Err(PolicyError::Loosening {
                    field: "fuel",
                    requested: f.to_string(),
                    allowed: self.fuel.map_or_else(|| "no limit (a budget is at least 1)".into(), |a| a.to_string()),
                });
            }
            p.fuel = Some(f);
        }
        if let Some(mods) = &o.allowed_modules {
            if let Some(extra) = mods.iter().find(|m| !self.allowed_modules.contains(*m)) {
                return Err(PolicyError::Loosening {
                    field: "allowed_modules",
                    requested: extra.clone(),
                    allowed: format!("{:?}", self.allowed_modules),
                });
            }
            p.allowed_modules = std::sync::Arc::new(mods.clone());
        }
        Ok(p)
    }
}
