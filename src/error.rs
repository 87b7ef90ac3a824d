//! Errors the library returns to its caller (never to sandboxed code).
//!
//! # Security
//! These are host-side errors: they may name host paths. What sandboxed code sees
//! is an [`crate::executor::Outcome`], whose messages never carry host paths.

//! It knows only the layers below it (the policy, the breakers): the audit log and
//! the approvals queue convert their own errors into it, so nothing here depends
//! on them.

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
    /// runs unrecorded). `source` is the audit log's error.
    #[error("not run: {source}")]
    Audit {
        /// The log is only behind (its writer is catching up): retry shortly.
        overloaded: bool,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The sandbox is at its limit of concurrent runs or of operations waiting for
    /// approval; nothing was run. Retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The deployment was stopped by an operator (an emergency stop, with its
    /// reason): nothing runs until it is resumed.
    #[error("stopped: {0}")]
    Stopped(String),
    /// The approvals queue failed, so a critical operation was not run (the
    /// source is the queue's error).
    #[error("not run: {0}")]
    Approval(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A circuit breaker is open: the dependency failed repeatedly and is not
    /// called until its recovery timeout has passed.
    #[error(transparent)]
    BreakerOpen(#[from] crate::breaker::Open),
    /// A critical operation (a session on the docker tier when the policy lists
    /// `docker_tier`) was not approved by a human in time, or was denied (why).
    #[error("not approved: {0}")]
    NotApproved(String),
    /// The session this cell was for has ended (why): its state is gone; start a
    /// new one.
    #[error("session ended: {0}")]
    SessionEnded(String),
    /// An operator's workspace command failed (a bad name or version, no such
    /// workspace, or the store could not be read or written).
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
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

impl SandboxError {
    /// Whether this is a fault of the host or a dependency (what circuit breakers
    /// count), as opposed to a bad request or policy.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, SandboxError::TierUnavailable { .. } | SandboxError::Host { .. })
    }
}

impl crate::breaker::Fault for SandboxError {
    fn is_host_fault(&self) -> bool {
        SandboxError::is_host_fault(self)
    }
}

/// `message` with every absolute host path replaced by `<host path>` (H12: a host
/// error recorded in the audit log or shown to an approver names no socket, overlay
/// or state directory; the server's own log keeps the full text).
pub fn redact_paths(message: &str) -> String {
    static PATH: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = PATH.get_or_init(|| regex::Regex::new(r#"(^|[\s"'(=:,\[{])/[^\s"'),\]}]*"#).ok());
    // The pattern is a constant (tested below); were it ever refused, nothing of the
    // message is shown rather than all of it.
    let Some(re) = re else { return "<host error>".into() };
    re.replace_all(message, "${1}<host path>").into_owned()
}

#[cfg(test)]
mod tests {
    /// H12: host paths leave no host error that is recorded or shown.
    #[test]
    fn h12_host_paths_are_redacted_from_host_errors() {
        let m = "docker: error trying to connect: unix:///var/run/docker.sock: No such file (os error 2); \
                 overlay at \"/var/lib/docker/overlay2/abc/merged\", home=/root/.local/share/terrarium";
        let r = super::redact_paths(m);
        assert!(!r.contains("/var") && !r.contains("/root"), "{r}");
        assert!(r.contains("No such file (os error 2)") && r.contains("<host path>"), "{r}");
        assert_eq!(super::redact_paths("a/b is relative"), "a/b is relative");
    }
}
