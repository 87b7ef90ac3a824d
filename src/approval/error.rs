//! [`ApprovalError`]: why the approvals queue could not do something.

use super::{ApprovalStatus, MAX_NOTE};

/// Why the queue could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The database failed.
    #[error("approvals queue at {path}: {message}")]
    Database {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// No item has this id.
    #[error("no approval request {0}")]
    NotFound(i64),
    /// The audit log could not record a submission or decision.
    #[error("the audit log could not record an approval: {0}")]
    Audit(String),
    /// As many operations as allowed already wait for a decision.
    #[error("{0} critical operations already wait for a decision, the most allowed")]
    Busy(usize),
    /// What would wait is too large for a human to review.
    #[error("the operation is {bytes} bytes as submitted for review, more than the {most} a reviewer is shown")]
    TooLarge {
        /// Its size (the subject as JSON).
        bytes: usize,
        /// The most accepted.
        most: usize,
    },
    /// Whoever asked for an operation does not decide it.
    #[error("approval request {0} was asked for by the same caller; another person must decide it")]
    OwnRequest(i64),
    /// A decision's note is longer than [`MAX_NOTE`].
    #[error("the note is {0} bytes, more than the {MAX_NOTE} a decision keeps")]
    NoteTooLong(usize),
    /// A decision needs a decider's name.
    #[error("a decider's name must be non-empty printable text, at most 128 characters")]
    BadDecider,
    /// This caller already has as many operations waiting as one caller may.
    #[error("{caller} already has {most} critical operations waiting for a decision, the most one caller may")]
    CallerBusy {
        /// Who.
        caller: String,
        /// Its limit.
        most: usize,
    },
    /// The item was already decided (or expired).
    #[error("approval request {id} is already {status}")]
    Decided {
        /// The item.
        id: i64,
        /// Its status.
        status: ApprovalStatus,
    },
}
