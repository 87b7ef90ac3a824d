//! Sessions through a [`Sandbox`]: a sequence of cells that share interpreter
//! state on one tier, each analysed, audited and run through the tier's breaker
//! like a single request.
//!
//! # Invariants
//! - A session stays on the tier it started on (the policy's, or the one asked
//!   for if the policy allows it); it never escalates.
//! - Its start, every cell (code, outcome, cell number) and its end (why, after
//!   how many cells) are events in the audit chain.
//! - A session that is dropped or ended kills its child, instance or container.

use std::sync::Arc;

use super::{Sandbox, analyze, findings_of};
use crate::audit::{Event, EventKind};
use crate::error::SandboxError;
use crate::executor::{ErrorKind, ExecRequest, Outcome, Status, TierSession};
use crate::policy::{Critical, Tier, TierChoice};
use crate::router;

/// How to start a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Its tier: `Auto` (the default) takes the policy's tier, or its lightest
    /// allowed one.
    pub tier: TierChoice,
    /// Who starts it (recorded on its audit events); `None`: `local`.
    pub caller: Option<String>,
    /// Mount this workspace at `/workspace` for every cell (wasm and docker
    /// tiers; the policy's `workspaces.allow` must name it). The session works on a
    /// copy; after each cell that ends `ok` what the copy changed is settled as a
    /// single run's would be (kept as a version, refused, held for approval), and
    /// the copy is then brought to the workspace's current version.
    pub workspace: Option<String>,
}

/// A sequence of cells sharing interpreter state (globals, imported modules,
/// definitions) and nothing else. Made by [`Sandbox::session`].
///
/// ```no_run
/// # async fn demo() -> Result<(), terrarium::SandboxError> {
/// use std::sync::Arc;
/// use terrarium::{ExecRequest, Policy, Sandbox, SessionOptions};
/// let sandbox = Arc::new(Sandbox::builder().policy(Policy::default_policy()).build()?);
/// let mut session = sandbox.session(SessionOptions::default()).await?;
/// session.execute(ExecRequest::new("def double(x):\n    return 2 * x")).await?;
/// let outcome = session.execute(ExecRequest::new("double(21)")).await?;
/// assert_eq!(outcome.result, Some(serde_json::json!(42)));
/// session.end("done");
/// # Ok(()) }
/// ```
pub struct Session {
    id: String,
    tier: Tier,
    caller: String,
    sandbox: Arc<Sandbox>,
    inner: Box<dyn TierSession>,
    /// The end is recorded once.
    recorded_end: bool,
    /// This session's slot among the sandbox's open sessions, given back as soon
    /// as the session is seen to have ended.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The latest cells' code (at most [`EARLIER_CELLS`], each cut to
    /// [`EARLIER_CELL_CHARS`]), shown to an approver of a host call.
    earlier: std::collections::VecDeque<String>,
    /// The session's copy of its workspace, with who owns it.
    workspace: Option<(super::workspace::Prepared, Option<(u32, u32)>)>,
}

/// How many earlier cells an approver of a host call sees.
const EARLIER_CELLS: usize = 20;
/// How much of each.
const EARLIER_CELL_CHARS: usize = 4096;

impl Sandbox {
    /// Starts a session (see [`Session`]) under this sandbox's policy and its
    /// `sessions` limits.
    ///
    /// # Errors
    /// [`SandboxError::InvalidRequest`] for a tier the policy does not allow or
    /// that keeps no sessions; [`SandboxError::NotApproved`] for a docker session
    /// the policy makes critical and no human approved in time;
    /// [`SandboxError::Busy`] when `sessions.max_open` sessions are open;
    /// [`SandboxError::BreakerOpen`] when the tier's breaker is open; the tier's
    /// host fault. A refused start is recorded too.
    pub async fn session(self: &Arc<Self>, options: SessionOptions) -> Result<Session, SandboxError> {
        self.halt.check()?;
        if let Some(name) = &options.workspace {
            Sandbox::check_workspace_name(name, &self.policy)?;
        }
        let candidates = router::candidates(&self.policy, options.tier);
        // A workspace needs a file system: the interpreter tier is passed over.
        let usable = candidates.iter().find(|t| options.workspace.is_none() || **t != Tier::Rustpython);
        if let (Some(_), None, Some(_)) = (&options.workspace, usable, candidates.first()) {
            return Err(SandboxError::InvalidRequest(
                "the rustpython tier has no file system, so its sessions cannot mount a workspace (use the wasm or \
                 docker tier)"
                    .into(),
            ));
        }
        let tier = match usable {
            Some(&tier) => tier,
            None => {
                let why = match options.tier {
                    TierChoice::Fixed(t) => router::refusal(&self.policy, t),
                    TierChoice::Auto => None,
                };
                return Err(SandboxError::InvalidRequest(
                    why.unwrap_or_else(|| "no tier is allowed by the policy".into()),
                ));
            }
        };
        let id = new_id(tier)?;
        let caller = options.caller.unwrap_or_else(|| "local".into());
        let limits = self.policy.sessions();
        // Recorded, started or not (with the reason it did not).
        let record_start = |refused: Option<&SandboxError>| {
            let Some(log) = &self.audit else { return Ok(()) };
            let mut data = serde_json::json!({
                "session": id, "caller": caller, "tier": tier, "max_cells": limits.max_cells,
                "idle_timeout": limits.idle_timeout.as_secs_f64(), "max_lifetime": limits.max_lifetime.as_secs_f64(),
                "max_memory": limits.max_memory, "workspace": options.workspace,
            });
            if let (Some(e), Some(map)) = (refused, data.as_object_mut()) {
                map.insert("refused".into(), crate::error::redact_paths(&e.to_string()).into());
            }
            let event =
                Event { kind: EventKind::SessionStart, request_id: Some(format!("session:{id}")), data, code: None };
            log.record(event).map_err(SandboxError::from)
        };
        let opened = async {
            // A session on the docker tier is a run there, many times over: it
            // waits for a human first when the policy says so.
            if tier == Tier::Docker && self.policy.is_critical(Critical::DockerTier) {
                let reason = "a session would use the docker tier (critical under the policy's approvals)";
                let Some(gate) = &self.gate else {
                    return Err(SandboxError::NotApproved(format!(
                        "{reason}, and this sandbox has no approvals queue (it needs an audit log)"
                    )));
                };
                let subject = serde_json::json!({
                    "session": id, "tier": tier, "caller": caller, "policy": self.policy.to_yaml_redacted(),
                });
                let item = gate.ask("session", subject, reason, self.policy.approvals().timeout).await?;
                if item.status != crate::approval::ApprovalStatus::Approved {
                    return Err(SandboxError::NotApproved(format!("{reason}; {}", crate::approval::refusal(&item))));
                }
            }
            let slot = self.sessions.clone().try_acquire_owned().map_err(|_| {
                SandboxError::Busy(format!(
                    "{} sessions are open, the most the policy allows (sessions.max_open); end one or retry",
                    limits.max_open
                ))
            })?;
            let prepared = match &options.workspace {
                Some(name) => Some(self.stage_workspace(name, tier).await?),
                None => None,
            };
            let mount = prepared.as_ref().map(super::workspace::Prepared::mount);
            let open = async {
                match self.tiers.executor(tier) {
                    Ok(exec) => exec.open_session_with(mount).await,
                    Err(e) => Err(e),
                }
            };
            self.breakers.tier(tier).run(open).await.map(|inner| (inner, slot, prepared))
        };
        // A start under way when the deployment is stopped is stopped with it
        // (recorded in the stop's list of runs; its child or container removed).
        let in_flight = super::halt::InFlightRun {
            request_id: Some(format!("session:{id}")),
            caller: caller.clone(),
            tier: tier.to_string(),
            code_sha256: String::new(),
            session: Some(id.clone()),
            workspace: options.workspace.clone(),
            running_ms: 0,
        };
        let opened = match self.until_stopped(in_flight, opened).await {
            // Stopped just as it opened: ended at once, never handed out.
            Ok(o) => self.halt.check().map(|()| o),
            Err(e) => Err(e),
        };
        let (inner, slot, prepared) = match opened {
            Ok(o) => o,
            Err(e) => {
                record_start(Some(&e))?;
                return Err(e);
            }
        };
        record_start(None)?;
        self.halt.session_opened(super::halt::OpenSession {
            session: id.clone(),
            caller: caller.clone(),
            tier,
            cells: 0,
            workspace: options.workspace.clone(),
        });
        Ok(Session {
            id,
            tier,
            caller,
            sandbox: self.clone(),
            inner,
            recorded_end: false,
            slot: Some(slot),
            earlier: std::collections::VecDeque::new(),
            workspace: prepared.map(|p| {
                let owner = if tier == Tier::Docker { crate::workspace::docker_owner() } else { None };
                (p, owner)
            }),
        })
    }
}

impl Sandbox {
    /// Records `req` as a request refused with `why` (a cell of a session that
    /// could not start), as [`Sandbox::execute`] records any request, and returns
    /// the refusal (or the audit log's failure).
    #[cfg(feature = "cli")]
    pub(crate) async fn record_refused(&self, req: ExecRequest, why: SandboxError) -> SandboxError {
        match self.audited(req, None, |_, _| Box::pin(async move { Err(why) })).await {
            Err(e) => e,
            Ok(_) => SandboxError::InvalidRequest("refused".into()),
        }
    }
}

impl Session {
    /// The session's identifier (in its outcomes' audit events).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tier it runs on.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Cells run so far.
    pub fn cells(&self) -> u64 {
        self.inner.cells()
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.inner.ended()
    }

    /// Runs one cell in the session's state. `req.tier` and `req.scratch` must be
    /// left unset (the session's tier decides); its overrides tighten this cell's
    /// limits only. The outcome's `session` gives the cell's number and, when this
    /// cell ended the session (a limit, or its `max_cells`), why.
    ///
    /// # Errors
    /// [`SandboxError::SessionEnded`] once the session has ended; otherwise as for
    /// [`Sandbox::execute`].
    pub async fn execute(&mut self, mut req: ExecRequest) -> Result<Outcome, SandboxError> {
        if req.scratch || req.tier != TierChoice::Auto {
            return Err(SandboxError::InvalidRequest(
                "a session's cells run on the session's tier, without a scratch directory".into(),
            ));
        }
        req.caller = Some(self.caller.clone());
        let sandbox = self.sandbox.clone();
        let shared: &Sandbox = &sandbox;
        let before = usize::try_from(self.inner.cells()).unwrap_or(usize::MAX);
        let (tier, inner, workspace) = (self.tier, &mut self.inner, &self.workspace);
        let mut code: String = req.code.chars().take(EARLIER_CELL_CHARS).collect();
        if code.len() < req.code.len() {
            code.push_str("\n# … (cut)");
        }
        // Code from any earlier cell can make a call (a function it defined): the
        // approver sees the latest cells and how many more there were.
        let mut earlier: Vec<String> = Vec::with_capacity(self.earlier.len() + 1);
        if before > self.earlier.len() {
            earlier.push(format!(
                "# … {} earlier cells not shown (all are in the audit log)",
                before - self.earlier.len()
            ));
        }
        earlier.extend(self.earlier.iter().cloned());
        // A cell of an ended session is recorded too, refused with the reason.
        let r = shared
            .audited(req, Some((&self.id, &earlier)), |req, policy| {
                Box::pin(async move {
                    match (inner.ended(), workspace) {
                        (Some(why), _) => Err(SandboxError::SessionEnded(why)),
                        (None, None) => cell(shared, tier, inner.as_mut(), req).await,
                        (None, Some((p, owner))) => {
                            let guard = p.guard(policy.workspaces().quota);
                            let ran = cell(shared, tier, inner.as_mut(), req.clone()).await;
                            guard.finish();
                            match ran {
                                Ok(o) => shared.settle_cell(p, *owner, o, &req, &policy).await,
                                Err(e) => Err(e),
                            }
                        }
                    }
                })
            })
            .await;
        self.sandbox.halt.session_cell(&self.id, self.inner.cells());
        if let Some(why) = self.inner.ended() {
            self.record_end(&why);
        }
        if self.earlier.len() == EARLIER_CELLS {
            self.earlier.pop_front();
        }
        self.earlier.push_back(code);
        r
    }

    /// Ends the session: its state is gone and its child, instance or container is
    /// killed. The end is recorded with `reason`.
    pub fn end(mut self, reason: &str) {
        self.end_now(reason);
    }

    /// As [`Session::end`], for a session held behind a reference (the first
    /// reason stays; later cells are refused with it).
    pub fn end_now(&mut self, reason: &str) {
        self.inner.end(reason);
        let why = self.inner.ended().unwrap_or_else(|| reason.to_string());
        self.record_end(&why);
    }

    fn record(&self, kind: EventKind, mut data: serde_json::Value) -> Result<(), SandboxError> {
        let Some(log) = self.sandbox.audit_log() else { return Ok(()) };
        if let Some(map) = data.as_object_mut() {
            map.insert("session".into(), self.id.clone().into());
            map.insert("caller".into(), self.caller.clone().into());
        }
        log.record(Event { kind, request_id: Some(format!("session:{}", self.id)), data, code: None })?;
        Ok(())
    }

    fn record_end(&mut self, why: &str) {
        // An ended session no longer counts against sessions.max_open.
        self.slot = None;
        self.sandbox.halt.session_ended(&self.id);
        if self.recorded_end {
            return;
        }
        self.recorded_end = true;
        let data = serde_json::json!({"reason": why, "cells": self.inner.cells()});
        if let Err(e) = self.record(EventKind::SessionEnd, data) {
            tracing::error!(session = %self.id, error = %e, "the end of a session could not be recorded");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.end("the session was dropped");
        let why = self.inner.ended().unwrap_or_default();
        self.record_end(&why);
    }
}

/// One cell: the analysis, then the tier's session through its breaker.
async fn cell(
    sandbox: &Sandbox,
    tier: Tier,
    session: &mut dyn TierSession,
    req: ExecRequest,
) -> Result<Outcome, SandboxError> {
    let analysis = analyze(req.code.clone()).await;
    let findings = findings_of(&analysis);
    let route = format!("session on the {tier} tier");
    let finish = |mut o: Outcome| {
        o.route = Some(route.clone());
        o.findings = findings.clone();
        o
    };
    if sandbox.policy.deny_findings()
        && let Some(f) = analysis.denial()
    {
        let msg = format!("line {}: {}", f.line, f.message);
        return Ok(finish(Outcome::refused(req.id, tier, Status::Denied, ErrorKind::PolicyDenied, msg)));
    }
    let _slot = sandbox.run_slot()?;
    sandbox.breakers.tier(tier).run(session.execute(req)).await.map(finish)
}

/// A fresh session identifier: 16 random bytes in hex.
fn new_id(tier: Tier) -> Result<String, SandboxError> {
    crate::hex::random(16)
        .ok_or_else(|| SandboxError::Host { tier, message: "no randomness for a session's identifier".into() })
}
