//! The wasm tier: the real CPython 3.12, compiled to WASI, under wasmtime.
//!
//! One shared [`wasmtime::Engine`] with fuel and epoch interruption; the module is
//! compiled once and cached on disk (see `cache.rs`). Each run gets a fresh instance
//! and store: in-memory stdin (the request), capped stdout/stderr pipes, no
//! environment, no preopened directories but the policy's read-only mounts, no
//! network; fuel from the policy, an epoch deadline from the timeout (a ticker
//! thread advances the epoch), and a memory cap from `max_memory` through
//! `StoreLimits` (growth failures surface as Python `MemoryError`). A session keeps
//! one instance for its cells instead (`session.rs`), with drainable standard
//! streams (`stream.rs`) and a window per cell; the set-up both share is in
//! `instance.rs`.
//!
//! # Security invariant
//! The wall is WebAssembly plus WASI: the guest can only call the WASI functions the
//! linker provides, sees no host files but the directories the policy mounts
//! read-only (and its own scratch directory when asked), no sockets, no processes
//! and no environment, and cannot outrun its fuel, deadline or memory cap. Every
//! instance serves one request, or one session's cells, and no one else. The
//! prelude (`src/guest/cpython_prelude.py`, shared with the docker tier) applies the
//! policy's import whitelist and an audit hook on top.

mod cache;
mod instance;
mod session;
mod sleep;
mod stream;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{Engine, InstancePre, Linker, Module, Store, StoreLimits};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::error::SandboxError;
use crate::executor::{BoxFuture, ExecRequest, Executor, Outcome, Tier, TierSession, admit, millis};
use crate::policy::Policy;
use crate::tier::cpython::request_text;
use instance::{STARTUP_LIMIT, Writable, run_blocking, spawn_slot};

pub use cache::WasmConfig;

/// Epoch tick: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);
/// Fuel when the policy sets none: effectively unlimited (the deadline still holds).
const UNLIMITED_FUEL: u64 = u64::MAX / 2;

/// Per-store state.
struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    /// When the run must end (guest sleeps are clamped to it).
    due: sleep::Due,
    /// The guest's monotonic clock.
    clock: sleep::GuestClock,
    /// Whether the run must stop now (checked while a guest sleeps).
    halted: sleep::Halted,
}

impl Host {
    fn new(wasi: WasiP1Ctx, limits: StoreLimits, due: sleep::Due, clock: sleep::GuestClock) -> Host {
        Host { wasi, limits, due, clock, halted: None }
    }
}

impl sleep::SleepState for Host {
    fn due(&self) -> &sleep::Due {
        &self.due
    }

    fn clock(&self) -> sleep::GuestClock {
        self.clock
    }

    fn halted(&self) -> sleep::Halted {
        self.halted.clone()
    }
}

/// The compiled interpreter, shared by every run of every executor in the process.
struct Runtime {
    engine: Engine,
    pre: InstancePre<Host>,
}

impl Runtime {
    /// A store for one instance.
    fn store(&self, wasi: WasiP1Ctx, limits: StoreLimits, due: sleep::Due, clock: sleep::GuestClock) -> Store<Host> {
        Store::new(&self.engine, Host::new(wasi, limits, due, clock))
    }
}

/// Runs snippets on CPython (WASI) under wasmtime.
pub struct WasmExecutor {
    policy: Policy,
    config: WasmConfig,
    runtime: OnceLock<Result<Arc<Runtime>, Arc<SetupError>>>,
    pool: std::sync::Mutex<std::collections::VecDeque<Slot>>,
    /// Held by every instance's thread (warm ones included) while it runs.
    live: Arc<()>,
    /// The sessions' instances started (forgotten once gone).
    sessions: std::sync::Mutex<Vec<std::sync::Weak<session::Control>>>,
}

/// A warm instance: CPython started ahead of demand, its prelude waiting on stdin
/// for its one request. Single-use.
struct Slot {
    ready_marker: String,
    stderr: MemoryOutputPipe,
    stdin: tokio::io::DuplexStream,
    window: Arc<std::sync::Mutex<Option<(Instant, Instant)>>>,
    done: tokio::sync::oneshot::Receiver<Result<Outcome, SandboxError>>,
    /// Raised to interrupt the instance at its next epoch tick.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Raises its flag when dropped: a run whose future is dropped (its caller gone,
/// an emergency stop) interrupts its instance at the next epoch tick instead of
/// running on to its deadline.
struct RaiseOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Slot {
    /// Whether CPython finished starting and waits for its request (its prelude
    /// wrote the ready marker).
    fn waiting(&self) -> bool {
        let err = self.stderr.contents();
        err.windows(self.ready_marker.len()).any(|w| w == self.ready_marker.as_bytes())
    }
}

impl WasmExecutor {
    /// An executor for `policy`. The module is loaded (or compiled, once per machine)
    /// on first use.
    pub fn new(policy: Policy, config: WasmConfig) -> WasmExecutor {
        WasmExecutor {
            policy,
            config,
            runtime: OnceLock::new(),
            pool: Default::default(),
            live: Arc::default(),
            sessions: Default::default(),
        }
    }

    /// Loads or compiles the module now (blocking).
    ///
    /// # Errors
    /// [`SandboxError::TierUnavailable`] when python.wasm is missing or wrong.
    pub fn warm_up(&self) -> Result<(), SandboxError> {
        self.runtime().map(|_| ())
    }

    /// Fills the pool of warm instances and waits (blocking, up to 30 s) until each
    /// has started CPython and waits for its request.
    ///
    /// # Errors
    /// As [`WasmExecutor::warm_up`], or a host fault when an instance cannot start.
    pub fn fill_pool(&self) -> Result<(), SandboxError> {
        self.refill()?;
        let until = Instant::now() + STARTUP_LIMIT;
        while Instant::now() < until {
            let ready = self.lock_pool().iter().all(Slot::waiting);
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(SandboxError::Host { tier: Tier::Wasm, message: "warm instances did not start in time".into() })
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Slot>> {
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps track of a session's instance (for [`Executor::lingering`]).
    fn remember_session(&self, control: &Arc<session::Control>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|c| c.strong_count() > 0);
        sessions.push(Arc::downgrade(control));
    }

    /// Starts warm instances until the pool holds `config.pool_size`.
    fn refill(&self) -> Result<(), SandboxError> {
        let runtime = self.runtime()?;
        let mut pool = self.lock_pool();
        while pool.len() < self.config.pool_size {
            pool.push_back(spawn_slot(runtime.clone(), self.policy.clone(), self.live.clone())?);
        }
        Ok(())
    }

    /// A warm instance still alive, if the pool has one.
    fn take_slot(&self) -> Option<Slot> {
        let mut pool = self.lock_pool();
        while let Some(mut slot) = pool.pop_front() {
            // One that already ended (it failed to start) is dropped.
            if matches!(slot.done.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
                return Some(slot);
            }
        }
        None
    }

    /// Runs `code` on a warm instance.
    async fn run_warm(&self, slot: Slot, policy: &Policy, code: &str) -> Result<Outcome, SandboxError> {
        use tokio::io::AsyncWriteExt;
        let _interrupt = RaiseOnDrop(slot.stop.clone());
        let arrived = Instant::now();
        let due = arrived + policy.timeout();
        if let Ok(mut w) = slot.window.lock() {
            *w = Some((arrived, due));
        }
        let text = request_text(policy, code);
        let mut stdin = slot.stdin;
        // A guest that stops reading is stopped by its deadline; the write then fails.
        let write = async {
            let _ = stdin.write_all(text.as_bytes()).await;
            let _ = stdin.shutdown().await;
        };
        let _ = tokio::time::timeout_at(due.into(), write).await;
        drop(stdin);
        match tokio::time::timeout_at((due + STARTUP_LIMIT).into(), slot.done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SandboxError::Host { tier: Tier::Wasm, message: "a warm instance vanished".into() }),
            Err(_) => {
                Err(SandboxError::Host { tier: Tier::Wasm, message: "a warm instance ignored its deadline".into() })
            }
        }
    }

    fn runtime(&self) -> Result<Arc<Runtime>, SandboxError> {
        let r = self.runtime.get_or_init(|| shared_runtime(&self.config));
        r.clone().map_err(|e| SandboxError::TierUnavailable { tier: Tier::Wasm, reason: e.to_string() })
    }

    async fn run(&self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let policy = match admit(&self.policy, &req, Tier::Wasm)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        // A run that may call host functions needs streams the host reads and
        // feeds while it runs: an instance of its own, as a session of one cell.
        if req.host.is_some() && !req.scratch {
            let mut one = self.start_session_with(policy, req.mount.clone()).await?;
            let mut o = crate::executor::TierSession::execute(&mut one, req).await?;
            crate::executor::TierSession::end(&mut one, "its one run ended");
            o.session = None;
            o.usage.wall_ms = millis(started.elapsed());
            return Ok(o);
        }
        let runtime = self.runtime()?;
        let id = req.id.clone();
        // Warm instances were started with the executor's policy: they serve requests
        // whose memory and output caps are the same, and only without fuel (fuel would
        // count CPython's start-up).
        let warm_fits = self.config.pool_size > 0
            && !req.scratch
            && req.mount.is_none()
            && policy.fuel().is_none()
            && policy.max_memory() == self.policy.max_memory()
            && policy.max_output() == self.policy.max_output();
        let slot = if warm_fits { self.take_slot() } else { None };
        let mut outcome = match slot {
            Some(slot) => {
                let o = self.run_warm(slot, &policy, &req.code).await;
                // Refill after the request, so CPython's start-up does not compete
                // with it for the CPU.
                self.refill()?;
                o?
            }
            None => {
                if warm_fits {
                    self.refill()?;
                }
                let writable = match &req.mount {
                    Some(m) => Some(Writable::Workspace(m.clone())),
                    None => req.scratch.then(|| {
                        Writable::Scratch(self.config.scratch_parent.clone(), self.config.file_io_breaker.clone())
                    }),
                };
                let stop = req.mount.as_ref().map_or_else(Arc::default, crate::workspace::Mount::stop_flag);
                let _interrupt = RaiseOnDrop(stop.clone());
                let live = self.live.clone();
                tokio::task::spawn_blocking(move || {
                    let _live = live;
                    run_blocking(&runtime, &policy, &req.code, writable, stop)
                })
                .await
                .map_err(|e| SandboxError::Host { tier: Tier::Wasm, message: format!("the wasm run failed: {e}") })??
            }
        };
        outcome.id = id;
        outcome.usage.wall_ms = millis(started.elapsed());
        Ok(outcome)
    }
}

impl Executor for WasmExecutor {
    fn tier(&self) -> Tier {
        Tier::Wasm
    }

    /// Instances running a request (warm ones waiting in the pool excepted), and
    /// sessions' instances stopped but not yet ended.
    fn lingering(&self) -> usize {
        let waiting = self.lock_pool().len();
        let runs = Arc::strong_count(&self.live).saturating_sub(1 + waiting);
        let sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        runs + sessions.iter().filter_map(std::sync::Weak::upgrade).filter(|c| c.lingering()).count()
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.run(req))
    }

    /// One instance kept for the session's cells (see `session.rs`).
    fn open_session(&self) -> BoxFuture<'_, Result<Box<dyn TierSession>, SandboxError>> {
        Box::pin(async move { Ok(Box::new(self.start_session().await?) as Box<dyn TierSession>) })
    }

    fn open_session_with(
        &self,
        mount: Option<crate::workspace::Mount>,
    ) -> BoxFuture<'_, Result<Box<dyn TierSession>, SandboxError>> {
        Box::pin(async move {
            let session = self.start_session_with(self.policy.for_session(), mount).await?;
            Ok(Box::new(session) as Box<dyn TierSession>)
        })
    }
}

/// Why the tier cannot start (reported as [`SandboxError::TierUnavailable`]).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// python.wasm or its compiled form cannot be loaded.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// wasmtime refused a step of building the runtime.
    #[error("cannot {step}: {message}")]
    Wasmtime { step: &'static str, message: String },
    /// A thread panicked while holding the table of runtimes.
    #[error("the wasm runtime table is poisoned")]
    Poisoned,
}

/// One runtime per python.wasm path per process (compiling costs seconds).
fn shared_runtime(config: &WasmConfig) -> Result<Arc<Runtime>, Arc<SetupError>> {
    type Table = std::sync::Mutex<Vec<(PathBuf, Arc<Runtime>)>>;
    static RUNTIMES: OnceLock<Table> = OnceLock::new();
    let all = RUNTIMES.get_or_init(Default::default);
    let mut all = all.lock().map_err(|_| Arc::new(SetupError::Poisoned))?;
    if let Some((_, r)) = all.iter().find(|(p, _)| *p == config.python_wasm) {
        return Ok(r.clone());
    }
    let r = Arc::new(build_runtime(config).map_err(Arc::new)?);
    all.push((config.python_wasm.clone(), r.clone()));
    Ok(r)
}

fn build_runtime(config: &WasmConfig) -> Result<Runtime, SetupError> {
    let failed = |step: &'static str| move |e: wasmtime::Error| SetupError::Wasmtime { step, message: e.to_string() };
    let mut c = wasmtime::Config::new();
    c.consume_fuel(true);
    c.epoch_interruption(true);
    // Instances come from pre-reserved slots (fast instantiation, no mmap per run).
    // Each slot reserves address space for a full 4 GiB linear memory, never commits
    // it; `max_instances` bounds how many run or wait warm at once.
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    let slots = u32::try_from(config.max_instances.max(1)).unwrap_or(u32::MAX);
    pooling.total_core_instances(slots).total_memories(slots).total_tables(slots).max_memory_size(1 << 32);
    c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    let engine = Engine::new(&c).map_err(failed("create the wasm engine"))?;
    let module: Module = cache::load_module(&engine, config)?;
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi).map_err(failed("link WASI"))?;
    // The guest's poll_oneoff is Terrarium's: its waits end by the deadline.
    linker.allow_shadowing(true);
    linker
        .func_wrap("wasi_snapshot_preview1", "poll_oneoff", sleep::poll_oneoff::<Host>)
        .map_err(failed("link poll_oneoff"))?;
    let pre = linker.instantiate_pre(&module).map_err(failed("prepare python.wasm"))?;
    let runtime = Runtime { engine, pre };
    // Fail now, not on the first request, if the pooling limits cannot hold it.
    let clock = sleep::GuestClock(Instant::now());
    let mut probe = runtime.store(WasiCtxBuilder::new().build_p1(), StoreLimits::default(), sleep::Due::Unset, clock);
    runtime.pre.instantiate(&mut probe).map_err(failed("fit python.wasm in the instance pool"))?;
    drop(probe);
    start_ticker(runtime.engine.clone());
    Ok(runtime)
}

/// Advances the engine's epoch every [`TICK`], for deadlines (one thread per engine,
/// and one engine per python.wasm path, for the life of the process).
fn start_ticker(engine: Engine) {
    let spawned = std::thread::Builder::new().name("terrarium-wasm-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the wasm epoch ticker, deadlines will not fire: {e}");
    }
}
