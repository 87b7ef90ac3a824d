//! The docker tier against the real engine: results, limits, the warm pool, clean-up
//! of every container, and an engine that is gone or hangs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use terrarium::tier::docker::engine::{self, Engine, Launch};
use terrarium::{DockerConfig, DockerExecutor, ExecRequest, SandboxError, Status};

use crate::common::{
    containers_labelled, docker_executor, docker_policy, docker_policy_with, exec, run_docker, runtime, terrarium_env,
    with_timeout,
};

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn print_and_results_come_back() {
    let Some(o) = run_docker("import json, math\nprint(1 + 1)\njson.dumps({'pi': round(math.pi, 2)})") else {
        return;
    };
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.stdout, "2\n");
    assert_eq!(o.result, Some(serde_json::json!("{\"pi\": 3.14}")));
    assert_eq!(o.tier, terrarium::Tier::Docker);
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn exceptions_and_syntax_errors_are_the_guests() {
    let Some(o) = run_docker("1/0") else { return };
    assert_eq!((o.status, o.error.map(|e| e.kind)), (Status::Exception, Some("ZeroDivisionError".into())));
    let Some(o) = run_docker("def (") else { return };
    assert_eq!((o.status, o.error.map(|e| e.kind)), (Status::Exception, Some("SyntaxError".into())));
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_infinite_loop_times_out_and_its_container_is_gone() {
    let Some(exec_) = docker_executor(docker_policy(), 0) else { return };
    let started = Instant::now();
    let o = exec(&exec_, with_timeout("while True: pass", 1.0));
    let took = started.elapsed();
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(took < Duration::from_secs(5), "the deadline of 1 s took {took:?}");
    let (label, value) = exec_.label();
    assert_eq!(containers_labelled(label, value), Vec::<String>::new(), "a timed-out container was left behind");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_run_whose_caller_stops_waiting_does_not_leave_its_container_running() {
    let Some(exec_) = docker_executor(docker_policy(), 0) else { return };
    let exec_ = std::sync::Arc::new(exec_);
    let (label, value) = exec_.label();
    let (label, value) = (label.to_string(), value.to_string());
    let e = exec_.clone();
    // An HTTP client that hangs up drops the request's future mid-run.
    let task = runtime().spawn(async move {
        let _ = terrarium::Executor::execute(&*e, with_timeout("import time\ntime.sleep(25)", 9.0)).await;
    });
    let until = Instant::now() + Duration::from_secs(30);
    while containers_labelled(&label, &value).is_empty() {
        assert!(Instant::now() < until, "the run's container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    task.abort();
    let _ = runtime().block_on(task);
    let until = Instant::now() + Duration::from_secs(15);
    while !containers_labelled(&label, &value).is_empty() {
        assert!(Instant::now() < until, "the abandoned run's container was left running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_sleeping_snippet_is_killed_at_its_deadline() {
    let Some(exec_) = docker_executor(docker_policy(), 0) else { return };
    let o = exec(&exec_, with_timeout("import time\ntime.sleep(30)", 1.0));
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    let (label, value) = exec_.label();
    assert!(containers_labelled(label, value).is_empty());
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_memory_hog_ends_with_memory_limit() {
    let policy = docker_policy_with(r#"max_memory: "512m""#, r#"max_memory: "64m""#);
    let Some(o) = crate::common::run_docker_policy(policy, "b = bytearray(2**30)\nprint('survived')") else {
        return;
    };
    assert_eq!(o.status, Status::MemoryLimit, "{o:?}");
    assert!(!o.stdout.contains("survived"));
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_output_flood_ends_with_output_limit_and_the_container_is_removed() {
    let Some(exec_) = docker_executor(docker_policy(), 0) else { return };
    let o = exec(&exec_, ExecRequest::new("while True: print('x' * 10000)"));
    assert_eq!(o.status, Status::OutputLimit, "{o:?}");
    assert!(o.stdout.len() <= 1 << 20, "{} bytes kept", o.stdout.len());
    let (label, value) = exec_.label();
    assert!(containers_labelled(label, value).is_empty());
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn the_warm_pool_serves_fresh_single_use_containers() {
    let Some(exec_) = docker_executor(docker_policy(), 2) else { return };
    runtime().block_on(exec_.fill_pool()).expect("fill the pool");
    let (label, value) = exec_.label();
    assert_eq!(containers_labelled(label, value).len(), 2, "two warm containers");
    for i in 0..5 {
        let o =
            exec(&exec_, ExecRequest::new(format!("import math\nseen = hasattr(math, 'mark')\nmath.mark = {i}\nseen")));
        assert_eq!(o.status, Status::Ok, "{o:?}");
        assert_eq!(o.result, Some(serde_json::json!(false)), "request {i} saw a previous request's state");
    }
    // A deadline counts from the request, not from the container's start.
    std::thread::sleep(Duration::from_millis(1500));
    let o = exec(&exec_, with_timeout("import time\ntime.sleep(0.5)\n'done'", 1.0));
    assert_eq!(o.result, Some(serde_json::json!("done")), "{o:?}");
    let o = exec(&exec_, with_timeout("while True: pass", 1.0));
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    runtime().block_on(exec_.shutdown()).expect("shutdown");
    assert_eq!(containers_labelled(label, value), Vec::<String>::new(), "shutdown left containers");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn dropping_the_executor_removes_its_containers() {
    let Some(exec_) = docker_executor(docker_policy(), 2) else { return };
    runtime().block_on(exec_.fill_pool()).expect("fill the pool");
    let value = exec_.label().1.to_string();
    assert_eq!(exec(&exec_, ExecRequest::new("1 + 1")).result, Some(serde_json::json!(2)));
    drop(exec_);
    assert_eq!(containers_labelled(engine::EXECUTOR_LABEL, &value), Vec::<String>::new());
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_scratch_directory_is_private_writable_and_gone_afterwards() {
    let Some(exec_) = docker_executor(docker_policy(), 0) else { return };
    let mut req = ExecRequest::new("open('note.txt', 'w').write('hi')\nopen('/scratch/note.txt').read()");
    req.scratch = true;
    let o = exec(&exec_, req);
    assert_eq!(o.result, Some(serde_json::json!("hi")), "{o:?}");
    let mut req = ExecRequest::new("open('/scratch/note.txt').read()");
    req.scratch = true;
    let o = exec(&exec_, req);
    assert_eq!(o.status, Status::Exception, "the second run saw the first one's file: {o:?}");
}

#[test]
fn a_stopped_engine_is_a_host_error_not_a_hang() {
    // What a stopped dockerd leaves: a socket file nobody listens on.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    let config = DockerConfig { socket: Some(sock.clone()), pool_size: 2, ..DockerConfig::default() };
    let exec_ = DockerExecutor::new(docker_policy(), config);
    let started = Instant::now();
    let r = runtime().block_on(terrarium::Executor::execute(&exec_, ExecRequest::new("1 + 1")));
    match r {
        Err(SandboxError::Host { message, .. }) => {
            assert!(message.contains("no Docker engine answers") && message.contains("setup-docker"), "{message}")
        }
        other => panic!("expected a host error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // From the command line: exit 5, the reason on stderr, nothing run elsewhere.
    let url = format!("unix://{}", sock.display());
    let out = terrarium_env(&["run", "--tier", "docker", "-c", "print(1)"], b"", &[("DOCKER_HOST", &url)]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("no Docker engine answers"), "{}", out.stderr);
    assert_eq!(out.stdout, "", "it must not have run elsewhere");
}

#[test]
fn an_engine_that_never_answers_times_out_as_a_host_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    // Accept connections and never answer.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let config = DockerConfig { socket: Some(sock), api_timeout: Duration::from_secs(1), ..DockerConfig::default() };
    let exec_ = DockerExecutor::new(docker_policy(), config);
    let started = Instant::now();
    let r = runtime().block_on(terrarium::Executor::execute(&exec_, ExecRequest::new("1 + 1")));
    assert!(matches!(r, Err(SandboxError::Host { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Every engine API call goes through the `api` breaker: calls that keep failing
/// open it, and while it is open the engine is not called at all.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn engine_calls_that_keep_failing_open_the_api_breaker() {
    if docker_executor(docker_policy(), 0).is_none() {
        return;
    }
    let rt = runtime();
    let socket = engine::socket_path(None).expect("socket");
    let settings = terrarium::policy::BreakerPolicy {
        failure_threshold: 2,
        recovery_timeout: Duration::from_secs(60),
        log_failures: false,
    };
    let api = terrarium::breaker::Breaker::new("api", settings);
    let eng =
        rt.block_on(Engine::connect(&socket, Duration::from_secs(30))).expect("engine").guarded_by(Some(api.clone()));
    // The real engine answers 404 for a container that does not exist: a failure.
    for _ in 0..2 {
        let e = rt.block_on(eng.start("terrarium-no-such-container")).expect_err("no such container");
        assert!(e.to_string().contains("404") || e.to_string().contains("No such container"), "{e}");
    }
    let refused = rt.block_on(eng.start("terrarium-no-such-container")).expect_err("open");
    assert!(refused.to_string().contains("breaker api open"), "{refused}");
    assert_eq!(api.snapshot().state, terrarium::breaker::State::Open);
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_missing_image_says_how_to_get_one() {
    // The engine itself must be there (or the opt-out set).
    if docker_executor(docker_policy(), 0).is_none() {
        return;
    }
    let text = terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", "terrarium-no-such-image:0", 1);
    let policy = terrarium::Policy::from_yaml(&text, "<test>").expect("policy");
    let exec_ = DockerExecutor::new(policy, DockerConfig { pool_size: 0, ..DockerConfig::default() });
    match runtime().block_on(exec_.connect()) {
        Err(SandboxError::TierUnavailable { reason, .. }) => {
            assert!(reason.contains("terrarium-no-such-image:0") && reason.contains("setup-docker"), "{reason}")
        }
        other => panic!("expected the tier to be unavailable, got {other:?}"),
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn containers_of_a_dead_terrarium_process_are_reaped_at_start_up() {
    let Some(live) = docker_executor(docker_policy(), 0) else { return };
    drop(live);
    let rt = runtime();
    let socket = engine::socket_path(None).expect("socket");
    let eng = rt.block_on(Engine::connect(&socket, Duration::from_secs(30))).expect("engine");
    // A container owned by a process that no longer exists on this host.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_string();
    let marker = format!("reap-{}", std::process::id());
    let labels = HashMap::from([
        (engine::LABEL.to_string(), "1".to_string()),
        (engine::OWNER_LABEL.to_string(), format!("{host}:999999999:1")),
        (engine::EXECUTOR_LABEL.to_string(), marker.clone()),
    ]);
    let launch = Launch {
        cmd: vec!["python3".into(), "-c".into(), "import time; time.sleep(60)".into()],
        scratch: false,
        workspace: None,
        labels,
    };
    let id = rt.block_on(eng.create(engine::spec(&docker_policy(), &launch).expect("spec"))).expect("create");
    // Other tests' executors reap at their start-up too, and one may take this orphan
    // between any two steps here: its start then meets a container marked for
    // removal (409) or gone (404). Any other failure is this test's.
    if let Err(e) = rt.block_on(eng.start(&id)) {
        let e = e.to_string();
        assert!(e.contains("409") || e.contains("404"), "start: {e}");
    }
    rt.block_on(eng.reap_orphans()).expect("reap");
    // The engine may still be finishing a removal one of them began.
    let until = Instant::now() + Duration::from_secs(10);
    while !containers_labelled(engine::EXECUTOR_LABEL, &marker).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(containers_labelled(engine::EXECUTOR_LABEL, &marker).is_empty(), "the orphan survived reaping");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn the_command_line_runs_on_the_docker_tier() {
    let text = terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", crate::common::DOCKER_IMAGE, 1);
    let (_dir, path) = crate::common::temp_file("docker.yaml", text.as_bytes());
    if docker_executor(docker_policy(), 0).is_none() {
        return;
    }
    let p = path.to_str().expect("utf-8");
    let out = crate::common::terrarium(&["run", "--tier", "docker", "--policy", p, "-c", "print(6 * 7)"], b"");
    assert_eq!((out.code, out.stdout.as_str()), (0, "42\n"), "{}", out.stderr);
    let input = "{\"id\": 1, \"code\": \"1 + 1\"}\n{\"id\": 2, \"code\": \"import os\"}\n";
    let out = crate::common::terrarium(&["batch", "--tier", "docker", "--policy", p], input.as_bytes());
    let lines: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert_eq!((lines[0]["status"].as_str(), lines[1]["status"].as_str()), (Some("ok"), Some("denied")));
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_read_only_mount_granted_by_the_policy_can_be_read_and_nothing_more() {
    let dir = crate::common::readable_dir();
    let Some(exec_) = docker_executor(crate::common::policy_mounting(dir.path(), crate::common::DOCKER_IMAGE), 0)
    else {
        return;
    };
    let o = exec(&exec_, ExecRequest::new("open('/data/data.txt').read()"));
    assert_eq!(o.result, Some(serde_json::json!("granted")), "{o:?}");
    for code in [
        "open('/data/new.txt', 'w').write('x')",
        "open('/data/data.txt', 'a').write('x')",
        "open('/data/../etc/passwd').read()",
        "open('/etc/passwd').read()",
    ] {
        let o = exec(&exec_, ExecRequest::new(code));
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "the mount was written to");
    // Without the grant, nothing is mounted.
    let o =
        exec(&docker_executor(docker_policy(), 0).expect("docker"), ExecRequest::new("open('/data/data.txt').read()"));
    assert_eq!(o.status, Status::Denied, "{o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_warm_container_that_died_while_waiting_is_never_handed_a_request() {
    let Some(exec_) = docker_executor(docker_policy(), 1) else { return };
    runtime().block_on(exec_.fill_pool()).expect("fill the pool");
    let (label, value) = exec_.label();
    let ids = containers_labelled(label, value);
    assert_eq!(ids.len(), 1);
    // What an engine restart or an operator's `docker kill` does to it.
    let killed = std::process::Command::new("docker").args(["kill", &ids[0]]).output().expect("docker kill");
    assert!(killed.status.success(), "{}", String::from_utf8_lossy(&killed.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let o = exec(&exec_, ExecRequest::new("6 * 7"));
    assert_eq!((o.status, o.result.clone()), (Status::Ok, Some(serde_json::json!(42))), "{o:?}");
    runtime().block_on(exec_.shutdown()).expect("shutdown");
}

/// numpy and pandas import in every container of a policy that allows them, cold
/// or warm: they read their data files and load ctypes while they initialise, which
/// the prelude refuses a snippet, so every container imports them before it is
/// ready. A snippet that then opens a file itself is still denied.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn pandas_imports_in_cold_and_warm_containers_and_files_stay_closed() {
    let policy = crate::router::pandas_policy();
    for pool in [0, 1] {
        let Some(exec_) = docker_executor(policy.clone(), pool) else { return };
        let o = exec(&exec_, ExecRequest::new(crate::router::PANDAS_SNIPPET));
        assert_eq!((o.status, o.result.clone()), (Status::Ok, Some(serde_json::json!(15))), "pool {pool}: {o:?}");
        let o = exec(&exec_, ExecRequest::new("import pandas as pd\npd.read_csv('/etc/passwd')"));
        assert_eq!(o.status, Status::Denied, "pool {pool}: {o:?}");
    }
}
