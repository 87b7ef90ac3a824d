//! A session shared between tasks ([`SessionHandle`]): the front ends that take a
//! session's cells and its end from different requests (the MCP server, the Python
//! package) hold one.
//!
//! # Security invariants
//! - Ending a session stops its running cells first: their futures are dropped,
//!   which kills the session's process and expires an approval they wait for, so a
//!   critical call of an ended session can no longer be approved and run.

use std::sync::{Arc, Mutex, PoisonError};

use super::Session;
use crate::SandboxError;
use crate::executor::{ExecRequest, Outcome};
use crate::policy::Tier;

/// A [`Session`] whose cells run as tasks: [`SessionHandle::end`] stops the ones
/// running and then ends the session. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<tokio::sync::Mutex<Session>>,
    running: Mutex<Vec<tokio::task::AbortHandle>>,
    id: String,
    tier: Tier,
}

impl SessionHandle {
    /// Takes `session` over.
    pub fn new(session: Session) -> SessionHandle {
        let (id, tier) = (session.id().to_string(), session.tier());
        let inner = Inner { session: Arc::new(tokio::sync::Mutex::new(session)), running: Mutex::default(), id, tier };
        SessionHandle { inner: Arc::new(inner) }
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Its tier.
    pub fn tier(&self) -> Tier {
        self.inner.tier
    }

    /// Runs `req` as the next cell (after the cells before it).
    ///
    /// # Errors
    /// As [`Session::execute`]; [`SandboxError::SessionEnded`] when the session was
    /// ended while this cell waited or ran.
    pub async fn execute(&self, req: ExecRequest) -> Result<Outcome, SandboxError> {
        let session = self.inner.session.clone();
        let task = tokio::spawn(async move { session.lock().await.execute(req).await });
        {
            let mut running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.retain(|t| !t.is_finished());
            running.push(task.abort_handle());
        }
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(SandboxError::SessionEnded("it was ended while this cell ran".into())),
            Err(e) => Err(SandboxError::Host { tier: self.inner.tier, message: format!("a cell's task failed: {e}") }),
        }
    }

    /// Stops its running cells and ends it (`reason` in the audit log); returns
    /// how many cells it ran.
    pub async fn end(&self, reason: &str) -> u64 {
        let running = std::mem::take(&mut *self.inner.running.lock().unwrap_or_else(PoisonError::into_inner));
        for task in running {
            task.abort();
        }
        let mut s = self.inner.session.lock().await;
        s.end_now(reason);
        s.cells()
    }

    /// Cells run and why it ended, or `None` while a cell runs.
    pub fn state(&self) -> Option<(u64, Option<String>)> {
        self.inner.session.try_lock().ok().map(|s| (s.cells(), s.ended()))
    }
}
