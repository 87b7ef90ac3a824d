//! What becomes of a run's workspace copy once the run has ended: discarded,
//! refused, held for a human, or committed as a new version, each decision
//! audited with the change set's digest. Runs as a task of its own, so that it
//! ends, and is recorded, even when the caller stops waiting.
//!
//! # Security invariant
//! Only the host decides what is kept: the change set is read from the copy after
//! the tier has returned (its container removed, its instance gone), and a run
//! that did not end `ok`, left something refused, went past a quota (alone or
//! together with the changes made meanwhile) or was not approved changes nothing
//! in the workspace.

use std::sync::PoisonError;

use super::workspace::{DIFF_LIMIT, LISTED_CHANGES, Prepared, host};
use crate::approval::Gate;
use crate::audit::{AuditLog, Event, EventKind};
use crate::error::SandboxError;
use crate::executor::{ErrorInfo, ErrorKind, ExecRequest, Outcome, Status, WorkspaceChangeInfo, WorkspaceInfo};
use crate::policy::{Critical, Policy, Tier};
use crate::workspace::{ChangeSet, WorkspaceError};

/// What a settlement needs of its sandbox.
pub(super) struct Settler {
    pub(super) audit: Option<AuditLog>,
    pub(super) gate: Option<Gate>,
}

impl Settler {
    /// Decides what becomes of the run's copy, and reports it in the outcome.
    pub(super) async fn settle(
        &self,
        p: Prepared,
        mut o: Outcome,
        req: &ExecRequest,
        policy: &Policy,
    ) -> Result<Outcome, SandboxError> {
        let tier = o.tier;
        let w = p.workspace.clone();
        let mut info = WorkspaceInfo {
            name: w.name().to_string(),
            base: p.staged.base(),
            status: String::new(),
            version: None,
            changes: Vec::new(),
            digest: None,
            message: None,
        };
        let caller = req.caller.as_deref().unwrap_or("local");
        let request_id = req.id.as_ref().map(|i| super::request_key(caller, i));
        let over = p.over.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(why) = over {
            // The guard stopped the run: whatever the tier says of its end, it is this.
            let msg = format!(
                "workspace {}: {why} while the run went; the run was stopped and what it changed is not kept",
                w.name()
            );
            let end = Some((Status::Denied, ErrorKind::PolicyDenied));
            self.not_kept(&mut o, &mut info, ("refused", msg, end), &request_id).await?;
            return Ok(o);
        }
        if o.status != Status::Ok {
            let msg = format!("the run ended with status {}; what it changed is not kept", o.status.as_str());
            self.not_kept(&mut o, &mut info, ("discarded", msg, None), &request_id).await?;
            return Ok(o);
        }
        let quota = policy.workspaces().quota;
        let (w2, s2) = (w.clone(), p.staged.clone());
        let harvested =
            tokio::task::spawn_blocking(move || w2.harvest(&s2, &quota)).await.map_err(|e| host(tier, e))?;
        let set = match harvested {
            Ok(set) => set,
            Err(WorkspaceError::Refused(r)) => {
                let msg = format!("workspace {}: {r}; what the run changed is not kept", w.name());
                let end = Some((Status::Denied, ErrorKind::PolicyDenied));
                self.not_kept(&mut o, &mut info, ("refused", msg, end), &request_id).await?;
                return Ok(o);
            }
            Err(e) => return Err(host(tier, e)),
        };
        info.digest = Some(set.digest.clone());
        info.changes = set
            .changes
            .iter()
            .map(|c| WorkspaceChangeInfo {
                path: c.path.clone(),
                action: serde_json::to_value(c.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                size: c.new.as_ref().filter(|e| e.kind == crate::workspace::Kind::File).map(|e| e.size),
            })
            .collect();
        if set.changes.is_empty() {
            info.status = "unchanged".into();
            o.workspace = Some(info);
            return Ok(o);
        }
        let mut approval = None;
        if policy.is_critical(Critical::WorkspaceChange) {
            match self.approve_change(&p, &set, req, tier, policy).await? {
                Ok(id) => approval = Some(id),
                Err((status, msg)) => {
                    let end = Some((Status::Denied, ErrorKind::NotApproved));
                    self.not_kept(&mut o, &mut info, (status, msg, end), &request_id).await?;
                    return Ok(o);
                }
            }
        }
        let reason = format!("run {} on {tier}", req.id.as_deref().unwrap_or("(no id)"));
        let (w2, s2, set2) = (w.clone(), p.staged.clone(), set.clone());
        let quota = policy.workspaces().quota;
        let committed = tokio::task::spawn_blocking(move || w2.commit(&s2, &set2, &reason, &quota))
            .await
            .map_err(|e| host(tier, e))?;
        match committed {
            Ok((m, manifest_sha)) => {
                info.status = "committed".into();
                info.version = Some(m.version);
                self.workspace_event(EventKind::WorkspaceCommit, &request_id, &info, Some(&manifest_sha)).await?;
            }
            Err(WorkspaceError::Refused(r)) => {
                let msg = format!("workspace {}: {r}; what the run changed is not kept", w.name());
                let end = Some((Status::Denied, ErrorKind::PolicyDenied));
                self.not_kept(&mut o, &mut info, ("refused", msg, end), &request_id).await?;
            }
            Err(e @ WorkspaceError::LiveNotUpdated { .. }) => {
                // The version exists: it is recorded, then the host error is told.
                if let WorkspaceError::LiveNotUpdated { version, manifest_sha256, .. } = &e {
                    info.status = "committed".into();
                    info.version = Some(*version);
                    info.message = Some(e.to_string());
                    self.workspace_event(EventKind::WorkspaceCommit, &request_id, &info, Some(manifest_sha256)).await?;
                }
                if let (Some(id), Some(gate)) = (approval, &self.gate) {
                    gate.complete(id, serde_json::to_value(&info).unwrap_or_default()).await?;
                }
                return Err(host(tier, e));
            }
            Err(e @ WorkspaceError::Conflict { .. }) => {
                let msg = format!("workspace {}: {e}; what the run changed is not kept", w.name());
                let end = Some((Status::Error, ErrorKind::WorkspaceConflict));
                self.not_kept(&mut o, &mut info, ("conflict", msg, end), &request_id).await?;
            }
            Err(e) => {
                if let (Some(id), Some(gate)) = (approval, &self.gate) {
                    let failed = serde_json::json!({"status": "error", "host_error": host(tier, &e).to_string()});
                    gate.complete(id, failed).await?;
                }
                return Err(host(tier, e));
            }
        }
        if let (Some(id), Some(gate)) = (approval, &self.gate) {
            // The approval's record says what became of it, whatever that was.
            gate.complete(id, serde_json::to_value(&info).unwrap_or_default()).await?;
        }
        o.workspace = Some(info);
        Ok(o)
    }

    /// Holds `set` for a human: `Ok(id)` approved as request `id`; `Err((status,
    /// why))` denied or expired (or no queue to ask).
    async fn approve_change(
        &self,
        p: &Prepared,
        set: &ChangeSet,
        req: &ExecRequest,
        tier: Tier,
        policy: &Policy,
    ) -> Result<Result<i64, (&'static str, String)>, SandboxError> {
        let reason = format!(
            "the run changes {} path(s) of workspace {} (critical under the policy's approvals)",
            set.changes.len(),
            set.workspace
        );
        let Some(gate) = &self.gate else {
            return Ok(Err((
                "denied",
                format!("{reason}, and this sandbox has no approvals queue (it needs an audit log)"),
            )));
        };
        let (w, s, set2) = (p.workspace.clone(), p.staged.clone(), set.clone());
        let diff = tokio::task::spawn_blocking(move || w.staged_diff(&s, &set2, DIFF_LIMIT))
            .await
            .map_err(|e| host(tier, e))?;
        let listed: Vec<_> = set.changes.iter().take(LISTED_CHANGES).collect();
        let code: String = req.code.chars().take(16 << 10).collect();
        let subject = serde_json::json!({
            "request_id": req.id, "caller": req.caller, "tier": tier, "workspace": set.workspace, "base": set.base,
            "digest": set.digest, "changes": listed, "changes_total": set.changes.len(), "diff": diff, "code": code,
        });
        let item = gate.ask("workspace_change", subject, &reason, policy.approvals().timeout).await?;
        if item.status == crate::approval::ApprovalStatus::Approved {
            return Ok(Ok(item.id));
        }
        let status = if item.status == crate::approval::ApprovalStatus::Expired { "expired" } else { "denied" };
        Ok(Err((status, format!("{reason}; {}; what the run changed is not kept", crate::approval::refusal(&item)))))
    }

    /// Records a change set that is not kept (`status`, why), reports it in `o`,
    /// and with `end` gives the run that status and reason.
    async fn not_kept(
        &self,
        o: &mut Outcome,
        info: &mut WorkspaceInfo,
        (status, msg, end): (&str, String, Option<(Status, ErrorKind)>),
        request_id: &Option<String>,
    ) -> Result<(), SandboxError> {
        info.status = status.into();
        info.message = Some(msg.clone());
        self.workspace_event(EventKind::WorkspaceDiscard, request_id, info, None).await?;
        if let Some((s, kind)) = end {
            o.status = s;
            o.error = Some(ErrorInfo::new(kind, msg));
        }
        o.workspace = Some(info.clone());
        Ok(())
    }

    async fn workspace_event(
        &self,
        kind: EventKind,
        request_id: &Option<String>,
        info: &WorkspaceInfo,
        manifest_sha256: Option<&str>,
    ) -> Result<(), SandboxError> {
        let Some(log) = &self.audit else { return Ok(()) };
        let data = serde_json::json!({
            "workspace": info.name, "base": info.base, "status": info.status, "version": info.version,
            "change_digest": info.digest, "changes": info.changes.len(), "message": info.message,
            "manifest_sha256": manifest_sha256,
        });
        log.record_async(Event { kind, request_id: request_id.clone(), data, code: None }).await?;
        Ok(())
    }
}
