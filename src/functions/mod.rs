//! Host functions: what a snippet's `from host import NAME` reaches. The policy
//! declares each function (`functions:`); it is implemented by a Rust closure the
//! embedding application registers ([`crate::SandboxBuilder::function`]), by the
//! operator's command named in the policy (`command.rs`), or, over HTTP, by the
//! API's caller (the server registers a closure that hands the call to it).
//!
//! # Security invariants
//! - Every call is checked here, on the host, whatever the guest's interpreter
//!   claims: an undeclared name, arguments over `max_arg_bytes` and a call past
//!   `max_calls` are refused before anything runs, and the run ends `denied`.
//! - A guest gets JSON values or an exception of a fixed set of classes, never a
//!   host object; an implementation's error text reaches the guest with host paths
//!   redacted, a command's stderr never does.
//! - A call to a critical function runs only once a human approved it, with the
//!   function, its arguments and the snippet in front of them; a denial or an
//!   expiry raises `PermissionError` in the snippet.
//! - Every call is an audit event (name, digests of arguments and result,
//!   duration, how it ended), and in the outcome's `calls`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::approval::{ApprovalStatus, Gate};
use crate::audit::{AuditLog, Event, EventKind, sha256_hex};
use crate::executor::{BoxFuture, CallInfo, CallReply, HostCall, HostCalls, HostLink};
use crate::policy::FunctionSpec;

mod command;

/// The exception classes an implementation's error may raise in the snippet.
pub use crate::executor::RAISABLE;

/// One call, as an implementation receives it.
#[derive(Debug, Clone)]
pub struct FunctionCall {
    /// The function's name (declared by the policy).
    pub name: String,
    /// Positional arguments.
    pub args: Vec<serde_json::Value>,
    /// Keyword arguments.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// This call's identifier (unique in the process).
    pub call_id: String,
    /// The session the run belongs to, if any.
    pub session: Option<String>,
    /// Who asked for the run.
    pub caller: String,
}

/// An implementation's error, raised in the snippet as `kind` (one of
/// [`RAISABLE`], else `RuntimeError`) with `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionError {
    /// The exception class.
    pub kind: String,
    /// Its text (host paths are redacted before the guest sees it).
    pub message: String,
}

impl FunctionError {
    /// An error raised as `kind` with `message`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> FunctionError {
        FunctionError { kind: kind.into(), message: message.into() }
    }
}

/// A host function's implementation.
pub type HostFunction =
    Arc<dyn Fn(FunctionCall) -> BoxFuture<'static, Result<serde_json::Value, FunctionError>> + Send + Sync>;

/// The implementations registered on a sandbox, by name, and the one that
/// answers every other declared function (a server's API caller).
#[derive(Default)]
pub struct Registry {
    functions: HashMap<String, HostFunction>,
    rest: std::sync::OnceLock<HostFunction>,
}

impl Registry {
    /// Registers `f` as `name`'s implementation (replacing any earlier one).
    pub fn insert(&mut self, name: impl Into<String>, f: HostFunction) {
        self.functions.insert(name.into(), f);
    }

    /// Whether `name` has an implementation here.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// Answers every declared function without a command or a closure of its own
    /// with `f`, from now on. Only the first such call takes effect: `false` when
    /// one was set already.
    pub fn answer_rest_with(&self, f: HostFunction) -> bool {
        self.rest.set(f).is_ok()
    }

    fn get(&self, name: &str) -> Option<&HostFunction> {
        self.functions.get(name).or_else(|| self.rest.get())
    }
}

/// Where one run's calls come from and are recorded.
pub(crate) struct RunContext {
    /// The audit request id of the run.
    pub(crate) request_id: Option<String>,
    /// Who asked.
    pub(crate) caller: String,
    /// The session, if the run is one of its cells.
    pub(crate) session: Option<String>,
    /// The snippet, shown to an approver.
    pub(crate) code: String,
    /// The session's earlier cells (most recent last), shown to an approver.
    pub(crate) earlier: Vec<String>,
    /// How long an approval may wait.
    pub(crate) approval_wait: Duration,
}

/// One run's host calls: the policy's declarations, the implementations, and
/// what the run has called so far.
pub(crate) struct RunCalls {
    specs: Arc<BTreeMap<String, FunctionSpec>>,
    registry: Arc<Registry>,
    gate: Option<Gate>,
    audit: Option<AuditLog>,
    cx: RunContext,
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    /// The first refusal: the run is over, and every later call gets it again,
    /// unrecorded (a guest that ignores a refusal cannot fill the log).
    refused: Option<String>,
    counts: HashMap<String, u64>,
    records: Vec<CallInfo>,
    waited: Duration,
}

/// The most characters of a guest-given function name kept in a record.
const NAME_SHOWN: usize = 64;

impl RunCalls {
    /// A run's calls under `specs`.
    pub(crate) fn new(
        specs: Arc<BTreeMap<String, FunctionSpec>>,
        registry: Arc<Registry>,
        gate: Option<Gate>,
        audit: Option<AuditLog>,
        cx: RunContext,
    ) -> Arc<RunCalls> {
        Arc::new(RunCalls { specs, registry, gate, audit, cx, state: Mutex::new(CallState::default()) })
    }

    /// The link a tier carries calls over.
    pub(crate) fn link(self: &Arc<Self>) -> HostLink {
        HostLink(self.clone())
    }

    /// The calls made so far and the time spent waiting on them.
    pub(crate) fn taken(&self) -> (Vec<CallInfo>, Duration) {
        let s = self.lock();
        (s.records.clone(), s.waited)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `call` against the policy: its declaration, or the refusal.
    fn admit(&self, call: &HostCall, arg_bytes: usize) -> Result<&FunctionSpec, String> {
        let Some(spec) = self.specs.get(&call.name) else {
            return Err(format!("host function {:?} is not declared by the policy", shown(&call.name)));
        };
        if arg_bytes as u64 > spec.max_arg_bytes {
            return Err(format!(
                "host function {}'s arguments are {arg_bytes} bytes of JSON, more than its max_arg_bytes of {}",
                call.name, spec.max_arg_bytes
            ));
        }
        let mut s = self.lock();
        let n = s.counts.entry(call.name.clone()).or_insert(0);
        if *n >= spec.max_calls {
            return Err(format!(
                "host function {} was called more than its max_calls of {} in one run",
                call.name, spec.max_calls
            ));
        }
        *n += 1;
        Ok(spec)
    }

    async fn answer(&self, call: HostCall) -> CallReply {
        let started = Instant::now();
        if let Some(why) = self.lock().refused.clone() {
            return CallReply::Refused(why);
        }
        let args_text = call.args.to_string();
        let (reply, status, approval) = match self.admit(&call, args_text.len()) {
            Err(why) => {
                self.lock().refused.get_or_insert(why.clone());
                (CallReply::Refused(why), "refused", None)
            }
            Ok(spec) => self.approved_and_run(&call, spec).await,
        };
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let function: String = call.name.chars().take(NAME_SHOWN).collect();
        {
            let mut s = self.lock();
            s.waited += started.elapsed();
            s.records.push(CallInfo { function: function.clone(), status: status.into(), ms });
        }
        if let Some(log) = &self.audit {
            let result_sha = match &reply {
                CallReply::Value(v) => Some(sha256_hex(v.to_string().as_bytes())),
                _ => None,
            };
            let error = match &reply {
                CallReply::Value(_) => None,
                CallReply::Raise { kind, message } => Some(format!("{kind}: {message}")),
                CallReply::Refused(why) => Some(why.clone()),
            };
            let data = serde_json::json!({
                "function": function, "arguments_sha256": sha256_hex(args_text.as_bytes()),
                "arguments_bytes": args_text.len(), "result_sha256": result_sha, "status": status, "ms": ms,
                "error": error, "approval": approval, "caller": self.cx.caller, "session": self.cx.session,
            });
            let event = Event { kind: EventKind::HostCall, request_id: self.cx.request_id.clone(), data, code: None };
            if let Err(e) = log.record_async(event).await {
                // The call happened; an unrecorded call is not answered.
                tracing::error!(error = %e, "a host call could not be recorded");
                return CallReply::raise("RuntimeError", "the host could not record this call; it was not answered");
            }
        }
        reply
    }

    /// A declared call: approved if critical, then run under its timeout.
    async fn approved_and_run(&self, call: &HostCall, spec: &FunctionSpec) -> (CallReply, &'static str, Option<i64>) {
        let mut approval = None;
        if spec.critical {
            let Some(gate) = &self.gate else {
                let msg = format!(
                    "host function {} needs a human's approval, and this sandbox has no approvals queue \
                     (it needs an audit log)",
                    call.name
                );
                return (CallReply::raise("PermissionError", msg), "denied", None);
            };
            let subject = serde_json::json!({
                "function": call.name, "arguments": call.args, "code": self.cx.code,
                "session": self.cx.session, "earlier_cells": self.cx.earlier, "caller": self.cx.caller,
                "request_id": self.cx.request_id,
            });
            let reason = format!("the snippet calls host function {}, critical under the policy", call.name);
            match gate.ask("function_call", subject, &reason, self.cx.approval_wait).await {
                Ok(item) if item.status == ApprovalStatus::Approved => approval = Some(item.id),
                Ok(item) => {
                    let status = if item.status == ApprovalStatus::Expired { "expired" } else { "denied" };
                    let msg = format!("host function {}: {}", call.name, crate::approval::refusal(&item));
                    return (CallReply::raise("PermissionError", msg), status, Some(item.id));
                }
                Err(e) => {
                    let msg = format!("host function {} could not be queued for approval: {e}", call.name);
                    return (CallReply::raise("PermissionError", msg), "denied", None);
                }
            }
        }
        let (args, kwargs) = split_args(&call.args);
        let fcall = FunctionCall {
            name: call.name.clone(),
            args,
            kwargs,
            call_id: next_call_id(),
            session: self.cx.session.clone(),
            caller: self.cx.caller.clone(),
        };
        let run: BoxFuture<'static, Result<serde_json::Value, FunctionError>> =
            match (&spec.command, self.registry.get(&call.name)) {
                (Some(argv), _) => Box::pin(command::run(argv.clone(), fcall, spec.max_result_bytes)),
                (None, Some(f)) => f(fcall),
                (None, None) => {
                    let msg = format!("host function {} has no implementation in this process", call.name);
                    return (CallReply::raise("NotImplementedError", msg), "error", approval);
                }
            };
        let reply = match tokio::time::timeout(spec.timeout, run).await {
            Err(_) => {
                let msg = format!(
                    "host function {} took longer than its timeout of {}s",
                    call.name,
                    spec.timeout.as_secs_f64()
                );
                return (CallReply::raise("TimeoutError", msg), "timeout", approval);
            }
            Ok(Err(e)) => (CallReply::raise(&e.kind, crate::error::redact_paths(&e.message)), "error"),
            Ok(Ok(v)) => {
                let n = v.to_string().len() as u64;
                if n > spec.max_result_bytes {
                    let msg = format!(
                        "host function {}'s result is {n} bytes of JSON, more than its max_result_bytes of {}",
                        call.name, spec.max_result_bytes
                    );
                    (CallReply::raise("RuntimeError", msg), "error")
                } else {
                    (CallReply::Value(v), "ok")
                }
            }
        };
        if let (Some(id), Some(gate)) = (approval, &self.gate) {
            let end = serde_json::json!({"status": reply.1});
            if let Err(e) = gate.complete(id, end).await {
                tracing::warn!(error = %e, id, "an approved host call's end could not be recorded on its item");
            }
        }
        (reply.0, reply.1, approval)
    }
}

impl HostCalls for RunCalls {
    fn names(&self) -> Vec<String> {
        self.specs.keys().cloned().collect()
    }

    fn call(&self, call: HostCall) -> BoxFuture<'_, CallReply> {
        Box::pin(self.answer(call))
    }
}

/// `{"args": [...], "kwargs": {...}}` as the guest sent them (anything else is
/// no arguments).
fn split_args(v: &serde_json::Value) -> (Vec<serde_json::Value>, serde_json::Map<String, serde_json::Value>) {
    let args = v.get("args").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    let kwargs = v.get("kwargs").and_then(serde_json::Value::as_object).cloned().unwrap_or_default();
    (args, kwargs)
}

/// A guest-given name, cut for messages.
fn shown(name: &str) -> String {
    name.chars().take(NAME_SHOWN).collect()
}

/// A process-unique call identifier.
fn next_call_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let salt = crate::hex::random(4).unwrap_or_default();
    format!("call-{n}-{salt}")
}
