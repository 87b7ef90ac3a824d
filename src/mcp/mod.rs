//! `terrarium mcp`: Terrarium as a Model Context Protocol server on stdio (rmcp),
//! for agents that reach their tools over MCP. Its tools run Python on the same
//! [`Sandbox`] as every other entry point, under the same policy, audit log and
//! approvals: `run_python` (code, optional timeout, tier and session),
//! `start_session`, `end_session`, `list_sessions` and `tier_status`.
//!
//! A run's outcome is the tool's structured content (the outcome as the HTTP API
//! gives it) and a text summary for clients that show text; any status but `ok`
//! marks the result as a tool error, with the reason. A host fault or a refused
//! request is a tool error with the reason, never a protocol error.
//!
//! # Security invariants
//! - The client is the caller of every run (`mcp:<client name>` in the audit log)
//!   and gets no more than `terrarium run` would: overrides only tighten the policy,
//!   a critical operation waits for a human: announced on stderr, and to the client
//!   as a progress notification of the waiting call (when it asked for progress)
//!   and a log message, each naming the approval request and how to approve it.
//! - Sessions are this connection's own: they end when it ends.
//! - Stdout carries only the protocol: logs go to stderr.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, Content, Implementation, LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam,
    ProgressToken, ServerCapabilities, ServerInfo,
};
use rmcp::service::{Peer, RequestContext, RoleServer};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::executor::{ExecRequest, Outcome, Status};
use crate::policy::{Overrides, TierChoice};
use crate::sandbox::{Sandbox, SessionHandle, SessionOptions};

/// The most sessions one connection keeps open (the policy's `sessions.max_open`
/// bounds them too).
const MAX_SESSIONS: usize = 64;

/// The connection's `run_python` calls in flight, by the request id their runs
/// carry, so that an approval request can be announced to the client that waits
/// for it. Give [`Waiting::announce`] to the sandbox's builder, and the same
/// `Waiting` to [`McpServer::new`].
#[derive(Clone, Default)]
pub struct Waiting {
    calls: Arc<std::sync::Mutex<HashMap<String, Waiter>>>,
    /// The least severe log level the client wants (`logging/setLevel`; default:
    /// all), as [`rank`] gives it.
    level: Arc<std::sync::atomic::AtomicU8>,
}

/// A log level's severity, from 0 (debug) to 7 (emergency).
fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

#[derive(Clone)]
struct Waiter {
    peer: Peer<RoleServer>,
    progress: Option<ProgressToken>,
}

impl Waiting {
    /// Announces each approval request to the client whose call waits for it.
    pub fn announce(&self) -> crate::approval::Announce {
        let waiting = self.clone();
        Arc::new(move |item: &crate::approval::Item| waiting.tell(item))
    }

    fn tell(&self, item: &crate::approval::Item) {
        // An execute approval names the run's own id; a host call's, the audit
        // log's `req:CALLER:ID`.
        let Some(rid) = item.subject["request_id"].as_str() else { return };
        let found = self.calls.lock().ok().and_then(|m| {
            m.iter().find(|(id, _)| rid == id.as_str() || rid.ends_with(&format!(":{id}"))).map(|(_, w)| w.clone())
        });
        let Some(w) = found else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let message = format!(
            "waiting for a human's approval: request {} ({}); an operator approves it with \
             `terrarium approvals approve {}` or denies it with `terrarium approvals deny {}`",
            item.id, item.reason, item.id, item.id
        );
        let log = rank(LoggingLevel::Warning) >= self.level.load(std::sync::atomic::Ordering::Relaxed);
        let data = serde_json::json!({
            "approval": item.id, "kind": item.kind, "reason": item.reason, "message": message,
        });
        rt.spawn(async move {
            if let Some(token) = w.progress {
                let mut p = ProgressNotificationParam::new(token, 0.0);
                p.message = Some(message);
                let _ = w.peer.notify_progress(p).await;
            }
            if log {
                let mut log = LoggingMessageNotificationParam::new(LoggingLevel::Warning, data);
                log.logger = Some("terrarium".into());
                #[expect(deprecated, reason = "clients show log messages today; progress is sent too")]
                let _ = w.peer.notify_logging_message(log).await;
            }
        });
    }

    /// Registers a call under `id`, or under a counted id when a call in flight
    /// has it already (a client that reuses ids); returns the id used.
    fn enter(&self, id: String, waiter: Waiter) -> (String, Leave) {
        let mut id = id;
        if let Ok(mut m) = self.calls.lock() {
            if m.contains_key(&id) {
                id = counted_id();
            }
            m.insert(id.clone(), waiter);
        }
        (id.clone(), Leave { waiting: self.clone(), id })
    }
}

/// Removes a call from [`Waiting`] when it ends (or its future is dropped).
struct Leave {
    waiting: Waiting,
    id: String,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut m) = self.waiting.calls.lock() {
            m.remove(&self.id);
        }
    }
}

/// The server: one per connection.
#[derive(Clone)]
pub struct McpServer {
    sandbox: Arc<Sandbox>,
    caller: String,
    waiting: Waiting,
    sessions: Arc<tokio::sync::Mutex<HashMap<String, SessionHandle>>>,
    tool_router: ToolRouter<McpServer>,
}

/// `run_python`'s arguments.
#[derive(Debug, Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Python source. The last expression's value is the result.
    pub code: String,
    /// Seconds; only shorter than the policy's timeout.
    pub timeout: Option<f64>,
    /// `auto` (the default: the lightest tier that can serve it), `rustpython`,
    /// `wasm` or `docker`. Ignored in a session (its tier stays).
    pub tier: Option<String>,
    /// Run as the next cell of this session (from `start_session`).
    pub session: Option<String>,
    /// A workspace to mount read-write at /workspace (wasm and docker tiers; the
    /// policy's workspaces.allow decides); what the run changes becomes its next
    /// version. Not in a session (a session names its workspace when it starts).
    pub workspace: Option<String>,
}

/// `start_session`'s arguments.
#[derive(Debug, Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    /// `auto` (the policy's tier) or a tier's name; the session stays on it.
    pub tier: Option<String>,
    /// A workspace every cell sees at /workspace; after each cell that ends ok
    /// what it changed becomes the workspace's next version.
    pub workspace: Option<String>,
}

/// `end_session`'s arguments.
#[derive(Debug, Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct EndArgs {
    /// The session's id.
    pub session: String,
}

/// The id of a run for JSON-RPC request `request`: `mcp-<number>` for a number,
/// `mcp-s-<string>` for a short plain string, else `mcp-#<n>` from a counter (the
/// client chooses request ids, and the id goes into the audit log).
fn run_id(request: &rmcp::model::RequestId) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match request {
        rmcp::model::NumberOrString::Number(n) => format!("mcp-{n}"),
        rmcp::model::NumberOrString::String(s) if !s.is_empty() && s.len() <= 64 && s.chars().all(plain) => {
            format!("mcp-s-{s}")
        }
        rmcp::model::NumberOrString::String(_) => counted_id(),
    }
}

fn counted_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("mcp-#{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![Content::text(message.into())])
}

fn tier_choice(tier: Option<&str>) -> Result<TierChoice, CallToolResult> {
    match tier {
        None => Ok(TierChoice::Auto),
        Some(t) => TierChoice::parse(t)
            .ok_or_else(|| tool_error(format!("tier {t:?}: expected auto, rustpython, wasm or docker"))),
    }
}

/// The tool result for an outcome: structured (the outcome) and a text summary.
fn outcome_result(o: &Outcome) -> CallToolResult {
    let structured = serde_json::to_value(o).unwrap_or_default();
    let mut text = format!("status: {}", o.status.as_str());
    if let Some(e) = &o.error {
        text.push_str(&format!("\nerror: {}: {}", e.kind, e.message));
    }
    if !o.stdout.is_empty() {
        text.push_str(&format!("\nstdout:\n{}", o.stdout));
    }
    if !o.stderr.is_empty() {
        text.push_str(&format!("\nstderr:\n{}", o.stderr));
    }
    if let Some(r) = &o.result {
        text.push_str(&format!("\nresult: {r}"));
    }
    let mut r = if o.status == Status::Ok {
        CallToolResult::structured(structured)
    } else {
        CallToolResult::structured_error(structured)
    };
    r.content = vec![Content::text(text)];
    r
}

#[tool_router]
impl McpServer {
    /// A server for one connection whose client is `caller` (in the audit log);
    /// `waiting` is the one whose [`Waiting::announce`] the sandbox announces
    /// approval requests with.
    pub fn new(sandbox: Arc<Sandbox>, caller: impl Into<String>, waiting: Waiting) -> McpServer {
        McpServer {
            sandbox,
            caller: caller.into(),
            waiting,
            sessions: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Run Python code in Terrarium's sandbox under its policy. Returns stdout, stderr, the last \
                       expression's value as JSON (result), and the status (ok, exception, timeout, memory_limit, \
                       denied, ...). Any status but ok is a tool error with the reason. A critical operation \
                       waits for a human's approval; the wait is announced as progress and a log message.")]
    async fn run_python(&self, Parameters(a): Parameters<RunArgs>, cx: RequestContext<RoleServer>) -> CallToolResult {
        let timeout = match a.timeout.map(|t| crate::policy::timeout_secs(t).ok_or(t)).transpose() {
            Ok(d) => d,
            Err(t) => return tool_error(format!("timeout {t}: expected a positive number of seconds")),
        };
        // The run's id names the MCP request, in the audit log and in an approval
        // request (which is how its announcement finds this call).
        let (id, _leave) =
            self.waiting.enter(run_id(&cx.id), Waiter { progress: cx.meta.get_progress_token(), peer: cx.peer });
        let mut req = ExecRequest::new(a.code).with_caller(self.caller.clone()).with_id(id);
        req.overrides = Overrides { timeout, ..Overrides::default() };
        let ran = match &a.session {
            Some(_) if a.workspace.is_some() => {
                return tool_error("a session's cells use the session's workspace (name it in start_session)");
            }
            Some(id) => {
                let session = self.sessions.lock().await.get(id).cloned();
                let Some(session) = session else { return tool_error(format!("no such session: {id:?}")) };
                session.execute(req).await
            }
            None => {
                req.tier = match tier_choice(a.tier.as_deref()) {
                    Ok(t) => t,
                    Err(e) => return e,
                };
                req.workspace = a.workspace;
                self.sandbox.execute(req).await
            }
        };
        match ran {
            Ok(o) => outcome_result(&o),
            Err(e) => tool_error(crate::error::redact_paths(&e.to_string())),
        }
    }

    #[tool(description = "Start a session: cells (run_python with its id) share interpreter state on one tier.")]
    async fn start_session(&self, Parameters(a): Parameters<StartArgs>) -> CallToolResult {
        let tier = match tier_choice(a.tier.as_deref()) {
            Ok(t) => t,
            Err(e) => return e,
        };
        if self.sessions.lock().await.len() >= MAX_SESSIONS {
            return tool_error(format!("this connection has {MAX_SESSIONS} sessions open; end one first"));
        }
        let options = SessionOptions { tier, caller: Some(self.caller.clone()), workspace: a.workspace };
        match self.sandbox.session(options).await {
            Ok(s) => {
                let (id, tier) = (s.id().to_string(), s.tier());
                self.sessions.lock().await.insert(id.clone(), SessionHandle::new(s));
                CallToolResult::structured(serde_json::json!({"session": id, "tier": tier}))
            }
            Err(e) => tool_error(crate::error::redact_paths(&e.to_string())),
        }
    }

    #[tool(description = "End a session: its state is gone and its process killed.")]
    async fn end_session(&self, Parameters(a): Parameters<EndArgs>) -> CallToolResult {
        let Some(s) = self.sessions.lock().await.remove(&a.session) else {
            return tool_error(format!("no such session: {:?}", a.session));
        };
        // A running cell is stopped first (with its process, and any approval it
        // waits for).
        let cells = s.end("ended by its MCP client").await;
        CallToolResult::structured(serde_json::json!({"session": a.session, "cells": cells, "ended": true}))
    }

    #[tool(description = "List this connection's sessions: id, tier, cells run, and why each ended if it has.")]
    async fn list_sessions(&self) -> CallToolResult {
        let mut out = Vec::new();
        for (id, s) in self.sessions.lock().await.iter() {
            if let Some((cells, ended)) = s.state() {
                out.push(serde_json::json!({"session": id, "tier": s.tier(), "cells": cells, "ended": ended}));
            } else {
                out.push(serde_json::json!({"session": id, "running": true}));
            }
        }
        CallToolResult::structured(serde_json::json!({"sessions": out}))
    }

    #[tool(description = "The tiers' circuit breakers: whether each tier is taking requests.")]
    async fn tier_status(&self) -> CallToolResult {
        let breakers: Vec<serde_json::Value> = self
            .sandbox
            .breakers()
            .snapshot()
            .into_iter()
            .map(|b| serde_json::to_value(b).unwrap_or_default())
            .collect();
        CallToolResult::structured(serde_json::json!({"breakers": breakers}))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpServer {
    /// The client's `logging/setLevel`: approval announcements (`warning`) are sent
    /// as log messages only at that level or below.
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), rmcp::ErrorData> {
        self.waiting.level.store(rank(request.level), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn get_info(&self) -> ServerInfo {
        // Logging is deprecated in the protocol's next revision; clients show it today.
        #[expect(deprecated, reason = "the approval wait is announced as a log message too")]
        let capabilities = ServerCapabilities::builder().enable_tools().enable_logging().build();
        ServerInfo::new(capabilities)
            .with_server_info(Implementation::new("terrarium", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs untrusted Python in Terrarium's sandbox. Use run_python for one snippet; start_session \
                 and run_python with its id for cells that share state.",
            )
    }
}

/// Serves MCP on this process's stdin and stdout until the client closes it; its
/// sessions end then.
///
/// # Errors
/// The transport's, when the connection cannot start.
pub async fn serve_stdio(server: McpServer) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let sessions = server.sessions.clone();
    let running = server.serve(rmcp::transport::stdio()).await?;
    let _ = running.waiting().await;
    for (_, s) in sessions.lock().await.drain() {
        s.end("its MCP connection closed").await;
    }
    Ok(())
}
