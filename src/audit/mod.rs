//! The audit log: every request and decision, in SQLite, chained by MACs.
//!
//! One row per event (`events`: seq, random id, time, kind, request id, JSON data,
//! the previous row's hash and this row's hash, where `hash = HMAC-SHA256(key, "v3",
//! prev_hash, seq, id, time, kind, request id, data)`: every column, under the key
//! of [`key`], kept outside the state directory); snippet source is stored once per
//! sha256 (`code`), and [`verify`] checks each text against its key. Rows hashed any
//! other way (older, unkeyed logs) do not verify: they cannot be told from forgeries.
//! A writer checks that the row it last saw (or the head file names) is still there
//! before it appends; if not, a `chain_break` event goes into the chain first.
//!
//! Writing is in two steps. [`AuditLog::record`] appends the event to this
//! process's journal (`audit.db.journal.<pid>.<start>`, one `write`: once it
//! returns, the event survives the process being killed) and hands it to a writer
//! thread, which commits events to the database in groups (WAL,
//! `synchronous=NORMAL`) and empties the journal when everything in it is
//! committed. When the database cannot be written (locked, read-only, full; breaker
//! `database` open), events wait in the journal and the writer retries, replaying
//! the journal in order. Journals left by processes that are gone are replayed by
//! the next [`AuditLog::open`], [`recover`] or [`verify`]. Each event carries a
//! random id, so a replay inserts nothing twice. After every commit the last row's
//! seq and hash go to a head file, so that deleting the newest rows is detected too.
//!
//! # Invariant
//! Nothing is lost: an event is acknowledged only once it is in the journal, and
//! it leaves the journal only once committed; [`verify`] names any row that was
//! edited, deleted, inserted or reordered.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::breaker::Breaker;
use crate::dirs::OwnedDir;

pub mod key;
pub use key::Key;

mod store;
pub use store::*;
mod journal;
pub use journal::*;
mod writer;
use writer::*;
mod recover;
pub use recover::*;
mod verify;
pub use verify::*;
mod query;
pub use query::*;
mod backup;
pub use backup::*;
mod sealing;
pub use sealing::{
    Resealed, approval_context, approvals_sealed_from, check_key, open_value, reseal, sealing, sealing_on,
};

/// Hash before the first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events committed in one transaction at most.
const BATCH: usize = 512;
/// Events recorded but not yet committed, at most: past it, `record` waits for the
/// writer (memory stays bounded under overload; the journal holds them anyway).
const MAX_BACKLOG: usize = 65_536;
/// How often the writer retries while the database is unavailable.
const RETRY: Duration = Duration::from_millis(100);
/// How long the writer waits for a lock before it counts the database unavailable.
const BUSY_MS: u64 = 200;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The directory it lives in is not one Terrarium may use (see docs/audit.md).
    #[error(transparent)]
    Directory(#[from] crate::dirs::DirError),
    /// SQLite said no.
    #[error("audit database {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// The journal did not take the event: it is not recorded.
    #[error("audit event not recorded: cannot append to the journal {path}: {message}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// [`AuditLog::flush`] gave up: the database stayed unavailable (the events
    /// are safe in the journal).
    #[error("audit events not yet in the database (they are in the journal): {0}")]
    NotFlushed(String),
    /// The writer thread is gone.
    #[error("the audit writer has stopped")]
    Stopped,
    /// The audit key cannot be found, made or read (see [`key`]).
    #[error("audit key {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The data key (encryption at rest, docs/operations.md) is missing, wrong or unreadable, or a
    /// sealed value does not open.
    #[error("{0}")]
    Sealed(String),
    /// [`AuditLog::admit_async`] refused a new arrival: the writer is too far
    /// behind (the database is unavailable or slow). Shed the request; retry later.
    #[error("the audit log is {0} events behind; retry later")]
    Overloaded(usize),
}

crate::names::named! {
    /// What an event records. Rows read back keep the kind as text (a log may hold
    /// kinds a later version added); [`Row::event_kind`] parses it.
    "event kind" pub enum EventKind {
        /// A request arrived (its code is stored by hash).
        Request = "request",
        /// The static analysis' findings on it.
        Analysis = "analysis",
        /// The tier it was routed to, and why.
        Route = "route",
        /// A tier refused something the snippet did.
        Denial = "denial",
        /// How the run ended, with its usage.
        Outcome = "outcome",
        /// A system command was checked (and run, when allowed or approved).
        Command = "command",
        /// A circuit breaker changed state.
        Breaker = "breaker",
        /// An approver ran a snippet from the review page.
        Execute = "execute",
        /// A request to the server had no valid token or role.
        AuthDenied = "auth_denied",
        /// A summary of refused requests from one peer, recorded once they repeat.
        AuthDeniedRepeated = "auth_denied_repeated",
        /// Old events were deleted under the retention rule.
        Retention = "retention",
        /// The writer found the chain broken at start-up.
        ChainBreak = "chain_break",
        /// A critical operation was queued for a human.
        ApprovalRequested = "approval_requested",
        /// A human approved it.
        ApprovalApproved = "approval_approved",
        /// A human denied it.
        ApprovalDenied = "approval_denied",
        /// An approved operation ran, and how it ended.
        ApprovalCompleted = "approval_completed",
        /// Nobody decided in time.
        ApprovalExpired = "approval_expired",
        /// A session started (its tier and limits).
        SessionStart = "session_start",
        /// A session ended (why, after how many cells).
        SessionEnd = "session_end",
        /// A snippet called a host function (name, digests of its arguments and
        /// result, duration, how it ended, its approval).
        HostCall = "host_call",
        /// A workspace version was made (a run's change set or a rollback), with
        /// its manifest's sha256.
        WorkspaceCommit = "workspace_commit",
        /// A run's change set to a workspace was not kept (refused, denied,
        /// expired, in conflict, or the run did not end ok), with its digest.
        WorkspaceDiscard = "workspace_discard",
        /// A workspace's live files differ from its current version.
        WorkspaceDrift = "workspace_drift",
        /// An operator stopped the deployment: who, why, and everything in
        /// flight at that moment (runs, sessions, approvals, change sets).
        EmergencyStop = "emergency_stop",
        /// An operator resumed a stopped deployment.
        Resume = "resume",
        /// A change of the policy in force was asked for: applied (approved),
        /// refused, invalid or unchanged, with the approval and the file's digest.
        PolicyChange = "policy_change",
        /// A backup was restored as this log (from where, how many events, the
        /// last one's seq and hash: this event follows it in the chain).
        AuditRestored = "audit_restored",
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The request it belongs to, when it belongs to one.
    pub request_id: Option<String>,
    /// Details (JSON).
    pub data: serde_json::Value,
    /// Snippet source to store by its sha256 (the data should name the hash).
    pub code: Option<String>,
}

/// An event on its way to the database (as the journal holds it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    uid: String,
    ts_us: i64,
    kind: String,
    request_id: Option<String>,
    data: String,
    code: Option<(String, String)>,
    /// Sealed (see [`sealing`]): the digest the chain covers in place of `data`,
    /// which is then the hex of its sealed bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// `code`'s text is the hex of its sealed bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    code_sealed: bool,
}

/// One row as `tail`, `show` and `export` print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Position in the log.
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The event's kind.
    pub kind: String,
    /// The request it belongs to.
    pub request_id: Option<String>,
    /// The event's data.
    pub data: serde_json::Value,
    /// This row's hash.
    pub hash: String,
}

impl Row {
    /// The row's kind, when it is one this version knows.
    ///
    /// # Errors
    /// A kind this version does not know (a later version's log).
    pub fn event_kind(&self) -> Result<EventKind, crate::names::UnknownName> {
        self.kind.parse()
    }
}

/// What the writer thread is sent.
enum Msg {
    /// An event already in the journal.
    Event(Pending),
    /// Signalled once everything sent before is committed (never, while the
    /// database is unavailable: the caller's wait runs out).
    Flush(mpsc::SyncSender<()>),
}

/// Where the audit database lives by default: `audit.db` in `$TERRARIUM_HOME`,
/// else in `$XDG_DATA_HOME/terrarium`, else in `~/.local/share/terrarium` (created
/// 0700; an existing one must be this user's and private, see docs/audit.md).
///
/// # Errors
/// No home directory to put it in, or the directory cannot be created or is
/// refused.
pub fn default_path() -> Result<PathBuf, AuditError> {
    let dir = crate::dirs::state_dir().ok_or_else(|| AuditError::Database {
        path: PathBuf::from("audit.db"),
        message: "no TERRARIUM_HOME, XDG_DATA_HOME or HOME to keep the audit log in".into(),
    })?;
    OwnedDir::open(&dir, "state directory")?;
    Ok(dir.join("audit.db"))
}

/// sha256 of `text`, hex.
pub fn sha256_hex(text: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(text))
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Database { path: path.to_path_buf(), message: e.to_string() }
}

impl From<AuditError> for crate::error::SandboxError {
    /// The request was not run: [`crate::error::SandboxError::Audit`], marked
    /// `overloaded` when the log is only behind.
    fn from(e: AuditError) -> crate::error::SandboxError {
        crate::error::SandboxError::Audit { overloaded: matches!(e, AuditError::Overloaded(_)), source: Box::new(e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `file_io` breaker guards the journal: appends that fail (a full disk,
    /// here `/dev/full`) open it, and records are then refused at once, so nothing
    /// that needs recording runs while the journal cannot take it.
    #[test]
    fn failed_journal_appends_open_the_file_io_breaker() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = crate::breaker::Settings {
            failure_threshold: 2,
            recovery_timeout: Duration::from_secs(60),
            log_failures: false,
        };
        let file_io = Breaker::new("file_io", settings);
        let log = AuditLog::open(&dir.path().join("audit.db"), Breaker::new("database", settings))
            .expect("open")
            .with_file_io(file_io.clone());
        let event = || Event { kind: EventKind::Request, request_id: None, data: serde_json::json!({}), code: None };
        log.record(event()).expect("a working journal records");
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        log.journal.lock().expect("journal").file = full;
        for _ in 0..2 {
            let e = log.record(event()).expect_err("a full disk refuses");
            assert!(e.to_string().contains("No space left"), "{e}");
        }
        assert_eq!(file_io.snapshot().state, crate::breaker::State::Open);
        let e = log.record(event()).expect_err("an open breaker refuses");
        assert!(e.to_string().contains("breaker file_io open"), "{e}");
        assert_eq!(file_io.snapshot().total_failures, 2, "refused at once: the journal was not tried");
    }

    #[test]
    fn the_row_hash_covers_every_field_unambiguously() {
        let base = RowFields {
            prev: GENESIS,
            seq: 1,
            uid: "u",
            ts_us: 5,
            kind: "ab",
            request_id: Some("c"),
            data: "{}",
            digest: None,
        };
        let key = Key::from_bytes([7; 32]);
        let row_hash = |r: &RowFields<'_>| keyed_row_hash(&key, r);
        let a = row_hash(&base);
        assert_ne!(a, row_hash(&RowFields { kind: "a", request_id: Some("bc"), ..base }), "field boundaries count");
        assert_ne!(a, row_hash(&RowFields { seq: 2, ..base }));
        assert_ne!(a, row_hash(&RowFields { uid: "v", ..base }), "the id is covered");
        assert_ne!(a, row_hash(&RowFields { ts_us: 6, ..base }));
        assert_ne!(a, row_hash(&RowFields { data: "{ }", ..base }));
        assert_ne!(a, row_hash(&RowFields { prev: "x", ..base }));
        assert_ne!(a, keyed_row_hash(&Key::from_bytes([8; 32]), &base), "another key, another MAC");
        assert_eq!(a, row_hash(&RowFields { ..base }));
        let sealed = row_hash(&RowFields { digest: Some("d"), ..base });
        assert_ne!(a, sealed, "a sealed row's MAC covers its digest");
        assert_eq!(sealed, row_hash(&RowFields { digest: Some("d"), data: "other bytes", ..base }), "not its bytes");
        assert_ne!(sealed, row_hash(&RowFields { digest: Some("e"), ..base }));
    }
}
