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
    /// The directory it lives in is not one Terrarium may use (see [`crate::dirs`]).
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
    /// [`AuditLog::admit_async`] refused a new arrival: the writer is too far
    /// behind (the database is unavailable or slow). Shed the request; retry later.
    #[error("the audit log is {0} events behind; retry later")]
    Overloaded(usize),
}

/// One event to record.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// What happened: `request`, `route`, `outcome`, `breaker`, …
    pub kind: String,
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

/// Where the writer says how an event fared (a tokio oneshot: awaited by async
/// callers, received blocking by the others, never needs a thread hop).
/// What the writer thread is sent.
enum Msg {
    /// An event already in the journal.
    Event(Pending),
    /// Answer once everything sent before is committed (`false`: it could not be).
    Flush(mpsc::SyncSender<Result<(), String>>),
}

/// This process's journal. Appends and the hand-off to the writer happen under
/// its lock, so the writer sees events in journal order.
struct Journal {
    file: std::fs::File,
    /// Its name in the state directory.
    name: String,
    /// Its path (for messages).
    path: PathBuf,
    /// The log it belongs to (its database's resolved path), the next line's
    /// index and the previous line's MAC: each line's MAC covers them, so lines
    /// cannot be dropped from the middle, reordered, or carried into another log.
    log: String,
    index: u64,
    prev: String,
}

/// The MAC of journal line `index` of journal `name` of `log`, after `prev`.
fn journal_mac(key: &Key, log: &str, name: &str, index: u64, prev: &str, json: &str) -> String {
    key.mac(&["journal", log, name, &index.to_string(), prev, json])
}

/// A handle on the log; cheap to clone, shared by every request. The writer
/// thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct AuditLog {
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    journal: Arc<Mutex<Journal>>,
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    /// Events handed to the writer and not yet committed.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// Authenticates journal lines.
    key: Key,
}

/// Where the audit database lives by default: `audit.db` in `$TERRARIUM_HOME`,
/// else in `$XDG_DATA_HOME/terrarium`, else in `~/.local/share/terrarium` (created
/// 0700; an existing one must be this user's and private, see [`crate::dirs`]).
///
/// # Errors
/// No home directory to put it in, or the directory cannot be created or is
/// refused.
pub fn default_path() -> Result<PathBuf, AuditError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = env("TERRARIUM_HOME")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("terrarium")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/terrarium")))
        .ok_or_else(|| AuditError::Database {
            path: PathBuf::from("audit.db"),
            message: "no TERRARIUM_HOME, XDG_DATA_HOME or HOME to keep the audit log in".into(),
        })?;
    OwnedDir::open(&dir, "state directory")?;
    Ok(dir.join("audit.db"))
}

/// sha256 of `text`, hex.
pub fn sha256_hex(text: &[u8]) -> String {
    hex(&Sha256::digest(text))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// One row's fields, as the chain hashes them.
struct RowFields<'a> {
    prev: &'a str,
    seq: i64,
    uid: &'a str,
    ts_us: i64,
    kind: &'a str,
    request_id: Option<&'a str>,
    data: &'a str,
}

/// The chain hash rows are written with: a MAC, under the audit key, of every
/// column but the hash itself.
fn keyed_row_hash(key: &Key, r: &RowFields<'_>) -> String {
    let (seq, ts) = (r.seq.to_string(), r.ts_us.to_string());
    key.mac(&["v3", r.prev, &seq, r.uid, &ts, r.kind, r.request_id.unwrap_or(""), r.data])
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Database { path: path.to_path_buf(), message: e.to_string() }
}

/// Where the database at `path` lives: its checked directory and its file name.
/// Every file of the log is opened through this handle (see [`crate::dirs`]).
struct Store {
    dir: OwnedDir,
    name: String,
    /// The key, for a store that writes (see [`Store::writable`]).
    key: Option<Key>,
}

impl Store {
    /// The store at `path`, with its key (created on first use): for writing.
    fn writable(path: &Path) -> Result<Store, AuditError> {
        let mut store = Store::at(path)?;
        store.key = Some(Key::load(true)?);
        Ok(store)
    }

    fn key(&self) -> Result<&Key, AuditError> {
        self.key.as_ref().ok_or_else(|| db_err(&self.db_path(), "the audit key is not loaded"))
    }

    fn at(path: &Path) -> Result<Store, AuditError> {
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| db_err(path, "not a file name"))?;
        Ok(Store { dir: OwnedDir::open(parent, "state directory")?, name, key: None })
    }

    fn head(&self) -> String {
        format!("{}.head", self.name)
    }

    /// `audit.db.journal.` — journals are this prefix plus `<pid>.<start time>`.
    fn journal_prefix(&self) -> String {
        format!("{}.journal.", self.name)
    }

    /// `audit.db.rejected.` — a journal with lines that are not authentic is set
    /// aside under this prefix (and named by `verify`) instead of removed.
    fn rejected_prefix(&self) -> String {
        format!("{}.rejected.", self.name)
    }

    /// The database's resolved path (for messages and SQLite).
    fn db_path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }
}

/// SQLite never opens the database through a symbolic link.
fn flags(read_only: bool) -> rusqlite::OpenFlags {
    use rusqlite::OpenFlags as F;
    let base =
        if read_only { F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_URI | F::SQLITE_OPEN_NO_MUTEX } else { F::default() };
    base | F::SQLITE_OPEN_NOFOLLOW
}

fn open(store: &Store) -> Result<Connection, AuditError> {
    let path = store.db_path();
    let path = &path;
    // The log holds snippets' source: owner only (SQLite gives its -wal and -shm
    // files the database's mode). Created, or checked, through the directory handle.
    store.dir.private_file(&store.name).map_err(|e| db_err(path, e))?;
    let c = Connection::open_with_flags(path, flags(false)).map_err(|e| db_err(path, e))?;
    c.busy_timeout(Duration::from_millis(BUSY_MS)).map_err(|e| db_err(path, e))?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS events (
             seq INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ts_us INTEGER NOT NULL,
             kind TEXT NOT NULL, request_id TEXT, data TEXT NOT NULL,
             prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS code (sha256 TEXT PRIMARY KEY, text TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS anchor (id INTEGER PRIMARY KEY CHECK (id = 1),
             seq INTEGER NOT NULL, hash TEXT NOT NULL);",
    )
    .map_err(|e| db_err(path, e))?;
    // Anchors made before the key have no MAC (verify names them).
    let has_mac = c
        .prepare("SELECT 1 FROM pragma_table_info('anchor') WHERE name = 'mac'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| db_err(path, e))?;
    if !has_mac && let Err(e) = c.execute_batch("ALTER TABLE anchor ADD COLUMN mac TEXT") {
        // Another process may have added it meanwhile.
        let added = c
            .prepare("SELECT 1 FROM pragma_table_info('anchor') WHERE name = 'mac'")
            .and_then(|mut s| s.exists([]))
            .unwrap_or(false);
        if !added {
            return Err(db_err(path, e));
        }
    }
    Ok(c)
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
        let head = open_head(&store)?;
        let mut expected = expected_from_head(&store, &conn, &key);
        recover_with(&mut conn, &store, &head, &mut expected)?;
        let (pid, start) = crate::process::me();
        let journal_name = format!("{}{pid}.{start}", store.journal_prefix());
        let journal_path = store.dir.path().join(&journal_name);
        let file = store
            .dir
            .open_file(&journal_name, cap_std::fs::OpenOptions::new().create(true).append(true))
            .map_err(|e| AuditError::Journal { path: journal_path.clone(), message: e.to_string() })?;
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
        Ok(AuditLog { writer, journal, tx, path: path.to_path_buf(), backlog, key })
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
    fn append(&self, events: Vec<Event>) -> Result<(), AuditError> {
        use std::sync::atomic::Ordering;
        let pending: Vec<Pending> = events.into_iter().map(pending).collect();
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
        j.file.write_all(&lines).map_err(|e| AuditError::Journal { path: j.path.clone(), message: e.to_string() })?;
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
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::NotFlushed(e)),
            Err(_) => Err(AuditError::NotFlushed(format!("not done within {}s", within.as_secs_f64()))),
        }
    }
}

/// A unique id for an event: this process's random prefix and a counter.
fn uid() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

fn pending(event: Event) -> Pending {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Pending {
        uid: uid(),
        ts_us: i64::try_from(now.as_micros()).unwrap_or(i64::MAX),
        kind: event.kind,
        request_id: event.request_id,
        data: event.data.to_string(),
        code: event.code.map(|c| (sha256_hex(c.as_bytes()), c)),
    }
}

struct Writer {
    conn: Option<Connection>,
    path: PathBuf,
    store: Store,
    /// The end of the log as this writer last saw it.
    expected: Expected,
    breaker: Breaker,
    /// The head file, rewritten in place after every commit.
    head: std::fs::File,
    journal: Arc<Mutex<Journal>>,
    backlog: Arc<std::sync::atomic::AtomicUsize>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut behind = false; // events in the journal the database does not have
        let mut carry: Option<Msg> = None;
        let mut flushes: Vec<mpsc::SyncSender<Result<(), String>>> = Vec::new();
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
                    let _ = f.send(Ok(()));
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
    fn store(&mut self, events: &[Pending], replay: bool) -> Result<(), AuditError> {
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
    fn replay_journal(&mut self) -> Result<(), AuditError> {
        let name = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).name.clone();
        let (events, _rejected) = read_journal(&self.store, &name)
            .map_err(|e| db_err(&self.path, format!("cannot read the journal: {e}")))?;
        self.store(&events, true)
    }

    /// Empties the journal when every event in it is committed: under its lock
    /// nothing can be appended, so if nothing is waiting in the queue either, the
    /// database has it all. A message found waiting is handed back.
    fn empty_journal_if_drained(&mut self, rx: &mpsc::Receiver<Msg>) -> Option<Msg> {
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

    fn commit(&mut self, events: &[Pending], replay: bool) -> Result<(), AuditError> {
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
fn commit_events(
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
            kind: "chain_break".into(),
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
            },
        );
        tx.prepare_cached(
            "INSERT INTO events (seq, uid, ts_us, kind, request_id, data, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![seq, e.uid, e.ts_us, e.kind, e.request_id, e.data, prev, hash])?;
        if let Some((sha, text)) = &e.code {
            tx.prepare_cached("INSERT OR IGNORE INTO code (sha256, text) VALUES (?1, ?2)")?
                .execute(params![sha, text])?;
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

/// What a writer expects to find at the end of the log before it appends.
#[derive(Debug, Clone)]
enum Expected {
    /// An empty log (or one this process has not seen yet and has no head for).
    Nothing,
    /// This row, with this hash (later rows may have been added by others).
    Row(i64, String),
    /// The log did not match its head when it was opened: recorded first.
    Broken(String),
}

/// What the head file says the log's end was, checked against the key and the
/// database: the writer's starting [`Expected`].
fn expected_from_head(store: &Store, conn: &Connection, key: &Key) -> Expected {
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
fn open_head(store: &Store) -> Result<std::fs::File, AuditError> {
    store
        .dir
        .open_file(&store.head(), cap_std::fs::OpenOptions::new().create(true).truncate(false).write(true))
        .map_err(|e| db_err(&store.db_path(), format!("cannot open the head file: {e}")))
}

/// Journals beside the database whose process is gone, by name.
fn dead_journals(store: &Store) -> Vec<String> {
    let prefix = store.journal_prefix();
    let Ok(names) = store.dir.names() else { return Vec::new() };
    names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(&prefix)
                .and_then(|owner| owner.split_once('.'))
                .is_some_and(|(pid, start)| !crate::process::alive(pid, start))
        })
        .collect()
}

fn recover_with(
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
fn read_journal(store: &Store, name: &str) -> std::io::Result<(Vec<Pending>, usize)> {
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
fn write_head(head: &std::fs::File, seq: i64, hash: &str, key: &Key) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mac = key.mac(&["head", &seq.to_string(), hash]);
    head.write_all_at(format!("{seq:020} {hash} {mac}\n").as_bytes(), 0)
}

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
        log.record(Event { kind: "retention".into(), request_id: None, data, code: None })?;
    }
    Ok(n)
}

/// A read-write connection to the database at `path` (for the approval queue,
/// which keeps its table there), opened as the log's own: through the checked
/// state directory, never through a link, owner-only.
///
/// # Errors
/// The directory is refused, or the database cannot be opened.
pub fn connect(path: &Path) -> Result<Connection, AuditError> {
    let store = Store::at(path)?;
    let db = store.db_path();
    store.dir.private_file(&store.name).map_err(|e| db_err(&db, e))?;
    Connection::open_with_flags(&db, flags(false)).map_err(|e| db_err(&db, e))
}

fn read_only(path: &Path) -> Result<Connection, AuditError> {
    let store = Store::at(path)?;
    Connection::open_with_flags(store.db_path(), flags(true)).map_err(|e| db_err(path, e))
}

/// A [`Row`] from `SELECT seq, ts_us, kind, request_id, data, hash`.
fn to_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let data: String = r.get(4)?;
    Ok(Row {
        seq: r.get(0)?,
        ts_us: r.get(1)?,
        kind: r.get(2)?,
        request_id: r.get(3)?,
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
        hash: r.get(5)?,
    })
}

/// What [`verify`] found wrong, one line per problem, naming the row.
pub type Problems = Vec<String>;

/// Checks the log at `path`, after replaying the journals of processes that are
/// gone ([`recover`], which replays only lines the key vouches for): every row's
/// hash is its MAC under the audit key (rows written before the key, with the
/// unkeyed hashes, are accepted only before the first keyed row) and follows the
/// previous row's; seqs have no gaps; the first row follows the authenticated
/// anchor after retention; the head file exists, is authentic and names no row
/// beyond the last; every stored text hashes to its key and every request that ran
/// has its text stored; every `approval_completed` follows an `approval_approved`
/// of the same item; no journal was set aside as not authentic. What it cannot
/// detect is in [`key`]'s docs.
///
/// # Errors
/// The database cannot be opened or read.
pub fn verify(path: &Path) -> Result<(u64, Problems), AuditError> {
    let recovered = recover(path);
    let store = Store::at(path)?;
    let key = Key::load(false);
    let c = read_only(path)?;
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
        .prepare("SELECT seq, ts_us, kind, request_id, data, prev_hash, hash, uid FROM events ORDER BY seq")
        .map_err(|e| db_err(path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                ),
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ))
        })
        .map_err(|e| db_err(path, e))?;
    let (mut expected, mut prev, mut count) = (first, genesis, 0u64);
    let mut approved = std::collections::HashSet::new();
    let mut code_needed: Vec<(i64, String)> = Vec::new();
    for row in rows {
        let ((seq, ts, kind, rid, data), prev_hash, hash, uid) = row.map_err(|e| db_err(path, e))?;
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
            data: &data,
        };
        // Every row is a MAC under the key: a row hashed any other way (written
        // before the key, or by someone without it) cannot be told from a forgery.
        let keyed = key.as_ref().is_some_and(|k| k.verify_hex(&keyed_row_hash(k, &fields), &hash));
        if key.is_none() {
            problems.push(format!("row {seq}: cannot be checked without the audit key"));
        } else if !keyed {
            problems.push(format!("row {seq}: its content does not match its MAC (edited or forged)"));
        }
        if kind == "chain_break" {
            problems.push(format!("row {seq}: a writer found the log changed behind it: {data}"));
        }
        let data_json: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
        match kind.as_str() {
            "approval_approved" => {
                approved.insert(rid.clone().unwrap_or_default());
            }
            "approval_completed" if !approved.contains(&rid.clone().unwrap_or_default()) => {
                problems.push(format!(
                    "row {seq}: {} completed without an approval_approved before it",
                    rid.as_deref().unwrap_or("an approval")
                ));
            }
            "request" if data_json.get("refused").is_none() => {
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
    let code =
        texts.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| db_err(path, e))?;
    for row in code {
        let (sha, text) = row.map_err(|e| db_err(path, e))?;
        if sha256_hex(text.as_bytes()) != sha {
            problems.push(format!("stored code {sha}: its text does not match its hash (edited)"));
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
    if let Ok(names) = store.dir.names() {
        for name in names.into_iter().filter(|n| n.starts_with(&store.rejected_prefix())) {
            problems.push(format!("{name}: a journal with lines the audit key does not vouch for was set aside"));
        }
    }
    Ok((count, problems))
}

/// The row at `seq`.
///
/// # Errors
/// The database cannot be read.
pub fn row(path: &Path, seq: i64) -> Result<Option<Row>, AuditError> {
    let c = read_only(path)?;
    c.query_row("SELECT seq, ts_us, kind, request_id, data, hash FROM events WHERE seq = ?1", [seq], to_row)
        .optional()
        .map_err(|e| db_err(path, e))
}

/// The last `n` rows, oldest first.
///
/// # Errors
/// The database cannot be read.
pub fn tail(path: &Path, n: usize) -> Result<Vec<Row>, AuditError> {
    let c = read_only(path)?;
    let mut stmt = c
        .prepare(
            "SELECT seq, ts_us, kind, request_id, data, hash FROM
             (SELECT * FROM events ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
        )
        .map_err(|e| db_err(path, e))?;
    let rows = stmt.query_map([i64::try_from(n).unwrap_or(i64::MAX)], to_row).map_err(|e| db_err(path, e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err(path, e))
}

/// The newest `breaker` event of each breaker (its last transition), by name.
///
/// # Errors
/// The database cannot be read.
pub fn breaker_transitions(path: &Path) -> Result<Vec<Row>, AuditError> {
    let c = read_only(path)?;
    let mut stmt = c
        .prepare(
            "SELECT seq, ts_us, kind, request_id, data, hash FROM events WHERE seq IN
             (SELECT MAX(seq) FROM events WHERE kind = 'breaker' GROUP BY json_extract(data, '$.breaker'))
             ORDER BY json_extract(data, '$.breaker')",
        )
        .map_err(|e| db_err(path, e))?;
    let rows = stmt.query_map([], to_row).map_err(|e| db_err(path, e))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_err(path, e))
}

/// The source stored under `sha256`.
///
/// # Errors
/// The database cannot be read.
pub fn code(path: &Path, sha256: &str) -> Result<Option<String>, AuditError> {
    let c = read_only(path)?;
    c.query_row("SELECT text FROM code WHERE sha256 = ?1", [sha256], |r| r.get(0))
        .optional()
        .map_err(|e| db_err(path, e))
}

/// Copies the live database to `dest` with SQLite's online backup (writers keep
/// going meanwhile).
///
/// # Errors
/// Either database cannot be opened, or the copy fails.
pub fn backup(path: &Path, dest: &Path) -> Result<(), AuditError> {
    let src = read_only(path)?;
    // The copy holds snippets' source too: it goes in a directory that is this
    // user's and closed to others (checked like the state directory), created
    // 0600 or checked through that directory's handle, never through a link.
    let parent = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name =
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| db_err(dest, "not a file name"))?;
    let dir = OwnedDir::open(parent, "backup directory")?;
    let checked = dir.private_file(&name).map_err(|e| db_err(dest, e))?;
    let mut dst = Connection::open_with_flags(&checked, flags(false)).map_err(|e| db_err(dest, e))?;
    let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_err(dest, e))?;
    b.run_to_completion(256, std::time::Duration::from_millis(5), None).map_err(|e| db_err(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_hash_covers_every_field_unambiguously() {
        let base =
            RowFields { prev: GENESIS, seq: 1, uid: "u", ts_us: 5, kind: "ab", request_id: Some("c"), data: "{}" };
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
    }
}
