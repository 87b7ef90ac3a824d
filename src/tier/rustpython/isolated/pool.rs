//! The zygote and its pool of ready children: started, refilled after each
//! request, each child's accounting files opened when it is announced.

use super::*;

/// How a child ended, from the zygote's `wait4`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exit {
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) cpu_us: u64,
    pub(super) maxrss_kb: u64,
}

/// A confined child waiting for its request.
pub(super) struct ReadyChild {
    pub(super) pid: i32,
    pub(super) stream: std::os::unix::net::UnixStream,
    pub(super) words: std::os::unix::net::UnixStream,
    pub(super) pidfd: OwnedFd,
    pub(super) exit: oneshot::Receiver<Exit>,
    pub(super) namespaces: bool,
    /// The kernel's accounting files of this child, opened ahead of its request.
    pub(super) accounting: Option<Accounting>,
}

/// `/proc/<pid>/schedstat` and `/proc/<pid>/status` of one live child, opened when
/// it is announced (off the request path): reading an open procfs file again costs
/// a fraction of opening it by path.
pub(super) struct Accounting {
    pub(super) schedstat: std::fs::File,
    pub(super) status: std::fs::File,
    /// CPU time the child had used when it said it was ready (its confinement and
    /// warm-ups), taken off what its run is charged.
    pub(super) cpu_ns_at_ready: u64,
}

impl Accounting {
    /// Opens the files of child `pid`, behind `pidfd`. `None` when the child has
    /// already exited: its pid might then name another process.
    pub(super) fn open(pid: i32, pidfd: &OwnedFd) -> Option<Accounting> {
        let schedstat = std::fs::File::open(format!("/proc/{pid}/schedstat")).ok()?;
        let status = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
        // Still alive after both opens: the pid was not reused, so the files are
        // this child's (a process's procfs files never switch to another one).
        let cpu_ns_at_ready = std::io::read_to_string(&schedstat).ok().and_then(|s| cpu_ns(&s)).unwrap_or(0);
        (!sys::has_exited(pidfd.as_fd())).then_some(Accounting { schedstat, status, cpu_ns_at_ready })
    }
}

/// Why a request got no child from the zygote.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum NoChild {
    /// The zygote is gone (why, as the dispatcher saw it).
    #[error("{0}")]
    ZygoteGone(String),
    /// The control message could not be written or encoded.
    #[error("the zygote is unreachable: {0}")]
    Unreachable(String),
    /// The zygote tried and failed to fork or confine a child.
    #[error("the zygote could not fork a child: {0}")]
    ForkFailed(String),
    /// None became ready within the wait.
    #[error("no isolated child became ready in time")]
    Timeout,
}

#[derive(Default)]
pub(super) struct PoolState {
    pub(super) ready: VecDeque<ReadyChild>,
    pub(super) pending: usize,
    pub(super) waiters: HashMap<u64, oneshot::Sender<Result<ReadyChild, NoChild>>>,
    pub(super) exits: HashMap<i32, oneshot::Sender<Exit>>,
    /// Children killed after their answer, until the zygote reports them reaped:
    /// their descriptors are closed then, by the reader thread (see [`Zygote::bury`]).
    pub(super) spent: HashMap<i32, Live>,
    /// The last pool spawn's failure, reported to the next request that finds the
    /// pool empty.
    pub(super) spawn_failure: Option<String>,
    /// Why the zygote is gone, once it is.
    pub(super) death: Option<String>,
}

pub(super) struct Zygote {
    pub(super) pid: i32,
    pub(super) process: Mutex<Option<Child>>,
    pub(super) ctl: OwnedFd,
    pub(super) state: Mutex<PoolState>,
    pub(super) arrived: Notify,
    pub(super) spec: SpawnSpec,
    pub(super) pool_size: usize,
    pub(super) next_token: AtomicU64,
    /// Requests and session cells running on children of this zygote now.
    pub(super) in_flight: std::sync::atomic::AtomicUsize,
}

/// One request or session cell running on a child of `Zygote` (counted while it
/// lives).
pub(super) struct InFlight<'a>(&'a Zygote);

impl InFlight<'_> {
    /// Whether this is all that runs on the zygote's children now (see
    /// `supervise::ANSWER_SPIN`).
    pub(super) fn alone(&self) -> bool {
        self.0.in_flight.load(Ordering::Relaxed) == 1
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Zygote {
    /// Starts a zygote and waits until its interpreter is warm (blocking).
    pub(super) fn start(
        config: &IsolatedConfig,
        preload: Vec<String>,
        spec: SpawnSpec,
    ) -> Result<Arc<Zygote>, SandboxError> {
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
                     terrarium::run_zygote_if_requested() first in main \
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
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        });
        let reader = z.clone();
        std::thread::Builder::new()
            .name("terrarium-zygote-reader".into())
            .spawn(move || reader.dispatch())
            .map_err(|e| host(&format!("cannot start the zygote reader: {e}")))?;
        Ok(z)
    }

    pub(super) fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock leaves plain data; keep going with it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn alive(&self) -> bool {
        self.state().death.is_none()
    }

    pub(super) fn send(&self, msg: &ToZygote) -> Result<(), NoChild> {
        let body = serde_json::to_vec(msg).map_err(|e| NoChild::Unreachable(e.to_string()))?;
        sys::send_msg(self.ctl.as_fd(), &body, &[]).map_err(|e| NoChild::Unreachable(e.to_string()))
    }

    /// Counts a request or a session's cell as running until the value is dropped.
    pub(super) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Asks the zygote for children until the pool is full. They warm the policy's
    /// modules only while no request is running: one at a time, a request's latency
    /// is what counts; with several in flight, each child's extra CPU would cost
    /// throughput on the cores they share.
    pub(super) fn refill(&self, st: &mut PoolState) {
        let spec = SpawnSpec { warm_modules: self.in_flight.load(Ordering::Relaxed) == 0, ..self.spec };
        while st.death.is_none() && st.ready.len() + st.pending < self.pool_size {
            if self.send(&ToZygote::Spawn(spec)).is_err() {
                break;
            }
            st.pending += 1;
        }
    }

    /// Keeps `live`, a child already killed, until the zygote reports it reaped; the
    /// reader thread then closes its descriptors (its request socket and that
    /// socket's registration with the runtime, its last-words socket, its pidfd and
    /// its accounting files: ~30 µs that a request no longer waits for). A child
    /// already reported, or one of a zygote that is gone, is closed here.
    pub(super) fn bury(&self, live: Live) {
        let mut st = self.state();
        // The reader takes a child's `exits` entry and its `spent` one under this
        // lock: an entry still there means the report has not been read yet.
        if st.death.is_none() && st.exits.contains_key(&live.pid()) {
            st.spent.insert(live.pid(), live);
        } else {
            drop(st);
            drop(live);
        }
    }

    /// A child from the pool, waiting for one if the pool is empty.
    pub(super) async fn take(&self) -> Result<ReadyChild, NoChild> {
        let until = Instant::now() + SPAWN_WAIT;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state();
                if let Some(d) = &st.death {
                    return Err(NoChild::ZygoteGone(d.clone()));
                }
                // The child that became ready last: its warm-up ran most recently,
                // so more of what a run touches is still in the CPU's caches (the
                // first `json.dumps` in a child 0.77x of taking the oldest, in
                // docs/benchmarks.md). The others wait; none of them ages.
                if let Some(c) = st.ready.pop_back() {
                    // Refill after the request (see `run`), so that forking and
                    // confining the replacement does not compete with it for CPU;
                    // only an empty pool refills now.
                    if st.ready.is_empty() {
                        self.refill(&mut st);
                    }
                    return Ok(c);
                }
                if let Some(e) = st.spawn_failure.take() {
                    return Err(NoChild::ForkFailed(e));
                }
                self.refill(&mut st);
            }
            if tokio::time::timeout_at(until.into(), notified).await.is_err() {
                return Err(NoChild::Timeout);
            }
        }
    }

    /// A child forked for one request with its own limits.
    pub(super) async fn take_dedicated(&self, mut spec: SpawnSpec) -> Result<ReadyChild, NoChild> {
        spec.token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state();
            if let Some(d) = &st.death {
                return Err(NoChild::ZygoteGone(d.clone()));
            }
            st.waiters.insert(spec.token, tx);
        }
        if let Err(e) = self.send(&ToZygote::Spawn(spec)) {
            self.state().waiters.remove(&spec.token);
            return Err(e);
        }
        match tokio::time::timeout(SPAWN_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(NoChild::ZygoteGone("the zygote died".into())),
            Err(_) => {
                self.state().waiters.remove(&spec.token);
                Err(NoChild::Timeout)
            }
        }
    }

    /// The reader thread: routes the zygote's messages until it goes away.
    pub(super) fn dispatch(self: Arc<Self>) {
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
                        let _ = w.send(Err(NoChild::ForkFailed(message)));
                    }
                }
                FromZygote::Exited { pid, code, signal, cpu_us, maxrss_kb } => {
                    let (tx, spent) = {
                        let mut st = self.state();
                        (st.exits.remove(&pid), st.spent.remove(&pid))
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(Exit { code, signal, cpu_us, maxrss_kb });
                    }
                    drop(spent);
                }
                _ => {}
            }
        };
        let spent = {
            let mut st = self.state();
            st.death = Some(death);
            st.ready.clear();
            st.waiters.clear();
            st.exits.clear();
            std::mem::take(&mut st.spent)
        };
        drop(spent);
        self.arrived.notify_waiters();
        self.shutdown();
    }

    /// Kills and reaps the zygote; its children die with it (`PR_SET_PDEATHSIG`).
    pub(super) fn shutdown(&self) {
        let process = self.process.lock().ok().and_then(|mut p| p.take());
        if let Some(mut p) = process {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
