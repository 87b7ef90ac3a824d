//! The writer thread: commits journalled events to the database in batches,
//! extending the hash chain, through the `database` breaker.

use super::*;

pub(super) struct Writer {
    pub(super) conn: Option<Connection>,
    pub(super) path: PathBuf,
    pub(super) store: Store,
    /// The end of the log as this writer last saw it.
    pub(super) expected: Expected,
    pub(super) breaker: Breaker,
    /// The head file, rewritten in place after every commit.
    pub(super) head: std::fs::File,
    pub(super) journal: Arc<Mutex<Journal>>,
    pub(super) backlog: Arc<std::sync::atomic::AtomicUsize>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut behind = false; // events in the journal the database does not have
        let mut carry: Option<Msg> = None;
        let mut flushes: Vec<mpsc::SyncSender<()>> = Vec::new();
        loop {
            let first = match carry.take() {
                Some(m) => Some(m),
                None if behind => match rx.recv_timeout(RETRY) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            let mut batch = Vec::new();
            let mut take = |m: Msg, batch: &mut Vec<Pending>| match m {
                Msg::Event(p) => batch.push(p),
                Msg::Flush(f) => flushes.push(f),
            };
            if let Some(m) = first {
                take(m, &mut batch);
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch),
                    Err(_) => break,
                }
            }
            let result = if behind { self.replay_journal() } else { self.store(&batch, false) };
            behind = result.is_err();
            if let Err(e) = &result {
                tracing::warn!(error = %e, "audit database unavailable; events wait in the journal");
            }
            if !behind {
                // Everything received so far is in the database.
                self.backlog.store(0, std::sync::atomic::Ordering::Relaxed);
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                carry = self.empty_journal_if_drained(&rx);
            }
        }
        // Every handle is gone, so every event was received. Once the database has
        // them all, the journal goes.
        if !behind || self.replay_journal().is_ok() {
            let j = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = self.store.dir.remove(&j.name);
        }
    }

    /// Commits `events` through the `database` breaker (`replay`: some may be in
    /// the database already; skip those by id).
    pub(super) fn store(&mut self, events: &[Pending], replay: bool) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let permit = self.breaker.allow().map_err(|open| db_err(&self.path, open))?;
        match self.commit(events, replay) {
            Ok(()) => {
                permit.succeeded();
                Ok(())
            }
            Err(e) => {
                permit.failed(&e.to_string());
                Err(e)
            }
        }
    }

    /// Commits everything in this process's journal (what is already in the
    /// database is skipped by its id).
    pub(super) fn replay_journal(&mut self) -> Result<(), AuditError> {
        let name = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).name.clone();
        let (events, _rejected) = read_journal(&self.store, &name)
            .map_err(|e| db_err(&self.path, format!("cannot read the journal: {e}")))?;
        self.store(&events, true)
    }

    /// Empties the journal when every event in it is committed: under its lock
    /// nothing can be appended, so if nothing is waiting in the queue either, the
    /// database has it all. A message found waiting is handed back.
    pub(super) fn empty_journal_if_drained(&mut self, rx: &mpsc::Receiver<Msg>) -> Option<Msg> {
        let mut j = self.journal.try_lock().ok()?;
        match rx.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::TryRecvError::Empty) => {
                match j.file.set_len(0) {
                    // A new chain starts with the next line.
                    Ok(()) => {
                        j.index = 0;
                        j.prev.clear();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot empty the audit journal (it is replayed safely)"),
                }
                None
            }
            Err(mpsc::TryRecvError::Disconnected) => None,
        }
    }

    pub(super) fn commit(&mut self, events: &[Pending], replay: bool) -> Result<(), AuditError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.store)?);
        }
        let path = self.path.clone();
        let key = self.store.key()?.clone();
        let conn = self.conn.as_mut().ok_or_else(|| db_err(&path, "no connection"))?;
        match commit_events(conn, events, replay, &key, &mut self.expected) {
            Ok(Some((seq, hash))) => {
                write_head(&self.head, seq, &hash, &key)
                    .map_err(|e| db_err(&path, format!("cannot write the head file: {e}")))?;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                // A fresh connection next time (the file may have been replaced).
                self.conn = None;
                Err(db_err(&path, e))
            }
        }
    }
}

/// Inserts `events` in order in one transaction (`replay`: skipping any already
/// there, by id). Returns the last row's seq and hash when anything was inserted.
pub(super) fn commit_events(
    conn: &mut Connection,
    events: &[Pending],
    replay: bool,
    key: &Key,
    expected: &mut Expected,
) -> rusqlite::Result<Option<(i64, String)>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut seq, mut prev): (i64, String) = tx
        .prepare_cached("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS.to_string()));
    // The row this process last knew of must still be there, unchanged (other
    // processes may have appended after it): otherwise rows were deleted or
    // replaced behind the writer's back, and the break goes into the chain itself,
    // before anything is appended after it.
    let broken = match expected {
        Expected::Nothing => None,
        Expected::Broken(why) => Some(why.clone()),
        Expected::Row(es, eh) => {
            let found: Option<String> = tx
                .prepare_cached("SELECT hash FROM events WHERE seq = ?1")?
                .query_row([*es], |r| r.get(0))
                .optional()?;
            (found.as_deref() != Some(eh.as_str()))
                .then(|| format!("row {es} (hash {eh}) is no longer in the log; it now ends at row {seq}"))
        }
    };
    let break_event = broken.map(|why| {
        pending(Event {
            kind: EventKind::ChainBreak,
            request_id: None,
            data: serde_json::json!({ "found": why }),
            code: None,
        })
    });
    let mut inserted = false;
    for e in break_event.iter().chain(events) {
        if replay {
            let seen: Option<i64> = tx
                .prepare_cached("SELECT seq FROM events WHERE uid = ?1")?
                .query_row([&e.uid], |r| r.get(0))
                .optional()?;
            if seen.is_some() {
                continue;
            }
        }
        seq += 1;
        let hash = keyed_row_hash(
            key,
            &RowFields {
                prev: &prev,
                seq,
                uid: &e.uid,
                ts_us: e.ts_us,
                kind: &e.kind,
                request_id: e.request_id.as_deref(),
                data: &e.data,
                digest: e.digest.as_deref(),
            },
        );
        let data = sealing::stored(&e.data, e.digest.is_some())?;
        tx.prepare_cached(
            "INSERT INTO events (seq, uid, ts_us, kind, request_id, data, prev_hash, hash, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![seq, e.uid, e.ts_us, e.kind, e.request_id, data, prev, hash, e.digest])?;
        if let Some((sha, text)) = &e.code {
            tx.prepare_cached("INSERT OR IGNORE INTO code (sha256, text) VALUES (?1, ?2)")?
                .execute(params![sha, sealing::stored(text, e.code_sealed)?])?;
        }
        prev = hash;
        inserted = true;
    }
    tx.commit()?;
    if inserted || !matches!(expected, Expected::Nothing) || seq > 0 {
        *expected = if seq > 0 { Expected::Row(seq, prev.clone()) } else { Expected::Nothing };
    }
    Ok(inserted.then_some((seq, prev)))
}
