//! Sessions on the docker tier: one hardened container kept for a session's cells.
//! The prelude runs in session mode: after each report it reads the next cell
//! (framed by its length) and runs it in the same globals.
//!
//! # Security invariants
//! - The container is the policy's, with the session's memory cap; it serves no
//!   other session or run.
//! - The container is frozen (paused) between cells: nothing a cell left behind (a
//!   thread, a child process) runs or writes outside a cell's window, and each
//!   window ends at the host's deadline. Within a window the snippet controls
//!   CPython, markers included: what it reports then (early, or for its own later
//!   cells) is the guest's word in its own session.
//! - The host decides every end: a cell's deadline, an output past its cap, or a
//!   container that exits ends the session and removes the container before the
//!   cell's outcome returns; so does output written outside a cell (between a
//!   report and the freeze, or after the report in the same chunk). Idle and
//!   expired sessions' containers are removed by a watchdog; a dropped session's
//!   container is removed in the background.

use super::*;
use crate::executor::{CellInfo, Lifecycle, TierSession, end_reason};

pub(super) struct DockerSession {
    policy: Policy,
    engine: Engine,
    /// The container, until the session ends.
    warm: Option<Warm>,
    cells: u64,
    life: Lifecycle,
    _stop: tokio::sync::oneshot::Sender<()>,
    /// Freezing the container after the last cell (off that cell's path: the
    /// engine takes milliseconds); the next cell waits for it first.
    freezing: Option<tokio::task::JoinHandle<Result<(), SandboxError>>>,
    /// With a workspace mounted: raised when its copy is past the quota.
    workspace_stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl DockerExecutor {
    /// Starts a session's container (see the module docs).
    /// `mount`: a workspace's copy bound at `/workspace` for every cell; the
    /// container is then frozen before each cell's outcome returns (the copy is
    /// read between cells), and a copy past its quota ends the cell and the session.
    pub(super) async fn start_session(
        &self,
        mount: Option<crate::workspace::Mount>,
    ) -> Result<DockerSession, SandboxError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(host("the docker executor was shut down"));
        }
        let engine = shared.engine().await?;
        let policy = shared.policy.for_session();
        let n = nonce();
        let launch = Launch {
            cmd: engine::prelude_cmd_with(
                PRELUDE,
                &n,
                &preload(&policy),
                mount.as_ref().map(|_| "workspace"),
                "mark session",
            ),
            scratch: false,
            workspace: mount.clone(),
            labels: shared.labels(),
        };
        let warm = start_container(&engine, &policy, &launch, &n).await?;
        // Until the session holds it, a dropped start removes the container.
        let reaper = super::stream::Reaper::arm(&engine, &warm.id);
        // Frozen between cells: nothing the session's code left behind (a thread, a
        // child process) runs or writes outside a cell's window.
        if let Err(e) = engine.pause(&warm.id).await {
            let _ = engine.remove(&warm.id).await;
            return Err(e);
        }
        let life = Lifecycle::new(policy.sessions().clone());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        // Removes the container once the session ended by any route (idle,
        // lifetime, an abandoned cell, its caller: removal is idempotent); gone
        // with the session otherwise (which removes it itself).
        let (watched, e, id) = (life.clone(), engine.clone(), warm.id.clone());
        tokio::spawn(async move {
            if watched.watch(stopped).await.is_some()
                && let Err(err) = e.remove(&id).await
            {
                tracing::warn!(error = %err, "could not remove an ended session's container");
            }
        });
        reaper.disarm();
        Ok(DockerSession {
            policy: shared.policy.clone(),
            engine,
            warm: Some(warm),
            cells: 0,
            life,
            _stop: stop,
            freezing: None,
            workspace_stop: mount.as_ref().map(crate::workspace::Mount::stop_flag),
        })
    }
}

impl DockerSession {
    async fn cell(&mut self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let started = Instant::now();
        if let Some(why) = self.life.refuse(started) {
            self.discard();
            return Err(SandboxError::SessionEnded(why));
        }
        let policy = match admit(&self.policy, &req, Tier::Docker)? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        if self.warm.is_none() {
            return Err(SandboxError::SessionEnded("the session has no container".into()));
        }
        // The container froze after the last cell (or is about to): nothing of it
        // ran since. One that could not be frozen ends the session.
        if let Some(freezing) = self.freezing.take() {
            let frozen = freezing.await.unwrap_or_else(|e| Err(host(format!("freezing a container failed: {e}"))));
            if let Err(e) = frozen {
                let why = format!("its container could not be frozen between cells: {e}");
                self.end(&why);
                return Err(SandboxError::SessionEnded(why));
            }
        }
        self.cells += 1;
        let running = self.life.begin_cell();
        let due = (started + policy.timeout()).min(self.life.expires);
        let ran = match self.warm.as_mut() {
            Some(warm) => {
                let stop = self.workspace_stop.clone();
                run_cell(&self.engine, warm, &policy, &req, (due, self.life.expires), stop).await
            }
            None => Err(host("the session lost its container")),
        };
        running.finish();
        let (mut outcome, broken) = match ran {
            Ok(r) => r,
            Err(e) => {
                self.end(&e.to_string());
                return Err(e);
            }
        };
        let why = broken.or_else(|| end_reason(&outcome, self.cells, policy.sessions(), true));
        if let Some(why) = &why {
            // Removed before the cell's outcome returns (a cell cut at a limit may
            // still be running in it).
            self.life.end(why);
            if let Some(w) = self.warm.take() {
                self.engine.remove(&w.id).await?;
            }
        }
        // Frozen again, from now until the next cell's window: whatever this cell
        // left running (a thread, a child process) stops. What it does in a later
        // window, a forged report included, is the guest's word in its own session;
        // each window still ends at the host's deadline.
        if why.is_none()
            && let Some(w) = &self.warm
        {
            let (engine, id) = (self.engine.clone(), w.id.clone());
            self.freezing = Some(tokio::spawn(async move { engine.pause(&id).await }));
            // A workspace's copy is read once the cell returns: frozen first.
            if self.workspace_stop.is_some()
                && let Some(freezing) = self.freezing.take()
            {
                let frozen = freezing.await.unwrap_or_else(|e| Err(host(format!("freezing a container failed: {e}"))));
                if let Err(e) = frozen {
                    let why = format!("its container could not be frozen after a cell: {e}");
                    self.end(&why);
                    outcome.session = Some(CellInfo { cell: self.cells, ended: Some(why), fuel: None });
                }
            }
        }
        outcome.id = req.id;
        outcome.usage.wall_ms = millis(started.elapsed());
        outcome.session = Some(CellInfo { cell: self.cells, ended: why, fuel: None });
        Ok(outcome)
    }

    /// Removes the container in the background (the session has ended).
    fn discard(&mut self) {
        if let Some(w) = self.warm.take() {
            self.engine.remove_detached(w.id, "a session's container");
        }
    }
}

crate::executor::tier_session!(DockerSession);

impl Drop for DockerSession {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Sends one cell and reads its output until the prelude's report, the deadline,
/// the output cap or the container's exit. `Some(why)` in the second place: the
/// session cannot go on (the outcome says how the cell ended).
async fn run_cell(
    engine: &Engine,
    warm: &mut Warm,
    policy: &Policy,
    req: &ExecRequest,
    (due, expires): (Instant, Instant),
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<(Outcome, Option<String>), SandboxError> {
    let due = tokio::time::Instant::from_std(due);
    let max_out = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let max_err = max_out.saturating_add(STDERR_SLACK).saturating_add(call_room(policy, req.host.is_some()));
    let nonce = warm.nonce.clone();
    // Output that arrived since the last report (written before the container was
    // frozen) was written outside any cell.
    if let Some(pending) = futures_util::FutureExt::now_or_never(warm.output.next()) {
        let why = match pending {
            None => "its container exited between cells",
            Some(_) => "its container wrote output between cells",
        };
        let mut o = Outcome::blank(Tier::Docker);
        o.end(Status::Crashed, ErrorKind::ProtocolError, format!("{why}; the session's container was removed"));
        return Ok((o, Some(why.to_string())));
    }
    engine.unpause(&warm.id).await?;
    let names = req.host.as_ref().map(crate::executor::HostLink::names).unwrap_or_default();
    let text = framed(&request_text_with(policy, &req.code, &names));
    let written = tokio::time::timeout_at(due, warm.input.write_all(text.as_bytes())).await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status_marker = format!("\n{nonce} {{");
    let end_marker = stdout_end(&nonce);
    let (mut ended, mut status_at) = (if written.is_err() { Ended::Timeout } else { Ended::Exited }, None);
    let mut answerer = Answerer::new(req.host.clone(), &nonce, 0);
    answerer.latest = Some(tokio::time::Instant::from_std(expires));
    if written.is_ok() {
        let caps = (max_out, max_err);
        let calls = (&mut answerer, &mut warm.input);
        let collected = collect(&mut warm.output, &nonce, due, caps, (&mut out, &mut err), calls);
        // A workspace's copy past its quota stops the cell (the sandbox says why).
        (ended, status_at) = tokio::select! {
            r = collected => r.map_err(|e| host(format!("the connection to a session's container broke: {e}")))?,
            () = super::stream::raised(stop) => (Ended::Refused, None),
        };
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
    if let (Ended::Reported, Some(at)) = (&ended, status_at) {
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
        // The host refused a call: the cell is denied (below), the container goes.
        Ended::Refused => {
            broken = broken.or_else(|| {
                Some("the host stopped the cell (a refused host function call, or a workspace past its quota); its container was removed".into())
            });
        }
    }
    apply_output_cap(&mut o, max_out);
    apply_denial(&mut o, report.denial.as_deref());
    apply_denial(&mut o, answerer.refused.as_deref());
    Ok((o, broken))
}
