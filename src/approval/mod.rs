//! Human-in-the-loop approval of critical operations: a persistent queue in the
//! audit log's SQLite database (table `approvals`).
//!
//! A critical request is submitted with a deadline and waits; a human approves or
//! denies it (`terrarium approvals approve|deny ID`); at the deadline a pending item
//! is expired, which is a denial. Decisions are made with a conditional update
//! (`WHERE status = 'pending' AND deadline > now`), so two deciders, or a decider
//! and the deadline, cannot both win. Callers record each decision in the audit log
//! with who made it.
//!
//! # Security invariant
//! Nothing waiting here runs unless its row says `approved`, written before its
//! deadline by a named decider; every other end (denied, expired, the queue
//! unreadable) is a refusal.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod error;
mod gate;
mod status;
pub use error::ApprovalError;
pub(crate) use gate::refusal;
pub use gate::{Announce, Gate};
pub use status::{ApprovalStatus, UnknownStatus};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One item in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "server", schema(as = ApprovalItem))]
pub struct Item {
    /// Its id.
    pub id: i64,
    /// What kind of operation (`execute` or `command` from a [`crate::Sandbox`]).
    #[cfg_attr(feature = "server", schema(schema_with = kind_schema))]
    pub kind: String,
    /// What exactly would run (e.g. the argv), as JSON.
    pub subject: serde_json::Value,
    /// Why it needs approval.
    pub reason: String,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// When it was submitted (µs since the epoch).
    pub created_us: i64,
    /// When it expires if nobody decides (µs since the epoch).
    pub deadline_us: i64,
    /// Who decided (`None` while pending or when it expired).
    pub decided_by: Option<String>,
    /// When it was decided or expired.
    pub decided_us: Option<i64>,
    /// The decider's note.
    pub note: Option<String>,
    /// How the approved operation ended, once it has run (its outcome as JSON).
    pub outcome: Option<serde_json::Value>,
}

/// The kinds a [`crate::Sandbox`] queues, as the OpenAPI document names them.
#[cfg(feature = "server")]
fn kind_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("What kind of operation."))
        .enum_values(Some(["execute", "command", "session", "function_call", "workspace_change", "policy_change"]))
        .build()
}

/// The largest subject (what would run, as JSON) an item may have: a reviewer
/// reads all of it, and every list and page pays for it.
pub const MAX_SUBJECT: usize = 256 << 10;

/// The longest note a decision keeps.
pub const MAX_NOTE: usize = 4096;

/// The most items one page of the queue holds ([`Gate::list`]).
pub const MAX_PAGE: usize = 1000;

/// Refuses a decider name that would make the record say nobody decided, or that
/// hides what it is: empty, blank, control or invisible characters, over 128.
///
/// # Errors
/// [`ApprovalError::BadDecider`].
pub(crate) fn check_decider(who: &str) -> Result<(), ApprovalError> {
    let printable = who.chars().all(|c| !c.is_control() && crate::text::hidden(c).is_none());
    if who.trim().is_empty() || !printable || who.chars().count() > 128 {
        return Err(ApprovalError::BadDecider);
    }
    Ok(())
}

/// One item's part of a queue fingerprint ([`Queue::fingerprint`]; the review page
/// computes the same from the items it shows): `id:status:has_outcome`.
pub(crate) fn fingerprint_entry(id: i64, status: ApprovalStatus, has_outcome: bool) -> String {
    format!("{id}:{status}:{has_outcome}")
}

/// The note on an item expired because the process waiting for it ended.
pub(crate) const ORPHANED: &str = "the process waiting for it ended";

/// The note on an item expired because the request waiting for it went away (a
/// server's client hung up).
pub(crate) const ABANDONED: &str = "the request waiting for it went away";

/// The queue in one SQLite file.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    path: PathBuf,
    /// Subjects, decisions' notes and outcomes are sealed under it, when the
    /// deployment has one (see [`crate::seal`]).
    key: Option<crate::seal::DataKey>,
    /// With a key: the first item made sealed. From it on, a subject, reason or
    /// outcome in the clear was written by hand, and is refused.
    sealed_from: i64,
}

/// Now, in µs since the epoch (the queue's clock).
pub(crate) fn now_us() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(i64::MAX)
}

impl Queue {
    /// Opens the queue in `path` (the audit log's database), creating its table.
    ///
    /// # Errors
    /// The database cannot be opened or written.
    pub fn open(path: &Path) -> Result<Queue, ApprovalError> {
        let mut q = Queue { path: path.to_path_buf(), key: None, sealed_from: 1 };
        let c = q.conn()?;
        crate::audit::retry_busy(|| {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS approvals (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                subject TEXT NOT NULL,
                reason TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
                created_us INTEGER NOT NULL,
                deadline_us INTEGER NOT NULL,
                decided_by TEXT,
                decided_us INTEGER,
                note TEXT,
                outcome TEXT,
                waiter TEXT
            );",
            )
        })
        .map_err(|e| q.err(e))?;
        // Queues made before outcomes and waiters were kept get the columns.
        for column in ["outcome", "waiter"] {
            let has = c
                .prepare("SELECT 1 FROM pragma_table_info('approvals') WHERE name = ?1")
                .and_then(|mut s| s.exists([column]))
                .map_err(|e| q.err(e))?;
            if !has {
                c.execute_batch(&format!("ALTER TABLE approvals ADD COLUMN {column} TEXT")).map_err(|e| q.err(e))?;
            }
        }
        q.key = crate::audit::sealing_on(&c, path).map_err(|e| q.err(e))?;
        if let Some(k) = &q.key {
            q.sealed_from = crate::audit::approvals_sealed_from(&c, k).map_err(|e| q.err(e))?;
        }
        Ok(q)
    }

    /// `text` as stored in `column` of item `id`: sealed under the key, when
    /// there is one.
    fn sealed(&self, id: i64, column: &str, text: &str) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match &self.key {
            Some(k) => Value::Blob(k.seal(&crate::audit::approval_context(id, column), text.as_bytes())),
            None => Value::Text(text.to_string()),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> ApprovalError {
        ApprovalError::Database { path: self.path.display().to_string(), message: e.to_string() }
    }

    fn conn(&self) -> Result<Connection, ApprovalError> {
        // Through the checked state directory, never through a link (audit::connect).
        let c = crate::audit::connect(&self.path).map_err(|e| self.err(e))?;
        c.busy_timeout(Duration::from_secs(10)).map_err(|e| self.err(e))?;
        Ok(c)
    }

    /// Puts an item in the queue, pending until `wait` from now.
    ///
    /// # Errors
    /// The database failed.
    pub fn submit(
        &self,
        kind: &str,
        subject: &serde_json::Value,
        reason: &str,
        wait: Duration,
    ) -> Result<Item, ApprovalError> {
        let text = subject.to_string();
        if text.len() > MAX_SUBJECT {
            return Err(ApprovalError::TooLarge { bytes: text.len(), most: MAX_SUBJECT });
        }
        let mut c = self.conn()?;
        let created = now_us();
        let deadline = created.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX));
        // The process that waits for the decision, so that an item whose waiter is
        // gone is expired instead of approved for nothing.
        let (pid, start) = crate::process::me();
        // Sealed, the subject is bound to the item's id: written in the same
        // transaction as the row, once the id is known.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO approvals (kind, subject, reason, status, created_us, deadline_us, waiter)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6)",
            params![
                kind,
                if self.key.is_some() { "" } else { text.as_str() },
                if self.key.is_some() { "" } else { reason },
                created,
                deadline,
                format!("{pid}:{start}")
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        if self.key.is_some() {
            tx.execute(
                "UPDATE approvals SET subject = ?1, reason = ?2 WHERE id = ?3",
                params![self.sealed(id, "subject", &text), self.sealed(id, "reason", reason), id],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.get(id)?.ok_or(ApprovalError::NotFound(id))
    }

    /// Marks `expired` every pending item past its deadline, and every one whose
    /// waiting process has ended (nothing would run it); returns them.
    ///
    /// # Errors
    /// The database failed.
    pub fn expire_overdue(&self) -> Result<Vec<Item>, ApprovalError> {
        let c = self.conn()?;
        let now = now_us();
        let mut stmt = c
            .prepare("SELECT id, waiter FROM approvals WHERE status = 'pending' AND waiter IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let orphans: Vec<i64> = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?
            .filter_map(Result::ok)
            .filter(|(_, w)| w.split_once(':').is_some_and(|(pid, start)| !crate::process::alive(pid, start)))
            .map(|(id, _)| id)
            .collect();
        drop(stmt);
        for id in &orphans {
            c.execute(
                "UPDATE approvals SET status = 'expired', decided_us = ?1,
                 note = ?3 WHERE id = ?2 AND status = 'pending'",
                params![now, id, ORPHANED],
            )
            .map_err(|e| self.err(e))?;
        }
        let mut stmt = c
            .prepare(
                "UPDATE approvals SET status = 'expired', decided_us = ?1
                 WHERE status = 'pending' AND deadline_us <= ?1 RETURNING id",
            )
            .map_err(|e| self.err(e))?;
        let ids: Vec<i64> = stmt
            .query_map([now], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        drop(stmt);
        orphans.into_iter().chain(ids).filter_map(|id| self.get(id).transpose()).collect()
    }

    /// Expires every pending item, noting `note`; returns them.
    ///
    /// # Errors
    /// The database failed.
    pub fn expire_pending(&self, note: &str) -> Result<Vec<Item>, ApprovalError> {
        let c = self.conn()?;
        let mut stmt = c
            .prepare(
                "UPDATE approvals SET status = 'expired', decided_us = ?1, note = ?2
                 WHERE status = 'pending' RETURNING id",
            )
            .map_err(|e| self.err(e))?;
        let ids: Vec<i64> = stmt
            .query_map(params![now_us(), note], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        drop(stmt);
        ids.into_iter().filter_map(|id| self.get(id).transpose()).collect()
    }

    /// Expires `id` if it is still pending, noting [`ABANDONED`]; the item if so.
    ///
    /// # Errors
    /// The database failed.
    pub fn abandon(&self, id: i64) -> Result<Option<Item>, ApprovalError> {
        let c = self.conn()?;
        let changed = c
            .execute(
                "UPDATE approvals SET status = 'expired', decided_us = ?1, note = ?3 WHERE id = ?2 AND status = 'pending'",
                params![now_us(), id, ABANDONED],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 { Ok(None) } else { self.get(id) }
    }

    /// One item.
    ///
    /// # Errors
    /// The database failed.
    pub fn get(&self, id: i64) -> Result<Option<Item>, ApprovalError> {
        let c = self.conn()?;
        c.query_row(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), [id], |r| {
            to_item(r, self.key.as_ref(), self.sealed_from)
        })
        .optional()
        .map_err(|e| self.err(e))
    }

    /// One page of items, newest first: only those with `status` when given, only
    /// those older than id `before` when given (the next page starts before the
    /// last id of this one), at most `limit` (capped at [`MAX_PAGE`]). The status
    /// is a condition of the query, so a pending item is never hidden by newer
    /// decided ones. Overdue items are expired first, so a list never shows one as
    /// pending.
    ///
    /// # Errors
    /// The database failed.
    pub fn list(
        &self,
        status: Option<ApprovalStatus>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Item>, ApprovalError> {
        self.expire_overdue()?;
        self.select("(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR id < ?2)", params![status, before], limit)
    }

    /// The `n` most recently submitted items that are no longer pending.
    ///
    /// # Errors
    /// The database failed.
    pub fn recently_decided(&self, n: usize) -> Result<Vec<Item>, ApprovalError> {
        self.select("status != 'pending'", [], n)
    }

    /// Items matching `condition` (with `args`), newest first, at most `limit`
    /// (capped at [`MAX_PAGE`]).
    fn select(&self, condition: &str, args: impl rusqlite::Params, limit: usize) -> Result<Vec<Item>, ApprovalError> {
        let c = self.conn()?;
        let limit = limit.min(MAX_PAGE);
        let mut stmt = c
            .prepare(&format!("SELECT {COLUMNS} FROM approvals WHERE {condition} ORDER BY id DESC LIMIT {limit}"))
            .map_err(|e| self.err(e))?;
        let items = stmt
            .query_map(args, |r| to_item(r, self.key.as_ref(), self.sealed_from))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(items)
    }

    /// What the review page shows changes when this does: every pending item and
    /// the `recent` newest decided ones, with their statuses and whether they have
    /// outcomes (read without their subjects, so cheap to poll).
    ///
    /// # Errors
    /// The database failed.
    pub fn fingerprint(&self, recent: usize) -> Result<String, ApprovalError> {
        self.expire_overdue()?;
        let c = self.conn()?;
        let mut parts = Vec::new();
        for (condition, limit) in [("status = 'pending'", -1), ("status != 'pending'", recent.min(MAX_PAGE) as i64)] {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT id, status, outcome IS NOT NULL FROM approvals WHERE {condition} ORDER BY id DESC LIMIT ?1"
                ))
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([limit], |r| Ok(fingerprint_entry(r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| self.err(e))?;
            for row in rows {
                parts.push(row.map_err(|e| self.err(e))?);
            }
        }
        Ok(parts.join(","))
    }

    /// How many items are pending.
    ///
    /// # Errors
    /// The database failed.
    pub fn pending(&self) -> Result<usize, ApprovalError> {
        self.expire_overdue()?;
        let c = self.conn()?;
        c.query_row("SELECT count(*) FROM approvals WHERE status = 'pending'", [], |r| r.get::<_, i64>(0))
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Approves (`true`) or denies a pending item, as `who`.
    ///
    /// # Errors
    /// [`ApprovalError::Decided`] when it is no longer pending (decided, or past its
    /// deadline: then it is expired now), [`ApprovalError::NotFound`], or the
    /// database.
    pub fn decide(&self, id: i64, approve: bool, who: &str, note: Option<&str>) -> Result<Item, ApprovalError> {
        check_decider(who)?;
        if let Some(n) = note.filter(|n| n.len() > MAX_NOTE) {
            return Err(ApprovalError::NoteTooLong(n.len()));
        }
        // The caller recorded with the request (a server token's name) cannot
        // approve or deny its own request.
        if self.get(id)?.is_some_and(|i| i.subject["caller"].as_str() == Some(who)) {
            return Err(ApprovalError::OwnRequest(id));
        }
        self.expire_overdue()?;
        let c = self.conn()?;
        let now = now_us();
        let status = if approve { ApprovalStatus::Approved } else { ApprovalStatus::Denied };
        let changed = c
            .execute(
                "UPDATE approvals SET status = ?1, decided_by = ?2, decided_us = ?3, note = ?4
                 WHERE id = ?5 AND status = 'pending' AND deadline_us > ?3",
                params![status, who, now, note.map(|n| self.sealed(id, "note", n)), id],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            self.expire_overdue()?;
            let item = self.get(id)?.ok_or(ApprovalError::NotFound(id))?;
            return Err(ApprovalError::Decided { id, status: item.status });
        }
        self.get(id)?.ok_or(ApprovalError::NotFound(id))
    }

    /// Records how an approved item's operation ended.
    ///
    /// # Errors
    /// The database failed, or the item is not approved.
    pub fn complete(&self, id: i64, outcome: &serde_json::Value) -> Result<Item, ApprovalError> {
        let c = self.conn()?;
        let changed = c
            .execute(
                "UPDATE approvals SET outcome = ?1 WHERE id = ?2 AND status = 'approved'",
                params![self.sealed(id, "outcome", &outcome.to_string()), id],
            )
            .map_err(|e| self.err(e))?;
        let item = self.get(id)?.ok_or(ApprovalError::NotFound(id))?;
        if changed == 0 {
            return Err(ApprovalError::Decided { id, status: item.status });
        }
        Ok(item)
    }

    /// Waits until the item is decided or its deadline passes (then it is
    /// expired), checking every `poll`. Returns the final item. (The gate waits
    /// without polling; the queue's own tests use this.)
    #[cfg(test)]
    fn wait(&self, id: i64, poll: Duration) -> Result<Item, ApprovalError> {
        loop {
            let item = self.get(id)?.ok_or(ApprovalError::NotFound(id))?;
            if item.status != ApprovalStatus::Pending {
                return Ok(item);
            }
            if now_us() >= item.deadline_us {
                self.expire_overdue()?;
                continue;
            }
            std::thread::sleep(poll);
        }
    }
}

const COLUMNS: &str =
    "id, kind, subject, reason, status, created_us, deadline_us, decided_by, decided_us, note, outcome";

/// An item from `SELECT` [`COLUMNS`], its sealed values opened under `key`.
/// From item `sealed_from` on (with a key), a subject, reason or outcome in the
/// clear is refused: written by hand, not by Terrarium.
fn to_item(r: &rusqlite::Row<'_>, key: Option<&crate::seal::DataKey>, sealed_from: i64) -> rusqlite::Result<Item> {
    use rusqlite::types::Value;
    let (id, status): (i64, String) = (r.get(0)?, r.get(4)?);
    let open = |i: usize, column: &str| -> rusqlite::Result<Option<String>> {
        let value: Value = r.get(i)?;
        if value == Value::Null {
            return Ok(None);
        }
        // Notes in the clear are Terrarium's own, on items that expired.
        let own_note = column == "note"
            && status == "expired"
            && matches!(&value, Value::Text(t) if t == ORPHANED || t == ABANDONED || t.starts_with("stopped: "));
        if key.is_some() && id >= sealed_from && !own_note && matches!(value, Value::Text(_)) {
            let why =
                format!("approval request {id}: its {column} is in the clear in a sealed queue (written by hand)");
            return Err(rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, why.into()));
        }
        crate::audit::open_value(value, key, &crate::audit::approval_context(id, column))
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e)))
    };
    let subject = open(2, "subject")?.unwrap_or_default();
    Ok(Item {
        id,
        kind: r.get(1)?,
        subject: serde_json::from_str(&subject).unwrap_or(serde_json::Value::String(subject)),
        reason: open(3, "reason")?.unwrap_or_default(),
        status: r.get(4)?,
        created_us: r.get(5)?,
        deadline_us: r.get(6)?,
        decided_by: r.get(7)?,
        decided_us: r.get(8)?,
        note: open(9, "note")?,
        outcome: open(10, "outcome")?.map(|o| serde_json::from_str(&o).unwrap_or(serde_json::Value::String(o))),
    })
}

#[cfg(test)]
mod tests;
