//! The command-line contract later tooling relies on: output shape, exit codes,
//! batch ordering, tier selection.

use crate::common::terrarium;

#[test]
fn run_prints_and_exits_zero() {
    let out = terrarium(&["run", "-c", "print(1+1)"], b"");
    assert_eq!((out.code, out.stdout.as_str()), (0, "2\n"), "{}", out.stderr);
}

#[test]
fn json_outcome_has_the_documented_shape() {
    let out = terrarium(&["run", "--json", "-c", "print('hi')\n6*7"], b"");
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    for key in ["id", "status", "tier", "stdout", "stderr", "result", "error", "usage"] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    for key in ["wall_ms", "cpu_ms", "fuel", "peak_memory_bytes"] {
        assert!(v["usage"].get(key).is_some(), "missing usage.{key}: {v}");
    }
    assert_eq!(v["status"], "ok");
    assert_eq!(v["tier"], "rustpython");
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["result"], 42);
    assert!(v["error"].is_null());
}

#[test]
fn exit_codes_follow_the_status() {
    for (code, want, status) in [
        ("1/0", 1, "exception"),
        ("def (:", 1, "exception"),
        ("import os", 4, "denied"),
        ("while True: pass", 3, "timeout"),
    ] {
        let out = terrarium(&["run", "--json", "--timeout", "0.5", "-c", code], b"");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!((out.code, v["status"].as_str()), (want, Some(status)), "{code}: {}", out.stdout);
    }
    let out = terrarium(&["run", "--json", "-c", "1/0"], b"");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["error"]["type"], "ZeroDivisionError");
}

#[test]
fn a_tier_the_policy_does_not_allow_is_refused_not_replaced() {
    let text = format!("{}terrarium:\n  allowed_tiers: [rustpython, wasm]\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let (_dir, path) = crate::common::temp_file("p.yaml", text.as_bytes());
    let out = terrarium(&["run", "--tier", "docker", "--policy", path.to_str().expect("utf-8"), "-c", "print(1)"], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("docker is not in the policy's terrarium.allowed_tiers"), "{}", out.stderr);
    assert_eq!(out.stdout, "", "it must not have run elsewhere");
}

#[test]
fn run_reads_files_and_stdin() {
    let (_dir, path) = crate::common::temp_file("s.py", b"print('from file')\n");
    let out = terrarium(&["run", path.to_str().expect("utf-8 path")], b"");
    assert_eq!(out.stdout, "from file\n");
    let out = terrarium(&["run", "-"], b"print('from stdin')");
    assert_eq!(out.stdout, "from stdin\n");
}

#[test]
fn batch_answers_in_order_in_one_process() {
    let mut input = String::new();
    for i in 0..50 {
        input.push_str(&format!("{{\"id\": \"r{i}\", \"code\": \"{i} * 2\"}}\n"));
    }
    let out = terrarium(&["batch"], input.as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("r{i}"));
        assert_eq!(l["result"], i * 2);
    }
}

#[test]
fn policy_check_prints_the_effective_policy() {
    let out = terrarium(&["policy", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.yaml")], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("max_memory: 512m"), "{}", out.stdout);
    assert!(out.stdout.contains("allowed_tiers:"), "defaults are filled in: {}", out.stdout);
}

#[test]
fn every_shipped_policy_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            terrarium::Policy::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected default and strict policies, found {n}");
}

#[test]
fn disabled_sandbox_denies_everything() {
    let yaml = crate::common::default_policy_with("enabled: true", "enabled: false");
    let (_dir, path) = crate::common::temp_file("off.yaml", yaml.as_bytes());
    let out = terrarium(&["run", "--json", "--policy", path.to_str().expect("utf-8"), "-c", "print(1)"], b"");
    assert_eq!(out.code, 4, "{}", out.stdout);
    assert!(out.stdout.contains("disabled"), "{}", out.stdout);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn the_wasm_tier_runs_real_cpython_from_the_cli() {
    if crate::common::wasm_executor(terrarium::Policy::default_policy()).is_none() {
        return;
    }
    let out = terrarium(&["run", "--tier", "wasm", "-c", "import json; print(json.dumps([1,2]))"], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "[1, 2]\n");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn doctor_checks_every_tier_of_the_build() {
    if crate::common::wasm_executor(terrarium::Policy::default_policy()).is_none() {
        return;
    }
    if crate::common::docker_executor(crate::common::docker_policy(), 0).is_none() {
        return;
    }
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/local-docker.yaml");
    let out = terrarium(&["doctor", "--policy", local], b"");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    for line in ["ok      rustpython", "ok      wasm", "ok      docker (", "ok      docker walls"] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("write / EROFS") && out.stdout.contains("interfaces [\"lo\"]"), "{}", out.stdout);
    // The JSON report: every check (the kernel's features, the state directory's
    // permissions, the policy's hazards: a warning, not a failure) and the image's
    // Python with its packages.
    let text = std::fs::read_to_string(local).expect("policy");
    let (_p, risky) =
        crate::common::temp_file("risky.yaml", format!("{text}\nworkspaces:\n  allow: [\"*\"]\n").as_bytes());
    let out = terrarium(&["doctor", "--policy", risky.to_str().expect("utf-8"), "--json"], b"");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("doctor --json");
    assert_eq!((out.code, &report["ok"]), (0, &serde_json::json!(true)), "{}", out.stdout);
    assert!(report["docker_image"]["python"].as_str().is_some_and(|v| v.starts_with("3.")), "{report}");
    // The local image strips package metadata: numpy is found by its __version__.
    assert!(report["docker_image"]["packages"]["numpy"].as_str().is_some_and(|v| v.starts_with('1')), "{report}");
    let checks = report["checks"].as_array().expect("checks");
    let level = |name: &str| checks.iter().find(|c| c["name"] == name).map(|c| c["level"].clone());
    for name in ["kernel: seccomp", "kernel: user namespaces", "kernel: network namespaces", "kernel: pidfd"] {
        assert_eq!(level(name), Some(serde_json::json!("ok")), "{name}: {report}");
    }
    for name in ["permissions", "stop", "baseline"] {
        assert_eq!(level(name), Some(serde_json::json!("ok")), "{name}: {report}");
    }
    assert!(
        checks.iter().any(|c| c["level"] == "warn" && c["detail"].as_str().unwrap_or("").contains("workspaces.allow")),
        "{report}"
    );
    // The default policy's image is not on this engine (no registry here): doctor
    // says so and how to fix it, and fails.
    let out = terrarium(&["doctor"], b"");
    if !out.stdout.contains("ok      docker (") {
        assert_eq!(out.code, 5, "{}", out.stdout);
        assert!(out.stdout.contains("FAILED  docker") && out.stdout.contains("setup-docker"), "{}", out.stdout);
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn doctor_records_the_deployments_baseline_and_names_a_part_changed_since() {
    if crate::common::wasm_executor(terrarium::Policy::default_policy()).is_none()
        || crate::common::docker_executor(crate::common::docker_policy(), 0).is_none()
    {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let h = home.path().to_string_lossy().into_owned();
    let env = [("TERRARIUM_HOME", h.as_str())];
    let local =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/local-docker.yaml")).expect("policy");
    let (_p, policy) = crate::common::temp_file("deployed.yaml", local.as_bytes());
    let policy = policy.to_str().expect("utf-8");
    let out = crate::common::terrarium_env(&["doctor", "--policy", policy], b"", &env);
    assert!(out.stdout.contains("ok      baseline: none recorded yet"), "{}", out.stdout);
    let out = crate::common::terrarium_env(&["doctor", "--policy", policy, "--baseline"], b"", &env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ok      baseline: recorded 4 parts"), "{}", out.stdout);
    let out = crate::common::terrarium_env(&["doctor", "--policy", policy], b"", &env);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("match"), "{}", out.stdout);
    // The policy in use edited behind the operator's back.
    std::fs::write(policy, format!("{local}\n# loosened later\n")).expect("edit");
    let out = crate::common::terrarium_env(&["doctor", "--policy", policy], b"", &env);
    assert_eq!(out.code, 5, "{}", out.stdout);
    assert!(out.stdout.contains("FAILED  baseline: policy (") && out.stdout.contains("changed"), "{}", out.stdout);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_wasm_batch_uses_warm_instances_and_exits_cleanly() {
    if crate::common::wasm_executor(terrarium::Policy::default_policy()).is_none() {
        return;
    }
    let lines: String =
        (0..6).map(|i| format!("{{\"id\": {i}, \"code\": \"import json\\njson.dumps([{i}])\"}}\n")).collect();
    let out = terrarium(&["batch", "--tier", "wasm"], lines.as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Warm instances still waiting when the batch ends must go quietly.
    assert_eq!(out.stderr, "", "the batch wrote to stderr");
    let results: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["result"].clone())
        .collect();
    let want: Vec<serde_json::Value> = (0..6).map(|i| serde_json::json!(format!("[{i}]"))).collect();
    assert_eq!(results, want);
}

/// H16: what a snippet prints cannot drive the terminal of whoever reads the CLI's
/// JSON or its error lines: C1 controls and bidi characters are escaped in JSON,
/// and a multi-line exception message cannot forge a line of Terrarium's own.
#[test]
fn h16_snippet_text_cannot_drive_the_terminal() {
    let out = terrarium(&["run", "--json", "-c", "print('\\x9b2J\\u202e')\nraise ValueError('\\x1b[2K')"], b"");
    assert!(!out.stdout.contains('\u{9b}') && !out.stdout.contains('\u{202E}'), "{:?}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("still JSON");
    assert_eq!(v["stdout"], "\u{9b}2J\u{202E}\n", "{v}");
    let out = terrarium(&["run", "-c", "raise ValueError('boom\\nterrarium: ok: all fine\\x1b[2K')"], b"");
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    assert!(out.stderr.contains("\n    terrarium: ok: all fine"), "continuation lines are indented: {:?}", out.stderr);
}

/// A log read from a file or a pipe is plain text: no colour codes when stderr is
/// not a terminal (the breaker's WARN for an engine that does not answer).
#[test]
fn log_lines_to_a_pipe_carry_no_colour_codes() {
    let env = [("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let args = ["run", "--policy", "policies/local-docker.yaml", "--tier", "docker", "-c", "1"];
    let out = crate::common::terrarium_env(&args, b"", &env);
    assert_ne!(out.code, 0, "no engine answers there: {}", out.stderr);
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("breaker=docker"),
        "a line to test with: {}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'), "colour codes in a piped log: {:?}", out.stderr);
}

/// `terrarium run` with the shipped pandas policy: the pandas snippet goes to the
/// docker tier by itself, and the JSON outcome's route says why.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn run_with_the_pandas_policy_sends_pandas_to_docker() {
    if crate::common::wasm_executor(terrarium::Policy::default_policy()).is_none()
        || crate::common::docker_executor(crate::common::docker_policy(), 0).is_none()
    {
        return;
    }
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/local-pandas.yaml");
    let out = terrarium(&["run", "--policy", policy, "-c", crate::router::PANDAS_SNIPPET], b"");
    assert_eq!((out.code, out.stdout.as_str()), (0, "{'a': 9, 'b': 6}\n"), "{}", out.stderr);
    let out = terrarium(&["run", "--json", "--policy", policy, "-c", crate::router::PANDAS_SNIPPET], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    assert_eq!((&v["tier"], &v["result"]), (&serde_json::json!("docker"), &serde_json::json!(15)), "{v}");
    let route = v["route"].as_str().unwrap_or_default();
    assert!(route.starts_with("docker: escalated (") && route.contains("cannot import pandas"), "{v}");
}
