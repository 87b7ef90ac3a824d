//! The `sessions` section: the limits of one session (a sequence of cells that
//! share interpreter state), with their defaults.
//!
//! # Invariant
//! Every limit is finite: a session ends at its cell count, its idle timeout or its
//! lifetime, whichever comes first, and its memory is capped like a single run's.

use std::time::Duration;

use super::PolicyError;
use super::raw::{RawSessions, Seconds};

/// Cells one session may run when the policy does not say.
pub const DEFAULT_MAX_CELLS: u64 = 1_000;
/// Sessions one sandbox keeps open at once when the policy does not say.
pub const DEFAULT_MAX_OPEN: u64 = 16;
/// The most sessions a policy may let one sandbox keep open.
pub const MAX_OPEN: u64 = 4_096;
/// How long a session may sit between cells when the policy does not say.
pub const DEFAULT_IDLE_SECS: f64 = 600.0;
/// How long a session may live when the policy does not say.
pub const DEFAULT_LIFETIME_SECS: f64 = 3_600.0;
/// The longest idle timeout or lifetime a policy may give: a day.
pub const MAX_SESSION_SECS: f64 = 86_400.0;

/// The `sessions` section (defaults filled in). A cell's own limits (its timeout,
/// output cap, fuel) are the policy's, as for any run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Cells a session runs before it ends (`sessions.max_cells`).
    pub max_cells: u64,
    /// How long a session may wait for its next cell (`sessions.idle_timeout`).
    pub idle_timeout: Duration,
    /// How long a session may live from its start (`sessions.max_lifetime`).
    pub max_lifetime: Duration,
    /// Memory of the whole session, bytes (`sessions.max_memory`; default:
    /// `security.sandbox.max_memory`): the state its cells build counts against it.
    pub max_memory: u64,
    /// Sessions one sandbox keeps open at once (`sessions.max_open`): each holds a
    /// process and its memory until it ends, so more are refused as busy.
    pub max_open: u64,
}

impl SessionPolicy {
    /// The defaults, with `max_memory` the policy's per-run memory cap.
    pub fn defaults(max_memory: u64) -> SessionPolicy {
        SessionPolicy {
            max_cells: DEFAULT_MAX_CELLS,
            idle_timeout: Duration::from_secs_f64(DEFAULT_IDLE_SECS),
            max_lifetime: Duration::from_secs_f64(DEFAULT_LIFETIME_SECS),
            max_memory,
            max_open: DEFAULT_MAX_OPEN,
        }
    }

    pub(super) fn to_raw(&self) -> RawSessions {
        RawSessions {
            max_cells: Some(self.max_cells),
            idle_timeout: Some(Seconds(self.idle_timeout.as_secs_f64())),
            max_lifetime: Some(Seconds(self.max_lifetime.as_secs_f64())),
            max_memory: Some(super::raw::Size(self.max_memory)),
            max_open: Some(self.max_open),
        }
    }
}

/// Checks the `sessions` section: every limit positive and in range.
pub(super) fn session_policy(
    raw: RawSessions,
    run_memory: u64,
    invalid: &dyn Fn(&str, String) -> PolicyError,
) -> Result<SessionPolicy, PolicyError> {
    let mut p = SessionPolicy::defaults(run_memory);
    if let Some(n) = raw.max_cells {
        if n == 0 {
            return Err(invalid("sessions.max_cells", "must be at least 1".into()));
        }
        p.max_cells = n;
    }
    let seconds = |key: &str, value: Option<Seconds>, default: Duration| match value {
        None => Ok(default),
        Some(Seconds(s)) if s > 0.0 && s <= MAX_SESSION_SECS => Ok(Duration::from_secs_f64(s)),
        Some(Seconds(s)) => Err(invalid(key, format!("{s} seconds: expected 0 < seconds ≤ {MAX_SESSION_SECS}"))),
    };
    if let Some(n) = raw.max_open {
        if !(1..=MAX_OPEN).contains(&n) {
            return Err(invalid("sessions.max_open", format!("{n}: expected 1 to {MAX_OPEN}")));
        }
        p.max_open = n;
    }
    p.idle_timeout = seconds("sessions.idle_timeout", raw.idle_timeout, p.idle_timeout)?;
    p.max_lifetime = seconds("sessions.max_lifetime", raw.max_lifetime, p.max_lifetime)?;
    if let Some(m) = raw.max_memory {
        if m.0 < super::MIN_MEMORY {
            return Err(invalid(
                "sessions.max_memory",
                format!(
                    "{} is below the smallest memory cap, {}",
                    super::raw::format_size(m.0),
                    super::raw::format_size(super::MIN_MEMORY)
                ),
            ));
        }
        p.max_memory = m.0;
    }
    Ok(p)
}
