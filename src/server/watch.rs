//! Integrity monitoring of live workspace files: a thread that compares every
//! workspace's live files with its current version on a schedule and whenever the
//! file system reports a change under them (`notify`: inotify on Linux), keeps
//! the drift it finds for health and metrics, and records each new finding in the
//! audit log (`workspace_drift`; a finding that clears is recorded too).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::audit::{AuditLog, Event, EventKind};
use crate::workspace::Workspaces;

/// How long a burst of file-system events is let settle before a check.
const SETTLE: Duration = Duration::from_millis(300);

/// The watcher; stops when dropped.
pub struct Watch {
    drift: Arc<Mutex<BTreeMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("drifted", &self.drifted()).finish()
    }
}

impl Watch {
    /// Starts watching the workspaces under `all` (those made later too), checking
    /// every `every` and on file-system events.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(all: Workspaces, audit: Option<AuditLog>, every: Duration) -> std::io::Result<Watch> {
        let (wake, events) = mpsc::channel();
        let drift = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s, w) = (drift.clone(), stop.clone(), wake.clone());
        std::thread::Builder::new()
            .name("terrarium-workspace-watch".into())
            .spawn(move || watch(&all, audit.as_ref(), every, &d, &s, &w, &events))?;
        Ok(Watch { drift, stop, wake })
    }

    /// Workspaces whose live files differ from their current version, with how
    /// many paths differ, as of the last check.
    pub fn drifted(&self) -> Vec<(String, usize)> {
        let d = self.drift.lock().unwrap_or_else(PoisonError::into_inner);
        d.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.clone(), *n)).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
    }
}

fn watch(
    all: &Workspaces,
    audit: Option<&AuditLog>,
    every: Duration,
    drift: &Mutex<BTreeMap<String, usize>>,
    stop: &AtomicBool,
    wake: &mpsc::Sender<()>,
    events: &mpsc::Receiver<()>,
) {
    use notify::Watcher as _;
    let tx = wake.clone();
    let mut watcher = match notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.send(());
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "no file-system events for workspaces; checking on a schedule only");
            None
        }
    };
    // The root itself, for workspaces made from now on.
    if let Some(w) = watcher.as_mut()
        && let Err(e) = w.watch(all.root(), notify::RecursiveMode::NonRecursive)
    {
        tracing::warn!(error = %e, "cannot watch the workspaces root");
    }
    let mut watched = BTreeSet::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let listed = match all.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list workspaces to check them");
                Vec::new()
            }
        };
        for s in listed {
            if let Some(w) = watcher.as_mut()
                && watched.insert(s.name.clone())
            {
                let live = all.root().join(&s.name).join("live");
                if let Err(e) = w.watch(&live, notify::RecursiveMode::Recursive) {
                    tracing::warn!(workspace = %s.name, error = %e, "cannot watch a workspace's live files");
                }
            }
            let checked = all.get(&s.name).and_then(|w| w.verify());
            let (version, changes) = match checked {
                Ok((m, c)) => (m.version, c),
                Err(e) => {
                    tracing::warn!(workspace = %s.name, error = %e, "cannot check a workspace");
                    continue;
                }
            };
            // A finding is which paths differ and how: a file rewritten again and
            // again behind Terrarium's back is one finding, recorded once.
            let found: Vec<_> = changes.iter().map(|c| (&c.path, c.action)).collect();
            let digest = crate::workspace::sha256_hex(serde_json::to_string(&found).unwrap_or_default().as_bytes());
            let seen = last.insert(s.name.clone(), digest.clone());
            // A new finding, or one that cleared: recorded once.
            if seen.as_ref() != Some(&digest) && (!changes.is_empty() || seen.is_some()) {
                let paths: Vec<_> = changes.iter().take(300).map(|c| (&c.path, c.action)).collect();
                tracing::warn!(workspace = %s.name, changes = changes.len(), "workspace drift");
                if let Some(log) = audit {
                    let data = serde_json::json!({
                        "workspace": s.name, "version": version, "changes": changes.len(), "paths": paths,
                        "found_by": "watch",
                    });
                    if let Err(e) =
                        log.record(Event { kind: EventKind::WorkspaceDrift, request_id: None, data, code: None })
                    {
                        tracing::warn!(error = %e, "cannot record workspace drift");
                    }
                }
            }
            drift.lock().unwrap_or_else(PoisonError::into_inner).insert(s.name, changes.len());
        }
        match events.recv_timeout(every) {
            Ok(()) => {
                std::thread::sleep(SETTLE);
                while events.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}
