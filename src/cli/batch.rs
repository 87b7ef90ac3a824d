//! `terrarium batch`: JSON lines in, one outcome per line out, in input order.
//! Lines run concurrently, one per core, except the cells of one session
//! (`"session": "NAME"`), which run in input order in that session's state.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{CliError, EXIT_HOST, Target, flush_audit, json_line, local_caller, local_runtime, target};
use crate::error::SandboxError;
use crate::executor::{ErrorKind, ExecRequest, Outcome, Status};
use crate::sandbox::SessionOptions;

use super::args::BatchArgs;

/// The longest session name a line may give.
const MAX_SESSION_NAME: usize = 128;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    id: Option<serde_json::Value>,
    code: String,
    timeout: Option<f64>,
    /// A smaller fuel budget than the batch's.
    fuel: Option<u64>,
    scratch: Option<bool>,
    workspace: Option<String>,
    /// Runs the line as the next cell of the session of this name (started on its
    /// first line, ended when the batch ends or a cell ends it).
    session: Option<String>,
}

/// One line of input.
enum Line {
    /// Its bytes, without the newline.
    Text(Vec<u8>),
    /// Over the length cap: skipped to its newline, never held.
    TooLong,
    /// The end of input.
    End,
}

/// The next line of `input`, at most `max` bytes held; `Ok(None)` at the end.
fn read_line(input: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Some(Line::TooLong),
                (false, true) => None,
                (false, false) => Some(Line::Text(line)),
            });
        }
        let (chunk, newline) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        if !too_long && line.len().saturating_add(chunk.len()) > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            return Ok(Some(if too_long { Line::TooLong } else { Line::Text(line) }));
        }
    }
}

/// A cell for a session's queue, and where its outcome goes.
type Cell = (ExecRequest, oneshot::Sender<Outcome>);

pub(super) fn run_batch(args: BatchArgs) -> Result<ExitCode, CliError> {
    let target = Arc::new(target(&args.common, true)?);
    let rt = local_runtime()?;
    // Requests run concurrently, one per core; outcomes are written in input order.
    let in_flight = std::thread::available_parallelism().map_or(2, |n| n.get());
    let write_err =
        |e: std::io::Error| CliError { code: EXIT_HOST, error: anyhow::anyhow!("cannot write stdout: {e}") };
    // Lines are read on their own thread, so outcomes are written as soon as they
    // end even while the caller has not sent the next line.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Line>>(in_flight * 2);
    // A line may hold the largest code the policy allows, JSON-escaped (two bytes
    // for a newline or a quote), and the fields around it; longer ones are refused
    // without being held.
    let max_line = usize::try_from(target.sandbox.policy().max_code_size())
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .saturating_add(64 << 10);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        loop {
            let line = read_line(&mut input, max_line);
            let end = matches!(line, Ok(None) | Err(_));
            if tx.blocking_send(line.transpose().unwrap_or(Ok(Line::End))).is_err() || end {
                break;
            }
        }
    });
    rt.block_on(async {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut queue: std::collections::VecDeque<tokio::task::JoinHandle<Outcome>> = std::collections::VecDeque::new();
        // Each session's cells, queued in input order to the task that runs them.
        let mut sessions: HashMap<String, mpsc::UnboundedSender<Cell>> = HashMap::new();
        let mut ended_sessions: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut number = 0;
        let mut input_open = true;
        // SIGINT or SIGTERM ends the batch cleanly: what is in flight is dropped
        // (a session's end is recorded as it goes) and the tiers' containers are
        // removed as the sandbox goes, instead of left to the next start-up.
        let stop = super::serve::stop_signal();
        tokio::pin!(stop);
        while input_open || !queue.is_empty() {
            tokio::select! {
                biased;
                () = &mut stop => {
                    for task in &queue {
                        task.abort();
                    }
                    for session in &ended_sessions {
                        session.abort();
                    }
                    return Err(CliError {
                        code: EXIT_HOST,
                        error: anyhow::anyhow!("stopped by a signal after {number} lines; outcomes not yet written are lost"),
                    });
                }
                done = async { queue.front_mut().expect("guarded by the condition").await }, if !queue.is_empty() => {
                    queue.pop_front();
                    let o = done.map_err(|e| CliError {
                        code: EXIT_HOST,
                        error: anyhow::anyhow!("a batch request failed: {e}"),
                    })?;
                    // Flushed per line: a caller streaming requests reads each outcome as it ends.
                    writeln!(out, "{}", json_line(&o)).map_err(write_err)?;
                    out.flush().map_err(write_err)?;
                }
                line = rx.recv(), if input_open && queue.len() < in_flight => match line {
                    None | Some(Ok(Line::End)) => {
                        input_open = false;
                        // No more cells: each session ends once its queue is done.
                        sessions.clear();
                    }
                    Some(Err(e)) => return Err(CliError::usage(anyhow::anyhow!("cannot read stdin: {e}"))),
                    Some(Ok(Line::TooLong)) => {
                        number += 1;
                        let msg = format!("line {number}: longer than {max_line} bytes; refused unread");
                        let bad = Outcome::refused(None, target.nominal_tier(), Status::Error, ErrorKind::InvalidRequest, msg);
                        queue.push_back(tokio::spawn(async move { bad }));
                    }
                    Some(Ok(Line::Text(line))) => {
                        number += 1;
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let task = match parse(&target, &line, number) {
                            Err(bad) => tokio::spawn(async move { *bad }),
                            Ok((req, None)) => {
                                let target = target.clone();
                                tokio::spawn(async move { run_one(&target, req, number).await })
                            }
                            Ok((req, Some(name))) => {
                                let cells = sessions.entry(name.clone()).or_insert_with(|| {
                                    let (tx, rx) = mpsc::unbounded_channel();
                                    ended_sessions.push(tokio::spawn(run_session(target.clone(), name, rx)));
                                    tx
                                });
                                let (done, outcome) = oneshot::channel();
                                let id = req.id.clone();
                                let nominal = target.nominal_tier();
                                let _ = cells.send((req, done));
                                tokio::spawn(async move {
                                    outcome.await.unwrap_or_else(|_| {
                                        let msg = format!("line {number}: the session's task stopped");
                                        Outcome::refused(id, nominal, Status::Error, ErrorKind::InvalidRequest, msg)
                                    })
                                })
                            }
                        };
                        queue.push_back(task);
                    }
                },
            }
        }
        drop(sessions);
        for s in ended_sessions {
            let _ = s.await;
        }
        Ok(())
    })?;
    flush_audit(&target);
    Ok(ExitCode::SUCCESS)
}

/// One line to a request (and the session it names), or the `error` outcome of a
/// bad line: a bad line never ends the batch.
fn parse(target: &Target, line: &[u8], number: usize) -> Result<(ExecRequest, Option<String>), Box<Outcome>> {
    let bad = |id: Option<String>, msg: String| {
        let msg = format!("line {number}: {msg}");
        Box::new(Outcome::refused(id, target.nominal_tier(), Status::Error, ErrorKind::InvalidRequest, msg))
    };
    let parsed: BatchLine = std::str::from_utf8(line)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
        .map_err(|e| bad(None, e))?;
    let id = parsed.id.map(|v| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    });
    let mut overrides = target.overrides.clone();
    if let Some(t) = parsed.timeout {
        let Some(d) = crate::policy::timeout_secs(t) else {
            return Err(bad(id, format!("timeout {t} is not a positive number of seconds")));
        };
        overrides.timeout = Some(d);
    }
    if let Some(f) = parsed.fuel {
        overrides.fuel = Some(f);
    }
    if let Some(name) = &parsed.session {
        if name.is_empty()
            || name.len() > MAX_SESSION_NAME
            || name.chars().any(|c| c.is_control() || crate::text::hidden(c).is_some())
        {
            return Err(bad(
                id,
                format!("session names are 1 to {MAX_SESSION_NAME} bytes without control or invisible characters"),
            ));
        }
        if parsed.scratch == Some(true) {
            return Err(bad(id, "a session's cells have no scratch directory".into()));
        }
        if parsed.workspace.is_some() {
            return Err(bad(id, "a session's cells have no workspace".into()));
        }
    }
    let req = ExecRequest {
        id,
        code: parsed.code,
        overrides,
        scratch: parsed.scratch.unwrap_or(false),
        tier: if parsed.session.is_some() { crate::policy::TierChoice::Auto } else { target.choice },
        caller: Some(local_caller()),
        host: None,
        workspace: parsed.workspace,
        mount: None,
    };
    Ok((req, parsed.session))
}

async fn run_one(target: &Target, req: ExecRequest, number: usize) -> Outcome {
    let (id, nominal) = (req.id.clone(), target.nominal_tier());
    target.sandbox.execute(req).await.unwrap_or_else(|e| {
        Outcome::refused(id, nominal, Status::Error, ErrorKind::InvalidRequest, format!("line {number}: {e}"))
    })
}

/// Runs one session's cells in order: the session starts with its first cell (on
/// the batch's `--tier`) and ends when its queue closes.
async fn run_session(target: Arc<Target>, name: String, mut cells: mpsc::UnboundedReceiver<Cell>) {
    let options = SessionOptions { tier: target.choice, caller: Some(local_caller()), workspace: None };
    let mut session = match target.sandbox.session(options).await {
        Ok(s) => Some(s),
        Err(e) => {
            // Every cell of it gets the reason, and is recorded refused.
            let why = format!("session {name:?} could not start: {}", crate::error::redact_paths(&e.to_string()));
            while let Some((req, done)) = cells.recv().await {
                let id = req.id.clone();
                let refusal = target.sandbox.record_refused(req, SandboxError::InvalidRequest(why.clone())).await;
                let (tier, msg) = (target.nominal_tier(), refusal.to_string());
                let _ = done.send(Outcome::refused(id, tier, Status::Error, ErrorKind::InvalidRequest, msg));
            }
            return;
        }
    };
    // Why the session ended while it waited for a cell (idle, lifetime): it is
    // dropped then, which records its end and frees its slot among the open ones.
    let mut gone: Option<String> = None;
    loop {
        let next = tokio::select! {
            next = cells.recv() => next,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(why) = session.as_ref().and_then(crate::sandbox::Session::ended) {
                    gone = Some(why);
                    session = None;
                }
                continue;
            }
        };
        let Some((req, done)) = next else { break };
        let id = req.id.clone();
        let o = match (session.as_mut(), &gone) {
            (Some(s), _) => s.execute(req).await,
            (None, Some(why)) => Err(target.sandbox.record_refused(req, SandboxError::SessionEnded(why.clone())).await),
            (None, None) => Err(SandboxError::SessionEnded("it was ended".into())),
        };

        let o = o.unwrap_or_else(|e| {
            let msg = format!("session {name:?}: {e}");
            Outcome::refused(id, target.nominal_tier(), Status::Error, ErrorKind::InvalidRequest, msg)
        });
        let _ = done.send(o);
    }
    if let Some(s) = session.take() {
        s.end("the batch ended");
    }
}
