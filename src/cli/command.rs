//! `terrarium command -- CMD…`: a system command checked against the policy's
//! `commands` rules and, when allowed (or approved), run in a fresh docker-tier
//! container. Exit codes as `run`: 0 ok, 1 the command exited non-zero, 3 a limit,
//! 4 denied (also: not approved in time), 2 usage, 5 host error.
//!
//! `terrarium approvals list|show|approve|deny`: the approvals queue, in the audit
//! log's database; every submission and decision is an audit event naming who.

use std::process::ExitCode;

use super::{ApprovalsArgs, ApprovalsCommand, CliError, CommandArgs, EXIT_HOST, exit_code};
use crate::approval::Queue;
use crate::audit::{AuditLog, Event};
use crate::command::{Decision, decide};
use crate::policy::{Policy, Tier};

/// Exit code for a command that is denied.
const EXIT_DENIED: u8 = 4;

pub(super) fn run(args: CommandArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let line = command_line(&args.words);
    let decision = decide(&line, &policy.command_rules());
    let (mut kind, mut reason, argv) = match &decision {
        Decision::Allow { argv } => ("allow", String::new(), argv.clone()),
        Decision::Deny { reason } => ("deny", reason.clone(), Vec::new()),
        Decision::NeedsApproval { argv, reason } => ("needs_approval", reason.clone(), argv.clone()),
    };
    // Commands run only in the docker tier: a policy that refuses it is told before
    // anything is queued for a human or run.
    if !matches!(decision, Decision::Deny { .. })
        && !args.check
        && let Some(why) = crate::router::refusal(&policy, Tier::Docker)
    {
        return Err(CliError::usage(anyhow::anyhow!("commands run only in the docker tier, and {why}")));
    }
    // A command that needs approval is denied at once, unless the caller waits for
    // a human's decision in the queue.
    let mut approval = None;
    if let (Decision::NeedsApproval { .. }, Some(secs), false) = (&decision, args.wait, args.check) {
        if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
            return Err(CliError::usage(anyhow::anyhow!("--wait {secs}: expected 0 < SECS ≤ 86400")));
        }
        let item = wait_for_approval(&argv, &reason, std::time::Duration::from_secs_f64(secs))?;
        if item.status == "approved" {
            kind = "allow";
        } else {
            reason = format!("{reason}; approval request {} ended {}", item.id, item.status);
        }
        approval = Some(item);
    }
    let allowed = kind == "allow";
    let outcome = if allowed && !args.check { Some(run_in_docker(&policy, &argv)?) } else { None };
    if args.json {
        let v = serde_json::json!({
            "decision": kind, "reason": reason, "argv": argv, "approval": approval, "outcome": outcome
        });
        println!("{v}");
    } else {
        match (&decision, &outcome) {
            (Decision::Deny { reason }, _) => eprintln!("terrarium: denied: {reason}"),
            (Decision::NeedsApproval { .. }, None) if approval.is_some() => eprintln!("terrarium: denied: {reason}"),
            (Decision::NeedsApproval { reason, .. }, None) => {
                eprintln!("terrarium: needs approval: {reason}; denied (pass --wait SECS to queue it for a human)")
            }
            (Decision::Allow { argv }, None) => println!("allowed: {}", argv.join(" ")),
            (_, Some(o)) => {
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                if let Some(err) = &o.error {
                    eprintln!("terrarium: {}: {}: {}", o.status.as_str(), err.kind, err.message);
                }
            }
        }
    }
    Ok(match (allowed, outcome) {
        (false, _) => ExitCode::from(EXIT_DENIED),
        (true, None) => ExitCode::SUCCESS,
        (true, Some(o)) => ExitCode::from(exit_code(o.status)),
    })
}

/// Queues `argv` for approval, records that, waits, and records how it ended.
fn wait_for_approval(
    argv: &[String],
    reason: &str,
    wait: std::time::Duration,
) -> Result<crate::approval::Item, CliError> {
    let host = |e: anyhow::Error| CliError { code: EXIT_HOST, error: e };
    let path = crate::audit::default_path().map_err(|e| host(e.into()))?;
    let log = super::open_audit_log(&path)?;
    let queue = Queue::open(&path).map_err(|e| host(e.into()))?;
    let item = queue.submit("command", &serde_json::json!(argv), reason, wait).map_err(|e| host(e.into()))?;
    record(&log, "approval_requested", &item)?;
    eprintln!(
        "terrarium: approval request {} ({reason}); waiting {:.0} s for: terrarium approvals approve {}",
        item.id,
        wait.as_secs_f64(),
        item.id
    );
    let end = queue.wait(item.id, std::time::Duration::from_millis(200)).map_err(|e| host(e.into()))?;
    if end.status == "expired" {
        record(&log, "approval_expired", &end)?;
    }
    let _ = log.flush(std::time::Duration::from_secs(10));
    Ok(end)
}

fn record(log: &AuditLog, kind: &str, item: &crate::approval::Item) -> Result<(), CliError> {
    let data = serde_json::to_value(item).unwrap_or_default();
    log.record(Event { kind: kind.into(), request_id: Some(format!("approval-{}", item.id)), data, code: None })
        .map_err(|e| CliError { code: EXIT_HOST, error: e.into() })
}

pub(super) fn approvals(args: ApprovalsArgs) -> Result<ExitCode, CliError> {
    let host = |e: anyhow::Error| CliError { code: EXIT_HOST, error: e };
    let path = match args.db {
        Some(p) => p,
        None => crate::audit::default_path().map_err(|e| host(e.into()))?,
    };
    let queue = Queue::open(&path).map_err(|e| host(e.into()))?;
    match args.command {
        ApprovalsCommand::List { status } => {
            if let Some(s) = &status
                && !["pending", "approved", "denied", "expired"].contains(&s.as_str())
            {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--status {s:?}: expected pending, approved, denied or expired"
                )));
            }
            for item in queue.list(status.as_deref()).map_err(|e| host(e.into()))? {
                println!("{}", serde_json::to_string(&item).unwrap_or_default());
            }
        }
        ApprovalsCommand::Show { id } => match queue.get(id).map_err(|e| host(e.into()))? {
            Some(item) => println!("{}", serde_json::to_string_pretty(&item).unwrap_or_default()),
            None => return Err(CliError::usage(anyhow::anyhow!("no approval request {id}"))),
        },
        ApprovalsCommand::Approve(d) | ApprovalsCommand::Deny(d) if d.id < 1 => {
            return Err(CliError::usage(anyhow::anyhow!("no approval request {}", d.id)));
        }
        ApprovalsCommand::Approve(d) => record_decision(&queue, &path, d, true)?,
        ApprovalsCommand::Deny(d) => record_decision(&queue, &path, d, false)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn record_decision(
    queue: &Queue,
    path: &std::path::Path,
    d: super::args::DecideArgs,
    approve: bool,
) -> Result<(), CliError> {
    let who = d
        .who
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("who decides? pass --as NAME (no $USER)")))?;
    let item = match queue.decide(d.id, approve, &who, d.note.as_deref()) {
        Ok(item) => item,
        Err(e @ (crate::approval::ApprovalError::Decided { .. } | crate::approval::ApprovalError::NotFound(_))) => {
            return Err(CliError::usage(e));
        }
        Err(e) => return Err(CliError { code: EXIT_HOST, error: e.into() }),
    };
    let log = super::open_audit_log(path)?;
    record(&log, if approve { "approval_approved" } else { "approval_denied" }, &item)?;
    let _ = log.flush(std::time::Duration::from_secs(10));
    println!("{}", serde_json::to_string(&item).unwrap_or_default());
    Ok(())
}

/// One argument is taken as the command line itself; several are words, quoted so
/// that each stays one literal word.
fn command_line(words: &[String]) -> String {
    if let [line] = words {
        return line.clone();
    }
    words.iter().map(|w| crate::command::quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(feature = "docker")]
fn run_in_docker(policy: &Policy, argv: &[String]) -> Result<crate::executor::Outcome, CliError> {
    let exec = crate::tier::docker::DockerExecutor::new(
        policy.clone(),
        crate::tier::docker::DockerConfig { pool_size: 0, ..Default::default() },
    );
    Ok(super::runtime()?.block_on(exec.run_command(argv))?)
}

#[cfg(not(feature = "docker"))]
fn run_in_docker(_: &Policy, _: &[String]) -> Result<crate::executor::Outcome, CliError> {
    Err(CliError { code: super::EXIT_HOST, error: anyhow::anyhow!("this build has no docker tier to run commands in") })
}
