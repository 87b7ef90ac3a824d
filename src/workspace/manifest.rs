//! A workspace version's manifest, and the change set between two trees.
//!
//! A manifest lists every file and directory of one version (path, type, mode, and
//! for a file its size and sha256); file contents live apart, by hash. A manifest is
//! written once and never changed; its own sha256 is what the audit log records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, FIFO, socket or device: never in a manifest (a run that
    /// leaves one is refused); only what `verify` finds in a live directory.
    Special,
}

/// One file or directory of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File or directory.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    /// A file's size in bytes (0 for a directory).
    #[serde(default)]
    pub size: u64,
    /// A file's content hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Entry {
    /// A directory with `mode`.
    pub fn dir(mode: u32) -> Entry {
        Entry { kind: Kind::Dir, mode, size: 0, sha256: None }
    }

    /// A file.
    pub fn file(mode: u32, size: u64, sha256: String) -> Entry {
        Entry { kind: Kind::File, mode, size, sha256: Some(sha256) }
    }
}

/// One version of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The workspace's name.
    pub workspace: String,
    /// This version's number (0: the empty version made at creation).
    pub version: u64,
    /// The version it was made from (`None` for version 0).
    pub parent: Option<u64>,
    /// When it was made (seconds since the Unix epoch).
    pub created_unix: u64,
    /// Why it was made (`created`, `run REQUEST on TIER`, `rollback to 3`, …).
    pub reason: String,
    /// Every file and directory, by `/`-separated path.
    pub entries: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Files in it.
    pub fn files(&self) -> usize {
        self.entries.values().filter(|e| e.kind == Kind::File).count()
    }

    /// Bytes its files hold.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }
}

/// How one path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// It is new.
    Added,
    /// Its content (or its type) changed.
    Modified,
    /// Only its mode changed.
    Mode,
    /// It is gone.
    Deleted,
}

/// One path's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The path, `/`-separated, relative to the workspace.
    pub path: String,
    /// What happened to it.
    pub action: Action,
    /// Before (`None` when added).
    pub old: Option<Entry>,
    /// After (`None` when deleted).
    pub new: Option<Entry>,
}

/// The changes that turn tree `old` into tree `new`, by path.
pub fn changes(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, o) in old {
        match new.get(path) {
            None => out.push(Change { path: path.clone(), action: Action::Deleted, old: Some(o.clone()), new: None }),
            Some(n) if n == o => {}
            Some(n) => {
                let action = if n.kind == o.kind && n.sha256 == o.sha256 && n.size == o.size {
                    Action::Mode
                } else {
                    Action::Modified
                };
                out.push(Change { path: path.clone(), action, old: Some(o.clone()), new: Some(n.clone()) });
            }
        }
    }
    for (path, n) in new {
        if !old.contains_key(path) {
            out.push(Change { path: path.clone(), action: Action::Added, old: None, new: Some(n.clone()) });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The digest of a change set made on version `base`: sha256 of its canonical JSON.
pub fn digest(workspace: &str, base: u64, changes: &[Change]) -> String {
    let text = serde_json::json!({"workspace": workspace, "base": base, "changes": changes}).to_string();
    super::sha256_hex(text.as_bytes())
}

/// Whether `path` is a path a manifest may hold: relative, `/`-separated, no empty,
/// `.` or `..` part, no NUL.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty() && !path.contains('\0') && path.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(items: &[(&str, Entry)]) -> BTreeMap<String, Entry> {
        items.iter().map(|(p, e)| ((*p).to_string(), e.clone())).collect()
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let a = Entry::file(0o644, 1, "aa".into());
        let old = tree(&[("keep", a.clone()), ("edit", a.clone()), ("chmod", a.clone()), ("gone", a.clone())]);
        let new = tree(&[
            ("keep", a.clone()),
            ("edit", Entry::file(0o644, 2, "bb".into())),
            ("chmod", Entry::file(0o755, 1, "aa".into())),
            ("new", Entry::dir(0o755)),
        ]);
        let got: Vec<(String, Action)> = changes(&old, &new).into_iter().map(|c| (c.path, c.action)).collect();
        assert_eq!(
            got,
            vec![
                ("chmod".into(), Action::Mode),
                ("edit".into(), Action::Modified),
                ("gone".into(), Action::Deleted),
                ("new".into(), Action::Added)
            ]
        );
    }

    #[test]
    fn paths_that_could_leave_the_workspace_are_not_valid() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", "./a", "a\0b"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(valid_path("a/b c/d.txt"));
    }
}
