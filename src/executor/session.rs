//! One tier's side of a session: a confined child, instance or container kept for
//! a sequence of cells that share interpreter state.
//!
//! # Invariants
//! - A session's state lives only in its own child (instance, container): no other
//!   session and no single run ever sees it.
//! - A cell that ends at a limit, or leaves its interpreter unable to go on, ends
//!   the session: its child is killed at once, the cell's outcome says so
//!   ([`CellInfo::ended`]), and every later cell is refused with
//!   [`SandboxError::SessionEnded`], never run on a half-state.
//! - An idle or expired session's child is killed by the host in the background,
//!   not when the next cell happens to come.

use serde::{Deserialize, Serialize};

use super::{BoxFuture, ExecRequest, Outcome};
use crate::error::SandboxError;

/// Where a cell stands in its session (in the outcomes of session cells only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CellInfo {
    /// This cell's number in its session, from 1.
    pub cell: u64,
    /// Why the session ended with this cell, when it did (its state is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Fuel the session's cells have used so far, this one included (each cell's
    /// own is its `usage.fuel`), where the tier counts it: rustpython always, wasm
    /// under a fuel budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

/// A tier's session: runs cells in the state its earlier cells left.
pub trait TierSession: Send {
    /// Runs one cell: `req.code` in the session's state, under the request's
    /// policy (its timeout and output cap are the cell's); the last expression's
    /// value is the result.
    ///
    /// # Errors
    /// [`SandboxError::SessionEnded`] once the session has ended (the reason); as
    /// for [`super::Executor::execute`] otherwise.
    fn execute(&mut self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>>;

    /// Why the session ended, once it has.
    fn ended(&self) -> Option<String>;

    /// Ends the session now: its state is gone, its child is killed. Ending an
    /// ended session changes nothing (the first reason stays).
    fn end(&mut self, reason: &str);

    /// Cells run so far.
    fn cells(&self) -> u64;
}

/// Implements [`TierSession`] for a tier's session type that has `cell(req)`,
/// `life: Lifecycle`, `cells: u64` and `discard()` (which kills its child,
/// instance or container).
#[cfg(any(feature = "rustpython", feature = "docker", feature = "wasm"))]
macro_rules! tier_session {
    ($t:ty) => {
        impl $crate::executor::TierSession for $t {
            fn execute(
                &mut self,
                req: $crate::executor::ExecRequest,
            ) -> $crate::executor::BoxFuture<'_, Result<$crate::executor::Outcome, $crate::error::SandboxError>> {
                Box::pin(self.cell(req))
            }

            fn ended(&self) -> Option<String> {
                self.life.ended()
            }

            fn end(&mut self, reason: &str) {
                self.life.end(reason);
                self.discard();
            }

            fn cells(&self) -> u64 {
                self.cells
            }
        }
    };
}
#[cfg(any(feature = "rustpython", feature = "docker", feature = "wasm"))]
pub(crate) use tier_session;

/// The clock and end of one session, shared by its tier's session and the
/// watchdog task that ends it when idle or expired: whether it ended (the first
/// reason stays), whether a cell runs, and when the last one ended.
#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
#[derive(Clone)]
pub(crate) struct Lifecycle {
    state: std::sync::Arc<std::sync::Mutex<LifeState>>,
    limits: crate::policy::SessionPolicy,
    /// When the session's lifetime ends.
    pub(crate) expires: std::time::Instant,
}

#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
struct LifeState {
    ended: Option<String>,
    busy: bool,
    last_used: std::time::Instant,
}

#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
impl Lifecycle {
    /// A session starting now under `limits`.
    pub(crate) fn new(limits: crate::policy::SessionPolicy) -> Lifecycle {
        let now = std::time::Instant::now();
        let expires = now + limits.max_lifetime;
        let state = LifeState { ended: None, busy: false, last_used: now };
        Lifecycle { state: std::sync::Arc::new(std::sync::Mutex::new(state)), limits, expires }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LifeState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the session ended, once it has.
    pub(crate) fn ended(&self) -> Option<String> {
        self.state().ended.clone()
    }

    /// Ends the session with `reason`, unless it already ended.
    pub(crate) fn end(&self, reason: &str) {
        self.state().ended.get_or_insert_with(|| reason.to_string());
    }

    /// At a cell's start: why the session cannot run it (ended, idle too long,
    /// past its lifetime; the clocks decide, not the watchdog's timing). Ends the
    /// session when a clock ran out.
    pub(crate) fn refuse(&self, now: std::time::Instant) -> Option<String> {
        let mut s = self.state();
        if let Some(why) = &s.ended {
            return Some(why.clone());
        }
        let why = if now >= self.expires {
            self.lifetime_reason()
        } else if now.duration_since(s.last_used) >= self.limits.idle_timeout {
            self.idle_reason()
        } else {
            return None;
        };
        s.ended = Some(why.clone());
        Some(why)
    }

    /// Marks a cell as running until the returned guard is finished; a guard
    /// dropped unfinished (the cell's future was dropped: its caller went away)
    /// ends the session, since its process is somewhere inside that cell.
    pub(crate) fn begin_cell(&self) -> CellGuard {
        self.state().busy = true;
        CellGuard(Some(self.clone()))
    }

    /// Why a session ends at its lifetime.
    pub(crate) fn lifetime_reason(&self) -> String {
        format!("reached its lifetime of {}s (sessions.max_lifetime)", self.limits.max_lifetime.as_secs_f64())
    }

    fn idle_reason(&self) -> String {
        format!("idle for {}s (sessions.idle_timeout)", self.limits.idle_timeout.as_secs_f64())
    }

    /// Waits until the session has ended, by its caller or by its clocks (idle
    /// or past its lifetime while no cell runs; a running cell has its own
    /// deadline, capped at [`Lifecycle::expires`]). Returns the moment the tier
    /// must stop the session's process; never returns if `stopped` resolves
    /// first (the session was dropped, which stops it).
    pub(crate) async fn watch(self, mut stopped: tokio::sync::oneshot::Receiver<()>) -> Option<()> {
        loop {
            let wake = {
                let mut s = self.state();
                if s.ended.is_some() {
                    return Some(());
                }
                let now = std::time::Instant::now();
                let idle_end = s.last_used + self.limits.idle_timeout;
                if !s.busy && (now >= idle_end || now >= self.expires) {
                    s.ended = Some(if now >= self.expires { self.lifetime_reason() } else { self.idle_reason() });
                    return Some(());
                }
                // While a cell runs, look again shortly (it may be abandoned).
                if s.busy {
                    now + self.limits.idle_timeout.min(std::time::Duration::from_secs(1))
                } else {
                    idle_end.min(self.expires)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = &mut stopped => return None,
            }
        }
    }
}

/// A running cell (see [`Lifecycle::begin_cell`]).
#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
pub(crate) struct CellGuard(Option<Lifecycle>);

#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
impl CellGuard {
    /// The cell ended (however): the idle clock starts again.
    pub(crate) fn finish(mut self) {
        if let Some(life) = self.0.take() {
            let mut s = life.state();
            s.busy = false;
            s.last_used = std::time::Instant::now();
        }
    }
}

#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
impl Drop for CellGuard {
    fn drop(&mut self) {
        if let Some(life) = self.0.take() {
            let mut s = life.state();
            s.busy = false;
            s.ended.get_or_insert_with(|| "a cell was abandoned by its caller before it ended".into());
        }
    }
}

/// Why a cell that ended with `o` ends its session, if it does: a limit or a
/// crash, a `MemoryError` (most likely an allocation refused at the session's cap,
/// with what the cells built still in place; the type is the guest's word, which
/// can only end its own session, so the reason says what was seen, not a cause),
/// an interpreter that cannot go on (`can_continue`), or the last allowed cell.
#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
pub(crate) fn end_reason(
    o: &Outcome,
    cell: u64,
    limits: &crate::policy::SessionPolicy,
    can_continue: bool,
) -> Option<String> {
    use super::Status;
    if o.status == Status::OutputLimit {
        Some(format!("cell {cell} went past the output cap"))
    } else if o.status.is_limit() || o.status == Status::Crashed {
        let message = o.error.as_ref().map(|e| e.message.as_str()).unwrap_or_default();
        Some(format!("cell {cell} ended with {}: {message}", o.status.as_str()))
    } else if o.error.as_ref().is_some_and(|e| e.kind == "MemoryError") {
        Some(format!(
            "cell {cell} ended with MemoryError (the session's memory limit is {} bytes, sessions.max_memory)",
            limits.max_memory
        ))
    } else if !can_continue {
        Some(format!("cell {cell} left its interpreter unable to go on ({})", o.status.as_str()))
    } else if cell >= limits.max_cells {
        Some(format!("the session ran its {} cells (sessions.max_cells)", limits.max_cells))
    } else {
        None
    }
}
