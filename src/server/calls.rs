//! Host functions answered by the API's caller, in sessions: while a cell runs, a
//! call to a declared function without a `command` or closure of its own pauses
//! the cell, and the request waiting on the cell is answered `202` with the
//! `function_call` (id, function, arguments). The caller answers it with `POST
//! /v1/sessions/{id}/calls/{call_id}` (`result`, or `error` with a type and a
//! message) and gets the cell's next pause or its outcome, so an agent framework
//! keeps its tools in its own process.
//!
//! # Security invariants
//! - Only the session's owner sees its calls and answers them (the session's
//!   404 otherwise), each call once; an answer to a call that is not waiting (it
//!   was answered, or its function's timeout passed) is 404.
//! - The caller's answer is checked by the host like any implementation's (its
//!   size against `max_result_bytes`, its error's type against a fixed set):
//!   it reaches the guest as JSON values or an exception, never anything else.
//! - A run outside a session cannot be paused: its call raises
//!   `NotImplementedError` naming sessions as the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot};

use super::openapi::{Guarded, NotFound};
use super::*;
use crate::executor::Outcome;
use crate::functions::{FunctionCall, FunctionError, HostFunction};

/// What a waiting request hears from a session's running cell.
pub(super) enum CellEvent {
    /// The cell calls a function the caller answers.
    Call(FunctionCallInfo),
    /// The cell ended.
    Done(Box<Result<Outcome, SandboxError>>),
}

/// A call waiting for the API caller's answer, as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = FunctionCall)]
pub(super) struct FunctionCallInfo {
    /// Answer it at `/v1/sessions/{session}/calls/{id}`.
    pub(super) id: String,
    /// The declared function.
    pub(super) function: String,
    /// Positional arguments (JSON values).
    pub(super) args: Vec<serde_json::Value>,
    /// Keyword arguments.
    pub(super) kwargs: serde_json::Map<String, serde_json::Value>,
    /// Order of arrival (not shown).
    #[serde(skip)]
    pub(super) seq: u64,
}

/// A cell paused on a call (`202` from a cell or an answer).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = CellPaused)]
pub(super) struct Paused {
    /// Always `function_call`.
    pub(super) status: &'static str,
    /// The call to answer.
    pub(super) function_call: FunctionCallInfo,
}

/// One session's calls and its running cell's events.
pub(super) struct Desk {
    events: mpsc::UnboundedSender<(u64, CellEvent)>,
    heard: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, CellEvent)>>,
    /// The running cell's number (events of earlier cells are stale).
    cell: std::sync::atomic::AtomicU64,
    /// Calls announced so far.
    seq: std::sync::atomic::AtomicU64,
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// A call waiting for the API caller: what was announced, and where the answer goes.
struct Waiting {
    info: FunctionCallInfo,
    reply: oneshot::Sender<Result<serde_json::Value, FunctionError>>,
}

impl Desk {
    pub(super) fn new() -> Arc<Desk> {
        let (events, heard) = mpsc::unbounded_channel();
        Arc::new(Desk {
            events,
            heard: tokio::sync::Mutex::new(heard),
            cell: std::sync::atomic::AtomicU64::new(0),
            seq: std::sync::atomic::AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The oldest call still waiting for the caller, as a `202`.
    fn announce_waiting(&self) -> Option<Response> {
        let w = self.waiting();
        let oldest = w.values().map(|w| &w.info).min_by_key(|i| i.seq)?;
        Some(paused(oldest.clone()))
    }

    /// Whether the channel holds an event nobody has taken.
    fn has_news(&self) -> bool {
        self.heard.try_lock().map_or(true, |h| !h.is_empty())
    }

    /// A new cell starts: its number, for its `Done`.
    pub(super) fn begin_cell(&self) -> u64 {
        self.cell.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// The cell numbered `cell` ended.
    pub(super) fn done(&self, cell: u64, r: Result<Outcome, SandboxError>) {
        let _ = self.events.send((cell, CellEvent::Done(Box::new(r))));
    }

    /// Re-attaches to the running cell (`GET /v1/sessions/{id}/cells/current`): a
    /// call still waiting for the caller, else the cell's next pause or its end;
    /// `None` when no cell runs and nothing is left to tell.
    pub(super) async fn current(&self, state: &AppState, running: bool) -> Option<Response> {
        if let Some(r) = self.announce_waiting() {
            return Some(r);
        }
        if !running && !self.has_news() {
            return None;
        }
        Some(self.next(state).await)
    }

    /// Waits for the running cell's next pause or its end, as the response.
    pub(super) async fn next(&self, state: &AppState) -> Response {
        let Ok(mut heard) = self.heard.try_lock() else {
            return problem(StatusCode::CONFLICT, "another request is waiting on this session's cell");
        };
        let current = self.cell.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            let Some((cell, event)) = heard.recv().await else {
                return fault("a session's cell", &"its events ended");
            };
            if cell != current {
                continue;
            }
            return match event {
                // A call that stopped waiting (its timeout) is not announced.
                CellEvent::Call(call) if !self.waiting().contains_key(&call.id) => continue,
                CellEvent::Call(call) => paused(call),
                CellEvent::Done(r) => match *r {
                    Ok(o) => {
                        state.metrics.outcome(o.tier, o.status);
                        axum::Json(o).into_response()
                    }
                    Err(e) => sandbox_error(state, &e),
                },
            };
        }
    }
}

fn paused(call: FunctionCallInfo) -> Response {
    (StatusCode::ACCEPTED, axum::Json(Paused { status: "function_call", function_call: call })).into_response()
}

/// Takes a waiting call off the desk when its wait ends (answered, or dropped at
/// the function's timeout).
struct Unlisted(Arc<Desk>, String);

impl Drop for Unlisted {
    fn drop(&mut self) {
        self.0.waiting().remove(&self.1);
    }
}

/// The implementation a server gives every declared function that has no other:
/// hands the call to the session's API caller and waits for the answer.
pub(super) fn answered_by_caller(state: Weak<AppState>) -> HostFunction {
    Arc::new(move |call: FunctionCall| {
        let state = state.clone();
        Box::pin(async move {
            let Some(session) = call.session.clone() else {
                return Err(FunctionError::new(
                    "NotImplementedError",
                    format!(
                        "host function {} is answered by the API's caller, which only a session's cells can wait \
                         for: run this in a session",
                        call.name
                    ),
                ));
            };
            let desk = state.upgrade().and_then(|s| s.api_sessions.desk(&session));
            let Some(desk) = desk else {
                return Err(FunctionError::new("RuntimeError", "the session's server is gone"));
            };
            let (tx, rx) = oneshot::channel();
            let seq = desk.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let info = FunctionCallInfo {
                id: call.call_id.clone(),
                function: call.name,
                args: call.args,
                kwargs: call.kwargs,
                seq,
            };
            desk.waiting().insert(call.call_id.clone(), Waiting { info: info.clone(), reply: tx });
            let _unlisted = Unlisted(desk.clone(), call.call_id);
            let cell = desk.cell.load(std::sync::atomic::Ordering::SeqCst);
            let _ = desk.events.send((cell, CellEvent::Call(info)));
            rx.await.unwrap_or_else(|_| Err(FunctionError::new("RuntimeError", "the call was not answered")))
        })
    })
}

/// The API caller's answer to a call (`POST /v1/sessions/{id}/calls/{call_id}`):
/// `result`, or `error`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CallAnswer)]
pub(super) struct AnswerBody {
    /// The function's result (any JSON value).
    pub(super) result: Option<serde_json::Value>,
    /// The function's error, raised in the snippet.
    pub(super) error: Option<AnswerError>,
}

/// An error to raise in the snippet.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerError {
    /// One of ValueError, TypeError, KeyError, LookupError, PermissionError,
    /// TimeoutError, RuntimeError, NotImplementedError, ConnectionError (anything
    /// else is raised as RuntimeError).
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// Its text.
    pub(super) message: String,
}

/// Answer a cell's host function call (role submit; the session's owner).
///
/// Returns the cell's next pause (202) or its outcome (200), as a cell does.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/calls/{call_id}",
    tag = "api",
    params(
        ("id" = String, Path, description = "The session's id."),
        ("call_id" = String, Path, description = "The call's id, from its function_call."),
    ),
    request_body = AnswerBody,
    responses(
        (status = 200, description = "The cell ended: its outcome.", body = crate::Outcome),
        (status = 202, description = "The cell paused on another call.", body = Paused),
        (status = 404, response = NotFound),
        (status = 409, description = "Another request is waiting on this session's cell.", body = super::openapi::ErrorBody),
        Guarded,
        super::openapi::Submitted,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn answer(
    State(state): State<Shared>,
    Path((id, call_id)): Path<(String, String)>,
    Caller(caller, _): Caller<Submitter>,
    body: Body,
) -> Response {
    let Some(desk) = state.api_sessions.owned_desk(&id, &caller.name) else {
        return problem(StatusCode::NOT_FOUND, "no such session");
    };
    let b = match json_body::<AnswerBody>(&state, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let reply = match (b.result, b.error) {
        (Some(v), None) => Ok(v),
        (None, Some(e)) => Err(FunctionError::new(e.kind, e.message)),
        (None, None) => Ok(serde_json::Value::Null),
        (Some(_), Some(_)) => return problem(StatusCode::BAD_REQUEST, "give result or error, not both"),
    };
    let Some(waiting) = desk.waiting().remove(&call_id) else {
        return problem(StatusCode::NOT_FOUND, "no such call is waiting (answered already, or its timeout passed)");
    };
    if waiting.reply.send(reply).is_err() {
        return problem(StatusCode::NOT_FOUND, "no such call is waiting (its timeout passed)");
    }
    desk.next(&state).await
}
