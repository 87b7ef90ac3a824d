//! The operator's endpoints: `POST /v1/emergency-stop`, `POST /v1/resume` and
//! `POST /v1/policy/reload` (SIGHUP too), role admin.
//!
//! # Security invariant
//! A stop ends every session the server holds and every run in flight before it
//! answers (see [`crate::Sandbox::emergency_stop`]); from the moment it begins,
//! every endpoint that would start work answers 503 with the stop's reason. A
//! policy change applies only once a human approved it (see
//! [`crate::Sandbox::propose_policy`]); until then, and when it is refused or the
//! file is invalid, the policy in force stays.

use super::openapi::{BadRequest, Conflict, Guarded, TooLarge};
use super::*;
use crate::policy::Policy;

/// An emergency stop (`POST /v1/emergency-stop`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EmergencyStopRequest)]
pub(super) struct StopBody {
    /// Why (recorded, and told to every caller refused while stopped); 1–1024
    /// printable characters.
    pub(super) reason: String,
}

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
    // The sandbox refuses new work and records what is in flight first; the
    // server's sessions end once every run was told to stop, before the stop
    // waits for the tiers (their instances and containers are waited for too).
    let sandbox = state.sandbox();
    let why = format!("emergency stop by {}: {reason}", caller.name);
    let sessions = state.api_sessions.end_all(&why);
    let report = match sandbox
        .emergency_stop_with(&caller.name, reason, async {
            let _ = sessions.await;
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return sandbox_error(&state, &e),
    };
    tracing::warn!(by = caller.name, still_running = report.still_running, "emergency stop done");
    axum::Json(report).into_response()
}

/// Resume a stopped deployment (role admin); the stop that was in force, or null.
#[utoipa::path(post, path = "/v1/resume", tag = "operations",
    responses((status = 200, description = "`{resumed: Stopped | null}`.", body = Object), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn resume(State(state): State<Shared>, Caller(caller, _): Caller<Administrator>) -> Response {
    match state.sandbox().resume(&caller.name).await {
        Ok(was) => {
            tracing::warn!(by = caller.name, "resumed");
            axum::Json(serde_json::json!({ "resumed": was })).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

/// Ask to change the policy in force to the policy file as it is now (role
/// admin). The change waits for a human's approval (kind `policy_change`, with
/// the diff of the effective policies) for at most the approvals timeout; once
/// approved, new requests run under it. SIGHUP does the same.
#[utoipa::path(post, path = "/v1/policy/reload", tag = "operations",
    responses((status = 200, description = "`{status: \"applied\", approval}` or `{status: \"unchanged\"}`.", body = Object),
        (status = 400, response = BadRequest), (status = 409, response = Conflict), Guarded),
    security(("bearer" = ["admin"])))]
pub(super) async fn reload_policy(State(state): State<Shared>, Caller(caller, _): Caller<Administrator>) -> Response {
    reload(&state, &caller.name).await
}

/// Reads the policy file again and, when it differs, asks for its approval and
/// applies it (see [`crate::Sandbox::propose_policy`]); `caller` asked. Invalid
/// or refused: the policy in force stays.
pub(super) async fn reload(state: &AppState, caller: &str) -> Response {
    let Some(path) = state.policy_file.clone() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the server runs the built-in policy; start it with --policy FILE to change its policy while it runs",
        );
    };
    let Ok(_one) = state.reloading.try_lock() else {
        return problem(StatusCode::CONFLICT, "a policy change already waits for its decision");
    };
    let sandbox = state.sandbox();
    let origin = path.display().to_string();
    let read = tokio::task::spawn_blocking(move || read_policy_file(&path)).await;
    let parsed = match read {
        Ok(Ok(bytes)) => match String::from_utf8(bytes) {
            Ok(text) => Policy::from_yaml(&text, &origin)
                .map(|p| (p, crate::audit::sha256_hex(text.as_bytes())))
                .map_err(|e| e.to_string()),
            Err(_) => Err(format!("{origin}: not UTF-8")),
        },
        Ok(Err(e)) => Err(format!("{origin}: {e}")),
        Err(e) => Err(format!("{origin}: {e}")),
    };
    let (proposed, sha) = match parsed {
        Ok(p) => p,
        Err(why) => {
            tracing::error!(error = %why, "the policy file is not valid; the policy in force stays");
            if let Err(e) = sandbox.record_invalid_policy(&origin, caller, &why).await {
                return sandbox_error(state, &e);
            }
            return problem(StatusCode::BAD_REQUEST, &format!("the policy in force stays: {why}"));
        }
    };
    match sandbox.propose_policy(proposed, &origin, &sha, caller).await {
        Ok(crate::PolicyChange::Applied { sandbox: next, approval }) => {
            *state.sandbox.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(*next);
            tracing::warn!(approval, sha256 = sha, "the new policy is in force");
            axum::Json(serde_json::json!({"status": "applied", "approval": approval, "sha256": sha})).into_response()
        }
        Ok(crate::PolicyChange::Unchanged) => axum::Json(serde_json::json!({"status": "unchanged"})).into_response(),
        Ok(crate::PolicyChange::Refused(why)) => {
            problem(StatusCode::FORBIDDEN, &format!("not approved: {why}; the policy in force stays"))
        }
        Err(e) => sandbox_error(state, &e),
    }
}

/// Reloads the policy on each SIGHUP (as `signal:SIGHUP`) while the server lives.
pub(super) fn reload_on_hangup(state: std::sync::Weak<AppState>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("SIGHUP cannot be watched: the policy reloads through POST /v1/policy/reload only");
            return;
        };
        while hup.recv().await.is_some() {
            let Some(state) = state.upgrade() else { return };
            tokio::spawn(async move {
                let answer = reload(&state, "signal:SIGHUP").await;
                tracing::warn!(status = %answer.status(), "SIGHUP: policy reload answered");
            });
        }
    });
}

/// The policy file's bytes: a regular file (a FIFO or device in its place is
/// refused, never waited on) of at most 4 MiB.
fn read_policy_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take((4 << 20) + 1).read_to_end(&mut bytes)?;
    if bytes.len() > 4 << 20 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "larger than 4 MiB"));
    }
    Ok(bytes)
}
