//! The YAML shape of a policy file, exactly as written on disk.
//!
//! Every struct rejects unknown keys (`deny_unknown_fields`): a misspelt limit must be
//! an error, never a silently ignored line. Scalar values that carry units are parsed
//! here by [`Size`] and [`Seconds`], so that a bad value is reported by `serde_yaml`
//! with the field path and the line it sits on.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A whole policy file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub security: RawSecurity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<RawResilience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terrarium: Option<RawTerrarium>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<RawAudit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<RawCommands>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<RawApprovals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<RawSessions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<std::collections::BTreeMap<String, RawFunction>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspaces: Option<RawWorkspaces>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<RawAlerts>,
}

/// `alerts`: where events that need a human go.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denials_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `workspaces`: which workspaces runs may mount, where they live, their quotas.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkspaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_size: Option<Size>,
}

/// `functions.NAME`: one host function a snippet may call.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_arg_bytes: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// `sessions`: the limits of one session.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cells: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Seconds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open: Option<u64>,
}

/// `approvals`: which operations wait for a human, and for how long.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Seconds>,
}

/// `commands`: which system commands may run (see `crate::command`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommands {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<RawAllowedCommand>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
}

/// `commands.allow[]`: a program and the patterns its arguments must each match.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllowedCommand {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
}

/// `audit`: the audit log's settings.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub retention_days: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    pub sandbox: RawSandbox,
}

/// `security.sandbox`: the guidelines' keys.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    pub enabled: bool,
    pub timeout: Seconds,
    pub max_memory: Size,
    pub allowed_modules: Vec<String>,
    pub cpu_quota: u64,
    pub network_disabled: bool,
    pub readonly_filesystem: bool,
    pub docker: RawDocker,
}

/// `security.sandbox.docker`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDocker {
    pub image: String,
    pub network: String,
    pub security_opt: Vec<String>,
    pub cap_drop: Vec<String>,
}

/// `resilience`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawResilience {
    pub circuit_breaker: RawBreakers,
}

/// `resilience.circuit_breaker`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreakers {
    pub api: RawBreaker,
    pub database: RawBreaker,
    pub file_io: RawBreaker,
}

/// One breaker's settings.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failure_threshold: u32,
    pub recovery_timeout: Seconds,
    pub log_failures: bool,
}

/// `terrarium`: settings the guidelines do not name.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTerrarium {
    pub tier: Option<String>,
    pub allowed_tiers: Option<Vec<String>>,
    pub max_output: Option<Size>,
    pub max_code_size: Option<Size>,
    pub fuel: Option<u64>,
    pub read_only_mounts: Option<Vec<RawMount>>,
    pub min_isolation: Option<String>,
    pub findings: Option<String>,
}

/// One host directory the policy lets snippets read (`terrarium.read_only_mounts`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub source: String,
    pub target: String,
}

/// A byte count written as an integer or as a string with a unit: `"512m"`, `"1g"`,
/// `"64k"`, `"1048576"`. Units are binary (k = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A size that cannot be read; the message is the sentence shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("{0:?} is not a size (try \"512m\")")]
    NotASize(String),
    /// More bytes than fit in 64 bits.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Size {
    /// Parses `"512m"`-style sizes.
    ///
    /// # Errors
    /// Text that is not a size, or a size too large to count.
    pub fn parse(text: &str) -> Result<Size, SizeError> {
        let t = text.trim();
        let bad = || SizeError::NotASize(text.to_string());
        let lower = t.to_ascii_lowercase();
        let lower = lower.strip_suffix('b').unwrap_or(&lower);
        let (digits, mult) = match lower.chars().last() {
            Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
            Some('m') => (&lower[..lower.len() - 1], 1u64 << 20),
            Some('g') => (&lower[..lower.len() - 1], 1u64 << 30),
            Some('t') => (&lower[..lower.len() - 1], 1u64 << 40),
            Some(c) if c.is_ascii_digit() => (lower, 1),
            _ => return Err(bad()),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(mult).map(Size).ok_or_else(|| SizeError::TooLarge(text.to_string()))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

/// Writes a byte count in the largest unit that divides it (`536870912` → `"512m"`).
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("t", 40), ("g", 30), ("m", 20), ("k", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: serde_yaml then reports the
        // value's own line and field path.
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"512m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom(format!("{v} is not a size (try \"512m\")")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!("{v} is not a size (try \"512m\")")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in seconds, written as a number (`10`, `0.5`). Must be positive and
/// finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub f64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                if v.is_finite() && v > 0.0 {
                    Ok(Seconds(v))
                } else {
                    Err(E::custom(format!("{v} is not a positive number of seconds")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                Err(E::custom(format!("{v:?} is not a number of seconds (try 10 or 0.5)")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(Size::parse("512m"), Ok(Size(512 << 20)));
        assert_eq!(Size::parse("1G"), Ok(Size(1 << 30)));
        assert_eq!(Size::parse("64kb"), Ok(Size(64 << 10)));
        assert_eq!(Size::parse("100"), Ok(Size(100)));
        assert!(Size::parse("512q").is_err());
        assert!(Size::parse("m").is_err());
        assert!(Size::parse("-1m").is_err());
        assert!(Size::parse("99999999999999999999t").is_err());
    }
}
