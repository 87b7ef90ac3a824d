//! [`SandboxBuilder`]: a sandbox's policy, audit log, approvals queue, limits and
//! tier settings, checked and joined once.

use std::sync::Arc;

use super::tiers::{TierSettings, Tiers};
use super::{Sandbox, workspace};
use crate::approval::Gate;
use crate::audit::{AuditLog, Event};
use crate::breaker::Breakers;
use crate::error::SandboxError;
use crate::policy::Policy;

/// Builds a [`Sandbox`].
#[derive(Default)]
pub struct SandboxBuilder {
    policy: Option<Policy>,
    audit: Option<std::path::PathBuf>,
    tiers: TierSettings,
    announce: Option<crate::approval::Announce>,
    max_running: Option<std::num::NonZeroUsize>,
    max_waiting: Option<std::num::NonZeroUsize>,
    functions: crate::functions::Registry,
    workspace_root: Option<std::path::PathBuf>,
}

/// How many calls of one blocking host function ([`SandboxBuilder::function_blocking`])
/// may run at once, calls past their timeout that are still running included.
pub const BLOCKING_CALLS: usize = 8;

impl SandboxBuilder {
    /// At most `n` runs (and system commands) in a tier at once; more fail at once
    /// with [`SandboxError::Busy`] (default: no limit but the tiers' own).
    #[must_use]
    pub fn max_running(mut self, n: std::num::NonZeroUsize) -> SandboxBuilder {
        self.max_running = Some(n);
        self
    }

    /// Keep workspaces under `root` (default: `workspaces` in `$TERRARIUM_HOME`);
    /// the policy's `workspaces.root` comes first.
    #[must_use]
    pub fn workspaces_root(mut self, root: impl Into<std::path::PathBuf>) -> SandboxBuilder {
        self.workspace_root = Some(root.into());
        self
    }

    /// At most `n` critical operations wait for approval at once; more are refused
    /// with [`SandboxError::Busy`], nothing queued (default: no limit).
    #[must_use]
    pub fn max_waiting(mut self, n: std::num::NonZeroUsize) -> SandboxBuilder {
        self.max_waiting = Some(n);
        self
    }

    /// Calls `announce` with each critical operation queued for approval, before
    /// the run waits for it (e.g. to tell the person at a terminal how to approve).
    #[must_use]
    pub fn announce(mut self, announce: crate::approval::Announce) -> SandboxBuilder {
        self.announce = Some(announce);
        self
    }

    /// Implements host function `name` (declared in the policy's `functions`
    /// section, without a `command`) with `f`: snippets call it as
    /// `from host import NAME`. `f` gets the call's JSON arguments and returns a
    /// JSON result or a [`crate::functions::FunctionError`] raised in the snippet;
    /// the policy's limits, approvals and the audit log apply before it is called.
    #[must_use]
    pub fn function<F, Fut>(mut self, name: impl Into<String>, f: F) -> SandboxBuilder
    where
        F: Fn(crate::functions::FunctionCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<serde_json::Value, crate::functions::FunctionError>> + Send + 'static,
    {
        self.functions.insert(name, Arc::new(move |call| Box::pin(f(call))));
        self
    }

    /// As [`SandboxBuilder::function`], with a blocking closure: each call runs on
    /// the runtime's blocking threads (a call past its timeout is answered with
    /// `TimeoutError`; the closure itself runs to its end there). At most
    /// [`BLOCKING_CALLS`](crate::BLOCKING_CALLS) calls of one function run at once, those past their timeout
    /// included: a further call gets `RuntimeError` at once, so a snippet that makes
    /// calls time out on purpose holds a few threads, not the runtime's pool.
    #[must_use]
    pub fn function_blocking<F>(self, name: impl Into<String>, f: F) -> SandboxBuilder
    where
        F: Fn(crate::functions::FunctionCall) -> Result<serde_json::Value, crate::functions::FunctionError>
            + Send
            + Sync
            + 'static,
    {
        let f = Arc::new(f);
        let slots = Arc::new(tokio::sync::Semaphore::new(BLOCKING_CALLS));
        self.function(name, move |call| {
            let f = f.clone();
            let slot = slots.clone().try_acquire_owned();
            async move {
                let Ok(slot) = slot else {
                    return Err(crate::functions::FunctionError::new(
                        "RuntimeError",
                        format!(
                            "{}: {BLOCKING_CALLS} calls of this function are still running (some past their \
                             timeout); try again later",
                            call.name
                        ),
                    ));
                };
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    f(call)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(crate::functions::FunctionError::new("RuntimeError", format!("the function failed: {e}")))
                })
            }
        })
    }

    /// The policy (default: the built-in default policy).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> SandboxBuilder {
        self.policy = Some(policy);
        self
    }

    /// Records every request and outcome in the audit log at `path` (see
    /// [`crate::audit`]; guarded by the policy's `database` breaker): a request
    /// runs only once its arrival is recorded, and its outcome is returned only
    /// once that is recorded too.
    #[must_use]
    pub fn audit(mut self, path: impl Into<std::path::PathBuf>) -> SandboxBuilder {
        self.audit = Some(path.into());
        self
    }

    /// How the rustpython tier's isolated mode finds its worker (default:
    /// [`crate::IsolatedConfig::from_env`], on first use).
    #[cfg(feature = "rustpython")]
    #[must_use]
    pub fn isolated(mut self, config: crate::tier::rustpython::IsolatedConfig) -> SandboxBuilder {
        self.tiers.isolated = Some(config);
        self
    }

    /// The wasm tier's settings (default: [`crate::WasmConfig::from_env`]).
    #[cfg(feature = "wasm")]
    #[must_use]
    pub fn wasm(mut self, config: crate::tier::wasm::WasmConfig) -> SandboxBuilder {
        self.tiers.wasm = Some(config);
        self
    }

    /// The docker tier's settings (default: [`crate::DockerConfig::default`]).
    #[cfg(feature = "docker")]
    #[must_use]
    pub fn docker(mut self, config: crate::tier::docker::DockerConfig) -> SandboxBuilder {
        self.tiers.docker = Some(config);
        self
    }

    /// The sandbox. No tier starts until the first request.
    ///
    /// # Errors
    /// [`SandboxError::Audit`] when the audit log cannot be opened.
    pub fn build(self) -> Result<Sandbox, SandboxError> {
        let policy = self.policy.unwrap_or_else(Policy::default_policy);
        let breakers = Breakers::from_policy(&policy);
        let policy_sessions_max_open = policy.sessions().max_open;
        let audit = match &self.audit {
            Some(path) => {
                let database = breakers.get("database").cloned().ok_or(crate::audit::AuditError::Stopped)?;
                let mut log = AuditLog::open(path, database)?;
                if let Some(file_io) = breakers.get("file_io") {
                    log = log.with_file_io(file_io.clone());
                }
                if let Some(days) = policy.retention_days() {
                    crate::audit::prune_days(&log, days)?;
                }
                record_transitions(&breakers, &log);
                // What needs a human goes to the policy's notifiers, as it is recorded.
                log.watch(super::alerter(&policy)?);
                Some(log)
            }
            None => None,
        };
        let gate = match (&self.audit, &audit) {
            (Some(path), Some(log)) => {
                let mut gate = Gate::new(crate::approval::Queue::open(path)?, log.clone());
                if let Some(a) = self.announce {
                    gate = gate.announcing(a);
                }
                if let Some(n) = self.max_waiting {
                    gate = gate.limit_waiting(n);
                }
                Some(gate)
            }
            _ => None,
        };
        #[cfg_attr(
            not(any(feature = "docker", feature = "wasm")),
            allow(unused_mut, reason = "only the docker and wasm tiers' settings change")
        )]
        let mut tiers = self.tiers;
        // The engine API goes through the policy's `api` breaker.
        #[cfg(feature = "docker")]
        {
            let mut docker = tiers.docker.take().unwrap_or_default();
            if docker.api_breaker.is_none() {
                docker.api_breaker = breakers.get("api").cloned();
            }
            tiers.docker = Some(docker);
        }
        // The wasm tier's file I/O (its compiled-module cache, scratch directories)
        // goes through the policy's `file_io` breaker.
        #[cfg(feature = "wasm")]
        {
            let mut wasm = tiers.wasm.take().unwrap_or_else(crate::tier::wasm::WasmConfig::from_env);
            if wasm.file_io_breaker.is_none() {
                wasm.file_io_breaker = breakers.get("file_io").cloned();
            }
            tiers.wasm = Some(wasm);
        }
        // The stop of this deployment is kept beside its audit log.
        let stop_dir = self.audit.as_deref().map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        });
        Ok(Sandbox {
            halt: Arc::new(super::halt::Halt::load(stop_dir)),
            tiers: Tiers::new(policy.clone(), tiers),
            functions: Arc::new(self.functions),
            workspace_root: workspace::Root { configured: self.workspace_root, ..workspace::Root::default() },
            breakers,
            policy,
            audit,
            gate,
            running: self.max_running.map(|n| (Arc::new(tokio::sync::Semaphore::new(n.get())), n.get())),
            sessions: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(policy_sessions_max_open).unwrap_or(usize::MAX),
            )),
        })
    }
}

/// Records every breaker transition as an audit event; but the `database` and
/// `file_io` breakers' (they live in the log itself, which a handle in their
/// observer would keep alive forever; their transitions go to the tracing log).
pub(super) fn record_transitions(breakers: &Breakers, log: &AuditLog) {
    let sink = log.clone();
    let observer: crate::breaker::Observer = Arc::new(move |t: &crate::breaker::Transition| {
        sink.record_nowait(Event {
            kind: crate::audit::EventKind::Breaker,
            request_id: None,
            data: serde_json::to_value(t).unwrap_or_default(),
            code: None,
        });
    });
    breakers.observe(observer, &["database", "file_io"]);
}
