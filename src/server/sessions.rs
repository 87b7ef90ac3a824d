//! Sessions over HTTP: `POST /v1/sessions` starts one, `POST
//! /v1/sessions/{id}/cells` runs a cell in it, `GET /v1/sessions/{id}` shows it,
//! `DELETE /v1/sessions/{id}` ends it (role `submit`).
//!
//! # Security invariants
//! - A session belongs to the token that started it: any other token gets 404, the
//!   same answer as for a session that never existed.
//! - Sessions count against the policy's `sessions.max_open` (429 beyond it), and one
//!   session runs one cell at a time (409 while one runs).
//! - A session that ends (a limit, its idle timeout, its lifetime) is removed and
//!   its end audited by a sweep within a second; when the server stops, every open
//!   session is ended and audited with that reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::openapi::{Guarded, NotFound, Submitted};
use super::*;
use crate::sandbox::{Session, SessionOptions};

/// One open session and the token name that owns it.
struct Entry {
    owner: String,
    session: Arc<tokio::sync::Mutex<Option<Session>>>,
    /// Its running cell's events and its calls waiting for the API caller.
    desk: Arc<super::calls::Desk>,
    /// Stops the running cell (its owner ends the session while it runs).
    running: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The server's open sessions, by id.
#[derive(Default)]
pub(super) struct ApiSessions {
    open: Mutex<HashMap<String, Arc<Entry>>>,
    /// Started on the first session (inside the runtime).
    sweeper: std::sync::OnceLock<()>,
}

impl ApiSessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session `id` if `owner` owns it.
    fn get(&self, id: &str, owner: &str) -> Option<Arc<Entry>> {
        self.map().get(id).filter(|e| e.owner == owner).cloned()
    }

    /// The desk of session `id` (for its own cells' calls).
    pub(super) fn desk(&self, id: &str) -> Option<Arc<super::calls::Desk>> {
        self.map().get(id).map(|e| e.desk.clone())
    }

    /// The desk of session `id` if `owner` owns it.
    pub(super) fn owned_desk(&self, id: &str, owner: &str) -> Option<Arc<super::calls::Desk>> {
        self.get(id, owner).map(|e| e.desk.clone())
    }

    /// Removes the sessions that ended by themselves (their end is recorded as they
    /// are dropped); a session with a cell running is left for the next sweep.
    fn sweep(&self) {
        let ended: Vec<Arc<Entry>> = {
            let mut map = self.map();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, e)| e.session.try_lock().is_ok_and(|s| s.as_ref().is_none_or(|s| s.ended().is_some())))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for entry in ended {
            if let Ok(mut s) = entry.session.try_lock()
                && let Some(s) = s.take()
            {
                let why = s.ended().unwrap_or_default();
                s.end(&why);
            }
        }
    }
}

impl ApiSessions {
    /// Ends every open session with `reason` (an emergency stop, once its signal
    /// went out: a running cell is stopped by it and answers its caller with the
    /// stop, releasing its session), then removes them. Returns how many.
    pub(super) async fn end_all(&self, reason: &str) -> usize {
        let entries: Vec<Arc<Entry>> = self.map().drain().map(|(_, e)| e).collect();
        for entry in &entries {
            match tokio::time::timeout(Duration::from_secs(10), entry.session.lock()).await {
                Ok(mut slot) => {
                    if let Some(s) = slot.take() {
                        s.end(reason);
                    }
                }
                Err(_) => tracing::error!("a session's cell did not stop within 10 s of an emergency stop"),
            }
        }
        entries.len()
    }
}

impl Drop for ApiSessions {
    fn drop(&mut self) {
        for (_, entry) in self.map().drain() {
            if let Ok(mut s) = entry.session.try_lock()
                && let Some(s) = s.take()
            {
                s.end("the server stopped");
            }
        }
    }
}

/// Starts the sweep of ended sessions, once; it stops with the server.
fn start_sweeper(state: &Shared) {
    state.api_sessions.sweeper.get_or_init(|| {
        let weak: Weak<AppState> = Arc::downgrade(state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(state) = weak.upgrade() else { return };
                state.api_sessions.sweep();
            }
        });
    });
}

/// A session to start (`POST /v1/sessions`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SessionRequest)]
pub(super) struct StartBody {
    /// `auto` (the policy's tier) or a tier's name; the session stays on it.
    #[schema(schema_with = super::openapi::tier_choice_schema)]
    pub(super) tier: Option<String>,
    /// A workspace every cell sees at /workspace (wasm and docker tiers); after
    /// each cell that ends ok, what it changed is settled as a run's would be.
    pub(super) workspace: Option<String>,
}

/// A session as the API shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = SessionInfo)]
pub(super) struct Info {
    /// Its identifier, in its cells' URLs and the audit log (`session:ID`).
    pub(super) id: String,
    /// The tier its cells run on.
    pub(super) tier: crate::Tier,
    /// Cells run so far.
    pub(super) cells: u64,
    /// Why it ended, once it has (it is then removed within a second).
    pub(super) ended: Option<String>,
}

fn info(id: &str, s: &Session) -> Info {
    Info { id: id.to_string(), tier: s.tier(), cells: s.cells(), ended: s.ended() }
}

fn no_session() -> Response {
    problem(StatusCode::NOT_FOUND, "no such session")
}

/// Start a session (role submit): cells that share interpreter state, on one tier.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "api",
    request_body(content = StartBody, description = "Optional; an empty body takes the policy's tier."),
    responses(
        (status = 200, description = "The session, ready for cells.", body = Info),
        Guarded,
        Submitted,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn start(State(state): State<Shared>, Caller(caller, _): Caller<Submitter>, body: Body) -> Response {
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: StartBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        match parse(&bytes) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let tier = match b.tier.as_deref() {
        None => TierChoice::Auto,
        Some(t) => match TierChoice::parse(t) {
            Some(t) => t,
            None => return problem(StatusCode::BAD_REQUEST, &format!("tier: {t:?}: expected auto or a tier's name")),
        },
    };
    start_sweeper(&state);
    let options = SessionOptions { tier, caller: Some(caller.name.clone()), workspace: b.workspace };
    match state.sandbox().session(options).await {
        Ok(s) => {
            let id = s.id().to_string();
            let shown = info(&id, &s);
            tracing::info!(caller = caller.name, session = id, "session started");
            let entry = Arc::new(Entry {
                owner: caller.name,
                session: Arc::new(tokio::sync::Mutex::new(Some(s))),
                desk: super::calls::Desk::new(),
                running: Mutex::new(None),
            });
            state.api_sessions.map().insert(id, entry);
            axum::Json(shown).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

/// A cell to run (`POST /v1/sessions/{id}/cells`). Overrides may only tighten the
/// policy, for this cell.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CellRequest)]
pub(super) struct CellBody {
    /// Python source, UTF-8, at most the policy's max_code_size.
    pub(super) code: String,
    /// Echoed in the outcome and the audit log.
    pub(super) id: Option<String>,
    /// Seconds; only shorter than the policy's.
    pub(super) timeout: Option<f64>,
    /// Bytes or a size; only smaller than the policy's.
    #[schema(schema_with = super::openapi::size_schema)]
    pub(super) max_output: Option<serde_json::Value>,
}

/// Run a cell in a session (role submit; the token that started it).
///
/// The outcome's `session` gives the cell's number and, when this cell ended the
/// session (a limit, its last allowed cell), why. A cell of an ended session is
/// 410 with the reason. A cell that calls a host function the API's caller
/// answers pauses: the answer is then 202 with the `function_call`, to answer at
/// `/v1/sessions/{id}/calls/{call_id}`.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/cells",
    tag = "api",
    params(("id" = String, Path, description = "The session's id.")),
    request_body = CellBody,
    responses(
        (status = 200, description = "How the cell ended (any status, including denied and limits).", body = crate::Outcome),
        (status = 202, description = "The cell paused on a host function call for the caller to answer.", body = super::calls::Paused),
        (status = 404, response = NotFound),
        (status = 409, description = "A cell of this session is running.", body = super::openapi::ErrorBody),
        (status = 410, description = "The session has ended (the reason).", body = super::openapi::ErrorBody),
        Guarded,
        Submitted,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn cell(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Caller(caller, _): Caller<Submitter>,
    body: Body,
) -> Response {
    let Some(entry) = state.api_sessions.get(&id, &caller.name) else { return no_session() };
    let b = match json_body::<CellBody>(&state, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let timeout = match b.timeout.map(|t| crate::policy::timeout_secs(t).ok_or(t)).transpose() {
        Ok(d) => d,
        Err(t) => {
            return problem(StatusCode::BAD_REQUEST, &format!("timeout: {t}: expected a positive number of seconds"));
        }
    };
    let max_output = match size("max_output", b.max_output) {
        Ok(m) => m,
        Err(why) => return problem(StatusCode::BAD_REQUEST, &why.to_string()),
    };
    let Ok(mut slot) = entry.session.clone().try_lock_owned() else {
        return problem(StatusCode::CONFLICT, "a cell of this session is running; wait for its outcome");
    };
    if slot.is_none() {
        return no_session();
    }
    let mut req = ExecRequest::new(b.code);
    req.id = b.id;
    req.overrides = Overrides { timeout, max_output, ..Overrides::default() };
    // The cell runs to its end (under its deadline) and is recorded even if the
    // client hangs up: a cell cut off half-way would leave the session's child
    // between two cells' protocol states.
    let desk = entry.desk.clone();
    let number = desk.begin_cell();
    let ran = tokio::spawn(async move {
        match slot.as_mut() {
            Some(session) => session.execute(req).await,
            None => Err(SandboxError::SessionEnded("it was ended".into())),
        }
    });
    *entry.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ran.abort_handle());
    let told = desk.clone();
    tokio::spawn(async move {
        let r = match ran.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(SandboxError::SessionEnded("it was ended while this cell ran".into())),
            Err(e) => {
                Err(SandboxError::Host { tier: crate::Tier::Rustpython, message: format!("a cell's task failed: {e}") })
            }
        };
        told.done(number, r);
    });
    desk.next(&state).await
}

/// Re-attach to a session's running cell (role submit; the token that started it):
/// a call still waiting for the caller's answer (202), else the cell's next pause
/// (202) or its outcome (200), as a cell's own request would have had them.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/cells/current",
    tag = "api",
    params(("id" = String, Path, description = "The session's id.")),
    responses(
        (status = 200, description = "The running cell ended: its outcome.", body = crate::Outcome),
        (status = 202, description = "The cell is paused on a host function call.", body = super::calls::Paused),
        (status = 404, response = NotFound),
        (status = 409, description = "Another request is waiting on this session's cell.", body = super::openapi::ErrorBody),
        Guarded,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn current(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Caller(caller, _): Caller<Submitter>,
) -> Response {
    let Some(entry) = state.api_sessions.get(&id, &caller.name) else { return no_session() };
    let running = entry.session.try_lock().is_err();
    match entry.desk.current(&state, running).await {
        Some(r) => r,
        None => problem(StatusCode::NOT_FOUND, "no cell of this session is running"),
    }
}

/// Show a session (role submit; the token that started it).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "api",
    params(("id" = String, Path, description = "The session's id.")),
    responses(
        (status = 200, description = "The session.", body = Info),
        (status = 404, response = NotFound),
        (status = 409, description = "A cell of this session is running.", body = super::openapi::ErrorBody),
        Guarded,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn show(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Caller(caller, _): Caller<Submitter>,
) -> Response {
    let Some(entry) = state.api_sessions.get(&id, &caller.name) else { return no_session() };
    let Ok(slot) = entry.session.try_lock() else {
        return problem(StatusCode::CONFLICT, "a cell of this session is running; ask again after its outcome");
    };
    match slot.as_ref() {
        Some(s) => axum::Json(info(&id, s)).into_response(),
        None => no_session(),
    }
}

/// End a session (role submit; the token that started it): its state is gone and
/// its process killed; the end is audited.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "api",
    params(("id" = String, Path, description = "The session's id.")),
    responses(
        (status = 200, description = "The session as it ended (a running cell is stopped first).", body = Info),
        (status = 404, response = NotFound),
        (status = 409, description = "A running cell did not stop within 10 s.", body = super::openapi::ErrorBody),
        Guarded,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn end(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Caller(caller, _): Caller<Submitter>,
) -> Response {
    let Some(entry) = state.api_sessions.get(&id, &caller.name) else { return no_session() };
    // A running cell is stopped first (its child or container is killed with it;
    // it may be waiting on a host call nobody will answer).
    let stopped = entry.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(running) = stopped {
        running.abort();
    }
    let Ok(mut slot) = tokio::time::timeout(Duration::from_secs(10), entry.session.lock()).await else {
        return problem(StatusCode::CONFLICT, "a cell of this session is running and did not stop; try again");
    };
    let Some(s) = slot.take() else { return no_session() };
    state.api_sessions.map().remove(&id);
    let mut shown = info(&id, &s);
    let why = format!("ended by {}", caller.name);
    shown.ended = Some(s.ended().unwrap_or_else(|| why.clone()));
    s.end(&why);
    axum::Json(shown).into_response()
}
