//! Where the log's files live and how they are opened: through the checked state
//! directory (see [`crate::dirs`]), never through a link, owner-only.

use super::*;

/// Where the database at `path` lives: its checked directory and its file name.
/// Every file of the log is opened through this handle (see [`crate::dirs`]).
pub(super) struct Store {
    pub(super) dir: OwnedDir,
    pub(super) name: String,
    /// The key, for a store that writes (see [`Store::writable`]).
    pub(super) key: Option<Key>,
}

impl Store {
    /// The store at `path`, with its key (created on first use): for writing.
    pub(super) fn writable(path: &Path) -> Result<Store, AuditError> {
        let mut store = Store::at(path)?;
        store.key = Some(Key::load(true)?);
        Ok(store)
    }

    pub(super) fn key(&self) -> Result<&Key, AuditError> {
        self.key.as_ref().ok_or_else(|| db_err(&self.db_path(), "the audit key is not loaded"))
    }

    pub(super) fn at(path: &Path) -> Result<Store, AuditError> {
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

    pub(super) fn head(&self) -> String {
        format!("{}.head", self.name)
    }

    /// `audit.db.journal.` — journals are this prefix plus `<pid>.<start time>`.
    pub(super) fn journal_prefix(&self) -> String {
        format!("{}.journal.", self.name)
    }

    /// `audit.db.rejected.` — a journal with lines that are not authentic is set
    /// aside under this prefix (and named by `verify`) instead of removed.
    pub(super) fn rejected_prefix(&self) -> String {
        format!("{}.rejected.", self.name)
    }

    /// The database's resolved path (for messages and SQLite).
    pub(super) fn db_path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }
}

/// SQLite never opens the database through a symbolic link.
pub(super) fn flags(read_only: bool) -> rusqlite::OpenFlags {
    use rusqlite::OpenFlags as F;
    let base =
        if read_only { F::SQLITE_OPEN_READ_ONLY | F::SQLITE_OPEN_URI | F::SQLITE_OPEN_NO_MUTEX } else { F::default() };
    base | F::SQLITE_OPEN_NOFOLLOW
}

pub(super) fn open(store: &Store) -> Result<Connection, AuditError> {
    let path = store.db_path();
    let path = &path;
    // The log holds snippets' source: owner only (SQLite gives its -wal and -shm
    // files the database's mode). Created, or checked, through the directory handle.
    store.dir.private_file(&store.name).map_err(|e| db_err(path, e))?;
    let c = Connection::open_with_flags(path, flags(false)).map_err(|e| db_err(path, e))?;
    c.busy_timeout(Duration::from_millis(BUSY_MS)).map_err(|e| db_err(path, e))?;
    // Two processes creating the log at once: SQLite may answer the second's switch
    // to WAL with SQLITE_BUSY at once, without waiting (its busy handler is not
    // called where waiting could deadlock). It is retried until the first is done.
    retry_busy(|| {
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
    })
    .map_err(|e| db_err(path, e))?;
    // Anchors made before the key have no MAC (verify names them); rows made
    // before encryption at rest have no digest.
    add_column(&c, "anchor", "mac").map_err(|e| db_err(path, e))?;
    add_column(&c, "events", "digest").map_err(|e| db_err(path, e))?;
    // The newest sealed row, found at once (see sealing::sealed_id).
    retry_busy(|| {
        c.execute_batch("CREATE INDEX IF NOT EXISTS events_sealed_bytes ON events (seq) WHERE typeof(data) = 'blob'")
    })
    .map_err(|e| db_err(path, e))?;
    Ok(c)
}

/// Adds the TEXT column `column` to `table` unless it is there.
fn add_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    let has = || {
        c.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))
            .and_then(|mut s| s.exists([column]))
    };
    if has()? {
        return Ok(());
    }
    match c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT")) {
        // Another process may have added it meanwhile.
        Err(_) if has().unwrap_or(false) => Ok(()),
        r => r,
    }
}

/// Runs `f` again while SQLite answers busy or locked without having waited, for
/// up to 5 s (creating the log takes milliseconds).
pub(crate) fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut pause = Duration::from_millis(5);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            r => return r,
        }
    }
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

pub(super) fn read_only(path: &Path) -> Result<Connection, AuditError> {
    let store = Store::at(path)?;
    Connection::open_with_flags(store.db_path(), flags(true)).map_err(|e| db_err(path, e))
}

/// The columns [`to_row`] reads.
pub(super) const ROW: &str = "seq, ts_us, kind, request_id, data, hash, uid, digest";

/// A [`Row`] from `SELECT` [`ROW`], its data opened under `key` when sealed (when
/// it cannot be, the data says why).
pub(super) fn to_row(
    r: &rusqlite::Row<'_>,
    key: Option<&crate::seal::DataKey>,
    sealed_since: Option<i64>,
) -> rusqlite::Result<Row> {
    let (uid, seq, kind): (String, i64, String) = (r.get(6)?, r.get(0)?, r.get(2)?);
    let unsealed = sealing::should_be_sealed(&kind, seq, sealed_since);
    Ok(Row {
        seq,
        ts_us: r.get(1)?,
        data: sealing::shown_data(r.get(4)?, key, &uid, r.get::<_, Option<String>>(7)?.as_deref(), unsealed),
        kind,
        request_id: r.get(3)?,
        hash: r.get(5)?,
    })
}
