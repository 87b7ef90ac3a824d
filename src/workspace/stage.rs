//! A run's private copy of a workspace, the change set read back from it, and the
//! versions made from change sets and rollbacks.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, PermissionsExt as _};

use super::manifest::{self, Change, Entry, Kind, Manifest};
use super::{Quota, Workspace, WorkspaceError, tree};

/// Most files a run may hold open under its copy at once (the docker tier's
/// open-files limit; on wasm the guest's files are Terrarium's own descriptors).
pub const MAX_OPEN: usize = 256;

/// A run's copy of a workspace's current version, removed when dropped.
#[derive(Debug)]
pub struct Staged {
    workspace: String,
    /// The version the copy holds (moved on when a session's copy is reset to
    /// a newer one).
    base: std::sync::Mutex<Manifest>,
    staging: Dir,
    name: String,
    dir: Dir,
    path: PathBuf,
}

/// What a run changed, read back by the host from its copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeSet {
    /// The workspace.
    pub workspace: String,
    /// The version the run's copy was made from.
    pub base: u64,
    /// Each changed path.
    pub changes: Vec<Change>,
    /// sha256 of the change set ([`manifest::digest`]).
    pub digest: String,
    #[serde(skip)]
    entries: BTreeMap<String, Entry>,
}

impl Staged {
    /// The version the copy was made from.
    pub fn base(&self) -> u64 {
        self.base_manifest().version
    }

    fn base_manifest(&self) -> Manifest {
        self.base.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The workspace.
    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    /// The copy's path (for the docker engine, which mounts by path; the
    /// directories above it are this user's and closed to others).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that leads to the copy whatever happens to its name (its handle's
    /// `/proc/self/fd` entry, valid while `self` lives).
    pub fn by_handle(&self) -> String {
        format!("/proc/self/fd/{}", self.dir.as_raw_fd())
    }

    /// Whether the copy is past `quota` now (entries, a file's size, the total), files
    /// this process holds open under it after their names were removed included
    /// (a wasm guest's open files are this process's descriptors; a container's
    /// are bounded by its file-size and open-files limits).
    pub fn over_quota(&self, quota: &Quota) -> Option<String> {
        if let Some(why) = tree::over_quota(&self.dir, quota) {
            return Some(why);
        }
        let (open, held) = self.open_under();
        if open > MAX_OPEN {
            return Some(format!("more than {MAX_OPEN} files open under it at once"));
        }
        if let Some(big) = held.iter().find(|n| **n > quota.max_file_bytes) {
            return Some(format!("a file removed while open holds {big} bytes, more than max_file_size"));
        }
        let held: u64 = held.iter().sum();
        if held == 0 {
            return None;
        }
        let mut seen = *quota;
        seen.max_total_bytes = quota.max_total_bytes.saturating_sub(held);
        tree::over_quota(&self.dir, &seen).map(|_| {
            format!(
                "more than max_total_size ({} bytes) in all, {held} of them in files removed while open",
                quota.max_total_bytes
            )
        })
    }

    /// How many descriptors of this process lead under the copy (a wasm guest's
    /// open files are this process's), and the sizes of those whose names were
    /// removed. A descriptor whose path is too long to read back counts when it
    /// is a removed file on the copy's file system (a guest can nest deeper than
    /// a path can name).
    fn open_under(&self) -> (usize, Vec<u64>) {
        use std::os::unix::fs::MetadataExt as _;
        let prefix = format!("{}/", self.path.display());
        let dev = self.dir.dir_metadata().ok().map(|m| cap_std::fs::MetadataExt::dev(&m));
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return (0, Vec::new()) };
        let (mut open, mut removed) = (0, Vec::new());
        for fd in fds.flatten() {
            match std::fs::read_link(fd.path()) {
                Ok(target) => {
                    let target = target.to_string_lossy();
                    if target.starts_with(&prefix) {
                        open += 1;
                        if target.ends_with(" (deleted)") {
                            removed.push(std::fs::metadata(fd.path()).map_or(0, |m| m.len()));
                        }
                    }
                }
                Err(_) => {
                    if let Ok(m) = std::fs::metadata(fd.path())
                        && m.is_file()
                        && m.nlink() == 0
                        && Some(m.dev()) == dev
                    {
                        open += 1;
                        removed.push(m.len());
                    }
                }
            }
        }
        (open, removed)
    }

    /// Opens a file of the copy for reading, no link followed.
    fn open(&self, path: &str) -> io::Result<std::fs::File> {
        let (parent, name) = tree::split(path);
        let mut o = OpenOptions::new();
        o.read(true).follow(FollowSymlinks::No);
        cap_std::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK | libc::O_NOCTTY);
        let f = tree::open_dir(&self.dir, parent)?.open_with(name, &o)?.into_std();
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!("{path} is no longer a regular file")));
        }
        Ok(f)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = force_remove(&self.staging, &self.name) {
            tracing::warn!(workspace = %self.workspace, error = %e, "a run's copy of the workspace could not be removed");
        }
    }
}

/// Removes `name` under `parent` and all it holds, first making every directory
/// in it this user's to change (a run may have made one read-only).
fn force_remove(parent: &Dir, name: &str) -> io::Result<()> {
    if parent.remove_dir_all(name).is_ok() {
        return Ok(());
    }
    fn open_up(parent: &Dir, name: &str) -> io::Result<()> {
        parent.set_permissions(name, cap_std::fs::Permissions::from_mode(0o700))?;
        let dir = parent.open_dir_nofollow(name)?;
        for e in dir.entries()? {
            let e = e?;
            if e.file_type()?.is_dir() {
                open_up(&dir, &e.file_name().to_string_lossy())?;
            }
        }
        Ok(())
    }
    open_up(parent, name)?;
    parent.remove_dir_all(name)
}

/// Holds the workspace's `lock` (an exclusive `flock`) while it lives.
pub(super) struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub(super) fn take(ws: &Workspace) -> Result<Lock, WorkspaceError> {
        let f = super::private_file(&ws.dir, "lock", true).map_err(|e| ws.host(format!("lock: {e}")))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        #[allow(unsafe_code, reason = "flock has no safe wrapper in std")]
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(ws.host(format!("lock: {}", io::Error::last_os_error())));
        }
        Ok(Lock { _file: f })
    }
}

impl Workspace {
    /// Makes a private copy of the current version for one run; `owner`: give
    /// it to this uid and gid (the docker tier's unprivileged user, when
    /// Terrarium runs as root).
    ///
    /// # Errors
    /// The store cannot be read or the copy made.
    pub fn stage(&self, owner: Option<(u32, u32)>) -> Result<Staged, WorkspaceError> {
        let base = self.head()?;
        let staging = self.sub("staging")?;
        let name = format!("{}-{}", std::process::id(), super::nonce());
        super::create_private_dir(&staging, &name).map_err(|e| self.host(format!("staging: {e}")))?;
        let dir = staging.open_dir_nofollow(&name).map_err(|e| self.host(e))?;
        let staged = Staged {
            workspace: self.name.clone(),
            base: std::sync::Mutex::new(base.clone()),
            staging: staging.try_clone().map_err(|e| self.host(e))?,
            name: name.clone(),
            dir,
            path: self.path.join("staging").join(&name),
        };
        tree::write(&staged.dir, &base.entries, &|sha| self.object(sha), owner)
            .map_err(|e| self.host(format!("cannot copy version {}: {e}", base.version)))?;
        if let Some((uid, gid)) = owner {
            tree::chown_dir(&staged.dir, uid, gid).map_err(|e| self.host(e))?;
        }
        Ok(staged)
    }

    /// Reads back what the run left in `staged` and compares it with the version
    /// it was made from.
    ///
    /// # Errors
    /// [`WorkspaceError::Refused`] naming the first path refused; a host failure.
    pub fn harvest(&self, staged: &Staged, quota: &Quota) -> Result<ChangeSet, WorkspaceError> {
        let entries = tree::read(&staged.dir, quota, false).map_err(|e| match e {
            Ok(r) => WorkspaceError::Refused(r),
            Err(e) => self.host(e),
        })?;
        let base = staged.base_manifest();
        let changes = manifest::changes(&base.entries, &entries);
        let digest = manifest::digest(&self.name, base.version, &changes);
        Ok(ChangeSet { workspace: self.name.clone(), base: base.version, changes, digest, entries })
    }

    /// The unified diff of a change set, its new side read from the run's copy.
    pub fn staged_diff(&self, staged: &Staged, set: &ChangeSet, limit: usize) -> String {
        let old =
            |e: &Entry| e.sha256.as_deref().and_then(|s| super::read_all(self.object(s), super::diff::TEXT_LIMIT));
        let new = |path: &str| {
            super::read_all(staged.open(path).map(|f| Box::new(f) as Box<dyn io::Read>), super::diff::TEXT_LIMIT)
        };
        super::diff::unified_with(&set.changes, &old, &new, limit)
    }

    /// Makes a new version from `set`: stores the contents it adds (hashing them
    /// again as they are copied: a file that changed since it was read refuses the
    /// whole set), writes the manifest, and updates the live files. When the
    /// workspace moved on since the copy was made, the set is applied on top of the
    /// current version if the two changed different paths, and refused otherwise.
    /// Returns the new manifest and its sha256.
    ///
    /// # Errors
    /// [`WorkspaceError::Conflict`]; [`WorkspaceError::Refused`] when the set on
    /// top of the current version would pass `quota`; a content that changed; a
    /// host failure.
    pub fn commit(
        &self,
        staged: &Staged,
        set: &ChangeSet,
        reason: &str,
        quota: &Quota,
    ) -> Result<(Manifest, String), WorkspaceError> {
        let _lock = Lock::take(self)?;
        let head = self.head()?;
        let entries = if head.version == set.base {
            set.entries.clone()
        } else {
            let moved = manifest::changes(&staged.base_manifest().entries, &head.entries);
            let clash = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"));
            let paths: Vec<String> = set
                .changes
                .iter()
                .filter(|c| moved.iter().any(|m| clash(&c.path, &m.path)))
                .map(|c| c.path.clone())
                .collect();
            if !paths.is_empty() {
                return Err(WorkspaceError::Conflict { base: set.base, head: head.version, paths });
            }
            let mut e = head.entries.clone();
            for c in &set.changes {
                match &c.new {
                    Some(n) => e.insert(c.path.clone(), n.clone()),
                    None => e.remove(&c.path),
                };
            }
            // Each run's copy fit; together they must too.
            if let Some(why) = tree::fits(&e, quota) {
                return Err(WorkspaceError::Refused(super::Refusal {
                    path: format!("(with the changes since version {})", set.base),
                    reason: format!("the workspace would hold {why}"),
                }));
            }
            e
        };
        for c in &set.changes {
            if let Some(Entry { kind: Kind::File, sha256: Some(sha), .. }) = &c.new {
                self.store(sha, || staged.open(&c.path)).map_err(|e| self.host(format!("{}: {e}", c.path)))?;
            }
        }
        self.make_version(head.version, entries, reason, &set.changes)
    }

    /// Makes a new version whose files are version `to`'s, and rewrites the live
    /// files to match it (undoing any change made behind Terrarium's back too).
    ///
    /// # Errors
    /// No such version; a host failure.
    pub fn rollback(&self, to: u64, reason: &str) -> Result<(Manifest, String), WorkspaceError> {
        let _lock = Lock::take(self)?;
        let head = self.head()?;
        let target = self.version(to)?;
        let live = tree::read(&self.sub("live")?, &Quota::NONE, true).map_err(|e| match e {
            Ok(r) => self.host(r),
            Err(e) => self.host(e),
        })?;
        let changes = manifest::changes(&live, &target.entries);
        self.make_version(head.version, target.entries, reason, &changes)
    }

    /// Writes version `head + 1` with `entries`, then applies `changes` to the
    /// live files.
    fn make_version(
        &self,
        head: u64,
        entries: BTreeMap<String, Entry>,
        reason: &str,
        changes: &[Change],
    ) -> Result<(Manifest, String), WorkspaceError> {
        let m = Manifest {
            workspace: self.name.clone(),
            version: head + 1,
            parent: Some(head),
            created_unix: super::now_unix(),
            reason: reason.to_string(),
            entries,
        };
        let digest = super::write_manifest(&self.sub("versions")?, &m).map_err(|e| self.host(e))?;
        self.apply_live(changes).map_err(|e| WorkspaceError::LiveNotUpdated {
            workspace: self.name.clone(),
            version: m.version,
            manifest_sha256: digest.clone(),
            message: e.to_string(),
        })?;
        Ok((m, digest))
    }

    /// Brings a session's copy to the current version, between its cells: what the
    /// copy holds that the version does not (a change set refused, denied or in
    /// conflict, links and special files included) is removed, what the version
    /// holds that the copy does not (changes made by other runs) is written; the
    /// copy's base is then the current version. `owner` as for [`Workspace::stage`].
    ///
    /// # Errors
    /// The copy or the store cannot be read or written.
    pub fn reset_copy(&self, staged: &Staged, owner: Option<(u32, u32)>) -> Result<u64, WorkspaceError> {
        let head = self.head()?;
        let copy = tree::read(&staged.dir, &Quota::NONE, true).map_err(|e| match e {
            Ok(r) => self.host(r),
            Err(e) => self.host(e),
        })?;
        let changes = manifest::changes(&copy, &head.entries);
        self.apply(&staged.dir, &changes, owner)
            .map_err(|e| self.host(format!("cannot reset a session's copy: {e}")))?;
        let version = head.version;
        *staged.base.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = head;
        Ok(version)
    }

    /// Stores the content `open` yields as object `sha`, unless it is stored.
    fn store(&self, sha: &str, open: impl FnOnce() -> io::Result<std::fs::File>) -> io::Result<()> {
        let objects = self.dir.open_dir_nofollow("objects")?;
        if super::sealed::stored_as(&objects, sha, self.key.as_ref()) {
            return Ok(());
        }
        // Another process may have sealed the root since this one opened it:
        // then nothing is stored in the clear (or under another key).
        super::sealed::still_sealed_as(&self.root, self.key.as_ref())?;
        let tmp = format!(".tmp-{}", super::nonce());
        let out = super::private_file_new(&objects, &tmp)?;
        let copied = super::sealed::copy_in(open()?, &out, &self.name, sha, self.key.as_ref()).and_then(|(got, _)| {
            if got != sha {
                return Err(io::Error::other("it changed after it was read"));
            }
            out.sync_all()
        });
        match copied {
            Ok(()) => objects.rename(&tmp, &objects, super::sealed::name(sha, self.key.as_ref())),
            Err(e) => {
                let _ = objects.remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Applies `changes` to the live files.
    fn apply_live(&self, changes: &[Change]) -> io::Result<()> {
        self.apply(&self.dir.open_dir_nofollow("live")?, changes, None)
    }

    /// Applies `changes` under `live`: removals deepest first, then directories
    /// and files (each file written beside its name and renamed over it), then
    /// directory modes deepest first; `owner`: give what is written to this uid
    /// and gid.
    fn apply(&self, live: &Dir, changes: &[Change], owner: Option<(u32, u32)>) -> io::Result<()> {
        for c in changes.iter().rev() {
            let retyped = matches!((&c.old, &c.new), (Some(o), Some(n)) if o.kind != n.kind);
            if c.new.is_none() || retyped {
                let (parent, name) = tree::split(&c.path);
                let Ok(dir) = tree::open_dir(live, parent) else { continue };
                let removed = match dir.symlink_metadata(name) {
                    Ok(m) if m.is_dir() => dir.remove_dir_all(name),
                    Ok(_) => dir.remove_file(name),
                    Err(_) => Ok(()),
                };
                removed?;
            }
        }
        for c in changes {
            let Some(new) = &c.new else { continue };
            let (parent, name) = tree::split(&c.path);
            if !parent.is_empty() {
                live.create_dir_all(parent)?;
            }
            let dir = tree::open_dir(live, parent)?;
            match new.kind {
                Kind::Dir => {
                    if !dir.symlink_metadata(name).is_ok_and(|m| m.is_dir()) {
                        super::create_private_dir(&dir, name)?;
                        if let Some((uid, gid)) = owner {
                            tree::chown_dir(&dir.open_dir_nofollow(name)?, uid, gid)?;
                        }
                    }
                }
                Kind::File if c.action == manifest::Action::Mode => {
                    dir.set_permissions(name, cap_std::fs::Permissions::from_mode(new.mode))?;
                }
                Kind::File => {
                    let tmp = format!(".terrarium-{}", super::nonce());
                    let out = super::private_file_new(&dir, &tmp)?;
                    let sha = new.sha256.as_deref().unwrap_or_default();
                    let written =
                        tree::copy_hashed(self.object(sha)?, io::BufWriter::new(&out)).and_then(|(got, _)| {
                            if got != sha {
                                return Err(io::Error::other(format!(
                                    "the stored content of {} does not match",
                                    c.path
                                )));
                            }
                            if let Some((uid, gid)) = owner {
                                std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
                            }
                            out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(new.mode))
                        });
                    match written {
                        Ok(()) => dir.rename(&tmp, &dir, name)?,
                        Err(e) => {
                            let _ = dir.remove_file(&tmp);
                            return Err(e);
                        }
                    }
                }
                Kind::Special => return Err(io::Error::other(format!("{} is not a file or directory", c.path))),
            }
        }
        for c in changes.iter().rev() {
            if let Some(Entry { kind: Kind::Dir, mode, .. }) = &c.new {
                let (parent, name) = tree::split(&c.path);
                tree::open_dir(live, parent)?.set_permissions(name, cap_std::fs::Permissions::from_mode(*mode))?;
            }
        }
        Ok(())
    }
}
