//! Admission and answers: the middleware every request passes (host, size and
//! time limits), authorization by role, problem bodies, and reading bodies.

use super::*;

/// A JSON error body: `{"error": message}`.
pub(super) fn problem(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(super::openapi::ErrorBody { error: message.to_string() })).into_response()
}

/// 429 with the seconds to wait.
pub(super) fn busy(state: &AppState, message: &str) -> Response {
    state.metrics.rejected("busy");
    let mut r = problem(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Whether the request carries credentials: a known bearer token (whatever its
/// roles) or a live review session.
pub(super) fn credentialed(state: &AppState, headers: &HeaderMap) -> bool {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    bearer.is_some_and(|t| state.tokens.identify(t).is_some()) || state.sessions.signed_in(headers)
}

/// Why a request is not for this server (the 421 answer's reason).
#[derive(Debug, thiserror::Error)]
pub(super) enum NotForUs {
    /// The Host header is not text.
    #[error("the Host header is not text")]
    Unreadable,
    /// Neither a Host header nor an authority in the request line.
    #[error("the request names no Host")]
    Missing,
    /// A name this server was not told it has.
    #[error("Host {0:?} is not a name of this server (start it with --allow-host NAME to allow one)")]
    OtherName(String),
}

/// Whether the request names this server by an IP address, `localhost` or an
/// allowed name. DNS rebinding needs a name (the attacker's, rebound to this
/// address), so a literal address is always this server.
pub(super) fn host_allowed(req: &Request, allowed: &[String]) -> Result<(), NotForUs> {
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().map_err(|_| NotForUs::Unreadable)?.to_string(),
        None => req.uri().authority().map(|a| a.as_str().to_string()).ok_or(NotForUs::Missing)?,
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.split_once(']'))
        && v6.0.parse::<std::net::Ipv6Addr>().is_ok()
        && (v6.1.is_empty() || v6.1.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())))
    {
        return Ok(()); // an IPv6 literal
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || allowed.contains(&name) {
        return Ok(());
    }
    Err(NotForUs::OtherName(host))
}

/// Admission and metrics, around every route: the Host check (421); a slot in the
/// pool for requests with credentials or in the one for those without, or 429; then
/// the body, read whole within `body_timeout` (408) and its size limit (413).
pub(super) async fn admit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    start_refusal_flusher(&state);
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    if let Err(why) = host_allowed(&req, &state.allowed_hosts) {
        let r = problem(StatusCode::MISDIRECTED_REQUEST, &why.to_string());
        state.metrics.request(&route, r.status().as_u16());
        return r;
    }
    let known = credentialed(&state, req.headers());
    // No body, no work: the health check, and the sign-in form and the OpenAPI
    // document for callers without credentials, are answered outside both pools,
    // so that clients filling the pool without credentials never hold them at 429.
    let bodiless = req.method() == axum::http::Method::GET
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req.headers().get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
    if route == "/v1/health" || (!known && bodiless && (route == "/review" || route == "/openapi.json")) {
        let r = next.run(req).await;
        state.metrics.request(&route, r.status().as_u16());
        return r;
    }
    let pool = if known { &state.in_flight } else { &state.anonymous };
    let Ok(_slot) = pool.clone().try_acquire_owned() else {
        // Take in what the client already sent (at most 64 KiB, at most 100 ms, and no
        // slot held meanwhile): closing a connection with unread bytes makes the
        // kernel reset it, and the client would lose the 429 before reading it.
        let drain = axum::body::to_bytes(req.into_body(), 64 * 1024);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), drain).await;
        let r = busy(&state, "the server is at its limit of requests in flight; retry");
        state.metrics.request(&route, r.status().as_u16());
        return r;
    };
    // Decremented however the request ends, a client that hung up included.
    struct InFlight<'a>(&'a Metrics);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.in_flight.dec();
        }
    }
    state.metrics.in_flight.inc();
    let in_flight = InFlight(&state.metrics);
    let r = async {
        let (parts, body) = req.into_parts();
        let limit = if known { state.max_body } else { ANONYMOUS_BODY };
        // At most 16 KiB without credentials: two seconds are plenty, and a slow
        // sender holds one of the 16 anonymous slots no longer than that.
        let deadline = if known { state.body_timeout } else { state.body_timeout.min(ANONYMOUS_BODY_TIME) };
        let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                state.metrics.rejected("too_large");
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is larger than {limit} bytes or broken"),
                );
            }
            Err(_) => {
                state.metrics.rejected("slow_body");
                let mut r = problem(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("the body did not arrive within {} s", deadline.as_secs_f64()),
                );
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        };
        next.run(Request::from_parts(parts, Body::from(bytes))).await
    }
    .await;
    drop(in_flight);
    state.metrics.request(&route, r.status().as_u16());
    r
}

/// The caller's identity when its bearer token has `role`; otherwise the 401 or
/// 403 to answer, recorded in the audit log first.
pub(super) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
    what: &str,
) -> Result<Identity, Response> {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    let id = presented.and_then(|t| state.tokens.identify(t));
    match id {
        Some(id) if id.can(role) => Ok(id.clone()),
        Some(id) => Err(refuse_caller(state, StatusCode::FORBIDDEN, what, Some(&id.name), role).await),
        None => Err(refuse_caller(state, StatusCode::UNAUTHORIZED, what, None, role).await),
    }
}

/// The role a [`Caller`] must hold.
pub(super) trait NeedsRole {
    /// The role.
    const ROLE: Role;
}

/// Marker: the `submit` role.
pub(super) struct Submitter;
impl NeedsRole for Submitter {
    const ROLE: Role = Role::Submit;
}

/// Marker: the `approve` role.
pub(super) struct Approver;
impl NeedsRole for Approver {
    const ROLE: Role = Role::Approve;
}

/// Marker: the `admin` role.
pub(super) struct Administrator;
impl NeedsRole for Administrator {
    const ROLE: Role = Role::Admin;
}

/// A caller holding role `R`, as an extractor: a handler that takes it runs only
/// for a token with that role (or `admin`); anyone else is answered 401 or 403,
/// counted and recorded, before the handler or any extractor after this one runs.
pub(super) struct Caller<R>(pub(super) Identity, pub(super) std::marker::PhantomData<R>);

impl<R: NeedsRole> axum::extract::FromRequestParts<Shared> for Caller<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &Shared) -> Result<Self, Response> {
        let route = parts.extensions.get::<MatchedPath>().map_or(parts.uri.path(), |p| p.as_str());
        let what = format!("{} {route}", parts.method);
        authorize(state, &parts.headers, R::ROLE, &what).await.map(|id| Caller(id, std::marker::PhantomData))
    }
}

/// Records and answers a refused caller.
pub(super) async fn refuse_caller(
    state: &AppState,
    code: StatusCode,
    what: &str,
    name: Option<&str>,
    role: Role,
) -> Response {
    let (reason, message) = if code == StatusCode::FORBIDDEN {
        ("forbidden", format!("this token lacks the {} role", role.as_str()))
    } else {
        ("unauthorized", "a valid bearer token is required".to_string())
    };
    state.metrics.rejected(reason);
    if let Err(r) = record_refusal(state, code, what, name, role).await {
        return r;
    }
    let mut r = problem(code, &message);
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Records a refused caller in the audit log, in aggregate (the first of each kind
/// in a window, the rest counted; see `refusals.rs`).
///
/// # Errors
/// The answer to give instead when the audit log does not take the event.
pub(super) async fn record_refusal(
    state: &AppState,
    code: StatusCode,
    what: &str,
    name: Option<&str>,
    role: Role,
) -> Result<(), Response> {
    if let Some(log) = state.sandbox().audit_log()
        && let Some(unrecorded) = state.refusals.record(code.as_u16(), name)
    {
        let data = serde_json::json!({
            "status": code.as_u16(), "endpoint": what, "token_name": name, "role_needed": role.as_str(),
            "unrecorded_before": unrecorded,
        });
        let event = Event { kind: EventKind::AuthDenied, request_id: None, data, code: None };
        log.admit_async(event).await.map_err(|e| audit_error(&e))?;
    }
    Ok(())
}

/// The answer when the audit log does not take an event: 503 when it is behind
/// (shed, retry), else a fault.
pub(super) fn audit_error(e: &crate::audit::AuditError) -> Response {
    audit_failure(matches!(e, crate::audit::AuditError::Overloaded(_)), e)
}

/// 503 with `Retry-After` when the audit log is only behind, else a 500.
pub(super) fn audit_failure(overloaded: bool, e: &dyn std::fmt::Display) -> Response {
    if overloaded {
        let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "the audit log is behind; retry later");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    tracing::error!(error = %e, "cannot record an event");
    fault("the audit log", e)
}

/// A 500 that names only a reference; the details go to the log.
pub(super) fn fault(what: &str, error: &dyn std::fmt::Display) -> Response {
    let reference = crate::hex::random(6).unwrap_or_else(|| "0".repeat(12));
    tracing::error!(reference, error = %error, "{what} failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, &format!("{what} failed (reference {reference} in the server log)"))
}

/// The body, read only up to the limit.
pub(super) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, state.max_body).await.map_err(|_| {
        state.metrics.rejected("too_large");
        problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {} bytes or broken", state.max_body))
    })
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(bytes).map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

/// A request's JSON body: read up to the limit, then parsed (after the caller's
/// role was checked by its [`Caller`] extractor).
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(state: &AppState, body: Body) -> Result<T, Response> {
    let bytes = read_body(state, body).await?;
    parse(&bytes)
}
