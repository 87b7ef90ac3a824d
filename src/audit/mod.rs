//! The audit log: every request and decision, in SQLite, hash-chained.
//!
//! One row per event (`events`: seq, time, kind, request id, JSON data, the previous
//! row's hash and this row's hash, where `hash = sha256(prev_hash, seq, time, kind,
//! request id, data)`); snippet source is stored once per sha256 (`code`). A single
//! writer thread owns the connection (WAL, `synchronous=NORMAL`: a committed event
//! survives the process being killed) and commits events in groups; [`AuditLog::record`]
//! returns once its event is durable, so a caller that waits on it before answering
//! never answers for an unrecorded request.
//!
//! When the database cannot be written (locked, read-only, disk full; breaker
//! `database` open), events go to an append-only spill file beside it and are
//! replayed, in order, by the next batch that can write. Each event carries a
//! random id, so a replay interrupted after its commit inserts nothing twice. After
//! every commit the last row's seq and hash go to a head file, so that deleting
//! the newest rows is detected too.
//!
//! # Invariant
//! Nothing is lost: an event is acknowledged only after it is committed or written
//! to the spill file, and [`verify`] names any row that was edited, deleted,
//! inserted or reordered.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::breaker::Breaker;

/// Hash before the first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events committed in one transaction at most.
const BATCH: usize = 512;
/// How long the writer waits for a lock before it counts the database unavailable.
const BUSY_MS: u64 = 200;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite said no.
    #[error("audit database {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// Neither the database nor the spill file took the event: it is not recorded.
    #[error("audit event not recorded: the database failed ({db}) and so did the spill file ({spill})")]
    Lost {
        /// The database's error.
        db: String,
        /// The spill file's error.
        spill: String,
    },
    /// The writer thread is gone.
    #[error("the audit writer has stopped")]
    Stopped,
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

/// An event on its way to the database or the spill file.
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
type Ack = Option<tokio::sync::oneshot::Sender<Result<(), AuditError>>>;

/// A handle on the log; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::SyncSender<(Pending, Ack)>,
    path: PathBuf,
}

/// Where the audit database lives by default: `audit.db` in `$TERRARIUM_HOME`,
/// else in `$XDG_DATA_HOME/terrarium`, else in `~/.local/share/terrarium` (created
/// 0700).
///
/// # Errors
/// No home directory to put it in, or the directory cannot be created.
pub fn default_path() -> Result<PathBuf, AuditError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = env("TERRARIUM_HOME")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("terrarium")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/terrarium")))
        .ok_or_else(|| AuditError::Database {
            path: PathBuf::from("audit.db"),
            message: "no TERRARIUM_HOME, XDG_DATA_HOME or HOME to keep the audit log in".into(),
        })?;
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| db_err(&dir, e))?;
    }
    Ok(dir.join("audit.db"))
}

/// sha256 of `text`, hex.
pub fn sha256_hex(text: &[u8]) -> String {
    Sha256::digest(text).iter().map(|b| format!("{b:02x}")).collect()
}

fn row_hash(prev: &str, seq: i64, ts_us: i64, kind: &str, request_id: Option<&str>, data: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), &ts_us.to_string(), kind, request_id.unwrap_or(""), data] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Database { path: path.to_path_buf(), message: e.to_string() }
}

fn spill_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".spill");
    PathBuf::from(p)
}

fn head_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

fn open(path: &Path) -> Result<Connection, AuditError> {
    let c = Connection::open(path).map_err(|e| db_err(path, e))?;
    c.busy_timeout(std::time::Duration::from_millis(BUSY_MS)).map_err(|e| db_err(path, e))?;
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
    Ok(c)
}

impl AuditLog {
    /// Opens (creating) the log at `path`; `database` is the breaker that guards it.
    ///
    /// # Errors
    /// The database cannot be created or opened at all.
    pub fn open(path: &Path, database: Breaker) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| db_err(path, e))?;
        }
        let conn = open(path)?;
        let (tx, rx) = mpsc::sync_channel::<(Pending, Ack)>(4096);
        let spilled = spill_path(path).exists();
        let head = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(head_path(path))
            .map_err(|e| db_err(path, format!("cannot open the head file: {e}")))?;
        let writer = Writer { conn: Some(conn), path: path.to_path_buf(), breaker: database, spilled, head };
        std::thread::Builder::new()
            .name("terrarium-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| db_err(path, format!("cannot start the writer: {e}")))?;
        Ok(AuditLog { tx, path: path.to_path_buf() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `event` and waits until it is durable (committed, or in the spill
    /// file). Blocking; see [`AuditLog::record_async`].
    ///
    /// # Errors
    /// [`AuditError::Lost`] when neither the database nor the spill file took it.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        self.tx.send((pending(event), Some(ack_tx))).map_err(|_| AuditError::Stopped)?;
        ack_rx.blocking_recv().map_err(|_| AuditError::Stopped)?
    }

    /// Queues `event` without waiting for it to be durable (for notifications made
    /// where waiting could deadlock, e.g. breaker transitions inside the writer).
    /// A full queue drops it with a warning in the log.
    pub fn record_nowait(&self, event: Event) {
        if self.tx.try_send((pending(event), None)).is_err() {
            tracing::warn!("audit queue full or stopped: a notification event was dropped");
        }
    }

    /// Records `events` in order and waits until the last is durable (the writer
    /// commits in order, so then all are).
    ///
    /// # Errors
    /// As [`AuditLog::record`], for any of them.
    pub async fn record_all_async(&self, events: Vec<Event>) -> Result<(), AuditError> {
        let mut acks = Vec::new();
        for e in events {
            let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
            self.send_async((pending(e), Some(ack_tx))).await?;
            acks.push(ack_rx);
        }
        for ack in acks {
            ack.await.map_err(|_| AuditError::Stopped)??;
        }
        Ok(())
    }

    /// Queues one item, waiting (without holding a thread) while the queue is full.
    async fn send_async(&self, item: (Pending, Ack)) -> Result<(), AuditError> {
        let mut item = Some(item);
        while let Some(i) = item.take() {
            match self.tx.try_send(i) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(back)) => {
                    item = Some(back);
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(AuditError::Stopped),
            }
        }
        Ok(())
    }

    /// [`AuditLog::record`] without blocking an async runtime's thread.
    ///
    /// # Errors
    /// As [`AuditLog::record`].
    pub async fn record_async(&self, event: Event) -> Result<(), AuditError> {
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        self.send_async((pending(event), Some(ack_tx))).await?;
        ack_rx.await.map_err(|_| AuditError::Stopped)?
    }
}

fn pending(event: Event) -> Pending {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut uid = [0u8; 16];
    let _ = getrandom::getrandom(&mut uid);
    Pending {
        uid: uid.iter().map(|b| format!("{b:02x}")).collect(),
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
    breaker: Breaker,
    /// Whether the spill file may hold events to replay.
    spilled: bool,
    /// The head file, rewritten in place after every commit.
    head: std::fs::File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<(Pending, Ack)>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let (events, acks): (Vec<Pending>, Vec<Ack>) = batch.into_iter().unzip();
            let result = self.store(&events);
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(AuditError::Lost { db, spill }) => {
                        Err(AuditError::Lost { db: db.clone(), spill: spill.clone() })
                    }
                    Err(e) => Err(AuditError::Lost { db: e.to_string(), spill: String::new() }),
                });
            }
        }
    }

    /// Commits `events` (after any spilled ones), or appends them to the spill file.
    fn store(&mut self, events: &[Pending]) -> Result<(), AuditError> {
        let db_error = match self.breaker.allow() {
            Err(open) => open.to_string(),
            Ok(permit) => match self.commit(events) {
                Ok(()) => {
                    permit.succeeded();
                    return Ok(());
                }
                Err(e) => {
                    permit.failed(&e.to_string());
                    e.to_string()
                }
            },
        };
        tracing::warn!(error = %db_error, events = events.len(), "audit database unavailable; spilling");
        let spill = spill_path(&self.path);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().create(true).append(true).open(&spill)?;
            let mut buf = Vec::new();
            for e in events {
                serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_data()
        };
        let r = write().map_err(|e| AuditError::Lost { db: db_error, spill: e.to_string() });
        self.spilled = true;
        r
    }

    fn commit(&mut self, events: &[Pending]) -> Result<(), AuditError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        let path = self.path.clone();
        let spill = spill_path(&path);
        let spilled = if self.spilled {
            read_spill(&spill).map_err(|e| db_err(&path, format!("cannot read the spill file: {e}")))?
        } else {
            Vec::new()
        };
        let conn = self.conn.as_mut().ok_or_else(|| db_err(&path, "no connection"))?;
        let r = (|| -> rusqlite::Result<(i64, String)> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (mut seq, mut prev): (i64, String) = tx
                .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, GENESIS.to_string()));
            for e in spilled.iter().chain(events) {
                let seen: Option<i64> =
                    tx.query_row("SELECT seq FROM events WHERE uid = ?1", [&e.uid], |r| r.get(0)).optional()?;
                if seen.is_some() {
                    continue;
                }
                seq += 1;
                let hash = row_hash(&prev, seq, e.ts_us, &e.kind, e.request_id.as_deref(), &e.data);
                tx.execute(
                    "INSERT INTO events (seq, uid, ts_us, kind, request_id, data, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![seq, e.uid, e.ts_us, e.kind, e.request_id, e.data, prev, hash],
                )?;
                if let Some((sha, text)) = &e.code {
                    tx.execute("INSERT OR IGNORE INTO code (sha256, text) VALUES (?1, ?2)", params![sha, text])?;
                }
                prev = hash;
            }
            tx.commit()?;
            Ok((seq, prev))
        })();
        let (seq, hash) = match r {
            Ok(v) => v,
            Err(e) => {
                // A fresh connection next time (the file may have been replaced).
                self.conn = None;
                return Err(db_err(&path, e));
            }
        };
        if self.spilled {
            match std::fs::remove_file(&spill) {
                Ok(()) => tracing::info!(replayed = spilled.len(), "audit spill file replayed into the database"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(db_err(&path, format!("cannot clear the spill file: {e}"))),
            }
            self.spilled = false;
        }
        write_head(&self.head, seq, &hash).map_err(|e| db_err(&path, format!("cannot write the head file: {e}")))?;
        Ok(())
    }
}

fn read_spill(path: &Path) -> std::io::Result<Vec<Pending>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        // A line cut short by a crash mid-write was never acknowledged: skip it.
        if let Ok(p) = serde_json::from_str::<Pending>(&line) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Rewrites the head file in place with one fixed-size write (a process killed
/// mid-way cannot tear a single small write).
fn write_head(head: &std::fs::File, seq: i64, hash: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    head.write_all_at(format!("{seq:020} {hash}\n").as_bytes(), 0)
}

/// Deletes the events recorded before `cutoff_us` (microseconds since the epoch),
/// keeping the chain verifiable: the last deleted row's seq and hash become the
/// anchor the remaining rows are checked from. Returns how many were deleted. The
/// caller records a `retention` event saying so (see [`prune_days`]).
///
/// # Errors
/// The database cannot be written.
pub fn prune_before(path: &Path, cutoff_us: i64) -> Result<usize, AuditError> {
    let mut c = open(path)?;
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
    tx.execute("INSERT OR REPLACE INTO anchor (id, seq, hash) VALUES (1, ?1, ?2)", params![seq, hash])
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

fn read_only(path: &Path) -> Result<Connection, AuditError> {
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| db_err(path, e))
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

/// Checks the hash chain of the log at `path` (read-only): every row's hash
/// matches its content, follows the previous row's, seqs have no gaps, and the
/// last row is the one the head file names.
///
/// # Errors
/// The database cannot be opened or read.
pub fn verify(path: &Path) -> Result<(u64, Problems), AuditError> {
    let c = read_only(path)?;
    let mut stmt = c
        .prepare("SELECT seq, ts_us, kind, request_id, data, prev_hash, hash FROM events ORDER BY seq")
        .map_err(|e| db_err(path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .map_err(|e| db_err(path, e))?;
    let mut problems = Vec::new();
    // After retention, the chain starts from the last deleted row.
    let anchor: Option<(i64, String)> = c
        .query_row("SELECT seq, hash FROM anchor WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .unwrap_or(None);
    let (first, genesis) = anchor.map_or((1, GENESIS.to_string()), |(s, h)| (s + 1, h));
    let (mut expected, mut prev, mut count) = (first, genesis, 0u64);
    for row in rows {
        let (seq, ts, kind, rid, data, prev_hash, hash) = row.map_err(|e| db_err(path, e))?;
        count += 1;
        if seq != expected {
            problems.push(format!("rows {expected}..{} are missing (deleted)", seq - 1));
        } else if prev_hash != prev {
            problems.push(format!("row {seq}: does not follow row {} (rows reordered, replaced or inserted)", seq - 1));
        }
        if row_hash(&prev_hash, seq, ts, &kind, rid.as_deref(), &data) != hash {
            problems.push(format!("row {seq}: its content does not match its hash (edited)"));
        }
        expected = seq + 1;
        prev = hash;
    }
    if let Ok(head) = std::fs::read_to_string(head_path(path)) {
        let mut parts = head.split_whitespace();
        if let (Some(seq), Some(hash)) = (parts.next().and_then(|s| s.parse::<i64>().ok()), parts.next()) {
            if seq >= expected {
                problems.push(format!("rows {expected}..{seq} are missing (the newest rows were deleted)"));
            } else if seq == expected - 1 && hash != prev {
                problems.push(format!("row {seq}: not the row last committed (replaced)"));
            }
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
    let mut dst = Connection::open(dest).map_err(|e| db_err(dest, e))?;
    let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_err(dest, e))?;
    b.run_to_completion(256, std::time::Duration::from_millis(5), None).map_err(|e| db_err(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_hash_covers_every_field_unambiguously() {
        let a = row_hash(GENESIS, 1, 5, "ab", Some("c"), "{}");
        assert_ne!(a, row_hash(GENESIS, 1, 5, "a", Some("bc"), "{}"), "field boundaries must count");
        assert_ne!(a, row_hash(GENESIS, 2, 5, "ab", Some("c"), "{}"));
        assert_eq!(a, row_hash(GENESIS, 1, 5, "ab", Some("c"), "{}"));
    }
}
