//! Named circuit breakers, shared by every request of a process.
//!
//! A breaker guards one dependency (a tier's engine, the audit database, file I/O,
//! an API). It is **closed** while the dependency works; after `failure_threshold`
//! consecutive host faults it **opens** and calls fail fast without touching the
//! dependency; after `recovery_timeout` it lets exactly one trial call through
//! (**half-open**): success closes it, failure opens it again for another
//! `recovery_timeout`.
//!
//! The module knows nothing of the rest of the crate: what counts as a fault is the
//! [`Fault`] of the error a call returns, and the settings come from whoever builds
//! the breaker (the policy's `resilience.circuit_breaker` section).
//!
//! # Invariant
//! Only host faults count. A guest's exception, a limit or a denial is the sandbox
//! working, not the dependency failing; callers report those as successes. Every
//! transition is logged (`tracing`, target `terrarium::breaker`), and with
//! `log_failures` so is every failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One circuit breaker's settings (`resilience.circuit_breaker.NAME` in a policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Consecutive host faults that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker waits before one trial.
    pub recovery_timeout: Duration,
    /// Whether every failure is logged.
    pub log_failures: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { failure_threshold: 3, recovery_timeout: Duration::from_secs(60), log_failures: true }
    }
}

/// What an error says about the dependency behind a breaker: a host fault (the
/// dependency failed: counted) or anything else (a bad request, a refusal: the
/// dependency worked).
pub trait Fault {
    /// Whether this error is the dependency's fault.
    fn is_host_fault(&self) -> bool;
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "server", schema(as = BreakerState))]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls fail fast until the recovery timeout has passed.
    Open,
    /// One trial call is in flight; others fail fast.
    HalfOpen,
}

/// A breaker's state as `terrarium breakers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "server", schema(as = Breaker))]
pub struct Snapshot {
    /// The breaker's name (`api`, `database`, `file_io`, `docker`, …).
    pub name: String,
    /// Its state now (an open breaker whose timeout has passed shows `half_open`
    /// only once a trial has been let through).
    pub state: State,
    /// Consecutive host faults counted while closed.
    pub consecutive_failures: u32,
    /// Faults needed to open.
    pub failure_threshold: u32,
    /// Seconds an open breaker waits before a trial.
    pub recovery_timeout_secs: f64,
    /// Seconds until an open breaker lets a trial through (0 when not open).
    pub retry_in_secs: f64,
    /// Host faults since the process started.
    pub total_failures: u64,
    /// The last host fault's message.
    pub last_failure: Option<String>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    opened_at: Option<Instant>,
    total_failures: u64,
    last_failure: Option<String>,
}

/// A change of a breaker's state, as observers see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: String,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Why (the failure that opened it, or what the trial did).
    pub reason: String,
}

/// Called on every transition (after the breaker's lock is released).
pub type Observer = Arc<dyn Fn(&Transition) + Send + Sync>;

/// One circuit breaker. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Breaker {
    name: Arc<str>,
    settings: Settings,
    inner: Arc<Mutex<Inner>>,
    observer: Arc<OnceLock<Observer>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("name", &self.name).field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Permission to make one call through a breaker; report how it went with
/// [`Permit::succeeded`] or [`Permit::failed`]. A permit dropped without a report
/// (the caller was cancelled) counts as neither, and a half-open breaker goes back
/// to open so that another trial can be made after the timeout.
#[derive(Debug)]
#[must_use = "report the call's result with succeeded() or failed()"]
pub struct Permit {
    breaker: Breaker,
    trial: bool,
    reported: bool,
}

/// The call was refused: the breaker is open.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("breaker {name} open: {reason}; retry in {retry_in:.1}s")]
pub struct Open {
    /// The breaker's name.
    pub name: String,
    /// The last failure that kept it open.
    pub reason: String,
    /// Seconds until a trial call is allowed.
    pub retry_in: f64,
}

impl Breaker {
    /// A closed breaker named `name` with `settings`.
    pub fn new(name: &str, settings: Settings) -> Breaker {
        Breaker {
            name: name.into(),
            settings,
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                opened_at: None,
                total_failures: 0,
                last_failure: None,
            })),
            observer: Arc::new(OnceLock::new()),
        }
    }

    /// Sets the function told about every transition (once; later calls are
    /// ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, from: State, to: State, reason: &str) {
        if let Some(o) = self.observer.get() {
            o(&Transition { breaker: self.name.to_string(), from, to, reason: reason.to_string() });
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call.
    ///
    /// # Errors
    /// [`Open`] while the breaker is open, or half-open with its trial in flight.
    pub fn allow(&self) -> Result<Permit, Open> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Result<Permit, Open> {
        let mut g = self.lock();
        match g.state {
            State::Closed => Ok(Permit { breaker: self.clone(), trial: false, reported: false }),
            State::Open => {
                let opened = g.opened_at.unwrap_or(now);
                let waited = now.saturating_duration_since(opened);
                if waited >= self.settings.recovery_timeout {
                    g.state = State::HalfOpen;
                    drop(g);
                    tracing::info!(target: "terrarium::breaker", breaker = %self.name, "half-open: one trial call");
                    self.notify(State::Open, State::HalfOpen, "recovery timeout passed: one trial call");
                    Ok(Permit { breaker: self.clone(), trial: true, reported: false })
                } else {
                    Err(self.refusal(&g, self.settings.recovery_timeout - waited))
                }
            }
            State::HalfOpen => Err(self.refusal(&g, Duration::ZERO)),
        }
    }

    fn refusal(&self, g: &Inner, retry_in: Duration) -> Open {
        Open {
            name: self.name.to_string(),
            reason: g.last_failure.clone().unwrap_or_else(|| "earlier failures".into()),
            retry_in: retry_in.as_secs_f64(),
        }
    }

    fn record(&self, ok: bool, trial: bool, message: Option<&str>, now: Instant) {
        let mut g = self.lock();
        let from = g.state;
        if ok {
            g.state = State::Closed;
            g.consecutive = 0;
            g.opened_at = None;
            drop(g);
            if from != State::Closed {
                tracing::info!(target: "terrarium::breaker", breaker = %self.name, "closed: the trial call succeeded");
                self.notify(from, State::Closed, "the trial call succeeded");
            }
            return;
        }
        g.total_failures += 1;
        g.last_failure = message.map(str::to_string);
        if self.settings.log_failures {
            tracing::warn!(target: "terrarium::breaker", breaker = %self.name, error = message.unwrap_or(""), "failure");
        }
        let opens = match g.state {
            State::HalfOpen if trial => true,
            State::Closed => {
                g.consecutive += 1;
                g.consecutive >= self.settings.failure_threshold
            }
            // A call let through before the breaker opened, failing late: counted,
            // the breaker stays as it is.
            _ => false,
        };
        if !opens {
            return;
        }
        g.state = State::Open;
        g.opened_at = Some(now);
        drop(g);
        let why = if from == State::HalfOpen {
            "the trial call failed"
        } else {
            "consecutive failures reached the threshold"
        };
        tracing::warn!(
            target: "terrarium::breaker",
            breaker = %self.name,
            retry_in_secs = self.settings.recovery_timeout.as_secs_f64(),
            "open: {why}"
        );
        self.notify(from, State::Open, &format!("{why}: {}", message.unwrap_or("")));
    }

    /// Runs `call` through the breaker: refused at once while open; a host fault
    /// ([`Fault::is_host_fault`]) counts as a failure, anything else (an outcome
    /// of any status, a bad request) as a success.
    ///
    /// # Errors
    /// [`Open`] (converted into `E`) without calling, or `call`'s own error.
    pub async fn run<T, E>(&self, call: impl std::future::Future<Output = Result<T, E>>) -> Result<T, E>
    where
        E: Fault + From<Open> + std::fmt::Display,
    {
        let permit = self.allow()?;
        let r = call.await;
        match &r {
            Err(e) if e.is_host_fault() => permit.failed(&e.to_string()),
            _ => permit.succeeded(),
        }
        r
    }

    /// Runs the blocking `call` through the breaker: refused at once while open;
    /// any error of `call` counts as a failure (for file I/O, where every error is
    /// the host's).
    ///
    /// # Errors
    /// [`Open`] without calling; otherwise `call`'s result, as it is.
    pub fn guard<T, E: std::fmt::Display>(&self, call: impl FnOnce() -> Result<T, E>) -> Result<Result<T, E>, Open> {
        let permit = self.allow()?;
        let r = call();
        match &r {
            Err(e) => permit.failed(&e.to_string()),
            Ok(_) => permit.succeeded(),
        }
        Ok(r)
    }

    /// The breaker's state now.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        let retry_in = match (g.state, g.opened_at) {
            (State::Open, Some(at)) => self.settings.recovery_timeout.saturating_sub(at.elapsed()).as_secs_f64(),
            _ => 0.0,
        };
        Snapshot {
            name: self.name.to_string(),
            state: g.state,
            consecutive_failures: g.consecutive,
            failure_threshold: self.settings.failure_threshold,
            recovery_timeout_secs: self.settings.recovery_timeout.as_secs_f64(),
            retry_in_secs: retry_in,
            total_failures: g.total_failures,
            last_failure: g.last_failure.clone(),
        }
    }
}

impl Permit {
    /// The call worked (a guest's exception, limit or denial is a success here).
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(true, self.trial, None, Instant::now());
    }

    /// The call failed for a reason of the host (`message` says what).
    pub fn failed(mut self, message: &str) {
        self.reported = true;
        self.breaker.record(false, self.trial, Some(message), Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.trial && !self.reported {
            // The trial never finished: open again, so that a later call can try.
            let mut g = self.breaker.lock();
            if g.state == State::HalfOpen {
                g.state = State::Open;
                g.opened_at = Some(Instant::now() - self.breaker.settings.recovery_timeout);
            }
        }
    }
}

/// Every breaker of a process, by name: the policy's `api`, `database` and
/// `file_io`, and one per tier with the `api` settings (a tier's engine is a
/// dependency like an API), named after the tier (`rustpython`, `wasm`,
/// `docker`); see `Breakers::from_policy`.
#[derive(Debug, Clone)]
pub struct Breakers {
    all: BTreeMap<String, Breaker>,
}

impl Breakers {
    /// One breaker per `(name, settings)` (the public way to build a set is
    /// `Breakers::from_policy`, which names every breaker a sandbox looks up).
    pub(crate) fn new<'a>(named: impl IntoIterator<Item = (&'a str, Settings)>) -> Breakers {
        Breakers { all: named.into_iter().map(|(n, s)| (n.to_string(), Breaker::new(n, s))).collect() }
    }

    /// The breaker named `name`.
    pub fn get(&self, name: &str) -> Option<&Breaker> {
        self.all.get(name)
    }

    /// Sets `observer` on every breaker but those named in `except`.
    pub fn observe(&self, observer: Observer, except: &[&str]) {
        for b in self.all.values().filter(|b| !except.contains(&b.name())) {
            b.observe(observer.clone());
        }
    }

    /// The breaker named `name`.
    ///
    /// # Panics
    /// When the set has none of that name: the names looked up are the ones
    /// `Breakers::from_policy` creates.
    pub(crate) fn named(&self, name: &str) -> &Breaker {
        &self.all[name]
    }

    /// Every breaker's state, by name.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.all.values().map(Breaker::snapshot).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, recovery_ms: u64) -> Breaker {
        Breaker::new(
            "t",
            Settings {
                failure_threshold: threshold,
                recovery_timeout: Duration::from_millis(recovery_ms),
                log_failures: true,
            },
        )
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        let t = Instant::now();
        for _ in 0..2 {
            b.allow_at(t).expect("closed").failed("engine down");
        }
        // A success in between resets the count.
        b.allow_at(t).expect("closed").succeeded();
        for _ in 0..2 {
            b.allow_at(t).expect("closed").failed("engine down");
        }
        assert_eq!(b.snapshot().state, State::Closed);
        b.allow_at(t).expect("closed").failed("engine down");
        assert_eq!(b.snapshot().state, State::Open);
        let refused = b.allow_at(t).expect_err("open");
        assert!(refused.to_string().contains("breaker t open: engine down"), "{refused}");
        assert_eq!(b.snapshot().total_failures, 5);
    }

    #[test]
    fn after_the_timeout_one_trial_decides() {
        let b = breaker(1, 50);
        let t0 = Instant::now();
        b.allow_at(t0).expect("closed").failed("down");
        assert!(b.allow_at(t0 + Duration::from_millis(10)).is_err());
        let later = t0 + Duration::from_millis(60);
        let trial = b.allow_at(later).expect("a trial after the timeout");
        assert_eq!(b.snapshot().state, State::HalfOpen);
        assert!(b.allow_at(later).is_err(), "only one trial at a time");
        trial.failed("still down");
        assert_eq!(b.snapshot().state, State::Open);
        let trial = b.allow_at(Instant::now() + Duration::from_millis(60)).expect("another trial");
        trial.succeeded();
        assert_eq!(b.snapshot().state, State::Closed);
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[test]
    fn observers_see_every_transition() {
        let b = breaker(1, 50);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        b.observe(Arc::new(move |t: &Transition| s.lock().expect("lock").push((t.from, t.to))));
        let t0 = Instant::now();
        b.allow_at(t0).expect("closed").failed("down");
        b.allow_at(t0 + Duration::from_millis(60)).expect("trial").succeeded();
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            [(State::Closed, State::Open), (State::Open, State::HalfOpen), (State::HalfOpen, State::Closed)]
        );
    }

    #[test]
    fn an_abandoned_trial_lets_the_next_call_try() {
        let b = breaker(1, 50);
        let t0 = Instant::now();
        b.allow_at(t0).expect("closed").failed("down");
        drop(b.allow_at(t0 + Duration::from_millis(60)).expect("trial"));
        assert_eq!(b.snapshot().state, State::Open);
        assert!(b.allow().is_ok(), "the abandoned trial must not keep the breaker shut");
    }
}
