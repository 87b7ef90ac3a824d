//! Emergency stop and resume ([`Sandbox::emergency_stop`], [`Sandbox::resume`]):
//! what an operator does on a bad day, keeping the evidence.
//!
//! # Security invariants
//! - Once stopped, the sandbox starts nothing: every run, cell, session and
//!   command checks the stop at admission and is refused
//!   ([`SandboxError::Stopped`]). A stopped deployment stays stopped across a
//!   restart: the stop is kept in `stopped.json` beside the audit log, which a
//!   sandbox reads when it is built (an unreadable one counts as stopped), until
//!   an operator resumes it.
//! - What was in flight (runs, sessions with their cells, pending approvals and
//!   the workspace change sets among them) is recorded in one `emergency_stop`
//!   audit event, durable before anything is stopped or discarded.
//! - Pending approvals are then expired (noted `stopped: …`), and no approval is
//!   accepted while stopped; every run in flight (session starts included) is
//!   stopped by dropping its future, which kills its child (isolated), interrupts
//!   its instance at the next epoch tick or in its sleep (wasm) or removes its
//!   container (docker, reaped from creation). The stop returns once every tier
//!   reports nothing lingering, or after 20 s ([`SETTLE_WITHIN`]), naming how many
//!   were not. Stops and resumes never interleave.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Sandbox;
use crate::audit::{Event, EventKind};
use crate::error::SandboxError;

/// The file beside the audit log that keeps a deployment stopped.
pub const STOP_FILE: &str = "stopped.json";

/// How long a stop waits for the tiers to report every run gone.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(20);

/// Who stopped the deployment, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Stopped {
    /// Why (the operator's words).
    pub reason: String,
    /// Who (a token's name, or `local` for the command line).
    pub by: String,
    /// When (µs since the epoch).
    pub at_us: i64,
}

/// A run in flight when the deployment was stopped.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct InFlightRun {
    /// Its request key in the audit log (`req:CALLER:ID`, `session:ID`), if any.
    pub request_id: Option<String>,
    /// Who asked.
    pub caller: String,
    /// The tier asked for (`auto` or a tier's name).
    pub tier: String,
    /// The sha256 of its code (the code itself is in its `request` event).
    pub code_sha256: String,
    /// The session it is a cell of.
    pub session: Option<String>,
    /// The workspace it works on, whose change set is discarded.
    pub workspace: Option<String>,
    /// How long it had run, ms.
    pub running_ms: u64,
}

impl InFlightRun {
    /// The registry's entry for `req` (before it runs).
    pub(super) fn of(
        req: &crate::executor::ExecRequest,
        request_id: Option<&str>,
        caller: &str,
        sha: &str,
        session: Option<&str>,
    ) -> InFlightRun {
        InFlightRun {
            request_id: request_id.map(str::to_string),
            caller: caller.to_string(),
            tier: req.tier.to_string(),
            code_sha256: sha.to_string(),
            session: session.map(str::to_string),
            workspace: req.workspace.clone(),
            running_ms: 0,
        }
    }
}

/// The refusal of a run stopped after a resume raced its stop.
pub(super) fn stopped_error() -> SandboxError {
    SandboxError::Stopped("an operator stopped this deployment while it ran".into())
}

/// A session open when the deployment was stopped.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct OpenSession {
    /// Its id.
    pub session: String,
    /// Who opened it.
    pub caller: String,
    /// Its tier.
    pub tier: crate::policy::Tier,
    /// Cells it ran.
    pub cells: u64,
    /// The workspace it mounts.
    pub workspace: Option<String>,
}

/// What an emergency stop found and did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StopReport {
    /// The stop.
    pub stopped: Stopped,
    /// Whether the deployment was already stopped (this stop swept again).
    pub already: bool,
    /// Runs in flight (stopped).
    pub runs: Vec<InFlightRun>,
    /// Sessions open (their cells refused from now on).
    pub sessions: Vec<OpenSession>,
    /// Approval requests that were pending, now expired (ids).
    pub approvals: Vec<i64>,
    /// Among them, workspace change sets (ids), discarded.
    pub workspace_changes: Vec<i64>,
    /// Runs the tiers had not reported gone when the stop returned (0 unless
    /// a tier took longer than the stop waits).
    pub still_running: usize,
    /// Whether the stop was written beside the audit log (so that it outlives
    /// this process); when not, `persist_error` says why.
    pub persisted: bool,
    /// Why it was not.
    pub persist_error: Option<String>,
    /// How long the stop took, ms.
    pub took_ms: u64,
}

/// The sandbox's stop state and its registry of work in flight.
#[derive(Default)]
pub(super) struct Halt {
    flag: AtomicBool,
    state: Mutex<Option<Stopped>>,
    signal: Option<tokio::sync::watch::Sender<u64>>,
    runs: Mutex<BTreeMap<u64, (Instant, InFlightRun)>>,
    sessions: Mutex<BTreeMap<String, OpenSession>>,
    next: AtomicU64,
    /// The audit log's directory (where [`STOP_FILE`] lives), when there is one.
    dir: Option<std::path::PathBuf>,
    /// Held through a whole stop or resume: they never interleave.
    ops: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a run from the registry when its `audited` call ends (however).
pub(super) struct RunGuard<'a> {
    halt: &'a Halt,
    key: u64,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        lock(&self.halt.runs).remove(&self.key);
    }
}

impl Halt {
    /// The stop state of the deployment whose audit log is in `dir`: stopped when
    /// its [`STOP_FILE`] says so (or cannot be read: failing closed).
    pub(super) fn load(dir: Option<std::path::PathBuf>) -> Halt {
        let (tx, _) = tokio::sync::watch::channel(0);
        let state = dir.as_deref().and_then(read_stop);
        Halt {
            flag: AtomicBool::new(state.is_some()),
            state: Mutex::new(state),
            signal: Some(tx),
            dir,
            ..Halt::default()
        }
    }

    /// Refuses new work while stopped.
    pub(super) fn check(&self) -> Result<(), SandboxError> {
        if !self.flag.load(Ordering::SeqCst) {
            return Ok(());
        }
        let why = lock(&self.state).as_ref().map_or_else(|| "an operator stopped this deployment".into(), refusal);
        Err(SandboxError::Stopped(why))
    }

    /// The stop in force, if any.
    pub(super) fn stopped(&self) -> Option<Stopped> {
        lock(&self.state).clone()
    }

    /// Registers a run until the guard is dropped.
    pub(super) fn register(&self, run: InFlightRun) -> RunGuard<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.runs).insert(key, (Instant::now(), run));
        RunGuard { halt: self, key }
    }

    /// Resolves when the deployment is stopped after this call.
    pub(super) fn signalled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.signal.as_ref().map(tokio::sync::watch::Sender::subscribe);
        async move {
            match rx {
                // Subscribed at the call: a stop sent from then on is seen, even
                // one sent before this future is first polled.
                Some(mut rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        }
    }

    pub(super) fn session_opened(&self, s: OpenSession) {
        lock(&self.sessions).insert(s.session.clone(), s);
    }

    pub(super) fn session_cell(&self, id: &str, cells: u64) {
        if let Some(s) = lock(&self.sessions).get_mut(id) {
            s.cells = cells;
        }
    }

    pub(super) fn session_ended(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }
}

/// The longest reason a stop keeps, characters.
pub const MAX_REASON: usize = 1024;

/// Whether `text` is 1 to `most` characters, none of them control or invisible
/// ones (what a terminal or a log line could be driven or forged with).
fn printable(text: &str, most: usize) -> bool {
    !text.trim().is_empty()
        && text.chars().count() <= most
        && text.chars().all(|c| !c.is_control() && crate::text::hidden(c).is_none())
}

/// The refusal new work gets while `s` is in force.
fn refusal(s: &Stopped) -> String {
    format!("the deployment was stopped by {} ({}); nothing runs until an operator resumes it", s.by, s.reason)
}

fn read_stop(dir: &std::path::Path) -> Option<Stopped> {
    let dir = crate::dirs::OwnedDir::open(dir, "state directory").ok()?;
    let unreadable = |why: String| Stopped {
        reason: format!("{STOP_FILE} could not be read ({why}); resume to clear it"),
        by: "unknown".into(),
        at_us: 0,
    };
    match dir.read(STOP_FILE) {
        Ok(None) => None,
        Ok(Some(f)) => Some(match serde_json::from_reader::<_, Stopped>(std::io::BufReader::new(f)) {
            Ok(s) if printable(&s.reason, MAX_REASON) && printable(&s.by, 128) => s,
            Ok(_) => unreadable("its reason or author holds characters that are not printable".into()),
            Err(e) => unreadable(e.to_string()),
        }),
        Err(e) => Some(unreadable(e.to_string())),
    }
}

fn write_stop(dir: &std::path::Path, s: &Stopped) -> Result<(), String> {
    let dir = crate::dirs::OwnedDir::open(dir, "state directory").map_err(|e| e.to_string())?;
    let tmp = format!("{STOP_FILE}.{}", crate::hex::random(8).ok_or("no random bytes for a temporary name")?);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = dir.create_new(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        dir.rename(&tmp, STOP_FILE)
    };
    write().map_err(|e| {
        let _ = dir.remove(&tmp);
        e.to_string()
    })
}

fn remove_stop(dir: &std::path::Path) -> Result<(), String> {
    let dir = crate::dirs::OwnedDir::open(dir, "state directory").map_err(|e| e.to_string())?;
    match dir.remove(STOP_FILE) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    }
}

impl Sandbox {
    /// The emergency stop in force, if any (see [`Sandbox::emergency_stop`]).
    pub fn stopped(&self) -> Option<Stopped> {
        self.halt.stopped()
    }

    /// Refuses while the deployment is stopped (what approving an operation
    /// checks: nothing is approved into running then).
    ///
    /// # Errors
    /// [`SandboxError::Stopped`] with the stop's reason.
    pub fn check_not_stopped(&self) -> Result<(), SandboxError> {
        self.halt.check()
    }

    /// Stops the deployment: refuses new work at once, keeps the stop beside the
    /// audit log for later processes, records what is in flight (one
    /// `emergency_stop` audit event, durable first), expires pending approvals,
    /// stops every run (its child killed, instance interrupted, container
    /// removed), and returns once the tiers report nothing lingering (or after
    /// 20 s). Sessions are not ended here (their owners hold them): their next
    /// cell is refused; a server ends the ones it holds
    /// ([`Sandbox::emergency_stop_with`]).
    ///
    /// # Errors
    /// The audit log could not record the stop (the deployment is stopped all
    /// the same; nothing was discarded yet).
    pub async fn emergency_stop(&self, by: &str, reason: &str) -> Result<StopReport, SandboxError> {
        self.emergency_stop_with(by, reason, async {}).await
    }

    /// As [`Sandbox::emergency_stop`], running `after_signal` once every run was
    /// told to stop and before waiting for the tiers (a server ends the sessions
    /// it holds there, so that their instances and containers are waited for too).
    ///
    /// # Errors
    /// As [`Sandbox::emergency_stop`]; a reason or name that is empty, too long,
    /// or holds control or invisible characters.
    pub async fn emergency_stop_with(
        &self,
        by: &str,
        reason: &str,
        after_signal: impl std::future::Future<Output = ()>,
    ) -> Result<StopReport, SandboxError> {
        let reason = reason.trim();
        if !printable(reason, MAX_REASON) {
            return Err(SandboxError::InvalidRequest(format!(
                "reason: 1 to {MAX_REASON} printable characters (no control or invisible ones)"
            )));
        }
        if !printable(by, 128) {
            return Err(SandboxError::InvalidRequest("who stops: 1 to 128 printable characters".into()));
        }
        let _one = self.halt.ops.lock().await;
        let began = Instant::now();
        let stopped = Stopped { reason: reason.to_string(), by: by.to_string(), at_us: crate::approval::now_us() };
        let already = {
            let mut state = lock(&self.halt.state);
            let already = state.is_some();
            if !already {
                *state = Some(stopped.clone());
            }
            self.halt.flag.store(true, Ordering::SeqCst);
            already
        };
        let stopped = self.halt.stopped().unwrap_or(stopped);
        let (persisted, persist_error) = match &self.halt.dir {
            Some(dir) => match write_stop(dir, &stopped) {
                Ok(()) => (true, None),
                Err(e) => (false, Some(crate::error::redact_paths(&e))),
            },
            None => (false, Some("this sandbox has no audit log to keep the stop beside".to_string())),
        };
        let runs: Vec<InFlightRun> = lock(&self.halt.runs)
            .values()
            .map(|(since, r)| InFlightRun { running_ms: crate::executor::millis(since.elapsed()), ..r.clone() })
            .collect();
        let sessions: Vec<OpenSession> = lock(&self.halt.sessions).values().cloned().collect();
        let pending = match &self.gate {
            Some(g) => g
                .list(Some(crate::approval::ApprovalStatus::Pending), None, crate::approval::MAX_PAGE)
                .await
                .map_err(|e| SandboxError::Approval(Box::new(e)))?,
            None => Vec::new(),
        };
        let approvals: Vec<i64> = pending.iter().map(|i| i.id).collect();
        let workspace_changes: Vec<i64> =
            pending.iter().filter(|i| i.kind == "workspace_change").map(|i| i.id).collect();
        if let Some(log) = &self.audit {
            let data = serde_json::json!({
                "by": stopped.by, "reason": stopped.reason, "already": already, "runs": runs, "sessions": sessions,
                "approvals": pending.iter().map(|i| serde_json::json!({
                    "id": i.id, "kind": i.kind, "reason": i.reason, "subject": i.subject,
                })).collect::<Vec<_>>(),
                "workspace_changes": workspace_changes, "persisted": persisted,
            });
            log.record_all_async(vec![Event { kind: EventKind::EmergencyStop, request_id: None, data, code: None }])
                .await?;
        }
        // Recorded: now stop everything. Pending approvals first, so that each is
        // expired as stopped (not as abandoned by its dropped waiter) and none
        // can be approved from here on.
        if let Some(g) = &self.gate {
            let note = format!("stopped: {}", stopped.reason);
            if let Err(e) = g.stop_pending(&note).await {
                tracing::error!(error = %e, "pending approvals could not be expired by the stop");
            }
        }
        if let Some(tx) = &self.halt.signal {
            tx.send_modify(|g| *g += 1);
        }
        after_signal.await;
        let deadline = began + SETTLE_WITHIN;
        let still_running = loop {
            let left = lock(&self.halt.runs).len() + self.tiers.lingering();
            if left == 0 || Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if still_running > 0 {
            tracing::error!(still_running, "runs still going when the emergency stop returned");
        }
        Ok(StopReport {
            stopped,
            already,
            runs,
            sessions,
            approvals,
            workspace_changes,
            still_running,
            persisted,
            persist_error,
            took_ms: crate::executor::millis(began.elapsed()),
        })
    }

    /// Resumes a stopped deployment (recorded as a `resume` event, the stop file
    /// removed); the stop that was in force, or `None` when it was not stopped.
    ///
    /// # Errors
    /// The stop file could not be removed (the deployment stays stopped), or the
    /// audit log could not record the resume.
    pub async fn resume(&self, by: &str) -> Result<Option<Stopped>, SandboxError> {
        if !printable(by, 128) {
            return Err(SandboxError::InvalidRequest("who resumes: 1 to 128 printable characters".into()));
        }
        let _one = self.halt.ops.lock().await;
        let Some(was) = self.halt.stopped() else { return Ok(None) };
        if let Some(dir) = &self.halt.dir {
            remove_stop(dir).map_err(|e| {
                SandboxError::InvalidRequest(format!(
                    "the stop could not be cleared ({}); the deployment stays stopped",
                    crate::error::redact_paths(&e)
                ))
            })?;
        }
        if let Some(log) = &self.audit {
            let data = serde_json::json!({"by": by, "stopped": was});
            log.record_all_async(vec![Event { kind: EventKind::Resume, request_id: None, data, code: None }]).await?;
        }
        *lock(&self.halt.state) = None;
        self.halt.flag.store(false, Ordering::SeqCst);
        Ok(Some(was))
    }
}

/// The stop recorded for the deployment whose audit log is in `dir` (what
/// `terrarium doctor` reports), if any.
#[cfg(feature = "cli")]
pub(crate) fn deployment_stopped(dir: &std::path::Path) -> Option<Stopped> {
    read_stop(dir)
}
