//! `terrarium serve`: Terrarium over HTTP (axum), for callers in other languages,
//! and the `/review` page where humans decide the approvals queue.
//!
//! Endpoints (the OpenAPI document at `/openapi.json` is the reference):
//! `POST /v1/execute` and `POST /v1/commands` (role `submit`), `GET /v1/approvals`,
//! `GET /v1/approvals/{id}`, `POST /v1/approvals/{id}/approve|deny` (role
//! `approve`), `GET /v1/breakers` and `GET /metrics` (role `admin`), `GET
//! /v1/health` and `GET /openapi.json` (no token), `/review` (see `review.rs`).
//!
//! # Security invariants
//! - Every endpoint but health, the OpenAPI document and the review page's login
//!   needs a bearer token with the endpoint's role (see [`auth`]); a missing or
//!   unknown token is 401, a token without the role 403, and both are audit events
//!   (with the token's name when it is known, never the token).
//! - Load is shed, never queued without bound, and cannot be held by clients
//!   without credentials: requests that carry a known bearer token or review
//!   session share `max_requests` slots, all others (the health check, the OpenAPI
//!   document, the review sign-in form) a small pool of their own
//!   (`anonymous_requests`); beyond either, 429 with `Retry-After`, without parsing
//!   the body, whose first 64 KiB are drained for at most 100 ms so the reply is not
//!   lost to a reset. The sandbox's own limits on runs in a tier and on operations
//!   waiting for a human answer 429 too ([`SandboxError::Busy`]), and an audit log
//!   too far behind 503s new work. A body is read only once the request holds a
//!   slot, within `body_timeout` (408) and never past `max_body` bytes (413; 16 KiB
//!   without credentials); headers must arrive within `header_timeout`, or the
//!   connection is closed.
//! - Refused callers are audited, aggregated: the first 401/403 of a token name (or
//!   of unknown tokens) in each ten-second window is an `auth_denied` event; the
//!   others in the window are counted in one `auth_denied_repeated` event when it
//!   ends (or in the next `auth_denied`'s `unrecorded_before`).
//! - Server faults (5xx) tell the client only a reference; the details, which may
//!   name host paths, go to the server's log.
//! - The listener is loopback unless the operator names another address.

#![allow(clippy::result_large_err, reason = "handlers hand axum responses back by value, as axum itself does")]

pub mod auth;
mod conn;
pub mod metrics;
mod review;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::Semaphore;

use self::auth::{Identity, Role, Tokens};
use self::metrics::Metrics;
use crate::audit::Event;
use crate::error::SandboxError;
use crate::executor::ExecRequest;
use crate::policy::{Overrides, TierChoice};
use crate::sandbox::Sandbox;

/// The OpenAPI document (`GET /openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Where `terrarium serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// How the server admits work.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Who may call, with which roles.
    pub tokens: Tokens,
    /// Requests served at once (all endpoints); more get 429.
    pub max_requests: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Requests without credentials served at once (their own pool).
    pub anonymous_requests: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, once admitted.
    pub body_timeout: Duration,
    /// Host names (lower case) a request's Host header may name besides IP
    /// addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Connections served at once (kept below the descriptor limit); more wait in
    /// the listen backlog.
    pub max_connections: usize,
}

impl ServerConfig {
    /// Defaults for `tokens`: 256 requests, bodies up to twice the
    /// policy's code size cap (JSON escapes newlines and quotes in two bytes) plus
    /// room for the fields around it.
    pub fn new(tokens: Tokens, max_code_size: u64) -> ServerConfig {
        let max_body = usize::try_from(max_code_size).unwrap_or(usize::MAX).saturating_mul(2).saturating_add(64 << 10);
        ServerConfig {
            tokens,
            max_requests: 256,
            max_body,
            anonymous_requests: 16,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            allowed_hosts: Vec::new(),
            max_connections: 1024,
        }
    }
}

struct AppState {
    sandbox: Arc<Sandbox>,
    /// The sandbox's approvals queue (a server always has one).
    gate: crate::approval::Gate,
    tokens: Tokens,
    metrics: Metrics,
    in_flight: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    max_body: usize,
    body_timeout: Duration,
    sessions: review::Sessions,
    refusals: Refusals,
    allowed_hosts: Vec<String>,
    /// Started on the first request (inside the runtime).
    refusal_flusher: std::sync::OnceLock<()>,
}

/// Every window, records the refusals that were only counted, so that none is
/// lost when no later refusal comes to carry the count. Ends with the app.
fn start_refusal_flusher(state: &Shared) {
    state.refusal_flusher.get_or_init(|| {
        let weak = Arc::downgrade(state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(state) = weak.upgrade() else { return };
                let Some(log) = state.sandbox.audit_log() else { return };
                let events: Vec<Event> = state
                    .refusals
                    .take_ended()
                    .into_iter()
                    .map(|((status, name), count)| Event {
                        kind: "auth_denied_repeated".into(),
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
const ANONYMOUS_BODY: usize = 16 << 10;

/// How long a request without credentials may take to send its body.
const ANONYMOUS_BODY_TIME: Duration = Duration::from_secs(2);
/// Refused callers are aggregated over windows of this length.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// Refusals per (status, token name), for aggregation: when the current window
/// started and how many refusals in it were not recorded.
#[derive(Default)]
struct Refusals {
    map: std::sync::Mutex<std::collections::HashMap<RefusalKey, (std::time::Instant, u64)>>,
}

/// A refusal's status and token name (`None`: no known token).
type RefusalKey = (u16, Option<String>);

impl Refusals {
    /// Takes the counts of refusals not recorded, of windows that have ended.
    fn take_ended(&self) -> Vec<(RefusalKey, u64)> {
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
    fn record(&self, status: u16, name: Option<&str>) -> Option<u64> {
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

type Shared = Arc<AppState>;

/// The application: every route, with admission and metrics. The sandbox must
/// have an audit log (its approvals queue lives there).
///
/// # Errors
/// The sandbox has no audit log, or there are no tokens.
pub fn app(sandbox: Arc<Sandbox>, config: ServerConfig) -> Result<Router, String> {
    let Some(gate) = sandbox.approvals().cloned() else {
        return Err("the server needs a sandbox with an audit log (its approvals queue lives there)".into());
    };
    if config.tokens.is_empty() {
        return Err("no tokens: pass --token-file FILE or set TERRARIUM_TOKEN".into());
    }
    if config.max_requests == 0 || config.anonymous_requests == 0 {
        return Err("--max-requests must be at least 1".into());
    }
    let state = Arc::new(AppState {
        sandbox,
        gate,
        tokens: config.tokens,
        metrics: Metrics::default(),
        in_flight: Arc::new(Semaphore::new(config.max_requests)),
        anonymous: Arc::new(Semaphore::new(config.anonymous_requests)),
        max_body: config.max_body,
        body_timeout: config.body_timeout,
        sessions: review::Sessions::default(),
        refusals: Refusals::default(),
        allowed_hosts: config.allowed_hosts,
        refusal_flusher: std::sync::OnceLock::new(),
    });
    Ok(Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/commands", post(command))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/approvals/{id}/{decision}", post(decide_approval))
        .route("/v1/breakers", get(breakers))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(review::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admit))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state))
}

/// Serves `app` on `listen` until `shutdown` resolves; calls `ready` with the
/// bound address once it listens. Each connection must send a request's headers
/// within `header_timeout` (idle keep-alive connections included), or it is
/// closed; a reply the client does not read for 10 s closes it too. At most
/// `max_connections` (kept below the descriptor limit) are open at once; more wait
/// in the listen backlog. On shutdown, requests in flight get 30 s to finish.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    app: Router,
    listen: SocketAddr,
    header_timeout: Duration,
    max_connections: usize,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    ready(listener.local_addr()?);
    // S1: at most this many connections hold a descriptor; a client that stops
    // reading its replies loses its connection after conn::WRITE_STALL.
    let connections = Arc::new(Semaphore::new(conn::connection_cap(max_connections).max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of descriptors or a connection reset before accept:
                        // breathe and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let stream = conn::Deadlined::new(stream, conn::WRITE_STALL);
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight 30 s after shutdown began; stopping anyway");
    }
    Ok(())
}

/// A JSON error body: `{"error": message}`.
fn problem(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// 429 with the seconds to wait.
fn busy(state: &AppState, message: &str) -> Response {
    state.metrics.rejected("busy");
    let mut r = problem(StatusCode::TOO_MANY_REQUESTS, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Whether the request carries credentials: a known bearer token (whatever its
/// roles) or a live review session.
fn credentialed(state: &AppState, headers: &HeaderMap) -> bool {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    bearer.is_some_and(|t| state.tokens.identify(t).is_some()) || state.sessions.signed_in(headers)
}

/// Whether the request names this server by an IP address, `localhost` or an
/// allowed name. DNS rebinding needs a name (the attacker's, rebound to this
/// address), so a literal address is always this server.
fn host_allowed(req: &Request, allowed: &[String]) -> Result<(), String> {
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().map_err(|_| "the Host header is not text".to_string())?.to_string(),
        None => req.uri().authority().map(|a| a.as_str().to_string()).ok_or("the request names no Host")?,
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
    Err(format!("Host {host:?} is not a name of this server (start it with --allow-host NAME to allow one)"))
}

/// Admission and metrics, around every route: the Host check (421); a slot in the
/// pool for requests with credentials or in the one for those without, or 429; then
/// the body, read whole within `body_timeout` (408) and its size limit (413).
async fn admit(State(state): State<Shared>, req: Request, next: Next) -> Response {
    start_refusal_flusher(&state);
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    if let Err(why) = host_allowed(&req, &state.allowed_hosts) {
        let r = problem(StatusCode::MISDIRECTED_REQUEST, &why);
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
    state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
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
    state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    state.metrics.request(&route, r.status().as_u16());
    r
}

/// The caller's identity when its bearer token has `role`; otherwise the 401 or
/// 403 to answer, recorded in the audit log first.
async fn authorize(state: &AppState, headers: &HeaderMap, role: Role, what: &str) -> Result<Identity, Response> {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    let id = presented.and_then(|t| state.tokens.identify(t));
    match id {
        Some(id) if id.can(role) => Ok(id.clone()),
        Some(id) => Err(refuse_caller(state, StatusCode::FORBIDDEN, what, Some(&id.name), role).await),
        None => Err(refuse_caller(state, StatusCode::UNAUTHORIZED, what, None, role).await),
    }
}

/// Records and answers a refused caller.
async fn refuse_caller(state: &AppState, code: StatusCode, what: &str, name: Option<&str>, role: Role) -> Response {
    let (reason, message) = if code == StatusCode::FORBIDDEN {
        ("forbidden", format!("this token lacks the {} role", role.as_str()))
    } else {
        ("unauthorized", "a valid bearer token is required".to_string())
    };
    state.metrics.rejected(reason);
    if let Some(log) = state.sandbox.audit_log()
        && let Some(unrecorded) = state.refusals.record(code.as_u16(), name)
    {
        let data = serde_json::json!({
            "status": code.as_u16(), "endpoint": what, "token_name": name, "role_needed": role.as_str(),
            "unrecorded_before": unrecorded,
        });
        let event = Event { kind: "auth_denied".into(), request_id: None, data, code: None };
        if let Err(e) = log.admit_async(event).await {
            return audit_error(&e);
        }
    }
    let mut r = problem(code, &message);
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The answer when the audit log does not take an event: 503 when it is behind
/// (shed, retry), else a fault.
fn audit_error(e: &crate::audit::AuditError) -> Response {
    if let crate::audit::AuditError::Overloaded(_) = e {
        let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "the audit log is behind; retry later");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    tracing::error!(error = %e, "cannot record an event");
    fault("the audit log", e)
}

/// A 500 that names only a reference; the details go to the log.
fn fault(what: &str, error: &dyn std::fmt::Display) -> Response {
    let reference = random_hex(6).unwrap_or_else(|| "0".repeat(12));
    tracing::error!(reference, error = %error, "{what} failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, &format!("{what} failed (reference {reference} in the server log)"))
}

/// `bytes` random bytes from the OS, in hex (session ids, CSRF tokens, nonces,
/// fault references); `None` when the OS has no randomness to give.
fn random_hex(bytes: usize) -> Option<String> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The body, read only up to the limit.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, state.max_body).await.map_err(|_| {
        state.metrics.rejected("too_large");
        problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {} bytes or broken", state.max_body))
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(bytes).map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
}

/// A `submit` request's caller and JSON body: the token first, then the body (up
/// to the limit), then its parse.
async fn submitted<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    body: Body,
) -> Result<(Identity, T), Response> {
    let caller = authorize(state, headers, Role::Submit, what).await?;
    let bytes = read_body(state, body).await?;
    Ok((caller, parse(&bytes)?))
}

/// `POST /v1/execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    code: String,
    id: Option<String>,
    tier: Option<String>,
    #[serde(default)]
    scratch: bool,
    timeout: Option<f64>,
    max_memory: Option<serde_json::Value>,
    max_output: Option<serde_json::Value>,
    allowed_modules: Option<Vec<String>>,
}

/// A size as a number of bytes or a string such as `"64m"`.
fn size(field: &str, v: Option<serde_json::Value>) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| format!("{field}: {n} is not a whole number of bytes"))
        }
        Some(serde_json::Value::String(s)) => {
            crate::policy::parse_size(&s).map(Some).map_err(|e| format!("{field}: {e}"))
        }
        Some(other) => Err(format!("{field}: {other} is not a size")),
    }
}

impl ExecuteBody {
    fn request(self) -> Result<ExecRequest, String> {
        let tier = match self.tier.as_deref() {
            None => TierChoice::Auto,
            Some(t) => {
                TierChoice::parse(t).ok_or_else(|| format!("tier {t:?}: expected auto, rustpython, wasm or docker"))?
            }
        };
        let timeout = match self.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t.min(1e9))),
            Some(t) => return Err(format!("timeout {t}: expected a positive number of seconds")),
        };
        let overrides = Overrides {
            timeout,
            max_memory: size("max_memory", self.max_memory)?,
            max_output: size("max_output", self.max_output)?,
            allowed_modules: self.allowed_modules.map(|m| m.into_iter().collect()),
        };
        Ok(ExecRequest { id: self.id, code: self.code, overrides, scratch: self.scratch, tier, caller: None })
    }
}

/// The answer for a sandbox error: the request's fault (4xx, with the reason) or
/// the server's (5xx, with a reference).
fn sandbox_error(state: &AppState, e: &SandboxError) -> Response {
    match e {
        SandboxError::Busy(why) => busy(state, why),
        SandboxError::InvalidRequest(_) | SandboxError::Policy(_) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
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
        SandboxError::Audit(a) => audit_error(a),
        _ => fault("the run", e),
    }
}

async fn execute(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let (caller, b) = match submitted::<ExecuteBody>(&state, &headers, "POST /v1/execute", body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match b.request() {
        Ok(r) => r,
        Err(why) => return problem(StatusCode::BAD_REQUEST, &why),
    };
    tracing::info!(caller = caller.name, id = ?req.id, "execute");
    match state.sandbox.execute(req.with_caller(caller.name.clone())).await {
        Ok(o) => {
            state.metrics.outcome(o.tier.as_str(), o.status.as_str());
            axum::Json(o).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

/// `POST /v1/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandBody {
    /// A command line (quoted as a shell would quote it).
    command: Option<String>,
    /// Or its words.
    argv: Option<Vec<String>>,
    /// Seconds to wait for a human when it needs approval (default: the policy's
    /// `approvals.timeout`; 0: do not wait).
    wait: Option<f64>,
    /// Only decide.
    #[serde(default)]
    check: bool,
}

async fn command(State(state): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let (caller, b) = match submitted::<CommandBody>(&state, &headers, "POST /v1/commands", body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let line = match (b.command, b.argv) {
        (Some(line), None) => line,
        (None, Some(argv)) if !argv.is_empty() => crate::command::quote_words(&argv),
        _ => return problem(StatusCode::BAD_REQUEST, "give exactly one of command (a line) or argv (its words)"),
    };
    let policy = state.sandbox.policy();
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
    match crate::command::handle_command(&state.sandbox, &line, wait, !b.check, &caller.name).await {
        Ok(report) => {
            if let Some(o) = &report.outcome {
                state.metrics.outcome("docker", o.status.as_str());
            }
            axum::Json(report).into_response()
        }
        Err(e) => sandbox_error(&state, &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    /// Only items older than this id (the next page: the last id of this one).
    before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// Items per page of `GET /v1/approvals` unless the caller asks.
const PAGE: usize = 100;

async fn list_approvals(State(state): State<Shared>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Approve, "GET /v1/approvals").await {
        return r;
    }
    if let Some(Err(why)) = q.status.as_deref().map(crate::approval::check_status) {
        return problem(StatusCode::BAD_REQUEST, &format!("status {why}"));
    }
    let limit = match q.limit {
        None => PAGE,
        Some(n) if (1..=crate::approval::MAX_PAGE).contains(&n) => n,
        Some(n) => return problem(StatusCode::BAD_REQUEST, &format!("limit {n}: expected 1 to 1000")),
    };
    match state.gate.list(q.status, q.before, limit).await {
        Ok(items) => axum::Json(items).into_response(),
        Err(e) => fault("the approvals queue", &e),
    }
}

async fn show_approval(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Approve, "GET /v1/approvals/{id}").await {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else { return problem(StatusCode::NOT_FOUND, "no such approval request") };
    match state.gate.get(id).await {
        Ok(Some(item)) => axum::Json(item).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, &format!("no approval request {id}")),
        Err(e) => fault("the approvals queue", &e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    note: Option<String>,
}

async fn decide_approval(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    body: Body,
) -> Response {
    let caller = match authorize(&state, &headers, Role::Approve, "POST /v1/approvals/{id}/{decision}").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return problem(StatusCode::NOT_FOUND, "expected /approve or /deny"),
    };
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
async fn decide(state: &AppState, id: i64, approve: bool, caller: &Identity, note: Option<&str>) -> Response {
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

async fn breakers(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin, "GET /v1/breakers").await {
        return r;
    }
    axum::Json(state.sandbox.breakers().snapshot()).into_response()
}

async fn health(State(state): State<Shared>) -> Response {
    let tiers: Vec<&str> = state.sandbox.policy().allowed_tiers().iter().map(|t| t.as_str()).collect();
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "tiers": tiers}))
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin, "GET /metrics").await {
        return r;
    }
    let breakers = state
        .sandbox
        .breakers()
        .snapshot()
        .into_iter()
        .map(|b| {
            let v = match b.state {
                crate::breaker::State::Closed => 0.0,
                crate::breaker::State::HalfOpen => 1.0,
                crate::breaker::State::Open => 2.0,
            };
            (format!("breaker=\"{}\"", b.name), v)
        })
        .collect();
    let pending = match state.gate.pending().await {
        Ok(n) => n as f64,
        Err(e) => return fault("the approvals queue", &e),
    };
    let running = vec![(String::new(), state.sandbox.running() as f64)];
    let text = state.metrics.render(&[
        ("terrarium_running", "Runs and commands in a tier now (0 when runs are not limited).", running),
        ("terrarium_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", breakers),
        ("terrarium_approvals_pending", "Critical operations waiting for a human.", vec![(String::new(), pending)]),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
