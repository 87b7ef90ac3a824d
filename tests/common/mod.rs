//! Helpers shared by the integration tests: a real executor on the real
//! RustPython, and the real `terrarium` binary.

#![allow(dead_code, reason = "each test module uses a different subset")]

pub mod server;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use terrarium::{
    EmbeddedExecutor, ExecRequest, Executor, IsolatedConfig, IsolatedExecutor, Outcome, Overrides, Policy,
};

/// A policy that allows every module the stdlib table exercises.
pub const WIDE_POLICY: &str = include_str!("wide_policy.yaml");

/// [`WIDE_POLICY`], parsed.
pub fn wide_policy() -> Policy {
    Policy::from_yaml(WIDE_POLICY, "wide_policy.yaml").expect("wide policy")
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime"))
}

/// Isolated mode with the real `terrarium` binary as its zygote.
pub fn isolated(policy: Policy) -> IsolatedExecutor {
    IsolatedExecutor::new(policy, IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium")))
}

fn default_executor() -> &'static IsolatedExecutor {
    static EXEC: OnceLock<IsolatedExecutor> = OnceLock::new();
    EXEC.get_or_init(|| isolated(Policy::default_policy()))
}

fn wide_executor() -> &'static IsolatedExecutor {
    static EXEC: OnceLock<IsolatedExecutor> = OnceLock::new();
    EXEC.get_or_init(|| isolated(wide_policy()))
}

fn embedded_executor() -> &'static EmbeddedExecutor {
    static EXEC: OnceLock<EmbeddedExecutor> = OnceLock::new();
    EXEC.get_or_init(|| EmbeddedExecutor::new(wide_policy()))
}

/// Runs `code` under the default policy, in isolated mode (the default for
/// untrusted code).
pub fn run(code: &str) -> Outcome {
    exec(default_executor(), ExecRequest::new(code))
}

/// Asserts that `code`, followed by a marker print, ends `denied` under the
/// default policy without printing the marker.
#[track_caller]
pub fn assert_denied(code: &str) {
    let o = run(&format!("{code}\nprint('ESCAPED')"));
    assert_eq!(o.status, terrarium::Status::Denied, "{code:?} was not denied: {o:?}");
    assert!(!o.stdout.contains("ESCAPED"), "{code:?} escaped: {o:?}");
}

/// Runs `code` under the wide policy (every stdlib module of the table allowed).
pub fn run_wide(code: &str) -> Outcome {
    exec(wide_executor(), ExecRequest::new(code))
}

/// Runs `code` under the wide policy in embedded mode (in this process).
pub fn run_embedded(code: &str) -> Outcome {
    exec(embedded_executor(), ExecRequest::new(code))
}

/// Runs `code` under the default policy with a shorter deadline.
pub fn run_with_timeout(code: &str, secs: f64) -> Outcome {
    exec(default_executor(), with_timeout(code, secs))
}

/// A request for `code` with a deadline of `secs` seconds.
pub fn with_timeout(code: &str, secs: f64) -> ExecRequest {
    ExecRequest::new(code)
        .with_overrides(Overrides { timeout: Some(Duration::from_secs_f64(secs)), ..Overrides::default() })
}

/// Environment variable that skips the wasm tier's tests (printed when used).
pub const SKIP_WASM: &str = "TERRARIUM_SKIP_WASM";

/// The wasm tier under `policy`, or `None` when python.wasm is missing and
/// `TERRARIUM_SKIP_WASM=1` says to skip (printed). Without the opt-out, a missing
/// python.wasm fails the test with the command that installs it.
pub fn wasm_executor(policy: Policy) -> Option<terrarium::WasmExecutor> {
    wasm_executor_with_pool(policy, 0)
}

/// As [`wasm_executor`], with `pool` warm instances.
pub fn wasm_executor_with_pool(policy: Policy, pool: usize) -> Option<terrarium::WasmExecutor> {
    let mut config = terrarium::WasmConfig::from_env();
    config.pool_size = pool;
    let exec = terrarium::WasmExecutor::new(policy, config);
    match exec.warm_up() {
        Ok(()) => Some(exec),
        Err(e) if std::env::var_os(SKIP_WASM).is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED (wasm tier, {SKIP_WASM}=1): {e}");
            None
        }
        Err(e) => panic!("the wasm tier is not set up: {e}\n(run scripts/setup-wasm, or set {SKIP_WASM}=1 to skip)"),
    }
}

/// Runs `code` on the wasm tier under the default policy; `None` when skipped.
pub fn run_wasm(code: &str) -> Option<Outcome> {
    run_wasm_policy(Policy::default_policy(), code)
}

/// Runs `code` on the wasm tier under `policy`; `None` when skipped.
pub fn run_wasm_policy(policy: Policy, code: &str) -> Option<Outcome> {
    let exec = wasm_executor(policy)?;
    Some(exec_wasm(&exec, ExecRequest::new(code)))
}

/// Runs `req` on `exec`.
pub fn exec_wasm(e: &terrarium::WasmExecutor, req: ExecRequest) -> Outcome {
    exec(e, req)
}

/// Runs `req` under the default policy, in isolated mode.
pub fn exec_default(req: ExecRequest) -> Outcome {
    exec(default_executor(), req)
}

/// The shared isolated executor of the default policy.
pub fn default_isolated() -> &'static IsolatedExecutor {
    default_executor()
}

/// Runs `code` under a policy given as YAML, in isolated mode.
pub fn run_policy(policy_yaml: &str, code: &str) -> Outcome {
    let policy = Policy::from_yaml(policy_yaml, "<test>").expect("test policy");
    exec(&isolated(policy), ExecRequest::new(code))
}

/// Runs one request on `e`; host faults fail the test.
pub fn exec(e: &dyn Executor, req: ExecRequest) -> Outcome {
    runtime().block_on(e.execute(req)).expect("host fault")
}

/// `None` when `o` ended `ok` with `expected` (JSON text) as its result; otherwise
/// what it did instead, for a table test's list of failures.
pub fn unexpected(o: Outcome, expected: &str) -> Option<String> {
    let want: serde_json::Value = serde_json::from_str(expected).expect("expected is JSON");
    if o.status == terrarium::Status::Ok && o.result.as_ref() == Some(&want) {
        return None;
    }
    let got = o.error.map(|e| format!("{}: {}", e.kind, e.message)).or(o.result.map(|r| r.to_string()));
    Some(format!("{:?} {got:?} (want {want})", o.status))
}

/// What the binary did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `terrarium` binary with `args`, feeding `stdin`.
pub fn terrarium(args: &[&str], stdin: &[u8]) -> Output {
    terrarium_env(args, stdin, &[])
}

/// A policy file with `replace` applied to the default policy's text.
pub fn default_policy_with(from: &str, to: &str) -> String {
    let text = terrarium::policy::DEFAULT_POLICY_YAML;
    assert!(text.contains(from), "default policy has no {from:?}");
    text.replacen(from, to, 1)
}

/// Writes `text` to a fresh temporary file and returns it.
pub fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    (dir, path)
}

/// Environment variable that skips the docker tier's tests (printed when used).
pub const SKIP_DOCKER: &str = "TERRARIUM_SKIP_DOCKER";
/// The image scripts/setup-docker builds from this machine's Python.
pub const DOCKER_IMAGE: &str = "terrarium-python:local";

/// The default policy with the local test image.
pub fn docker_policy() -> Policy {
    docker_policy_with(
        "allowed_modules: [\"math\", \"time\", \"json\"]",
        "allowed_modules: [\"math\", \"time\", \"json\"]",
    )
}

/// The default policy with the local test image and `from` replaced by `to`.
pub fn docker_policy_with(from: &str, to: &str) -> Policy {
    let text = default_policy_with(from, to).replacen("python:3.12-slim", DOCKER_IMAGE, 1);
    Policy::from_yaml(&text, "<docker test>").expect("docker test policy")
}

/// The docker tier under `policy` with `pool` warm containers, connected and with
/// its image present; `None` when the engine or image is missing and
/// `TERRARIUM_SKIP_DOCKER=1` says to skip (printed). Without the opt-out, a missing
/// engine or image fails the test with the command that sets them up.
pub fn docker_executor(policy: Policy, pool: usize) -> Option<terrarium::DockerExecutor> {
    let config = terrarium::DockerConfig { pool_size: pool, ..terrarium::DockerConfig::default() };
    let exec = terrarium::DockerExecutor::new(policy, config);
    match runtime().block_on(exec.connect()) {
        Ok(_) => Some(exec),
        Err(e) if std::env::var_os(SKIP_DOCKER).is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED (docker tier, {SKIP_DOCKER}=1): {e}");
            None
        }
        Err(e) => panic!(
            "the docker tier is not set up: {e}\n(run scripts/setup-docker as root: it installs and starts the \
             engine and builds {DOCKER_IMAGE}; or set {SKIP_DOCKER}=1 to skip)"
        ),
    }
}

/// Runs `code` on a fresh docker executor (no warm pool) under `policy`; `None`
/// when skipped.
pub fn run_docker_policy(policy: Policy, code: &str) -> Option<Outcome> {
    let docker = docker_executor(policy, 0)?;
    Some(exec(&docker, ExecRequest::new(code)))
}

/// Runs `code` on the docker tier under the default policy (local image).
pub fn run_docker(code: &str) -> Option<Outcome> {
    run_docker_policy(docker_policy(), code)
}

/// Ids of the containers (running or not) that carry `label=value`, from the
/// engine itself through the docker CLI.
pub fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("label={label}={value}")])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Whether container `id` is paused (a session's container between cells), waiting
/// up to 10 s for it: the freeze happens off a cell's path.
pub fn container_paused(id: &str) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out =
            Command::new("docker").args(["inspect", "-f", "{{.State.Paused}}", id]).output().expect("docker inspect");
        if String::from_utf8_lossy(&out.stdout).trim() == "true" {
            return true;
        }
        if std::time::Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the real `terrarium` binary with extra environment variables.
pub fn terrarium_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_terrarium"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // The audit log and other state of test runs stay out of the user's home.
    cmd.env("TERRARIUM_HOME", test_home());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn terrarium");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait terrarium");
    let _ = writer.join();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A directory with one file, readable by the container's unprivileged user.
pub fn readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data.txt"), "granted").expect("write");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(dir.path().join("data.txt"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    dir
}

/// The docker test policy with `dir` mounted read-only at /data.
pub fn policy_mounting(dir: &std::path::Path, image: &str) -> terrarium::Policy {
    let text = format!(
        "{}terrarium:\n  read_only_mounts:\n    - source: {}\n      target: /data\n",
        terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", image, 1),
        dir.display()
    );
    terrarium::Policy::from_yaml(&text, "<mount test>").expect("mount policy")
}

/// A `TERRARIUM_HOME` for this test process (removed when it exits normally).
pub fn test_home() -> &'static std::path::Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().expect("test home")).path()
}
