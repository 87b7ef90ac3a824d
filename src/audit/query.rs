//! Reading the log (rows, tails, code by hash) and retention.

use super::*;

/// Deletes the events recorded before `cutoff_us` (microseconds since the epoch),
/// keeping the chain verifiable: the last deleted row's seq and hash become the
/// anchor the remaining rows are checked from. Returns how many were deleted. The
/// caller records a `retention` event saying so (see [`prune_days`]).
///
/// # Errors
/// The database cannot be written.
pub fn prune_before(path: &Path, cutoff_us: i64) -> Result<usize, AuditError> {
    let store = Store::writable(path)?;
    let key = store.key()?.clone();
    let mut c = open(&store)?;
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| db_err(path, e))?;
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM events WHERE seq = (SELECT MAX(seq) FROM events WHERE ts_us < ?1)",
            [cutoff_us],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| db_err(path, e))?;
    let Some((seq, hash)) = last else { return Ok(0) };
    let n = tx.execute("DELETE FROM events WHERE seq <= ?1", [seq]).map_err(|e| db_err(path, e))?;
    // The anchor is authenticated: an anchor made up after deleting the oldest rows
    // does not verify.
    let mac = key.mac(&["anchor", &seq.to_string(), &hash]);
    tx.execute("INSERT OR REPLACE INTO anchor (id, seq, hash, mac) VALUES (1, ?1, ?2, ?3)", params![seq, hash, mac])
        .map_err(|e| db_err(path, e))?;
    tx.commit().map_err(|e| db_err(path, e))?;
    Ok(n)
}

/// Applies a retention of `days` to the log behind `log`, and records a
/// `retention` event when anything was deleted.
///
/// # Errors
/// As [`prune_before`], or the event cannot be recorded.
pub fn prune_days(log: &AuditLog, days: u32) -> Result<usize, AuditError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let cutoff = now.saturating_sub(std::time::Duration::from_secs(u64::from(days) * 86_400));
    let n = prune_before(log.path(), i64::try_from(cutoff.as_micros()).unwrap_or(i64::MAX))?;
    if n > 0 {
        let data = serde_json::json!({"deleted": n, "retention_days": days});
        log.record(Event { kind: EventKind::Retention, request_id: None, data, code: None })?;
    }
    Ok(n)
}

/// The row at `seq`.
///
/// # Errors
/// The database cannot be read.
pub fn row(path: &Path, seq: i64) -> Result<Option<Row>, AuditError> {
    let c = read_only(path)?;
    let key = sealing::reading_key(&c, path)?;
    let since = sealing::sealed_since(&c);
    c.query_row(&format!("SELECT {ROW} FROM events WHERE seq = ?1"), [seq], |r| to_row(r, key.as_ref(), since))
        .optional()
        .map_err(|e| db_err(path, e))
}

/// The last `n` rows, oldest first.
///
/// # Errors
/// The database cannot be read.
pub fn tail(path: &Path, n: usize) -> Result<Vec<Row>, AuditError> {
    let c = read_only(path)?;
    let key = sealing::reading_key(&c, path)?;
    let since = sealing::sealed_since(&c);
    let mut stmt = c
        .prepare(&format!("SELECT {ROW} FROM (SELECT * FROM events ORDER BY seq DESC LIMIT ?1) ORDER BY seq"))
        .map_err(|e| db_err(path, e))?;
    let rows = stmt
        .query_map([i64::try_from(n).unwrap_or(i64::MAX)], |r| to_row(r, key.as_ref(), since))
        .map_err(|e| db_err(path, e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err(path, e))
}

/// The newest `breaker` event of each breaker (its last transition), by name.
///
/// # Errors
/// The database cannot be read.
pub fn breaker_transitions(path: &Path) -> Result<Vec<Row>, AuditError> {
    let c = read_only(path)?;
    // Breaker events are never sealed (sealing::PUBLIC): read without the key.
    let mut stmt = c
        .prepare(&format!(
            "SELECT {ROW} FROM events WHERE seq IN
             (SELECT MAX(seq) FROM events WHERE kind = 'breaker' GROUP BY json_extract(data, '$.breaker'))
             ORDER BY json_extract(data, '$.breaker')"
        ))
        .map_err(|e| db_err(path, e))?;
    let rows = stmt.query_map([], |r| to_row(r, None, None)).map_err(|e| db_err(path, e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err(path, e))
}

/// The source stored under `sha256` (opened under the configured data key when
/// sealed).
///
/// # Errors
/// The database cannot be read; the text is sealed and the key is missing or
/// wrong.
pub fn code(path: &Path, sha256: &str) -> Result<Option<String>, AuditError> {
    let c = read_only(path)?;
    let key = sealing::reading_key(&c, path)?;
    let value: Option<rusqlite::types::Value> = c
        .query_row("SELECT text FROM code WHERE sha256 = ?1", [sha256], |r| r.get(0))
        .optional()
        .map_err(|e| db_err(path, e))?;
    let Some(value) = value else { return Ok(None) };
    let text = open_value(value, key.as_ref(), &sealing::code_context(sha256))?;
    if sha256_hex(text.as_bytes()) != sha256 {
        return Err(AuditError::Sealed(format!("the stored code {sha256} does not match its hash (edited)")));
    }
    Ok(Some(text))
}
