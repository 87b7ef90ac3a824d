//! Refused callers, recorded in the audit log without letting a flood of refusals
//! flood it: the first of each kind in a window is recorded, the rest counted.

use super::*;

/// Every window, records the refusals that were only counted, so that none is
/// lost when no later refusal comes to carry the count. Ends with the app.
pub(super) fn start_refusal_flusher(state: &Shared) {
    state.refusal_flusher.get_or_init(|| {
        let weak = Arc::downgrade(state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(state) = weak.upgrade() else { return };
                let Some(log) = state.sandbox().audit_log().cloned() else { return };
                let events: Vec<Event> = state
                    .refusals
                    .take_ended()
                    .into_iter()
                    .map(|((status, name), count)| Event {
                        kind: crate::audit::EventKind::AuthDeniedRepeated,
                        request_id: None,
                        data: serde_json::json!({"status": status, "token_name": name, "count": count,
                            "window_secs": REFUSAL_WINDOW.as_secs()}),
                        code: None,
                    })
                    .collect();
                if !events.is_empty()
                    && let Err(e) = log.record_all_async(events).await
                {
                    tracing::error!(error = %e, "cannot record repeated refusals");
                }
            }
        });
    });
}

/// Largest body of a request without credentials (the review sign-in form).
pub(super) const ANONYMOUS_BODY: usize = 16 << 10;

/// How long a request without credentials may take to send its body.
pub(super) const ANONYMOUS_BODY_TIME: Duration = Duration::from_secs(2);
/// Refused callers are aggregated over windows of this length.
pub(super) const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// Refusals per (status, token name), for aggregation: when the current window
/// started and how many refusals in it were not recorded.
#[derive(Default)]
pub(super) struct Refusals {
    pub(super) map: std::sync::Mutex<std::collections::HashMap<RefusalKey, (std::time::Instant, u64)>>,
}

/// A refusal's status and token name (`None`: no known token).
pub(super) type RefusalKey = (u16, Option<String>);

impl Refusals {
    /// Takes the counts of refusals not recorded, of windows that have ended.
    pub(super) fn take_ended(&self) -> Vec<(RefusalKey, u64)> {
        let now = std::time::Instant::now();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended: Vec<_> = map
            .iter()
            .filter(|(_, (start, skipped))| *skipped > 0 && now.duration_since(*start) >= REFUSAL_WINDOW)
            .map(|(k, (_, skipped))| (k.clone(), *skipped))
            .collect();
        for (k, _) in &ended {
            map.remove(k);
        }
        ended
    }

    /// `Some(unrecorded refusals of the previous window)` when this refusal starts
    /// a window and is to be recorded; `None` when it is only counted.
    pub(super) fn record(&self, status: u16, name: Option<&str>) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 4096 {
            map.retain(|_, (start, _)| now.duration_since(*start) < REFUSAL_WINDOW);
        }
        match map.entry((status, name.map(str::to_string))) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let (start, skipped) = e.get_mut();
                if now.duration_since(*start) < REFUSAL_WINDOW {
                    *skipped += 1;
                    return None;
                }
                let before = *skipped;
                *start = now;
                *skipped = 0;
                Some(before)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((now, 0));
                Some(0)
            }
        }
    }
}
