//! The docker tier: the real CPython in a container of a real Docker engine, driven
//! through bollard over the engine's unix socket.
//!
//! Each request runs in its own container, which is removed afterwards. A container
//! starts CPython with the shared prelude (`../cpython/prelude.py`), which says ready
//! on stderr and then reads the request on stdin; the host writes the request over
//! the attach stream, reads stdout and stderr demultiplexed and capped, and enforces
//! the wall-clock deadline itself (kill, then remove). A warm pool holds containers
//! that are already started and waiting for their one request, refilled in the
//! background; requests the pool cannot serve (a tighter memory cap, a scratch
//! directory) start a container on the spot.
//!
//! # Security invariant
//! The wall is the container with the policy's hardening (see [`engine::spec`]):
//! no network, no capabilities, no new privileges, read-only root, memory, CPU and
//! pids limits, an unprivileged user, no host mounts. The host never passes code
//! through a shell. A run that overstays its deadline, floods its output or loses
//! its connection is killed and its container removed before the outcome returns;
//! containers left by a crashed host process are reaped at start-up. The prelude
//! applies the same module whitelist as in the other tiers.

pub mod engine;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::SandboxError;
use crate::executor::{BoxFuture, ExecRequest, Executor, Outcome, Status, Tier, admit, millis};
use crate::policy::Policy;
use crate::tier::cpython::{
    PRELUDE, apply_denial, apply_output_cap, apply_status, nonce, request_text, split_status, stdout_end,
};
use engine::{Engine, Input, Launch, Output};

/// The program [`DockerExecutor::probe`] runs.
pub const PROBE: &str = include_str!("probe.py");
/// Longest a container may take from creation to its ready marker.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// Room on stderr beyond `max_output` for the prelude's markers.
const STDERR_SLACK: usize = 64 * 1024;

/// How the docker tier reaches its engine and how many warm containers it keeps.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The engine's unix socket; `None`: `DOCKER_HOST` (a `unix://` address) or
    /// `/var/run/docker.sock`.
    pub socket: Option<PathBuf>,
    /// Containers started ahead of demand (0: every request starts its own).
    pub pool_size: usize,
    /// Longest wait for any one engine API call before it counts as a host fault.
    pub api_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> DockerConfig {
        DockerConfig { socket: None, pool_size: 2, api_timeout: Duration::from_secs(30) }
    }
}

/// A container started ahead of demand: CPython is up, the prelude waits on stdin.
struct Warm {
    id: String,
    nonce: String,
    input: Input,
    output: Output,
    /// What the container wrote to stderr so far (its ready marker).
    stderr: Vec<u8>,
}

/// State shared with the background tasks that fill the pool.
struct Shared {
    policy: Policy,
    config: DockerConfig,
    /// This executor's label value: its containers, and only its, carry it.
    executor_id: String,
    engine: tokio::sync::Mutex<Option<Engine>>,
    pool: Mutex<VecDeque<Warm>>,
    /// Containers being started for the pool.
    starting: AtomicUsize,
    closed: AtomicBool,
}

/// Runs snippets in hardened containers of a local Docker engine.
pub struct DockerExecutor {
    shared: Arc<Shared>,
}

fn host(message: impl Into<String>) -> SandboxError {
    SandboxError::Host { tier: Tier::Docker, message: message.into() }
}

impl DockerExecutor {
    /// An executor for `policy`. Nothing touches the engine until the first request
    /// (or [`DockerExecutor::fill_pool`]).
    pub fn new(policy: Policy, config: DockerConfig) -> DockerExecutor {
        let executor_id = nonce()[..16].to_string();
        DockerExecutor {
            shared: Arc::new(Shared {
                policy,
                config,
                executor_id,
                engine: tokio::sync::Mutex::new(None),
                pool: Mutex::new(VecDeque::new()),
                starting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The label (`terrarium.executor=<value>`) on every container this executor
    /// creates, for finding them with `docker ps -a --filter label=...`.
    pub fn label(&self) -> (&'static str, &str) {
        (engine::EXECUTOR_LABEL, &self.shared.executor_id)
    }

    /// Connects to the engine (negotiating the API version) and reaps containers
    /// left by dead Terrarium processes. Returns the API version.
    ///
    /// # Errors
    /// A host error saying why the engine cannot be used and how to start one.
    pub async fn connect(&self) -> Result<String, SandboxError> {
        let engine = self.shared.engine().await?;
        let image = &self.shared.policy.docker().image;
        if !engine.has_image(image).await? {
            return Err(engine::missing_image(image));
        }
        Ok(engine.api_version())
    }

    /// Tests the container's walls without the prelude: runs [`PROBE`] in a
    /// container with this policy's hardening. It tries to connect to each of
    /// `targets` (`host:port`), write to the root file system and `/usr`, execute
    /// from `/tmp`, create a device node, become root, chroot, and fork without
    /// end, and reports what each attempt got (`"ok"` or the errno's name) with the
    /// process's uid, capabilities, `NoNewPrivs` and network interfaces.
    ///
    /// # Errors
    /// A host error when the container cannot run or its report is not JSON.
    pub async fn probe(&self, targets: &[String]) -> Result<serde_json::Value, SandboxError> {
        let engine = self.shared.engine().await?;
        let mut cmd: Vec<String> = ["python3", "-I", "-B", "-c", PROBE].map(String::from).to_vec();
        cmd.extend(targets.iter().cloned());
        let launch = Launch { cmd, scratch: false, labels: self.shared.labels() };
        let id = engine.create(engine::spec(&self.shared.policy, &launch)?).await?;
        let report = async {
            let (_input, output) = engine.attach(&id).await?;
            engine.start(&id).await?;
            let until = tokio::time::Instant::now() + STARTUP_LIMIT;
            let (out, err, end) = read_to_end(output, until, STDERR_SLACK).await;
            match end {
                StreamEnd::Eof | StreamEnd::Full => {}
                StreamEnd::Deadline => return Err(host("the probe did not finish in time")),
                StreamEnd::Broken(e) => return Err(host(format!("the probe's output broke: {e}"))),
            }
            serde_json::from_slice(&out).map_err(|e| {
                host(format!("the probe's report is not JSON ({e}); its stderr: {}", String::from_utf8_lossy(&err)))
            })
        }
        .await;
        engine.remove(&id).await?;
        report
    }

    /// Runs `argv` (exec form: no shell is involved) in a fresh, single-use container
    /// with the policy's hardening, under its deadline and output cap; the
    /// container is killed and removed before this returns. Exit code 0 is `ok`;
    /// another is an `exception` of type `ExitCode`. Callers validate `argv` first
    /// ([`crate::command::decide`]).
    ///
    /// # Errors
    /// Host errors: the engine, the image, a container that cannot start.
    pub async fn run_command(&self, argv: &[String]) -> Result<Outcome, SandboxError> {
        let arrived = Instant::now();
        let engine = self.shared.engine().await?;
        let policy = &self.shared.policy;
        let launch = Launch { cmd: argv.to_vec(), scratch: false, labels: self.shared.labels() };
        let id = engine.create(engine::spec(policy, &launch)?).await?;
        let ran = async {
            let (_input, output) = engine.attach(&id).await?;
            engine.start(&id).await?;
            let cap = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
            let until = tokio::time::Instant::from_std(arrived + policy.timeout());
            let (out, err, end) = read_to_end(output, until, cap).await;
            let ended = match end {
                StreamEnd::Eof => Some(engine.inspect(&id).await?),
                _ => None,
            };
            Ok::<_, SandboxError>((out, err, end, ended))
        }
        .await;
        engine.remove(&id).await?;
        let (out, err, end, ended) = match ran {
            // The image has no such program: the command's failure, not the host's.
            Err(SandboxError::Host { message, .. }) if message.contains("executable file not found") => {
                let mut o = Outcome::refused(
                    None,
                    Tier::Docker,
                    Status::Exception,
                    "CommandNotFound",
                    format!("{} is not in the image", argv.first().map_or("", String::as_str)),
                );
                o.usage.wall_ms = millis(arrived.elapsed());
                return Ok(o);
            }
            other => other?,
        };
        let mut o = Outcome::blank(Tier::Docker);
        o.stdout = String::from_utf8_lossy(&out).into_owned();
        o.stderr = String::from_utf8_lossy(&err).into_owned();
        match (end, ended) {
            (StreamEnd::Deadline, _) => {
                o.end(Status::Timeout, "Timeout", format!("deadline of {}s exceeded", policy.timeout().as_secs_f64()))
            }
            (StreamEnd::Full, _) => {
                o.end(Status::OutputLimit, "OutputLimit", "the command's output exceeded the policy's max_output")
            }
            (StreamEnd::Broken(e), _) => return Err(host(format!("the command's output broke: {e}"))),
            (StreamEnd::Eof, Some(e)) if e.oom_killed => {
                o.end(Status::MemoryLimit, "MemoryLimit", "the command went past the policy's max_memory")
            }
            (StreamEnd::Eof, Some(e)) if e.exit_code != Some(0) => o.end(
                Status::Exception,
                "ExitCode",
                format!("the command exited with {}", e.exit_code.map_or("no code".to_string(), |c| c.to_string())),
            ),
            (StreamEnd::Eof, _) => {}
        }
        o.usage.wall_ms = millis(arrived.elapsed());
        Ok(o)
    }

    /// Fills the warm pool and waits until every container in it is ready.
    ///
    /// # Errors
    /// As [`DockerExecutor::connect`], or a container that cannot start.
    pub async fn fill_pool(&self) -> Result<(), SandboxError> {
        let shared = &self.shared;
        let engine = shared.engine().await?;
        let until = tokio::time::Instant::now() + STARTUP_LIMIT;
        loop {
            let missing = shared.reserve();
            let starts = (0..missing).map(|_| Shared::start_warm(shared.clone(), engine.clone()));
            for r in futures_util::future::join_all(starts).await {
                r?;
            }
            // Containers the background refill is still starting.
            if shared.lock_pool().len() >= shared.config.pool_size {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(host("warm containers did not start in time"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Removes this executor's containers (the warm pool and any still starting).
    /// Idempotent; the executor refuses requests afterwards.
    ///
    /// # Errors
    /// A host error when the engine cannot remove them.
    pub async fn shutdown(&self) -> Result<(), SandboxError> {
        self.shared.closed.store(true, Ordering::SeqCst);
        let warm: Vec<Warm> = self.shared.lock_pool().drain(..).collect();
        let Some(engine) = self.shared.engine.lock().await.clone() else { return Ok(()) };
        for w in warm {
            engine.remove(&w.id).await?;
        }
        for (id, _) in engine.labelled(engine::EXECUTOR_LABEL, Some(&self.shared.executor_id)).await? {
            engine.remove(&id).await?;
        }
        Ok(())
    }

    async fn run(&self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let arrived = Instant::now();
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(host("the docker executor was shut down"));
        }
        let policy = match admit(&shared.policy, &req, Tier::Docker)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let engine = shared.engine().await?;
        // Warm containers were created with the executor's policy: they serve
        // requests with the same memory cap and no scratch directory.
        let warm_fits =
            shared.config.pool_size > 0 && !req.scratch && policy.max_memory() == shared.policy.max_memory();
        let warm = if warm_fits { shared.take_warm(&engine) } else { None };
        let warm = match warm {
            Some(w) => w,
            None => {
                if warm_fits {
                    Shared::refill(shared.clone(), engine.clone());
                }
                let n = nonce();
                let launch = Launch {
                    cmd: engine::prelude_cmd(PRELUDE, &n, "", req.scratch),
                    scratch: req.scratch,
                    labels: shared.labels(),
                };
                start_container(&engine, &policy, &launch, &n).await?
            }
        };
        // The deadline is the guest's: it counts from the request's delivery to a
        // ready Python (a container's start-up has its own limit, STARTUP_LIMIT).
        let served = serve(&engine, warm, &policy, &req.code, Instant::now()).await;
        // Refill after the request, so that starting a container (about 100 ms of
        // the engine's CPU) does not compete with it.
        if warm_fits {
            Shared::refill(shared.clone(), engine.clone());
        }
        let mut outcome = served?;
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(arrived.elapsed());
        Ok(outcome)
    }
}

impl Shared {
    fn lock_pool(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many containers the pool lacks (ready + starting), now counted as
    /// starting: the caller starts that many. Under the pool's lock, so that
    /// concurrent refills do not overshoot.
    fn reserve(&self) -> usize {
        let pool = self.lock_pool();
        let missing = self.config.pool_size.saturating_sub(pool.len() + self.starting.load(Ordering::SeqCst));
        self.starting.fetch_add(missing, Ordering::SeqCst);
        missing
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (engine::LABEL.to_string(), "1".to_string()),
            (engine::OWNER_LABEL.to_string(), engine::owner()),
            (engine::EXECUTOR_LABEL.to_string(), self.executor_id.clone()),
        ])
    }

    /// The engine, connected on first use. A failed connection is not remembered:
    /// the next request tries again (an engine may come back).
    async fn engine(&self) -> Result<Engine, SandboxError> {
        let mut slot = self.engine.lock().await;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let socket = engine::socket_path(self.config.socket.as_deref())?;
        let e = Engine::connect(&socket, self.config.api_timeout).await?;
        // Containers of crashed Terrarium processes; failing to reap is not fatal
        // to this request, but it is logged.
        if let Err(err) = e.reap_orphans().await {
            tracing::warn!(error = %err, "could not reap leftover containers");
        }
        *slot = Some(e.clone());
        Ok(e)
    }

    /// A warm container that is still waiting, if the pool has one. One whose
    /// output stream has ended or that wrote anything while waiting (its container
    /// died, e.g. the engine restarted) is discarded, never handed a request.
    fn take_warm(&self, engine: &Engine) -> Option<Warm> {
        use futures_util::FutureExt;
        loop {
            let mut w = self.lock_pool().pop_front()?;
            if w.output.next().now_or_never().is_none() {
                return Some(w);
            }
            tracing::warn!(container = %w.id, "a warm container died while waiting; discarded");
            let (engine, id) = (engine.clone(), w.id);
            tokio::spawn(async move {
                let _ = engine.remove(&id).await;
            });
        }
    }

    /// Starts containers in the background until the pool (ready + starting) is full.
    fn refill(shared: Arc<Shared>, engine: Engine) {
        for _ in 0..shared.reserve() {
            let (s, e) = (shared.clone(), engine.clone());
            tokio::spawn(async move {
                let closed = &s.closed;
                match Shared::start_warm(s.clone(), e).await {
                    Err(_) if closed.load(Ordering::SeqCst) => {}
                    Err(err) => tracing::warn!(error = %err, "a warm container could not start"),
                    Ok(()) => {}
                }
            });
        }
    }

    /// Starts one warm container (already counted in `starting`) and puts it in
    /// the pool when it is ready.
    async fn start_warm(shared: Arc<Shared>, engine: Engine) -> Result<(), SandboxError> {
        let preload: Vec<&str> = shared.policy.allowed_modules().iter().map(String::as_str).collect();
        let n = nonce();
        let launch = Launch {
            cmd: engine::prelude_cmd(PRELUDE, &n, &preload.join(" "), false),
            scratch: false,
            labels: shared.labels(),
        };
        let started = start_container(&engine, &shared.policy, &launch, &n).await;
        let warm = match started {
            Ok(w) => w,
            Err(e) => {
                shared.starting.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if shared.closed.load(Ordering::SeqCst) {
            shared.starting.fetch_sub(1, Ordering::SeqCst);
            return engine.remove(&warm.id).await;
        }
        // Into the pool before the count drops, so that it is never counted as
        // neither.
        let mut pool = shared.lock_pool();
        pool.push_back(warm);
        shared.starting.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Creates, attaches and starts a container and waits for its ready marker. The
/// container is removed again when any step fails.
async fn start_container(engine: &Engine, policy: &Policy, launch: &Launch, nonce: &str) -> Result<Warm, SandboxError> {
    let id = engine.create(engine::spec(policy, launch)?).await?;
    match attach_and_start(engine, &id, nonce).await {
        Ok(w) => Ok(w),
        Err(e) => {
            let _ = engine.remove(&id).await;
            Err(e)
        }
    }
}

async fn attach_and_start(engine: &Engine, id: &str, nonce: &str) -> Result<Warm, SandboxError> {
    // Attach before start, so that nothing the container writes is missed.
    let (input, mut output) = engine.attach(id).await?;
    engine.start(id).await?;
    let ready = format!("\n{nonce} ready\n");
    let mut stderr = Vec::new();
    let mut stdout = Vec::new();
    let until = tokio::time::Instant::now() + STARTUP_LIMIT;
    loop {
        match tokio::time::timeout_at(until, output.next()).await {
            Err(_) => return Err(host(format!("a container did not start within {}s", STARTUP_LIMIT.as_secs()))),
            Ok(None) => {
                let ended = engine.inspect(id).await.ok();
                let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(2000)..]).into_owned();
                return Err(host(format!(
                    "the container ended before Python was ready (exit code {:?}); its stderr: {}{}",
                    ended.and_then(|e| e.exit_code),
                    tail.trim(),
                    String::from_utf8_lossy(&stdout).trim()
                )));
            }
            Ok(Some(Err(e))) => return Err(host(format!("a container's output broke during start-up: {e}"))),
            Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                stderr.extend_from_slice(&message);
                if stderr.windows(ready.len()).any(|w| w == ready.as_bytes()) {
                    return Ok(Warm { id: id.to_string(), nonce: nonce.to_string(), input, output, stderr });
                }
                if stderr.len() > STDERR_SLACK {
                    return Err(host("a container wrote too much to stderr before it was ready"));
                }
            }
            Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                if stdout.len() < STDERR_SLACK {
                    stdout.extend_from_slice(&message);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// How reading a container's output ended.
enum Ended {
    /// The prelude reported how the run ended.
    Reported,
    /// The container closed its output (it exited) without the prelude's report
    /// (or with only part of it).
    Exited,
    /// The deadline passed.
    Timeout,
    /// Output passed `max_output`.
    OutputFull,
}

/// Sends the request to a ready container, collects its output until the prelude's
/// report, the container's exit, the deadline (counted from `delivered`) or the
/// output cap, and removes the container.
async fn serve(
    engine: &Engine,
    w: Warm,
    policy: &Policy,
    code: &str,
    delivered: Instant,
) -> Result<Outcome, SandboxError> {
    let Warm { id, nonce, mut input, mut output, stderr: mut err } = w;
    let due = tokio::time::Instant::from_std(delivered + policy.timeout());
    let max_out = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let max_err = max_out.saturating_add(STDERR_SLACK);
    let text = request_text(policy, code);
    let write = async {
        input.write_all(text.as_bytes()).await?;
        input.shutdown().await
    };
    // A guest that stops reading is stopped by its deadline.
    let written = tokio::time::timeout_at(due, write).await;
    let mut out = Vec::new();
    let mut ended = Ended::Exited;
    // The run is over once stderr holds the status line and stdout its end marker
    // (the prelude writes both last); the container's exit is not waited for.
    let status_marker = format!("\n{nonce} {{");
    let end_marker = stdout_end(&nonce);
    let (mut status, mut status_seen, mut end_seen) = (StatusWatch::default(), false, false);
    if written.is_err() {
        ended = Ended::Timeout;
    } else {
        loop {
            match tokio::time::timeout_at(due, output.next()).await {
                Err(_) => {
                    ended = Ended::Timeout;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let _ = engine.remove(&id).await;
                    return Err(host(format!("the connection to a container broke: {e}")));
                }
                Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                    let from = err.len();
                    if append_capped(&mut err, &message, max_err) {
                        ended = Ended::OutputFull;
                        break;
                    }
                    status_seen = status.complete(&err, from, status_marker.as_bytes());
                }
                Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                    let from = out.len();
                    // The end marker may take the cap's last bytes.
                    if append_capped(&mut out, &message, max_out.saturating_add(end_marker.len())) {
                        ended = Ended::OutputFull;
                        break;
                    }
                    end_seen = end_seen || find_from(&out, from, end_marker.as_bytes()).is_some();
                }
                Ok(Some(Ok(_))) => {}
            }
            if status_seen && end_seen {
                ended = Ended::Reported;
                break;
            }
        }
    }
    if let Some(at) = find_from(&out, 0, end_marker.as_bytes()) {
        out.truncate(at);
    }
    if out.len() > max_out {
        out.truncate(max_out);
        ended = Ended::OutputFull;
    }
    if let (Ended::Exited, Ok(Err(e))) = (&ended, &written) {
        // The request could not be delivered and the container is gone: it died
        // before its run (e.g. the engine restarted under a warm container).
        if out.is_empty() && !String::from_utf8_lossy(&err).contains(&format!("\n{nonce} {{")) {
            let _ = engine.remove(&id).await;
            return Err(host(format!("a container ended before it could read its request: {e}")));
        }
    }
    // Stop copying the container's output before removing it: the engine waits for
    // an attached stream that is still being written to.
    drop(output);
    drop(input);
    let exit = match ended {
        Ended::Exited => Some(engine.inspect(&id).await),
        Ended::Reported | Ended::Timeout | Ended::OutputFull => None,
    };
    // A run cut short is killed and removed now; one that reported is removed in
    // the background (off the request's path; its process is exiting anyway).
    match ended {
        Ended::Timeout | Ended::OutputFull => engine.remove(&id).await?,
        Ended::Reported | Ended::Exited => {
            let (engine, id) = (engine.clone(), id.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.remove(&id).await {
                    tracing::warn!(error = %e, "could not remove a finished container");
                }
            });
        }
    }
    let report = split_status(&String::from_utf8_lossy(&err), &nonce);
    let status_line = report.status_line;
    let mut o = Outcome::blank(Tier::Docker);
    o.stdout = String::from_utf8_lossy(&out).into_owned();
    o.stderr = report.stderr;
    match (ended, exit) {
        (Ended::Timeout, _) => {
            o.end(Status::Timeout, "Timeout", format!("deadline of {}s exceeded", policy.timeout().as_secs_f64()))
        }
        (Ended::OutputFull, _) => {
            o.end(Status::OutputLimit, "OutputLimit", "the run's output exceeded the policy's max_output")
        }
        (Ended::Exited, Some(state)) => {
            let state = state?;
            if state.oom_killed && status_line.is_none() {
                o.end(
                    Status::MemoryLimit,
                    "MemoryLimit",
                    format!("the run exceeded its memory limit of {} bytes", policy.max_memory()),
                );
            } else {
                let code = state.exit_code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
                apply_status(&mut o, status_line.as_deref(), code, false);
            }
        }
        (Ended::Reported | Ended::Exited, _) => apply_status(&mut o, status_line.as_deref(), None, false),
    }
    apply_output_cap(&mut o, max_out);
    apply_denial(&mut o, report.denial.as_deref());
    Ok(o)
}

/// Where `needle` first occurs in `buf`, searching from a little before `from` (so
/// that a needle split across chunks is found).
fn find_from(buf: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let start = from.saturating_sub(needle.len());
    buf[start..].windows(needle.len()).position(|w| w == needle).map(|p| p + start)
}

/// Follows the prelude's status line on a growing stderr: where its last marker
/// is, and whether the newline that ends it has arrived.
#[derive(Default)]
struct StatusWatch {
    at: Option<usize>,
}

impl StatusWatch {
    /// Call after stderr grew from `from` bytes; true once the last status line is
    /// complete.
    fn complete(&mut self, err: &[u8], from: usize, marker: &[u8]) -> bool {
        let start = from.saturating_sub(marker.len());
        if let Some(p) = err[start..].windows(marker.len()).rposition(|w| w == marker) {
            self.at = Some(start + p);
        }
        self.at.is_some_and(|at| err[at + marker.len()..].contains(&b'\n'))
    }
}

/// Appends up to `cap` bytes in all; true when `chunk` did not fit.
/// How reading a container's output stream ended.
enum StreamEnd {
    /// The container closed it (its process ended).
    Eof,
    /// `until` passed first.
    Deadline,
    /// stdout or stderr went past the cap.
    Full,
    /// The stream failed.
    Broken(String),
}

/// Reads a container's demultiplexed output until it ends, `until` passes, or
/// either stream passes `cap` bytes (stderr gets [`STDERR_SLACK`] more).
async fn read_to_end(mut output: Output, until: tokio::time::Instant, cap: usize) -> (Vec<u8>, Vec<u8>, StreamEnd) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let end = loop {
        let full = match tokio::time::timeout_at(until, output.next()).await {
            Err(_) => break StreamEnd::Deadline,
            Ok(None) => break StreamEnd::Eof,
            Ok(Some(Err(e))) => break StreamEnd::Broken(e.to_string()),
            Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                append_capped(&mut err, &message, cap.saturating_add(STDERR_SLACK))
            }
            Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                append_capped(&mut out, &message, cap)
            }
            Ok(Some(Ok(_))) => false,
        };
        if full {
            break StreamEnd::Full;
        }
    };
    (out, err, end)
}

fn append_capped(buf: &mut Vec<u8>, chunk: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    chunk.len() > room
}

impl Executor for DockerExecutor {
    fn tier(&self) -> Tier {
        Tier::Docker
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.run(req))
    }
}

impl Drop for DockerExecutor {
    /// Warm containers belong to this executor: they are removed with it. The
    /// removal runs on its own thread and runtime (the caller's may be shutting
    /// down); a process that dies first leaves them to the next start-up's reaping.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let warm: Vec<String> = self.shared.lock_pool().drain(..).map(|w| w.id).collect();
        let (socket, timeout, label) =
            (self.shared.config.socket.clone(), self.shared.config.api_timeout, self.shared.executor_id.clone());
        let connected = self.shared.engine.try_lock().map(|e| e.is_some()).unwrap_or(true);
        if !connected {
            return;
        }
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(path) = engine::socket_path(socket.as_deref()) else { return };
                let Ok(engine) = Engine::connect(&path, timeout).await else { return };
                for id in warm {
                    let _ = engine.remove(&id).await;
                }
                if let Ok(left) = engine.labelled(engine::EXECUTOR_LABEL, Some(&label)).await {
                    for (id, _) in left {
                        let _ = engine.remove(&id).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_complete_only_with_its_newline() {
        let mut w = StatusWatch::default();
        let mut err = b"noise\nabc {\"kind\"".to_vec();
        assert!(!w.complete(&err, 0, b"\nabc {"));
        let from = err.len();
        err.extend_from_slice(b": \"ok\"}\n");
        assert!(w.complete(&err, from, b"\nabc {"));
        assert_eq!(find_from(b"xx\nabc end\n", 5, b"\nabc end\n"), Some(2));
    }

    #[test]
    fn output_past_the_cap_is_cut_and_reported() {
        let mut buf = Vec::new();
        assert!(!append_capped(&mut buf, b"abc", 5));
        assert!(append_capped(&mut buf, b"defg", 5));
        assert_eq!(buf, b"abcde");
    }
}
