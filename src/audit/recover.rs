//! Recovery: journals of processes that are gone are replayed into the database,
//! and the head file says what the chain must end with.

use super::*;

/// What a writer expects to find at the end of the log before it appends.
#[derive(Debug, Clone)]
pub(super) enum Expected {
    /// An empty log (or one this process has not seen yet and has no head for).
    Nothing,
    /// This row, with this hash (later rows may have been added by others).
    Row(i64, String),
    /// The log did not match its head when it was opened: recorded first.
    Broken(String),
}

/// What the head file says the log's end was, checked against the key and the
/// database: the writer's starting [`Expected`].
pub(super) fn expected_from_head(store: &Store, conn: &Connection, key: &Key) -> Expected {
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap_or(0);
    let text = match store.dir.read(&store.head()) {
        Ok(Some(mut f)) => {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut f, &mut text);
            text
        }
        _ => String::new(),
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    match (parts.first().and_then(|s| s.parse::<i64>().ok()), parts.get(1), parts.get(2)) {
        (Some(seq), Some(hash), Some(mac)) if key.verify(&["head", &seq.to_string(), hash], mac) => {
            Expected::Row(seq, (*hash).to_string())
        }
        _ if rows == 0 => Expected::Nothing,
        _ => Expected::Broken(format!("the head file was missing or not authentic while the log held {rows} rows")),
    }
}

/// Replays the journals of processes that are gone into the database at `path`,
/// then removes them. Returns how many events it inserted or found there.
///
/// # Errors
/// The database cannot be written, or a journal cannot be read.
pub fn recover(path: &Path) -> Result<usize, AuditError> {
    let mut store = Store::at(path)?;
    if dead_journals(&store).is_empty() {
        return Ok(0);
    }
    store.key = Some(Key::load(true)?);
    let mut conn = open(&store)?;
    let head = open_head(&store)?;
    let mut expected = expected_from_head(&store, &conn, store.key()?);
    recover_with(&mut conn, &store, &head, &mut expected)
}

/// The head file beside the database (created owner-only, never through a link).
pub(super) fn open_head(store: &Store) -> Result<std::fs::File, AuditError> {
    store
        .dir
        .open_file(&store.head(), cap_std::fs::OpenOptions::new().create(true).truncate(false).write(true))
        .map_err(|e| db_err(&store.db_path(), format!("cannot open the head file: {e}")))
}

/// Journals beside the database whose process is gone, by name.
pub(super) fn dead_journals(store: &Store) -> Vec<String> {
    journals(store, false)
}

/// The journals of processes still running (writers of the log).
pub(super) fn live_journals(store: &Store) -> Vec<String> {
    journals(store, true)
}

fn journals(store: &Store, alive: bool) -> Vec<String> {
    let prefix = store.journal_prefix();
    let Ok(names) = store.dir.names() else { return Vec::new() };
    names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(&prefix)
                .and_then(|owner| owner.split_once('.'))
                .is_some_and(|(pid, start)| crate::process::alive(pid, start) == alive)
        })
        .collect()
}

pub(super) fn recover_with(
    conn: &mut Connection,
    store: &Store,
    head: &std::fs::File,
    expected: &mut Expected,
) -> Result<usize, AuditError> {
    let path = &store.db_path();
    let mut replayed = 0;
    let key = store.key()?;
    for name in dead_journals(store) {
        let (events, rejected) = read_journal(store, &name).map_err(|e| db_err(path, format!("{name}: {e}")))?;
        if let Some((seq, hash)) = commit_events(conn, &events, true, key, expected).map_err(|e| db_err(path, e))? {
            write_head(head, seq, &hash, key).map_err(|e| db_err(path, e))?;
        }
        // Another process recovering at the same time may have replayed and removed
        // it first (replay is idempotent by event uid): gone is done.
        let gone = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| db_err(path, format!("{name}: {e}"))),
        };
        if rejected > 0 {
            // Not replayed, and kept for the operator; `verify` names it.
            let aside = name.replacen(&store.journal_prefix(), &store.rejected_prefix(), 1);
            gone(store.dir.rename(&name, &aside))?;
            tracing::warn!(journal = %name, rejected, "a journal held lines the audit key does not vouch for; set aside");
        } else {
            gone(store.dir.remove(&name))?;
        }
        replayed += events.len();
        tracing::info!(journal = %name, events = events.len(), "replayed an audit journal left by a process that is gone");
    }
    Ok(replayed)
}

/// The authentic events of journal `name`, and how many complete lines were not
/// authentic (a last line cut short by a crash was never acknowledged: skipped,
/// not counted).
pub(super) fn read_journal(store: &Store, name: &str) -> std::io::Result<(Vec<Pending>, usize)> {
    let Some(mut f) = store.dir.read(name)? else { return Ok((Vec::new(), 0)) };
    let key = store.key().map_err(std::io::Error::other)?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut text)?;
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let log = store.db_path().display().to_string();
    let (mut out, mut prev) = (Vec::new(), String::new());
    for (i, line) in lines.iter().enumerate() {
        let torn = i + 1 == lines.len() && !complete;
        let event = std::str::from_utf8(line).ok().and_then(|line| {
            let (mac, json) = line.split_once(' ')?;
            let want = journal_mac(key, &log, name, i as u64, &prev, json);
            key.verify_hex(&want, mac).then(|| serde_json::from_str::<Pending>(json).ok().map(|p| (p, want))).flatten()
        });
        match event {
            Some((p, mac)) => {
                out.push(p);
                prev = mac;
            }
            None if torn => {}
            // The chain is broken here: nothing after it is replayed.
            None => return Ok((out, lines.len() - i)),
        }
    }
    Ok((out, 0))
}

/// Rewrites the head file in place with one fixed-size write (a process killed
/// mid-way cannot tear a single small write).
pub(super) fn write_head(head: &std::fs::File, seq: i64, hash: &str, key: &Key) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mac = key.mac(&["head", &seq.to_string(), hash]);
    head.write_all_at(format!("{seq:020} {hash} {mac}\n").as_bytes(), 0)
}
