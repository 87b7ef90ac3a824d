//! Errors the library returns to its caller (never to sandboxed code).
//!
//! # Security
//! These are host-side errors: they may name host paths. What sandboxed code sees
//! is an [`crate::executor::Outcome`], whose messages never carry host paths.

use crate::policy::{PolicyError, Tier};

/// A host-side failure: the request could not be served. Guest exceptions and limit
/// breaches are not errors; they are outcomes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The policy is invalid, or an override tried to loosen it.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The request itself is unusable (empty, too large, not UTF-8).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The tier is not compiled into this build or not set up on this machine.
    #[error("tier {tier} is unavailable: {reason}")]
    TierUnavailable {
        /// The tier asked for.
        tier: Tier,
        /// Why, and how to fix it.
        reason: String,
    },
    /// The audit log could not record the request, so it was not run (nothing
    /// runs unrecorded).
    #[error("not run: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The sandbox is at its limit of concurrent runs or of operations waiting for
    /// approval; nothing was run. Retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The approvals queue failed, so a critical operation was not run.
    #[error("not run: {0}")]
    Approval(crate::approval::ApprovalError),
    /// A circuit breaker is open: the dependency failed repeatedly and is not
    /// called until its recovery timeout has passed.
    #[error(transparent)]
    BreakerOpen(#[from] crate::breaker::Open),
    /// The tier failed for reasons of the host (a worker died, a thread could not
    /// start).
    #[error("tier {tier} failed: {message}")]
    Host {
        /// The tier.
        tier: Tier,
        /// What happened.
        message: String,
    },
}

impl From<crate::approval::ApprovalError> for SandboxError {
    /// A full waiting budget is [`SandboxError::Busy`] (retry later); any other
    /// failure of the queue is [`SandboxError::Approval`].
    fn from(e: crate::approval::ApprovalError) -> SandboxError {
        match e {
            crate::approval::ApprovalError::Busy(_) => SandboxError::Busy(e.to_string()),
            e => SandboxError::Approval(e),
        }
    }
}

impl SandboxError {
    /// Whether this is a fault of the host or a dependency (what circuit breakers
    /// count), as opposed to a bad request or policy.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, SandboxError::TierUnavailable { .. } | SandboxError::Host { .. })
    }
}
