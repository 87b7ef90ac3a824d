//! A run's workspace, as a [`Sandbox`] handles it: the copy it mounts, and what
//! becomes of the copy once the run has ended (a new version, a human's approval
//! first, or nothing), each decision audited with the change set's digest.
//!
//! # Security invariant
//! Only the host decides what is kept: the change set is read from the copy after
//! the tier has returned (its container removed, its instance gone), and a run
//! that did not end `ok`, left something refused, or was not approved changes
//! nothing in the workspace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::Sandbox;
use crate::audit::{Event, EventKind};
use crate::error::SandboxError;
use crate::executor::{ErrorInfo, ErrorKind, ExecRequest, Outcome, Status, WorkspaceChangeInfo, WorkspaceInfo};
use crate::policy::{Critical, Policy, Tier};
use crate::workspace::{ChangeSet, Mount, Quota, Staged, Workspace, WorkspaceError, Workspaces};

/// Most bytes of unified diff an approval request carries.
const DIFF_LIMIT: usize = 96 << 10;
/// Most changed paths an approval request lists one by one.
const LISTED_CHANGES: usize = 300;

/// Where a sandbox's workspaces live, opened on first use.
#[derive(Debug, Default)]
pub(super) struct Root {
    /// Given to the builder (the policy's `workspaces.root` comes first).
    pub(super) configured: Option<std::path::PathBuf>,
    pub(super) opened: OnceLock<Result<Workspaces, String>>,
}

/// A run's copy, made before the run.
pub(super) struct Prepared {
    workspace: Arc<Workspace>,
    staged: Arc<Staged>,
    /// Raised by the quota guard: the tier stops the run.
    stop: Arc<AtomicBool>,
    /// Why the guard raised it.
    over: Arc<Mutex<Option<String>>>,
}

/// Most time between two measures of a running copy; a measure that takes longer
/// spaces them out (four times its own duration), so that the guard costs at most
/// a fifth of a core on a copy of many files.
const GUARD_EVERY: Duration = Duration::from_millis(50);

/// Measures the copy while the run goes, and raises the stop flag once it is past
/// the quota; stops measuring when dropped.
pub(super) struct QuotaGuard {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Prepared {
    /// What the tier mounts.
    pub(super) fn mount(&self) -> Mount {
        Mount::new(self.staged.clone(), self.stop.clone())
    }

    /// Starts guarding the copy's size while the run goes.
    pub(super) fn guard(&self, quota: Quota) -> QuotaGuard {
        let done = Arc::new(AtomicBool::new(false));
        let (d, staged, stop, over) = (done.clone(), self.staged.clone(), self.stop.clone(), self.over.clone());
        let thread = std::thread::Builder::new()
            .name("terrarium-workspace-quota".into())
            .spawn(move || {
                while !d.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    if let Some(why) = staged.over_quota(&quota) {
                        *over.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    let pause = GUARD_EVERY.max(started.elapsed() * 4);
                    let until = Instant::now() + pause;
                    while !d.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "the workspace quota guard did not start"))
            .ok();
        QuotaGuard { done, thread }
    }
}

fn host(tier: Tier, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Host { tier, message: crate::error::redact_paths(&e.to_string()) }
}

impl Sandbox {
    /// The workspaces this sandbox's runs may mount (under the policy's
    /// `workspaces.root`, else the builder's, else `$TERRARIUM_HOME/workspaces`).
    ///
    /// # Errors
    /// The root is refused or cannot be made.
    pub fn workspaces(&self) -> Result<Workspaces, SandboxError> {
        let opened = self.workspace_root.opened.get_or_init(|| {
            let root = match (&self.policy.workspaces().root, &self.workspace_root.configured) {
                (Some(r), _) | (None, Some(r)) => r.clone(),
                (None, None) => crate::workspace::default_root().map_err(|e| e.to_string())?,
            };
            Workspaces::open(&root).map_err(|e| e.to_string())
        });
        opened.clone().map_err(SandboxError::InvalidRequest)
    }

    /// Creates workspace `name` (empty, version 0), audited.
    ///
    /// # Errors
    /// A bad name, one that exists, a host failure.
    pub async fn create_workspace(&self, name: &str, who: &str) -> Result<crate::workspace::Manifest, SandboxError> {
        let all = self.workspaces()?;
        let n = name.to_string();
        let made = tokio::task::spawn_blocking(move || all.create(&n).and_then(|w| w.version_with_digest(0)))
            .await
            .map_err(|e| SandboxError::InvalidRequest(e.to_string()))?;
        let (m, sha) = made.map_err(admin_error)?;
        self.admin_event(
            EventKind::WorkspaceCommit,
            serde_json::json!({
                "workspace": name, "version": 0, "action": "create", "manifest_sha256": sha, "caller": who,
            }),
        )
        .await?;
        Ok(m)
    }

    /// Makes a new version of `name` whose files are version `to`'s, and rewrites
    /// the live files to match (history is kept), audited with the new manifest's
    /// sha256.
    ///
    /// # Errors
    /// No such workspace or version; a host failure.
    pub async fn rollback_workspace(
        &self,
        name: &str,
        to: u64,
        who: &str,
    ) -> Result<crate::workspace::Manifest, SandboxError> {
        let all = self.workspaces()?;
        let n = name.to_string();
        let reason = format!("rollback to version {to} by {who}");
        let done = tokio::task::spawn_blocking(move || all.get(&n).and_then(|w| w.rollback(to, &reason)))
            .await
            .map_err(|e| SandboxError::InvalidRequest(e.to_string()))?;
        let (m, sha) = done.map_err(admin_error)?;
        self.admin_event(
            EventKind::WorkspaceCommit,
            serde_json::json!({
                "workspace": name, "version": m.version, "action": "rollback", "to": to, "manifest_sha256": sha,
                "caller": who,
            }),
        )
        .await?;
        Ok(m)
    }

    /// Compares workspace `name`'s live files with its current version; drift
    /// found is recorded in the audit log (`workspace_drift`).
    ///
    /// # Errors
    /// No such workspace; a host failure.
    pub async fn verify_workspace(
        &self,
        name: &str,
    ) -> Result<(crate::workspace::Manifest, Vec<crate::workspace::Change>), SandboxError> {
        let all = self.workspaces()?;
        let n = name.to_string();
        let done = tokio::task::spawn_blocking(move || all.get(&n).and_then(|w| w.verify()))
            .await
            .map_err(|e| SandboxError::InvalidRequest(e.to_string()))?;
        let (m, drift) = done.map_err(admin_error)?;
        if !drift.is_empty() {
            let listed: Vec<_> = drift.iter().take(LISTED_CHANGES).map(|c| (&c.path, c.action)).collect();
            self.admin_event(
                EventKind::WorkspaceDrift,
                serde_json::json!({
                    "workspace": name, "version": m.version, "changes": drift.len(), "paths": listed,
                }),
            )
            .await?;
        }
        Ok((m, drift))
    }

    async fn admin_event(&self, kind: EventKind, data: serde_json::Value) -> Result<(), SandboxError> {
        let Some(log) = &self.audit else { return Ok(()) };
        log.record_async(Event { kind, request_id: None, data, code: None }).await?;
        Ok(())
    }

    /// Checks that `req` may mount its workspace under `policy`.
    pub(super) fn check_workspace(req: &ExecRequest, policy: &Policy) -> Result<(), SandboxError> {
        let Some(name) = &req.workspace else { return Ok(()) };
        if !crate::workspace::valid_name(name) {
            return Err(SandboxError::InvalidRequest(format!(
                "{name:?} is not a workspace name (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
            )));
        }
        if req.scratch {
            return Err(SandboxError::InvalidRequest(
                "a run has either a scratch directory or a workspace, not both".into(),
            ));
        }
        if !policy.workspaces().allows(name) {
            return Err(SandboxError::InvalidRequest(format!(
                "the policy does not let runs use workspace {name:?} (workspaces.allow: {:?})",
                policy.workspaces().allow
            )));
        }
        Ok(())
    }

    /// Makes the run's copy of workspace `name` (created on first use) for `tier`.
    pub(super) async fn stage_workspace(&self, name: &str, tier: Tier) -> Result<Prepared, SandboxError> {
        let all = self.workspaces()?;
        let name = name.to_string();
        let owner = if tier == Tier::Docker { crate::workspace::docker_owner() } else { None };
        let made = tokio::task::spawn_blocking(move || {
            let w = all.get_or_create(&name)?;
            let staged = w.stage(owner)?;
            Ok::<_, WorkspaceError>((w, staged))
        })
        .await
        .map_err(|e| host(tier, e))?;
        let (w, staged) = made.map_err(|e| host(tier, e))?;
        Ok(Prepared {
            workspace: Arc::new(w),
            staged: Arc::new(staged),
            stop: Arc::new(AtomicBool::new(false)),
            over: Arc::new(Mutex::new(None)),
        })
    }

    /// Decides what becomes of the run's copy, and reports it in `o`.
    pub(super) async fn settle_workspace(
        &self,
        p: Prepared,
        o: &mut Outcome,
        req: &ExecRequest,
        policy: &Policy,
    ) -> Result<(), SandboxError> {
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
        let request_id = req.id.as_ref().map(|i| format!("req:{}:{i}", req.caller.as_deref().unwrap_or("local")));
        let over = p.over.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(why) = over {
            // The guard stopped the run: whatever the tier says of its end, it is this.
            let msg = format!(
                "workspace {}: {why} while the run went; the run was stopped and what it changed is not kept",
                w.name()
            );
            info.status = "refused".into();
            info.message = Some(msg.clone());
            self.workspace_event(EventKind::WorkspaceDiscard, &request_id, &info, None).await?;
            o.status = Status::Denied;
            o.error = Some(ErrorInfo::new(ErrorKind::PolicyDenied, msg));
            o.workspace = Some(info);
            return Ok(());
        }
        if o.status != Status::Ok {
            info.status = "discarded".into();
            info.message =
                Some(format!("the run ended with status {}; what it changed is not kept", status_word(o.status)));
            self.workspace_event(EventKind::WorkspaceDiscard, &request_id, &info, None).await?;
            o.workspace = Some(info);
            return Ok(());
        }
        let quota = policy.workspaces().quota;
        let (w2, s2) = (w.clone(), p.staged.clone());
        let harvested =
            tokio::task::spawn_blocking(move || w2.harvest(&s2, &quota)).await.map_err(|e| host(tier, e))?;
        let set = match harvested {
            Ok(set) => set,
            Err(WorkspaceError::Refused(r)) => {
                info.status = "refused".into();
                let msg = format!("workspace {}: {r}; what the run changed is not kept", w.name());
                info.message = Some(msg.clone());
                self.workspace_event(EventKind::WorkspaceDiscard, &request_id, &info, None).await?;
                o.status = Status::Denied;
                o.error = Some(ErrorInfo::new(ErrorKind::PolicyDenied, msg));
                o.workspace = Some(info);
                return Ok(());
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
            return Ok(());
        }
        let mut approval = None;
        if policy.is_critical(Critical::WorkspaceChange) {
            match self.approve_change(&p, &set, req, tier, policy).await? {
                Ok(id) => approval = Some(id),
                Err((status, msg)) => {
                    info.status = status.into();
                    info.message = Some(msg.clone());
                    self.workspace_event(EventKind::WorkspaceDiscard, &request_id, &info, None).await?;
                    o.status = Status::Denied;
                    o.error = Some(ErrorInfo::new(ErrorKind::NotApproved, msg));
                    o.workspace = Some(info);
                    return Ok(());
                }
            }
        }
        let reason = format!("run {} on {tier}", req.id.as_deref().unwrap_or("(no id)"));
        let (w2, s2, set2) = (w.clone(), p.staged.clone(), set.clone());
        let committed =
            tokio::task::spawn_blocking(move || w2.commit(&s2, &set2, &reason)).await.map_err(|e| host(tier, e))?;
        match committed {
            Ok((m, manifest_sha)) => {
                info.status = "committed".into();
                info.version = Some(m.version);
                self.workspace_event(EventKind::WorkspaceCommit, &request_id, &info, Some(&manifest_sha)).await?;
                if let (Some(id), Some(gate)) = (approval, &self.gate) {
                    gate.complete(id, serde_json::json!({"version": m.version, "manifest_sha256": manifest_sha}))
                        .await?;
                }
            }
            Err(e @ WorkspaceError::Conflict { .. }) => {
                let msg = format!("workspace {}: {e}; what the run changed is not kept", w.name());
                info.status = "conflict".into();
                info.message = Some(msg.clone());
                self.workspace_event(EventKind::WorkspaceDiscard, &request_id, &info, None).await?;
                o.status = Status::Error;
                o.error = Some(ErrorInfo::new(ErrorKind::WorkspaceConflict, msg));
            }
            Err(e) => return Err(host(tier, e)),
        }
        o.workspace = Some(info);
        Ok(())
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

/// A workspace error from an operator's command.
fn admin_error(e: WorkspaceError) -> SandboxError {
    SandboxError::Workspace(e)
}

fn status_word(s: Status) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{s:?}"))
}
