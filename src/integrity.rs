//! Integrity of Terrarium's own deployment: a baseline of what it runs with (the
//! policy file, python.wasm, the compiled-module cache, the docker image's id),
//! recorded by `terrarium doctor --baseline`, and the check `terrarium doctor`
//! makes against it, naming every part that changed since.
//!
//! # Security invariant
//! The baseline is a private file of this user in the state directory (opened
//! through [`crate::dirs::OwnedDir`], never through a link); every part is named
//! by its digest, so a swapped file or image shows however its name reads.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use cap_std::fs::OpenOptions;

use crate::dirs::OwnedDir;

/// The baseline's file name in the state directory.
pub const FILE: &str = "baseline.json";

/// What one part of the deployment is, by digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// Where it is (a path, or the docker image's name).
    pub at: String,
    /// Its digest (`sha256` of a file's bytes; a directory's: of its files'
    /// names and digests; an image's: the engine's id), or why there is none.
    pub digest: String,
}

/// The deployment as recorded: parts by name (`policy`, `python.wasm`,
/// `module cache`, `docker image`).
pub type Baseline = BTreeMap<String, Part>;

/// The part for file `path`: its sha256, or the error reading it.
pub fn file_part(path: &Path) -> Part {
    let digest = std::fs::File::open(path)
        .and_then(crate::workspace::tree::hash)
        .map_or_else(|e| format!("unreadable: {e}"), |(sha, _)| sha);
    Part { at: path.display().to_string(), digest }
}

/// The part for directory `path`: sha256 over its regular files' names and
/// digests (sorted; not recursive), or the error reading it.
pub fn dir_part(path: &Path) -> Part {
    let listed = std::fs::read_dir(path).and_then(|entries| {
        let mut files = Vec::new();
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                files.push((e.file_name().to_string_lossy().into_owned(), file_part(&e.path()).digest));
            }
        }
        files.sort();
        Ok(files)
    });
    let digest = listed.map_or_else(
        |e| format!("unreadable: {e}"),
        |files| crate::audit::sha256_hex(serde_json::to_string(&files).unwrap_or_default().as_bytes()),
    );
    Part { at: path.display().to_string(), digest }
}

/// Reads the baseline in `state`; `None` when none was recorded.
///
/// # Errors
/// The state directory or the file cannot be used, or it is not a baseline.
pub fn load(state: &OwnedDir) -> Result<Option<Baseline>, String> {
    let Some(f) = state.read(FILE).map_err(|e| format!("{FILE}: {e}"))? else { return Ok(None) };
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text).map_err(|e| format!("{FILE}: {e}"))?;
    serde_json::from_str(&text).map(Some).map_err(|e| format!("{FILE} is not a baseline: {e}"))
}

/// Records `b` as the baseline in `state` (replacing any).
///
/// # Errors
/// The file cannot be written.
pub fn save(state: &OwnedDir, b: &Baseline) -> Result<(), String> {
    let text = serde_json::to_string_pretty(b).map_err(|e| e.to_string())?;
    let tmp = format!("{FILE}.tmp");
    let _ = state.remove(&tmp);
    let mut f =
        state.open_file(&tmp, OpenOptions::new().write(true).create_new(true)).map_err(|e| format!("{tmp}: {e}"))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("{tmp}: {e}"))?;
    state.rename(&tmp, FILE).map_err(|e| format!("{FILE}: {e}"))
}

/// What differs between the recorded baseline and `now`, one line per part.
pub fn compare(recorded: &Baseline, now: &Baseline) -> Vec<String> {
    let mut out = Vec::new();
    for (name, was) in recorded {
        match now.get(name) {
            None => out.push(format!("{name} ({}) is no longer part of the deployment", was.at)),
            Some(is) if is.at != was.at => out.push(format!("{name} moved from {} to {}", was.at, is.at)),
            Some(is) if is.digest != was.digest => {
                out.push(format!("{name} ({}) changed: {} -> {}", is.at, was.digest, is.digest));
            }
            Some(_) => {}
        }
    }
    for (name, is) in now {
        if !recorded.contains_key(name) {
            out.push(format!("{name} ({}) is new since the baseline", is.at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_or_a_new_part_is_named_and_the_baseline_round_trips() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("policy.yaml");
        std::fs::write(&f, "a").expect("write");
        let b: Baseline = [("policy".to_string(), file_part(&f))].into_iter().collect();
        let state = OwnedDir::open(&tmp.path().join("state"), "state directory").expect("state");
        assert_eq!(load(&state).expect("load"), None);
        save(&state, &b).expect("save");
        assert_eq!(load(&state).expect("load"), Some(b.clone()));
        std::fs::write(&f, "b").expect("write");
        let mut now: Baseline = [("policy".to_string(), file_part(&f))].into_iter().collect();
        now.insert("docker image".into(), Part { at: "img".into(), digest: "sha256:1".into() });
        let diff = compare(&b, &now);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("policy (") && diff[0].contains("changed"), "{diff:?}");
        assert!(diff[1].contains("new since the baseline"), "{diff:?}");
    }
}
