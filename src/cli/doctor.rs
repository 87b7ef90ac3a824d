//! `terrarium doctor`: can each tier run on this machine? Runs `1+1` on every tier
//! this build has, after any one-time preparation (compiling python.wasm), and says
//! what to do about each one that cannot; then checks the deployment against its
//! recorded baseline ([`crate::integrity`]), or records it (`--baseline`), and
//! says whether it is stopped (an emergency stop in force).

use std::process::ExitCode;

use super::args::DoctorArgs;
use super::checks::{self, Check, Level};
use super::{CliError, EXIT_HOST, runtime};
use crate::executor::{ExecRequest, Executor, Status};
use crate::policy::Policy;

pub(super) fn run(args: DoctorArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let rt = runtime()?;
    let mut checks: Vec<Check> = Vec::new();
    // What the docker image holds (its Python and packages), when it could be probed.
    let mut image: Option<serde_json::Value> = None;
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
    let origin = args.policy.as_ref().map_or_else(|| "the built-in policy".to_string(), |p| p.display().to_string());
    checks.extend(checks::policy(&policy, &origin));
    checks.extend(checks::kernel());
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
        checks.push(Check::of("rustpython (isolated: zygote, seccomp, rlimits, namespaces)", r));
    }
    #[cfg(feature = "wasm")]
    {
        use crate::tier::wasm::{WasmConfig, WasmExecutor};
        let exec = WasmExecutor::new(policy.clone(), WasmConfig::from_env());
        let r = exec.warm_up().map_err(|e| e.to_string()).and_then(|()| check(&exec));
        checks.push(Check::of("wasm (CPython 3.12 on WASI)", r));
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
        parts.insert(
            "docker image".into(),
            crate::integrity::Part { at: policy.docker().image.clone(), digest: id.clone() },
        );
        checks.push(Check::of("docker (CPython in a hardened container)", r));
        if let Some(w) = walls {
            if let Ok(p) = &w {
                image = Some(serde_json::json!({
                    "image": policy.docker().image, "id": id, "python": p.get("python"), "packages": p.get("packages"),
                }));
            }
            checks.push(Check::of(
                "docker walls (probe without the prelude)",
                w.map_err(|e| e.to_string()).map(|p| walls_summary(&p)),
            ));
        }
    }
    checks.push(Check::of("baseline", baseline(&parts, args.baseline)));
    checks.push(Check::of("stop", stop_state()));
    checks.push(Check::of("data key", data_key_state()));
    match crate::dirs::state_dir() {
        Some(home) if home.exists() => checks.push(checks::permissions(&home)),
        Some(home) => {
            checks.push(Check::new("permissions", Level::Ok, format!("{} does not exist yet", home.display())))
        }
        None => checks.push(Check::new(
            "permissions",
            Level::Warn,
            "no state directory (TERRARIUM_HOME, XDG_DATA_HOME, HOME)",
        )),
    }
    let failed = checks.iter().filter(|c| c.level == Level::Failed).count();
    if args.json {
        let report = serde_json::json!({ "ok": failed == 0, "checks": checks, "docker_image": image });
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for c in &checks {
            let word = match c.level {
                Level::Ok => "ok     ",
                Level::Warn => "WARN   ",
                Level::Failed => "FAILED ",
            };
            // One line each, whatever a file name or a stop's reason holds.
            println!("{word} {}: {}", c.name, super::terminal::for_terminal(&c.detail));
        }
        if let Some(img) = &image {
            let n = img["packages"].as_object().map_or(0, serde_json::Map::len);
            println!(
                "image   {}: Python {}, {n} packages (doctor --json lists them)",
                img["image"].as_str().unwrap_or("?"),
                img["python"].as_str().unwrap_or("?")
            );
        }
    }
    if failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("{failed} checks failed (see above)") })
    }
}

/// Records `parts` as the baseline (`record`), or checks them against the one
/// recorded: a line for the report, or what changed.
fn baseline(parts: &crate::integrity::Baseline, record: bool) -> Result<String, String> {
    let audit = crate::audit::default_path().map_err(|e| e.to_string())?;
    let dir = audit.parent().unwrap_or(std::path::Path::new("."));
    let state = crate::dirs::OwnedDir::open(dir, "state directory").map_err(|e| e.to_string())?;
    let at = state.path().join(crate::integrity::FILE);
    if record {
        crate::integrity::save(&state, parts).map_err(|e| e.to_string())?;
        return Ok(format!("recorded {} parts in {}", parts.len(), at.display()));
    }
    match crate::integrity::load(&state).map_err(|e| e.to_string())? {
        None => Ok(format!("none recorded yet (`terrarium doctor --baseline` records one in {})", at.display())),
        Some(recorded) => {
            let changed = crate::integrity::compare(&recorded, parts);
            if changed.is_empty() {
                Ok(format!("the policy, python.wasm, module cache and image match {}", at.display()))
            } else {
                Err(format!("{} (re-record with `terrarium doctor --baseline` if intended)", changed.join("; ")))
            }
        }
    }
}

/// Whether the deployment is stopped (an emergency stop kept beside its audit
/// log): a stopped one runs nothing until `terrarium resume`.
fn stop_state() -> Result<String, String> {
    let audit = crate::audit::default_path().map_err(|e| e.to_string())?;
    let dir = audit.parent().unwrap_or(std::path::Path::new("."));
    match crate::sandbox::deployment_stopped(dir) {
        None => Ok("the deployment is not stopped".into()),
        Some(s) => {
            Err(format!("the deployment is STOPPED by {} ({}); nothing runs until `terrarium resume`", s.by, s.reason))
        }
    }
}

/// Encryption at rest: the data key configured, and whether the audit log can be
/// written with it (sealed under it, or not sealed yet).
fn data_key_state() -> Result<String, String> {
    let key = crate::seal::DataKey::from_env().map_err(|e| e.to_string())?;
    let audit = crate::audit::default_path().map_err(|e| e.to_string())?;
    if audit.exists() {
        crate::audit::check_key(&audit).map_err(|e| e.to_string())?;
    }
    Ok(match key {
        Some(k) => format!("data key {} configured: stored work is sealed (docs/operations.md, Keys)", k.id()),
        None => "no data key configured: stored work is kept in the clear (docs/operations.md, Keys)".into(),
    })
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
