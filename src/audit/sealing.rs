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

/// The key a database read (perhaps read-only, perhaps without the tables yet)
/// is sealed under: as its `sealing` table says, else as its newest row holding
/// sealed bytes says, whatever its digest: a database whose record was deleted is
/// still sealed.
fn marker(c: &Connection, path: &Path) -> Result<Option<String>, AuditError> {
    fn missing<T>(e: rusqlite::Error, path: &Path) -> Result<Option<T>, AuditError> {
        if e.to_string().contains("no such table") || e.to_string().contains("no such column") {
            Ok(None)
        } else {
            Err(db_err(path, e))
        }
    }
    let recorded: Option<String> = c
        .query_row("SELECT key_id FROM sealing WHERE id = 1", [], |r| r.get(0))
        .optional()
        .or_else(|e| missing(e, path))?;
    if recorded.is_some() {
        return Ok(recorded);
    }
    let newest: Option<Value> = c
        .query_row("SELECT data FROM events WHERE typeof(data) = 'blob' ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
        .optional()
        .or_else(|e| missing(e, path))?;
    Ok(match newest {
        None => None,
        // Damaged: still sealed, under a key it no longer names.
        Some(Value::Blob(b)) => Some(crate::seal::key_id_of(&b).unwrap_or_else(|| UNKNOWN.into())),
        Some(_) => Some(UNKNOWN.into()),
    })
}

/// What a sealed log whose record is gone and whose newest sealed row is damaged
/// is sealed under: any key may reopen it (verify with the key names the row),
/// none may write it in the clear.
const UNKNOWN: &str = "unknown (a sealed row is damaged)";

/// Whether `key` may use a database sealed under key id `id`.
fn opens_with(id: &str, key: &DataKey) -> bool {
    id == key.id() || id == UNKNOWN
}

/// The key the database behind `conn` is sealed under, if any.
fn sealed_under(conn: &Connection) -> rusqlite::Result<Option<String>> {
    // `approvals_from`: the first approval item made sealed (older ones may be in
    // the clear; newer ones in the clear were written by hand).
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sealing (id INTEGER PRIMARY KEY CHECK (id = 1), key_id TEXT NOT NULL,
             approvals_from INTEGER NOT NULL DEFAULT 1, proof BLOB)",
    )?;
    conn.query_row("SELECT key_id FROM sealing WHERE id = 1", [], |r| r.get(0)).optional()
}

/// The marker a rotation to `new` leaves while it runs: every process refuses
/// the database until it is done.
fn rotating(new: &DataKey) -> String {
    format!("rotating to {}", new.id())
}

/// The first approval item of the database behind `conn` that was made sealed
/// (items before it may hold values in the clear, from before the first key):
/// 1 when the record is gone (then nothing in the clear is taken as genuine).
///
/// # Errors
/// The database failed.
pub fn approvals_sealed_from(conn: &Connection, key: &DataKey) -> rusqlite::Result<i64> {
    let row: Option<(i64, Option<Vec<u8>>)> = conn
        .query_row("SELECT approvals_from, proof FROM sealing WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // The number is taken only as the key vouches for it: raised by hand, it
    // would let values written in the clear pass for genuine.
    Ok(match row {
        Some((from, Some(proof))) if key.open(PROOF, &proof).ok() == Some(record(key, from).into_bytes()) => from,
        _ => 1,
    })
}

/// What the record of the key's first use is bound to.
const PROOF: &str = "sealing record";

fn record(key: &DataKey, approvals_from: i64) -> String {
    format!("{}:{approvals_from}", key.id())
}

/// The record's proof: `approvals_from`, sealed under `key`.
fn proof(key: &DataKey, approvals_from: i64) -> Vec<u8> {
    key.seal(PROOF, record(key, approvals_from).as_bytes())
}

/// Journals of processes other than this one that are running: writers of the log.
fn other_writers(path: &Path) -> Result<Vec<String>, AuditError> {
    let store = Store::at(path)?;
    let mine = format!("{}{}.", store.journal_prefix(), std::process::id());
    Ok(live_journals(&store).into_iter().filter(|j| !j.starts_with(&mine)).collect())
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
    let recorded = retry_busy(|| sealed_under(conn)).map_err(|e| db_err(path, e))?;
    let under = marker(conn, path)?;
    // Sealed, though no longer recorded: then every approval item must be sealed.
    let unrecorded = recorded.is_none() && under.is_some();
    let key = match (under, key) {
        (Some(id), _) if id.starts_with("rotating") => {
            return Err(AuditError::Sealed(format!(
                "the data key is being rotated ({id}): start once `terrarium data-key rotate` is done"
            )));
        }
        (Some(id), k) if !k.as_ref().is_some_and(|k| opens_with(&id, k)) => {
            return Err(AuditError::Sealed(format!(
                "{} (a rotation is `terrarium data-key rotate --old FILE`)",
                SealError::WrongKey { sealed: id, have: k.map(|k| k.id()) }
            )));
        }
        (_, key) => key,
    };
    let Some(k) = key else { return Ok(None) };
    if recorded.is_some() {
        return Ok(Some(k));
    }
    // First use (or the record was deleted: then every approval item must be
    // sealed). Recorded first, then no other writer may be running without the
    // key: a writer records its journal before it reads this record, so of the
    // two, one sees the other.
    let first = if unrecorded { 1 } else { next_approval(conn).map_err(|e| db_err(path, e))? };
    let inserted = retry_busy(|| {
        conn.execute(
            "INSERT OR IGNORE INTO sealing (id, key_id, approvals_from, proof) VALUES (1, ?1, ?2, ?3)",
            params![k.id(), first, proof(&k, first)],
        )
    })
    .map_err(|e| db_err(path, e))?;
    match retry_busy(|| sealed_under(conn)).map_err(|e| db_err(path, e))? {
        Some(id) if id != k.id() => return Err(SealError::WrongKey { sealed: id, have: Some(k.id()) }.into()),
        _ => {}
    }
    let others = other_writers(path)?;
    if inserted > 0 && !others.is_empty() {
        let _ = retry_busy(|| conn.execute("DELETE FROM sealing WHERE id = 1 AND key_id = ?1", [k.id()]));
        return Err(AuditError::Sealed(format!(
            "other processes write this log without the data key ({}): stop them, then start every process with \
             the key",
            others.join(", ")
        )));
    }
    Ok(Some(k))
}

/// The id the next approval item will get (1 without a queue yet).
fn next_approval(conn: &Connection) -> rusqlite::Result<i64> {
    match conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM approvals", [], |r| r.get(0)) {
        Err(e) if e.to_string().contains("no such table") => Ok(1),
        r => r,
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
        (Some(id), Some(k)) if !opens_with(&id, &k) => {
            Err(SealError::WrongKey { sealed: id, have: Some(k.id()) }.into())
        }
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
        (Some(id), k) if !k.as_ref().is_some_and(|k| opens_with(&id, k)) => {
            Err(SealError::WrongKey { sealed: id, have: k.map(|k| k.id()) }.into())
        }
        _ => Ok(()),
    }
}

/// The first sealed row of the log behind `c`, if any.
pub(super) fn sealed_since(c: &Connection) -> Option<i64> {
    c.query_row("SELECT MIN(seq) FROM events WHERE typeof(data) = 'blob'", [], |r| r.get(0)).unwrap_or(None)
}

/// Whether a row of `kind` at `seq` in the clear is where Terrarium would have
/// sealed it.
pub(super) fn should_be_sealed(kind: &str, seq: i64, since: Option<i64>) -> bool {
    since.is_some_and(|s| seq > s) && !kind.parse::<EventKind>().is_ok_and(|k| PUBLIC.contains(&k))
}

/// An event's data for display: opened, or, when it cannot be, what is wrong.
/// A sealed value that opens must also match the digest the chain covers.
/// `unsealed`: the row is in the clear where Terrarium would have sealed it (a
/// kind not public, after the first sealed row): not shown as genuine.
pub(super) fn shown_data(
    value: Value,
    key: Option<&DataKey>,
    uid: &str,
    digest: Option<&str>,
    unsealed: bool,
) -> serde_json::Value {
    let sealed = matches!(value, Value::Blob(_));
    if !sealed && (digest.is_some() || unsealed) {
        return serde_json::json!({
            "sealed": "in the clear where it would be sealed (written by hand; `audit verify` names the row)"
        });
    }
    match open_value(value, key, &event_context(uid)) {
        Ok(text) if sealed && digest != Some(data_digest(uid, &text).as_str()) => {
            serde_json::json!({ "sealed": "its data does not match the digest the chain covers (replaced)" })
        }
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
    if let Some(live) = other_writers(path)?.first() {
        return Err(AuditError::Sealed(format!(
            "a process still writes this log ({live}): stop every Terrarium process using it first"
        )));
    }
    let mut c = connect(path)?;
    c.busy_timeout(Duration::from_secs(10)).map_err(|e| db_err(path, e))?;
    let recorded = sealed_under(&c).map_err(|e| db_err(path, e))?;
    let under = marker(&c, path)?;
    if let Some(id) = &under
        && !id.starts_with("rotating")
        && *id != new.id()
        && old.is_none_or(|o| o.id() != *id)
    {
        return Err(SealError::WrongKey { sealed: id.clone(), have: old.map(DataKey::id) }.into());
    }
    // From here every process that starts is refused until the rotation is done;
    // one already running has a live journal, seen below.
    let first = match &recorded {
        Some(id) => match [old, Some(new)].into_iter().flatten().find(|k| k.id() == *id) {
            Some(k) => approvals_sealed_from(&c, k).map_err(|e| db_err(path, e))?,
            None => 1,
        },
        None if under.is_some() => 1,
        None => next_approval(&c).map_err(|e| db_err(path, e))?,
    };
    let marked = if recorded.is_some() {
        c.execute("UPDATE sealing SET key_id = ?1 WHERE id = 1", [rotating(new)])
    } else {
        c.execute(
            "INSERT OR REPLACE INTO sealing (id, key_id, approvals_from) VALUES (1, ?1, ?2)",
            params![rotating(new), first],
        )
    };
    marked.map_err(|e| db_err(path, e))?;
    let restore = |c: &Connection| match &recorded {
        Some(id) => {
            let _ = c.execute("UPDATE sealing SET key_id = ?1 WHERE id = 1", [id]);
        }
        None => {
            let _ = c.execute("DELETE FROM sealing WHERE id = 1", []);
        }
    };
    if let Some(live) = other_writers(path)?.first() {
        restore(&c);
        return Err(AuditError::Sealed(format!(
            "a process still writes this log ({live}): stop every Terrarium process using it first"
        )));
    }
    if let Err(e) = recover(path) {
        restore(&c);
        return Err(e);
    }
    match reseal_all(&mut c, path, old, new, first) {
        Ok(done) => Ok(done),
        Err(e) => {
            restore(&c);
            Err(e)
        }
    }
}

/// The rotation's transaction (see [`reseal`]): approval values in the clear are
/// sealed only below `first` (newer ones in the clear were written by hand).
fn reseal_all(
    c: &mut Connection,
    path: &Path,
    old: Option<&DataKey>,
    new: &DataKey,
    first: i64,
) -> Result<Resealed, AuditError> {
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
        for column in ["subject", "reason", "note", "outcome"] {
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
                    Value::Text(t) if id < first || column == "note" => Some(t.into_bytes()),
                    Value::Text(_) => {
                        return Err(AuditError::Sealed(format!(
                            "approval request {id}: its {column} is in the clear in a sealed queue (written by hand); \
                             nothing was rotated"
                        )));
                    }
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
    tx.execute(
        "UPDATE sealing SET key_id = ?1, approvals_from = ?2, proof = ?3 WHERE id = 1",
        params![new.id(), first, proof(new, first)],
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first item made sealed is taken only as the key vouches for it.
    #[test]
    fn the_record_of_the_first_sealed_approval_is_vouched_for_by_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Connection::open(dir.path().join("audit.db")).expect("open");
        sealed_under(&c).expect("table");
        let (k, other) =
            (DataKey::from_hex(&"11".repeat(32)).expect("key"), DataKey::from_hex(&"22".repeat(32)).expect("key"));
        c.execute(
            "INSERT INTO sealing (id, key_id, approvals_from, proof) VALUES (1, ?1, 5, ?2)",
            params![k.id(), proof(&k, 5)],
        )
        .expect("record");
        assert_eq!(approvals_sealed_from(&c, &k).expect("read"), 5);
        assert_eq!(approvals_sealed_from(&c, &other).expect("read"), 1, "another key vouches for nothing");
        c.execute("UPDATE sealing SET approvals_from = 1000000", []).expect("raise it");
        assert_eq!(approvals_sealed_from(&c, &k).expect("read"), 1, "raised by hand: every item must be sealed");
        c.execute("UPDATE sealing SET approvals_from = 5, proof = NULL", []).expect("drop the proof");
        assert_eq!(approvals_sealed_from(&c, &k).expect("read"), 1);
        c.execute("DELETE FROM sealing", []).expect("delete");
        assert_eq!(approvals_sealed_from(&c, &k).expect("read"), 1);
    }
}
