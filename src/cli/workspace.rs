//! `terrarium workspace`: an operator's commands on workspaces (create, list,
//! log, diff, show, rollback, verify, export). Those that change a workspace or
//! find drift are recorded in the audit log.

use std::io::Write as _;
use std::process::ExitCode;

use super::args::{WorkspaceArgs, WorkspaceCommand};
use super::{CliError, EXIT_HOST};
use crate::policy::Policy;

/// Most bytes of diff `workspace diff` prints.
const DIFF_LIMIT: usize = 16 << 20;

pub(super) fn run(args: WorkspaceArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let path = crate::audit::default_path().map_err(|e| CliError { code: EXIT_HOST, error: e.into() })?;
    let sandbox = crate::Sandbox::builder().policy(policy).audit(path).build()?;
    let rt = super::runtime()?;
    let who = super::local_caller();
    let all = sandbox.workspaces()?;
    let get = |name: &str| all.get(name).map_err(crate::SandboxError::from);
    let mut code = ExitCode::SUCCESS;
    match args.command {
        WorkspaceCommand::Create { name } => {
            let m = rt.block_on(sandbox.create_workspace(&name, &who))?;
            println!("{}", super::json_line(&serde_json::json!({"workspace": name, "version": m.version})));
        }
        WorkspaceCommand::List => {
            for s in all.list().map_err(crate::SandboxError::from)? {
                println!("{}", super::json_line(&s));
            }
        }
        WorkspaceCommand::Log { name } => {
            for (m, sha) in get(&name)?.log().map_err(crate::SandboxError::from)? {
                println!(
                    "{}",
                    super::json_line(&serde_json::json!({
                        "version": m.version, "parent": m.parent, "created_unix": m.created_unix, "reason": m.reason,
                        "files": m.files(), "bytes": m.bytes(), "manifest_sha256": sha,
                    }))
                );
            }
        }
        WorkspaceCommand::Diff { name, a, b } => {
            let w = get(&name)?;
            let changes = w.diff(a, b).map_err(crate::SandboxError::from)?;
            for c in &changes {
                println!("{}", super::json_line(&serde_json::json!({"path": c.path, "action": c.action})));
            }
            // A run wrote this text: escaped on a terminal, exact into a pipe.
            use std::io::IsTerminal as _;
            let text = w.diff_text(&changes, DIFF_LIMIT);
            print!("{}", super::terminal::for_stream(&text, std::io::stdout().is_terminal()));
        }
        WorkspaceCommand::Show { name, version, path } => {
            let bytes = get(&name)?.show(version, &path).map_err(crate::SandboxError::from)?;
            use std::io::IsTerminal as _;
            let terminal = std::io::stdout().is_terminal();
            let mut out = std::io::stdout().lock();
            // A run wrote these bytes: exact into a pipe or file, escaped on a
            // terminal. A reader that closed the pipe has what it wanted.
            let _ = if terminal {
                let text = String::from_utf8_lossy(&bytes);
                out.write_all(super::terminal::lines_for_terminal(&text).as_bytes())
            } else {
                out.write_all(&bytes)
            }
            .and_then(|()| out.flush());
        }
        WorkspaceCommand::Rollback { name, version } => {
            let m = rt.block_on(sandbox.rollback_workspace(&name, version, &who))?;
            println!(
                "{}",
                super::json_line(&serde_json::json!({"workspace": name, "version": m.version, "files_of": version}))
            );
        }
        WorkspaceCommand::Verify { name } => {
            let (m, drift) = rt.block_on(sandbox.verify_workspace(&name))?;
            for c in &drift {
                println!("{}", super::json_line(&serde_json::json!({"path": c.path, "action": c.action})));
            }
            if drift.is_empty() {
                eprintln!("terrarium: workspace {name} matches its version {}", m.version);
            } else {
                eprintln!(
                    "terrarium: workspace {name}: {} path(s) differ from version {} (`terrarium workspace rollback \
                     {name} {}` restores them)",
                    drift.len(),
                    m.version,
                    m.version
                );
                code = ExitCode::from(1);
            }
        }
        WorkspaceCommand::Export { name, version, dir } => {
            get(&name)?.export(version, &dir).map_err(crate::SandboxError::from)?;
            eprintln!("terrarium: version {version} of {name} written to {}", dir.display());
        }
    }
    if let Err(e) = sandbox.flush_audit(std::time::Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
    Ok(code)
}
