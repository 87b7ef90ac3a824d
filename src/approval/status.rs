//! [`ApprovalStatus`]: where an approval request stands, as one type in Rust, JSON,
//! the database and on the command line.

use serde::{Deserialize, Serialize};

/// Where an approval request stands; written as `pending`, `approved`, `denied` or
/// `expired` (in JSON, the database and on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a decision until its deadline.
    Pending,
    /// A named person approved it: the operation may run (once).
    Approved,
    /// A named person denied it.
    Denied,
    /// Nobody decided before the deadline (or its waiter went away): it never runs.
    Expired,
}

impl ApprovalStatus {
    /// Every status, in the order an item can go through them.
    pub const ALL: [ApprovalStatus; 4] =
        [ApprovalStatus::Pending, ApprovalStatus::Approved, ApprovalStatus::Denied, ApprovalStatus::Expired];

    /// The status as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
        }
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not an approval status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected pending, approved, denied or expired")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for ApprovalStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<ApprovalStatus, UnknownStatus> {
        ApprovalStatus::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl rusqlite::types::ToSql for ApprovalStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for ApprovalStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<ApprovalStatus> {
        v.as_str()?.parse().map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}
