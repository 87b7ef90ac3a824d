//! `terrarium doctor`: can each tier run on this machine? Runs `1+1` on every tier
//! this build has, after any one-time preparation (compiling python.wasm), and says
//! what to do about each one that cannot; then checks the deployment against its
//! recorded baseline ([`crate::integrity`]), or records it (`--baseline`), and
//! says whether it is stopped (an emergency stop in force).

use std::process::ExitCode;

use super::args::DoctorArgs;
use super::{CliError, EXIT_HOST, runtime};
use crate::executor::{ExecRequest, Executor, Status};
use crate::policy::Policy;

pub(super) fn run(args: DoctorArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let rt = runtime()?;
    let mut ok = true;
    let mut parts = crate::integrity::Baseline::new();
    parts.insert(
        "policy".into(),
        match &args.policy {
            Some(path) => crate::integrity::file_part(path),
            None => crate::integrity::Part {
                at: "built-in".into(),
                digest: crate::audit::sha256_hex(crate::policy::DEFAULT_POLICY_YAML.as_bytes()),
            },
        },
    );
    let mut report = |tier: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok      {tier}: {detail}"),
        Err(why) => {
            ok = false;
            println!("FAILED  {tier}: {why}");
        }
    };
    let check = |exec: &dyn Executor| -> Result<String, String> {
        let started = std::time::Instant::now();
        let o = rt.block_on(exec.execute(ExecRequest::new("1+1"))).map_err(|e| e.to_string())?;
        if o.status == Status::Ok && o.result == Some(serde_json::json!(2)) {
            Ok(format!("1+1 = 2 in {} ms", started.elapsed().as_millis()))
        } else {
            Err(format!("1+1 ended {}: {:?}", o.status.as_str(), o.error))
        }
    };
    #[cfg(feature = "rustpython")]
    {
        use crate::tier::rustpython::{IsolatedConfig, IsolatedExecutor};
        let r = IsolatedConfig::from_env()
            .map_err(|e| e.to_string())
            .and_then(|c| check(&IsolatedExecutor::new(policy.clone(), c)));
        report("rustpython (isolated: zygote, seccomp, rlimits, namespaces)", r);
    }
    #[cfg(feature = "wasm")]
    {
        use crate::tier::wasm::{WasmConfig, WasmExecutor};
        let exec = WasmExecutor::new(policy.clone(), WasmConfig::from_env());
        let r = exec.warm_up().map_err(|e| e.to_string()).and_then(|()| check(&exec));
        report("wasm (CPython 3.12 on WASI)", r);
        let config = WasmConfig::from_env();
        parts.insert("python.wasm".into(), crate::integrity::file_part(&config.python_wasm));
        parts.insert("module cache".into(), crate::integrity::dir_part(&config.cache_dir));
    }
    #[cfg(feature = "docker")]
    {
        use crate::tier::docker::{DockerConfig, DockerExecutor};
        // The policy's image: the engine must have it (no registry is contacted).
        let exec = DockerExecutor::new(policy.clone(), DockerConfig { pool_size: 0, ..DockerConfig::default() });
        let r = rt
            .block_on(exec.connect())
            .map_err(|e| e.to_string())
            .and_then(|v| check(&exec).map(|d| format!("{d} (engine API {v})")));
        let walls = r.is_ok().then(|| rt.block_on(exec.probe(&[])));
        let id = rt.block_on(exec.image_id()).unwrap_or_else(|e| format!("unavailable: {e}"));
        parts.insert("docker image".into(), crate::integrity::Part { at: policy.docker().image.clone(), digest: id });
        report("docker (CPython in a hardened container)", r);
        if let Some(w) = walls {
            report("docker walls (probe without the prelude)", w.map_err(|e| e.to_string()).map(|p| walls_summary(&p)));
        }
    }
    match baseline(&parts, args.baseline) {
        Ok(line) => println!("ok      {line}"),
        Err(why) => {
            ok = false;
            println!("FAILED  {why}");
        }
    }
    match stop_state() {
        Ok(line) => println!("ok      {line}"),
        Err(why) => {
            ok = false;
            println!("FAILED  {why}");
        }
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("some tiers cannot run here (see above)") })
    }
}

/// Records `parts` as the baseline (`record`), or checks them against the one
/// recorded: a line for the report, or what changed.
fn baseline(parts: &crate::integrity::Baseline, record: bool) -> Result<String, String> {
    let audit = crate::audit::default_path().map_err(|e| format!("baseline: {e}"))?;
    let dir = audit.parent().unwrap_or(std::path::Path::new("."));
    let state = crate::dirs::OwnedDir::open(dir, "state directory").map_err(|e| format!("baseline: {e}"))?;
    let at = state.path().join(crate::integrity::FILE);
    if record {
        crate::integrity::save(&state, parts).map_err(|e| format!("baseline: {e}"))?;
        return Ok(format!("baseline: recorded {} parts in {}", parts.len(), at.display()));
    }
    match crate::integrity::load(&state).map_err(|e| format!("baseline: {e}"))? {
        None => {
            Ok(format!("baseline: none recorded yet (`terrarium doctor --baseline` records one in {})", at.display()))
        }
        Some(recorded) => {
            let changed = crate::integrity::compare(&recorded, parts);
            if changed.is_empty() {
                Ok(format!("baseline: the policy, python.wasm, module cache and image match {}", at.display()))
            } else {
                Err(format!(
                    "baseline: {} (re-record with `terrarium doctor --baseline` if intended)",
                    changed.join("; ")
                ))
            }
        }
    }
}

/// Whether the deployment is stopped (an emergency stop kept beside its audit
/// log): a stopped one runs nothing until `terrarium resume`.
fn stop_state() -> Result<String, String> {
    let audit = crate::audit::default_path().map_err(|e| format!("stop: {e}"))?;
    let dir = audit.parent().unwrap_or(std::path::Path::new("."));
    match crate::sandbox::deployment_stopped(dir) {
        None => Ok("stop: the deployment is not stopped".into()),
        Some(s) => Err(format!(
            "stop: the deployment is STOPPED by {} ({}); nothing runs until `terrarium resume`",
            s.by, s.reason
        )),
    }
}

/// One line on what the docker probe found.
#[cfg(feature = "docker")]
fn walls_summary(p: &serde_json::Value) -> String {
    let f = |k: &str| p.get(k).map_or("?".to_string(), |v| v.as_str().map_or(v.to_string(), str::to_string));
    format!(
        "interfaces {}, write / {}, exec in /tmp {}, uid {}, CapEff {}, NoNewPrivs {}, forks stop at {} ({})",
        f("interfaces"),
        f("write_root"),
        f("exec_tmp"),
        f("uid"),
        f("CapEff"),
        f("NoNewPrivs"),
        f("forks"),
        f("forks_refused")
    )
}
