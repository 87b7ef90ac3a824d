//! [`Sandbox::run_command`]: a command line from its text to its end: checked by
//! [`decide`], held for a human when it needs approval, run in the sandbox's own
//! docker tier (its engine, its settings) when allowed.
//!
//! # Security invariant
//! A command runs only when [`decide`] allows it or a human approved exactly the
//! argv that [`decide`] produced; it runs only in a fresh, hardened docker-tier
//! container, never on the host and never through a shell.

use std::time::Duration;

use serde::Serialize;

use super::Sandbox;
use crate::approval::Item;
use crate::command::{Decision, Ruling, decide};
use crate::error::SandboxError;
use crate::executor::Outcome;
use crate::policy::Tier;

/// How a command ended.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CommandReport {
    /// What the rules said (`allow`, `deny` or `needs_approval`).
    pub decision: Ruling,
    /// Why it was denied or needed approval (empty when allowed).
    pub reason: String,
    /// The words it runs as (empty when it could not be split).
    pub argv: Vec<String>,
    /// Whether it was allowed to run (by the rules, or by a human).
    pub allowed: bool,
    /// The approval request, when it waited for one.
    pub approval: Option<Item>,
    /// How the run ended (when it ran).
    pub outcome: Option<Outcome>,
}

impl Sandbox {
    /// Checks `line` against the sandbox policy's command rules; a command that needs
    /// approval waits up to `wait` in the sandbox's approvals queue (without a wait or
    /// a queue it is denied); an allowed one runs in the docker tier, in one of the
    /// sandbox's run slots, unless `run` is false (a check only).
    ///
    /// # Errors
    /// [`SandboxError::InvalidRequest`] when the policy refuses the docker tier (for a
    /// command that is not denied anyway); [`SandboxError::Busy`] when the waiting or
    /// running limit is reached; the queue, the audit log or the engine failing.
    pub async fn run_command(
        &self,
        line: &str,
        wait: Option<Duration>,
        run: bool,
        caller: &str,
    ) -> Result<CommandReport, SandboxError> {
        let sandbox = self;
        if run {
            sandbox.halt.check()?;
        }
        let in_flight = super::halt::InFlightRun {
            request_id: None,
            caller: caller.to_string(),
            tier: format!("docker (command: {line})"),
            code_sha256: crate::audit::sha256_hex(line.as_bytes()),
            session: None,
            workspace: None,
            running_ms: 0,
        };
        let r = sandbox.until_stopped(in_flight, check_and_run(sandbox, line, wait, run, caller)).await;
        // With an audit log, every command is an event: what was asked, what the rules
        // said, whether it ran and how it ended (not its output).
        if let Some(log) = sandbox.audit_log() {
            let data = match &r {
                Ok(report) => serde_json::json!({
                    "caller": caller, "line": line, "decision": report.decision, "reason": report.reason, "argv": report.argv,
                    "allowed": report.allowed, "ran": report.outcome.is_some(),
                    "approval": report.approval.as_ref().map(|i| i.id),
                    "outcome": report.outcome.as_ref().map(|o| serde_json::json!({
                        "status": o.status, "error": o.error, "usage": o.usage,
                    })),
                }),
                Err(e) => serde_json::json!({
                    "caller": caller, "line": line, "host_error": crate::error::redact_paths(&e.to_string()),
                }),
            };
            log.record_async(crate::audit::Event {
                kind: crate::audit::EventKind::Command,
                request_id: None,
                data,
                code: None,
            })
            .await?;
        }
        r
    }
}

async fn check_and_run(
    sandbox: &Sandbox,
    line: &str,
    wait: Option<Duration>,
    run: bool,
    caller: &str,
) -> Result<CommandReport, SandboxError> {
    let (policy, gate) = (sandbox.policy(), sandbox.approvals());
    let decision = decide(line, &policy.command_rules());
    let kind = decision.ruling();
    let (reason, argv) = match decision {
        Decision::Allow { argv } => (String::new(), argv),
        Decision::Deny { reason } => (reason, Vec::new()),
        Decision::NeedsApproval { argv, reason } => (reason, argv),
    };
    let mut report =
        CommandReport { decision: kind, reason, argv, allowed: kind == Ruling::Allow, approval: None, outcome: None };
    if kind == Ruling::Deny {
        return Ok(report);
    }
    // Commands run only in the docker tier: a policy that refuses it is told before
    // anything is queued for a human or run.
    if run && let Some(why) = crate::router::refusal(policy, Tier::Docker) {
        return Err(SandboxError::InvalidRequest(format!("commands run only in the docker tier, and {why}")));
    }
    if kind == Ruling::NeedsApproval && run {
        match (gate, wait) {
            (Some(gate), Some(wait)) => {
                let subject = serde_json::json!({"argv": report.argv, "line": line, "caller": caller});
                let item = gate.ask("command", subject, &report.reason, wait).await?;
                if item.status == crate::approval::ApprovalStatus::Approved {
                    report.allowed = true;
                } else {
                    report.reason = format!("{}; {}", report.reason, crate::approval::refusal(&item));
                }
                report.approval = Some(item);
            }
            (None, Some(_)) => report.reason.push_str("; there is no approvals queue to wait in"),
            (_, None) => {}
        }
    }
    if !(report.allowed && run) {
        return Ok(report);
    }
    // One of the sandbox's run slots, and the docker tier's breaker: an engine
    // that keeps failing is not called again until the breaker lets a trial through.
    let slot = sandbox.run_slot()?;
    let outcome = sandbox.breakers().tier(Tier::Docker).run(sandbox.tiers.run_command(&report.argv)).await?;
    drop(slot);
    if let (Some(item), Some(gate)) = (&report.approval, gate) {
        report.approval = Some(gate.complete(item.id, serde_json::to_value(&outcome).unwrap_or_default()).await?);
    }
    report.outcome = Some(outcome);
    Ok(report)
}
