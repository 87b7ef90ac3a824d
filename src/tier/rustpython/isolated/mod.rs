//! Isolated mode: every request runs in a single-use child process forked, ahead of
//! demand, from a warm zygote. The default for untrusted code.
//!
//! The supervisor (this module, in the host process, async) starts the zygote (the
//! `terrarium` binary re-executed with [`ZYGOTE_ARG`]), keeps a pool of confined
//! children ready, sends each request to one child, enforces the wall deadline with
//! `SIGKILL` through a pidfd, reads the answer with a size cap, kills the child, and
//! decides how the run ended. The zygote reaps children and reports their exit
//! status and rusage; a zygote that dies is replaced on the next request.
//!
//! # Security invariants
//! - A child is confined (descriptors, namespaces, rlimits, seccomp) before it reads
//!   its request; see `zygote.rs`.
//! - The deadline is a `SIGKILL`: it cannot be caught and it stops native calls and
//!   `time.sleep` alike.
//! - The host is the only witness. A child may be fully controlled by its snippet,
//!   so it is `SIGKILL`ed after its answer, at its deadline, and on any protocol
//!   error, before the request returns (and when the request is dropped): no child
//!   runs code after its run. The zygote reaps it; only a child that did not answer
//!   is waited for, to learn how it died. Its answer supplies only what the guest produced
//!   (output, value, exception); the tier, the limits hit, the denials it sent
//!   (which it cannot take back), wall and CPU time and memory are what the host
//!   saw. Answers are size-capped and parsed; anything else is a crash.
//!
//! Linux only.

#[cfg(feature = "test-hooks")]
mod hooks;
mod huge_pages;
pub mod protocol;
mod seccomp;
mod sys;
mod zygote;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

use self::protocol::{
    AnswerStream, CallAnswer, ChildRequest, FromZygote, GuestAnswer, GuestEnd, Heard, SpawnSpec, StreamError, ToZygote,
};
pub use self::zygote::{ZYGOTE_ARG, run_zygote_if_requested};
use super::WORKER_STACK;
use crate::error::SandboxError;
use crate::executor::{
    BoxFuture, CallReply, ErrorInfo, ErrorKind, ExecRequest, Executor, Outcome, Status, Tier, admit, millis,
};
use crate::policy::Policy;

mod pool;
use pool::*;
mod session;
mod supervise;
use supervise::*;

/// Environment variable naming the binary to run as the zygote, for programs other
/// than `terrarium` (tests, embedders). That binary must call
/// [`run_zygote_if_requested`] first thing in `main`.
pub const WORKER_EXE_ENV: &str = "TERRARIUM_WORKER_EXE";

/// How long a request waits for a child before failing as a host fault.
const SPAWN_WAIT: Duration = Duration::from_secs(20);
/// How long the supervisor waits for the zygote's report after killing a child.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// How isolated mode runs.
#[derive(Debug, Clone)]
pub struct IsolatedConfig {
    /// The binary re-executed as the zygote.
    pub worker_exe: PathBuf,
    /// Children kept forked ahead of demand (at least 1).
    pub pool_size: usize,
    /// Whether children enter new user/net/mount/IPC/UTS namespaces (where the
    /// kernel allows; the seccomp filter stands either way).
    pub namespaces: bool,
}

impl IsolatedConfig {
    /// Runs `worker_exe` as the zygote, with a pool of 4 and namespaces on.
    pub fn new(worker_exe: impl Into<PathBuf>) -> IsolatedConfig {
        IsolatedConfig { worker_exe: worker_exe.into(), pool_size: 4, namespaces: true }
    }

    /// The binary named by `TERRARIUM_WORKER_EXE`, or else this program itself.
    ///
    /// # Errors
    /// [`SandboxError::TierUnavailable`] when neither can be found.
    pub fn from_env() -> Result<IsolatedConfig, SandboxError> {
        let exe = match std::env::var_os(WORKER_EXE_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().map_err(|e| SandboxError::TierUnavailable {
                tier: Tier::Rustpython,
                reason: format!("cannot find this program to run as the isolated-mode zygote: {e}"),
            })?,
        };
        Ok(IsolatedConfig::new(exe))
    }
}

/// Runs each snippet in a fresh, confined child of a warm zygote.
pub struct IsolatedExecutor {
    policy: Policy,
    config: IsolatedConfig,
    zygote: Mutex<Option<Arc<Zygote>>>,
    starting: tokio::sync::Mutex<()>,
}

impl IsolatedExecutor {
    /// An executor for `policy`. The zygote starts on the first request or on
    /// [`IsolatedExecutor::warm_up`].
    pub fn new(policy: Policy, config: IsolatedConfig) -> IsolatedExecutor {
        // The children are `worker_exe`: when that is this program, its allocator is
        // theirs.
        if std::env::current_exe().is_ok_and(|me| me == config.worker_exe) {
            super::worker::warn_without_counting_allocator();
        }
        IsolatedExecutor { policy, config, zygote: Mutex::new(None), starting: tokio::sync::Mutex::new(()) }
    }

    /// The policy requests are checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts the zygote and waits until the pool is full.
    ///
    /// # Errors
    /// [`SandboxError::Host`] when the zygote cannot start or fork.
    pub async fn warm_up(&self) -> Result<(), SandboxError> {
        let z = self.zygote().await?;
        let until = Instant::now() + SPAWN_WAIT;
        loop {
            let notified = z.arrived.notified();
            {
                let st = z.state();
                if st.ready.len() >= z.pool_size {
                    return Ok(());
                }
                if let Some(e) = &st.death {
                    return Err(host(e));
                }
            }
            if tokio::time::timeout_at(until.into(), notified).await.is_err() {
                return Err(host("the zygote did not fill its pool in time"));
            }
            // A waiter consumed this arrival's permit; hand it on to the next.
            z.arrived.notify_one();
        }
    }

    /// The running zygote's pid, if one runs (for operators and tests).
    pub fn zygote_pid(&self) -> Option<i32> {
        self.zygote.lock().ok().and_then(|z| z.as_ref().filter(|z| z.alive()).map(|z| z.pid))
    }

    fn default_spec(&self) -> SpawnSpec {
        spawn_spec(&self.policy, self.config.namespaces)
    }

    async fn zygote(&self) -> Result<Arc<Zygote>, SandboxError> {
        if let Some(z) = self.current_zygote() {
            return Ok(z);
        }
        let _starting = self.starting.lock().await;
        if let Some(z) = self.current_zygote() {
            return Ok(z);
        }
        let config = self.config.clone();
        let preload: Vec<String> = self.policy.allowed_modules().iter().cloned().collect();
        let spec = self.default_spec();
        let z = tokio::task::spawn_blocking(move || Zygote::start(&config, preload, spec))
            .await
            .map_err(|e| host(&format!("cannot start the zygote: {e}")))??;
        z.refill(&mut z.state());
        if let Ok(mut slot) = self.zygote.lock() {
            *slot = Some(z.clone());
        }
        Ok(z)
    }

    fn current_zygote(&self) -> Option<Arc<Zygote>> {
        self.zygote.lock().ok().and_then(|z| z.as_ref().filter(|z| z.alive()).cloned())
    }

    async fn run(
        &self,
        req: ExecRequest,
        #[allow(unused_variables, reason = "read by test hooks only")] probe: Option<&str>,
    ) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let policy = match admit(&self.policy, &req, Tier::Rustpython)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let timeout = policy.timeout();
        let deadline = started + timeout;
        let request = child_request(req.id.clone(), req.code, &policy, false, req.host.as_ref());
        #[cfg(feature = "test-hooks")]
        let request = ChildRequest { probe: probe.map(str::to_owned), ..request };
        let cap = answer_cap(&policy);
        // Only a tighter memory limit needs a child of its own: a shorter deadline is
        // the supervisor's kill, and the CPU rlimit is a backstop at the policy's.
        let spec = SpawnSpec { memory: policy.max_memory(), ..self.default_spec() };
        // A child dies with its zygote. A request caught in that is run once more on
        // the replacement: a child has no effects outside itself, so a second run is
        // safe, and it keeps the original deadline.
        let mut attempts = 0;
        let mut outcome = loop {
            attempts += 1;
            let z = self.zygote().await?;
            let running = z.in_flight();
            let child = if spec == self.default_spec() { z.take().await } else { z.take_dedicated(spec).await };
            let child = match child {
                Ok(c) => c,
                // The zygote died while this request waited for a child.
                Err(_) if !z.alive() && attempts < 2 => continue,
                Err(e) => return Err(host(&e.to_string())),
            };
            let limits = RunLimits {
                deadline,
                timeout,
                cap,
                memory: policy.max_memory(),
                max_output: policy.max_output(),
                fuel: policy.fuel(),
                host: req.host.clone(),
                latest: None,
                spin: running.alone(),
            };
            let supervised = supervise(&z, child, &request, &limits, spec.namespaces).await;
            drop(running);
            z.refill(&mut z.state());
            match supervised {
                Err(Supervise::ZygoteGone) if attempts < 2 => continue,
                Err(Supervise::ZygoteGone) => return Err(host("the zygote died twice during one request")),
                Err(Supervise::Host(e)) => return Err(e),
                Ok(o) => break o,
            }
        };
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        Ok(outcome)
    }

    /// Runs a child that attempts one forbidden system call (`socket`, `openat`,
    /// `execve`, `fork`, `kill`, `ptrace`) after confinement, as a test of the
    /// seccomp wall: the outcome must be `crashed` by `SIGSYS`. Only in builds with
    /// the `test-hooks` feature (this package's own tests).
    ///
    /// # Errors
    /// As for [`Executor::execute`].
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn probe_forbidden_syscall(&self, syscall: &str) -> Result<Outcome, SandboxError> {
        self.run(ExecRequest::new("pass"), Some(syscall)).await
    }

    /// Runs `code` in a child that then acts as one its snippet fully controls, as
    /// a test of the supervisor: `forge_on_stderr` (a complete forged answer on the
    /// runtime's descriptor 2 before the run), `linger_after_answer`,
    /// `spin_after_answer`, `hold_memory_after_answer` (the child keeps running
    /// after its answer). Only in builds with the `test-hooks` feature (this
    /// package's own tests).
    ///
    /// # Errors
    /// As for [`Executor::execute`].
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn probe_misbehaving_child(&self, code: &str, how: &str) -> Result<Outcome, SandboxError> {
        self.run(ExecRequest::new(code), Some(how)).await
    }
}

impl Drop for IsolatedExecutor {
    fn drop(&mut self) {
        if let Some(z) = self.zygote.get_mut().ok().and_then(Option::take) {
            z.shutdown();
        }
    }
}

impl Executor for IsolatedExecutor {
    fn tier(&self) -> Tier {
        Tier::Rustpython
    }

    fn execute(&self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.run(req, None))
    }

    fn open_session(&self) -> BoxFuture<'_, Result<Box<dyn crate::executor::TierSession>, SandboxError>> {
        Box::pin(async move { Ok(Box::new(self.session().await?) as Box<dyn crate::executor::TierSession>) })
    }
}

impl IsolatedExecutor {
    /// A session whose child misbehaves as `how` says from its first cell on
    /// (`answer_ahead`: it writes an answer for a cell not yet sent). Only in
    /// builds with the `test-hooks` feature (this package's own tests).
    ///
    /// # Errors
    /// As for [`Executor::open_session`].
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn probe_session(&self, how: &str) -> Result<Box<dyn crate::executor::TierSession>, SandboxError> {
        let mut session = self.session().await?;
        session.probe = Some(how.to_string());
        Ok(Box::new(session))
    }

    /// Forks the session's child (see `session.rs`).
    async fn session(&self) -> Result<session::IsolatedSession, SandboxError> {
        let limits = self.policy.sessions();
        // A child of its own: the session's memory, and a CPU-time backstop over
        // its whole lifetime (the rlimit counts every cell).
        let spec = SpawnSpec {
            memory: limits.max_memory,
            cpu_secs: limits.max_lifetime.as_secs().saturating_add(2),
            ..self.default_spec()
        };
        let z = self.zygote().await?;
        let child = z.take_dedicated(spec).await.map_err(|e| host(&e.to_string()))?;
        let live = Live::new(child, spec.namespaces).map_err(|e| match e {
            Supervise::Host(e) => e,
            Supervise::ZygoteGone => host("the zygote died while a session started"),
        })?;
        session::IsolatedSession::start(self.policy.clone(), z, live)
    }
}

/// The request a child reads for `code` under `policy` (`session`: a session's cell).
fn child_request(
    id: Option<String>,
    code: String,
    policy: &Policy,
    session: bool,
    host: Option<&crate::executor::HostLink>,
) -> ChildRequest {
    ChildRequest {
        id,
        code,
        allowed_modules: policy.allowed_modules().clone(),
        max_output: policy.max_output(),
        timeout_ms: millis(policy.timeout()),
        session,
        functions: host.map(crate::executor::HostLink::names).unwrap_or_default(),
        fuel: policy.fuel(),
        #[cfg(feature = "test-hooks")]
        probe: None,
    }
}

/// Bytes a child's answer stream may take: JSON escapes at most 6 bytes per byte of
/// output, for stdout and stderr, plus room for the rest of the frame.
fn answer_cap(policy: &Policy) -> usize {
    usize::try_from(policy.max_output()).unwrap_or(usize::MAX).saturating_mul(12).saturating_add(1 << 20)
}

fn spawn_spec(policy: &Policy, namespaces: bool) -> SpawnSpec {
    SpawnSpec {
        token: 0,
        memory: policy.max_memory(),
        // A backstop behind the wall deadline: whole seconds, plus one.
        cpu_secs: policy.timeout().as_secs().saturating_add(2),
        namespaces,
        warm_modules: true,
    }
}

fn host(message: &str) -> SandboxError {
    SandboxError::Host { tier: Tier::Rustpython, message: message.into() }
}
