//! Embedded mode: RustPython interpreters on worker threads of the calling process,
//! for trusted library calls.
//!
//! The deadline is enforced through RustPython's user-signal channel: once it
//! passes, every instruction raises until the run unwinds.
//!
//! # Security: what embedded mode cannot stop
//! It shares the caller's process. A native call already running (`sum(range(10**10))`,
//! `7**(10**8)`) cannot be interrupted: the run is reported as `timeout` at the
//! deadline and its thread is abandoned until the call returns. Memory is not
//! capped: a failed allocation aborts the process. Embedded mode is for trusted
//! library calls; untrusted code belongs in isolated mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::sync::oneshot::error::TryRecvError;

use crate::error::SandboxError;
use crate::executor::{BoxFuture, ErrorKind, ExecRequest, Executor, Outcome, Status, Tier, admit, millis};
use crate::policy::Policy;

use super::worker::{self, Control, Job, Terminal, WORKER_STACK};

/// How long a run may take to unwind after its deadline before its thread is
/// abandoned.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(250);

struct WorkerHandle {
    jobs: mpsc::Sender<(Job, worker::Reply)>,
    ctrl: Arc<Control>,
}

/// Runs snippets on warm RustPython interpreters inside this process.
pub struct EmbeddedExecutor {
    policy: Policy,
    idle: Mutex<Vec<WorkerHandle>>,
    slots: Semaphore,
    next_run: AtomicU64,
    grace: Duration,
}

impl EmbeddedExecutor {
    /// An executor for `policy` with one interpreter per available core.
    pub fn new(policy: Policy) -> EmbeddedExecutor {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        EmbeddedExecutor::with_workers(policy, n)
    }

    /// An executor running at most `workers` snippets at once (at least 1).
    pub fn with_workers(policy: Policy, workers: usize) -> EmbeddedExecutor {
        worker::warn_without_counting_allocator();
        EmbeddedExecutor {
            policy,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(workers.max(1)),
            next_run: AtomicU64::new(1),
            grace: DEFAULT_GRACE,
        }
    }

    /// The policy requests are checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The modules an interpreter imports before it is sealed: the policy's
    /// whitelist (requests may only narrow it).
    fn preload(&self) -> Vec<String> {
        self.policy.allowed_modules().iter().cloned().collect()
    }

    /// Starts interpreters ahead of demand, so the first requests do not pay for
    /// interpreter creation.
    ///
    /// # Errors
    /// [`SandboxError::Host`] when an interpreter cannot be built.
    pub async fn warm_up(&self, count: usize) -> Result<(), SandboxError> {
        for _ in 0..count {
            let w = spawn_worker(self.preload()).await?;
            self.put_back(w);
        }
        Ok(())
    }

    fn take_idle(&self) -> Option<WorkerHandle> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    fn put_back(&self, w: WorkerHandle) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(w);
        }
    }

    async fn run(&self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let policy = match admit(&self.policy, &req, Tier::Rustpython)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let _permit = self.slots.acquire().await.map_err(|_| host("the executor is shutting down"))?;
        let worker = match self.take_idle() {
            Some(w) => w,
            None => spawn_worker(self.preload()).await?,
        };
        let run_id = self.next_run.fetch_add(1, Ordering::Relaxed);
        let timeout = policy.timeout();
        let deadline = Instant::now() + timeout;
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let job = Job {
            run_id,
            id: req.id.clone(),
            code: req.code,
            allowed_modules: policy.allowed_modules_shared(),
            max_output: usize::try_from(policy.max_output()).unwrap_or(usize::MAX),
            deadline,
            session: false,
            functions: Arc::from([]),
            fuel: policy.fuel(),
            own_code: false,
        };
        if worker.jobs.send((job, reply)).is_err() {
            return Err(host("an interpreter thread exited unexpectedly"));
        }
        // A short run answers within microseconds: wait for it here first, so that
        // neither this thread nor the runtime goes to sleep and has to be woken
        // (tens of µs per wake-up across CPUs here; see docs/benchmarks.md).
        let early = spin_until(SPIN, || match rx.try_recv() {
            Ok(r) => Some(Some(r)),
            Err(TryRecvError::Closed) => Some(None),
            Err(TryRecvError::Empty) => None,
        });
        let waited = match early {
            Some(r) => Ok(r),
            None => tokio::time::timeout_at(deadline.into(), &mut rx).await.map(Result::ok),
        };
        let reply = match waited {
            Ok(r) => r,
            Err(_) => {
                let msg = format!("deadline of {}s exceeded", timeout.as_secs_f64());
                worker.ctrl.terminate(run_id, Terminal::Timeout, &msg);
                match tokio::time::timeout(self.grace, &mut rx).await {
                    Ok(r) => r.ok(),
                    Err(_) => {
                        // Inside a native call: abandon the thread (it exits when the
                        // call returns, since the run is marked terminal).
                        let mut o = Outcome::refused(
                            req.id,
                            Tier::Rustpython,
                            Status::Timeout,
                            ErrorKind::Timeout,
                            format!("{msg}; the interpreter was inside a native call and was abandoned"),
                        );
                        o.usage.wall_ms = millis(started.elapsed());
                        return Ok(o);
                    }
                }
            }
        };
        let Some((mut outcome, reusable)) = reply else {
            return Err(host("an interpreter thread died during a run"));
        };
        if reusable {
            self.put_back(worker);
        }
        outcome.usage.wall_ms = millis(started.elapsed());
        Ok(outcome)
    }
}

impl Executor for EmbeddedExecutor {
    fn tier(&self) -> Tier {
        Tier::Rustpython
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.run(req))
    }
}

/// How long a caller, and an idle interpreter thread, poll before they sleep.
pub(super) const SPIN: Duration = Duration::from_micros(50);

/// Polls `ready` until it gives a value or `budget` has passed. Bounded busy
/// waiting: it trades up to `budget` of CPU for a wake-up that costs about as much
/// and arrives later.
pub(super) fn spin_until<T>(budget: Duration, ready: impl FnMut() -> Option<T>) -> Option<T> {
    poll_until(budget, ready, std::hint::spin_loop)
}

/// As [`spin_until`], but giving the CPU up between polls (`sched_yield`), for a
/// waiter whose answer may come from a thread woken on its own CPU.
pub(super) fn yield_until<T>(budget: Duration, ready: impl FnMut() -> Option<T>) -> Option<T> {
    poll_until(budget, ready, std::thread::yield_now)
}

fn poll_until<T>(budget: Duration, mut ready: impl FnMut() -> Option<T>, pause: fn()) -> Option<T> {
    let until = Instant::now() + budget;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        pause();
    }
}

fn host(message: &str) -> SandboxError {
    SandboxError::Host { tier: Tier::Rustpython, message: message.into() }
}

async fn spawn_worker(preload: Vec<String>) -> Result<WorkerHandle, SandboxError> {
    tokio::task::spawn_blocking(move || {
        let (jobs, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("terrarium-rustpython".into())
            .stack_size(WORKER_STACK)
            .spawn(move || worker::serve(&preload, rx, ready_tx))
            .map_err(|e| host(&format!("cannot start an interpreter thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(ctrl)) => Ok(WorkerHandle { jobs, ctrl }),
            Ok(Err(e)) => Err(host(&format!("the interpreter failed to start: {e}"))),
            Err(_) => Err(host("the interpreter thread died while starting")),
        }
    })
    .await
    .map_err(|e| host(&format!("cannot start an interpreter: {e}")))?
}
