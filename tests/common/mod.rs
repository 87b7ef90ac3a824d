//! Helpers shared by the integration tests: a real executor on the real
//! RustPython, and the real `terrarium` binary.

#![allow(dead_code, reason = "each test module uses a different subset")]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use terrarium::{
    EmbeddedExecutor, ExecRequest, Executor, IsolatedConfig, IsolatedExecutor, Outcome, Overrides, Policy,
};

/// A policy that allows every module the stdlib table exercises.
pub const WIDE_POLICY: &str = include_str!("wide_policy.yaml");

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
    EXEC.get_or_init(|| isolated(Policy::from_yaml(WIDE_POLICY, "wide_policy.yaml").expect("wide policy")))
}

fn embedded_executor() -> &'static EmbeddedExecutor {
    static EXEC: OnceLock<EmbeddedExecutor> = OnceLock::new();
    EXEC.get_or_init(|| EmbeddedExecutor::new(Policy::from_yaml(WIDE_POLICY, "wide_policy.yaml").expect("wide policy")))
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
    let req = ExecRequest {
        id: None,
        code: code.into(),
        overrides: Overrides { timeout: Some(Duration::from_secs_f64(secs)), ..Overrides::default() },
    };
    exec(default_executor(), req)
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

/// What the binary did.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `terrarium` binary with `args`, feeding `stdin`.
pub fn terrarium(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn terrarium");
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
