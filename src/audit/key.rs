//! The audit log's key: what makes its chain, anchor, head and journals tamper
//! evident to anyone who cannot read it.
//!
//! 32 random bytes, hex, in `$TERRARIUM_AUDIT_KEY` (a file path), else
//! `$XDG_CONFIG_HOME/terrarium/audit.key`, else `~/.config/terrarium/audit.key`:
//! outside the state directory, so that whoever can write the database, its head or
//! a journal (a shared or restored data directory, a backup copy, a process that
//! may write the state directory but not the configuration) cannot recompute the
//! chain after an edit. Created 0600 on first use, in a directory checked like the
//! state directory (see docs/audit.md).
//!
//! # What it cannot detect
//! Whoever can read the key (root, or the user Terrarium runs as) can rewrite the
//! whole log consistently; and a log rolled back whole to an earlier state (the
//! database, its head and journals together, as a backup of them all) verifies.
//! Copying the head file (`audit.db.head`: the newest row's seq, hash and MAC) to
//! a place such a writer cannot reach, and comparing, detects both.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuditError;
use crate::dirs::OwnedDir;

/// A loaded key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Where the key lives (see the module docs).
///
/// # Errors
/// No `TERRARIUM_AUDIT_KEY`, `XDG_CONFIG_HOME` or `HOME`.
pub fn path() -> Result<PathBuf, AuditError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("TERRARIUM_AUDIT_KEY")
        .or_else(|| env("XDG_CONFIG_HOME").map(|d| d.join("terrarium").join("audit.key")))
        .or_else(|| env("HOME").map(|h| h.join(".config").join("terrarium").join("audit.key")))
        .ok_or_else(|| AuditError::Key {
            path: PathBuf::from("audit.key"),
            message: "no TERRARIUM_AUDIT_KEY, XDG_CONFIG_HOME or HOME to keep it in".into(),
        })
}

impl Key {
    /// Loads the key, creating it when `create` and it does not exist.
    ///
    /// # Errors
    /// Its directory is refused, the file is not a regular file of this user, is
    /// readable by others, or does not hold 64 hex digits; or it is missing and
    /// `create` is false.
    pub fn load(create: bool) -> Result<Key, AuditError> {
        let file = path()?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = OwnedDir::open(dir, "audit key directory")?;
        let err = |message: String| AuditError::Key { path: file.clone(), message };
        let mut found = dir.read(&name).map_err(|e| err(e.to_string()))?;
        if found.is_none() && create {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).map_err(|e| err(format!("no randomness for a new key: {e}")))?;
            // Written whole under a private name, then linked into place: a
            // reader never sees a partial key, and of processes racing to make
            // it, the first link wins and the others use it.
            let tmp = format!(".{name}.{}.tmp", std::process::id());
            let _ = dir.remove(&tmp);
            let mut f = dir.create_new(&tmp).map_err(|e| err(format!("cannot create it: {e}")))?;
            f.write_all(format!("{}\n", crate::hex::encode(&bytes)).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            match dir.link(&tmp, &name) {
                Ok(()) => tracing::info!(path = %file.display(), "created the audit key"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let _ = dir.remove(&tmp);
                    return Err(err(format!("cannot create it: {e}")));
                }
            }
            let _ = dir.remove(&tmp);
            found = dir.read(&name).map_err(|e| err(e.to_string()))?;
        }
        let text = match found {
            Some(mut f) => {
                use std::os::unix::fs::MetadataExt;
                let meta = f.metadata().map_err(|e| err(e.to_string()))?;
                if meta.mode() & 0o077 != 0 {
                    return Err(err(format!("readable by others (mode {:o}); chmod 600 it", meta.mode() & 0o777)));
                }
                let mut text = String::new();
                f.read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
                text
            }
            None => return Err(err("the audit key is missing (keyed rows cannot be checked without it)".into())),
        };
        let key: [u8; 32] = crate::hex::decode(text.trim())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| err("not an audit key (64 hex digits expected)".into()))?;
        Ok(Key(key))
    }

    /// A key with these bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// HMAC-SHA256 of `parts`, each prefixed by its length, hex.
    pub fn mac(&self, parts: &[&str]) -> String {
        #[allow(clippy::expect_used, reason = "HMAC takes a key of any length")]
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        for part in parts {
            m.update(&(part.len() as u64).to_le_bytes());
            m.update(part.as_bytes());
        }
        crate::hex::encode(&m.finalize().into_bytes())
    }

    /// Whether two hex MACs are equal (compared in constant time).
    pub fn verify_hex(&self, want: &str, mac: &str) -> bool {
        // The length of a MAC is not a secret; its bytes are.
        want.len() == mac.len() && bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac.as_bytes()))
    }

    /// Whether `mac` is the MAC of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&str], mac: &str) -> bool {
        self.verify_hex(&self.mac(parts), mac)
    }
}
