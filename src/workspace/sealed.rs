//! Encryption at rest of workspace stores (see [`crate::seal`]): with a data key,
//! every content a version holds is stored sealed, as `objects/SHA256.sealed`
//! (bound to its hash), where it would be `objects/SHA256` in the clear. The root
//! names the key its stores are sealed under in `.sealing`, written when a key is
//! first used. Live files and the copies runs work on are not sealed: runs and
//! people use them as files.
//!
//! # Invariant
//! A root sealed under a key is opened only with that key; with a key, nothing is
//! stored in the clear.

use std::io::{self, Read, Write as _};

use cap_fs_ext::DirExt as _;
use cap_std::fs::Dir;

use crate::seal::{DataKey, SealError};

/// The file in the root naming the key its stores are sealed under.
const MARKER: &str = ".sealing";

/// The suffix of a sealed object's name.
const SEALED: &str = ".sealed";

/// A content is bound to its hash and its workspace: copied into another
/// workspace's store, it does not open there.
fn context(workspace: &str, sha: &str) -> String {
    format!("workspace object:{workspace}:{sha}")
}

/// The data key for the stores under `root`: the configured one, which must be
/// the one the root is sealed under (the first key used seals it).
///
/// # Errors
/// A key configured but unreadable; the root sealed under a key and none or
/// another one given; the marker cannot be read or written.
pub(super) fn root_key(root: &crate::dirs::OwnedDir) -> Result<Option<DataKey>, String> {
    let key = DataKey::from_env().map_err(|e| e.to_string())?;
    // A root whose record was deleted is still sealed: its sealed contents say so.
    let under = match read_marker(root)? {
        Some(id) => Some(id),
        None => any_sealed(root)?,
    };
    match (under, key) {
        (None, None) => Ok(None),
        (None, Some(k)) => {
            put_marker(root, &k.id(), false)?;
            match read_marker(root)? {
                Some(id) if id != k.id() => Err(SealError::WrongKey { sealed: id, have: Some(k.id()) }.to_string()),
                _ => Ok(Some(k)),
            }
        }
        (Some(id), Some(k)) if id == k.id() => Ok(Some(k)),
        (Some(id), k) => Err(format!(
            "the workspaces' stores: {} (a rotation is `terrarium data-key rotate --old FILE`)",
            SealError::WrongKey { sealed: id, have: k.map(|k| k.id()) }
        )),
    }
}

/// The key id of a sealed content under `root`, if there is one.
fn any_sealed(root: &crate::dirs::OwnedDir) -> Result<Option<String>, String> {
    for ws in root.names().map_err(|e| e.to_string())?.into_iter().filter(|n| super::valid_name(n)) {
        let Ok(objects) = root.handle().open_dir_nofollow(&ws).and_then(|d| d.open_dir_nofollow("objects")) else {
            continue;
        };
        for e in objects.entries().map_err(|e| format!("workspace {ws}: {e}"))? {
            let name = e.map_err(|e| format!("workspace {ws}: {e}"))?.file_name().to_string_lossy().into_owned();
            if name.ends_with(SEALED) {
                let f = super::private_file(&objects, &name, false).map_err(|e| format!("workspace {ws}: {e}"))?;
                return crate::seal::stream_key_id(&f).map(Some).map_err(|e| format!("workspace {ws}: {e}"));
            }
        }
    }
    Ok(None)
}

/// Whether the root is still sealed as `key` says (nothing is stored under
/// another key, or in the clear, when another process sealed it since).
pub(super) fn still_sealed_as(root: &crate::dirs::OwnedDir, key: Option<&DataKey>) -> io::Result<()> {
    let under = read_marker(root).map_err(io::Error::other)?;
    if under.as_deref() == key.map(DataKey::id).as_deref() {
        return Ok(());
    }
    Err(io::Error::other(match under {
        Some(id) => SealError::WrongKey { sealed: id, have: key.map(DataKey::id) }.to_string(),
        None => "the workspaces' stores are no longer marked as sealed; nothing is stored".into(),
    }))
}

fn read_marker(root: &crate::dirs::OwnedDir) -> Result<Option<String>, String> {
    let err = |e: io::Error| format!("{}/{MARKER}: {e}", root.path().display());
    let Some(f) = root.read(MARKER).map_err(err)? else { return Ok(None) };
    let mut text = String::new();
    f.take(64).read_to_string(&mut text).map_err(err)?;
    let id = text.trim();
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{}/{MARKER}: not a key id", root.path().display()));
    }
    Ok(Some(id.to_string()))
}

/// Writes the marker `id` whole under a private name, then puts it in place:
/// linked when `replace` is false (of processes racing, the first wins and the
/// others read it back), renamed over the one there when true (a rotation, once
/// every store is sealed under it).
fn put_marker(root: &crate::dirs::OwnedDir, id: &str, replace: bool) -> Result<(), String> {
    let err = |e: io::Error| format!("{}/{MARKER}: {e}", root.path().display());
    let tmp = format!("{MARKER}.{}.tmp", std::process::id());
    let _ = root.remove(&tmp);
    let mut f = root.create_new(&tmp).map_err(err)?;
    f.write_all(format!("{id}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
    if replace {
        return root.handle().rename(&tmp, root.handle(), MARKER).map_err(err);
    }
    let linked = root.link(&tmp, MARKER);
    let _ = root.remove(&tmp);
    match linked {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(err(e)),
        _ => Ok(()),
    }
}

/// Opens stored content `sha` in `objects`: sealed when stored sealed (then
/// `key` must open it), as it is when stored in the clear (before a key was used).
pub(super) fn open(objects: &Dir, workspace: &str, sha: &str, key: Option<&DataKey>) -> io::Result<Box<dyn Read>> {
    match super::private_file(objects, &format!("{sha}{SEALED}"), false) {
        Ok(f) => {
            let Some(key) = key else {
                let sealed = crate::seal::stream_key_id(&f)?;
                return Err(SealError::WrongKey { sealed, have: None }.into());
            };
            Ok(Box::new(key.open_reader(&context(workspace, sha), io::BufReader::new(f))?))
        }
        // In the clear in a sealed store: from before the key (rotation seals
        // it), or put there by hand with a manifest naming it; refused either way.
        Err(e) if e.kind() == io::ErrorKind::NotFound && key.is_some() && stored(objects, sha) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "stored content {sha} is in the clear in a sealed store (from before the data key: `terrarium \
                     data-key rotate` seals it)"
            ),
        )),
        // In the clear, without a key: checked against its hash as it is read,
        // so a content put there by hand is refused, not shown.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Box::new(Hashed::new(super::private_file(objects, sha, false)?, sha)))
        }
        Err(e) => Err(e),
    }
}

/// A reader that fails at the end when what it read does not hash to `sha`.
struct Hashed<R> {
    inner: R,
    hash: sha2::Sha256,
    sha: String,
    checked: bool,
}

impl<R: Read> Hashed<R> {
    fn new(inner: R, sha: &str) -> Hashed<R> {
        Hashed { inner, hash: <sha2::Sha256 as sha2::Digest>::new(), sha: sha.to_string(), checked: false }
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if n > 0 {
            sha2::Digest::update(&mut self.hash, &out[..n]);
        } else if !self.checked && !out.is_empty() {
            self.checked = true;
            let got = crate::hex::encode(&sha2::Digest::finalize_reset(&mut self.hash));
            if got != self.sha {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("stored content {} does not match its hash (changed)", self.sha),
                ));
            }
        }
        Ok(n)
    }
}

/// Whether content `sha` is stored in `objects` as a process with `key` stores it
/// (sealed with a key: a copy in the clear from before does not count).
pub(super) fn stored_as(objects: &Dir, sha: &str, key: Option<&DataKey>) -> bool {
    match key {
        Some(_) => objects.symlink_metadata(format!("{sha}{SEALED}")).is_ok(),
        None => stored(objects, sha),
    }
}

/// Whether content `sha` is stored in `objects`, sealed or not.
pub(super) fn stored(objects: &Dir, sha: &str) -> bool {
    objects.symlink_metadata(sha).is_ok() || objects.symlink_metadata(format!("{sha}{SEALED}")).is_ok()
}

/// The name content `sha` is stored under with `key`.
pub(super) fn name(sha: &str, key: Option<&DataKey>) -> String {
    if key.is_some() { format!("{sha}{SEALED}") } else { sha.to_string() }
}

/// Copies `input` to `out` (sealed under `key` for content `sha`, when given),
/// returning the SHA-256 and size of what was read.
pub(super) fn copy_in(
    input: impl Read,
    out: &std::fs::File,
    workspace: &str,
    sha: &str,
    key: Option<&DataKey>,
) -> io::Result<(String, u64)> {
    match key {
        None => super::tree::copy_hashed(input, io::BufWriter::new(out)),
        Some(k) => {
            let mut w = k.seal_writer(&context(workspace, sha), io::BufWriter::new(out))?;
            let got = super::tree::copy_hashed(input, &mut w)?;
            w.finish()?;
            Ok(got)
        }
    }
}

/// What a rotation of the data key rewrote in the workspaces' stores.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resealed {
    /// Workspaces gone through.
    pub workspaces: usize,
    /// Stored contents sealed anew (under another key, or from the clear).
    pub objects: usize,
}

/// Seals every stored content of every workspace under `root` with `new`:
/// contents sealed under `old` are opened and sealed again, contents in the clear
/// are sealed; each checked against its hash before the old one is removed. The
/// root is then marked as sealed under `new`. Safe to run again after a failure.
///
/// # Errors
/// A content under a key that is neither, or that does not match its hash; the
/// file system failed.
pub(super) fn reseal(root: &crate::dirs::OwnedDir, old: Option<&DataKey>, new: &DataKey) -> Result<Resealed, String> {
    if let Some(id) = read_marker(root)?
        && id != new.id()
        && old.is_none_or(|o| o.id() != id)
    {
        return Err(SealError::WrongKey { sealed: id, have: old.map(DataKey::id) }.to_string());
    }
    let mut done = Resealed::default();
    let names = root.names().map_err(|e| e.to_string())?;
    for ws in names.into_iter().filter(|n| super::valid_name(n)) {
        let err = |e: io::Error| format!("workspace {ws}: {e}");
        let objects = root.handle().open_dir_nofollow(&ws).and_then(|d| d.open_dir_nofollow("objects")).map_err(err)?;
        done.workspaces += 1;
        let mut entries = Vec::new();
        for e in objects.entries().map_err(err)? {
            entries.push(e.map_err(err)?.file_name().to_string_lossy().into_owned());
        }
        for entry in entries {
            let (sha, sealed) = match entry.strip_suffix(SEALED) {
                Some(sha) => (sha.to_string(), true),
                None => (entry.clone(), false),
            };
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let input: Box<dyn Read> = if sealed {
                let f = super::private_file(&objects, &entry, false).map_err(err)?;
                let id = crate::seal::stream_key_id(&f).map_err(err)?;
                if id == new.id() {
                    continue;
                }
                let key = old.filter(|o| o.id() == id).ok_or_else(|| {
                    format!("workspace {ws}: {}", SealError::WrongKey { sealed: id, have: old.map(DataKey::id) })
                })?;
                let f = super::private_file(&objects, &entry, false).map_err(err)?;
                Box::new(key.open_reader(&context(&ws, &sha), io::BufReader::new(f)).map_err(err)?)
            } else {
                Box::new(super::private_file(&objects, &entry, false).map_err(err)?)
            };
            let tmp = format!(".tmp-{}", super::nonce());
            let out = super::private_file_new(&objects, &tmp).map_err(err)?;
            let copied = copy_in(input, &out, &ws, &sha, Some(new)).and_then(|(got, _)| {
                if got != sha {
                    return Err(io::Error::other(format!("stored content {sha} does not match its hash")));
                }
                out.sync_all()?;
                objects.rename(&tmp, &objects, format!("{sha}{SEALED}"))
            });
            if let Err(e) = copied {
                let _ = objects.remove_file(&tmp);
                return Err(err(e));
            }
            if !sealed {
                objects.remove_file(&entry).map_err(err)?;
            }
            done.objects += 1;
        }
    }
    put_marker(root, &new.id(), true)?;
    Ok(done)
}
