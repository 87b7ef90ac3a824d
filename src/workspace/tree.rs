//! Reading a directory tree back from a run, and writing one for it, through
//! `cap-std` handles only.
//!
//! # Security invariant
//! What a run left behind is read without ever following a symbolic link: every
//! directory is opened with `O_NOFOLLOW` relative to its parent's handle, every file
//! likewise, and what was opened is checked (`fstat`) before a byte is read. A
//! symbolic link, hard link, FIFO, socket or device is refused with its path; names
//! that are not UTF-8 are refused; quotas stop the walk as soon as they are passed,
//! so a run cannot make the host read more than the policy allows.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;

use cap_std::fs::MetadataExt as _;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};

use super::manifest::{Entry, Kind};
use super::{Quota, Refusal};

/// Deepest directory nesting a workspace may have.
pub const MAX_DEPTH: usize = 128;

/// Permission bits a workspace records (set-id and sticky bits are dropped).
pub const MODE_BITS: u32 = 0o777;

/// Longest path (bytes, relative to the workspace) a workspace may hold: far
/// below the system's limit on a whole path, which the live directory's own path
/// adds to.
pub const MAX_PATH: usize = 1024;

type Step = Result<(), Result<Refusal, io::Error>>;

/// Reads the tree under `root` into entries (relative `/`-separated paths), each
/// file's content hashed, bounded by `quota`. `survey`: record links and special
/// files as [`Kind::Special`] instead of refusing them (for `verify`, which reads
/// a live directory rather than what a run left). Depth first, holding one
/// descriptor per level (at most [`MAX_DEPTH`]), however wide the tree.
///
/// # Errors
/// `Err(Ok(refusal))`: something the run left is refused (its path named);
/// `Err(Err(io))`: the host could not read it.
pub fn read(root: &Dir, quota: &Quota, survey: bool) -> Result<BTreeMap<String, Entry>, Result<Refusal, io::Error>> {
    let mut walk = Walk { quota, survey, entries: BTreeMap::new(), total: 0 };
    walk.dir(root, "", 0)?;
    Ok(walk.entries)
}

struct Walk<'q> {
    quota: &'q Quota,
    survey: bool,
    entries: BTreeMap<String, Entry>,
    total: u64,
}

/// The names in `dir` with their types, sorted; the listing's descriptor is
/// closed before the caller goes deeper.
fn listing(dir: &Dir, prefix: &str) -> Result<Vec<(String, cap_std::fs::FileType)>, Result<Refusal, io::Error>> {
    let mut names = Vec::new();
    for e in dir.entries().map_err(Err)? {
        let e = e.map_err(Err)?;
        let raw = e.file_name();
        let Some(name) = raw.to_str() else {
            let shown = format!("{prefix}{}", raw.to_string_lossy());
            return Err(Ok(Refusal::new(shown, "its name is not UTF-8")));
        };
        names.push((name.to_string(), e.file_type().map_err(Err)?));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Dir, prefix: &str, depth: usize) -> Step {
        for (name, ft) in listing(dir, prefix)? {
            let path = format!("{prefix}{name}");
            self.entry(dir, &name, ft, path, depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &Dir, name: &str, ft: cap_std::fs::FileType, path: String, depth: usize) -> Step {
        let quota = self.quota;
        if self.entries.len() as u64 >= quota.max_files {
            return Err(Ok(Refusal::new(
                path,
                &format!("the workspace would hold more than max_files ({}) entries", quota.max_files),
            )));
        }
        if !self.survey {
            if name.chars().any(char::is_control) {
                return Err(Ok(Refusal::new(path, "its name has a control character (a newline, an escape)")));
            }
            if path.len() > MAX_PATH {
                return Err(Ok(Refusal::new(path, &format!("its path is longer than {MAX_PATH} bytes"))));
            }
        }
        // What `verify` compares keeps the set-id and sticky bits too (a live file
        // made set-uid behind Terrarium's back is drift).
        let bits = if self.survey { 0o7777 } else { MODE_BITS };
        if self.survey && !ft.is_dir() && !ft.is_file() {
            let meta = dir.symlink_metadata(name).map_err(Err)?;
            self.entries
                .insert(path, Entry { kind: Kind::Special, mode: meta.mode() & MODE_BITS, size: 0, sha256: None });
            return Ok(());
        }
        if ft.is_symlink() {
            return Err(Ok(Refusal::new(path, "it is a symbolic link (workspaces hold files and directories only)")));
        }
        if ft.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                return Err(Ok(Refusal::new(path, &format!("directories nest deeper than {MAX_DEPTH}"))));
            }
            let sub = dir.open_dir_nofollow(name).map_err(|e| refused_or(e, &path))?;
            let meta = sub.dir_metadata().map_err(Err)?;
            self.entries.insert(path.clone(), Entry::dir(meta.mode() & bits));
            return self.dir(&sub, &format!("{path}/"), depth + 1);
        }
        if !ft.is_file() {
            return Err(Ok(Refusal::new(
                path,
                "it is a FIFO, socket or device (workspaces hold files and directories only)",
            )));
        }
        let mut options = OpenOptions::new();
        options.read(true).follow(FollowSymlinks::No);
        cap_std::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = dir.open_with(name, &options).map_err(|e| refused_or(e, &path))?.into_std();
        let meta = file.metadata().map_err(Err)?;
        if !meta.is_file() {
            return Err(Ok(Refusal::new(path, "it is not a regular file")));
        }
        if meta.nlink() > 1 && !self.survey {
            return Err(Ok(Refusal::new(path, "it is a hard link (it has more than one name)")));
        }
        if meta.len() > quota.max_file_bytes {
            return Err(Ok(Refusal::new(
                path,
                &format!("it is {} bytes, more than max_file_size ({} bytes)", meta.len(), quota.max_file_bytes),
            )));
        }
        self.total = self.total.saturating_add(meta.len());
        if self.total > quota.max_total_bytes {
            return Err(Ok(Refusal::new(
                path,
                &format!("the workspace would hold more than max_total_size ({} bytes)", quota.max_total_bytes),
            )));
        }
        let (sha, size) = hash(file.take(quota.max_file_bytes.saturating_add(1))).map_err(Err)?;
        if size != meta.len() {
            return Err(Ok(Refusal::new(path, "it changed while it was read")));
        }
        self.entries.insert(path, Entry::file(meta.mode() & bits, size, sha));
        Ok(())
    }
}

/// Whether `entries` fit `quota` (entries, each file, the total): the reason
/// when they do not.
pub fn fits(entries: &BTreeMap<String, Entry>, quota: &Quota) -> Option<String> {
    if entries.len() as u64 > quota.max_files {
        return Some(format!("more than max_files ({}) entries", quota.max_files));
    }
    if let Some((p, _)) = entries.iter().find(|(_, e)| e.size > quota.max_file_bytes) {
        return Some(format!("{p}: more than max_file_size ({} bytes)", quota.max_file_bytes));
    }
    let total: u64 = entries.values().map(|e| e.size).sum();
    (total > quota.max_total_bytes)
        .then(|| format!("more than max_total_size ({} bytes) in all", quota.max_total_bytes))
}

/// A refusal for what cannot be opened without following a link; other errors
/// stay host errors.
fn refused_or(e: io::Error, path: &str) -> Result<Refusal, io::Error> {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR | libc::ENXIO) => {
            Ok(Refusal::new(path.to_string(), "it changed into a link or special file while it was read"))
        }
        Some(libc::EACCES) => Ok(Refusal::new(path.to_string(), "its mode does not let Terrarium read it")),
        _ => Err(e),
    }
}

/// sha256 (hex) and length of everything `r` yields.
pub fn hash(r: impl Read) -> io::Result<(String, u64)> {
    copy_hashed(r, io::sink())
}

/// Copies `r` into `w`, hashing it: sha256 (hex) and length.
pub fn copy_hashed(mut r: impl Read, mut w: impl Write) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n: u64 = 0;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    w.flush()?;
    Ok((crate::hex::encode(&h.finalize()), n))
}

/// Whether the tree under `root` is past `quota` (by entries, a file's size, or
/// the total), without reading a byte of content or following a link: the
/// reason, naming the path, or `None`. Depth first, one descriptor per level.
/// What cannot be listed or measured counts as past the quota (a run must not
/// hide from the guard).
pub fn over_quota(root: &Dir, quota: &Quota) -> Option<String> {
    let mut seen = (0u64, 0u64);
    measure(root, "", quota, &mut seen, 0)
}

fn measure(dir: &Dir, prefix: &str, quota: &Quota, seen: &mut (u64, u64), depth: usize) -> Option<String> {
    let unreadable = |what: &str| Some(format!("{prefix}{what} cannot be measured"));
    let Ok(entries) = dir.entries() else { return unreadable("") };
    let mut subdirs = Vec::new();
    for e in entries {
        let Ok(e) = e else { return unreadable("") };
        let name = e.file_name().to_string_lossy().into_owned();
        seen.0 += 1;
        if seen.0 > quota.max_files {
            return Some(format!("{prefix}{name}: more than max_files ({}) entries", quota.max_files));
        }
        let Ok(meta) = e.metadata() else { return unreadable(&name) };
        if meta.is_dir() {
            subdirs.push(name);
            continue;
        }
        if meta.len() > quota.max_file_bytes {
            return Some(format!("{prefix}{name}: more than max_file_size ({} bytes)", quota.max_file_bytes));
        }
        seen.1 = seen.1.saturating_add(meta.len());
        if seen.1 > quota.max_total_bytes {
            return Some(format!("more than max_total_size ({} bytes) in all", quota.max_total_bytes));
        }
    }
    if depth + 1 >= MAX_DEPTH && !subdirs.is_empty() {
        return Some(format!("{prefix}: directories nest deeper than {MAX_DEPTH}"));
    }
    for name in subdirs {
        let Ok(sub) = dir.open_dir_nofollow(&name) else { return unreadable(&name) };
        if let Some(why) = measure(&sub, &format!("{prefix}{name}/"), quota, seen, depth + 1) {
            return Some(why);
        }
    }
    None
}

/// Gives directory `dir` to `uid` and `gid`. cap-std opens directories as paths
/// only (`O_PATH`), which `fchown` refuses; the handle's `/proc/self/fd` entry
/// leads to the same directory whatever happens to its name.
pub fn chown_dir(dir: &Dir, uid: u32, gid: u32) -> io::Result<()> {
    let by_handle = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
    std::os::unix::fs::chown(by_handle, Some(uid), Some(gid))
}

/// Splits a manifest path into its parent directory (`""` for the top) and its
/// last name.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Opens the directory `path` (relative, `/`-separated, no links followed) under
/// `root`; `""` is `root` itself.
pub fn open_dir(root: &Dir, path: &str) -> io::Result<Dir> {
    let mut dir = root.try_clone()?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir = dir.open_dir_nofollow(part)?;
    }
    Ok(dir)
}

/// Writes `entries` under the empty directory `root`: directories (parents
/// first, as the map's order gives them; their modes last, so that a read-only
/// directory still gets its files) and files with their content from `content`
/// and their mode; `owner`: give everything to this uid and gid.
///
/// # Errors
/// As the system calls.
pub fn write(
    root: &Dir,
    entries: &BTreeMap<String, Entry>,
    content: &dyn Fn(&str) -> io::Result<Box<dyn Read>>,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use cap_std::fs::{DirBuilder, DirBuilderExt as _, PermissionsExt as _};
    for (path, e) in entries {
        let (parent, name) = split(path);
        let dir = open_dir(root, parent)?;
        match e.kind {
            Kind::Dir => {
                let mut b = DirBuilder::new();
                b.mode(0o700);
                dir.create_dir_with(name, &b)?;
                if let Some((uid, gid)) = owner {
                    chown_dir(&dir.open_dir_nofollow(name)?, uid, gid)?;
                }
            }
            Kind::File => {
                let mut options = OpenOptions::new();
                options.write(true).create_new(true).follow(FollowSymlinks::No);
                cap_std::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let out = dir.open_with(name, &options)?.into_std();
                let sha = e.sha256.as_deref().unwrap_or_default();
                let (got, _) = copy_hashed(content(sha)?, io::BufWriter::new(&out))?;
                if got != sha {
                    return Err(io::Error::other(format!("the stored content of {path} does not match its hash")));
                }
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
                }
                out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(e.mode))?;
            }
            Kind::Special => return Err(io::Error::other(format!("{path} is not a file or directory"))),
        }
    }
    for (path, e) in entries.iter().rev().filter(|(_, e)| e.kind == Kind::Dir) {
        let (parent, name) = split(path);
        open_dir(root, parent)?.set_permissions(name, cap_std::fs::Permissions::from_mode(e.mode))?;
    }
    Ok(())
}
