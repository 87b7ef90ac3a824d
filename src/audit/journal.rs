//! The handle every request records through: the journal appended under its lock
//! (durable before the call returns), then handed to the writer thread.

use super::*;

/// This process's journal. Appends and the hand-off to the writer happen under
/// its lock, so the writer sees events in journal order.
pub(super) struct Journal {
    pub(super) file: std::fs::File,
    /// Its name in the state directory.
    pub(super) name: String,
    /// Its path (for messages).
    pub(super) path: PathBuf,
    /// The log it belongs to (its database's resolved path), the next line's
    /// index and the previous line's MAC: each line's MAC covers them, so lines
    /// cannot be dropped from the middle, reordered, or carried into another log.
    pub(super) log: String,
    pub(super) index: u64,
    pub(super) prev: String,
}

/// The MAC of journal line `index` of journal `name` of `log`, after `prev`.
pub(super) fn journal_mac(key: &Key, log: &str, name: &str, index: u64, prev: &str, json: &str) -> String {
    key.mac(&["journal", log, name, &index.to_string(), prev, json])
}

/// A handle on the log; cheap to clone, shared by every request. The writer
/// thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct AuditLog {
    pub(super) writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    pub(super) journal: Arc<Mutex<Journal>>,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) path: PathBuf,
    /// Events handed to the writer and not yet committed.
    pub(super) backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// Authenticates journal lines.
    pub(super) key: Key,
    /// The data key events are sealed under, when one is configured.
    pub(super) data_key: Option<crate::seal::DataKey>,
    /// Guards the journal's appends (the policy's `file_io` breaker), when set.
    pub(super) file_io: Option<Breaker>,
    /// Told of every event recorded and of every refusal for being behind (the
    /// alerts), once set; shared by every handle.
    pub(super) watcher: Arc<std::sync::RwLock<Option<Arc<dyn Watcher>>>>,
}

/// What wants to know, as they happen, which events are recorded and when the
/// log falls behind (see [`AuditLog::watch`]). Its methods are called on the
/// recording thread: they must only hand the news on, never block.
pub trait Watcher: Send + Sync {
    /// `event` is being recorded.
    fn recorded(&self, event: &Event);
    /// New work was refused: the database is `backlog` events behind.
    fn behind(&self, backlog: usize);
}

impl AuditLog {
    /// Opens (creating) the log at `path`, replaying journals of processes that
    /// are gone; `database` is the breaker that guards the database.
    ///
    /// # Errors
    /// The database cannot be created, opened or recovered, or the journal cannot
    /// be created.
    pub fn open(path: &Path, database: Breaker) -> Result<AuditLog, AuditError> {
        let store = Store::writable(path)?;
        let key = store.key()?.clone();
        let mut conn = open(&store)?;
        // The journal exists before the data key is checked: a process sealing
        // the log for the first time sees this one as a writer (see sealing_on).
        let (pid, start) = crate::process::me();
        let journal_name = format!("{}{pid}.{start}", store.journal_prefix());
        let journal_path = store.dir.path().join(&journal_name);
        let file = store
            .dir
            .open_file(&journal_name, cap_std::fs::OpenOptions::new().create(true).append(true))
            .map_err(|e| AuditError::Journal { path: journal_path.clone(), message: e.to_string() })?;
        let data_key = sealing_on(&conn, path)?;
        let head = open_head(&store)?;
        let mut expected = expected_from_head(&store, &conn, &key);
        recover_with(&mut conn, &store, &head, &mut expected)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let journal = Arc::new(Mutex::new(Journal {
            file,
            name: journal_name,
            path: journal_path,
            log: store.db_path().display().to_string(),
            index: 0,
            prev: String::new(),
        }));
        let backlog = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = Writer {
            conn: Some(conn),
            path: store.db_path(),
            expected,
            store,
            breaker: database,
            head,
            journal: journal.clone(),
            backlog: backlog.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("terrarium-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| db_err(path, format!("cannot start the writer: {e}")))?;
        let writer = Arc::new(Mutex::new(Some(handle)));
        Ok(AuditLog {
            writer,
            journal,
            tx,
            path: path.to_path_buf(),
            backlog,
            key,
            data_key,
            file_io: None,
            watcher: Arc::default(),
        })
    }

    /// Guards every append to the journal with `breaker` (the policy's `file_io`):
    /// after its threshold of failed appends, records are refused at once (and so
    /// is the work they record) until a trial append succeeds.
    #[must_use]
    pub fn with_file_io(mut self, breaker: Breaker) -> AuditLog {
        self.file_io = Some(breaker);
        self
    }

    /// Tells `watcher` of every event recorded from now on, through any handle
    /// of this log, in place of the one before (`None`: nobody).
    pub fn watch(&self, watcher: Option<Arc<dyn Watcher>>) {
        *self.watcher.write().unwrap_or_else(std::sync::PoisonError::into_inner) = watcher;
    }

    fn watcher(&self) -> Option<Arc<dyn Watcher>> {
        self.watcher.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Events handed to the writer and not yet in the database (new work is
    /// refused while this is past the cap).
    pub fn backlog(&self) -> usize {
        self.backlog.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `event`: once this returns, it is in the journal (it survives the
    /// process being killed) and on its way to the database.
    ///
    /// # Errors
    /// [`AuditError::Journal`] when it could not be appended: it is not recorded.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        self.record_all(vec![event])
    }

    /// Records `events` in order with one append to the journal.
    ///
    /// # Errors
    /// As [`AuditLog::record`]; then none of them is recorded.
    pub fn record_all(&self, events: Vec<Event>) -> Result<(), AuditError> {
        // Overload: let the writer catch up (bounded by the backlog, not by time).
        // Blocking callers only; async ones never wait (see admit_async).
        while self.backlog.load(std::sync::atomic::Ordering::Relaxed) > MAX_BACKLOG {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.append(events)
    }

    /// Appends `events` to the journal and hands them to the writer.
    pub(super) fn append(&self, events: Vec<Event>) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        if let Some(w) = self.watcher() {
            for e in &events {
                w.recorded(e);
            }
        }
        let pending: Vec<Pending> = events
            .into_iter()
            .map(|e| {
                let mut p = pending(e);
                if let Some(k) = &self.data_key {
                    sealing::seal_pending(&mut p, k);
                }
                p
            })
            .collect();
        let mut jsons = Vec::new();
        for p in &pending {
            jsons.push(serde_json::to_string(p).map_err(|e| AuditError::Journal {
                path: PathBuf::from("journal"),
                message: format!("cannot encode an event: {e}"),
            })?);
        }
        let mut j = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // `<mac> <json>`, each MAC chained to the line before (see Journal).
        let (mut index, mut prev) = (j.index, j.prev.clone());
        let mut lines = Vec::new();
        for json in &jsons {
            let mac = journal_mac(&self.key, &j.log, &j.name, index, &prev, json);
            lines.extend_from_slice(mac.as_bytes());
            lines.push(b' ');
            lines.extend_from_slice(json.as_bytes());
            lines.push(b'\n');
            index += 1;
            prev = mac;
        }
        let mut append = || j.file.write_all(&lines).map_err(|e| format!("journal append: {e}"));
        let written = match &self.file_io {
            Some(b) => b
                .guard(append)
                .map_err(|open| AuditError::Journal { path: j.path.clone(), message: open.to_string() })?,
            None => append(),
        };
        written.map_err(|message| AuditError::Journal { path: j.path.clone(), message })?;
        j.index = index;
        j.prev = prev;
        self.backlog.fetch_add(pending.len(), Ordering::Relaxed);
        for p in pending {
            self.tx.send(Msg::Event(p)).map_err(|_| AuditError::Stopped)?;
        }
        Ok(())
    }

    /// As [`AuditLog::record`], for notifications where an error can only be
    /// logged (breaker transitions).
    pub fn record_nowait(&self, event: Event) {
        if let Err(e) = self.record(event) {
            tracing::warn!(error = %e, "an audit notification was not recorded");
        }
    }

    /// [`AuditLog::record_all`] for async callers: one `write`, and never a wait
    /// for the writer (a runtime thread is never put to sleep), even past the
    /// backlog cap: what follows something that already happened (an outcome, a
    /// decision) is always recorded. The number of such events is bounded by the
    /// requests admitted, which [`AuditLog::admit_async`] bounds.
    ///
    /// # Errors
    /// As [`AuditLog::record_all`].
    pub async fn record_all_async(&self, events: Vec<Event>) -> Result<(), AuditError> {
        self.append(events)
    }

    /// [`AuditLog::record_all_async`] with one event.
    ///
    /// # Errors
    /// As [`AuditLog::record`].
    pub async fn record_async(&self, event: Event) -> Result<(), AuditError> {
        self.append(vec![event])
    }

    /// Records the arrival of new work (a request, a refused caller, a queued
    /// approval): refused at once with [`AuditError::Overloaded`] when the writer
    /// is more than the backlog cap behind, so that load is shed (the caller
    /// answers 503) instead of queued or waited for, and service resumes as soon as
    /// the database catches up.
    ///
    /// # Errors
    /// [`AuditError::Overloaded`], or as [`AuditLog::record`].
    pub async fn admit_async(&self, event: Event) -> Result<(), AuditError> {
        let behind = self.backlog.load(std::sync::atomic::Ordering::Relaxed);
        if behind > MAX_BACKLOG {
            if let Some(w) = self.watcher() {
                w.behind(behind);
            }
            return Err(AuditError::Overloaded(behind));
        }
        self.append(vec![event])
    }

    /// Closes this handle; when it is the last one, waits for the writer to commit
    /// what it has and end (its journal is removed once the database has it all).
    pub fn close(self) {
        let AuditLog { writer, tx, .. } = self;
        drop(tx);
        if Arc::strong_count(&writer) == 1
            && let Some(h) = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        {
            let _ = h.join();
        }
    }

    /// Waits until every event recorded so far is in the database (blocking).
    ///
    /// # Errors
    /// [`AuditError::NotFlushed`] when the database stayed unavailable for
    /// `within` (the events remain in the journal).
    pub fn flush(&self, within: Duration) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            // Under the journal's lock: after every event appended before.
            let _j = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.tx.send(Msg::Flush(tx)).map_err(|_| AuditError::Stopped)?;
        }
        match rx.recv_timeout(within) {
            Ok(()) => Ok(()),
            Err(_) => Err(AuditError::NotFlushed(format!("not done within {}s", within.as_secs_f64()))),
        }
    }
}

/// A unique id for an event: this process's random prefix and a counter.
pub(super) fn uid() -> String {
    pub(super) static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    pub(super) static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

pub(super) fn pending(event: Event) -> Pending {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Pending {
        uid: uid(),
        ts_us: i64::try_from(now.as_micros()).unwrap_or(i64::MAX),
        kind: event.kind.as_str().into(),
        request_id: event.request_id,
        data: event.data.to_string(),
        code: event.code.map(|c| (sha256_hex(c.as_bytes()), c)),
        digest: None,
        code_sealed: false,
    }
}
