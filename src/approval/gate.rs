//! The gate critical operations pass: submit to the [`Queue`], record that in the
//! audit log, wait (without blocking a thread) for a decision or the deadline,
//! record how it ended.
//!
//! # Security invariant
//! [`Gate::ask`] returns an item whose status is `approved` only when the queue's
//! row says so; a database or audit failure is an error, which callers treat as a
//! refusal. Every submission, decision, expiry and completion is an audit event
//! written before the caller goes on.

use std::sync::Arc;
use std::time::Duration;

use super::{ApprovalError, Item, Queue};
use crate::audit::{AuditLog, Event, EventKind};

/// How often a waiter re-reads its item when nothing in this process woke it (a
/// decision made by another process, e.g. `terrarium approvals approve`).
const POLL: Duration = Duration::from_millis(250);

/// Submits critical operations and waits for their decisions. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    queue: Queue,
    audit: AuditLog,
    wake: Arc<tokio::sync::Notify>,
    announce: Option<Announce>,
    /// At most this many [`Gate::ask`]s wait at once (with its size).
    waiting: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// How many wait per caller (the subject's `caller`), so that one caller cannot
    /// hold every waiting slot: at most a quarter of the limit each.
    per_caller: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// A caller's place among those waiting; given back when dropped.
struct CallerSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    caller: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

/// Expires an item whose [`Gate::ask`] was dropped before the item was decided.
struct Abandoned {
    gate: Option<Gate>,
    id: i64,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let (Some(gate), Ok(runtime)) = (self.gate.take(), tokio::runtime::Handle::try_current()) else { return };
        let id = self.id;
        runtime.spawn(async move {
            match gate.db(move |q| q.abandon(id)).await {
                Ok(Some(item)) => {
                    let _ = gate.record(EventKind::ApprovalExpired, &item).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(id, error = %e, "cannot expire an abandoned approval request"),
            }
        });
    }
}

/// Told of each item [`Gate::ask`] submits, before it waits (e.g. to tell a
/// person at a terminal how to approve it).
pub type Announce = Arc<dyn Fn(&Item) + Send + Sync>;

impl Gate {
    /// A gate over `queue`, recording in `audit` (the log of the same database).
    pub(crate) fn new(queue: Queue, audit: AuditLog) -> Gate {
        Gate {
            queue,
            audit,
            wake: Arc::new(tokio::sync::Notify::new()),
            announce: None,
            waiting: None,
            per_caller: Arc::default(),
        }
    }

    /// Lets at most `n` operations wait at once, and at most a quarter of `n` (at
    /// least one) from one caller; more get [`ApprovalError::Busy`].
    #[must_use]
    pub fn limit_waiting(mut self, n: std::num::NonZeroUsize) -> Gate {
        self.waiting = Some((Arc::new(tokio::sync::Semaphore::new(n.get())), n.get()));
        self
    }

    /// Calls `announce` with each submitted item before waiting for it.
    #[must_use]
    pub fn announcing(mut self, announce: Announce) -> Gate {
        self.announce = Some(announce);
        self
    }

    /// The audit log decisions are recorded in.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Runs a queue call off the async threads.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Queue) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        let q = self.queue.clone();
        tokio::task::spawn_blocking(move || f(&q)).await.map_err(|e| ApprovalError::Database {
            path: self.queue.path.display().to_string(),
            message: e.to_string(),
        })?
    }

    async fn record(&self, kind: EventKind, item: &Item) -> Result<(), ApprovalError> {
        let mut data = serde_json::to_value(item).unwrap_or_default();
        // The subject is in the log once, with the request; later events name it by
        // its hash (a large subject is not stored four times).
        if kind != EventKind::ApprovalRequested
            && let Some(map) = data.as_object_mut()
            && let Some(subject) = map.remove("subject")
        {
            let hash = crate::audit::sha256_hex(subject.to_string().as_bytes());
            map.insert("subject_sha256".into(), serde_json::Value::String(hash));
        }
        let event = Event { kind, request_id: Some(format!("approval-{}", item.id)), data, code: None };
        self.audit.record_async(event).await.map_err(|e| ApprovalError::Audit(e.to_string()))
    }

    /// Queues an operation of `kind` (what would run: `subject`; why it waits:
    /// `reason`) for at most `wait`, and waits for its end: approved, denied or
    /// expired.
    ///
    /// # Errors
    /// [`ApprovalError::Busy`] (nothing queued) when the gate's waiting limit is
    /// reached; the queue or the audit log failed. The operation must then not run.
    pub async fn ask(
        &self,
        kind: &str,
        subject: serde_json::Value,
        reason: &str,
        wait: Duration,
    ) -> Result<Item, ApprovalError> {
        let _caller = match (&self.waiting, subject["caller"].as_str()) {
            (Some((_, n)), Some(caller)) => {
                let most = (n / 4).max(1);
                let mut counts = self.per_caller.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mine = counts.entry(caller.to_string()).or_insert(0);
                if *mine >= most {
                    return Err(ApprovalError::CallerBusy { caller: caller.to_string(), most });
                }
                *mine += 1;
                Some(CallerSlot { counts: self.per_caller.clone(), caller: caller.to_string() })
            }
            _ => None,
        };
        let _waiting = match &self.waiting {
            Some((slots, n)) => Some(slots.clone().try_acquire_owned().map_err(|_| ApprovalError::Busy(*n))?),
            None => None,
        };
        let (kind_owned, reason_owned) = (kind.to_string(), reason.to_string());
        let item = self.db(move |q| q.submit(&kind_owned, &subject, &reason_owned, wait)).await?;
        // If this wait is abandoned (a server's client hung up and the request's
        // future is dropped), the item expires at once: its waiting slots are given
        // back, so it must not stay approvable for a run nobody will start, nor
        // crowd the queue past the waiting limit.
        let mut abandoned = Abandoned { gate: Some(self.clone()), id: item.id };
        self.record(EventKind::ApprovalRequested, &item).await?;
        tracing::info!(id = item.id, kind, reason, "waiting for approval");
        if let Some(announce) = &self.announce {
            announce(&item);
        }
        let id = item.id;
        loop {
            // Registered before the read, so a decision between the read and the
            // wait still wakes us.
            let woken = self.wake.notified();
            let item = self.db(move |q| q.get(id)?.ok_or(ApprovalError::NotFound(id))).await?;
            if item.status == super::ApprovalStatus::Expired {
                // Whoever marked it (this loop, a listing, another process), its
                // waiter is the one that records it.
                self.record(EventKind::ApprovalExpired, &item).await?;
            }
            if item.status != super::ApprovalStatus::Pending {
                abandoned.gate = None;
                return Ok(item);
            }
            let now = super::now_us();
            if now >= item.deadline_us {
                self.db(move |q| q.expire_overdue()).await?;
                continue;
            }
            let left = Duration::from_micros(u64::try_from(item.deadline_us - now).unwrap_or(0));
            let _ = tokio::time::timeout(POLL.min(left), woken).await;
        }
    }

    /// Approves or denies a pending item as `who`, records the decision and wakes
    /// the item's waiter in this process.
    ///
    /// # Errors
    /// [`ApprovalError::Decided`], [`ApprovalError::NotFound`], the database or
    /// the audit log.
    pub async fn decide(&self, id: i64, approve: bool, who: &str, note: Option<&str>) -> Result<Item, ApprovalError> {
        self.expire_orphans().await?;
        let (who, note) = (who.to_string(), note.map(str::to_string));
        let item = self.db(move |q| q.decide(id, approve, &who, note.as_deref())).await?;
        self.record(if approve { EventKind::ApprovalApproved } else { EventKind::ApprovalDenied }, &item).await?;
        self.wake.notify_waiters();
        Ok(item)
    }

    /// Records how an approved item's operation ended (in the queue and the log).
    ///
    /// # Errors
    /// The database or the audit log failed.
    pub async fn complete(&self, id: i64, outcome: serde_json::Value) -> Result<Item, ApprovalError> {
        let item = self.db(move |q| q.complete(id, &outcome)).await?;
        self.record(EventKind::ApprovalCompleted, &item).await?;
        Ok(item)
    }

    /// Expires every pending item, noting `note` (an emergency stop), and
    /// records each expiry; returns them.
    ///
    /// # Errors
    /// The database or the audit log failed.
    pub async fn stop_pending(&self, note: &str) -> Result<Vec<Item>, ApprovalError> {
        let note = note.to_string();
        let items = self.db(move |q| q.expire_pending(&note)).await?;
        for item in &items {
            self.record(EventKind::ApprovalExpired, item).await?;
        }
        Ok(items)
    }

    /// One page of items, newest first: with `status`, only those; with `before`,
    /// those older than that id (the next page starts before the last id of this
    /// one); at most `limit`, capped at [`MAX_PAGE`](crate::approval::MAX_PAGE).
    /// Overdue items are expired first, so a page never shows one as pending.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list(
        &self,
        status: Option<super::ApprovalStatus>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Item>, ApprovalError> {
        self.expire_orphans().await?;
        self.db(move |q| q.list(status, before, limit)).await
    }

    /// Every pending item, and the `recent` newest decided ones (the review page).
    ///
    /// # Errors
    /// The database failed.
    pub async fn review(&self, recent: usize) -> Result<(Vec<Item>, Vec<Item>), ApprovalError> {
        self.expire_orphans().await?;
        self.db(move |q| {
            Ok((q.list(Some(super::ApprovalStatus::Pending), None, super::MAX_PAGE)?, q.recently_decided(recent)?))
        })
        .await
    }

    /// What the review page shows changes when this does: every pending item and
    /// the `recent` newest decided ones, with their statuses and whether they have
    /// outcomes (read without their subjects, so cheap to poll).
    ///
    /// # Errors
    /// The database failed.
    pub async fn fingerprint(&self, recent: usize) -> Result<String, ApprovalError> {
        self.expire_orphans().await?;
        self.db(move |q| q.fingerprint(recent)).await
    }

    /// How many items are pending.
    ///
    /// # Errors
    /// The database failed.
    pub async fn pending(&self) -> Result<usize, ApprovalError> {
        self.expire_orphans().await?;
        self.db(Queue::pending).await
    }

    /// Expires what is overdue and records the items whose waiting process ended
    /// (nobody else will: recording an expiry is its waiter's job).
    async fn expire_orphans(&self) -> Result<(), ApprovalError> {
        for item in self.db(|q| q.expire_overdue()).await? {
            if item.note.as_deref() == Some(super::ORPHANED) {
                self.record(EventKind::ApprovalExpired, &item).await?;
            }
        }
        Ok(())
    }

    /// One item (as it stands after overdue and orphaned items are expired).
    ///
    /// # Errors
    /// The database failed.
    pub async fn get(&self, id: i64) -> Result<Option<Item>, ApprovalError> {
        self.expire_orphans().await?;
        self.db(move |q| q.get(id)).await
    }
}

/// Why an operation that waited did not run, for an error message.
pub fn refusal(item: &Item) -> String {
    use super::ApprovalStatus;
    match (item.status, &item.decided_by) {
        (ApprovalStatus::Denied, Some(who)) => format!(
            "approval request {} was denied by {who}{}",
            item.id,
            item.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
        ),
        (ApprovalStatus::Expired, _) => format!("approval request {} expired before anyone decided", item.id),
        (status, _) => format!("approval request {} ended {status}", item.id),
    }
}

impl From<super::ApprovalError> for crate::error::SandboxError {
    /// A full waiting budget is [`crate::error::SandboxError::Busy`] (retry later), a subject too
    /// large to review an invalid request; any other
    /// failure of the queue is [`crate::error::SandboxError::Approval`].
    fn from(e: super::ApprovalError) -> crate::error::SandboxError {
        match e {
            super::ApprovalError::Busy(_) | super::ApprovalError::CallerBusy { .. } => {
                crate::error::SandboxError::Busy(e.to_string())
            }
            super::ApprovalError::TooLarge { .. } => crate::error::SandboxError::InvalidRequest(e.to_string()),
            e => crate::error::SandboxError::Approval(Box::new(e)),
        }
    }
}
