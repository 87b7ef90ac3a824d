//! Workspaces: named directories that runs on the wasm and docker tiers may
//! change, kept as versions in a content-addressed store, with every change set
//! computed by the host, optionally held for a human's approval, and revertable.
//!
//! On disk, under the workspaces root (`$TERRARIUM_HOME/workspaces` unless the
//! policy names another), each workspace `NAME` is a directory of its own:
//!
//! - `live/`: the current version's files, for people and tools to read;
//! - `objects/SHA256`: every file content any version held, by hash;
//! - `versions/NNNNNNNNNN.json`: one manifest per version, written once;
//! - `staging/`: private copies runs work on, removed when each run ends;
//! - `lock`: taken while a version is made.
//!
//! # Security invariant
//! A run never touches a workspace's live files or its store. It works on a private
//! copy of the current version; once it has ended, the host alone reads that copy
//! back (`tree::read`: through `cap-std` handles, never following a link, quotas
//! checked before a byte is read), turns it into a change set, and only then, if
//! the policy lets it or a human approves, stores the content (hashing what it
//! copies, refusing anything that changed since) and writes a new version. Links,
//! hard links, FIFOs, sockets, devices, names that are not UTF-8 and trees past
//! the quotas are refused with the path named. History is never rewritten: a
//! rollback is a new version, and each manifest's digest goes into the audit chain.

mod diff;
pub mod manifest;
mod sealed;
mod stage;
#[cfg(test)]
mod tests;
pub(crate) mod tree;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};

pub use diff::unified;
pub use manifest::{Action, Change, Entry, Kind, Manifest};
pub use sealed::Resealed;
pub use stage::{ChangeSet, Staged};

pub use crate::policy::{Quota, valid_workspace_name as valid_name};

/// Something a run left in its copy that is refused, with its path in the workspace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The path, relative to the workspace.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl Refusal {
    fn new(path: String, reason: &str) -> Refusal {
        Refusal { path, reason: reason.to_string() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A bad name, version or path (the caller's mistake).
    #[error("{0}")]
    Invalid(String),
    /// No such workspace.
    #[error("no workspace named {0:?} (create it with `terrarium workspace create {0}`)")]
    NotFound(String),
    /// What a run left is refused.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The workspace moved on since the run's copy was made, and both changed the
    /// same paths.
    #[error("the workspace is at version {head} now, and it changed {paths:?} since version {base} too")]
    Conflict {
        /// The version the run worked on.
        base: u64,
        /// The version now.
        head: u64,
        /// Paths both changed.
        paths: Vec<String>,
    },
    /// A version was made, but the live files could not be brought to it.
    #[error(
        "workspace {workspace}: version {version} is made, but the live files could not be updated ({message}); \
         `terrarium workspace rollback {workspace} {version}` rewrites them"
    )]
    LiveNotUpdated {
        /// Which workspace.
        workspace: String,
        /// The version made.
        version: u64,
        /// Its manifest's sha256.
        manifest_sha256: String,
        /// What failed.
        message: String,
    },
    /// The host could not read or write the store.
    #[error("workspace {workspace}: {message}")]
    Host {
        /// Which workspace.
        workspace: String,
        /// What failed.
        message: String,
    },
}

/// The default workspaces root: `workspaces` in Terrarium's state directory
/// (`$TERRARIUM_HOME`, else `$XDG_DATA_HOME/terrarium`, else `~/.local/share/terrarium`).
///
/// # Errors
/// No state directory can be named.
pub fn default_root() -> Result<PathBuf, WorkspaceError> {
    crate::dirs::state_dir().map(|d| d.join("workspaces")).ok_or_else(|| WorkspaceError::Host {
        workspace: "*".into(),
        message: "no TERRARIUM_HOME, XDG_DATA_HOME or HOME to keep workspaces in".into(),
    })
}

/// A run's copy of a workspace as an executor mounts it at `/workspace`.
#[derive(Debug, Clone)]
pub struct Mount {
    staged: Arc<Staged>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Mount {
    /// The copy to mount; `stop` is raised when the copy goes past its quota
    /// while the run is going, and the tier then ends the run.
    pub(crate) fn new(staged: Arc<Staged>, stop: Arc<std::sync::atomic::AtomicBool>) -> Mount {
        Mount { staged, stop }
    }

    /// Whether the run must stop now: its copy went past the workspace quota.
    pub fn must_stop(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The flag behind [`Mount::must_stop`], for a tier's deadline check.
    #[cfg_attr(not(any(feature = "wasm", feature = "docker")), allow(dead_code, reason = "used by the CPython tiers"))]
    pub(crate) fn stop_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stop.clone()
    }

    /// The copy's path (what the docker engine binds).
    pub fn path(&self) -> &Path {
        self.staged.path()
    }

    /// A path that leads to the copy whatever happens to its name (what wasmtime
    /// preopens), valid while the copy lives.
    pub fn by_handle(&self) -> String {
        self.staged.by_handle()
    }

    /// The user a container runs as with this copy mounted: the tier's
    /// unprivileged `65534` when Terrarium runs as root (the copy was given to it),
    /// else Terrarium's own user (whose files the copy are).
    pub fn container_user(&self) -> String {
        match docker_owner() {
            Some((uid, gid)) => format!("{uid}:{gid}"),
            None => {
                // SAFETY: getegid cannot fail and has no side effects.
                #[allow(unsafe_code, reason = "libc::getegid has no safe wrapper in std")]
                let gid = unsafe { libc::getegid() };
                format!("{}:{gid}", crate::dirs::euid())
            }
        }
    }
}

/// Who a copy for the docker tier must belong to: the container's unprivileged
/// user when Terrarium runs as root; `None` (Terrarium's own user) otherwise.
pub fn docker_owner() -> Option<(u32, u32)> {
    (crate::dirs::euid() == 0).then_some((65534, 65534))
}

/// The set of workspaces under one root.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: Arc<crate::dirs::OwnedDir>,
    /// Stored contents are sealed under it (see `sealed`).
    key: Option<crate::seal::DataKey>,
}

/// One workspace, opened.
#[derive(Debug)]
pub struct Workspace {
    name: String,
    dir: Dir,
    /// Its directory's path (the docker tier mounts staging copies by path).
    path: PathBuf,
    /// Stored contents are sealed under it (see `sealed`).
    key: Option<crate::seal::DataKey>,
    /// The root, whose record of the key is checked before anything is stored.
    root: Arc<crate::dirs::OwnedDir>,
}

/// One line of `workspace list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The workspace.
    pub name: String,
    /// Its current version.
    pub version: u64,
    /// Files in it.
    pub files: usize,
    /// Bytes they hold.
    pub bytes: u64,
}

impl Workspaces {
    /// Opens (creating, 0700) the root `root`: it must be this user's and closed
    /// to others, as every directory above it (see `dirs::OwnedDir`). With a data
    /// key configured (docs/operations.md) stored contents are sealed.
    ///
    /// # Errors
    /// The root is refused or cannot be made; its stores are sealed under a key and
    /// none or another is configured.
    pub fn open(root: &Path) -> Result<Workspaces, WorkspaceError> {
        let host = |message: String| WorkspaceError::Host { workspace: "*".into(), message };
        let dir = crate::dirs::OwnedDir::open(root, "workspaces root").map_err(|e| host(e.to_string()))?;
        let key = sealed::root_key(&dir).map_err(host)?;
        Ok(Workspaces { root: Arc::new(dir), key })
    }

    /// Seals every stored content of every workspace with `new` (opening those
    /// sealed under `old`; sealing those in the clear): a rotation of the data
    /// key. Run with nothing else using the root.
    ///
    /// # Errors
    /// A content under neither key, or not matching its hash; the file system.
    pub fn reseal(
        root: &Path,
        old: Option<&crate::seal::DataKey>,
        new: &crate::seal::DataKey,
    ) -> Result<Resealed, WorkspaceError> {
        let host = |message: String| WorkspaceError::Host { workspace: "*".into(), message };
        let dir = crate::dirs::OwnedDir::open(root, "workspaces root").map_err(|e| host(e.to_string()))?;
        sealed::reseal(&dir, old, new).map_err(host)
    }

    /// The root's resolved path.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates workspace `name` with an empty version 0.
    ///
    /// # Errors
    /// A bad name, one that exists, or a host failure.
    pub fn create(&self, name: &str) -> Result<Workspace, WorkspaceError> {
        check_name(name)?;
        let host = |e: io::Error| WorkspaceError::Host { workspace: name.into(), message: e.to_string() };
        // Made under a temporary name and renamed into place once complete: a
        // workspace directory always has its version 0.
        let tmp = format!(".new-{name}-{}", nonce());
        let root = self.root.handle();
        create_private_dir(root, &tmp).map_err(host)?;
        let made = (|| {
            let d = root.open_dir_nofollow(&tmp)?;
            for sub in ["live", "objects", "versions", "staging"] {
                create_private_dir(&d, sub)?;
            }
            private_file(&d, "lock", true)?;
            let m = Manifest {
                workspace: name.to_string(),
                version: 0,
                parent: None,
                created_unix: now_unix(),
                reason: "created".into(),
                entries: BTreeMap::new(),
            };
            write_manifest(&d.open_dir_nofollow("versions")?, &m)?;
            Ok(())
        })();
        let renamed = made.and_then(|()| {
            if root.symlink_metadata(name).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
            }
            root.rename(&tmp, root, name)
        });
        if let Err(e) = renamed {
            let _ = root.remove_dir_all(&tmp);
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Err(WorkspaceError::Invalid(format!("workspace {name:?} exists already")));
            }
            return Err(host(e));
        }
        self.get(name)
    }

    /// Opens workspace `name`.
    ///
    /// # Errors
    /// A bad name, no such workspace, or a host failure.
    pub fn get(&self, name: &str) -> Result<Workspace, WorkspaceError> {
        check_name(name)?;
        let dir = match self.root.handle().open_dir_nofollow(name) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(WorkspaceError::NotFound(name.into())),
            Err(e) => return Err(WorkspaceError::Host { workspace: name.into(), message: e.to_string() }),
        };
        Ok(Workspace {
            name: name.to_string(),
            dir,
            path: self.root.path().join(name),
            key: self.key.clone(),
            root: self.root.clone(),
        })
    }

    /// Opens workspace `name`, creating it when it does not exist; `true` when
    /// this call created it.
    ///
    /// # Errors
    /// As [`Workspaces::create`].
    pub fn get_or_create(&self, name: &str) -> Result<(Workspace, bool), WorkspaceError> {
        match self.get(name) {
            Err(WorkspaceError::NotFound(_)) => match self.create(name) {
                // Another run made it meanwhile.
                Err(WorkspaceError::Invalid(_)) => self.get(name).map(|w| (w, false)),
                r => r.map(|w| (w, true)),
            },
            r => r.map(|w| (w, false)),
        }
    }

    /// Every workspace with its current version.
    ///
    /// # Errors
    /// A host failure.
    pub fn list(&self) -> Result<Vec<Summary>, WorkspaceError> {
        let host = |e: io::Error| WorkspaceError::Host { workspace: "*".into(), message: e.to_string() };
        let mut out = Vec::new();
        for e in self.root.handle().entries().map_err(host)? {
            let name = e.map_err(host)?.file_name().to_string_lossy().to_string();
            if !valid_name(&name) {
                continue;
            }
            let head = self.get(&name)?.head()?;
            out.push(Summary { name, version: head.version, files: head.files(), bytes: head.bytes() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl Workspace {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn host(&self, message: impl std::fmt::Display) -> WorkspaceError {
        WorkspaceError::Host { workspace: self.name.clone(), message: message.to_string() }
    }

    fn sub(&self, name: &str) -> Result<Dir, WorkspaceError> {
        self.dir.open_dir_nofollow(name).map_err(|e| self.host(format!("{name}: {e}")))
    }

    /// Every version number, oldest first.
    fn versions(&self) -> Result<Vec<u64>, WorkspaceError> {
        let mut out = Vec::new();
        for e in self.sub("versions")?.entries().map_err(|e| self.host(e))? {
            let name = e.map_err(|e| self.host(e))?.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Version `n`'s manifest and its sha256.
    ///
    /// # Errors
    /// No such version, or its manifest cannot be read.
    pub fn version_with_digest(&self, n: u64) -> Result<(Manifest, String), WorkspaceError> {
        let file = match private_file(&self.sub("versions")?, &manifest_name(n), false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WorkspaceError::Invalid(format!("workspace {} has no version {n}", self.name)));
            }
            Err(e) => return Err(self.host(e)),
        };
        let mut text = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, 256 << 20), &mut text).map_err(|e| self.host(e))?;
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| self.host(format!("version {n}: {e}")))?;
        if m.version != n || m.workspace != self.name || !m.entries.keys().all(|p| manifest::valid_path(p)) {
            return Err(self.host(format!("version {n}'s manifest does not belong here")));
        }
        Ok((m, sha256_hex(&text)))
    }

    /// Version `n`'s manifest.
    ///
    /// # Errors
    /// As [`Workspace::version_with_digest`].
    pub fn version(&self, n: u64) -> Result<Manifest, WorkspaceError> {
        self.version_with_digest(n).map(|(m, _)| m)
    }

    /// The current version.
    ///
    /// # Errors
    /// As [`Workspace::version_with_digest`].
    pub fn head(&self) -> Result<Manifest, WorkspaceError> {
        let last = self.versions()?.pop().ok_or_else(|| self.host("it has no version"))?;
        self.version(last)
    }

    /// Every version's manifest, oldest first.
    ///
    /// # Errors
    /// As [`Workspace::version_with_digest`].
    pub fn log(&self) -> Result<Vec<(Manifest, String)>, WorkspaceError> {
        self.versions()?.into_iter().map(|n| self.version_with_digest(n)).collect()
    }

    /// Opens a stored content by hash (opening it under the data key when sealed).
    fn object(&self, sha: &str) -> io::Result<Box<dyn io::Read>> {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::other("not a content hash"));
        }
        sealed::open(&self.dir.open_dir_nofollow("objects")?, &self.name, sha, self.key.as_ref())
    }

    /// The content of `path` in version `n`.
    ///
    /// # Errors
    /// No such version or file.
    pub fn show(&self, n: u64, path: &str) -> Result<Vec<u8>, WorkspaceError> {
        let m = self.version(n)?;
        let path = path.trim_start_matches('/');
        let Some(Entry { kind: Kind::File, sha256: Some(sha), .. }) = m.entries.get(path) else {
            return Err(WorkspaceError::Invalid(format!("version {n} of {} has no file {path:?}", self.name)));
        };
        let mut out = Vec::new();
        let (got, _) =
            tree::copy_hashed(self.object(sha).map_err(|e| self.host(e))?, &mut out).map_err(|e| self.host(e))?;
        if &got != sha {
            return Err(self.host(format!("the stored content of {path} does not match its hash")));
        }
        Ok(out)
    }

    /// The changes from version `a` to version `b`.
    ///
    /// # Errors
    /// No such version.
    pub fn diff(&self, a: u64, b: u64) -> Result<Vec<Change>, WorkspaceError> {
        Ok(manifest::changes(&self.version(a)?.entries, &self.version(b)?.entries))
    }

    /// The unified diff of `changes` between two stored versions.
    pub fn diff_text(&self, changes: &[Change], limit: usize) -> String {
        let stored = |e: &Entry| e.sha256.as_deref().and_then(|s| read_all(self.object(s), diff::TEXT_LIMIT));
        unified(changes, &stored, &stored, limit)
    }

    /// What differs between the live files and the current version: every path
    /// changed, added or removed outside Terrarium.
    ///
    /// # Errors
    /// The live directory or the store cannot be read.
    pub fn verify(&self) -> Result<(Manifest, Vec<Change>), WorkspaceError> {
        // Not in the middle of a commit (its manifest written, its live files not yet).
        let _lock = stage::Lock::take(self)?;
        let head = self.head()?;
        let live = self.sub("live")?;
        let found = tree::read(&live, &Quota::NONE, true).map_err(|e| match e {
            Ok(r) => self.host(r),
            Err(e) => self.host(e),
        })?;
        let drift = manifest::changes(&head.entries, &found);
        Ok((head, drift))
    }

    /// Writes version `n`'s files into `dest`, a directory that must not exist yet.
    ///
    /// # Errors
    /// No such version; `dest` exists or cannot be made.
    pub fn export(&self, n: u64, dest: &Path) -> Result<(), WorkspaceError> {
        let m = self.version(n)?;
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest.file_name().ok_or_else(|| WorkspaceError::Invalid("no directory name to export to".into()))?;
        let parent = Dir::open_ambient_dir(parent, cap_std::ambient_authority())
            .map_err(|e| WorkspaceError::Invalid(format!("{}: {e}", parent.display())))?;
        parent.create_dir(name).map_err(|e| WorkspaceError::Invalid(format!("{}: {e}", dest.display())))?;
        let out = parent.open_dir_nofollow(name).map_err(|e| self.host(e))?;
        tree::write(&out, &m.entries, &|sha| self.object(sha), None).map_err(|e| self.host(e))
    }
}

/// `versions/` file name of version `n`.
fn manifest_name(n: u64) -> String {
    format!("{n:010}.json")
}

/// Writes manifest `m` into `versions` as a new file: refused if that version
/// exists (two writers cannot both make version N).
fn write_manifest(versions: &Dir, m: &Manifest) -> io::Result<String> {
    let text = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
    let tmp = format!(".tmp-{}", nonce());
    {
        let mut f = private_file_new(versions, &tmp)?;
        io::Write::write_all(&mut f, &text)?;
        f.sync_all()?;
    }
    // A hard link cannot replace an existing name: the version is made once.
    let linked = versions.hard_link(&tmp, versions, manifest_name(m.version));
    let _ = versions.remove_file(&tmp);
    linked?;
    Ok(sha256_hex(&text))
}

fn check_name(name: &str) -> Result<(), WorkspaceError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(WorkspaceError::Invalid(format!(
            "{name:?} is not a workspace name (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
        )))
    }
}

fn create_private_dir(parent: &Dir, name: &str) -> io::Result<()> {
    use cap_std::fs::DirBuilderExt as _;
    let mut b = cap_std::fs::DirBuilder::new();
    b.mode(0o700);
    parent.create_dir_with(name, &b)
}

/// Opens regular file `name` in `dir` (no link followed); `create`: creating it.
fn private_file(dir: &Dir, name: &str, create: bool) -> io::Result<std::fs::File> {
    let mut o = OpenOptions::new();
    o.read(true).follow(FollowSymlinks::No);
    if create {
        o.write(true).create(true);
        cap_std::fs::OpenOptionsExt::mode(&mut o, 0o600);
    }
    let f = dir.open_with(name, &o)?.into_std();
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!("{name} is not a regular file")));
    }
    Ok(f)
}

/// Creates regular file `name` in `dir`, 0600; refused when it exists.
fn private_file_new(dir: &Dir, name: &str) -> io::Result<std::fs::File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true).follow(FollowSymlinks::No);
    cap_std::fs::OpenOptionsExt::mode(&mut o, 0o600);
    Ok(dir.open_with(name, &o)?.into_std())
}

/// The whole of `file`, when it opened and is at most `limit` bytes.
fn read_all(content: io::Result<Box<dyn io::Read>>, limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(content.ok()?, limit.saturating_add(1)), &mut out).ok()?;
    (out.len() as u64 <= limit).then_some(out)
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::hex::encode(&sha2::Sha256::digest(bytes))
}

/// A fresh random name part.
fn nonce() -> String {
    crate::hex::random(16).unwrap_or_else(|| format!("{}-{}", std::process::id(), now_unix()))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
