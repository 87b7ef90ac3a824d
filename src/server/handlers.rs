//! The endpoints: execute, commands, approvals, breakers, health, the OpenAPI
//! document and metrics.

use super::openapi::{
    BadRequest, Conflict, Forbidden, Guarded, NotFound, ServerFault, Submitted, TooLarge, Unauthorized, Verdict,
    size_schema, tier_choice_schema,
};
use super::*;

/// A run to make (`POST /v1/execute`). Overrides may only tighten the policy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ExecuteRequest)]
pub(super) struct ExecuteBody {
    /// Python source, UTF-8, at most the policy's max_code_size.
    pub(super) code: String,
    /// Echoed in the outcome and the audit log.
    pub(super) id: Option<String>,
    /// `auto` (the router's choice) or a tier's name.
    #[schema(schema_with = tier_choice_schema)]
    pub(super) tier: Option<String>,
    /// A writable, empty /scratch (wasm and docker tiers). Critical when the policy
    /// lists writable_scratch.
    #[serde(default)]
    #[schema(default = false)]
    pub(super) scratch: bool,
    /// A workspace to mount read-write at /workspace (wasm and docker tiers): the
    /// run works on a copy, and what it changes becomes a new version (held for
    /// approval when the policy lists workspace_change).
    pub(super) workspace: Option<String>,
    /// Seconds; only shorter than the policy's.
    pub(super) timeout: Option<f64>,
    /// Bytes or a size such as "64m"; only smaller than the policy's.
    #[schema(schema_with = size_schema)]
    pub(super) max_memory: Option<serde_json::Value>,
    /// Bytes or a size; only smaller than the policy's.
    #[schema(schema_with = size_schema)]
    pub(super) max_output: Option<serde_json::Value>,
    /// A subset of the policy's modules.
    pub(super) allowed_modules: Option<Vec<String>>,
    /// A fuel budget; only smaller than the policy's (any, when it has none).
    pub(super) fuel: Option<u64>,
}

/// Why a request body's field is refused (the 400 answer's reason, naming the field).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {why}")]
pub(super) struct InvalidField {
    field: &'static str,
    why: String,
}

fn invalid(field: &'static str, why: String) -> InvalidField {
    InvalidField { field, why }
}

/// A size as a number of bytes or a string such as `"64m"`.
pub(super) fn size(field: &'static str, v: Option<serde_json::Value>) -> Result<Option<u64>, InvalidField> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| invalid(field, format!("{n} is not a whole number of bytes")))
        }
        Some(serde_json::Value::String(s)) => {
            crate::policy::parse_size(&s).map(Some).map_err(|e| invalid(field, e.to_string()))
        }
        Some(other) => Err(invalid(field, format!("{other} is not a size"))),
    }
}

impl ExecuteBody {
    pub(super) fn request(self) -> Result<ExecRequest, InvalidField> {
        let tier = match self.tier.as_deref() {
            None => TierChoice::Auto,
            Some(t) => TierChoice::parse(t)
                .ok_or_else(|| invalid("tier", format!("{t:?}: expected auto, rustpython, wasm or docker")))?,
        };
        let timeout = self
            .timeout
            .map(|t| {
                crate::policy::timeout_secs(t)
                    .ok_or_else(|| invalid("timeout", format!("{t}: expected a positive number of seconds")))
            })
            .transpose()?;
        let overrides = Overrides {
            timeout,
            max_memory: size("max_memory", self.max_memory)?,
            max_output: size("max_output", self.max_output)?,
            allowed_modules: self.allowed_modules.map(|m| m.into_iter().collect()),
            fuel: self.fuel,
        };
        Ok(ExecRequest {
            id: self.id,
            code: self.code,
            overrides,
            scratch: self.scratch,
            tier,
            caller: None,
            host: None,
            workspace: self.workspace,
            mount: None,
        })
    }
}

/// The answer for a sandbox error: the request's fault (4xx, with the reason) or
/// the server's (5xx, with a reference).
pub(super) fn sandbox_error(state: &AppState, e: &SandboxError) -> Response {
    match e {
        SandboxError::Busy(why) => busy(state, why),
        SandboxError::NotApproved(why) => problem(StatusCode::FORBIDDEN, &format!("not approved: {why}")),
        SandboxError::SessionEnded(why) => {
            problem(StatusCode::GONE, &format!("session ended: {}", crate::error::redact_paths(why)))
        }
        SandboxError::InvalidRequest(_) | SandboxError::Policy(_) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
        SandboxError::Workspace(w) => match w {
            crate::workspace::WorkspaceError::NotFound(_) => problem(StatusCode::NOT_FOUND, &e.to_string()),
            crate::workspace::WorkspaceError::Host { .. } => fault("the workspace operation", e),
            _ => problem(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        SandboxError::BreakerOpen(open) => {
            let mut r =
                problem(StatusCode::SERVICE_UNAVAILABLE, &format!("breaker {} is open; retry later", open.name));
            let secs = open.retry_in.ceil().max(1.0).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        SandboxError::TierUnavailable { tier, .. } => {
            tracing::error!(error = %e, "tier unavailable");
            problem(StatusCode::SERVICE_UNAVAILABLE, &format!("tier {tier} is not available on this server"))
        }
        SandboxError::Audit { overloaded, source } => audit_failure(*overloaded, source),
        SandboxError::Stopped(_) => {
            state.metrics.rejected("stopped");
            problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        _ => fault("the run", e),
    }
}

/// Run a snippet (role submit).
///
/// A run the policy calls critical waits for a human first; one not approved in time
/// ends denied (NotApproved).
#[utoipa::path(
    post,
    path = "/v1/execute",
    tag = "api",
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "How the run ended (any status, including denied and limits).", body = crate::Outcome),
        Guarded,
        Submitted,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn execute(State(state): State<Shared>, Caller(caller, _): Caller<Submitter>, body: Body) -> Response {
    let b = match json_body::<ExecuteBody>(&state, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match b.request() {
        Ok(r) => r,
        Err(why) => return problem(StatusCode::BAD_REQUEST, &why.to_string()),
    };
    tracing::info!(caller = caller.name, id = ?req.id, "execute");
    match state.sandbox().execute(req.with_caller(caller.name.clone())).await {
        Ok(o) => {
            state.metrics.outcome(o.tier, o.status);
            axum::Json(o).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

/// A system command to check and run (`POST /v1/commands`): exactly one of command
/// or argv.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CommandRequest)]
pub(super) struct CommandBody {
    /// A command line, quoted as a POSIX shell would quote it; no shell ever runs it.
    pub(super) command: Option<String>,
    /// Or its words.
    #[schema(min_items = 1)]
    pub(super) argv: Option<Vec<String>>,
    /// Seconds to wait for a human when it needs approval (default and maximum: the
    /// policy's approvals.timeout; 0: do not wait, deny).
    pub(super) wait: Option<f64>,
    /// Only decide.
    #[serde(default)]
    #[schema(default = false)]
    pub(super) check: bool,
}

/// Check a system command and, when allowed or approved, run it (role submit).
///
/// It runs in a fresh hardened docker-tier container, never through a shell.
#[utoipa::path(
    post,
    path = "/v1/commands",
    tag = "api",
    request_body = CommandBody,
    responses(
        (status = 200, description = "What the rules (or a human) said, and how the run ended when it ran.", body = crate::CommandReport),
        Guarded,
        Submitted,
    ),
    security(("bearer" = ["submit"])),
)]
pub(super) async fn command(State(state): State<Shared>, Caller(caller, _): Caller<Submitter>, body: Body) -> Response {
    let b = match json_body::<CommandBody>(&state, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let line = match (b.command, b.argv) {
        (Some(line), None) => line,
        (None, Some(argv)) if !argv.is_empty() => crate::command::quote_words(&argv),
        _ => return problem(StatusCode::BAD_REQUEST, "give exactly one of command (a line) or argv (its words)"),
    };
    let sandbox = state.sandbox();
    let policy = sandbox.policy();
    let wait = match b.wait {
        None => Some(policy.approvals().timeout),
        Some(0.0) => None,
        Some(w) if w.is_finite() && w > 0.0 && w <= policy.approvals().timeout.as_secs_f64() => {
            Some(Duration::from_secs_f64(w))
        }
        Some(w) => {
            let most = policy.approvals().timeout.as_secs_f64();
            return problem(StatusCode::BAD_REQUEST, &format!("wait {w}: expected 0 ≤ seconds ≤ {most}"));
        }
    };
    tracing::info!(caller = caller.name, line, "command");
    match state.sandbox().run_command(&line, wait, !b.check, &caller.name).await {
        Ok(report) => {
            if let Some(o) = &report.outcome {
                state.metrics.outcome(crate::Tier::Docker, o.status);
            }
            axum::Json(report).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

/// The query of `GET /v1/approvals`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only items with this status.
    #[param(value_type = Option<crate::approval::ApprovalStatus>)]
    pub(super) status: Option<String>,
    /// Only items older than this id (the next page: the last id of this one).
    pub(super) before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub(super) limit: Option<usize>,
}

/// Items per page of `GET /v1/approvals` unless the caller asks.
pub(super) const PAGE: usize = 100;

/// The approvals queue, newest first (role approve).
#[utoipa::path(
    get,
    path = "/v1/approvals",
    tag = "api",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of items.", body = Vec<crate::approval::Item>),
        (status = 400, response = BadRequest),
        Guarded,
    ),
    security(("bearer" = ["approve"])),
)]
pub(super) async fn list_approvals(
    State(state): State<Shared>,
    _: Caller<Approver>,
    Query(q): Query<ListQuery>,
) -> Response {
    let status = match q.status.as_deref().map(str::parse::<crate::approval::ApprovalStatus>).transpose() {
        Ok(s) => s,
        Err(why) => return problem(StatusCode::BAD_REQUEST, &format!("status {why}")),
    };
    let limit = match q.limit {
        None => PAGE,
        Some(n) if (1..=crate::approval::MAX_PAGE).contains(&n) => n,
        Some(n) => return problem(StatusCode::BAD_REQUEST, &format!("limit {n}: expected 1 to 1000")),
    };
    match state.gate.list(status, q.before, limit).await {
        Ok(items) => axum::Json(items).into_response(),
        Err(e) => fault("the approvals queue", &e),
    }
}

/// One item (role approve).
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}",
    tag = "api",
    params(("id" = i64, Path, description = "The item's id.")),
    responses(
        (status = 200, description = "The item.", body = crate::approval::Item),
        (status = 404, response = NotFound),
        Guarded,
    ),
    security(("bearer" = ["approve"])),
)]
pub(super) async fn show_approval(
    State(state): State<Shared>,
    _: Caller<Approver>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else { return problem(StatusCode::NOT_FOUND, "no such approval request") };
    match state.gate.get(id).await {
        Ok(Some(item)) => axum::Json(item).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        Err(e) => fault("the approvals queue", &e),
    }
}

/// A decision's optional body (`POST /v1/approvals/{id}/approve|deny`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Decision)]
pub(super) struct DecideBody {
    /// Recorded with the decision (at most 4096 bytes).
    pub(super) note: Option<String>,
}

/// Approve or deny a pending item as the token's name (role approve). Audited.
///
/// Nobody decides their own request.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/{decision}",
    tag = "api",
    params(
        ("id" = i64, Path, description = "The item's id."),
        ("decision" = Verdict, Path, description = "What the approver decides."),
    ),
    request_body(content = DecideBody, description = "Optional: an empty body decides without a note."),
    responses(
        (status = 200, description = "The decided item.", body = crate::approval::Item),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 503, description = "An approval while the deployment is stopped (emergency stop): nothing is approved until it is resumed.", body = super::openapi::ErrorBody),
        Guarded,
    ),
    security(("bearer" = ["approve"])),
)]
pub(super) async fn decide_approval(
    State(state): State<Shared>,
    Caller(caller, _): Caller<Approver>,
    Path((id, decision)): Path<(String, String)>,
    body: Body,
) -> Response {
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return problem(StatusCode::NOT_FOUND, "expected /approve or /deny"),
    };
    // Nothing is approved into running while the deployment is stopped.
    if approve && let Err(e) = state.sandbox().check_not_stopped() {
        return sandbox_error(&state, &e);
    }
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let b: DecideBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        DecideBody::default()
    } else {
        match parse(&bytes) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let Ok(id) = id.parse::<i64>() else { return problem(StatusCode::NOT_FOUND, "no such approval request") };
    decide(&state, id, approve, &caller, b.note.as_deref()).await
}

/// Decides an item as `caller`: the item, 404, 409 (already decided or expired).
pub(super) async fn decide(
    state: &AppState,
    id: i64,
    approve: bool,
    caller: &Identity,
    note: Option<&str>,
) -> Response {
    use crate::approval::ApprovalError;
    match state.gate.decide(id, approve, &caller.name, note).await {
        Ok(item) => axum::Json(item).into_response(),
        Err(ApprovalError::NotFound(_)) => problem(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        Err(e @ ApprovalError::Decided { .. }) => problem(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ (ApprovalError::BadDecider | ApprovalError::NoteTooLong(_))) => {
            problem(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ ApprovalError::OwnRequest(_)) => problem(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => fault("the approvals queue", &e),
    }
}

/// Circuit breakers (role admin).
#[utoipa::path(
    get,
    path = "/v1/breakers",
    tag = "api",
    responses(
        (status = 200, description = "Every breaker's state.", body = Vec<crate::breaker::Snapshot>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = ["admin"])),
)]
pub(super) async fn breakers(State(state): State<Shared>, _: Caller<Administrator>) -> Response {
    axum::Json(state.sandbox().breakers().snapshot()).into_response()
}

/// The answer of `GET /v1/health`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// `ok`, or `stopped` while an emergency stop is in force (new work is
    /// refused with 503 until an operator resumes).
    status: &'static str,
    /// The emergency stop in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<crate::Stopped>,
    /// Terrarium's version.
    version: &'static str,
    /// The tiers the policy allows.
    tiers: Vec<crate::Tier>,
    /// How many workspaces' live files differ from their current version (as of
    /// the watcher's last check; absent when the policy allows no workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    workspaces_drifted: Option<usize>,
}

/// Liveness; no token.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "api",
    responses((status = 200, description = "The server is up.", body = Health)),
    security(()),
)]
pub(super) async fn health(State(state): State<Shared>) -> Response {
    let tiers = state.sandbox().policy().allowed_tiers().to_vec();
    let workspaces_drifted = state.watch.as_ref().map(|w| w.drifted().len());
    let stopped = state.sandbox().stopped();
    let status = if stopped.is_some() { "stopped" } else { "ok" };
    axum::Json(Health { status, stopped, version: env!("CARGO_PKG_VERSION"), tiers, workspaces_drifted })
        .into_response()
}

/// This document; no token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "api",
    responses(
        (status = 200, description = "OpenAPI 3.1, generated from the handlers' types.", content_type = "application/json", body = Object),
        (status = 500, response = ServerFault),
    ),
    security(()),
)]
pub(super) async fn openapi() -> Response {
    match super::openapi::document() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => fault("the OpenAPI document", &e),
    }
}

/// Counters and gauges, in OpenMetrics text format 1.0.0 as Prometheus scrapes it (role admin).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "api",
    responses(
        (status = 200, description = "Counters and gauges.", content_type = "application/openmetrics-text", body = String),
        Guarded,
    ),
    security(("bearer" = ["admin"])),
)]
pub(super) async fn metrics(State(state): State<Shared>, _: Caller<Administrator>) -> Response {
    let breakers = state
        .sandbox()
        .breakers()
        .snapshot()
        .into_iter()
        .map(|b| {
            let v = match b.state {
                crate::breaker::State::Closed => 0,
                crate::breaker::State::HalfOpen => 1,
                crate::breaker::State::Open => 2,
            };
            (b.name, v)
        })
        .collect();
    let approvals_pending = match state.gate.pending().await {
        Ok(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Err(e) => return fault("the approvals queue", &e),
    };
    let running = i64::try_from(state.sandbox().running()).unwrap_or(i64::MAX);
    let drifted = state.watch.as_ref().map_or(0, |w| i64::try_from(w.drifted().len()).unwrap_or(i64::MAX));
    let text = state.metrics.render(&super::metrics::Scrape {
        running,
        breakers,
        approvals_pending,
        workspaces_drifted: drifted,
        stopped: i64::from(state.sandbox().stopped().is_some()),
        audit_backlog: state.sandbox().audit_log().map_or(0, |l| i64::try_from(l.backlog()).unwrap_or(i64::MAX)),
    });
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}
