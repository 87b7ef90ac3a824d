//! The one entry point that joins the tiers: analyse the snippet, route it to a
//! tier, run it there through that tier's circuit breaker, and report the route
//! and the findings in the outcome.
//!
//! ```no_run
//! # async fn demo() -> Result<(), terrarium::SandboxError> {
//! use terrarium::{ExecRequest, Policy, Sandbox};
//! let sandbox = Sandbox::builder().policy(Policy::default_policy()).build()?;
//! let outcome = sandbox.execute(ExecRequest::new("1 + 1")).await?;
//! # Ok(()) }
//! ```
//!
//! # Invariants
//! - Routing never leaves the policy's allowed tiers or goes below its minimum
//!   isolation, and a fixed tier is never replaced (see [`crate::router`]).
//! - Only host faults count against a tier's breaker; an open breaker moves an
//!   `auto` request to the next allowed tier, or fails fast naming the breaker.
//! - With `terrarium.findings: deny` (the default), a snippet the static analysis
//!   refuses runs nowhere.
//! - An operation the policy lists in `approvals.critical` (a run in the docker
//!   tier, a writable scratch directory) runs only once a human approved it in
//!   the approvals queue (see [`crate::approval`]); a sandbox without an audit log
//!   has no queue and refuses such operations.
//! - Executors are created on first use: a request for one tier never starts
//!   another tier's machinery.

mod builder;
mod command;
mod halt;
mod handle;
mod reload;
mod session;
mod settle;
mod tiers;
mod workspace;

use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

pub use builder::{BLOCKING_CALLS, SandboxBuilder};
pub use command::CommandReport;
#[cfg(feature = "cli")]
pub(crate) use halt::deployment_stopped;
pub use halt::{InFlightRun, OpenSession, StopReport, Stopped};
pub use handle::SessionHandle;
pub use reload::PolicyChange;
pub use session::{Session, SessionOptions};
use tiers::Tiers;

use crate::analysis::{self, Analysis, Severity};
use crate::approval::Gate;
use crate::audit::{AuditLog, Event, EventKind};
use crate::breaker::Breakers;
use crate::error::SandboxError;
use crate::executor::{ErrorKind, ExecRequest, FindingInfo, Outcome, Status, millis};
use crate::policy::{Critical, Policy, Tier, TierChoice};
use crate::router::{self, Skip};

/// Stack of the analysis thread: the parser recurses with the source's nesting.
const ANALYSIS_STACK: usize = 256 << 20;
/// Sources up to this size are analysed on the caller's thread: they cannot nest
/// deeper than their length, which a default 2 MiB thread stack holds with room
/// to spare; longer ones go to the analysis thread.
const INLINE_ANALYSIS: usize = 256;

/// Runs requests on the tier the router picks, under one policy, with shared
/// breakers. Share it (`Arc<Sandbox>`) between tasks.
pub struct Sandbox {
    policy: Policy,
    breakers: Breakers,
    audit: Option<AuditLog>,
    /// The approvals queue (in the audit log's database; none without one).
    gate: Option<Gate>,
    /// Slots for runs in a tier (with their number), when limited.
    running: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Slots for open sessions (`sessions.max_open`).
    sessions: Arc<tokio::sync::Semaphore>,
    /// Each tier's settings and executor.
    tiers: Tiers,
    /// The host functions' implementations registered on the builder.
    functions: Arc<crate::functions::Registry>,
    /// Where runs' workspaces live.
    workspace_root: workspace::Root,
    /// The emergency stop, and the work in flight it would stop (shared with the
    /// sandbox a policy change replaces this one with).
    halt: Arc<halt::Halt>,
}

/// The alerts' watcher for `policy` (none when it has no notifier).
fn alerter(policy: &Policy) -> Result<Option<Arc<dyn crate::audit::Watcher>>, SandboxError> {
    if !policy.alerts().enabled() {
        return Ok(None);
    }
    let webhook = crate::breaker::Breaker::new("alerts_webhook", policy.breakers().api);
    let alerter = crate::alerts::Alerter::start(policy.alerts().clone(), Some(webhook))
        .map_err(|e| SandboxError::Audit { overloaded: false, source: Box::new(e) })?;
    Ok(Some(Arc::new(alerter)))
}

impl Sandbox {
    /// A builder.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// The policy every request starts from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Waits until every audit event recorded so far is in the database (they are
    /// durable in the journal already; this is for readers of the database, and
    /// for a clean exit).
    ///
    /// # Errors
    /// The database stayed unavailable for `within`.
    pub fn flush_audit(&self, within: std::time::Duration) -> Result<(), SandboxError> {
        match &self.audit {
            Some(log) => Ok(log.flush(within)?),
            None => Ok(()),
        }
    }

    /// The circuit breakers.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// The audit log (when the sandbox has one).
    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// The approvals queue critical operations wait in (present when the sandbox
    /// has an audit log).
    pub fn approvals(&self) -> Option<&Gate> {
        self.gate.as_ref()
    }

    /// A slot for one run or command in a tier, held until dropped; `None` when
    /// runs are not limited.
    ///
    /// # Errors
    /// [`SandboxError::Busy`] when every slot is taken.
    pub fn run_slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, SandboxError> {
        match &self.running {
            Some((slots, n)) => slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| SandboxError::Busy(format!("{n} runs are in progress, the most allowed; retry"))),
            None => Ok(None),
        }
    }

    /// Runs in a tier now (0 when runs are not limited: they are not counted).
    pub fn running(&self) -> usize {
        self.running.as_ref().map_or(0, |(slots, n)| n - slots.available_permits())
    }

    /// Waits for a human's approval when running `req` on `tier` is critical under
    /// `policy`. `Ok(None)`: not critical; `Ok(Some(id))`: approved as request
    /// `id`; `Err(outcome)`: refused (denied, expired, or no queue to ask).
    async fn clear(
        &self,
        req: &ExecRequest,
        tier: Tier,
        policy: &Policy,
        route: &str,
        findings: &[FindingInfo],
    ) -> Result<Result<Option<i64>, Outcome>, SandboxError> {
        let mut why = Vec::new();
        if tier == Tier::Docker && policy.is_critical(Critical::DockerTier) {
            why.push("the run would use the docker tier");
        }
        if req.scratch && policy.is_critical(Critical::WritableScratch) {
            why.push("the run asks for a writable scratch directory");
        }
        if why.is_empty() {
            return Ok(Ok(None));
        }
        let reason = format!("{} (critical under the policy's approvals)", why.join(" and "));
        let refuse = |msg: String| Outcome::refused(req.id.clone(), tier, Status::Denied, ErrorKind::NotApproved, msg);
        let Some(gate) = &self.gate else {
            return Ok(Err(refuse(format!(
                "{reason}, and this sandbox has no approvals queue (it needs an audit log)"
            ))));
        };
        let subject = serde_json::json!({
            "request_id": req.id, "code": req.code, "tier": tier, "route": route, "scratch": req.scratch,
            "findings": findings, "policy": policy.to_yaml_redacted(), "caller": req.caller,
        });
        let item = gate.ask("execute", subject, &reason, policy.approvals().timeout).await?;
        if item.status == crate::approval::ApprovalStatus::Approved {
            Ok(Ok(Some(item.id)))
        } else {
            Ok(Err(refuse(format!("{reason}; {}", crate::approval::refusal(&item)))))
        }
    }

    /// The first module of `needed` that `tier` cannot import.
    async fn missing_module(&self, tier: Tier, needed: &[String]) -> Result<Option<String>, SandboxError> {
        if needed.is_empty() {
            return Ok(None);
        }
        let root = |m: &str| m.split('.').next().unwrap_or(m).to_string();
        match tier {
            #[cfg(feature = "rustpython")]
            Tier::Rustpython => Ok(router::missing(needed, crate::tier::rustpython::serves_module).map(str::to_string)),
            Tier::Wasm | Tier::Docker => {
                let have = self.tiers.cpython_modules(tier, &self.breakers).await?;
                Ok(router::missing(needed, |m| have.contains(&root(m))).map(str::to_string))
            }
            #[allow(unreachable_patterns, reason = "reached only in builds without some tier")]
            _ => Err(SandboxError::TierUnavailable { tier, reason: "not in this build".into() }),
        }
    }

    /// Runs one request: analysis, routing, the chosen tier through its breaker.
    ///
    /// # Errors
    /// A bad request or a loosening override; [`SandboxError::BreakerOpen`] when
    /// every tier that could serve has its breaker open; the chosen tier's host
    /// fault.
    pub async fn execute(&self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        self.audited(req, None, |req, policy| Box::pin(self.route_and_run(req, policy))).await
    }

    /// Answers every host function the policy declares without a `command` and
    /// that has no closure registered on the builder with `f` (a server hands
    /// such calls to its API caller). Only the first call takes effect: `false`
    /// when one was set already.
    pub fn answer_functions_with(&self, f: crate::functions::HostFunction) -> bool {
        self.functions.answer_rest_with(f)
    }

    /// Gives `req` its link to the policy's host functions (none declared: none),
    /// and returns the run's record of its calls.
    fn link_functions(
        &self,
        req: &mut ExecRequest,
        policy: &Policy,
        request_id: Option<String>,
        session: Option<(&str, &[String])>,
    ) -> Option<Arc<crate::functions::RunCalls>> {
        if policy.functions().is_empty() {
            return None;
        }
        let cx = crate::functions::RunContext {
            request_id,
            caller: req.caller.clone().unwrap_or_else(|| "local".into()),
            session: session.map(|(s, _)| s.to_string()),
            code: req.code.clone(),
            earlier: session.map(|(_, e)| e.to_vec()).unwrap_or_default(),
            approval_wait: policy.approvals().timeout,
        };
        let calls = crate::functions::RunCalls::new(
            Arc::new(policy.functions().clone()),
            self.functions.clone(),
            self.gate.clone(),
            self.audit.clone(),
            cx,
        );
        req.host = Some(calls.link());
        Some(calls)
    }

    /// Checks `req` against the policy, records it, runs it with `run` (under the
    /// request's own policy), and records how it ended; `session` names the
    /// session a cell belongs to.
    async fn audited<'a>(
        &'a self,
        mut req: ExecRequest,
        cell_of: Option<(&str, &[String])>,
        run: impl FnOnce(ExecRequest, Policy) -> crate::executor::BoxFuture<'a, Result<Outcome, SandboxError>>,
    ) -> Result<Outcome, SandboxError> {
        self.halt.check()?;
        let session = cell_of.map(|(s, _)| s);
        // The request's own policy: overrides only tighten, the code fits it.
        let checked = self.policy.tighten(&req.overrides).map_err(SandboxError::from).and_then(|p| {
            req.validate(p.max_code_size())?;
            Ok(p)
        });
        // H15: every event names who asked, and a client's id is kept in its own
        // namespace (`req:CALLER:ID`), apart from the gate's `approval-N`.
        let caller = req.caller.clone().unwrap_or_else(|| "local".into());
        // A session's cells without an id of their own are filed under the session.
        let id = match (&req.id, session) {
            (Some(i), _) => Some(request_key(&caller, i)),
            (None, Some(s)) => Some(format!("session:{s}")),
            (None, None) => None,
        };
        let calls = match &checked {
            Ok(p) => self.link_functions(&mut req, p, id.clone(), cell_of),
            Err(_) => None,
        };
        // The host's record of the run's calls goes into its outcome.
        let with_calls = |r: Result<Outcome, SandboxError>| match (&calls, r) {
            (Some(calls), Ok(mut o)) => {
                let (records, waited) = calls.taken();
                o.calls = records;
                if !o.calls.is_empty() {
                    o.usage.host_wait_ms = Some(millis(waited));
                }
                Ok(o)
            }
            (_, r) => r,
        };
        let Some(log) = &self.audit else {
            let policy = checked?;
            let sha = crate::audit::sha256_hex(req.code.as_bytes());
            let in_flight = halt::InFlightRun::of(&req, id.as_deref(), &caller, &sha, session);
            return with_calls(self.until_stopped(in_flight, run(req, policy)).await);
        };
        let with_caller = |mut data: serde_json::Value| {
            if let Some(map) = data.as_object_mut() {
                map.insert("caller".into(), serde_json::Value::String(caller.clone()));
            }
            data
        };
        let sha = crate::audit::sha256_hex(req.code.as_bytes());
        // A request refused before it runs (bad code, a loosening override) is
        // recorded without its text: the size cap is what keeps the log bounded.
        let policy = match checked {
            Ok(p) => p,
            Err(e) => {
                let data = with_caller(serde_json::json!({
                    "code_sha256": sha, "code_bytes": req.code.len(), "refused": e.to_string(), "session": session,
                }));
                log.admit_async(Event { kind: EventKind::Request, request_id: id, data, code: None }).await?;
                return Err(e);
            }
        };
        let data = with_caller(serde_json::json!({
            "code_sha256": sha,
            "tier": req.tier.to_string(),
            "scratch": req.scratch,
            "workspace": req.workspace,
            "overrides": format!("{:?}", req.overrides),
            "session": session,
        }));
        log.admit_async(Event { kind: EventKind::Request, request_id: id.clone(), data, code: Some(req.code.clone()) })
            .await?;
        let in_flight = halt::InFlightRun::of(&req, id.as_deref(), &caller, &sha, session);
        let r = with_calls(self.until_stopped(in_flight, run(req, policy)).await);
        // One event per fact, committed together: the analysis' findings, the
        // routing decision, a denial, and the outcome with its usage.
        let event = |kind: EventKind, data: serde_json::Value| Event {
            kind,
            request_id: id.clone(),
            data: with_caller(data),
            code: None,
        };
        let mut events = Vec::new();
        match &r {
            Ok(o) => {
                if !o.findings.is_empty() {
                    events.push(event(EventKind::Analysis, serde_json::json!({"findings": o.findings})));
                }
                events.push(event(EventKind::Route, serde_json::json!({"tier": o.tier, "reason": o.route})));
                if o.status == Status::Denied {
                    events.push(event(EventKind::Denial, serde_json::json!({"tier": o.tier, "error": o.error})));
                }
                events.push(event(
                    EventKind::Outcome,
                    serde_json::json!({
                        "code_sha256": sha, "tier": o.tier, "status": o.status, "error": o.error, "usage": o.usage,
                        "guest_word": o.guest_word(), "session": session.map(|s| (s, &o.session)),
                        "calls": o.calls, "workspace": o.workspace,
                    }),
                ));
            }
            Err(e) => events.push(event(
                EventKind::Outcome,
                serde_json::json!({
                    "code_sha256": sha, "status": "error", "host_error": crate::error::redact_paths(&e.to_string()),
                }),
            )),
        }
        log.record_all_async(events).await?;
        r
    }

    /// Runs `run` (the run of `req`) registered as in flight, until it ends or
    /// the deployment is stopped: then it is dropped (which stops its child,
    /// instance or container) and the run ends [`SandboxError::Stopped`].
    async fn until_stopped<T>(
        &self,
        in_flight: halt::InFlightRun,
        run: impl std::future::Future<Output = Result<T, SandboxError>>,
    ) -> Result<T, SandboxError> {
        let stop = self.halt.signalled();
        let _registered = self.halt.register(in_flight);
        // Stopped between admission and registration: never started.
        self.halt.check()?;
        tokio::select! {
            r = run => r,
            () = stop => Err(self.halt.check().err().unwrap_or_else(halt::stopped_error)),
        }
    }

    /// Analysis, routing and the run, under `policy` (the request's, already
    /// checked by [`Sandbox::execute`]).
    async fn route_and_run(&self, req: ExecRequest, policy: Policy) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        Sandbox::check_workspace(&req, &policy)?;
        let analysis = analyze(req.code.clone()).await;
        let findings = findings_of(&analysis);
        let needed = router::needed_modules(&analysis, &policy);
        let candidates = router::candidates(&self.policy, req.tier);
        let Some(&last) = candidates.last() else {
            // Empty only for a fixed tier the policy refuses (validation keeps at
            // least one allowed tier at or above the minimum isolation).
            let fixed = match req.tier {
                TierChoice::Fixed(t) => Some(t),
                TierChoice::Auto => match self.policy.tier() {
                    TierChoice::Fixed(t) => Some(t),
                    TierChoice::Auto => None,
                },
            };
            let why = fixed.and_then(|t| router::refusal(&self.policy, t));
            return Err(SandboxError::InvalidRequest(why.unwrap_or_else(|| "no tier is allowed by the policy".into())));
        };
        let mut skipped: Vec<(Tier, Skip)> = Vec::new();
        for &tier in &candidates {
            if (req.scratch || req.workspace.is_some()) && tier == Tier::Rustpython {
                skipped.push((tier, Skip::NoFileSystem));
                continue;
            }
            // The last candidate runs a snippet whose module no tier has: the guest
            // sees its own ModuleNotFoundError there.
            if tier != last {
                match self.missing_module(tier, &needed).await {
                    Ok(None) => {}
                    Ok(Some(m)) => {
                        skipped.push((tier, Skip::Module(m)));
                        continue;
                    }
                    Err(e) => {
                        skipped.push((tier, Skip::Unknown(e.to_string())));
                        continue;
                    }
                }
            }
            let route = router::reason(tier, req.tier, &skipped);
            let finish = |mut o: Outcome| {
                o.route = Some(route.clone());
                o.findings = findings.clone();
                o.usage.wall_ms = millis(started.elapsed());
                o
            };
            if policy.deny_findings()
                && let Some(f) = analysis.denial()
            {
                let msg = format!("line {}: {}", f.line, f.message);
                return Ok(finish(Outcome::refused(req.id, tier, Status::Denied, ErrorKind::PolicyDenied, msg)));
            }
            // A human decides before the breaker is asked: a wait must not hold
            // the breaker's one half-open trial.
            let approved = match self.clear(&req, tier, &policy, &route, &findings).await? {
                Ok(a) => a,
                Err(refused) => return Ok(finish(refused)),
            };
            // A run slot only once any human has decided: waits have their own limit.
            let _slot = self.run_slot()?;
            let prepared = match &req.workspace {
                Some(name) => Some(self.stage_workspace(name, tier).await?),
                None => None,
            };
            let permit = match self.breakers.tier(tier).allow() {
                Ok(p) => p,
                Err(open) => {
                    skipped.push((tier, Skip::BreakerOpen(open)));
                    continue;
                }
            };
            let exec = match self.tiers.executor(tier) {
                Ok(e) => e,
                Err(e) => {
                    permit.failed(&e.to_string());
                    return Err(e);
                }
            };
            let mut run = req.clone();
            run.mount = prepared.as_ref().map(workspace::Prepared::mount);
            let guard = prepared.as_ref().map(|p| p.guard(policy.workspaces().quota));
            let r = exec.execute(run).await;
            if let Some(g) = guard {
                g.finish();
            }
            match &r {
                Err(e) if e.is_host_fault() => permit.failed(&e.to_string()),
                _ => permit.succeeded(),
            }
            let mut r = r.map(finish);
            if let (Some(p), Ok(o)) = (prepared, &mut r) {
                self.settle_workspace(p, o, &req, &policy).await?;
            }
            if let (Some(id), Some(gate)) = (approved, &self.gate) {
                if let Ok(o) = &mut r {
                    o.route = o.route.take().map(|route| format!("{route}; approved as request {id}"));
                }
                let end = match &r {
                    Ok(o) => serde_json::to_value(o).unwrap_or_default(),
                    Err(e) => serde_json::json!({"status": "error", "host_error": e.to_string()}),
                };
                gate.complete(id, end).await?;
            }
            return r;
        }
        if let Some(open) = skipped.iter().find_map(|(_, s)| if let Skip::BreakerOpen(o) = s { Some(o) } else { None })
        {
            return Err(SandboxError::BreakerOpen(open.clone()));
        }
        let why: Vec<String> = skipped.iter().map(|(t, s)| format!("{t} {s}")).collect();
        Err(SandboxError::InvalidRequest(format!("no allowed tier can serve this request: {}", why.join("; "))))
    }
}

/// The audit log's name of a client's request `id` from `caller`: `req:CALLER:ID`,
/// in its own namespace (apart from the gate's `approval-N` and other callers').
fn request_key(caller: &str, id: &str) -> String {
    format!("req:{caller}:{id}")
}

/// Runs the static analysis: short sources on the caller's thread, others on a
/// thread with a stack deep enough for any source the size caps let through (one
/// long-lived thread, shared by every sandbox).
async fn analyze(code: String) -> Analysis {
    if code.len() <= INLINE_ANALYSIS {
        return analysis::analyze(&code);
    }
    type Job = (String, tokio::sync::oneshot::Sender<Analysis>);
    static QUEUE: OnceLock<Option<std::sync::Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("terrarium-analysis".into())
            .stack_size(ANALYSIS_STACK)
            .spawn(move || {
                for (code, reply) in rx {
                    let _ = reply.send(analysis::analyze(&code));
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = queue.as_ref().and_then(|q| q.lock().ok()).is_some_and(|q| q.send((code, tx)).is_ok());
    if !sent {
        // No analysis thread: report the snippet as unanalysable and refuse it.
        return unanalysed("the analysis thread could not start");
    }
    rx.await.unwrap_or_else(|_| unanalysed("the analysis thread stopped"))
}

/// The analysis' findings as outcomes report them.
fn findings_of(analysis: &Analysis) -> Vec<FindingInfo> {
    analysis
        .findings
        .iter()
        .map(|f| FindingInfo { severity: f.severity, line: f.line, message: f.message.clone() })
        .collect()
}

fn unanalysed(why: &str) -> Analysis {
    Analysis {
        findings: vec![analysis::Finding { severity: Severity::Deny, line: 0, message: why.into() }],
        ..Analysis::default()
    }
}
