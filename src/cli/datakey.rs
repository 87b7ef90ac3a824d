//! `terrarium data-key`: making a data key, and rotating what is stored to the
//! key configured (see [`crate::seal`] and docs/operations.md).

use std::process::ExitCode;

use super::args::DataKeyCommand;
use super::{CliError, EXIT_HOST};
use std::io::Write as _;
use std::path::Path;

use crate::seal::DataKey;

pub(super) fn run(command: DataKeyCommand) -> Result<ExitCode, CliError> {
    let host = |e: String| CliError { code: EXIT_HOST, error: anyhow::anyhow!(e) };
    match command {
        DataKeyCommand::New { file } => {
            let id = new_key_file(&file).map_err(|e| host(e.to_string()))?;
            println!("wrote data key {id} to {}; set TERRARIUM_DATA_KEY_FILE={}", file.display(), file.display());
        }
        DataKeyCommand::Rotate { old, db, workspaces } => {
            let new = DataKey::from_env().map_err(|e| host(e.to_string()))?.ok_or_else(|| {
                CliError::usage(anyhow::anyhow!(
                    "no data key is configured to rotate to: set {} (or {})",
                    crate::seal::KEY_FILE_ENV,
                    crate::seal::KEY_ENV
                ))
            })?;
            let old = old.map(|f| DataKey::from_file(&f)).transpose().map_err(|e| host(e.to_string()))?;
            let db = match db {
                Some(db) => db,
                None => crate::audit::default_path().map_err(|e| host(e.to_string()))?,
            };
            // The audit database first: it refuses while any process writes it.
            let audit = if db.exists() {
                Some(crate::audit::reseal(&db, old.as_ref(), &new).map_err(|e| host(e.to_string()))?)
            } else {
                eprintln!(
                    "terrarium: no audit database at {}: nothing there to rotate (--db FILE names another)",
                    db.display()
                );
                None
            };
            let root = match workspaces {
                Some(root) => root,
                None => crate::workspace::default_root().map_err(|e| host(e.to_string()))?,
            };
            let stores = if root.exists() {
                Some(crate::workspace::Workspaces::reseal(&root, old.as_ref(), &new).map_err(|e| host(e.to_string()))?)
            } else {
                eprintln!(
                    "terrarium: no workspaces at {}: nothing there to rotate (--workspaces DIR names another root, \
                     e.g. the policy's workspaces.root)",
                    root.display()
                );
                None
            };
            println!(
                "{}",
                super::json_line(&serde_json::json!({
                    "key": new.id(), "audit": audit, "workspaces": stores,
                }))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a new key file at `path` (0600, refusing to replace anything): what
/// `terrarium data-key new` does. Returns the new key's id.
///
/// # Errors
/// The file exists or cannot be written.
fn new_key_file(path: &Path) -> Result<String, crate::seal::SealError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |message: String| crate::seal::SealError::Key { source_name: path.display().to_string(), message };
    let hex = DataKey::generate().map_err(err)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| err(format!("cannot create it: {e}")))?;
    f.write_all(format!("{hex}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
    Ok(DataKey::from_hex(&hex).map_err(err)?.id())
}
