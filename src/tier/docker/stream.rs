//! One container's run: the request sent, its output read until the prelude's
//! report, the exit, the deadline or the output cap, and the container removed.

use super::*;

/// How reading a container's output ended.
pub(super) enum Ended {
    /// The prelude reported how the run ended.
    Reported,
    /// The container closed its output (it exited) without the prelude's report
    /// (or with only part of it).
    Exited,
    /// The deadline passed.
    Timeout,
    /// Output passed `max_output`.
    OutputFull,
    /// The host refused a host function call: the run is denied and ends now.
    Refused,
}

/// How answering a run's host calls went.
enum Answered {
    /// Every complete call was answered; the host took this long.
    Waited(Duration),
    /// The host refused a call (the run ends).
    Refused,
    /// The guest did not take a reply before the deadline.
    Late,
    /// The container's stdin is gone.
    Closed,
}

/// Removes a container when dropped, unless disarmed: the run that uses it was
/// abandoned before it could remove it itself.
pub(super) struct Reaper {
    engine: Option<Engine>,
    id: String,
}

impl Reaper {
    /// Removes container `id` unless disarmed first.
    pub(super) fn arm(engine: &Engine, id: &str) -> Reaper {
        Reaper { engine: Some(engine.clone()), id: id.to_string() }
    }

    pub(super) fn disarm(mut self) {
        self.engine = None;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.remove_detached(std::mem::take(&mut self.id), "the container of an abandoned run");
        }
    }
}

/// Resolves once `stop` is raised (a workspace's copy past its quota); never
/// without one.
pub(super) async fn raised(stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) {
    match stop {
        Some(s) => {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Sends the request to a ready container, collects its output until the prelude's
/// report, the container's exit, the deadline (counted from `delivered`) or the
/// output cap, and removes the container.
pub(super) async fn serve(
    engine: &Engine,
    w: Warm,
    policy: &Policy,
    req: &ExecRequest,
    delivered: Instant,
) -> Result<Outcome, SandboxError> {
    let Warm { id, nonce, mut input, mut output, stderr: mut err } = w;
    // A caller that stops waiting (an HTTP client that hangs up) drops this
    // future: the container is removed then, not left running past its deadline.
    let reaper = Reaper::arm(engine, &id);
    let due = tokio::time::Instant::from_std(delivered + policy.timeout());
    let max_out = usize::try_from(policy.max_output()).unwrap_or(usize::MAX);
    let max_err = max_out.saturating_add(STDERR_SLACK).saturating_add(call_room(policy, req.host.is_some()));
    let names = req.host.as_ref().map(crate::executor::HostLink::names).unwrap_or_default();
    let text = request_text_with(policy, &req.code, &names);
    // A run with host functions keeps stdin open for their replies.
    let calls = !names.is_empty();
    let write = async {
        if calls {
            input.write_all(framed(&text).as_bytes()).await
        } else {
            input.write_all(text.as_bytes()).await?;
            input.shutdown().await
        }
    };
    // A guest that stops reading is stopped by its deadline.
    let written = tokio::time::timeout_at(due, write).await;
    let (mut out, mut ended) = (Vec::new(), if written.is_err() { Ended::Timeout } else { Ended::Exited });
    let end_marker = stdout_end(&nonce);
    let mut answerer = Answerer::new(req.host.clone(), &nonce, err.len());
    if written.is_ok() {
        let caps = (max_out, max_err);
        let collected = collect(&mut output, &nonce, due, caps, (&mut out, &mut err), (&mut answerer, &mut input));
        // A workspace's copy past its quota stops the run (the sandbox says why).
        let stop = req.mount.as_ref().map(crate::workspace::Mount::stop_flag);
        let collected = tokio::select! {
            r = collected => r,
            () = raised(stop) => Ok((Ended::Refused, None)),
        };
        match collected {
            Ok((e, _)) => ended = e,
            Err(e) => {
                let _ = engine.remove(&id).await;
                return Err(host(format!("the connection to a container broke: {e}")));
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
        Ended::Reported | Ended::Timeout | Ended::OutputFull | Ended::Refused => None,
    };
    // A run cut short is killed and removed now; one that reported is removed in
    // the background (off the request's path; its process is exiting anyway),
    // unless it has a workspace: what it left is read only once nothing in the
    // container can still write to it.
    match ended {
        Ended::Timeout | Ended::OutputFull | Ended::Refused => engine.remove(&id).await?,
        _ if req.mount.is_some() => engine.remove(&id).await?,
        Ended::Reported | Ended::Exited => {
            let (engine, id) = (engine.clone(), id.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.remove(&id).await {
                    tracing::warn!(error = %e, "could not remove a finished container");
                }
            });
        }
    }
    reaper.disarm();
    let report = split_status(&String::from_utf8_lossy(&err), &nonce);
    let status_line = report.status_line;
    let mut o = Outcome::blank(Tier::Docker);
    o.stdout = String::from_utf8_lossy(&out).into_owned();
    o.stderr = report.stderr;
    match (ended, exit) {
        (Ended::Timeout, _) => o.end(
            Status::Timeout,
            ErrorKind::Timeout,
            format!("deadline of {}s exceeded", policy.timeout().as_secs_f64()),
        ),
        (Ended::OutputFull, _) => {
            o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output")
        }
        (Ended::Exited, Some(state)) => {
            let state = state?;
            if state.oom_killed && status_line.is_none() {
                o.end(
                    Status::MemoryLimit,
                    ErrorKind::MemoryLimit,
                    format!("the run exceeded its memory limit of {} bytes", policy.max_memory()),
                );
            } else {
                let code = state.exit_code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
                apply_status(&mut o, status_line.as_deref(), code, false);
            }
        }
        (Ended::Reported | Ended::Exited, _) => apply_status(&mut o, status_line.as_deref(), None, false),
        // The host's refusal, applied below.
        (Ended::Refused, _) => {}
    }
    apply_output_cap(&mut o, max_out);
    apply_denial(&mut o, report.denial.as_deref());
    // The host's own refusal of a call stands whatever the guest reported.
    apply_denial(&mut o, answerer.refused.as_deref());
    Ok(o)
}

/// Room on stderr for one host call line: the largest arguments the policy lets a
/// call carry, and the line around them.
pub(super) fn call_room(policy: &Policy, calls: bool) -> usize {
    let largest = policy.functions().values().map(|f| f.max_arg_bytes).max().unwrap_or(0);
    if calls { usize::try_from(largest).unwrap_or(usize::MAX).saturating_add(4096) } else { 0 }
}

/// Answers a run's host calls as the prelude's call lines arrive on stderr: each
/// line is taken out of stderr (it is not the guest's output), checked and
/// answered by the host, and its reply written to the container's stdin.
pub(super) struct Answerer {
    host: Option<crate::executor::HostLink>,
    lines: CallLines,
    /// The host's refusal of a call: the run is denied with it.
    pub(super) refused: Option<String>,
    /// The deadline never moves past this (a session's lifetime).
    pub(super) latest: Option<tokio::time::Instant>,
}

impl Answerer {
    pub(super) fn new(host: Option<crate::executor::HostLink>, nonce: &str, from: usize) -> Answerer {
        Answerer { host, lines: CallLines::new(nonce, from), refused: None, latest: None }
    }

    /// Answers every complete call line in `err`. A reply the guest does not take
    /// by the run's deadline (`due`, moved by the host's wait) ends the run; so
    /// does a refusal (the guest, which may ignore it, gets no more answers).
    async fn answer_all(&mut self, err: &mut Vec<u8>, input: &mut Input, due: tokio::time::Instant) -> Answered {
        let mut waited = Duration::ZERO;
        while let Some((call, _)) = self.lines.take(err) {
            let asked = Instant::now();
            let reply = answer_line(call, self.host.as_ref()).await;
            if let crate::executor::CallReply::Refused(why) = reply {
                self.refused.get_or_insert(why);
                return Answered::Refused;
            }
            waited += asked.elapsed();
            let by = self.latest.map_or(due + waited, |l| l.min(due + waited));
            let frame = call_reply_frame(&reply);
            let write = async {
                input.write_all(frame.as_bytes()).await?;
                input.flush().await
            };
            match tokio::time::timeout_at(by, write).await {
                Err(_) => return Answered::Late,
                Ok(Err(_)) => return Answered::Closed,
                Ok(Ok(())) => {}
            }
        }
        Answered::Waited(waited)
    }
}

/// Reads a container's output into `out` and `err` (stdout and stderr) until the
/// prelude's report (stderr's status line and stdout's end marker, which the
/// prelude writes last), the container's exit, `due`, or the caps (`max_out`,
/// `max_err`). Also gives where the last status line starts in `err`.
///
/// # Errors
/// The stream's, when the connection to the engine breaks.
pub(super) async fn collect(
    output: &mut Output,
    nonce: &str,
    mut due: tokio::time::Instant,
    (max_out, max_err): (usize, usize),
    (out, err): (&mut Vec<u8>, &mut Vec<u8>),
    (answerer, input): (&mut Answerer, &mut Input),
) -> Result<(Ended, Option<usize>), bollard::errors::Error> {
    let status_marker = format!("\n{nonce} {{");
    let end_marker = stdout_end(nonce);
    let (mut status, mut status_seen, mut end_seen) = (StatusWatch::default(), false, false);
    loop {
        match tokio::time::timeout_at(due, output.next()).await {
            Err(_) => return Ok((Ended::Timeout, status.at)),
            Ok(None) => return Ok((Ended::Exited, status.at)),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                let from = err.len();
                if append_capped(err, &message, max_err) {
                    return Ok((Ended::OutputFull, status.at));
                }
                // Host calls first: their lines leave stderr, and the run's
                // deadline moves by the time the host took.
                match answerer.answer_all(err, input, due).await {
                    Answered::Waited(waited) => due = answerer.latest.map_or(due + waited, |l| l.min(due + waited)),
                    Answered::Refused => return Ok((Ended::Refused, status.at)),
                    Answered::Late => return Ok((Ended::Timeout, status.at)),
                    Answered::Closed => return Ok((Ended::Exited, status.at)),
                }
                let from = from.min(answerer.lines.scanned);
                status_seen = status.complete(err, from, status_marker.as_bytes());
            }
            Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                let from = out.len();
                // The end marker may take the cap's last bytes.
                if append_capped(out, &message, max_out.saturating_add(end_marker.len())) {
                    return Ok((Ended::OutputFull, status.at));
                }
                end_seen = end_seen || find_from(out, from, end_marker.as_bytes()).is_some();
            }
            Ok(Some(Ok(_))) => {}
        }
        if status_seen && end_seen {
            return Ok((Ended::Reported, status.at));
        }
    }
}

/// Where `needle` first occurs in `buf`, searching from a little before `from` (so
/// that a needle split across chunks is found).
pub(super) fn find_from(buf: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let start = from.saturating_sub(needle.len());
    buf[start..].windows(needle.len()).position(|w| w == needle).map(|p| p + start)
}

/// Follows the prelude's status line on a growing stderr: where its last marker
/// is, and whether the newline that ends it has arrived.
#[derive(Default)]
pub(super) struct StatusWatch {
    pub(super) at: Option<usize>,
}

impl StatusWatch {
    /// Call after stderr grew from `from` bytes; true once the last status line is
    /// complete.
    pub(super) fn complete(&mut self, err: &[u8], from: usize, marker: &[u8]) -> bool {
        let start = from.saturating_sub(marker.len());
        if let Some(p) = err[start..].windows(marker.len()).rposition(|w| w == marker) {
            self.at = Some(start + p);
        }
        self.at.is_some_and(|at| err[at + marker.len()..].contains(&b'\n'))
    }
}

/// Appends up to `cap` bytes in all; true when `chunk` did not fit.
/// How reading a container's output stream ended.
pub(super) enum StreamEnd {
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
pub(super) async fn read_to_end(
    mut output: Output,
    until: tokio::time::Instant,
    cap: usize,
) -> (Vec<u8>, Vec<u8>, StreamEnd) {
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

pub(super) fn append_capped(buf: &mut Vec<u8>, chunk: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    chunk.len() > room
}
