//! Sessions on the docker tier: one hardened container kept for a session's cells.
//! The prelude runs in session mode: after each report it reads the next cell
//! (framed by its length) and runs it in the same globals.
//!
//! # Security invariants
//! - The container is the policy's, with the session's memory cap; it serves no
//!   other session or run.
//! - The host decides every end: a cell's deadline, an output past its cap, or a
//!   container that exits ends the session and removes the container before the
//!   cell's outcome returns; so does output written outside a cell (between a
//!   report and the next request, or after the report in the same chunk). Idle and
//!   expired sessions' containers are removed by a watchdog; a dropped session's
//!   container is removed in the background.

use super::*;
use crate::executor::{CellInfo, TierSession};
use crate::policy::SessionPolicy;

/// What the session and its watchdog share.
struct Watch {
    ended: Option<String>,
    busy: bool,
    last_used: Instant,
}

pub(super) struct DockerSession {
    policy: Policy,
    limits: SessionPolicy,
    engine: Engine,
    /// The container, until the session ends.
    warm: Option<Warm>,
    cells: u64,
    expires: Instant,
    watch: Arc<Mutex<Watch>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl DockerExecutor {
    /// Starts a session's container (see the module docs).
    pub(super) async fn start_session(&self) -> Result<DockerSession, SandboxError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(host("the docker executor was shut down"));
        }
        let engine = shared.engine().await?;
        let policy = shared.policy.for_session();
        let n = nonce();
        let preload: Vec<&str> =
            policy.allowed_modules().iter().map(String::as_str).filter(|m| *m != "asyncio").collect();
        let launch = Launch {
            cmd: engine::prelude_cmd_with(PRELUDE, &n, &preload.join(" "), false, "mark session"),
            scratch: false,
            labels: shared.labels(),
        };
        let warm = start_container(&engine, &policy, &launch, &n).await?;
        let limits = policy.sessions().clone();
        let now = Instant::now();
        let expires = now + limits.max_lifetime;
        let watch = Arc::new(Mutex::new(Watch { ended: None, busy: false, last_used: now }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(watchdog(watch.clone(), engine.clone(), warm.id.clone(), limits.clone(), expires, stopped));
        Ok(DockerSession {
            policy: shared.policy.clone(),
            limits,
            engine,
            warm: Some(warm),
            cells: 0,
            expires,
            watch,
            _stop: stop,
        })
    }
}

impl DockerSession {
    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn cell(&mut self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        let ended = self.watch().ended.clone();
        if let Some(why) = ended {
            self.discard();
            return Err(SandboxError::SessionEnded(why));
        }
        let idle_since = self.watch().last_used;
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
        let policy = match admit(&self.policy, &req, Tier::Docker)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        if self.warm.is_none() {
            return Err(SandboxError::SessionEnded("the session has no container".into()));
        }
        self.cells += 1;
        self.watch().busy = true;
        let abandoned = Abandoned(Some(self.watch.clone()));
        let due = (started + policy.timeout()).min(self.expires);
        let ran = match self.warm.as_mut() {
            Some(warm) => run_cell(&self.engine, warm, &policy, &req.code, due).await,
            None => Err(host("the session lost its container")),
        };
        abandoned.disarm();
        let (mut outcome, broken) = match ran {
            Ok(r) => r,
            Err(e) => {
                self.end(&e.to_string());
                return Err(e);
            }
        };
        {
            let mut w = self.watch();
            w.busy = false;
            w.last_used = Instant::now();
        }
        let why = match broken {
            Some(why) => Some(why),
            // As on the interpreter tier: most likely an allocation refused at the
            // session's cap, with what the cells built still in place.
            None if outcome.error.as_ref().is_some_and(|e| e.kind == "MemoryError") => Some(format!(
                "cell {} ended with MemoryError (the session's memory limit is {} bytes, sessions.max_memory)",
                self.cells, self.limits.max_memory
            )),
            None if outcome.status.is_limit() || outcome.status == Status::Crashed => {
                let message = outcome.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                Some(format!("cell {} ended with {}: {message}", self.cells, outcome.status.as_str()))
            }
            None if self.cells >= self.limits.max_cells => {
                Some(format!("the session ran its {} cells (sessions.max_cells)", self.limits.max_cells))
            }
            None => None,
        };
        if let Some(why) = &why {
            // Removed before the cell's outcome returns (a cell cut at a limit may
            // still be running in it).
            {
                let mut w = self.watch();
                w.ended.get_or_insert_with(|| why.clone());
            }
            if let Some(w) = self.warm.take() {
                self.engine.remove(&w.id).await?;
            }
        }
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        outcome.session = Some(CellInfo { cell: self.cells, ended: why });
        Ok(outcome)
    }

    /// Removes the container in the background (the session has ended).
    fn discard(&mut self) {
        if let Some(w) = self.warm.take() {
            remove_later(self.engine.clone(), w.id);
        }
    }
}

impl TierSession for DockerSession {
    fn execute(&mut self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>> {
        Box::pin(self.cell(req))
    }

    fn ended(&self) -> Option<String> {
        self.watch().ended.clone()
    }

    fn end(&mut self, reason: &str) {
        {
            let mut w = self.watch();
            if w.ended.is_none() {
                w.ended = Some(reason.to_string());
            }
        }
        self.discard();
    }

    fn cells(&self) -> u64 {
        self.cells
    }
}

impl Drop for DockerSession {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Removes container `id` off the caller's path (on the current runtime, or a
/// thread of its own when there is none).
fn remove_later(engine: Engine, id: String) {
    let remove = async move {
        if let Err(e) = engine.remove(&id).await {
            tracing::warn!(error = %e, "could not remove a session's container");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(remove);
        }
        Err(_) => {
            let _ = std::thread::Builder::new().name("terrarium-docker-remove".into()).spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(remove);
                }
            });
        }
    }
}

/// Sends one cell and reads its output until the prelude's report, the deadline,
/// the output cap or the container's exit. `Some(why)` in the second place: the
/// session cannot go on (the outcome says how the cell ended).
async fn run_cell(
    engine: &Engine,
    warm: &mut Warm,
    policy: &Policy,
    code: &str,
    due: Instant,
) -> Result<(Outcome, Option<String>), SandboxError> {
    let due = tokio::time::Instant::from_std(due);
    let max_out = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let max_err = max_out.saturating_add(STDERR_SLACK);
    let nonce = warm.nonce.clone();
    // Output written since the last report was written outside any cell.
    if let Some(pending) = futures_util::FutureExt::now_or_never(warm.output.next()) {
        let why = match pending {
            None => "its container exited between cells",
            Some(_) => "its container wrote output between cells",
        };
        let mut o = Outcome::blank(Tier::Docker);
        o.end(Status::Crashed, ErrorKind::ProtocolError, format!("the session's {why}; it was removed"));
        return Ok((o, Some(format!("the session's {why}"))));
    }
    let text = request_text(policy, code);
    let framed = format!("{}\n{text}", text.len());
    let written = tokio::time::timeout_at(due, warm.input.write_all(framed.as_bytes())).await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status_marker = format!("\n{nonce} {{");
    let end_marker = stdout_end(&nonce);
    let (mut status, mut status_seen, mut end_seen) = (StatusWatch::default(), false, false);
    let mut ended = if written.is_err() { Ended::Timeout } else { Ended::Exited };
    while written.is_ok() {
        match tokio::time::timeout_at(due, warm.output.next()).await {
            Err(_) => {
                ended = Ended::Timeout;
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(host(format!("the connection to a session's container broke: {e}"))),
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
    // Bytes after the end marker came with it: written past the report.
    let mut broken = None;
    if let Some(at) = find_from(&out, 0, end_marker.as_bytes()) {
        if out.len() > at + end_marker.len() {
            broken = Some("its container wrote output after a cell's report".to_string());
        }
        out.truncate(at);
    }
    if out.len() > max_out {
        out.truncate(max_out);
        ended = Ended::OutputFull;
    }
    if let (Ended::Reported, Some(at)) = (&ended, status.at) {
        let line = at + status_marker.len();
        let after = err[line..].iter().position(|b| *b == b'\n').map_or(err.len(), |nl| line + nl + 1);
        if err.len() > after {
            broken = Some("its container wrote output after a cell's report".to_string());
        }
    }
    let report = split_status(&String::from_utf8_lossy(&err), &nonce);
    let mut o = Outcome::blank(Tier::Docker);
    o.stdout = String::from_utf8_lossy(&out).into_owned();
    o.stderr = report.stderr;
    match ended {
        Ended::Timeout => o.end(
            Status::Timeout,
            ErrorKind::Timeout,
            format!("deadline of {}s exceeded", policy.timeout().as_secs_f64()),
        ),
        Ended::OutputFull => {
            o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output")
        }
        Ended::Exited => {
            let state = engine.inspect(&warm.id).await?;
            if state.oom_killed {
                let memory = policy.sessions().max_memory;
                o.end(
                    Status::MemoryLimit,
                    ErrorKind::MemoryLimit,
                    format!("the session exceeded its memory limit of {memory} bytes"),
                );
            } else {
                let code = state.exit_code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
                apply_status(&mut o, None, code, false);
            }
            broken = broken.or_else(|| Some("its container exited".to_string()));
        }
        Ended::Reported => apply_status(&mut o, report.status_line.as_deref(), None, false),
    }
    apply_output_cap(&mut o, max_out);
    apply_denial(&mut o, report.denial.as_deref());
    Ok((o, broken))
}

/// Ends the session if a cell's future is dropped before the cell ended (its caller
/// went away): the watchdog then removes the container, which may still run it.
struct Abandoned(Option<Arc<Mutex<Watch>>>);

impl Abandoned {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            let mut w = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            w.busy = false;
            w.ended.get_or_insert_with(|| "a cell was abandoned by its caller before it ended".into());
        }
    }
}

fn idle_reason(limits: &SessionPolicy) -> String {
    format!("idle for {}s (sessions.idle_timeout)", limits.idle_timeout.as_secs_f64())
}

fn lifetime_reason(limits: &SessionPolicy) -> String {
    format!("reached its lifetime of {}s (sessions.max_lifetime)", limits.max_lifetime.as_secs_f64())
}

/// Removes the session's container once it has been idle too long or lived too
/// long (a running cell has its own deadline, capped at `expires`); ends when the
/// session is dropped.
async fn watchdog(
    watch: Arc<Mutex<Watch>>,
    engine: Engine,
    id: String,
    limits: SessionPolicy,
    expires: Instant,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let wake = {
            let mut w = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Ended elsewhere: its container is removed there too, but an
            // abandoned cell's session is ended only here (removal is idempotent).
            if w.ended.is_some() {
                break;
            }
            let now = Instant::now();
            let idle_end = w.last_used + limits.idle_timeout;
            if !w.busy && (now >= idle_end || now >= expires) {
                w.ended = Some(if now >= expires { lifetime_reason(&limits) } else { idle_reason(&limits) });
                break;
            }
            if w.busy { now + limits.idle_timeout.min(Duration::from_secs(1)) } else { idle_end.min(expires) }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = &mut stopped => return,
        }
    }
    if let Err(e) = engine.remove(&id).await {
        tracing::warn!(error = %e, "could not remove an idle session's container");
    }
}
