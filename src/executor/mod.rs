//! The one interface every tier implements, and the values that cross it.
//!
//! Three outcomes are never confused:
//! - the guest's own failure (an exception, a `SyntaxError`) is an [`Outcome`] with
//!   [`Status::Exception`];
//! - a limit or a policy decision ends the run and is an [`Outcome`] with a limit
//!   status or [`Status::Denied`];
//! - a fault of the host (a worker that cannot start, a tier that is not set up) is
//!   an `Err(`[`SandboxError`]`)`, and only those count against circuit breakers.
//!
//! # Security
//! Messages in an [`Outcome`] are shown to the caller and may be shown back to the
//! guest; tiers must never put host paths or secrets in them.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
pub use crate::policy::{Overrides, Tier, TierChoice};

mod host;
pub use host::{CallReply, HostCall, HostCalls, HostLink, RAISABLE};
mod session;
pub use session::{CellInfo, TierSession};
#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
pub(crate) use session::{Lifecycle, end_reason, tier_session};

/// A boxed future, so that executors can sit behind `dyn Executor`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One snippet to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Caller's identifier, echoed in the outcome.
    pub id: Option<String>,
    /// Python source.
    pub code: String,
    /// Tightening of the executor's policy for this request only.
    pub overrides: Overrides,
    /// Give the run an empty, private, writable directory (`/scratch`, also its
    /// working directory), deleted when the run ends. Only tiers with a file system
    /// serve it; the rustpython tier refuses such a request.
    pub scratch: bool,
    /// Which tier a [`crate::Sandbox`] runs it on: `Auto` (the default) leaves it
    /// to the policy's `terrarium.tier` and the router. Executors ignore it.
    pub tier: TierChoice,
    /// Who asks (a server's token name, `local:USER` for the CLI), recorded on
    /// every audit event of the run; `None`: the library's caller, recorded as
    /// `local`.
    pub caller: Option<String>,
    /// Where the run's host function calls go (set by [`crate::Sandbox`] when the
    /// policy declares functions); `None`: the guest has no `host` module.
    pub host: Option<HostLink>,
    /// Mount this workspace read-write at `/workspace` (also the working
    /// directory): a [`crate::Sandbox`] gives the run a private copy of its current
    /// version and makes a new version of what the run changed (see
    /// [`crate::workspace`]). Only the wasm and docker tiers serve it.
    pub workspace: Option<String>,
    /// The run's copy of [`ExecRequest::workspace`] (set by [`crate::Sandbox`];
    /// executors mount it). An executor given a workspace without a copy refuses
    /// the request.
    pub mount: Option<crate::workspace::Mount>,
}

impl ExecRequest {
    /// A request for `code` under the executor's policy as it stands.
    pub fn new(code: impl Into<String>) -> ExecRequest {
        ExecRequest {
            id: None,
            code: code.into(),
            overrides: Overrides::default(),
            scratch: false,
            tier: TierChoice::Auto,
            caller: None,
            host: None,
            workspace: None,
            mount: None,
        }
    }

    /// Checks what every tier requires of source text: not empty, no NUL byte, at
    /// most `max_code_size` bytes.
    ///
    /// # Errors
    /// [`SandboxError::InvalidRequest`] saying which.
    pub fn validate(&self, max_code_size: u64) -> Result<(), SandboxError> {
        let code = &self.code;
        if code.trim().is_empty() {
            return Err(SandboxError::InvalidRequest("the code is empty".into()));
        }
        if code.len() as u64 > max_code_size {
            return Err(SandboxError::InvalidRequest(format!(
                "the code is {} bytes, more than the policy's max_code_size of {max_code_size} bytes",
                code.len()
            )));
        }
        if code.contains('\0') {
            return Err(SandboxError::InvalidRequest("the code contains a NUL byte".into()));
        }
        Ok(())
    }

    /// Sets this request's tightening of the policy.
    #[must_use]
    pub fn with_overrides(mut self, overrides: Overrides) -> ExecRequest {
        self.overrides = overrides;
        self
    }

    /// Sets the caller's identifier.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> ExecRequest {
        self.id = Some(id.into());
        self
    }

    /// Sets who asks (see [`ExecRequest::caller`]).
    #[must_use]
    pub fn with_caller(mut self, caller: impl Into<String>) -> ExecRequest {
        self.caller = Some(caller.into());
        self
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// The snippet ran to completion.
    Ok,
    /// The snippet raised (including `SyntaxError`).
    Exception,
    /// The wall-clock deadline passed.
    Timeout,
    /// The memory cap was reached.
    MemoryLimit,
    /// The fuel budget ran out.
    FuelExhausted,
    /// Output went past its cap.
    OutputLimit,
    /// The policy refused something the snippet did or tried.
    Denied,
    /// The interpreter died (a signal, a panic inside the interpreter); the host
    /// survived.
    Crashed,
    /// The request could not be served (e.g. the tier is not in this build).
    Error,
}

impl Status {
    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Exception => "exception",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::FuelExhausted => "fuel_exhausted",
            Status::OutputLimit => "output_limit",
            Status::Denied => "denied",
            Status::Crashed => "crashed",
            Status::Error => "error",
        }
    }

    /// Whether a limit ended the run.
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            Status::Timeout | Status::MemoryLimit | Status::FuelExhausted | Status::OutputLimit | Status::Crashed
        )
    }
}

crate::names::named! {
    /// The reasons Terrarium itself gives in [`ErrorInfo::kind`]. A snippet's own
    /// exception (status `exception`) keeps its class name instead, which may be any
    /// text, so a kind is only Terrarium's when the status is not `exception`.
    "error kind" pub enum ErrorKind {
        /// The wall-clock deadline passed.
        Timeout = "Timeout",
        /// The CPU-time limit (the kernel's, behind the deadline) was reached.
        CpuLimit = "CpuLimit",
        /// The memory cap was reached.
        MemoryLimit = "MemoryLimit",
        /// Output went past its cap.
        OutputLimit = "OutputLimit",
        /// The fuel budget ran out.
        FuelExhausted = "FuelExhausted",
        /// The policy refused something the snippet did or tried.
        PolicyDenied = "PolicyDenied",
        /// A critical operation was denied by its approver or not decided in time.
        NotApproved = "NotApproved",
        /// A request could not be read (a batch line that is not a request).
        InvalidRequest = "InvalidRequest",
        /// The interpreter's process died without answering.
        Crashed = "Crashed",
        /// The interpreter failed inside (a Rust panic); the run was discarded.
        InterpreterPanic = "InterpreterPanic",
        /// The run made a system call the seccomp filter forbids and was killed.
        SeccompViolation = "SeccompViolation",
        /// The interpreter overflowed its stack and was killed.
        StackOverflow = "StackOverflow",
        /// The interpreter's process broke the answer protocol and was killed.
        ProtocolError = "ProtocolError",
        /// The wasm interpreter trapped.
        Trap = "Trap",
        /// The command's program is not in the container's image (or cannot run).
        CommandNotFound = "CommandNotFound",
        /// The command exited with a status other than 0.
        ExitCode = "ExitCode",
        /// The workspace changed the same paths while the run worked on its copy.
        WorkspaceConflict = "WorkspaceConflict",
    }
}

/// The exception or reason behind a non-`ok` status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// Python exception type (`ZeroDivisionError`), or Terrarium's reason (an
    /// [`ErrorKind`]: `Timeout`, `PolicyDenied`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable message; never contains host paths.
    pub message: String,
}

impl ErrorInfo {
    /// Terrarium's reason `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo { kind: kind.as_str().into(), message: message.into() }
    }

    /// An exception the snippet raised, by its class name.
    pub fn raised(class: impl Into<String>, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo { kind: class.into(), message: message.into() }
    }

    /// Whether this is Terrarium's reason `kind` (for outcomes whose status is not
    /// `exception`; a snippet may name its own exception class anything).
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind.as_str()
    }
}

/// What a run used. `None` where the tier cannot measure it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Wall-clock time, from accepting the request to its outcome.
    pub wall_ms: u64,
    /// CPU time of the run.
    pub cpu_ms: Option<u64>,
    /// Fuel consumed (wasm tier).
    pub fuel: Option<u64>,
    /// Peak memory of the run.
    pub peak_memory_bytes: Option<u64>,
    /// Wall-clock time the run spent waiting for host functions and their
    /// approvals (included in `wall_ms`, not charged to the run's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_wait_ms: Option<u64>,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Outcome {
    /// The request's identifier, when it had one.
    pub id: Option<String>,
    /// How the run ended.
    pub status: Status,
    /// The tier that ran it (or was asked to).
    pub tier: Tier,
    /// Captured standard output (capped).
    pub stdout: String,
    /// Captured standard error (capped).
    pub stderr: String,
    /// The last expression's value as JSON, when it has a JSON form.
    pub result: Option<serde_json::Value>,
    /// The exception or reason, for every status but `ok`.
    pub error: Option<ErrorInfo>,
    /// Resources used.
    pub usage: Usage,
    /// Why the request ran on this tier, when a [`crate::Sandbox`] chose it
    /// (`null` from an executor called directly).
    #[serde(default)]
    pub route: Option<String>,
    /// What the static analysis noticed in the snippet (from a [`crate::Sandbox`]).
    #[serde(default)]
    pub findings: Vec<FindingInfo>,
    /// For a session's cell: its number, and whether the session ended with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<CellInfo>,
    /// The host function calls the run made, in order (the host's record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallInfo>,
    /// For a run with a workspace: what became of its changes (the host's record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceInfo>,
}

/// What became of a run's changes to its workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WorkspaceInfo {
    /// The workspace.
    pub name: String,
    /// The version the run's copy was made from.
    pub base: u64,
    /// `committed` (a new version), `unchanged`, `discarded` (the run did not end
    /// ok), `refused` (the run left something a workspace may not hold, or went
    /// past a quota), `denied` or `expired` (a human's approval), `conflict` (the
    /// workspace changed the same paths meanwhile).
    pub status: String,
    /// The version made, when one was.
    pub version: Option<u64>,
    /// Each changed path: `added`, `modified`, `mode` or `deleted`, with its new
    /// size.
    pub changes: Vec<WorkspaceChangeInfo>,
    /// sha256 of the change set (as audited and shown for approval).
    pub digest: Option<String>,
    /// Why, when nothing was committed.
    pub message: Option<String>,
}

/// One changed path of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WorkspaceChangeInfo {
    /// The path, relative to `/workspace`.
    pub path: String,
    /// `added`, `modified`, `mode` or `deleted`.
    pub action: String,
    /// The new size in bytes (files that are not deleted).
    pub size: Option<u64>,
}

/// One host function call as the outcome reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CallInfo {
    /// The function's name (as the guest gave it, cut to 64 characters).
    pub function: String,
    /// How the call ended: `ok`, `error` (the function raised), `timeout`,
    /// `refused` (the policy), `denied` or `expired` (a human's approval).
    pub status: String,
    /// Wall-clock time of the call, approval included.
    pub ms: u64,
}

/// A static-analysis finding as the outcome reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
// `Finding` in the OpenAPI document, the name its clients know.
#[cfg_attr(feature = "server", schema(as = Finding))]
pub struct FindingInfo {
    /// `deny` (the run is refused when the policy says `findings: deny`) or `warn`.
    pub severity: crate::analysis::Severity,
    /// 1-based line in the snippet.
    pub line: usize,
    /// What was found.
    pub message: String,
}

impl Outcome {
    /// Marks the run as ended with `status` for Terrarium's reason `kind`.
    pub fn end(&mut self, status: Status, kind: ErrorKind, message: impl Into<String>) {
        self.status = status;
        self.error = Some(ErrorInfo::new(kind, message));
    }

    /// Marks the run as ended by the snippet's own exception `class`.
    pub fn raise(&mut self, class: impl Into<String>, message: impl Into<String>) {
        self.status = Status::Exception;
        self.error = Some(ErrorInfo::raised(class, message));
    }

    /// The fields of this outcome that are the guest's word rather than the host's
    /// observation: a snippet may control the process it runs in, so what it
    /// printed, its value, whether it raised and with what are its own account. The
    /// tier, the route, usage, and every limit and denial status are the host's, but
    /// for the rustpython tier's fuel: its interpreter counts it (`usage.fuel`, and
    /// the `fuel_exhausted` status).
    pub fn guest_word(&self) -> &'static [&'static str] {
        let counted = self.tier == Tier::Rustpython && self.usage.fuel.is_some();
        match (self.status, counted) {
            (Status::Ok, false) => &["status", "stdout", "stderr", "result"],
            (Status::Ok, true) => &["status", "stdout", "stderr", "result", "usage.fuel"],
            (Status::Exception, false) => &["status", "stdout", "stderr", "error"],
            (Status::Exception | Status::FuelExhausted, true) => &["status", "stdout", "stderr", "error", "usage.fuel"],
            (_, false) => &["stdout", "stderr"],
            (_, true) => &["stdout", "stderr", "usage.fuel"],
        }
    }

    /// An `ok` outcome with nothing in it yet, for a tier to fill in as its run ends.
    pub fn blank(tier: Tier) -> Outcome {
        Outcome {
            id: None,
            status: Status::Ok,
            tier,
            stdout: String::new(),
            stderr: String::new(),
            result: None,
            error: None,
            usage: Usage::default(),
            route: None,
            findings: Vec::new(),
            session: None,
            calls: Vec::new(),
            workspace: None,
        }
    }

    /// An outcome with no output, for a run that never started or was refused.
    pub fn refused(
        id: Option<String>,
        tier: Tier,
        status: Status,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Outcome {
        Outcome { id, status, error: Some(ErrorInfo::new(kind, message)), ..Outcome::blank(tier) }
    }
}

/// A tier that runs snippets.
///
/// # Contract
/// - `execute` never panics and never lets a guest take down the caller's process
///   (where a tier cannot guarantee that, its module docs say so).
/// - Guest exceptions, limits and denials come back as `Ok(Outcome)`; `Err` is for
///   host faults only.
/// - Each request gets fresh interpreter state unless the tier documents sessions.
/// - It does not cover: auditing, routing, breakers (the [`crate::Sandbox`] does).
pub trait Executor: Send + Sync {
    /// Which tier this is.
    fn tier(&self) -> Tier;

    /// Runs one request.
    ///
    /// # Errors
    /// [`SandboxError`] for host faults, invalid requests, or an override that
    /// would loosen the policy.
    fn execute(&self, req: ExecRequest) -> BoxFuture<'_, Result<Outcome, SandboxError>>;

    /// Work of runs whose futures were dropped that is still going on the host:
    /// an instance interrupted but not yet at its next epoch tick, a container
    /// still being removed. [`crate::Sandbox::emergency_stop`] waits until every
    /// tier reports 0. Tiers whose runs end when their future is dropped (a child
    /// killed through its pidfd) report 0.
    fn lingering(&self) -> usize {
        0
    }

    /// Starts a session on this tier: a child, instance or container kept for
    /// its cells, under this executor's policy and its `sessions` limits.
    ///
    /// # Errors
    /// [`SandboxError::InvalidRequest`] from a tier that keeps no sessions; a host
    /// fault when the session's child cannot start.
    fn open_session(&self) -> BoxFuture<'_, Result<Box<dyn TierSession>, SandboxError>> {
        let tier = self.tier();
        Box::pin(
            async move { Err(SandboxError::InvalidRequest(format!("the {tier} tier does not keep sessions yet"))) },
        )
    }

    /// Starts a session with a workspace's copy mounted at `/workspace` for all
    /// its cells (set by [`crate::Sandbox::session`], which settles the copy after
    /// each cell). Tiers without a file system refuse it.
    ///
    /// # Errors
    /// As [`Executor::open_session`]; an invalid request on a tier that cannot
    /// mount a workspace.
    fn open_session_with(
        &self,
        mount: Option<crate::workspace::Mount>,
    ) -> BoxFuture<'_, Result<Box<dyn TierSession>, SandboxError>> {
        match mount {
            None => self.open_session(),
            Some(_) => {
                let tier = self.tier();
                Box::pin(async move {
                    Err(SandboxError::InvalidRequest(format!(
                        "the {tier} tier has no file system, so its sessions cannot mount a workspace"
                    )))
                })
            }
        }
    }
}

/// `d` in whole milliseconds, saturating (for `Usage`).
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The checks every tier makes before running a request: overrides may only
/// tighten `base`, the code must be valid, and the sandbox must be enabled.
/// `Ok(Err(outcome))` is a refusal to report as the request's outcome.
///
/// # Errors
/// [`SandboxError::Policy`] for a loosening override, [`SandboxError::InvalidRequest`]
/// for empty, oversized or NUL-containing code.
#[cfg(any(feature = "rustpython", feature = "wasm", feature = "docker"))]
pub fn admit(
    base: &crate::policy::Policy,
    req: &ExecRequest,
    tier: Tier,
) -> Result<Result<crate::policy::Policy, Outcome>, SandboxError> {
    let policy = base.tighten(&req.overrides)?;
    req.validate(policy.max_code_size())?;
    if req.scratch && tier == Tier::Rustpython {
        return Err(SandboxError::InvalidRequest(
            "the rustpython tier has no file system, so it cannot give a scratch directory (use --tier wasm or --tier docker)".into(),
        ));
    }
    if let Some(name) = &req.workspace {
        if tier == Tier::Rustpython {
            return Err(SandboxError::InvalidRequest(
                "the rustpython tier has no file system, so it cannot mount a workspace (use --tier wasm or --tier docker)".into(),
            ));
        }
        if req.mount.is_none() {
            return Err(SandboxError::InvalidRequest(format!(
                "workspace {name:?} has no copy to mount: workspaces are run through a Sandbox, which keeps their versions"
            )));
        }
        if req.scratch {
            return Err(SandboxError::InvalidRequest(
                "a run has either a scratch directory or a workspace, not both".into(),
            ));
        }
    }
    if !policy.enabled() {
        return Ok(Err(Outcome::refused(
            req.id.clone(),
            tier,
            Status::Denied,
            ErrorKind::PolicyDenied,
            "the sandbox is disabled by policy (security.sandbox.enabled: false)",
        )));
    }
    Ok(Ok(policy))
}
