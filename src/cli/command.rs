//! `terrarium command -- CMD…`: a system command checked against the policy's
//! `commands` rules and, when allowed (or approved), run in a fresh docker-tier
//! container; each is a `command` event in the audit log. Exit codes as `run`: 0
//! ok, 1 the command exited non-zero, 3 a limit, 4 denied (also: not approved in
//! time), 2 usage, 5 host error.
//!
//! `terrarium approvals list|show|approve|deny`: the approvals queue, in the audit
//! log's database; every submission and decision is an audit event naming who.

use std::process::ExitCode;

use super::terminal::{for_terminal, json_for_terminal};
use super::{ApprovalsArgs, ApprovalsCommand, CliError, CommandArgs, EXIT_HOST, exit_code};
use crate::approval::{Gate, Queue};
use crate::policy::Policy;

/// Exit code for a command that is denied.
const EXIT_DENIED: u8 = 4;

pub(super) fn run(args: CommandArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let line = command_line(&args.words);
    // A command that needs approval is denied at once, unless the caller waits for
    // a human's decision in the queue.
    let wait = match args.wait {
        Some(secs) if !secs.is_finite() || secs <= 0.0 || secs > crate::policy::MAX_APPROVAL_SECS => {
            let most = crate::policy::MAX_APPROVAL_SECS;
            return Err(CliError::usage(anyhow::anyhow!("--wait {secs}: expected 0 < SECS ≤ {most}")));
        }
        Some(secs) if !args.check => Some(std::time::Duration::from_secs_f64(secs)),
        _ => None,
    };
    // Every command is recorded in the audit log, like every `run`; its database
    // also holds the approvals queue a waiting caller needs.
    let path = crate::audit::default_path().map_err(|e| CliError { code: EXIT_HOST, error: e.into() })?;
    let mut builder = crate::Sandbox::builder().policy(policy).audit(path);
    if let Some(wait) = wait {
        builder = builder.announce(std::sync::Arc::new(move |item| {
            eprintln!(
                "terrarium: approval request {} ({}); waiting {:.0} s for: terrarium approvals approve {}",
                item.id,
                for_terminal(&item.reason),
                wait.as_secs_f64(),
                item.id
            );
        }));
    }
    let sandbox = builder.build()?;
    let report = super::runtime()?
        .block_on(sandbox.run_command(&line, wait, !args.check, &super::local_caller()))
        .map_err(|e| match e {
            crate::SandboxError::InvalidRequest(m) => CliError::usage(anyhow::anyhow!(m)),
            e => CliError::from(e),
        })?;
    if let Err(e) = sandbox.flush_audit(std::time::Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
    if args.json {
        println!("{}", super::json_line(&report));
    } else {
        match (&report.outcome, report.decision) {
            (Some(o), _) => super::print_outcome(o),
            (None, _) if report.allowed => {
                println!("allowed: {}", for_terminal(&crate::command::quote_words(&report.argv)));
            }
            (None, crate::command::Ruling::NeedsApproval) if report.approval.is_none() && wait.is_none() => eprintln!(
                "terrarium: needs approval: {}; denied (pass --wait SECS to queue it for a human)",
                for_terminal(&report.reason)
            ),
            (None, _) => eprintln!("terrarium: denied: {}", for_terminal(&report.reason)),
        }
    }
    Ok(match (report.allowed, &report.outcome) {
        (false, _) => ExitCode::from(EXIT_DENIED),
        (true, None) => ExitCode::SUCCESS,
        (true, Some(o)) => ExitCode::from(exit_code(o.status)),
    })
}

/// The approvals queue and the audit log in `db` (default: the audit log's
/// database), as one gate.
fn open_gate(db: Option<std::path::PathBuf>) -> Result<Gate, CliError> {
    let host = |e: anyhow::Error| CliError { code: EXIT_HOST, error: e };
    let path = match db {
        Some(p) => p,
        None => crate::audit::default_path().map_err(|e| host(e.into()))?,
    };
    let log = super::open_audit_log(&path)?;
    let queue = Queue::open(&path).map_err(|e| host(e.into()))?;
    Ok(Gate::new(queue, log))
}

pub(super) fn approvals(args: ApprovalsArgs) -> Result<ExitCode, CliError> {
    let host = |e: anyhow::Error| CliError { code: EXIT_HOST, error: e };
    let gate = open_gate(args.db)?;
    match args.command {
        ApprovalsCommand::List { status, before, limit } => {
            for item in
                super::runtime()?.block_on(gate.list(status, before, usize::from(limit))).map_err(|e| host(e.into()))?
            {
                println!("{}", super::json_line(&item));
            }
        }
        ApprovalsCommand::Show { id } => match super::runtime()?.block_on(gate.get(id)).map_err(|e| host(e.into()))? {
            Some(item) => {
                println!("{}", json_for_terminal(&serde_json::to_string_pretty(&item).unwrap_or_default()));
            }
            None => return Err(CliError::usage(anyhow::anyhow!("no approval request {id}"))),
        },
        ApprovalsCommand::Approve(d) | ApprovalsCommand::Deny(d) if d.id < 1 => {
            return Err(CliError::usage(anyhow::anyhow!("no approval request {}", d.id)));
        }
        ApprovalsCommand::Approve(d) => {
            // Nothing is approved into running while the deployment is stopped.
            let dir = match gate.audit().path().parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            if let Some(s) = crate::sandbox::deployment_stopped(&dir) {
                return Err(CliError::usage(anyhow::anyhow!(
                    "the deployment is stopped by {} ({}): nothing is approved until `terrarium resume`",
                    s.by,
                    s.reason
                )));
            }
            record_decision(&gate, d, true)?
        }
        ApprovalsCommand::Deny(d) => record_decision(&gate, d, false)?,
    }
    flush(&gate);
    Ok(ExitCode::SUCCESS)
}

/// Waits until the audit events of this command are in the database.
fn flush(gate: &Gate) {
    if let Err(e) = gate.audit().flush(std::time::Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
}

fn record_decision(gate: &Gate, d: super::args::DecideArgs, approve: bool) -> Result<(), CliError> {
    let who = d
        .who
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("who decides? pass --as NAME (no $USER)")))?;
    let item = match super::runtime()?.block_on(gate.decide(d.id, approve, &who, d.note.as_deref())) {
        Ok(item) => item,
        Err(
            e @ (crate::approval::ApprovalError::Decided { .. }
            | crate::approval::ApprovalError::NotFound(_)
            | crate::approval::ApprovalError::BadDecider
            | crate::approval::ApprovalError::NoteTooLong(_)
            | crate::approval::ApprovalError::OwnRequest(_)),
        ) => {
            return Err(CliError::usage(e));
        }
        Err(e) => return Err(CliError { code: EXIT_HOST, error: e.into() }),
    };
    println!("{}", super::json_line(&item));
    Ok(())
}

/// One argument is taken as the command line itself; several are words, quoted so
/// that each stays one literal word.
fn command_line(words: &[String]) -> String {
    if let [line] = words {
        return line.clone();
    }
    crate::command::quote_words(words)
}
