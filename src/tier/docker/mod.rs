//! The docker tier: the real CPython in a container of a real Docker engine, driven
//! through bollard over the engine's unix socket.
//!
//! Each request runs in its own container, which is removed afterwards. A container
//! starts CPython with the shared prelude (`src/guest/cpython_prelude.py`), which says ready
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
//! pids limits, an unprivileged user, no host mounts but the policy's read-only ones
//! and a run's own workspace copy. The host never passes code
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
use crate::executor::{BoxFuture, ErrorKind, ExecRequest, Executor, Outcome, Status, Tier, admit, millis};
use crate::policy::Policy;
use crate::tier::cpython::{
    CallLines, PRELUDE, answer_line, apply_denial, apply_output_cap, apply_status, call_reply_frame, framed, nonce,
    request_text_with, split_status, stdout_end,
};
use engine::{Engine, Input, Launch, Output};

mod pool;
use pool::*;
mod session;
mod stream;
use stream::*;

/// The modules a container imports before it says ready, whether warm, cold or a
/// session's: the policy's allowed modules (`asyncio` aside: the prelude installs
/// its own stand-in). They are the policy's choice, imported before the snippet and
/// its audit hook exist, so a library that opens files or loads `ctypes` while it
/// initialises (pandas reads the time zone database; numpy loads `ctypes`) imports
/// the same way in every container, and its start-up is not the snippet's time.
fn preload(policy: &Policy) -> String {
    let modules: Vec<&str> = policy.allowed_modules().iter().map(String::as_str).filter(|m| *m != "asyncio").collect();
    modules.join(" ")
}

/// The program [`DockerExecutor::probe`] runs.
pub const PROBE: &str = include_str!("../../guest/docker_probe.py");
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
    /// The breaker engine API calls go through (a [`crate::Sandbox`] gives its
    /// policy's `api` breaker): an engine that keeps failing or not answering is
    /// given no new work until the breaker lets a trial through. Kills and
    /// removals are always attempted.
    pub api_breaker: Option<crate::breaker::Breaker>,
}

impl Default for DockerConfig {
    fn default() -> DockerConfig {
        DockerConfig { socket: None, pool_size: 2, api_timeout: Duration::from_secs(30), api_breaker: None }
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
    /// Containers of abandoned runs and ended sessions still being removed.
    removing: Arc<AtomicUsize>,
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
                removing: Arc::default(),
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

    /// The engine's id (`sha256:…`) of the policy's image.
    ///
    /// # Errors
    /// No engine, or it does not have the image.
    pub async fn image_id(&self) -> Result<String, SandboxError> {
        let engine = self.shared.engine().await?;
        let image = &self.shared.policy.docker().image;
        engine.image_id(image).await?.ok_or_else(|| engine::missing_image(image))
    }

    /// Tests the container's walls without the prelude: runs a probe script in a
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
        let launch = Launch { cmd, scratch: false, workspace: None, labels: self.shared.labels() };
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
    /// (the command rules).
    ///
    /// # Errors
    /// Host errors: the engine, the image, a container that cannot start.
    pub async fn run_command(&self, argv: &[String]) -> Result<Outcome, SandboxError> {
        let arrived = Instant::now();
        let engine = self.shared.engine().await?;
        let policy = &self.shared.policy;
        let launch = Launch { cmd: argv.to_vec(), scratch: false, workspace: None, labels: self.shared.labels() };
        let id = engine.create(engine::spec(policy, &launch)?).await?;
        // Dropped while it runs (an emergency stop, a caller gone): removed then.
        let reaper = stream::Reaper::arm(&engine, &id);
        let ran = async {
            let (_input, output) = engine.attach(&id).await?;
            if !engine.start_program(&id).await? {
                return Ok(None);
            }
            let cap = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
            let until = tokio::time::Instant::from_std(arrived + policy.timeout());
            let (out, err, end) = read_to_end(output, until, cap).await;
            let ended = match end {
                StreamEnd::Eof => Some(engine.inspect(&id).await?),
                _ => None,
            };
            Ok::<_, SandboxError>(Some((out, err, end, ended)))
        }
        .await;
        engine.remove(&id).await?;
        reaper.disarm();
        let (out, err, end, ended) = match ran? {
            Some(ran) => ran,
            // The image has no such program: the command's failure, not the host's.
            None => {
                let mut o = Outcome::refused(
                    None,
                    Tier::Docker,
                    Status::Exception,
                    ErrorKind::CommandNotFound,
                    format!("{} is not in the image, or cannot be run there", argv.first().map_or("", String::as_str)),
                );
                o.usage.wall_ms = millis(arrived.elapsed());
                return Ok(o);
            }
        };
        let mut o = Outcome::blank(Tier::Docker);
        o.stdout = String::from_utf8_lossy(&out).into_owned();
        o.stderr = String::from_utf8_lossy(&err).into_owned();
        match (end, ended) {
            (StreamEnd::Deadline, _) => o.end(
                Status::Timeout,
                ErrorKind::Timeout,
                format!("deadline of {}s exceeded", policy.timeout().as_secs_f64()),
            ),
            (StreamEnd::Full, _) => o.end(
                Status::OutputLimit,
                ErrorKind::OutputLimit,
                "the command's output exceeded the policy's max_output",
            ),
            (StreamEnd::Broken(e), _) => return Err(host(format!("the command's output broke: {e}"))),
            (StreamEnd::Eof, Some(e)) if e.oom_killed => {
                o.end(Status::MemoryLimit, ErrorKind::MemoryLimit, "the command went past the policy's max_memory")
            }
            (StreamEnd::Eof, Some(e)) if e.exit_code != Some(0) => o.end(
                Status::Exception,
                ErrorKind::ExitCode,
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
        let warm_fits = shared.config.pool_size > 0
            && !req.scratch
            && req.mount.is_none()
            && policy.max_memory() == shared.policy.max_memory();
        let warm = if warm_fits { shared.take_warm(&engine) } else { None };
        let warm = match warm {
            Some(w) => w,
            None => {
                if warm_fits {
                    Shared::refill(shared.clone(), engine.clone());
                }
                let n = nonce();
                let writable = if req.mount.is_some() { Some("workspace") } else { req.scratch.then_some("scratch") };
                let launch = Launch {
                    cmd: engine::prelude_cmd(PRELUDE, &n, &preload(&policy), writable),
                    scratch: req.scratch,
                    workspace: req.mount.clone(),
                    labels: shared.labels(),
                };
                start_container(&engine, &policy, &launch, &n).await?
            }
        };
        // The deadline is the guest's: it counts from the request's delivery to a
        // ready Python (a container's start-up has its own limit, STARTUP_LIMIT).
        let served = serve(&engine, warm, &policy, &req, Instant::now()).await;
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

impl Executor for DockerExecutor {
    fn tier(&self) -> Tier {
        Tier::Docker
    }

    fn lingering(&self) -> usize {
        self.shared.removing.load(Ordering::SeqCst)
    }

    fn open_session(&self) -> BoxFuture<'_, Result<Box<dyn crate::executor::TierSession>, SandboxError>> {
        Box::pin(async move { Ok(Box::new(self.start_session(None).await?) as Box<dyn crate::executor::TierSession>) })
    }

    fn open_session_with(
        &self,
        mount: Option<crate::workspace::Mount>,
    ) -> BoxFuture<'_, Result<Box<dyn crate::executor::TierSession>, SandboxError>> {
        Box::pin(async move { Ok(Box::new(self.start_session(mount).await?) as Box<dyn crate::executor::TierSession>) })
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
