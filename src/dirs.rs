//! Directories Terrarium keeps its files in (the state directory with the audit
//! log, the compiled-module cache) and directories it hands to sandboxes (read-only
//! mounts), opened through `cap-std`.
//!
//! # Security invariant
//! Terrarium never follows a path another local user can change. A directory it
//! keeps files in is refused unless this user owns it, no one else can write it,
//! and every directory above it is owned by root or this user and writable by no
//! one else (a sticky directory such as `/tmp` is accepted above: there only an
//! entry's owner can rename it). Inside, files are opened relative to the checked
//! directory handle, never through a symbolic link, and each must be a regular
//! file this user owns. A directory handed to a sandbox is pinned when the policy
//! is loaded (resolved, every directory above it trusted as above, its identity
//! recorded) and checked against that identity at every run.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// Why a directory was refused or could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {message}")]
pub struct DirError {
    /// What the directory is for ("state directory", "cache directory", …).
    pub what: String,
    /// The directory.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Terrarium's state directory (the audit log, workspaces): `$TERRARIUM_HOME`, else
/// `$XDG_DATA_HOME/terrarium`, else `~/.local/share/terrarium`; `None` when none of
/// them is set. Named only: whoever uses it opens it as an [`OwnedDir`].
pub fn state_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("TERRARIUM_HOME")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("terrarium")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/terrarium")))
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and has no side effects.
    #[allow(unsafe_code, reason = "libc::geteuid has no safe wrapper in std")]
    unsafe {
        libc::geteuid()
    }
}

/// The identity of a directory: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

/// Most symbolic links followed while walking one path.
const MAX_LINKS: usize = 40;

/// Whether a directory's metadata lets only its owner add, remove or rename
/// entries: not writable by group or others, unless sticky (then only an entry's
/// owner can rename or remove it).
fn closed(meta: &std::fs::Metadata) -> bool {
    meta.mode() & 0o022 == 0 || meta.mode() & 0o1000 != 0
}

/// Whether `meta` belongs to root or this user.
fn trusted_owner(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 || meta.uid() == euid()
}

/// `path` made absolute against the current directory.
fn absolute(path: &Path, refuse: &dyn Fn(String) -> DirError) -> Result<PathBuf, DirError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir().map_err(|e| refuse(format!("no current directory: {e}")))?.join(path))
}

/// Walks `path` one component at a time, never trusting a name another user can
/// change, and returns it resolved. Every directory the walk passes through must
/// be owned by root or this user and closed to others ([`closed`]); an entry of a
/// directory others can write (sticky) must itself be owned by root or this user;
/// a symbolic link is followed only from such a place, and its target is walked
/// the same way. The last component must exist; what it is (and who owns it) is
/// for the caller to judge, except that in a sticky directory it must be owned by
/// root or this user too.
fn walk(path: &Path, what: &str) -> Result<PathBuf, DirError> {
    let shown = path.display().to_string();
    let refuse = |message: String| DirError { what: what.into(), path: shown.clone(), message };
    let absolute = absolute(path, &refuse)?;
    let mut links = 0;
    walk_from(&absolute, &mut links, &refuse)
}

/// A directory the walk passes through: owned by root or this user, closed.
fn check_dir(dir: &Path, refuse: &dyn Fn(String) -> DirError) -> Result<(), DirError> {
    let me = euid();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(refuse(format!("{} on its path is not a directory", dir.display())));
    }
    if !trusted_owner(&meta) {
        return Err(refuse(format!(
            "{} on its path is owned by uid {}, who could change what the path leads to (only root or uid {me} \
             may own the directories on it)",
            dir.display(),
            meta.uid()
        )));
    }
    if !closed(&meta) {
        return Err(refuse(format!(
            "{} on its path is writable by other users (mode {:o}), who could change what the path leads to",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn walk_from(path: &Path, links: &mut usize, refuse: &dyn Fn(String) -> DirError) -> Result<PathBuf, DirError> {
    use std::path::Component;
    let mut current = PathBuf::from("/");
    check_dir(&current, refuse)?;
    let components: Vec<Component<'_>> = path.components().collect();
    for (n, component) in components.iter().enumerate() {
        let name = match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir => {
                current.pop();
                continue;
            }
            Component::Normal(name) => name,
        };
        let last = n + 1 == components.len();
        let next = current.join(name);
        let meta = std::fs::symlink_metadata(&next).map_err(|e| refuse(format!("{}: {e}", next.display())))?;
        let parent = std::fs::symlink_metadata(&current).map_err(|e| refuse(format!("{}: {e}", current.display())))?;
        if parent.mode() & 0o022 != 0 && !trusted_owner(&meta) {
            // A sticky directory others can write: whoever owns the entry can
            // rename it, or point it elsewhere.
            return Err(refuse(format!(
                "{} is owned by uid {} in {}, which others can write: that user could change what it leads to",
                next.display(),
                meta.uid(),
                current.display()
            )));
        }
        if meta.file_type().is_symlink() {
            *links += 1;
            if *links > MAX_LINKS {
                return Err(refuse("too many symbolic links on its path".into()));
            }
            let target = std::fs::read_link(&next).map_err(|e| refuse(format!("{}: {e}", next.display())))?;
            current = walk_from(&current.join(target), links, refuse)?;
        } else {
            current = next;
        }
        if !last {
            check_dir(&current, refuse)?;
        }
    }
    Ok(current)
}

/// Creates the missing directories of `path` one at a time (mode 0700), each only
/// in a directory [`walk`] accepted, so nothing is created below a directory
/// another user controls.
fn create_checked(path: &Path, what: &str) -> Result<(), DirError> {
    let shown = path.display().to_string();
    let refuse = |message: String| DirError { what: what.into(), path: shown.clone(), message };
    let absolute = absolute(path, &refuse)?;
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        missing.push(existing.to_path_buf());
        existing = existing.parent().ok_or_else(|| refuse("no existing directory above it".into()))?;
    }
    for dir in missing.iter().rev() {
        let parent = dir.parent().ok_or_else(|| refuse("no directory above it".into()))?;
        let resolved = walk(parent, what)?;
        check_dir(&resolved, &refuse)?;
        let name = dir.file_name().ok_or_else(|| refuse("no directory name".into()))?;
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(resolved.join(name))
            .map_err(|e| refuse(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// A directory this user owns and alone can write, with a handle every file in
/// it is opened through.
#[derive(Debug)]
pub struct OwnedDir {
    dir: Dir,
    path: PathBuf,
}

impl OwnedDir {
    /// Opens `path`, creating it (and missing parents) with mode 0700 when it does
    /// not exist. `what` names it in errors.
    ///
    /// # Errors
    /// It cannot be created or opened, or it (or a directory above it) is owned or
    /// writable by another user: the message names the directory and the fix.
    pub fn open(path: &Path, what: &str) -> Result<OwnedDir, DirError> {
        let err = |message: String| DirError { what: what.into(), path: path.display().to_string(), message };
        if path.as_os_str().is_empty() {
            return Err(err("no directory given".into()));
        }
        if std::fs::symlink_metadata(path).is_err() {
            create_checked(path, what)?;
        }
        let canonical = walk(path, what)?;
        let meta = std::fs::symlink_metadata(&canonical).map_err(|e| err(e.to_string()))?;
        let me = euid();
        if !meta.is_dir() {
            return Err(err("not a directory".into()));
        }
        if meta.uid() != me {
            return Err(err(format!(
                "owned by uid {}, not by this user (uid {me}): another user's directory could redirect \
                 Terrarium's files; use a directory of your own",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(err(format!(
                "writable by other users (mode {:o}); make it private (chmod 700)",
                meta.mode() & 0o7777
            )));
        }
        let dir =
            Dir::open_ambient_dir(&canonical, ambient_authority()).map_err(|e| err(format!("cannot open it: {e}")))?;
        let opened = dir.dir_metadata().map_err(|e| err(e.to_string()))?;
        use cap_std::fs::MetadataExt as _;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(err("it changed while being checked".into()));
        }
        Ok(OwnedDir { dir, path: canonical })
    }

    /// The directory's resolved path (for libraries that open by path, such as
    /// SQLite, given a name in it that [`OwnedDir::private_file`] checked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's handle (everything in it is reached through this).
    pub fn handle(&self) -> &Dir {
        &self.dir
    }

    /// Opens file `name` in the directory with `options`, never through a
    /// symbolic link, and only if it is a regular file this user owns (created
    /// with mode 0600).
    ///
    /// # Errors
    /// As the system call, or `PermissionDenied` for a file that is not a regular
    /// file of this user.
    pub fn open_file(&self, name: &str, options: &mut OpenOptions) -> io::Result<std::fs::File> {
        // Non-blocking: a FIFO put in the file's place is refused below instead of
        // hanging the open.
        let options = options.follow(FollowSymlinks::No).mode(0o600).custom_flags(libc::O_NONBLOCK);
        let file = self.dir.open_with(name, options)?.into_std();
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != euid() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{name} is not a regular file of this user"),
            ));
        }
        Ok(file)
    }

    /// Makes sure file `name` exists as a regular file of this user with mode
    /// 0600, creating it empty when missing; returns its resolved path.
    ///
    /// # Errors
    /// As [`OwnedDir::open_file`].
    ///
    /// An existing file is checked without opening it: closing any descriptor of
    /// a file drops every POSIX lock this process holds on it, which would pull
    /// the floor from under an SQLite connection to it. One readable or writable by
    /// others is refused (it was not made here).
    pub fn private_file(&self, name: &str) -> io::Result<PathBuf> {
        use cap_std::fs::MetadataExt as _;
        match self.dir.symlink_metadata(name) {
            Ok(meta) => {
                if !meta.is_file() || meta.uid() != euid() {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{name} is not a regular file of this user"),
                    ));
                }
                if meta.mode() & 0o077 != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{name} is readable or writable by others (mode {:o}); chmod 600 it",
                            meta.mode() & 0o777
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Made here, 0600; no connection to it exists yet.
                match self.create_new(name) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return self.private_file(name),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(self.path.join(name))
    }

    /// Creates file `name`, which must not exist, with mode 0600.
    ///
    /// # Errors
    /// As the system call (`AlreadyExists` when it exists, a link included).
    pub fn create_new(&self, name: &str) -> io::Result<std::fs::File> {
        self.open_file(name, OpenOptions::new().write(true).create_new(true))
    }

    /// Reads file `name`, or `None` when it does not exist.
    ///
    /// # Errors
    /// As [`OwnedDir::open_file`].
    pub fn read(&self, name: &str) -> io::Result<Option<std::fs::File>> {
        match self.open_file(name, OpenOptions::new().read(true)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The names of the entries in the directory.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in self.dir.entries()? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Removes file `name`.
    ///
    /// # Errors
    /// As the system call.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.dir.remove_file(name)
    }

    /// Links `to` to the file `from`, both in this directory; fails with
    /// `AlreadyExists` when `to` exists (never replaces it).
    ///
    /// # Errors
    /// As the system call.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        self.dir.hard_link(from, &self.dir, to)
    }

    /// Renames `from` to `to`, both in this directory.
    ///
    /// # Errors
    /// As the system call.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.dir.rename(from, &self.dir, to)
    }
}

/// Checks that no other user can change `path` or what it leads to: walked like
/// every path here, and itself owned by root or this user and closed to others
/// (sticky qualifies). For directories Terrarium makes new entries in.
///
/// # Errors
/// It is refused, with a message naming it.
#[cfg(feature = "cli")]
pub fn check_closed(path: &Path, what: &str) -> Result<PathBuf, DirError> {
    let shown = path.display().to_string();
    let refuse = |message: String| DirError { what: what.into(), path: shown.clone(), message };
    let resolved = walk(path, what)?;
    check_dir(&resolved, &refuse)?;
    Ok(resolved)
}

/// A private directory made for one use inside a directory no other user can
/// change (the system's temporary directory for wasm's `/scratch`), held by handle
/// and removed through its parent's handle.
#[cfg(feature = "wasm")]
#[derive(Debug)]
pub struct ScratchDir {
    parent: Dir,
    name: String,
    dir: Dir,
}

#[cfg(feature = "wasm")]
impl ScratchDir {
    /// Creates `name` (mode 0700; it must not exist) in `parent`, which is walked
    /// like every path here and must be owned by root or this user and closed to
    /// others (sticky `/tmp` qualifies; a `TMPDIR` another user controls does not).
    ///
    /// # Errors
    /// `parent` is refused, or the directory cannot be made.
    pub fn create(parent: &Path, name: &str) -> Result<ScratchDir, DirError> {
        let what = "scratch directory's parent";
        let shown = parent.display().to_string();
        let refuse = |message: String| DirError { what: what.into(), path: shown.clone(), message };
        let resolved = walk(parent, what)?;
        check_dir(&resolved, &refuse)?;
        let parent = Dir::open_ambient_dir(&resolved, ambient_authority()).map_err(|e| refuse(e.to_string()))?;
        let mut builder = cap_std::fs::DirBuilder::new();
        cap_std::fs::DirBuilderExt::mode(&mut builder, 0o700);
        parent.create_dir_with(name, &builder).map_err(|e| refuse(format!("cannot create {name}: {e}")))?;
        use cap_fs_ext::DirExt;
        let dir = parent.open_dir_nofollow(name).map_err(|e| refuse(format!("cannot open {name}: {e}")))?;
        Ok(ScratchDir { parent, name: name.to_string(), dir })
    }

    /// A path that leads to this directory whatever happens to its name: its
    /// handle's `/proc/self/fd` entry (valid while `self` lives).
    pub fn by_handle(&self) -> String {
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&self.dir))
    }

    /// Removes it and what is in it, through the parent's handle.
    ///
    /// # Errors
    /// As the system calls.
    pub fn remove(self) -> io::Result<()> {
        let ScratchDir { parent, name, dir } = self;
        drop(dir);
        parent.remove_dir_all(&name)
    }
}

/// A directory handed to sandboxes, pinned when the policy was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// Its resolved path.
    pub path: PathBuf,
    identity: Identity,
}

impl Pinned {
    /// Pins directory `path`: resolves it, checks every directory above it (owned
    /// by root or this user, writable by no one else unless sticky), and records
    /// its identity. The directory itself may belong to anyone (what is in it is
    /// what is mounted; links in it do not leave it on any tier).
    ///
    /// # Errors
    /// It does not exist, is not a directory, or a directory above it could be
    /// replaced by another user.
    pub fn new(path: &Path, what: &str) -> Result<Pinned, DirError> {
        let canonical = walk(path, what)?;
        let meta = std::fs::symlink_metadata(&canonical).map_err(|e| DirError {
            what: what.into(),
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(DirError {
                what: what.into(),
                path: path.display().to_string(),
                message: "not a directory".into(),
            });
        }
        Ok(Pinned { path: canonical, identity: Identity { dev: meta.dev(), ino: meta.ino() } })
    }

    /// Checks, at run time, that the path still leads to the pinned directory,
    /// without following a link in its last component, and returns a handle on it.
    ///
    /// # Errors
    /// It is gone, no longer a directory, or another directory is at its path.
    pub fn open(&self) -> Result<Dir, DirError> {
        let err = |message: String| DirError {
            what: "mounted directory".into(),
            path: self.path.display().to_string(),
            message,
        };
        let dir = Dir::open_ambient_dir(&self.path, ambient_authority())
            .map_err(|e| err(format!("cannot be opened: {e}")))?;
        let lstat = std::fs::symlink_metadata(&self.path).map_err(|e| err(e.to_string()))?;
        use cap_std::fs::MetadataExt as _;
        let opened = dir.dir_metadata().map_err(|e| err(e.to_string()))?;
        let now = Identity { dev: opened.dev(), ino: opened.ino() };
        if lstat.file_type().is_symlink() || now != self.identity || (lstat.dev(), lstat.ino()) != (now.dev, now.ino) {
            return Err(err("was replaced since the policy was loaded".into()));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_opens_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        let dir = OwnedDir::open(&state, "state directory").expect("created");
        assert_eq!(std::fs::metadata(&state).expect("meta").mode() & 0o777, 0o700);
        drop(dir);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = OwnedDir::open(&state, "state directory").expect_err("shared");
        assert!(err.to_string().contains("writable by other users"), "{err}");
    }

    #[test]
    fn files_are_never_opened_through_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = OwnedDir::open(tmp.path(), "state directory").expect("open");
        std::fs::write(tmp.path().join("victim"), "keep").expect("victim");
        std::os::unix::fs::symlink(tmp.path().join("victim"), tmp.path().join("audit.db.head")).expect("link");
        let err = dir.open_file("audit.db.head", OpenOptions::new().write(true).create(true)).expect_err("link");
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP)) || err.kind() == io::ErrorKind::PermissionDenied,
            "{err}"
        );
        assert!(dir.private_file("audit.db.head").is_err());
        assert!(dir.create_new("audit.db.head").is_err());
        assert_eq!(std::fs::read_to_string(tmp.path().join("victim")).expect("victim"), "keep");
    }

    #[test]
    fn a_pinned_directory_that_is_replaced_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let pinned = Pinned::new(&data, "mount source").expect("pin");
        pinned.open().expect("same directory");
        std::fs::rename(&data, tmp.path().join("old")).expect("move");
        std::fs::create_dir(tmp.path().join("other")).expect("other");
        std::os::unix::fs::symlink(tmp.path().join("other"), &data).expect("link");
        let err = pinned.open().expect_err("replaced");
        assert!(err.to_string().contains("replaced"), "{err}");
    }
}
