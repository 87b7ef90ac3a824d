//! Backups that are proven: a backup is the database copied with SQLite's online
//! backup and a head file for the copy, so that `terrarium audit verify --db FILE`
//! checks it as it checks the live log; a restore checks a backup first, copies it
//! into a state directory that holds no log yet, and gives it a head, so that the
//! next process to open it continues its chain.
//!
//! # Security invariants
//! - A restore never installs a log that does not verify under the audit key (a
//!   backup edited, truncated or made with another key is refused, with what is
//!   wrong), and never overwrites a log: the target must hold none (no database,
//!   head or journal).
//! - Every file is created owner-only through a checked directory handle, never
//!   through a link (see [`crate::dirs`]).

use super::*;

/// What a backup or restore copied: how many events, and the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copied {
    /// Events in the copy.
    pub events: u64,
    /// The last event's seq (0 for an empty log).
    pub last_seq: i64,
    /// Its hash (the genesis hash for an empty log).
    pub last_hash: String,
}

/// A database file's checked directory and name (created owner-only when absent).
fn checked_file(path: &Path, what: &str) -> Result<(OwnedDir, String), AuditError> {
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| db_err(path, "not a file name"))?;
    Ok((OwnedDir::open(parent, what)?, name))
}

/// Copies the database `from` into `to` (a file that is created owner-only) with
/// SQLite's online backup (writers of `from` keep going), writes `to`'s head file
/// for the copy's last row, and returns what was copied.
fn copy_with_head(from: &Path, to: &Path, what: &str, key: &Key) -> Result<Copied, AuditError> {
    let src = read_only(from)?;
    let (dir, name) = checked_file(to, what)?;
    let checked = dir.private_file(&name).map_err(|e| db_err(to, e))?;
    let mut dst = Connection::open_with_flags(&checked, flags(false)).map_err(|e| db_err(to, e))?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_err(to, e))?;
        b.run_to_completion(256, Duration::from_millis(5), None).map_err(|e| db_err(to, e))?;
    }
    let last: Option<(i64, String)> = dst
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| db_err(to, e))?;
    let events: i64 = dst.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).map_err(|e| db_err(to, e))?;
    // Retention may have left only the anchor: the chain then ends there.
    let anchor: Option<(i64, String)> = dst
        .query_row("SELECT seq, hash FROM anchor WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .unwrap_or(None);
    let (last_seq, last_hash) = last.or(anchor).unwrap_or_else(|| (0, GENESIS.to_string()));
    drop(dst);
    if events > 0 {
        let store = Store { dir, name, key: None };
        let head = open_head(&store)?;
        write_head(&head, last_seq, &last_hash, key)
            .map_err(|e| db_err(to, format!("cannot write its head file: {e}")))?;
        head.sync_all().map_err(|e| db_err(to, e))?;
    }
    Ok(Copied { events: u64::try_from(events).unwrap_or(0), last_seq, last_hash })
}

/// Copies the live database at `path` to `dest` with SQLite's online backup
/// (writers keep going meanwhile), with a head file for the copy
/// (`DEST.head`), so that the copy verifies on its own.
///
/// # Errors
/// Either database cannot be opened, the copy fails, or the audit key cannot be
/// loaded (it signs the copy's head).
pub fn backup(path: &Path, dest: &Path) -> Result<Copied, AuditError> {
    // Journals of processes that are gone go into the database first, so that
    // the copy holds every event that is durable now.
    recover(path)?;
    let key = Key::load(false)?;
    copy_with_head(path, dest, "backup directory", &key)
}

/// Restores the backup `from` as the log at `to`: `to`'s directory must hold no
/// log yet (no database, head or journal of that name). The backup and its head
/// file are copied in under a staging name first, the copy is verified (see
/// [`verify`]), and only a copy that verifies is renamed into place: what is
/// checked is what is installed, whatever happens to `from` meanwhile. The next
/// process that opens the log appends after its last row.
///
/// # Errors
/// [`AuditError::Database`] naming what is wrong: the target already holds a log,
/// the backup or its head cannot be read, the copy does not verify (each
/// problem; the staging copy is removed), or a step failed.
pub fn restore(from: &Path, to: &Path) -> Result<Copied, AuditError> {
    let (dir, name) = checked_file(to, "state directory")?;
    let existing: Vec<String> = dir
        .names()
        .map_err(|e| db_err(to, e))?
        .into_iter()
        .filter(|n| n == &name || n.starts_with(&format!("{name}.")) || n.starts_with(&format!("{name}-")))
        .collect();
    if !existing.is_empty() {
        return Err(db_err(
            to,
            format!("a log is there already ({}); restore into a state directory without one", existing.join(", ")),
        ));
    }
    let staging = format!("{name}.restoring");
    let staged = dir.path().join(&staging);
    let cleanup = || {
        for suffix in ["", ".head", "-wal", "-shm", "-journal"] {
            let _ = dir.remove(&format!("{staging}{suffix}"));
        }
    };
    let copied = (|| {
        // The database, copied by SQLite from the backup as it is now.
        let src = read_only(from)?;
        let target = dir.private_file(&staging).map_err(|e| db_err(to, e))?;
        let mut dst = Connection::open_with_flags(&target, flags(false)).map_err(|e| db_err(to, e))?;
        {
            let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_err(to, e))?;
            b.run_to_completion(256, Duration::from_millis(5), None).map_err(|e| db_err(to, e))?;
        }
        dst.pragma_update(None, "journal_mode", "DELETE").map_err(|e| db_err(to, e))?;
        drop(dst);
        drop(src);
        // Its head file, as the backup has it (never one made here: a head signed
        // now would vouch for whatever was copied).
        let head = head_bytes(from)?;
        let mut f = dir.create_new(&format!("{staging}.head")).map_err(|e| db_err(to, e))?;
        f.write_all(&head).and_then(|()| f.sync_all()).map_err(|e| db_err(to, e))?;
        let (_, problems) = verify(&staged)?;
        if !problems.is_empty() {
            return Err(db_err(
                from,
                format!("the backup does not verify, so it is not restored: {}", problems.join("; ")),
            ));
        }
        summary(&staged)
    })();
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    // Head first: a database without its head would not open as intact.
    let moved =
        dir.rename(&format!("{staging}.head"), &format!("{name}.head")).and_then(|()| dir.rename(&staging, &name));
    if let Err(e) = moved {
        cleanup();
        let _ = dir.remove(&format!("{name}.head"));
        return Err(db_err(to, format!("cannot move the verified copy into place: {e}")));
    }
    Ok(copied)
}

/// The bytes of the head file beside the backup `from` (`FROM.head`), read
/// without following a link, from a regular file of at most 4 KiB.
fn head_bytes(from: &Path) -> Result<Vec<u8>, AuditError> {
    let (dir, name) = checked_file(from, "backup directory")?;
    let head = format!("{name}.head");
    let mut f = dir.read(&head).map_err(|e| db_err(from, format!("its head file {head}: {e}")))?.ok_or_else(|| {
        db_err(from, format!("its head file {head} is missing (a backup is the database and its head)"))
    })?;
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        Read::by_ref(&mut f).take(4096).read_to_end(&mut bytes).map_err(|e| db_err(from, e))?;
    }
    Ok(bytes)
}

/// How many events the log at `path` holds, and its last one.
fn summary(path: &Path) -> Result<Copied, AuditError> {
    let c = read_only(path)?;
    let events: i64 = c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).map_err(|e| db_err(path, e))?;
    let last: Option<(i64, String)> = c
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| db_err(path, e))?;
    let (last_seq, last_hash) = last.unwrap_or_else(|| (0, GENESIS.to_string()));
    Ok(Copied { events: u64::try_from(events).unwrap_or(0), last_seq, last_hash })
}
