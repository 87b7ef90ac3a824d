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
use crate::executor::{CellInfo, Lifecycle, TierSession, end_reason};

/// A session on the interpreter tier (see the module docs).
pub(super) struct IsolatedSession {
    policy: Policy,
    /// The session's child, until the session ends.
    live: Option<Live>,
    /// Kept so that the zygote (whose reader routes the child's exit) outlives
    /// the session; its in-flight count includes this session's running cell.
    zygote: Arc<Zygote>,
    cells: u64,
    /// Fuel its cells used so far.
    fuel: u64,
    life: Lifecycle,
    /// Dropped with the session: stops the watchdog.
    _stop: oneshot::Sender<()>,
    /// Test hook for the first cell (see `hooks.rs`).
    #[cfg(feature = "test-hooks")]
    pub(super) probe: Option<String>,
}

impl IsolatedSession {
    pub(super) fn start(policy: Policy, zygote: Arc<Zygote>, live: Live) -> Result<IsolatedSession, SandboxError> {
        let life = Lifecycle::new(policy.sessions().clone());
        let pidfd = live.pidfd().map_err(|e| host(&format!("cannot watch a session's child: {e}")))?;
        let (stop, stopped) = oneshot::channel();
        // Kills the child once the session ended by any route (idle, lifetime, an
        // abandoned cell, its caller); gone with the session otherwise.
        let watched = life.clone();
        tokio::spawn(async move {
            if watched.watch(stopped).await.is_some() {
                let _ = sys::pidfd_kill(pidfd.as_fd());
            }
        });
        Ok(IsolatedSession {
            policy,
            live: Some(live),
            zygote,
            cells: 0,
            fuel: 0,
            life,
            _stop: stop,
            #[cfg(feature = "test-hooks")]
            probe: None,
        })
    }

    async fn cell(&mut self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        if let Some(why) = self.life.refuse(started) {
            self.live = None;
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
        let running = self.life.begin_cell();
        let timeout = policy.timeout();
        let deadline = (started + timeout).min(self.life.expires);
        let request = child_request(req.id.clone(), req.code, &policy, true, req.host.as_ref());
        #[cfg(feature = "test-hooks")]
        let request = ChildRequest { probe: self.probe.take(), ..request };
        let cap = answer_cap(&policy);
        let memory = policy.sessions().max_memory;
        let (link, latest) = (req.host.clone(), Some(self.life.expires));
        let counted = self.zygote.in_flight();
        let limits = RunLimits {
            deadline,
            timeout,
            cap,
            memory,
            max_output: policy.max_output(),
            fuel: policy.fuel(),
            host: link,
            latest,
            // Requests and other sessions' cells alike count against `alone`.
            spin: counted.alone(),
        };
        let turn = match self.live.as_mut() {
            Some(live) => live.turn(&request, &limits).await,
            None => Err(Supervise::Host(host("the session lost its process"))),
        };
        drop(counted);
        running.finish();
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
                let why = if o.status == Status::Timeout && deadline < started + timeout {
                    // Killed at the session's end, before the cell's own deadline.
                    let why = self.life.lifetime_reason();
                    if let Some(e) = o.error.as_mut() {
                        e.message = format!("the session {why} while this cell ran; it was killed");
                    }
                    Some(why)
                } else {
                    end_reason(&o, self.cells, policy.sessions(), false)
                };
                (o, why)
            }
            Ok(Turn::Answered(o, go_on)) => {
                let why = end_reason(&o, self.cells, policy.sessions(), go_on);
                (o, why)
            }
        };
        if let Some(why) = &ended {
            self.end(why);
        }
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        self.fuel = self.fuel.saturating_add(outcome.usage.fuel.unwrap_or(0));
        outcome.session = Some(CellInfo { cell: self.cells, ended, fuel: Some(self.fuel) });
        Ok(outcome)
    }
}

impl IsolatedSession {
    /// Kills the child (dropping it does; the zygote reaps it).
    fn discard(&mut self) {
        self.live = None;
    }
}

crate::executor::tier_session!(IsolatedSession);
