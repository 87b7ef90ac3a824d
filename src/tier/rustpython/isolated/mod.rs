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

use self::protocol::{AnswerStream, ChildRequest, FromZygote, GuestAnswer, GuestEnd, SpawnSpec, StreamError, ToZygote};
pub use self::zygote::{ZYGOTE_ARG, run_zygote_if_requested};
use super::WORKER_STACK;
use crate::error::SandboxError;
use crate::executor::{BoxFuture, ErrorInfo, ExecRequest, Executor, Outcome, Status, Tier, admit, millis};
use crate::policy::Policy;

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

    /// The binary named by [`WORKER_EXE_ENV`], or else this program itself.
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

    async fn run(&self, req: ExecRequest, probe: Option<&str>) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let policy = match admit(&self.policy, &req, Tier::Rustpython)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let timeout = policy.timeout();
        let deadline = started + timeout;
        let request = ChildRequest {
            id: req.id.clone(),
            code: req.code,
            allowed_modules: policy.allowed_modules().clone(),
            max_output: policy.max_output(),
            timeout_ms: millis(timeout),
            probe: probe.map(str::to_owned),
        };
        // JSON escapes at most 6 bytes per byte of output, for stdout and stderr.
        let cap = usize::try_from(policy.max_output()).unwrap_or(usize::MAX).saturating_mul(12).saturating_add(1 << 20);
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
            let child = if spec == self.default_spec() { z.take().await } else { z.take_dedicated(spec).await };
            let child = match child {
                Ok(c) => c,
                // The zygote died while this request waited for a child.
                Err(_) if !z.alive() && attempts < 2 => continue,
                Err(e) => return Err(host(&e)),
            };
            let limits =
                RunLimits { deadline, timeout, cap, memory: policy.max_memory(), max_output: policy.max_output() };
            let supervised = supervise(child, &request, &limits, spec.namespaces).await;
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
    /// seccomp wall: the outcome must be `crashed` by `SIGSYS`. Not reachable from
    /// snippets, requests or the CLI.
    ///
    /// # Errors
    /// As for [`Executor::execute`].
    #[doc(hidden)]
    pub async fn probe_forbidden_syscall(&self, syscall: &str) -> Result<Outcome, SandboxError> {
        self.run(ExecRequest::new("pass"), Some(syscall)).await
    }

    /// Runs `code` in a child that then acts as one its snippet fully controls, as
    /// a test of the supervisor: `forge_on_stderr` (a complete forged answer on the
    /// runtime's descriptor 2 before the run), `linger_after_answer`,
    /// `spin_after_answer`, `hold_memory_after_answer` (the child keeps running
    /// after its answer). Not reachable from snippets, requests or the CLI.
    ///
    /// # Errors
    /// As for [`Executor::execute`].
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
}

fn spawn_spec(policy: &Policy, namespaces: bool) -> SpawnSpec {
    SpawnSpec {
        token: 0,
        memory: policy.max_memory(),
        // A backstop behind the wall deadline: whole seconds, plus one.
        cpu_secs: policy.timeout().as_secs().saturating_add(2),
        namespaces,
    }
}

fn host(message: &str) -> SandboxError {
    SandboxError::Host { tier: Tier::Rustpython, message: message.into() }
}

/// How a child ended, from the zygote's `wait4`.
#[derive(Debug, Clone, Copy)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    cpu_us: u64,
    maxrss_kb: u64,
}

/// A confined child waiting for its request.
struct ReadyChild {
    pid: i32,
    stream: std::os::unix::net::UnixStream,
    words: std::os::unix::net::UnixStream,
    pidfd: OwnedFd,
    exit: oneshot::Receiver<Exit>,
    namespaces: bool,
    /// The kernel's accounting files of this child, opened ahead of its request.
    accounting: Option<Accounting>,
}

/// `/proc/<pid>/schedstat` and `/proc/<pid>/status` of one live child, opened when
/// it is announced (off the request path): reading an open procfs file again costs
/// a fraction of opening it by path.
struct Accounting {
    schedstat: std::fs::File,
    status: std::fs::File,
}

impl Accounting {
    /// Opens the files of child `pid`, behind `pidfd`. `None` when the child has
    /// already exited: its pid might then name another process.
    fn open(pid: i32, pidfd: &OwnedFd) -> Option<Accounting> {
        let schedstat = std::fs::File::open(format!("/proc/{pid}/schedstat")).ok()?;
        let status = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
        // Still alive after both opens: the pid was not reused, so the files are
        // this child's (a process's procfs files never switch to another one).
        (!sys::has_exited(pidfd.as_fd())).then_some(Accounting { schedstat, status })
    }
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<ReadyChild>,
    pending: usize,
    waiters: HashMap<u64, oneshot::Sender<Result<ReadyChild, String>>>,
    exits: HashMap<i32, oneshot::Sender<Exit>>,
    /// The last pool spawn's failure, reported to the next request that finds the
    /// pool empty.
    spawn_failure: Option<String>,
    /// Why the zygote is gone, once it is.
    death: Option<String>,
}

struct Zygote {
    pid: i32,
    process: Mutex<Option<Child>>,
    ctl: OwnedFd,
    state: Mutex<PoolState>,
    arrived: Notify,
    spec: SpawnSpec,
    pool_size: usize,
    next_token: AtomicU64,
}

impl Zygote {
    /// Starts a zygote and waits until its interpreter is warm (blocking).
    fn start(config: &IsolatedConfig, preload: Vec<String>, spec: SpawnSpec) -> Result<Arc<Zygote>, SandboxError> {
        let unavailable = |reason: String| SandboxError::TierUnavailable { tier: Tier::Rustpython, reason };
        let (ctl, theirs) =
            sys::seqpacket_pair().map_err(|e| host(&format!("cannot create the zygote socket: {e}")))?;
        let mut cmd = Command::new(&config.worker_exe);
        cmd.arg(ZYGOTE_ARG).env_clear().stdin(Stdio::null()).stdout(Stdio::null());
        sys::zygote_pre_exec(&mut cmd, theirs.as_raw_fd(), WORKER_STACK as u64);
        let process = cmd.spawn().map_err(|e| {
            unavailable(format!(
                "cannot start {} as the isolated-mode zygote: {e} (set {WORKER_EXE_ENV} to the terrarium binary)",
                config.worker_exe.display()
            ))
        })?;
        drop(theirs);
        let init = serde_json::to_vec(&ToZygote::Init { preload }).map_err(|e| host(&e.to_string()))?;
        sys::send_msg(ctl.as_fd(), &init, &[]).map_err(|e| host(&format!("the zygote did not start: {e}")))?;
        let mut buf = vec![0u8; protocol::MAX_CONTROL];
        let pid = match sys::recv_msg(ctl.as_fd(), &mut buf) {
            Ok((n, _)) if n > 0 => match serde_json::from_slice::<FromZygote>(&buf[..n]) {
                Ok(FromZygote::Ready { pid }) => pid,
                Ok(FromZygote::Failed { message }) => {
                    return Err(host(&format!("the zygote could not build its interpreter: {message}")));
                }
                _ => return Err(host("the zygote answered out of turn")),
            },
            _ => {
                return Err(unavailable(format!(
                    "{} exited instead of becoming a zygote; it must call \
                     terrarium::tier::rustpython::isolated::run_zygote_if_requested() first in main \
                     (set {WORKER_EXE_ENV} to the terrarium binary)",
                    config.worker_exe.display()
                )));
            }
        };
        let z = Arc::new(Zygote {
            pid,
            process: Mutex::new(Some(process)),
            ctl,
            state: Mutex::new(PoolState::default()),
            arrived: Notify::new(),
            spec,
            pool_size: config.pool_size.max(1),
            next_token: AtomicU64::new(1),
        });
        let reader = z.clone();
        std::thread::Builder::new()
            .name("terrarium-zygote-reader".into())
            .spawn(move || reader.dispatch())
            .map_err(|e| host(&format!("cannot start the zygote reader: {e}")))?;
        Ok(z)
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock leaves plain data; keep going with it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alive(&self) -> bool {
        self.state().death.is_none()
    }

    fn send(&self, msg: &ToZygote) -> Result<(), String> {
        let body = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        sys::send_msg(self.ctl.as_fd(), &body, &[]).map_err(|e| format!("the zygote is unreachable: {e}"))
    }

    /// Asks for children until ready + pending reaches the pool size.
    fn refill(&self, st: &mut PoolState) {
        while st.death.is_none() && st.ready.len() + st.pending < self.pool_size {
            if self.send(&ToZygote::Spawn(self.spec)).is_err() {
                break;
            }
            st.pending += 1;
        }
    }

    /// A child from the pool, waiting for one if the pool is empty.
    async fn take(&self) -> Result<ReadyChild, String> {
        let until = Instant::now() + SPAWN_WAIT;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state();
                if let Some(d) = &st.death {
                    return Err(d.clone());
                }
                if let Some(c) = st.ready.pop_front() {
                    // Refill after the request (see `run`), so that forking and
                    // confining the replacement does not compete with it for CPU;
                    // only an empty pool refills now.
                    if st.ready.is_empty() {
                        self.refill(&mut st);
                    }
                    return Ok(c);
                }
                if let Some(e) = st.spawn_failure.take() {
                    return Err(format!("the zygote could not fork a child: {e}"));
                }
                self.refill(&mut st);
            }
            if tokio::time::timeout_at(until.into(), notified).await.is_err() {
                return Err("no isolated child became ready in time".into());
            }
        }
    }

    /// A child forked for one request with its own limits.
    async fn take_dedicated(&self, mut spec: SpawnSpec) -> Result<ReadyChild, String> {
        spec.token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state();
            if let Some(d) = &st.death {
                return Err(d.clone());
            }
            st.waiters.insert(spec.token, tx);
        }
        if let Err(e) = self.send(&ToZygote::Spawn(spec)) {
            self.state().waiters.remove(&spec.token);
            return Err(e);
        }
        match tokio::time::timeout(SPAWN_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the zygote died".into()),
            Err(_) => {
                self.state().waiters.remove(&spec.token);
                Err("no isolated child became ready in time".into())
            }
        }
    }

    /// The reader thread: routes the zygote's messages until it goes away.
    fn dispatch(self: Arc<Self>) {
        let mut buf = vec![0u8; protocol::MAX_CONTROL];
        let death = loop {
            let (n, fds) = match sys::recv_msg(self.ctl.as_fd(), &mut buf) {
                Ok((0, _)) => break "the zygote exited".to_string(),
                Ok(r) => r,
                Err(e) => break format!("the zygote socket failed: {e}"),
            };
            let Ok(msg) = serde_json::from_slice::<FromZygote>(&buf[..n]) else {
                continue;
            };
            match msg {
                FromZygote::Spawned { token, pid, namespaces } if fds.len() == 3 => {
                    let mut fds = fds.into_iter();
                    let (Some(sock), Some(words), Some(pidfd)) = (fds.next(), fds.next(), fds.next()) else {
                        continue;
                    };
                    let (tx, rx) = oneshot::channel();
                    let accounting = Accounting::open(pid, &pidfd);
                    let child = ReadyChild {
                        pid,
                        stream: sock.into(),
                        words: words.into(),
                        pidfd,
                        exit: rx,
                        namespaces,
                        accounting,
                    };
                    let mut st = self.state();
                    st.exits.insert(pid, tx);
                    if token == 0 {
                        st.pending = st.pending.saturating_sub(1);
                        st.ready.push_back(child);
                        drop(st);
                        self.arrived.notify_one();
                    } else if let Some(w) = st.waiters.remove(&token) {
                        let _ = w.send(Ok(child));
                    }
                }
                FromZygote::SpawnFailed { token, message } => {
                    let mut st = self.state();
                    if token == 0 {
                        st.pending = st.pending.saturating_sub(1);
                        st.spawn_failure = Some(message);
                        drop(st);
                        self.arrived.notify_one();
                    } else if let Some(w) = st.waiters.remove(&token) {
                        let _ = w.send(Err(message));
                    }
                }
                FromZygote::Exited { pid, code, signal, cpu_us, maxrss_kb } => {
                    if let Some(tx) = self.state().exits.remove(&pid) {
                        let _ = tx.send(Exit { code, signal, cpu_us, maxrss_kb });
                    }
                }
                _ => {}
            }
        };
        {
            let mut st = self.state();
            st.death = Some(death);
            st.ready.clear();
            st.waiters.clear();
            st.exits.clear();
        }
        self.arrived.notify_waiters();
        self.shutdown();
    }

    /// Kills and reaps the zygote; its children die with it (`PR_SET_PDEATHSIG`).
    fn shutdown(&self) {
        let process = self.process.lock().ok().and_then(|mut p| p.take());
        if let Some(mut p) = process {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Why supervising a child gave no outcome.
enum Supervise {
    /// The zygote died, and the child with it, before the child's end was known.
    ZygoteGone,
    /// A host fault.
    Host(SandboxError),
}

impl From<SandboxError> for Supervise {
    fn from(e: SandboxError) -> Supervise {
        Supervise::Host(e)
    }
}

/// The bounds one run is held to.
struct RunLimits {
    deadline: Instant,
    timeout: Duration,
    /// Bytes the answer stream may take.
    cap: usize,
    /// Address-space limit, for messages.
    memory: u64,
    /// Output cap, checked by the host on what the child sends.
    max_output: u64,
}

/// Kills its child when dropped: whatever path a request takes out of
/// [`supervise`] (an answer, an error, a cancelled request), the child dies.
struct KillOnDrop(OwnedFd);

impl KillOnDrop {
    fn kill(&self) {
        // ESRCH (already dead and reaped) is the only expected failure.
        let _ = sys::pidfd_kill(self.0.as_fd());
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How reading a child's answer stream ended.
enum Read {
    Answer(GuestAnswer),
    Closed,
    Broken(StreamError),
}

/// Sends `request` to `child`, enforces the deadline, kills the child, and decides
/// from what the host saw (and the guest's word for its own output) how the run
/// ended.
async fn supervise(
    child: ReadyChild,
    request: &ChildRequest,
    limits: &RunLimits,
    want_namespaces: bool,
) -> Result<Outcome, Supervise> {
    let ReadyChild { pid, stream, words, pidfd, exit, namespaces, accounting } = child;
    let child = KillOnDrop(pidfd);
    if want_namespaces && !namespaces {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "isolated children run without new namespaces: this kernel or container refuses unshare \
                 (seccomp and rlimits still apply)"
            );
        });
    }
    let mut frame = Vec::new();
    protocol::write_frame(&mut frame, request).map_err(|e| host(&e.to_string()))?;
    stream.set_nonblocking(true).map_err(|e| host(&e.to_string()))?;
    let mut stream = tokio::net::UnixStream::from_std(stream).map_err(|e| host(&e.to_string()))?;
    let mut answers = AnswerStream::new(limits.cap);
    let exchange = async {
        // A child that died during confinement has closed its end: the write fails,
        // and how it ended is read from its exit below.
        let _ = stream.write_all(&frame).await;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(n) => match answers.push(&chunk[..n]) {
                    Ok(Some(answer)) => return Read::Answer(answer),
                    Ok(None) => {}
                    Err(e) => return Read::Broken(e),
                },
            }
        }
    };
    let mut outcome = match tokio::time::timeout_at(limits.deadline.into(), exchange).await {
        // The usual end: what the run cost is read from the kernel's accounting of
        // the live child (not from anything it said), then it is killed. SIGKILL
        // lets it run no more code; the zygote reaps it off the request path, so the
        // request does not wait for its address space to be torn down.
        Ok(Read::Answer(answer)) => {
            let e =
                observe(pid, accounting.as_ref()).unwrap_or(Exit { code: None, signal: None, cpu_us: 0, maxrss_kb: 0 });
            child.kill();
            decide(answer, limits.max_output, e)
        }
        // Otherwise the child's run is over too: it dies now, and the request
        // returns once the zygote has reaped it and said how it ended.
        read => {
            child.kill();
            let e = match tokio::time::timeout(EXIT_WAIT, exit).await {
                Ok(Ok(e)) => e,
                // The reader drops every pending report when the zygote goes away.
                Ok(Err(_)) => return Err(Supervise::ZygoteGone),
                Err(_) => return Err(Supervise::Host(host("the zygote did not report how a child ended"))),
            };
            match read {
                Err(_elapsed) => {
                    let msg = format!("deadline of {}s exceeded; the run was killed", limits.timeout.as_secs_f64());
                    ended(Status::Timeout, "Timeout", msg, e)
                }
                Ok(Read::Broken(StreamError::TooBig)) => {
                    let msg = format!("the run's answer exceeded {} bytes; it was killed", limits.cap);
                    ended(Status::OutputLimit, "OutputLimit", msg, e)
                }
                Ok(Read::Broken(StreamError::Malformed)) => ended(
                    Status::Crashed,
                    "ProtocolError",
                    "the run's process broke the answer protocol; it was killed".into(),
                    e,
                ),
                Ok(Read::Closed) => classify(e, &last_words(words), limits.memory)?,
                Ok(Read::Answer(answer)) => decide(answer, limits.max_output, e),
            }
        }
    };
    // A denial the child sent stands, however the run ended afterwards (but for the
    // host's own deadline kill).
    if let Some(reason) = answers.denials.first()
        && outcome.status != Status::Timeout
    {
        outcome.result = None;
        outcome.end(Status::Denied, "PolicyDenied", reason.clone());
    }
    Ok(outcome)
}

/// The outcome of a child that answered: its output and value are the guest's
/// word; the status is the host's, from the output sizes it sees.
fn decide(answer: GuestAnswer, max_output: u64, e: Exit) -> Outcome {
    let GuestAnswer { mut stdout, mut stderr, result, end, output_over } = answer;
    let cap = usize::try_from(max_output).unwrap_or(usize::MAX);
    // The value counts against the cap as well (the CPython tiers carry it on stderr).
    let value_len = result.as_ref().map_or(0, |r| serde_json::to_string(r).map_or(0, |t| t.len()));
    let over = output_over || stdout.len().saturating_add(stderr.len()) > cap || value_len > cap;
    if over {
        truncate(&mut stdout, cap);
        truncate(&mut stderr, cap.saturating_sub(stdout.len()));
    }
    let mut o = ended(Status::Ok, "", String::new(), e);
    o.error = None;
    o.stdout = stdout;
    o.stderr = stderr;
    if over {
        o.status = Status::OutputLimit;
        o.error = Some(ErrorInfo { kind: "OutputLimit".into(), message: format!("output exceeded {cap} bytes") });
        return o;
    }
    match end {
        GuestEnd::Returned => o.result = result,
        GuestEnd::Raised { kind, message } => {
            o.status = Status::Exception;
            o.error = Some(ErrorInfo { kind, message });
        }
        GuestEnd::Panicked => {
            o.status = Status::Crashed;
            o.error = Some(ErrorInfo {
                kind: "InterpreterPanic".into(),
                message: "the interpreter failed internally; the run was discarded".into(),
            });
        }
    }
    o
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// CPU time and peak resident set of live process `pid`, from the kernel's own
/// accounting (`/proc/<pid>/schedstat` and `VmHWM` in `/proc/<pid>/status`), read
/// through the files opened ahead when there are some.
fn observe(pid: i32, opened: Option<&Accounting>) -> Option<Exit> {
    use std::os::unix::fs::FileExt;
    let read = |file: Option<&std::fs::File>, name: &str| -> Option<String> {
        match file {
            Some(f) => {
                let mut buf = vec![0u8; 16 << 10];
                let n = f.read_at(&mut buf, 0).ok()?;
                buf.truncate(n);
                String::from_utf8(buf).ok()
            }
            None => std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok(),
        }
    };
    let sched = read(opened.map(|a| &a.schedstat), "schedstat")?;
    let cpu_ns: u64 = sched.split_whitespace().next()?.parse().ok()?;
    let status = read(opened.map(|a| &a.status), "status")?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Some(Exit { code: None, signal: None, cpu_us: cpu_ns / 1000, maxrss_kb: hwm_kb })
}

/// What a dead child printed on its last-words socket (at most 4 KiB).
fn last_words(words: std::os::unix::net::UnixStream) -> String {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if words.set_nonblocking(true).is_ok() {
        let _ = (&words).take(4096).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn ended(status: Status, kind: &str, message: String, e: Exit) -> Outcome {
    let mut o = Outcome::refused(None, Tier::Rustpython, status, kind, message);
    o.usage.cpu_ms = Some(e.cpu_us / 1000);
    o.usage.peak_memory_bytes = Some(e.maxrss_kb.saturating_mul(1024));
    o
}

/// A child that ended without a complete answer: what happened to it. The host saw
/// the death (exit code or signal); the child's last words only name its cause.
fn classify(e: Exit, last_words: &str, memory: u64) -> Result<Outcome, SandboxError> {
    if let Some(code) = e.code {
        // 70-76: the child could not confine itself (see zygote::child_main).
        if (70..=76).contains(&code) {
            return Err(host(&format!(
                "an isolated child could not confine itself (exit code {code}: descriptors, rlimits or seccomp \
                 failed); no request ran"
            )));
        }
        let msg = format!("the interpreter process exited with code {code} without answering");
        return Ok(ended(Status::Crashed, "Crashed", msg, e));
    }
    let signal = e.signal.unwrap_or(0);
    let (kind, msg) = match signal {
        libc::SIGABRT if last_words.contains("memory allocation of") => {
            let msg = format!("the run exceeded its memory limit of {memory} bytes");
            return Ok(ended(Status::MemoryLimit, "MemoryLimit", msg, e));
        }
        libc::SIGSYS => (
            "SeccompViolation",
            "the run attempted a system call the sandbox does not allow and was killed (SIGSYS)".to_string(),
        ),
        libc::SIGXCPU => {
            return Ok(ended(Status::Timeout, "CpuLimit", "the run used up its CPU time limit".into(), e));
        }
        libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS if last_words.contains("overflowed its stack") => {
            ("StackOverflow", "the interpreter overflowed its stack; the run was killed".to_string())
        }
        s => ("Crashed", format!("the interpreter process was killed by {}", signal_name(s))),
    };
    Ok(ended(Status::Crashed, kind, msg, e))
}

fn signal_name(s: i32) -> String {
    let name = match s {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {s}"),
    };
    name.to_string()
}
