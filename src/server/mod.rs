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
use crate::audit::{Event, EventKind};
use crate::error::SandboxError;
use crate::executor::ExecRequest;
use crate::policy::{Overrides, TierChoice};
use crate::sandbox::Sandbox;

mod refusals;
use refusals::*;
mod respond;
use respond::*;
mod handlers;
use handlers::*;

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

type Shared = Arc<AppState>;

/// Why [`app`] cannot serve with the sandbox and settings it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The sandbox records nothing, so it has no approvals queue.
    #[error("the server needs a sandbox with an audit log (its approvals queue lives there)")]
    NoAuditLog,
    /// Nobody could authenticate.
    #[error("no tokens: pass --token-file FILE or set TERRARIUM_TOKEN")]
    NoTokens,
    /// No request could ever be admitted.
    #[error("--max-requests must be at least 1")]
    NoCapacity,
}

/// The application: every route, with admission and metrics. The sandbox must
/// have an audit log (its approvals queue lives there).
///
/// # Errors
/// The sandbox has no audit log, or there are no tokens.
pub fn app(sandbox: Arc<Sandbox>, config: ServerConfig) -> Result<Router, AppError> {
    let Some(gate) = sandbox.approvals().cloned() else {
        return Err(AppError::NoAuditLog);
    };
    if config.tokens.is_empty() {
        return Err(AppError::NoTokens);
    }
    if config.max_requests == 0 || config.anonymous_requests == 0 {
        return Err(AppError::NoCapacity);
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
