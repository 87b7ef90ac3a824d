//! Verification of the hash chain, row by row and against the head file.

use super::*;

/// One row's fields, as the chain hashes them.
pub(super) struct RowFields<'a> {
    pub(super) prev: &'a str,
    pub(super) seq: i64,
    pub(super) uid: &'a str,
    pub(super) ts_us: i64,
    pub(super) kind: &'a str,
    pub(super) request_id: Option<&'a str>,
    pub(super) data: &'a str,
    /// A sealed row's digest (see [`sealing`]): covered in place of `data`.
    pub(super) digest: Option<&'a str>,
}

/// The chain hash rows are written with: a MAC, under the audit key, of every
/// column but the hash itself (of a sealed row: its digest, not its sealed bytes).
pub(super) fn keyed_row_hash(key: &Key, r: &RowFields<'_>) -> String {
    let (seq, ts) = (r.seq.to_string(), r.ts_us.to_string());
    match r.digest {
        Some(digest) => key.mac(&["v4", r.prev, &seq, r.uid, &ts, r.kind, r.request_id.unwrap_or(""), digest]),
        None => key.mac(&["v3", r.prev, &seq, r.uid, &ts, r.kind, r.request_id.unwrap_or(""), r.data]),
    }
}

/// What [`verify`] found wrong, one line per problem, naming the row.
pub type Problems = Vec<String>;

/// What [`verify_report`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Rows checked.
    pub rows: u64,
    /// What is wrong.
    pub problems: Problems,
    /// Sealed values (events' data, stored texts) whose content was not checked
    /// against the chain's digests because no data key is configured: the chain
    /// itself was checked.
    pub unopened: u64,
}

/// [`verify_report`]'s rows and problems.
///
/// # Errors
/// As [`verify_report`].
pub fn verify(path: &Path) -> Result<(u64, Problems), AuditError> {
    verify_report(path).map(|r| (r.rows, r.problems))
}

/// Checks the log at `path`, after replaying the journals of processes that are
/// gone ([`recover`], which replays only lines the key vouches for): every row's
/// hash is its MAC under the audit key (rows written before the key, with the
/// unkeyed hashes, are accepted only before the first keyed row) and follows the
/// previous row's; seqs have no gaps; the first row follows the authenticated
/// anchor after retention; the head file exists, is authentic and names no row
/// beyond the last; every stored text hashes to its key and every request that ran
/// has its text stored; every `approval_completed` follows an `approval_approved`
/// of the same item; no journal was set aside as not authentic. What it cannot
/// detect is in [`key`]'s docs. Sealed rows are checked without the data key
/// (their MACs cover digests); with it, each sealed value is opened and checked
/// against its digest or hash too.
///
/// # Errors
/// The database cannot be opened or read; a data key is configured that is not
/// the one the log is sealed under.
pub fn verify_report(path: &Path) -> Result<Report, AuditError> {
    let recovered = recover(path);
    let store = Store::at(path)?;
    let key = Key::load(false);
    let c = read_only(path)?;
    let data_key = sealing::reading_key(&c, path)?;
    let mut unopened = 0u64;
    let mut problems = Vec::new();
    if let Err(e) = recovered {
        problems.push(format!("journals of processes that are gone could not be replayed: {e}"));
    }
    let key = match key {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(format!("rows cannot be authenticated: {e}"));
            None
        }
    };
    // After retention, the chain starts from the last deleted row.
    let anchor: Option<(i64, String, Option<String>)> = c
        .query_row("SELECT seq, hash, mac FROM anchor WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .unwrap_or(None);
    if let (Some((seq, hash, mac)), Some(key)) = (&anchor, &key) {
        let authentic = mac.as_deref().is_some_and(|m| key.verify(&["anchor", &seq.to_string(), hash], m));
        if !authentic {
            problems.push(format!(
                "the retention anchor (row {seq}) is not authentic: rows before it may have been deleted"
            ));
        }
    }
    let (first, genesis) = anchor.map_or((1, GENESIS.to_string()), |(s, h, _)| (s + 1, h));
    let mut stmt = c
        .prepare("SELECT seq, ts_us, kind, request_id, data, prev_hash, hash, uid, digest FROM events ORDER BY seq")
        .map_err(|e| db_err(path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, rusqlite::types::Value>(4)?,
                ),
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })
        .map_err(|e| db_err(path, e))?;
    let (mut expected, mut prev, mut count) = (first, genesis, 0u64);
    let mut approved = std::collections::HashSet::new();
    // The decisions the log holds (for approvals_recorded); `None` when some are
    // sealed and cannot be opened.
    let mut decisions = Some(std::collections::HashSet::new());
    let mut code_needed: Vec<(i64, String)> = Vec::new();
    // Once a row is sealed, every later one must be, but for the public kinds.
    let mut sealing_since: Option<i64> = None;
    for row in rows {
        let ((seq, ts, kind, rid, stored), prev_hash, hash, uid, digest) = row.map_err(|e| db_err(path, e))?;
        // A sealed row's data, opened with the data key and checked against the
        // digest its MAC covers; without the key, only the MAC is checked.
        let (data, sealed_bytes) = match (stored, &digest) {
            (rusqlite::types::Value::Text(t), None) => (Some(t), String::new()),
            (rusqlite::types::Value::Blob(b), Some(d)) => match &data_key {
                None => {
                    unopened += 1;
                    (None, crate::hex::encode(&b))
                }
                Some(k) => match k.open(&sealing::event_context(&uid), &b) {
                    Ok(plain) => match String::from_utf8(plain) {
                        Ok(t) if sealing::data_digest(&uid, &t) == *d => (Some(t), String::new()),
                        _ => {
                            problems.push(format!("row {seq}: its sealed data does not match its digest (replaced)"));
                            (None, String::new())
                        }
                    },
                    Err(e) => {
                        problems.push(format!("row {seq}: its sealed data does not open: {e}"));
                        (None, String::new())
                    }
                },
            },
            _ => {
                problems.push(format!("row {seq}: its data is neither clear text nor sealed with a digest (edited)"));
                (None, String::new())
            }
        };
        if digest.is_some() {
            sealing_since.get_or_insert(seq);
        } else if sealing::should_be_sealed(&kind, seq, sealing_since) {
            problems.push(format!(
                "row {seq}: in the clear in a log sealed since row {} (written by a process without the data key)",
                sealing_since.unwrap_or_default()
            ));
        }
        let data_text = data.clone().unwrap_or(sealed_bytes);
        let data = data_text.as_str();
        count += 1;
        if seq != expected {
            problems.push(format!("rows {expected}..{} are missing (deleted)", seq - 1));
        } else if prev_hash != prev {
            problems.push(format!("row {seq}: does not follow row {} (rows reordered, replaced or inserted)", seq - 1));
        }
        let fields = RowFields {
            prev: &prev_hash,
            seq,
            uid: &uid,
            ts_us: ts,
            kind: &kind,
            request_id: rid.as_deref(),
            data,
            digest: digest.as_deref(),
        };
        // Every row is a MAC under the key: a row hashed any other way (written
        // before the key, or by someone without it) cannot be told from a forgery.
        let keyed = key.as_ref().is_some_and(|k| k.verify_hex(&keyed_row_hash(k, &fields), &hash));
        if key.is_none() {
            problems.push(format!("row {seq}: cannot be checked without the audit key"));
        } else if !keyed {
            problems.push(format!("row {seq}: its content does not match its MAC (edited or forged)"));
        }
        let known = kind.parse::<EventKind>().ok();
        if known == Some(EventKind::ChainBreak) {
            problems.push(format!("row {seq}: a writer found the log changed behind it: {data}"));
        }
        let data_json: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        let opened = !(digest.is_some() && data_json.is_null());
        match known {
            Some(EventKind::ApprovalApproved) => {
                approved.insert(rid.clone().unwrap_or_default());
                match (&mut decisions, data_json["id"].as_i64(), data_json["decided_by"].as_str()) {
                    (Some(d), Some(id), Some(by)) => {
                        d.insert((id, by.to_string()));
                    }
                    _ if !opened => decisions = None,
                    _ => {}
                }
            }
            Some(EventKind::ApprovalCompleted) if !approved.contains(&rid.clone().unwrap_or_default()) => {
                problems.push(format!(
                    "row {seq}: {} completed without an approval_approved before it",
                    rid.as_deref().unwrap_or("an approval")
                ));
            }
            // A sealed request whose data is not opened names no code to check.
            Some(EventKind::Request) if opened && data_json.get("refused").is_none() => {
                if let Some(sha) = data_json.get("code_sha256").and_then(|v| v.as_str()) {
                    code_needed.push((seq, sha.to_string()));
                }
            }
            _ => {}
        }
        expected = seq + 1;
        prev = hash;
    }
    drop(stmt);
    let mut stored = std::collections::HashSet::new();
    let mut texts = c.prepare("SELECT sha256, text FROM code").map_err(|e| db_err(path, e))?;
    let code = texts
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, rusqlite::types::Value>(1)?)))
        .map_err(|e| db_err(path, e))?;
    for row in code {
        let (sha, text) = row.map_err(|e| db_err(path, e))?;
        let sealed = matches!(text, rusqlite::types::Value::Blob(_));
        match open_value(text, data_key.as_ref(), &sealing::code_context(&sha)) {
            Ok(text) if sha256_hex(text.as_bytes()) == sha => {}
            Ok(_) => problems.push(format!("stored code {sha}: its text does not match its hash (edited)")),
            Err(_) if sealed && data_key.is_none() => unopened += 1,
            Err(e) => problems.push(format!("stored code {sha}: {e}")),
        }
        stored.insert(sha);
    }
    for (seq, sha) in code_needed {
        if !stored.contains(&sha) {
            problems.push(format!("row {seq}: the code it ran ({sha}) is not stored (deleted or replaced)"));
        }
    }
    match store.dir.read(&store.head()) {
        Ok(Some(mut f)) => {
            let mut head = String::new();
            let _ = std::io::Read::read_to_string(&mut f, &mut head);
            let parts: Vec<&str> = head.split_whitespace().collect();
            let seq = parts.first().and_then(|s| s.parse::<i64>().ok());
            match (seq, parts.get(1), parts.get(2)) {
                (Some(seq), Some(hash), mac) => {
                    let authentic = match (&key, mac) {
                        (Some(k), Some(m)) => k.verify(&["head", &seq.to_string(), hash], m),
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    if !authentic {
                        problems.push(format!("the head file {} is not authentic (rewritten)", store.head()));
                    } else if seq >= expected {
                        problems.push(format!("rows {expected}..{seq} are missing (the newest rows were deleted)"));
                    } else if seq == expected - 1 && *hash != prev {
                        problems.push(format!("row {seq}: not the row last committed (replaced)"));
                    } else if seq >= first && seq < expected - 1 {
                        // A head behind the last row (another writer's, not yet
                        // rewritten) must still name a row of this log: a head
                        // copied from another log is caught here.
                        let at: Option<String> = c
                            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| r.get(0))
                            .optional()
                            .unwrap_or(None);
                        if at.as_deref() != Some(*hash) {
                            problems.push(format!(
                                "the head file {} names row {seq} with a hash this log's row {seq} does not have                                  (another log's head, or rows replaced)",
                                store.head()
                            ));
                        }
                    }
                }
                _ if count > 0 => problems.push(format!("the head file {} is empty or unreadable", store.head())),
                _ => {}
            }
        }
        Ok(None) if count > 0 => {
            problems.push(format!(
                "the head file {} is missing (the newest rows may have been deleted with it)",
                store.head()
            ));
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("the head file {} cannot be read: {e}", store.head())),
    }
    if let Some(decisions) = &decisions {
        approvals_recorded(&c, decisions, &mut problems);
    }
    if let Ok(names) = store.dir.names() {
        for name in names.into_iter().filter(|n| n.starts_with(&store.rejected_prefix())) {
            problems.push(format!("{name}: a journal with lines the audit key does not vouch for was set aside"));
        }
    }
    Ok(Report { rows: count, problems, unopened })
}

/// The approvals queue lives beside the chain, not in it: every item it holds as
/// approved must have its `approval_approved` event, by the same decider, in the
/// log (`recorded`; an approval written into the table by hand has none). Items
/// decided before the oldest event kept (retention) are not checked.
fn approvals_recorded(c: &Connection, recorded: &std::collections::HashSet<(i64, String)>, problems: &mut Problems) {
    let oldest: Option<i64> = c.query_row("SELECT MIN(ts_us) FROM events", [], |r| r.get(0)).unwrap_or(None);
    let Some(oldest) = oldest else { return };
    // No approvals table: a log without a queue.
    let Ok(mut stmt) = c.prepare(
        "SELECT id, COALESCE(decided_by, ''), COALESCE(decided_us, 0) FROM approvals WHERE status = 'approved'",
    ) else {
        return;
    };
    let approved = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)));
    for (id, by, at) in approved.map(|rows| rows.filter_map(Result::ok).collect::<Vec<_>>()).unwrap_or_default() {
        if at >= oldest && !recorded.contains(&(id, by.clone())) {
            problems.push(format!(
                "approval request {id} is approved by {by:?} in the queue, but the log has no such decision (written \
                 into the table by hand)"
            ));
        }
    }
}
