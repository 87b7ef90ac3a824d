//! The operator's endpoints for a bad day: `POST /v1/emergency-stop` and `POST
//! /v1/resume` (role admin).
//!
//! # Security invariant
//! A stop ends every session the server holds and every run in flight before it
//! answers (see [`crate::Sandbox::emergency_stop`]); from the moment it begins,
//! every endpoint that would start work answers 503 with the stop's reason.

use super::openapi::{BadRequest, Guarded, TooLarge};
use super::*;

/// An emergency stop (`POST /v1/emergency-stop`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EmergencyStopRequest)]
pub(super) struct StopBody {
    /// Why (recorded, and told to every caller refused while stopped); 1–1024
    /// printable characters.
    pub(super) reason: String,
}

/// The longest reason a stop keeps, characters.
const MAX_REASON: usize = 1024;

/// Stop everything (role admin): refuse new work, record what is in flight, stop
/// it, expire pending approvals; the deployment stays stopped across restarts until
/// resumed.
#[utoipa::path(post, path = "/v1/emergency-stop", tag = "operations", request_body = StopBody,
    responses((status = 200, description = "Stopped: what was in flight and what was done.", body = crate::StopReport),
        (status = 400, response = BadRequest), (status = 413, response = TooLarge), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn emergency_stop(
    State(state): State<Shared>,
    Caller(caller, _): Caller<Administrator>,
    body: Body,
) -> Response {
    let b: StopBody = match json_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reason = b.reason.trim();
    let printable = reason.chars().all(|c| !c.is_control() && crate::text::hidden(c).is_none());
    if reason.is_empty() || !printable || reason.chars().count() > MAX_REASON {
        return problem(StatusCode::BAD_REQUEST, "reason: 1 to 1024 printable characters");
    }
    tracing::warn!(by = caller.name, reason, "emergency stop");
    // The sandbox refuses new work and records what is in flight first; the
    // server's sessions end once that record is durable.
    let stopping = state.sandbox.emergency_stop(&caller.name, reason);
    let report = match stopping.await {
        Ok(r) => r,
        Err(e) => return sandbox_error(&state, &e),
    };
    let ended = state.api_sessions.end_all(&format!("emergency stop by {}: {reason}", caller.name)).await;
    tracing::warn!(sessions = ended, still_running = report.still_running, "emergency stop done");
    axum::Json(report).into_response()
}

/// Resume a stopped deployment (role admin); the stop that was in force, or null.
#[utoipa::path(post, path = "/v1/resume", tag = "operations",
    responses((status = 200, description = "`{resumed: Stopped | null}`.", body = Object), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn resume(State(state): State<Shared>, Caller(caller, _): Caller<Administrator>) -> Response {
    match state.sandbox.resume(&caller.name).await {
        Ok(was) => {
            tracing::warn!(by = caller.name, "resumed");
            axum::Json(serde_json::json!({ "resumed": was })).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}
