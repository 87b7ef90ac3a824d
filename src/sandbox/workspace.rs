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
use crate::executor::{ExecRequest, Outcome};
use crate::policy::{Policy, Tier};
use crate::workspace::{Mount, Quota, Staged, Workspace, WorkspaceError, Workspaces};

/// Most bytes of unified diff an approval request carries.
pub(super) const DIFF_LIMIT: usize = 96 << 10;
/// Most changed paths an approval request lists one by one.
pub(super) const LISTED_CHANGES: usize = 300;

/// Where a sandbox's workspaces live, opened on first use.
#[derive(Debug, Default)]
pub(super) struct Root {
    /// Given to the builder (the policy's `workspaces.root` comes first).
    pub(super) configured: Option<std::path::PathBuf>,
    pub(super) opened: OnceLock<Result<Workspaces, String>>,
}

/// A run's copy, made before the run (a session's, kept for all its cells).
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) workspace: Arc<Workspace>,
    pub(super) staged: Arc<Staged>,
    /// Raised by the quota guard: the tier stops the run.
    stop: Arc<AtomicBool>,
    /// Why the guard raised it.
    pub(super) over: Arc<Mutex<Option<String>>>,
}

/// Most time between two measures of a running copy; a measure that takes longer
/// spaces them out (four times its own duration), so that the guard costs at most
/// a fifth of a core on a copy of many files.
const GUARD_EVERY: Duration = Duration::from_millis(50);

/// Measures the copy while the run goes, and raises the stop flag once it is past
/// the quota. [`QuotaGuard::finish`] stops it when the run has returned; a guard
/// dropped without it (the caller stopped waiting, the run goes on) keeps
/// measuring for as long as anything still holds the copy.
pub(super) struct QuotaGuard {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuotaGuard {
    /// Stops measuring (the run has returned).
    pub(super) fn finish(mut self) {
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
        let (d, stop, over) = (done.clone(), self.stop.clone(), self.over.clone());
        let copy = Arc::downgrade(&self.staged);
        let thread = std::thread::Builder::new()
            .name("terrarium-workspace-quota".into())
            .spawn(move || {
                while !d.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    // Gone once nothing holds the copy: the run has ended.
                    let Some(staged) = copy.upgrade() else { return };
                    let past = staged.over_quota(&quota);
                    drop(staged);
                    if let Some(why) = past {
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

pub(super) fn host(tier: Tier, e: impl std::fmt::Display) -> SandboxError {
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
        let (all, audit, n, who) = (self.workspaces()?, self.audit.clone(), name.to_string(), who.to_string());
        detached(move || {
            let (m, sha) = all.create(&n).and_then(|w| w.version_with_digest(0))?;
            let data = serde_json::json!({
                "workspace": n, "version": 0, "action": "create", "manifest_sha256": sha, "caller": who,
            });
            record(audit.as_ref(), EventKind::WorkspaceCommit, None, data)?;
            Ok(m)
        })
        .await
    }

    /// Makes a new version of `name` whose files are version `to`'s, and rewrites
    /// the live files to match (history is kept), audited with the new manifest's
    /// sha256. It finishes, and is recorded, even if the caller stops waiting.
    ///
    /// # Errors
    /// No such workspace or version; a host failure.
    pub async fn rollback_workspace(
        &self,
        name: &str,
        to: u64,
        who: &str,
    ) -> Result<crate::workspace::Manifest, SandboxError> {
        let (all, audit, n, who) = (self.workspaces()?, self.audit.clone(), name.to_string(), who.to_string());
        detached(move || {
            let reason = format!("rollback to version {to} by {who}");
            let done = all.get(&n).and_then(|w| w.rollback(to, &reason));
            let data = |version: u64, sha: &str, live_error: Option<&str>| {
                serde_json::json!({
                    "workspace": n, "version": version, "action": "rollback", "to": to, "manifest_sha256": sha,
                    "caller": who, "live_error": live_error,
                })
            };
            match done {
                Ok((m, sha)) => {
                    record(audit.as_ref(), EventKind::WorkspaceCommit, None, data(m.version, &sha, None))?;
                    Ok(m)
                }
                Err(WorkspaceError::LiveNotUpdated { version, manifest_sha256, message, workspace }) => {
                    let d = data(version, &manifest_sha256, Some(&message));
                    record(audit.as_ref(), EventKind::WorkspaceCommit, None, d)?;
                    Err(SandboxError::Workspace(WorkspaceError::LiveNotUpdated {
                        workspace,
                        version,
                        manifest_sha256,
                        message,
                    }))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
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
        let (all, audit, n) = (self.workspaces()?, self.audit.clone(), name.to_string());
        detached(move || {
            let (m, drift) = all.get(&n).and_then(|w| w.verify())?;
            if !drift.is_empty() {
                let listed: Vec<_> = drift.iter().take(LISTED_CHANGES).map(|c| (&c.path, c.action)).collect();
                let data = serde_json::json!({
                    "workspace": n, "version": m.version, "changes": drift.len(), "paths": listed,
                });
                record(audit.as_ref(), EventKind::WorkspaceDrift, None, data)?;
            }
            Ok((m, drift))
        })
        .await
    }

    /// Checks that `req` may mount its workspace under `policy`.
    pub(super) fn check_workspace(req: &ExecRequest, policy: &Policy) -> Result<(), SandboxError> {
        let Some(name) = &req.workspace else { return Ok(()) };
        if req.scratch {
            return Err(SandboxError::InvalidRequest(
                "a run has either a scratch directory or a workspace, not both".into(),
            ));
        }
        Sandbox::check_workspace_name(name, policy)
    }

    /// Checks that runs under `policy` may mount workspace `name`.
    pub(super) fn check_workspace_name(name: &str, policy: &Policy) -> Result<(), SandboxError> {
        if !crate::workspace::valid_name(name) {
            return Err(SandboxError::InvalidRequest(format!(
                "{name:?} is not a workspace name (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
            )));
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
        let audit = self.audit.clone();
        let made = tokio::task::spawn_blocking(move || {
            let (w, created) = all.get_or_create(&name)?;
            if created {
                // Made on first use: its version 0 is recorded as a create is.
                let sha = w.version_with_digest(0).map(|(_, sha)| sha)?;
                let data = serde_json::json!({
                    "workspace": name, "version": 0, "action": "create", "manifest_sha256": sha, "caller": "first use",
                });
                record(audit.as_ref(), EventKind::WorkspaceCommit, None, data)
                    .map_err(|e| WorkspaceError::Host { workspace: name.clone(), message: e.to_string() })?;
            }
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

    /// After a session's cell: a cell that did not end `ok` leaves the copy as it
    /// is (settled after the next one that does); otherwise the copy is settled
    /// as a run's, then brought to the workspace's current version (whatever was
    /// not kept is gone from it, what other runs committed is in it).
    pub(super) async fn settle_cell(
        &self,
        p: &Prepared,
        owner: Option<(u32, u32)>,
        mut o: Outcome,
        req: &ExecRequest,
        policy: &Policy,
    ) -> Result<Outcome, SandboxError> {
        let stopped = p.over.lock().unwrap_or_else(PoisonError::into_inner).is_some();
        if o.status != crate::executor::Status::Ok && !stopped {
            o.workspace = Some(crate::executor::WorkspaceInfo {
                name: p.workspace.name().to_string(),
                base: p.staged.base(),
                status: "held".into(),
                version: None,
                changes: Vec::new(),
                digest: None,
                message: Some(format!(
                    "the cell ended with status {}; what the session changed stays in its copy and is settled after \
                     the next cell that ends ok",
                    o.status.as_str()
                )),
            });
            return Ok(o);
        }
        self.settle_workspace(p.clone(), &mut o, req, policy).await?;
        if o.workspace.as_ref().is_some_and(|w| w.status != "unchanged") {
            let (w, staged, tier) = (p.workspace.clone(), p.staged.clone(), o.tier);
            tokio::task::spawn_blocking(move || w.reset_copy(&staged, owner))
                .await
                .map_err(|e| host(tier, e))?
                .map_err(|e| host(tier, e))?;
        }
        Ok(o)
    }

    /// Decides what becomes of the run's copy, and reports it in `o`. The
    /// decision (an approval included) runs to its end and is recorded even if the
    /// caller stops waiting: a client that hangs up cannot leave a version
    /// unrecorded or an approved change set undone.
    pub(super) async fn settle_workspace(
        &self,
        p: Prepared,
        o: &mut Outcome,
        req: &ExecRequest,
        policy: &Policy,
    ) -> Result<(), SandboxError> {
        let settler = super::settle::Settler { audit: self.audit.clone(), gate: self.gate.clone() };
        let (out, req, policy) = (o.clone(), req.clone(), policy.clone());
        let tier = o.tier;
        let settled = tokio::spawn(async move { settler.settle(p, out, &req, &policy).await })
            .await
            .map_err(|e| host(tier, format!("the workspace's settlement failed: {e}")))??;
        *o = settled;
        Ok(())
    }
}

/// Runs `f` on a blocking thread to its end, whether or not the caller still
/// waits: what changes a workspace is recorded once it is done.
async fn detached<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SandboxError::InvalidRequest(format!("workspace operation: {e}")))?
}

/// Records one event when there is an audit log.
pub(super) fn record(
    audit: Option<&crate::audit::AuditLog>,
    kind: EventKind,
    request_id: Option<String>,
    data: serde_json::Value,
) -> Result<(), SandboxError> {
    match audit {
        Some(log) => Ok(log.record(Event { kind, request_id, data, code: None })?),
        None => Ok(()),
    }
}
