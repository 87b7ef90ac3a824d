//! Sessions on the interpreter tier: one confined child of the zygote kept for a
//! session's cells, each sent on the same request socket after the last answer.
//!
//! # Security invariants
//! - The session's child is forked, confined and limited like any other (seccomp,
//!   rlimits, namespaces); its memory limit is the session's and its CPU-time
//!   backstop the session's lifetime. It serves no one else: a pool child taken for
//!   a session never returns to the pool.
//! - The host decides every end. A cell's deadline is a `SIGKILL`; a cell that
//!   ends at a limit, breaks the protocol (including bytes written ahead of a
//!   request), or says its interpreter cannot go on ends the session, and its
//!   child is killed before the cell's outcome returns. Idle and lifetime limits
//!   are enforced by a watchdog task that kills the child in the background.

use super::*;
use crate::executor::{CellInfo, TierSession};
use crate::policy::SessionPolicy;

/// What the session and its watchdog share.
struct Shared {
    /// Why the session ended, once it has.
    ended: Option<String>,
    /// A cell is running (the idle clock is stopped).
    busy: bool,
    /// When the last cell ended (or the session started).
    last_used: Instant,
}

/// A session on the interpreter tier (see the module docs).
pub(super) struct IsolatedSession {
    policy: Policy,
    limits: SessionPolicy,
    /// The session's child, until the session ends.
    live: Option<Live>,
    /// Kept so that the zygote (whose reader routes the child's exit) outlives
    /// the session.
    _zygote: Arc<Zygote>,
    cells: u64,
    /// When the session's lifetime ends.
    expires: Instant,
    shared: Arc<Mutex<Shared>>,
    /// Dropped with the session: stops the watchdog.
    _stop: oneshot::Sender<()>,
    /// Test hook for the first cell (see `hooks.rs`).
    #[cfg(feature = "test-hooks")]
    pub(super) probe: Option<String>,
}

impl IsolatedSession {
    pub(super) fn start(policy: Policy, zygote: Arc<Zygote>, live: Live) -> Result<IsolatedSession, SandboxError> {
        let limits = policy.sessions().clone();
        let now = Instant::now();
        let expires = now + limits.max_lifetime;
        let shared = Arc::new(Mutex::new(Shared { ended: None, busy: false, last_used: now }));
        let pidfd = live.pidfd().map_err(|e| host(&format!("cannot watch a session's child: {e}")))?;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(watch(shared.clone(), pidfd, limits.clone(), expires, stopped));
        Ok(IsolatedSession {
            policy,
            limits,
            live: Some(live),
            _zygote: zygote,
            cells: 0,
            expires,
            shared,
            _stop: stop,
            #[cfg(feature = "test-hooks")]
            probe: None,
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn cell(&mut self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let ended = self.shared().ended.clone();
        if let Some(why) = ended {
            self.live = None;
            return Err(SandboxError::SessionEnded(why));
        }
        // The watchdog may not have woken yet: the clocks decide, not its timing.
        let idle_since = self.shared().last_used;
        let expired = if started >= self.expires {
            Some(lifetime_reason(&self.limits))
        } else if started.duration_since(idle_since) >= self.limits.idle_timeout {
            Some(idle_reason(&self.limits))
        } else {
            None
        };
        if let Some(why) = expired {
            self.end(&why);
            return Err(SandboxError::SessionEnded(why));
        }
        let policy = match admit(&self.policy, &req, Tier::Rustpython)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        if self.live.is_none() {
            return Err(SandboxError::SessionEnded("the session has no process".into()));
        }
        self.cells += 1;
        self.shared().busy = true;
        let abandoned = Abandoned(Some(self.shared.clone()));
        let timeout = policy.timeout();
        let deadline = (started + timeout).min(self.expires);
        let request = ChildRequest {
            id: req.id.clone(),
            code: req.code,
            allowed_modules: policy.allowed_modules().clone(),
            max_output: policy.max_output(),
            timeout_ms: millis(timeout),
            session: true,
            #[cfg(feature = "test-hooks")]
            probe: self.probe.take(),
        };
        let cap = answer_cap(&policy);
        let limits =
            RunLimits { deadline, timeout, cap, memory: self.limits.max_memory, max_output: policy.max_output() };
        let turn = match self.live.as_mut() {
            Some(live) => live.turn(&request, &limits).await,
            None => Err(Supervise::Host(host("the session lost its process"))),
        };
        abandoned.disarm();
        {
            let mut s = self.shared();
            s.busy = false;
            s.last_used = Instant::now();
        }
        let (mut outcome, ended) = match turn {
            Err(Supervise::ZygoteGone) => {
                let why = "the session's process died with its zygote";
                self.end(why);
                return Err(host(why));
            }
            Err(Supervise::Host(e)) => {
                self.end(&e.to_string());
                return Err(e);
            }
            Ok(Turn::Ended(mut o)) => {
                let why = if o.status == Status::Timeout && deadline == self.expires && deadline < started + timeout {
                    // Killed at the session's end, before the cell's own deadline.
                    let why = lifetime_reason(&self.limits);
                    if let Some(e) = o.error.as_mut() {
                        e.message = format!("the session {why} while this cell ran; it was killed");
                    }
                    why
                } else {
                    let message = o.error.as_ref().map(|e| e.message.as_str()).unwrap_or_default();
                    format!("cell {} ended with {}: {message}", self.cells, o.status.as_str())
                };
                (o, Some(why))
            }
            Ok(Turn::Answered(o, go_on)) => {
                let why = if o.status == Status::OutputLimit {
                    Some(format!("cell {} went past the output cap", self.cells))
                } else if o.error.as_ref().is_some_and(|e| e.kind == "MemoryError") {
                    // Most likely an allocation refused at the session's cap, with
                    // what the cells built still in place: the session ends. The
                    // exception's type is the guest's word, which can only end its
                    // own session; the reason says what was seen, not a cause.
                    Some(format!(
                        "cell {} ended with MemoryError (the session's memory limit is {} bytes, sessions.max_memory)",
                        self.cells, self.limits.max_memory
                    ))
                } else if !go_on {
                    Some(format!("cell {} left its interpreter unable to go on ({})", self.cells, o.status.as_str()))
                } else if self.cells >= self.limits.max_cells {
                    Some(format!("the session ran its {} cells (sessions.max_cells)", self.limits.max_cells))
                } else {
                    None
                };
                (o, why)
            }
        };
        if let Some(why) = &ended {
            self.end(why);
        }
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        outcome.session = Some(CellInfo { cell: self.cells, ended });
        Ok(outcome)
    }
}

impl TierSession for IsolatedSession {
    fn execute(&mut self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.cell(req))
    }

    fn ended(&self) -> Option<String> {
        self.shared().ended.clone()
    }

    fn end(&mut self, reason: &str) {
        {
            let mut s = self.shared();
            if s.ended.is_none() {
                s.ended = Some(reason.to_string());
            }
        }
        // Dropping the child kills it; the zygote reaps it.
        self.live = None;
    }

    fn cells(&self) -> u64 {
        self.cells
    }
}

/// Ends the session if a cell's future is dropped before the cell ended (its caller
/// went away): the child is then somewhere in the cell, so the watchdog kills it.
struct Abandoned(Option<Arc<Mutex<Shared>>>);

impl Abandoned {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.busy = false;
            s.ended.get_or_insert_with(|| "a cell was abandoned by its caller before it ended".into());
        }
    }
}

fn idle_reason(limits: &SessionPolicy) -> String {
    format!("idle for {}s (sessions.idle_timeout)", limits.idle_timeout.as_secs_f64())
}

fn lifetime_reason(limits: &SessionPolicy) -> String {
    format!("reached its lifetime of {}s (sessions.max_lifetime)", limits.max_lifetime.as_secs_f64())
}

/// Kills the session's child once it has been idle for `idle` or lived until
/// `expires` (a running cell has its own deadline, capped at `expires`); ends
/// when the session is dropped.
async fn watch(
    shared: Arc<Mutex<Shared>>,
    pidfd: OwnedFd,
    limits: SessionPolicy,
    expires: Instant,
    mut stopped: oneshot::Receiver<()>,
) {
    let idle = limits.idle_timeout;
    loop {
        let wake = {
            let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.ended.is_some() {
                break;
            }
            let now = Instant::now();
            let idle_end = s.last_used + idle;
            if !s.busy && (now >= idle_end || now >= expires) {
                s.ended = Some(if now >= expires { lifetime_reason(&limits) } else { idle_reason(&limits) });
                break;
            }
            // While a cell runs, look again shortly after its deadline could pass.
            if s.busy { now + idle.min(Duration::from_secs(1)) } else { idle_end.min(expires) }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = &mut stopped => return,
        }
    }
    let _ = sys::pidfd_kill(pidfd.as_fd());
}
