//! Encryption at rest in the audit database (see [`crate::seal`]): which events
//! are sealed, the key the database is sealed under, reading sealed values back,
//! and rotation to a new key.
//!
//! With a data key, an event's data is sealed (bound to the event's id) unless its
//! kind is one of [`PUBLIC`]; the row then holds the sealed bytes (a BLOB, where a
//! clear row holds TEXT) and `digest`, the SHA-256 of the event's id and data, and
//! the chain's MAC covers the digest in place of the data (`v4`). So the chain is
//! checked without the data key, and rotation rewrites sealed bytes without
//! touching a MAC. Stored snippet text is sealed too (bound to its hash), as are
//! the approvals queue's subjects, decisions' notes and outcomes (bound to the
//! item's id and column; `approval::Queue`). The table `sealing` names the key
//! the database is sealed under, once one was used.
//!
//! # Invariant
//! A database sealed under a key is opened for writing only with that key: never
//! without one (nothing is written in the clear beside sealed rows) and never with
//! another.

use rusqlite::types::Value;

use super::*;
use crate::seal::{DataKey, SealError};

/// Kinds whose data stays in the clear with a data key: they say nothing of what
/// anyone ran (breakers, retention, chain breaks, refused tokens, restores) and
/// operations read them without the key.
pub(super) const PUBLIC: [EventKind; 6] = [
    EventKind::Breaker,
    EventKind::Retention,
    EventKind::ChainBreak,
    EventKind::AuthDenied,
    EventKind::AuthDeniedRepeated,
    EventKind::AuditRestored,
];

pub(super) fn event_context(uid: &str) -> String {
    format!("event:{uid}")
}

pub(super) fn code_context(sha256: &str) -> String {
    format!("code:{sha256}")
}

/// What an approval's `column` is sealed under (bound to the item).
pub fn approval_context(id: i64, column: &str) -> String {
    format!("approval:{id}:{column}")
}

/// What the chain covers of a sealed event in place of its data.
pub(super) fn data_digest(uid: &str, data: &str) -> String {
    let mut h = Sha256::new();
    h.update(uid.as_bytes());
    h.update([0u8]);
    h.update(data.as_bytes());
    crate::hex::encode(&h.finalize())
}

impl From<SealError> for AuditError {
    fn from(e: SealError) -> AuditError {
        AuditError::Sealed(e.to_string())
    }
}

/// Seals `p` (not yet in the journal) under `key`: its code always, its data
/// unless its kind is [`PUBLIC`].
pub(super) fn seal_pending(p: &mut Pending, key: &DataKey) {
    let public = p.kind.parse::<EventKind>().is_ok_and(|k| PUBLIC.contains(&k));
    if !public {
        p.digest = Some(data_digest(&p.uid, &p.data));
        p.data = crate::hex::encode(&key.seal(&event_context(&p.uid), p.data.as_bytes()));
    }
    if let Some((sha, text)) = &mut p.code {
        *text = crate::hex::encode(&key.seal(&code_context(sha), text.as_bytes()));
        p.code_sealed = true;
    }
}

/// A journalled value as the database stores it: sealed bytes when `sealed`.
pub(super) fn stored(text: &str, sealed: bool) -> rusqlite::Result<Value> {
    if !sealed {
        return Ok(Value::Text(text.to_string()));
    }
    crate::hex::decode(text)
        .map(Value::Blob)
        .ok_or_else(|| rusqlite::Error::ToSqlConversionFailure("a sealed journal value is not hex".into()))
}

/// A stored value as text: as it is when in the clear, opened under `key` (with
/// `context`) when sealed.
///
/// # Errors
/// Sealed and no key, another key, or it does not open.
pub fn open_value(value: Value, key: Option<&DataKey>, context: &str) -> Result<String, SealError> {
    match value {
        Value::Text(t) => Ok(t),
        Value::Null => Ok(String::new()),
        Value::Blob(b) => {
            let Some(key) = key else {
                let sealed = crate::seal::key_id_of(&b).ok_or(SealError::Malformed)?;
                return Err(SealError::WrongKey { sealed, have: None });
            };
            String::from_utf8(key.open(context, &b)?).map_err(|_| SealError::Malformed)
        }
        Value::Integer(_) | Value::Real(_) => Err(SealError::Malformed),
    }
}

/// The key a database read (perhaps read-only, perhaps without the table yet)
/// is sealed under.
fn marker(c: &Connection, path: &Path) -> Result<Option<String>, AuditError> {
    c.query_row("SELECT key_id FROM sealing WHERE id = 1", [], |r| r.get(0))
        .optional()
        .or_else(|e| if e.to_string().contains("no such table") { Ok(None) } else { Err(db_err(path, e)) })
}

/// The key the database behind `conn` is sealed under, if any.
fn sealed_under(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sealing (id INTEGER PRIMARY KEY CHECK (id = 1), key_id TEXT NOT NULL)",
    )?;
    conn.query_row("SELECT key_id FROM sealing WHERE id = 1", [], |r| r.get(0)).optional()
}

/// The data key to write the database behind `conn` (at `path`) with: the one
/// configured (`TERRARIUM_DATA_KEY_FILE` or `TERRARIUM_DATA_KEY`), which must be the one the database is
/// sealed under; the first key used seals it.
///
/// # Errors
/// A key configured but unreadable; the database sealed under a key and none or
/// another one given; the database failed.
pub fn sealing_on(conn: &Connection, path: &Path) -> Result<Option<DataKey>, AuditError> {
    let key = DataKey::from_env()?;
    let under = retry_busy(|| sealed_under(conn)).map_err(|e| db_err(path, e))?;
    match (under, key) {
        (None, None) => Ok(None),
        (None, Some(k)) => {
            retry_busy(|| conn.execute("INSERT OR IGNORE INTO sealing (id, key_id) VALUES (1, ?1)", [k.id()]))
                .map_err(|e| db_err(path, e))?;
            // Another process may have sealed it first, under another key.
            match retry_busy(|| sealed_under(conn)).map_err(|e| db_err(path, e))? {
                Some(id) if id != k.id() => Err(SealError::WrongKey { sealed: id, have: Some(k.id()) }.into()),
                _ => Ok(Some(k)),
            }
        }
        (Some(id), Some(k)) if id == k.id() => Ok(Some(k)),
        (Some(id), k) => Err(AuditError::Sealed(format!(
            "{} (a rotation is `terrarium data-key rotate --old FILE`)",
            SealError::WrongKey { sealed: id, have: k.map(|k| k.id()) }
        ))),
    }
}

/// [`sealing_on`] for the database at `path` (the approvals queue's).
///
/// # Errors
/// As [`sealing_on`].
pub fn sealing(path: &Path) -> Result<Option<DataKey>, AuditError> {
    sealing_on(&connect(path)?, path)
}

/// The data key to read the database at `path` with: the configured one, when it
/// is the one the database is sealed under; `None` when none is configured (sealed
/// values then read as unopened, and the chain is still checked).
///
/// # Errors
/// A configured key that is not the database's, or cannot be read.
pub(super) fn reading_key(c: &Connection, path: &Path) -> Result<Option<DataKey>, AuditError> {
    let key = DataKey::from_env()?;
    let under = marker(c, path)?;
    match (under, key) {
        (Some(id), Some(k)) if id != k.id() => Err(SealError::WrongKey { sealed: id, have: Some(k.id()) }.into()),
        (_, k) => Ok(k),
    }
}

/// Checks that the database at `path` can be written with the data key
/// configured: it is not sealed, or sealed under that key (a restore checks the
/// backup before installing it).
///
/// # Errors
/// Sealed under a key and none or another is configured; the database cannot be
/// read.
pub fn check_key(path: &Path) -> Result<(), AuditError> {
    let under = marker(&read_only(path)?, path)?;
    let key = DataKey::from_env()?;
    match (under, key) {
        (Some(id), k) if k.as_ref().is_none_or(|k| k.id() != id) => {
            Err(SealError::WrongKey { sealed: id, have: k.map(|k| k.id()) }.into())
        }
        _ => Ok(()),
    }
}

/// An event's data for display: opened, or, when it cannot be, what is wrong.
pub(super) fn shown_data(value: Value, key: Option<&DataKey>, uid: &str) -> serde_json::Value {
    match open_value(value, key, &event_context(uid)) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        Err(e) => serde_json::json!({ "sealed": e.to_string() }),
    }
}

/// What [`reseal`] rewrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resealed {
    /// Events' data.
    pub events: usize,
    /// Stored snippet texts.
    pub code: usize,
    /// Approval subjects, notes and outcomes.
    pub approvals: usize,
}

/// Rewrites every sealed value of the database at `path` under `new` (opening
/// those under `old`), and seals the snippet texts and approval values still in
/// the clear; the database is then sealed under `new`. One transaction: all or
/// nothing. No row's MAC changes (the chain covers digests). Events recorded in
/// the clear before a key was first used stay so (their MAC covers their text).
///
/// # Errors
/// A process still writes the log (its journal is live); a value under a key that
/// is neither; the database failed.
pub fn reseal(path: &Path, old: Option<&DataKey>, new: &DataKey) -> Result<Resealed, AuditError> {
    let store = Store::at(path)?;
    if let Some(live) = live_journals(&store).first() {
        return Err(AuditError::Sealed(format!(
            "a process still writes this log ({live}): stop every Terrarium process using it first"
        )));
    }
    recover(path)?;
    let mut c = connect(path)?;
    c.busy_timeout(Duration::from_secs(10)).map_err(|e| db_err(path, e))?;
    let under = sealed_under(&c).map_err(|e| db_err(path, e))?;
    if let Some(id) = &under
        && *id != new.id()
        && old.is_none_or(|o| o.id() != *id)
    {
        return Err(SealError::WrongKey { sealed: id.clone(), have: old.map(DataKey::id) }.into());
    }
    let open = |ctx: &str, blob: &[u8]| -> Result<Option<Vec<u8>>, AuditError> {
        let id = crate::seal::key_id_of(blob).ok_or(SealError::Malformed)?;
        if id == new.id() {
            return Ok(None);
        }
        let key = old.filter(|o| o.id() == id).ok_or(SealError::WrongKey { sealed: id, have: old.map(DataKey::id) })?;
        Ok(Some(key.open(ctx, blob)?))
    };
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| db_err(path, e))?;
    let mut done = Resealed::default();
    let events: Vec<(i64, String, Vec<u8>)> = collect(
        &tx,
        "SELECT seq, uid, data FROM events WHERE typeof(data) = 'blob'",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        path,
    )?;
    for (seq, uid, blob) in events {
        let ctx = event_context(&uid);
        if let Some(plain) = open(&ctx, &blob)? {
            tx.execute("UPDATE events SET data = ?1 WHERE seq = ?2", params![new.seal(&ctx, &plain), seq])
                .map_err(|e| db_err(path, e))?;
            done.events += 1;
        }
    }
    let code: Vec<(String, Value)> =
        collect(&tx, "SELECT sha256, text FROM code", |r| Ok((r.get(0)?, r.get(1)?)), path)?;
    for (sha, value) in code {
        let ctx = code_context(&sha);
        let plain = match value {
            Value::Blob(b) => open(&ctx, &b)?,
            Value::Text(t) => Some(t.into_bytes()),
            _ => None,
        };
        if let Some(plain) = plain {
            tx.execute("UPDATE code SET text = ?1 WHERE sha256 = ?2", params![new.seal(&ctx, &plain), sha])
                .map_err(|e| db_err(path, e))?;
            done.code += 1;
        }
    }
    let has_queue = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'approvals'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| db_err(path, e))?;
    if has_queue {
        for column in ["subject", "note", "outcome"] {
            let rows: Vec<(i64, Value)> = collect(
                &tx,
                &format!("SELECT id, {column} FROM approvals WHERE {column} IS NOT NULL"),
                |r| Ok((r.get(0)?, r.get(1)?)),
                path,
            )?;
            for (id, value) in rows {
                let ctx = approval_context(id, column);
                let plain = match value {
                    Value::Blob(b) => open(&ctx, &b)?,
                    Value::Text(t) => Some(t.into_bytes()),
                    _ => None,
                };
                if let Some(plain) = plain {
                    tx.execute(
                        &format!("UPDATE approvals SET {column} = ?1 WHERE id = ?2"),
                        params![new.seal(&ctx, &plain), id],
                    )
                    .map_err(|e| db_err(path, e))?;
                    done.approvals += 1;
                }
            }
        }
    }
    tx.execute("INSERT OR REPLACE INTO sealing (id, key_id) VALUES (1, ?1)", [new.id()])
        .map_err(|e| db_err(path, e))?;
    tx.commit().map_err(|e| db_err(path, e))?;
    Ok(done)
}

fn collect<T>(
    c: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    path: &Path,
) -> Result<Vec<T>, AuditError> {
    let mut stmt = c.prepare(sql).map_err(|e| db_err(path, e))?;
    let rows = stmt.query_map([], f).map_err(|e| db_err(path, e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err(path, e))
}
