//! Alerts: the events that need a human (a breaker opened, an emergency stop,
//! denials above a rate, an approval requested, integrity drift, the audit log
//! behind or its chain broken) sent to the operator's notifiers, the policy's
//! `alerts` section: a webhook (a JSON POST) and a command (the alert as JSON on
//! its stdin).
//!
//! The [`Alerter`] watches the audit log ([`crate::audit::Watcher`]): whatever is
//! recorded, by any part of Terrarium, is seen here, and only there.
//!
//! # Invariants
//! - Alerting never slows or stops the work it reports: an event is handed to a
//!   bounded queue on the recording thread and delivered by a thread of its own;
//!   when the queue is full the event is counted and the count goes with the next
//!   alert delivered, never waited for.
//! - At most one alert of a kind per `min_interval`; the ones held back in between
//!   are not lost: the latest is delivered when the interval ends, with how many
//!   it stands for (`suppressed`).
//! - The webhook is called through a breaker of its own with the `api` breaker's
//!   settings (a dead receiver costs a fast refusal once it opens, and never opens
//!   the breaker the docker engine is reached through), retried with backoff (1 s,
//!   2 s, 4 s…) up to `attempts`; the command runs without a shell, its stdin
//!   written by a thread of its own, for at most 10 s, and is killed after. An
//!   alert is at most 16 KiB (longer text is cut). Every delivery that fails in
//!   the end is logged (tracing).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::audit::{Event, EventKind, Watcher};
use crate::breaker::Breaker;
use crate::policy::AlertPolicy;

/// Events waiting for the delivery thread, at most.
const QUEUE: usize = 1024;
/// The longest a notifier command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// The most denials one minute's window counts (memory is bounded by it).
const DENIAL_WINDOW: usize = 10_000;
/// The largest alert sent, bytes.
const MAX_ALERT: usize = 16 << 10;
/// The longest a webhook call may take.
const WEBHOOK_LIMIT: Duration = Duration::from_secs(10);

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A circuit breaker opened: a dependency keeps failing.
    BreakerOpen,
    /// An operator stopped the deployment.
    EmergencyStop,
    /// More denials (refused snippets, seccomp kills, refused calls) in a minute
    /// than the policy's `denials_per_minute`.
    Denials,
    /// A critical operation waits for a human.
    ApprovalRequested,
    /// A workspace's live files changed behind Terrarium's back.
    IntegrityDrift,
    /// The audit log is too far behind: new work is refused.
    AuditBehind,
    /// The audit log did not match its head when opened.
    AuditChainBreak,
}

/// One alert, as notifiers receive it (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// One line for a human.
    pub summary: String,
    /// When it happened (µs since the epoch).
    pub at_us: i64,
    /// What the alert is about: the audit event's data, or (for stops, denials
    /// and approvals) its ids, counts and reasons without any snippet's code.
    pub data: serde_json::Value,
    /// Alerts of this kind held back by the rate limit since the last one
    /// delivered; this one stands for them too.
    pub suppressed: u64,
    /// Events that could not be queued (the queue was full) since the last alert
    /// delivered, of any kind.
    pub dropped: u64,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Watches the audit log and sends what needs a human to the notifiers.
pub struct Alerter {
    tx: SyncSender<Alert>,
    dropped: Arc<AtomicU64>,
    /// When each denial of the last minute happened.
    denials: Mutex<VecDeque<Instant>>,
    denials_per_minute: usize,
}

impl Alerter {
    /// Starts the delivery thread for `policy`'s notifiers; the webhook goes
    /// through `breaker` (one of its own, with the `api` breaker's settings: a dead
    /// receiver must not open the breaker the docker engine is reached through).
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(policy: AlertPolicy, breaker: Option<Breaker>) -> std::io::Result<Alerter> {
        let api = breaker;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let denials_per_minute = usize::try_from(policy.denials_per_minute).unwrap_or(usize::MAX);
        std::thread::Builder::new().name("terrarium-alerts".into()).spawn(move || {
            Delivery { policy, api, dropped: counter, last: HashMap::new(), held: HashMap::new() }.run(rx)
        })?;
        Ok(Alerter { tx, dropped, denials: Mutex::new(VecDeque::new()), denials_per_minute })
    }

    fn send(&self, kind: AlertKind, summary: String, data: serde_json::Value) {
        let alert = Alert { kind, summary, at_us: now_us(), data, suppressed: 0, dropped: 0 };
        match self.tx.try_send(alert) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a denial; the number in the last minute when it passes the rate.
    fn denial(&self) -> Option<usize> {
        let now = Instant::now();
        let mut d = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        while d.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            d.pop_front();
        }
        d.push_back(now);
        // Bounded: past DENIAL_WINDOW in a minute, the count is reported as that.
        while d.len() > DENIAL_WINDOW.max(self.denials_per_minute + 1) {
            d.pop_front();
        }
        (d.len() > self.denials_per_minute).then_some(d.len())
    }
}

impl Watcher for Alerter {
    fn recorded(&self, event: &Event) {
        let d = &event.data;
        let text = |k: &str| d.get(k).and_then(serde_json::Value::as_str).unwrap_or("?").to_string();
        match event.kind {
            EventKind::Breaker if d.get("to").and_then(serde_json::Value::as_str) == Some("open") => {
                let summary = format!("breaker {} opened: {}", text("breaker"), text("reason"));
                self.send(AlertKind::BreakerOpen, summary, d.clone());
            }
            EventKind::EmergencyStop => {
                let runs = d.get("runs").and_then(serde_json::Value::as_array).map_or(0, Vec::len);
                let summary = format!("emergency stop by {}: {} ({runs} runs in flight)", text("by"), text("reason"));
                // Counts and ids, not the approvals' subjects (snippets' code stays
                // in the audit log).
                let count = |k: &str| d.get(k).and_then(serde_json::Value::as_array).map_or(0, Vec::len);
                let data = serde_json::json!({
                    "by": d.get("by"), "reason": d.get("reason"), "runs": runs, "sessions": count("sessions"),
                    "approvals": count("approvals"), "workspace_changes": d.get("workspace_changes"),
                });
                self.send(AlertKind::EmergencyStop, summary, data);
            }
            EventKind::Denial => {
                if let Some(n) = self.denial() {
                    let summary = format!("{n} denials in the last minute (more than {})", self.denials_per_minute);
                    let latest = serde_json::json!({
                        "request_id": event.request_id, "tier": d.get("tier"), "caller": d.get("caller"),
                        "kind": d.get("error").and_then(|e| e.get("type")),
                    });
                    let data = serde_json::json!({"in_last_minute": n, "latest": latest});
                    self.send(AlertKind::Denials, summary, data);
                }
            }
            EventKind::ApprovalRequested => {
                // Which item waits and until when; not its reason or subject (they
                // may name a command's arguments or hold the code).
                let summary = format!(
                    "approval request {} ({}) waits for a decision",
                    d.get("id").unwrap_or(&serde_json::Value::Null),
                    text("kind")
                );
                let data =
                    serde_json::json!({"id": d.get("id"), "kind": d.get("kind"), "deadline_us": d.get("deadline_us")});
                self.send(AlertKind::ApprovalRequested, summary, data);
            }
            EventKind::WorkspaceDrift => {
                let summary = format!("workspace {} drifted from its current version", text("workspace"));
                self.send(AlertKind::IntegrityDrift, summary, d.clone());
            }
            EventKind::ChainBreak => {
                self.send(AlertKind::AuditChainBreak, "the audit log did not match its head".into(), d.clone());
            }
            _ => {}
        }
    }

    fn behind(&self, backlog: usize) {
        let summary = format!("the audit log is {backlog} events behind: new work is refused");
        self.send(AlertKind::AuditBehind, summary, serde_json::json!({ "backlog": backlog }));
    }
}

/// The delivery thread's state.
struct Delivery {
    policy: AlertPolicy,
    api: Option<Breaker>,
    dropped: Arc<AtomicU64>,
    /// When each kind was last delivered.
    last: HashMap<AlertKind, Instant>,
    /// Per kind, the latest alert held back and how many it stands for.
    held: HashMap<AlertKind, (Alert, u64)>,
}

impl Delivery {
    fn run(mut self, rx: Receiver<Alert>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(alert) => self.offer(alert),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.flush_held(true);
                    return;
                }
            }
            self.flush_held(false);
        }
    }

    /// Delivers `alert` now, or holds it when its kind was delivered within
    /// `min_interval`.
    fn offer(&mut self, alert: Alert) {
        let kind = alert.kind;
        let recent = self.last.get(&kind).is_some_and(|t| t.elapsed() < self.policy.min_interval);
        if recent {
            let count = self.held.remove(&kind).map_or(0, |(_, n)| n);
            self.held.insert(kind, (alert, count + 1));
        } else {
            self.deliver(alert);
        }
    }

    /// Delivers each held alert whose interval ended (all of them at the end).
    fn flush_held(&mut self, all: bool) {
        let due: Vec<AlertKind> = self
            .held
            .keys()
            .filter(|k| all || self.last.get(k).is_none_or(|t| t.elapsed() >= self.policy.min_interval))
            .copied()
            .collect();
        for kind in due {
            if let Some((mut alert, count)) = self.held.remove(&kind) {
                alert.suppressed = count.saturating_sub(1);
                self.deliver(alert);
            }
        }
    }

    fn deliver(&mut self, mut alert: Alert) {
        self.last.insert(alert.kind, Instant::now());
        alert.dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut body = serde_json::to_vec(&alert).unwrap_or_default();
        if body.len() > MAX_ALERT {
            // Cut: the summary kept (to 1 KiB), the data replaced by its size.
            alert.summary = alert.summary.chars().take(1024).collect();
            alert.data = serde_json::json!({ "cut": true, "bytes": body.len() });
            body = serde_json::to_vec(&alert).unwrap_or_default();
        }
        if let Some(url) = &self.policy.webhook
            && let Err(e) = self.webhook(url, &body)
        {
            tracing::error!(kind = ?alert.kind, error = %e, "an alert could not be delivered to the webhook");
        }
        if let Some(argv) = &self.policy.command
            && let Err(e) = run_command(argv, &body)
        {
            tracing::error!(kind = ?alert.kind, error = %e, "an alert's command failed");
        }
    }

    /// POSTs `body` to `url`, through the `api` breaker, retrying with backoff.
    fn webhook(&self, url: &str, body: &[u8]) -> Result<(), String> {
        let (authority, path) = crate::policy::webhook_target(url)?;
        let mut last = String::new();
        for attempt in 0..self.policy.attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << (attempt - 1).min(5)));
            }
            let call = || post(&authority, &path, body);
            let r = match &self.api {
                Some(b) => b.guard(call).map_err(|open| open.to_string()).and_then(|r| r),
                None => call(),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!("{} attempts failed; the last: {last}", self.policy.attempts))
    }
}

/// One JSON POST; any answer but 2xx is a failure.
fn post(authority: &str, path: &str, body: &[u8]) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, WEBHOOK_LIMIT).map_err(|e| format!("{authority}: {e}"))?;
    s.set_read_timeout(Some(WEBHOOK_LIMIT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(WEBHOOK_LIMIT)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         User-Agent: terrarium-alerts\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| format!("{authority}: {e}"))?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).map_err(|e| format!("{authority}: no answer: {e}"))?;
    let code = std::str::from_utf8(&status[9..12]).ok().and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("{authority} answered {c}")),
        None => Err(format!("{authority}: not an HTTP answer")),
    }
}

/// Runs `argv` (no shell) with `body` on its stdin, for at most [`COMMAND_LIMIT`].
fn run_command(argv: &[String], body: &[u8]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("an empty command")?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let until = Instant::now() + COMMAND_LIMIT;
    // Written by a thread of its own: a notifier that never reads cannot hold the
    // delivery thread (it is killed at the limit, which ends the write).
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = body.to_vec();
        text.push(b'\n');
        let _ = std::thread::Builder::new().name("terrarium-alert-stdin".into()).spawn(move || {
            let _ = stdin.write_all(&text);
        });
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited {status}")),
            Ok(None) if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} ran past {} s and was killed", COMMAND_LIMIT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    }
}
