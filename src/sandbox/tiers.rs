//! The sandbox's tiers: each tier's settings and its executor, created on first
//! use (a request for one tier never starts another tier's machinery), and what
//! the CPython tiers can import, learned once per tier.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use crate::breaker::Breakers;
use crate::error::SandboxError;
use crate::executor::{ExecRequest, Executor, Outcome, Status};
use crate::policy::{Policy, Tier};

/// The snippet that lists what a CPython tier can import (run under a policy that
/// allows exactly `sys` and `pkgutil`, through the tier's own prelude).
const LIST_MODULES: &str =
    "import sys, pkgutil\nsorted(set(sys.builtin_module_names) | {m.name for m in pkgutil.iter_modules()})";

/// One tier's executor, made from its settings on first use.
#[cfg_attr(
    not(any(feature = "rustpython", feature = "wasm", feature = "docker")),
    allow(dead_code, reason = "a build without tiers has no executor to make")
)]
struct Lazy<C, E> {
    config: C,
    executor: OnceLock<E>,
}

#[cfg_attr(
    not(any(feature = "rustpython", feature = "wasm", feature = "docker")),
    allow(dead_code, reason = "a build without tiers has no executor to make")
)]
impl<C, E: Clone> Lazy<C, E> {
    fn new(config: C) -> Lazy<C, E> {
        Lazy { config, executor: OnceLock::new() }
    }

    fn get(&self, make: impl FnOnce(&C) -> E) -> E {
        self.executor.get_or_init(|| make(&self.config)).clone()
    }
}

/// Every tier of this build, with its settings.
pub(super) struct Tiers {
    policy: Policy,
    #[cfg(feature = "rustpython")]
    rustpython: Lazy<
        Option<crate::tier::rustpython::IsolatedConfig>,
        Result<Arc<crate::tier::rustpython::IsolatedExecutor>, Arc<SandboxError>>,
    >,
    #[cfg(feature = "wasm")]
    wasm: Lazy<crate::tier::wasm::WasmConfig, Arc<crate::tier::wasm::WasmExecutor>>,
    #[cfg(feature = "docker")]
    docker: Lazy<crate::tier::docker::DockerConfig, Arc<crate::tier::docker::DockerExecutor>>,
    /// What each CPython tier can import, learned once.
    wasm_modules: tokio::sync::OnceCell<Arc<BTreeSet<String>>>,
    docker_modules: tokio::sync::OnceCell<Arc<BTreeSet<String>>>,
}

/// The settings [`Tiers`] is built from (the builder's, defaults filled in).
#[derive(Default)]
pub(super) struct TierSettings {
    #[cfg(feature = "rustpython")]
    pub(super) isolated: Option<crate::tier::rustpython::IsolatedConfig>,
    #[cfg(feature = "wasm")]
    pub(super) wasm: Option<crate::tier::wasm::WasmConfig>,
    #[cfg(feature = "docker")]
    pub(super) docker: Option<crate::tier::docker::DockerConfig>,
}

impl Tiers {
    pub(super) fn new(policy: Policy, settings: TierSettings) -> Tiers {
        let _ = &settings;
        Tiers {
            policy,
            #[cfg(feature = "rustpython")]
            rustpython: Lazy::new(settings.isolated),
            #[cfg(feature = "wasm")]
            wasm: Lazy::new(settings.wasm.unwrap_or_else(crate::tier::wasm::WasmConfig::from_env)),
            #[cfg(feature = "docker")]
            docker: Lazy::new(settings.docker.unwrap_or_default()),
            wasm_modules: tokio::sync::OnceCell::new(),
            docker_modules: tokio::sync::OnceCell::new(),
        }
    }

    /// Tiers for `policy` with these tiers' settings, whose CPython tiers use
    /// `breakers` (a policy change's sandbox: its executors start on first use,
    /// under the new policy).
    pub(super) fn successor(&self, policy: Policy, breakers: &crate::breaker::Breakers) -> Tiers {
        let _ = breakers;
        #[allow(unused_mut, reason = "only the CPython tiers' settings change")]
        let mut settings = TierSettings::default();
        #[cfg(feature = "rustpython")]
        {
            settings.isolated = self.rustpython.config.clone();
        }
        #[cfg(feature = "wasm")]
        {
            let mut wasm = self.wasm.config.clone();
            wasm.file_io_breaker = breakers.get("file_io").cloned();
            settings.wasm = Some(wasm);
        }
        #[cfg(feature = "docker")]
        {
            let mut docker = self.docker.config.clone();
            docker.api_breaker = breakers.get("api").cloned();
            settings.docker = Some(docker);
        }
        Tiers::new(policy, settings)
    }

    /// The executor of `tier`, created on first use.
    pub(super) fn executor(&self, tier: Tier) -> Result<Arc<dyn Executor>, SandboxError> {
        match tier {
            #[cfg(feature = "rustpython")]
            Tier::Rustpython => {
                use crate::tier::rustpython::{IsolatedConfig, IsolatedExecutor};
                let made = self.rustpython.get(|config| {
                    let config = match config {
                        Some(c) => c.clone(),
                        None => IsolatedConfig::from_env().map_err(Arc::new)?,
                    };
                    Ok(Arc::new(IsolatedExecutor::new(self.policy.clone(), config)))
                });
                let made: Result<Arc<dyn Executor>, _> = made.map(|e| e as Arc<dyn Executor>);
                made.map_err(|e| match &*e {
                    SandboxError::TierUnavailable { reason, .. } => {
                        SandboxError::TierUnavailable { tier, reason: reason.clone() }
                    }
                    other => SandboxError::TierUnavailable { tier, reason: other.to_string() },
                })
            }
            #[cfg(feature = "wasm")]
            Tier::Wasm => {
                Ok(self.wasm.get(|c| Arc::new(crate::tier::wasm::WasmExecutor::new(self.policy.clone(), c.clone()))))
            }
            #[cfg(feature = "docker")]
            Tier::Docker => Ok(self.docker()),
            #[allow(unreachable_patterns, reason = "reached only in builds without some tier")]
            _ => Err(not_compiled(tier)),
        }
    }

    /// Work of dropped runs still going in the tiers started so far (see
    /// [`Executor::lingering`]).
    pub(super) fn lingering(&self) -> usize {
        #[cfg_attr(
            not(any(feature = "rustpython", feature = "wasm", feature = "docker")),
            allow(unused_mut, reason = "a build without tiers has nothing to count")
        )]
        let mut n = 0;
        #[cfg(feature = "rustpython")]
        if let Some(Ok(e)) = self.rustpython.executor.get() {
            n += e.lingering();
        }
        #[cfg(feature = "wasm")]
        if let Some(e) = self.wasm.executor.get() {
            n += e.lingering();
        }
        #[cfg(feature = "docker")]
        if let Some(e) = self.docker.executor.get() {
            n += e.lingering();
        }
        n
    }

    /// The docker tier's executor (the sandbox's engine and settings).
    #[cfg(feature = "docker")]
    pub(super) fn docker(&self) -> Arc<crate::tier::docker::DockerExecutor> {
        self.docker.get(|c| Arc::new(crate::tier::docker::DockerExecutor::new(self.policy.clone(), c.clone())))
    }

    /// Runs a checked command line's `argv` in the docker tier.
    pub(super) async fn run_command(&self, argv: &[String]) -> Result<Outcome, SandboxError> {
        #[cfg(feature = "docker")]
        return self.docker().run_command(argv).await;
        #[cfg(not(feature = "docker"))]
        {
            let _ = argv;
            Err(SandboxError::TierUnavailable {
                tier: Tier::Docker,
                reason: "this build has no docker tier to run commands in".into(),
            })
        }
    }

    /// What a CPython tier can import: listed once by running [`LIST_MODULES`]
    /// there (through the tier's breaker), on an executor of its own without a
    /// warm pool.
    pub(super) async fn cpython_modules(
        &self,
        tier: Tier,
        breakers: &Breakers,
    ) -> Result<Arc<BTreeSet<String>>, SandboxError> {
        let slot = match tier {
            Tier::Wasm => &self.wasm_modules,
            Tier::Docker => &self.docker_modules,
            Tier::Rustpython => {
                return Err(SandboxError::Host { tier, message: "the rustpython tier is not a CPython tier".into() });
            }
        };
        let list = slot
            .get_or_try_init(|| async {
                let exec = self.lister(tier)?;
                let o = breakers.tier(tier).run(exec.execute(ExecRequest::new(LIST_MODULES))).await?;
                let names: Option<BTreeSet<String>> = o
                    .result
                    .as_ref()
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect());
                match (o.status, names) {
                    (Status::Ok, Some(n)) if !n.is_empty() => Ok(Arc::new(n)),
                    _ => Err(SandboxError::Host {
                        tier,
                        message: format!("listing the tier's modules failed: {:?} {:?}", o.status, o.error),
                    }),
                }
            })
            .await?;
        Ok(list.clone())
    }

    /// An executor of `tier` that may import exactly `sys` and `pkgutil`.
    fn lister(&self, tier: Tier) -> Result<Box<dyn Executor>, SandboxError> {
        let policy = self.policy.with_allowed_modules(&["sys", "pkgutil"]);
        let _ = &policy;
        match tier {
            #[cfg(feature = "wasm")]
            Tier::Wasm => {
                let mut c = self.wasm.config.clone();
                c.pool_size = 0;
                Ok(Box::new(crate::tier::wasm::WasmExecutor::new(policy, c)))
            }
            #[cfg(feature = "docker")]
            Tier::Docker => {
                let c = crate::tier::docker::DockerConfig { pool_size: 0, ..self.docker.config.clone() };
                Ok(Box::new(crate::tier::docker::DockerExecutor::new(policy, c)))
            }
            _ => Err(not_compiled(tier)),
        }
    }
}

fn not_compiled(tier: Tier) -> SandboxError {
    SandboxError::TierUnavailable { tier, reason: "the tier is not compiled in this build of terrarium".into() }
}
