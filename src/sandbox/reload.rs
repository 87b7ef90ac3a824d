//! A policy change ([`Sandbox::propose_policy`]): a running deployment moves to a
//! new policy only once a human approved the difference.
//!
//! # Security invariants
//! - A policy change is always a critical operation (`policy_change` in the
//!   approvals queue), whatever the policy in force lists: the reviewer sees the
//!   unified diff of the effective policies (every key filled in, so a default
//!   that changes shows), the file's digest and who asked; the one who asked
//!   cannot approve it.
//! - What is approved is what applies: the policy parsed when the change was
//!   asked for, not the file as it is when the decision comes.
//! - A refused, expired or invalid change leaves the policy in force; every
//!   outcome (applied, refused, invalid, unchanged) is a `policy_change` audit
//!   event.
//! - The new sandbox shares the old one's audit log, approvals queue, run slots,
//!   host functions and emergency stop: a stop reaches runs under either policy.

use std::sync::Arc;

use super::{Sandbox, alerter, builder, workspace};
use crate::audit::{Event, EventKind};
use crate::breaker::Breakers;
use crate::error::SandboxError;
use crate::policy::Policy;

/// How a proposed policy change ended.
pub enum PolicyChange {
    /// Approved: the new sandbox to serve with (same log, queue, stop).
    Applied {
        /// The sandbox under the new policy.
        sandbox: Box<Sandbox>,
        /// The approval request.
        approval: i64,
    },
    /// The effective policy would not change.
    Unchanged,
    /// A human denied it, or nobody decided in time (why).
    Refused(String),
}

/// The unified diff between two effective policies (empty when equal), as the
/// reviewer sees them: host directories and notifiers' secrets by digest.
pub(super) fn policy_diff(old: &Policy, new: &Policy) -> String {
    if old.to_yaml() == new.to_yaml() {
        return String::new();
    }
    let (a, b) = (old.to_yaml_for_review(), new.to_yaml_for_review());
    similar::TextDiff::from_lines(&a, &b).unified_diff().context_radius(3).header("in force", "proposed").to_string()
}

impl Sandbox {
    /// Asks a human to approve moving to `proposed` (read from `origin`, whose
    /// bytes hash to `sha256`), waiting up to the approvals timeout of the policy
    /// in force; `caller` asked. Records the outcome.
    ///
    /// # Errors
    /// No approvals queue (a sandbox without an audit log), the queue or the
    /// audit log failing, or the new sandbox's alerts failing to start.
    pub async fn propose_policy(
        &self,
        proposed: Policy,
        origin: &str,
        sha256: &str,
        caller: &str,
    ) -> Result<PolicyChange, SandboxError> {
        let diff = policy_diff(&self.policy, &proposed);
        if diff.is_empty() {
            self.record_change(
                serde_json::json!({"status": "unchanged", "origin": origin, "sha256": sha256, "caller": caller}),
            )
            .await?;
            return Ok(PolicyChange::Unchanged);
        }
        let Some(gate) = &self.gate else {
            return Err(SandboxError::NotApproved("a policy change needs an approvals queue (an audit log)".into()));
        };
        let subject = serde_json::json!({
            "origin": origin, "sha256": sha256, "caller": caller, "diff": diff,
        });
        let reason = "the policy in force would change (a policy change is always critical)";
        // Recorded however the wait ends, the caller gone included.
        let mut unfinished = Unfinished {
            log: self.audit.clone(),
            data: Some(serde_json::json!({
                "status": "abandoned", "origin": origin, "sha256": sha256, "caller": caller,
                "why": "whoever asked stopped waiting before a decision (its approval expires)",
            })),
        };
        let item = match gate.ask("policy_change", subject, reason, self.policy.approvals().timeout).await {
            Ok(item) => item,
            Err(e) => {
                unfinished.data = None;
                let why = e.to_string();
                self.record_change(serde_json::json!({
                    "status": "refused", "origin": origin, "sha256": sha256, "caller": caller, "why": why,
                }))
                .await?;
                return Err(e.into());
            }
        };
        unfinished.data = None;
        if item.status != crate::approval::ApprovalStatus::Approved {
            let why = crate::approval::refusal(&item);
            self.record_change(serde_json::json!({
                "status": "refused", "origin": origin, "sha256": sha256, "caller": caller, "approval": item.id, "why": why,
            }))
            .await?;
            return Ok(PolicyChange::Refused(why));
        }
        let sandbox = self.successor(proposed)?;
        let outcome = serde_json::json!({"status": "applied", "sha256": sha256});
        if let Err(e) = gate.complete(item.id, outcome).await {
            tracing::error!(error = %e, "the approved policy change's outcome could not be kept with its approval");
        }
        self.record_change(serde_json::json!({
            "status": "applied", "origin": origin, "sha256": sha256, "caller": caller, "approval": item.id,
            "approved_by": item.decided_by, "diff_sha256": crate::audit::sha256_hex(diff.as_bytes()),
        }))
        .await?;
        Ok(PolicyChange::Applied { sandbox: Box::new(sandbox), approval: item.id })
    }

    /// Records that a proposed policy could not be read or is invalid.
    ///
    /// # Errors
    /// The audit log failed.
    pub async fn record_invalid_policy(&self, origin: &str, caller: &str, error: &str) -> Result<(), SandboxError> {
        self.record_change(serde_json::json!({
            "status": "invalid", "origin": origin, "caller": caller, "error": crate::error::redact_paths(error),
        }))
        .await
    }

    async fn record_change(&self, data: serde_json::Value) -> Result<(), SandboxError> {
        match &self.audit {
            Some(log) => Ok(log
                .record_async(Event { kind: EventKind::PolicyChange, request_id: None, data, code: None })
                .await?),
            None => Ok(()),
        }
    }

    /// This sandbox under `policy`: new breakers and tiers (started on first use),
    /// the same audit log, approvals queue, run slots, host functions, workspace
    /// root and emergency stop.
    fn successor(&self, policy: Policy) -> Result<Sandbox, SandboxError> {
        let breakers = Breakers::from_policy(&policy);
        if let Some(log) = &self.audit {
            builder::record_transitions(&breakers, log);
            log.watch(alerter(&policy)?);
        }
        let max_open = usize::try_from(policy.sessions().max_open).unwrap_or(usize::MAX);
        let sessions = if max_open == usize::try_from(self.policy.sessions().max_open).unwrap_or(usize::MAX) {
            self.sessions.clone()
        } else {
            Arc::new(tokio::sync::Semaphore::new(max_open))
        };
        Ok(Sandbox {
            tiers: self.tiers.successor(policy.clone(), &breakers),
            functions: self.functions.clone(),
            workspace_root: workspace::Root {
                configured: self.workspace_root.configured.clone(),
                ..workspace::Root::default()
            },
            breakers,
            policy,
            audit: self.audit.clone(),
            gate: self.gate.clone(),
            running: self.running.clone(),
            sessions,
            halt: self.halt.clone(),
        })
    }
}

/// Records a policy change whose wait was dropped (its caller hung up) when
/// dropped with data still set.
struct Unfinished {
    log: Option<crate::audit::AuditLog>,
    data: Option<serde_json::Value>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let (Some(log), Some(data)) = (&self.log, self.data.take()) {
            log.record_nowait(Event { kind: EventKind::PolicyChange, request_id: None, data, code: None });
        }
    }
}
