//! Host functions as a tier sees them: a snippet's call arrives over the channel
//! the tier already has with its guest, goes to the request's [`HostLink`], and
//! the reply goes back as Python values or an exception.
//!
//! # Security
//! A tier only carries calls: every check (the function is declared, the
//! arguments fit, the run has calls left, a human approved a critical one) is made
//! behind the [`HostCalls`] trait, on the host, for every call. A guest that
//! controls its interpreter can send any name and any bytes; it gets a reply or a
//! refusal, never a host object. Time spent waiting for a reply is not the run's:
//! tiers move the run's deadline by it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BoxFuture;

/// One call of a host function, as the guest made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCall {
    /// The function's name (not yet checked against the policy).
    pub name: String,
    /// Its arguments: `{"args": [...], "kwargs": {...}}`.
    pub args: serde_json::Value,
}

/// What the guest gets back from one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallReply {
    /// The function's result.
    Value(serde_json::Value),
    /// An exception to raise in the snippet (`kind` is one of
    /// [`RAISABLE`]; the run goes on).
    Raise {
        /// The exception's class name.
        kind: String,
        /// Its text.
        message: String,
    },
    /// The policy refused the call (undeclared, too large, too many): the run
    /// ends `denied` with this reason, as for any denial.
    Refused(String),
}

/// The exception classes a host function's error may raise in the snippet; any
/// other kind is raised as `RuntimeError`.
pub const RAISABLE: &[&str] = &[
    "ValueError",
    "TypeError",
    "KeyError",
    "LookupError",
    "PermissionError",
    "TimeoutError",
    "RuntimeError",
    "NotImplementedError",
    "ConnectionError",
];

impl CallReply {
    /// An error reply of class `kind` (outside [`RAISABLE`]: `RuntimeError`).
    pub fn raise(kind: &str, message: impl Into<String>) -> CallReply {
        let kind = if RAISABLE.contains(&kind) { kind } else { "RuntimeError" };
        CallReply::Raise { kind: kind.to_string(), message: message.into() }
    }
}

/// Answers one run's host calls (made by [`crate::Sandbox`] for each request
/// under a policy that declares functions).
pub trait HostCalls: Send + Sync {
    /// The declared functions' names, for the guest's `host` module.
    fn names(&self) -> Vec<String>;

    /// Checks and answers one call. Never fails: a refusal or an error is a
    /// reply for the guest.
    fn call(&self, call: HostCall) -> BoxFuture<'_, CallReply>;
}

/// A request's link to its host functions.
#[derive(Clone)]
pub struct HostLink(pub Arc<dyn HostCalls>);

impl std::fmt::Debug for HostLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HostLink").field(&self.0.names()).finish()
    }
}

impl HostLink {
    /// The declared functions' names.
    pub fn names(&self) -> Vec<String> {
        self.0.names()
    }

    /// Answers one call.
    pub async fn call(&self, call: HostCall) -> CallReply {
        self.0.call(call).await
    }
}
