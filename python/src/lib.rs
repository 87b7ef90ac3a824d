//! `terrarium._native`: the Python package's extension. It holds a Terrarium
//! [`Sandbox`] and its tokio runtime, runs requests and sessions on it with the GIL
//! released, and answers host functions with the Python callables registered for
//! them. The Python layer (`python/terrarium/__init__.py`) turns its JSON outcomes
//! into typed objects and its errors into the package's exceptions.
//!
//! # Security invariants
//! - Untrusted code never runs in the Python process on the interpreter tier: the
//!   rustpython tier is always isolated mode, its zygote the `terrarium` binary
//!   named at construction (shipped in the wheel), never this process.
//! - Everything else is the library's: the policy (overrides only tighten it), the
//!   audit log, approvals and the walls of each tier.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use terrarium::functions::{FunctionCall, FunctionError};
use terrarium::{
    DockerConfig, ExecRequest, IsolatedConfig, Outcome, Overrides, Policy, PolicyError, Sandbox, SandboxError,
    SessionHandle, SessionOptions, TierChoice, WasmConfig,
};

/// As Terrarium's binary: embedded runs charge fuel for large allocations.
#[global_allocator]
static ALLOCATOR: terrarium::FuelCountingAlloc = terrarium::FuelCountingAlloc;

/// One runtime for every sandbox in the process; its threads wait on children
/// and engines, they run no Python.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("terrarium")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start Terrarium's runtime: {e}")))
}

/// The package's exception `kind` (a class in `terrarium.errors`) with `message`
/// and keyword attributes.
fn raise(py: Python<'_>, kind: &str, message: String, extra: Vec<(&str, Py<PyAny>)>) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let class = py.import("terrarium.errors")?.getattr(kind)?;
        let kwargs = pyo3::types::PyDict::new(py);
        for (k, v) in extra {
            kwargs.set_item(k, v)?;
        }
        let exc = class.call((message.clone(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    })();
    made.unwrap_or_else(|e| e)
}

fn policy_error(py: Python<'_>, e: &PolicyError) -> PyErr {
    let mut extra = Vec::new();
    let mut field = None;
    if let PolicyError::Invalid { origin, line, message } = e {
        extra.push(("origin", origin.clone().into_pyobject(py).map(|o| o.into_any().unbind())));
        extra.push(("line", (*line).into_pyobject(py).map(|o| o.into_any().unbind())));
        field = message.split_once(':').map(|(f, _)| f.trim().to_string());
    }
    if let PolicyError::Loosening { field: f, .. } = e {
        field = Some((*f).to_string());
    }
    if let Some(f) = field {
        extra.push(("field", f.into_pyobject(py).map(|o| o.into_any().unbind())));
    }
    let extra = extra.into_iter().filter_map(|(k, v)| v.ok().map(|v| (k, v))).collect();
    raise(py, "PolicyError", e.to_string(), extra)
}

fn sandbox_error(py: Python<'_>, e: SandboxError) -> PyErr {
    let kind = match &e {
        SandboxError::Policy(p) => return policy_error(py, p),
        SandboxError::InvalidRequest(_) => "InvalidRequest",
        SandboxError::TierUnavailable { .. } => "TierUnavailable",
        SandboxError::Busy(_) => "Busy",
        SandboxError::BreakerOpen(_) => "TierUnavailable",
        SandboxError::NotApproved(_) => "NotApproved",
        SandboxError::SessionEnded(_) => "SessionEnded",
        SandboxError::Stopped(_) => "Stopped",
        _ => "SandboxError",
    };
    raise(py, kind, e.to_string(), Vec::new())
}

fn tier_choice(py: Python<'_>, tier: Option<&str>) -> PyResult<TierChoice> {
    match tier {
        None => Ok(TierChoice::Auto),
        Some(t) => TierChoice::parse(t).ok_or_else(|| {
            raise(py, "InvalidRequest", format!("tier {t:?}: expected auto, rustpython, wasm or docker"), Vec::new())
        }),
    }
}

fn overrides(py: Python<'_>, timeout: Option<f64>, memory: Option<&str>, fuel: Option<u64>) -> PyResult<Overrides> {
    let mut o = Overrides { fuel, ..Overrides::default() };
    if let Some(t) = timeout {
        let d = terrarium::policy::timeout_secs(t).ok_or_else(|| {
            raise(py, "InvalidRequest", format!("timeout {t}: expected a positive number of seconds"), vec![])
        })?;
        o.timeout = Some(d);
    }
    if let Some(m) = memory {
        let size = terrarium::policy::parse_size(m)
            .map_err(|e| raise(py, "InvalidRequest", format!("memory {m:?}: {e}"), vec![]))?;
        o.max_memory = Some(size);
    }
    Ok(o)
}

/// A run's answer to Python: the outcome as JSON, or the package's exception.
fn answer(py: Python<'_>, ran: Result<Outcome, SandboxError>) -> PyResult<String> {
    let o = ran.map_err(|e| sandbox_error(py, e))?;
    serde_json::to_string(&o).map_err(|e| raise(py, "SandboxError", format!("cannot encode the outcome: {e}"), vec![]))
}

/// Calls the Python dispatcher for a host function: `dispatch(args_json,
/// kwargs_json)` returns `(True, result_json)` or `(False, kind, message)`.
fn call_python(dispatch: &Py<PyAny>, call: FunctionCall) -> Result<serde_json::Value, FunctionError> {
    let args = serde_json::Value::Array(call.args).to_string();
    let kwargs = serde_json::Value::Object(call.kwargs).to_string();
    Python::attach(|py| {
        let failed = |e: PyErr| FunctionError::new("RuntimeError", format!("the host function failed: {e}"));
        let reply = dispatch.call1(py, (args, kwargs)).map_err(failed)?;
        let reply = reply.bind(py);
        let ok: bool = reply.get_item(0).and_then(|v| v.extract()).map_err(failed)?;
        if ok {
            let text: String = reply.get_item(1).and_then(|v| v.extract()).map_err(failed)?;
            serde_json::from_str(&text)
                .map_err(|e| FunctionError::new("TypeError", format!("the result is not JSON: {e}")))
        } else {
            let kind: String = reply.get_item(1).and_then(|v| v.extract()).map_err(failed)?;
            let message: String = reply.get_item(2).and_then(|v| v.extract()).map_err(failed)?;
            Err(FunctionError::new(kind, message))
        }
    })
}

/// A sandbox: a policy, its tiers, its audit log.
#[pyclass(module = "terrarium._native", frozen)]
struct NativeSandbox {
    sandbox: Arc<Sandbox>,
}

#[pymethods]
impl NativeSandbox {
    /// `policy_text`: YAML (or JSON) policy text named `origin` in errors, or the
    /// built-in default when `None`. `worker_exe`: the `terrarium` binary run as the
    /// interpreter tier's zygote. `audit`: the audit log's path (approvals live
    /// there too), or none. `functions`: `(name, dispatcher)` pairs.
    #[new]
    #[pyo3(signature = (policy_text, origin, worker_exe, audit, functions, pool_size))]
    fn new(
        py: Python<'_>,
        policy_text: Option<String>,
        origin: String,
        worker_exe: PathBuf,
        audit: Option<PathBuf>,
        functions: Vec<(String, Py<PyAny>)>,
        pool_size: usize,
    ) -> PyResult<NativeSandbox> {
        let rt = runtime()?;
        let _entered = rt.enter();
        let policy = match policy_text {
            Some(text) => Policy::from_yaml(&text, &origin).map_err(|e| policy_error(py, &e))?,
            None => Policy::default_policy(),
        };
        let mut isolated = IsolatedConfig::new(worker_exe);
        isolated.pool_size = pool_size.max(1);
        let mut wasm = WasmConfig::from_env();
        wasm.pool_size = 0;
        let docker = DockerConfig { pool_size: 0, ..Default::default() };
        let mut builder = Sandbox::builder().policy(policy).isolated(isolated).wasm(wasm).docker(docker);
        for (name, dispatch) in functions {
            let dispatch = Arc::new(dispatch);
            builder = builder.function_blocking(name, move |call| call_python(&dispatch, call));
        }
        if let Some(path) = audit {
            builder = builder.audit(path).announce(Arc::new(|item: &terrarium::approval::Item| {
                eprintln!(
                    "terrarium: approval request {} ({}); waiting for: terrarium approvals approve {}",
                    item.id, item.reason, item.id
                );
            }));
        }
        let sandbox = builder.build().map_err(|e| sandbox_error(py, e))?;
        Ok(NativeSandbox { sandbox: Arc::new(sandbox) })
    }

    /// Runs `code` (with `workspace` mounted at /workspace when given); returns
    /// the outcome as JSON.
    #[pyo3(signature = (code, timeout=None, tier=None, memory=None, workspace=None, fuel=None))]
    #[allow(clippy::too_many_arguments, reason = "the keyword arguments of Sandbox.run, one for one")]
    fn run(
        &self,
        py: Python<'_>,
        code: String,
        timeout: Option<f64>,
        tier: Option<&str>,
        memory: Option<&str>,
        workspace: Option<String>,
        fuel: Option<u64>,
    ) -> PyResult<String> {
        let mut req = ExecRequest::new(code).with_caller("python");
        req.workspace = workspace;
        req.tier = tier_choice(py, tier)?;
        req.overrides = overrides(py, timeout, memory, fuel)?;
        let rt = runtime()?;
        let sandbox = self.sandbox.clone();
        let ran = py.detach(|| rt.block_on(async move { sandbox.execute(req).await }));
        answer(py, ran)
    }

    /// Starts a session on `tier` (`None`: the policy's), with `workspace` at
    /// /workspace for every cell when given.
    #[pyo3(signature = (tier=None, workspace=None))]
    fn session(&self, py: Python<'_>, tier: Option<&str>, workspace: Option<String>) -> PyResult<NativeSession> {
        let tier = tier_choice(py, tier)?;
        let rt = runtime()?;
        let sandbox = self.sandbox.clone();
        let options = SessionOptions { tier, caller: Some("python".into()), workspace };
        let started = py.detach(|| rt.block_on(async move { sandbox.session(options).await }));
        let session = started.map_err(|e| sandbox_error(py, e))?;
        let (id, tier) = (session.id().to_string(), session.tier().to_string());
        Ok(NativeSession { inner: SessionHandle::new(session), id, tier })
    }

    /// Writes the audit log's pending events, waiting at most `seconds`.
    fn flush_audit(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let within = Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
        self.sandbox.flush_audit(within).map_err(|e| sandbox_error(py, e))
    }
}

/// A session: cells sharing interpreter state on one tier.
#[pyclass(module = "terrarium._native", frozen)]
struct NativeSession {
    inner: SessionHandle,
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    tier: String,
}

#[pymethods]
impl NativeSession {
    /// Runs `code` as the next cell; returns the outcome as JSON.
    #[pyo3(signature = (code, timeout=None, memory=None, fuel=None))]
    fn run(
        &self,
        py: Python<'_>,
        code: String,
        timeout: Option<f64>,
        memory: Option<&str>,
        fuel: Option<u64>,
    ) -> PyResult<String> {
        let mut req = ExecRequest::new(code).with_caller("python");
        req.overrides = overrides(py, timeout, memory, fuel)?;
        let rt = runtime()?;
        let inner = self.inner.clone();
        let ran = py.detach(|| rt.block_on(async move { inner.execute(req).await }));
        answer(py, ran)
    }

    /// `(cells run, why it ended)`, or `None` while a cell runs.
    fn state(&self) -> Option<(u64, Option<String>)> {
        self.inner.state()
    }

    /// Ends the session now: a running cell is stopped, its process killed, its
    /// state gone.
    fn end(&self, py: Python<'_>) -> PyResult<()> {
        let rt = runtime()?;
        let inner = self.inner.clone();
        py.detach(|| rt.block_on(async move { inner.end("ended by its Python caller").await }));
        Ok(())
    }
}

/// Where the audit log (and the approvals queue) lives by default: as for the
/// `terrarium` command, under `$TERRARIUM_HOME`.
#[pyfunction]
fn default_audit_path(py: Python<'_>) -> PyResult<PathBuf> {
    terrarium::audit::default_path().map_err(|e| raise(py, "SandboxError", e.to_string(), Vec::new()))
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeSandbox>()?;
    m.add_class::<NativeSession>()?;
    m.add_function(wrap_pyfunction!(default_audit_path, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_POLICY_YAML", terrarium::policy::DEFAULT_POLICY_YAML)?;
    Ok(())
}
