//! The sandbox's routing against the real tiers: the lightest tier that serves a
//! request, escalation for modules only a heavier tier has, the policy's limits on
//! routing, breakers that move or refuse requests, and static-analysis findings.

use std::time::{Duration, Instant};

use terrarium::breaker::State;
use terrarium::{DockerConfig, ExecRequest, Policy, Sandbox, SandboxError, Status, Tier, TierChoice};

use crate::common::{DOCKER_IMAGE, docker_executor, docker_policy, runtime, wasm_executor};

/// The default policy with the local image, `extra` appended under `terrarium:`,
/// and `modules` as the whitelist.
fn policy(modules: &str, extra: &str) -> Policy {
    let text = terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", DOCKER_IMAGE, 1).replacen(
        r#"["math", "time", "json"]"#,
        modules,
        1,
    );
    let text = if extra.is_empty() { text } else { format!("{text}terrarium:\n{extra}") };
    Policy::from_yaml(&text, "<router test>").expect("router policy")
}

fn sandbox(policy: Policy) -> Sandbox {
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    let wasm = terrarium::WasmConfig { pool_size: 0, ..terrarium::WasmConfig::from_env() };
    let docker = DockerConfig { pool_size: 0, ..DockerConfig::default() };
    Sandbox::builder().policy(policy).isolated(isolated).wasm(wasm).docker(docker).build().expect("sandbox")
}

/// Whether both CPython tiers are set up (or their skips were printed).
fn tiers_ready() -> bool {
    wasm_executor(Policy::default_policy()).is_some() && docker_executor(docker_policy(), 0).is_some()
}

fn run(s: &Sandbox, code: &str) -> Result<terrarium::Outcome, SandboxError> {
    runtime().block_on(s.execute(ExecRequest::new(code)))
}

#[test]
fn a_plain_snippet_runs_on_the_lightest_tier() {
    let s = sandbox(policy(r#"["math", "json"]"#, ""));
    let o = run(&s, "import math\nmath.floor(2.5)").expect("run");
    assert_eq!((o.tier, o.status, o.result.clone()), (Tier::Rustpython, Status::Ok, Some(serde_json::json!(2))));
    assert!(o.route.as_deref().is_some_and(|r| r.starts_with("rustpython: the lightest")), "{:?}", o.route);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_package_only_the_image_has_escalates_to_docker() {
    if !tiers_ready() {
        return;
    }
    let s = sandbox(policy(r#"["math", "terrarium_image_only"]"#, ""));
    let o = run(&s, "import terrarium_image_only\nterrarium_image_only.TIER").expect("run");
    assert_eq!((o.tier, o.status, o.result.clone()), (Tier::Docker, Status::Ok, Some(serde_json::json!("docker"))));
    let route = o.route.unwrap_or_default();
    assert!(route.contains("rustpython cannot import terrarium_image_only"), "{route}");
    assert!(route.contains("wasm cannot import terrarium_image_only"), "{route}");
}

/// The shipped policy that allows numpy and pandas (the local image carries them).
pub(crate) fn pandas_policy() -> Policy {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/local-pandas.yaml");
    Policy::from_yaml(&std::fs::read_to_string(path).expect("policies/local-pandas.yaml"), path).expect("policy")
}

/// What agent code does with pandas most: a small DataFrame, a groupby, a sum.
pub(crate) const PANDAS_SNIPPET: &str = "import pandas as pd
df = pd.DataFrame({'team': ['a', 'b', 'a', 'b', 'a'], 'score': [1, 2, 3, 4, 5]})
totals = df.groupby('team')['score'].sum()
print(totals.to_dict())
int(totals.sum())";

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn pandas_and_numpy_go_to_docker_by_themselves_and_a_pure_snippet_stays_on_the_interpreter() {
    if !tiers_ready() {
        return;
    }
    let s = sandbox(pandas_policy());
    let o = run(&s, PANDAS_SNIPPET).expect("run");
    assert_eq!((o.tier, o.status, o.result.clone()), (Tier::Docker, Status::Ok, Some(serde_json::json!(15))), "{o:?}");
    assert_eq!(o.stdout, "{'a': 9, 'b': 6}\n");
    let route = o.route.unwrap_or_default();
    assert!(route.starts_with("docker: escalated ("), "{route}");
    assert!(
        route.contains("rustpython cannot import pandas") && route.contains("wasm cannot import pandas"),
        "{route}"
    );
    // numpy, through a submodule, with LAPACK underneath (the image's shared libraries).
    let code = "import numpy as np\nimport numpy.linalg as la\nla.solve(np.array([[2.0, 0.0], [0.0, 4.0]]), np.array([2.0, 8.0])).tolist()";
    let o = run(&s, code).expect("run");
    assert_eq!(
        (o.tier, o.status, o.result.clone()),
        (Tier::Docker, Status::Ok, Some(serde_json::json!([1.0, 2.0]))),
        "{o:?}"
    );
    let route = o.route.unwrap_or_default();
    assert!(route.starts_with("docker: escalated ("), "{route}");
    assert!(route.contains("rustpython cannot import numpy") && route.contains("wasm cannot import numpy"), "{route}");
    // The same policy keeps a pure snippet on the lightest tier.
    let o = run(&s, "1+1").expect("run");
    assert_eq!(
        (o.tier, o.status, o.result.clone()),
        (Tier::Rustpython, Status::Ok, Some(serde_json::json!(2))),
        "{o:?}"
    );
    assert!(o.route.as_deref().is_some_and(|r| r.starts_with("rustpython: the lightest")), "{:?}", o.route);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_module_the_interpreter_tier_never_serves_escalates_to_wasm() {
    if !tiers_ready() {
        return;
    }
    // `traceback` is plain stdlib in CPython; the interpreter tier never hands it out.
    let s = sandbox(policy(r#"["traceback"]"#, ""));
    let o = run(&s, "import traceback\ntraceback.format_exception_only(ValueError, ValueError('x'))").expect("run");
    assert_eq!((o.tier, o.status), (Tier::Wasm, Status::Ok), "{o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn routing_never_goes_below_the_minimum_isolation_or_past_a_fixed_tier() {
    if !tiers_ready() {
        return;
    }
    let s = sandbox(policy(r#"["math"]"#, "  min_isolation: docker\n"));
    let o = run(&s, "1 + 1").expect("run");
    assert_eq!(o.tier, Tier::Docker, "{o:?}");
    // A fixed tier that cannot import the module is not replaced: the guest sees
    // the import fail there.
    let s = sandbox(policy(r#"["math", "terrarium_image_only"]"#, "  tier: rustpython\n"));
    let o = run(&s, "import terrarium_image_only").expect("run");
    assert_eq!(o.tier, Tier::Rustpython, "{o:?}");
    assert_ne!(o.status, Status::Ok);
    // And a tier the policy does not allow is refused, not replaced.
    let s = sandbox(policy(r#"["math"]"#, "  allowed_tiers: [rustpython, wasm]\n"));
    let mut req = ExecRequest::new("1 + 1");
    req.tier = TierChoice::Fixed(Tier::Docker);
    let r = runtime().block_on(s.execute(req));
    assert!(matches!(r, Err(SandboxError::InvalidRequest(ref m)) if m.contains("not allowed")), "{r:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_open_breaker_moves_auto_requests_to_the_next_tier() {
    if !tiers_ready() {
        return;
    }
    let s = sandbox(policy(r#"["math"]"#, ""));
    let b = s.breakers().tier(Tier::Rustpython);
    for _ in 0..3 {
        b.allow().expect("closed").failed("zygote keeps dying");
    }
    let o = run(&s, "6 * 7").expect("run");
    assert_eq!((o.tier, o.result.clone()), (Tier::Wasm, Some(serde_json::json!(42))), "{o:?}");
    assert!(o.route.unwrap_or_default().contains("breaker rustpython open"));
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_stopped_engine_opens_the_docker_breaker_then_a_trial_closes_it() {
    if !tiers_ready() {
        return;
    }
    let real = terrarium::tier::docker::engine::socket_path(None).expect("socket");
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("docker.sock");
    std::os::unix::fs::symlink(dir.path().join("stopped"), &link).expect("symlink");
    let text = terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", DOCKER_IMAGE, 1).replacen(
        "recovery_timeout: 60",
        "recovery_timeout: 0.5",
        1,
    );
    let p = Policy::from_yaml(&format!("{text}terrarium:\n  tier: docker\n"), "<t>").expect("policy");
    let docker = DockerConfig { socket: Some(link.clone()), pool_size: 0, ..DockerConfig::default() };
    let s = Sandbox::builder().policy(p).docker(docker).build().expect("sandbox");
    for i in 0..3 {
        let r = run(&s, "1 + 1");
        assert!(matches!(r, Err(SandboxError::Host { .. })), "request {i}: {r:?}");
    }
    let started = Instant::now();
    match run(&s, "1 + 1") {
        Err(SandboxError::BreakerOpen(open)) => assert!(open.to_string().starts_with("breaker docker open"), "{open}"),
        other => panic!("expected fail-fast, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(&real, &link).expect("engine back");
    std::thread::sleep(Duration::from_millis(600));
    let o = run(&s, "6 * 7").expect("the trial");
    assert_eq!((o.tier, o.result.clone()), (Tier::Docker, Some(serde_json::json!(42))), "{o:?}");
    assert_eq!(s.breakers().tier(Tier::Docker).snapshot().state, State::Closed);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn findings_deny_by_default_and_are_reported_under_warn() {
    let s = sandbox(policy(r#"["math"]"#, ""));
    let o = run(&s, "().__class__.__bases__[0].__subclasses__()").expect("run");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(
        o.findings.iter().any(|f| f.severity == terrarium::analysis::Severity::Deny && f.line == 1),
        "{:?}",
        o.findings
    );
    if !tiers_ready() {
        return;
    }
    // Under `findings: warn` the CPython tiers run it (their walls do not rely on
    // the analysis); the finding is still in the outcome.
    let s = sandbox(policy(r#"["math"]"#, "  tier: wasm\n  findings: warn\n"));
    let o = run(&s, "len(().__class__.__bases__[0].__subclasses__()) > 0").expect("run");
    assert_eq!((o.status, o.result.clone()), (Status::Ok, Some(serde_json::json!(true))), "{o:?}");
    assert!(!o.findings.is_empty());
}
