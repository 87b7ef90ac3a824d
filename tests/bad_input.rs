//! Bad input gets a clear message and exit code 2, never a panic: malformed YAML,
//! unknown keys, bad sizes, negative timeouts, non-UTF-8 code, empty code, huge code.

use crate::common::{default_policy_with, temp_file, terrarium};

#[track_caller]
fn assert_usage_error(args: &[&str], stdin: &[u8], wants: &[&str]) {
    let out = terrarium(args, stdin);
    assert_eq!(out.code, 2, "{args:?}: exit {} stderr {}", out.code, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{args:?} panicked: {}", out.stderr);
    for want in wants {
        assert!(out.stderr.contains(want), "{args:?}: {want:?} not in {:?}", out.stderr);
    }
}

#[track_caller]
fn assert_bad_policy(yaml: &str, wants: &[&str]) {
    let (_dir, path) = temp_file("p.yaml", yaml.as_bytes());
    let p = path.to_str().expect("utf-8 path");
    assert_usage_error(&["policy", "check", p], b"", wants);
    assert_usage_error(&["run", "--policy", p, "-c", "1"], b"", wants);
}

#[test]
fn read_only_mounts_must_be_plain_absolute_paths_outside_reserved_places() {
    let base = terrarium::policy::DEFAULT_POLICY_YAML;
    let mount = |source: &str, target: &str| {
        format!("{base}terrarium:\n  read_only_mounts:\n    - source: {source:?}\n      target: {target:?}\n")
    };
    let field = "terrarium.read_only_mounts[0]";
    assert_bad_policy(&mount("relative/dir", "/data"), &[field, "source", "absolute"]);
    assert_bad_policy(&mount("/srv/../etc", "/data"), &[field, "source"]);
    assert_bad_policy(&mount("/srv/data", "/"), &[field, "target"]);
    assert_bad_policy(&mount("/srv/data", "/proc/x"), &[field, "target"]);
    assert_bad_policy(&mount("/srv/data", "/tmp"), &[field, "target"]);
    assert_bad_policy(&mount("/srv/data", "/data\nx"), &[field, "target"]);
    let twice = format!(
        "{base}terrarium:\n  read_only_mounts:\n    - {{source: /a, target: /data}}\n    - {{source: /b, target: /data/}}\n"
    );
    assert_bad_policy(&twice, &["terrarium.read_only_mounts[1].target", "mounted twice"]);
    assert_bad_policy(
        &format!("{base}terrarium:\n  read_only_mounts:\n    - {{source: /a, target: /data, mode: rw}}\n"),
        &["mode"],
    );
}

#[test]
fn audit_settings_are_checked() {
    let base = terrarium::policy::DEFAULT_POLICY_YAML;
    assert_bad_policy(&format!("{base}audit:\n  retention_days: 0\n"), &["audit.retention_days", "1..=36500"]);
    assert_bad_policy(&format!("{base}audit:\n  keep: forever\n"), &["keep"]);
    assert_bad_policy(&format!("{base}terrarium:\n  findings: maybe\n"), &["terrarium.findings"]);
    assert_bad_policy(&format!("{base}terrarium:\n  min_isolation: vm\n"), &["terrarium.min_isolation"]);
    assert_bad_policy(
        &format!("{base}terrarium:\n  allowed_tiers: [rustpython]\n  min_isolation: docker\n"),
        &["terrarium.min_isolation", "above every tier"],
    );
}

#[test]
fn malformed_yaml_names_the_line() {
    assert_bad_policy("security:\n  sandbox: [unclosed\n", &["p.yaml:"]);
    assert_bad_policy("", &["the policy is empty"]);
    assert_bad_policy("- just\n- a list\n", &["p.yaml:"]);
}

#[test]
fn unknown_keys_are_errors() {
    let yaml = default_policy_with("    timeout: 10\n", "    timeout: 10\n    timout: 5\n");
    assert_bad_policy(&yaml, &["p.yaml:6:", "security.sandbox: unknown field `timout`"]);
    let yaml = default_policy_with("resilience:", "extra: 1\nresilience:");
    assert_bad_policy(&yaml, &["unknown field `extra`"]);
}

#[test]
fn bad_sizes_are_named_with_path_and_line() {
    let yaml = default_policy_with("\"512m\"", "\"512q\"");
    assert_bad_policy(&yaml, &["p.yaml:6:", "security.sandbox.max_memory:", "\"512q\" is not a size (try \"512m\")"]);
    let yaml = default_policy_with("\"512m\"", "\"1k\"");
    assert_bad_policy(&yaml, &["security.sandbox.max_memory", "below the minimum"]);
}

#[test]
fn negative_and_zero_timeouts_are_refused() {
    let yaml = default_policy_with("timeout: 10", "timeout: -1");
    assert_bad_policy(&yaml, &["p.yaml:5:", "security.sandbox.timeout:", "not a positive number of seconds"]);
    let yaml = default_policy_with("timeout: 10", "timeout: 0");
    assert_bad_policy(&yaml, &["security.sandbox.timeout"]);
    let yaml = default_policy_with("timeout: 10", "timeout: \"ten\"");
    assert_bad_policy(&yaml, &["security.sandbox.timeout"]);
    assert_usage_error(&["run", "--timeout", "-1", "-c", "1"], b"", &["--timeout"]);
}

#[test]
fn contradictions_are_refused() {
    let yaml = default_policy_with("network: \"none\"", "network: \"bridge\"");
    assert_bad_policy(&yaml, &["p.yaml:13:", "security.sandbox.docker.network", "contradicts network_disabled"]);
    let yaml = default_policy_with("failure_threshold: 3", "failure_threshold: 0");
    assert_bad_policy(&yaml, &["resilience.circuit_breaker.api.failure_threshold"]);
    let yaml = format!("{}terrarium:\n  tier: quantum\n", terrarium::policy::DEFAULT_POLICY_YAML);
    assert_bad_policy(&yaml, &["terrarium.tier", "\"quantum\" is not a tier"]);
    let yaml = format!(
        "{}terrarium:\n  tier: docker\n  allowed_tiers: [rustpython]\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    assert_bad_policy(&yaml, &["terrarium.tier", "not in terrarium.allowed_tiers"]);
    let yaml = default_policy_with("[\"math\", \"time\", \"json\"]", "[\"math\", \"os;rm\"]");
    assert_bad_policy(&yaml, &["security.sandbox.allowed_modules", "not a module name"]);
}

#[test]
fn overrides_cannot_loosen() {
    assert_usage_error(&["run", "--timeout", "100", "-c", "1"], b"", &["may only tighten"]);
    assert_usage_error(&["run", "--memory", "4g", "-c", "1"], b"", &["may only tighten"]);
    assert_usage_error(&["run", "--memory", "lots", "-c", "1"], b"", &["--memory", "is not a size"]);
    assert_usage_error(&["run", "--tier", "quantum", "-c", "1"], b"", &["--tier"]);
}

#[test]
fn non_utf8_code_is_refused() {
    let (_dir, path) = temp_file("bad.py", b"print('\xff\xfe')\n");
    assert_usage_error(&["run", path.to_str().expect("utf-8 path")], b"", &["not UTF-8"]);
    assert_usage_error(&["run", "-"], b"x = '\xc3\x28'", &["not UTF-8"]);
}

#[test]
fn empty_code_is_refused() {
    assert_usage_error(&["run", "-c", ""], b"", &["the code is empty"]);
    assert_usage_error(&["run", "-c", "  \n\t"], b"", &["the code is empty"]);
    assert_usage_error(&["run", "-"], b"", &["the code is empty"]);
    assert_usage_error(&["run"], b"", &["no code given"]);
}

#[test]
fn huge_code_is_refused() {
    let big = format!("x = 1\n{}", "#".repeat(10 << 20));
    assert_usage_error(&["run", "-"], big.as_bytes(), &["max_code_size"]);
}

#[test]
fn missing_files_are_clear() {
    assert_usage_error(&["run", "/nonexistent/snippet.py"], b"", &["/nonexistent/snippet.py"]);
    assert_usage_error(&["policy", "check", "/nonexistent/p.yaml"], b"", &["cannot read policy"]);
}

#[test]
fn bad_batch_lines_become_error_outcomes() {
    let input = b"{\"id\": 1, \"code\": \"1+1\"}\nnot json\n{\"id\": 3, \"cod\": \"x\"}\n{\"id\": 4, \"code\": \"\"}\n\xff\n{\"id\": 6, \"code\": \"2+2\"}\n";
    let out = terrarium(&["batch"], input);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let statuses: Vec<&str> = lines.iter().map(|l| l["status"].as_str().unwrap_or("?")).collect();
    assert_eq!(statuses, ["ok", "error", "error", "error", "error", "ok"]);
    assert_eq!(lines[5]["result"], 4);
    assert_eq!(lines[3]["id"], "4");
}

#[test]
fn approval_settings_are_checked() {
    let base = terrarium::policy::DEFAULT_POLICY_YAML;
    assert_bad_policy(
        &format!("{base}approvals:\n  critical: [docker_tier, reboot]\n"),
        &["approvals.critical[1]", "\"reboot\" is not one of docker_tier, writable_scratch, unlisted_command"],
    );
    assert_bad_policy(
        &format!("{base}approvals:\n  timeout: 0\n"),
        &["approvals.timeout", "positive number of seconds"],
    );
    assert_bad_policy(&format!("{base}approvals:\n  timeout: 90000\n"), &["approvals.timeout"]);
    assert_bad_policy(&format!("{base}approvals:\n  timeout: soon\n"), &["approvals.timeout"]);
    assert_bad_policy(&format!("{base}approvals:\n  who: alice\n"), &["who"]);
    // Valid: the section round-trips through the effective policy.
    let (_d, path) =
        temp_file("p.yaml", format!("{base}approvals:\n  critical: [docker_tier]\n  timeout: 30\n").as_bytes());
    let out = terrarium(&["policy", "check", path.to_str().expect("utf-8")], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("approvals:\n  critical:\n  - docker_tier\n  timeout: 30"), "{}", out.stdout);
}

#[test]
fn session_limits_are_checked() {
    let base = terrarium::policy::DEFAULT_POLICY_YAML;
    assert_bad_policy(&format!("{base}sessions:\n  max_cells: 0\n"), &["sessions.max_cells", "at least 1"]);
    assert_bad_policy(&format!("{base}sessions:\n  max_cells: -3\n"), &["sessions.max_cells"]);
    assert_bad_policy(&format!("{base}sessions:\n  idle_timeout: 0\n"), &["sessions.idle_timeout"]);
    assert_bad_policy(&format!("{base}sessions:\n  max_lifetime: 100000\n"), &["sessions.max_lifetime", "86400"]);
    assert_bad_policy(&format!("{base}sessions:\n  max_memory: 1k\n"), &["sessions.max_memory", "smallest"]);
    assert_bad_policy(&format!("{base}sessions:\n  max_memory: lots\n"), &["sessions.max_memory"]);
    assert_bad_policy(&format!("{base}sessions:\n  cells: 3\n"), &["cells"]);
    // Valid: defaults filled in, and the section round-trips through the effective policy.
    let (_d, path) = temp_file("p.yaml", format!("{base}sessions:\n  max_cells: 5\n").as_bytes());
    let out = terrarium(&["policy", "check", path.to_str().expect("utf-8")], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("sessions:\n  max_cells: 5\n  idle_timeout: 600.0\n  max_lifetime: 3600.0\n  max_memory: 512m"),
        "{}",
        out.stdout
    );
}

#[test]
fn host_function_declarations_are_checked() {
    let base = terrarium::policy::DEFAULT_POLICY_YAML;
    let f = |body: &str| format!("{base}functions:\n{body}");
    assert_bad_policy(&f("  _private: {}\n"), &["functions._private", "identifier"]);
    assert_bad_policy(&f("  2fast: {}\n"), &["functions.2fast"]);
    assert_bad_policy(&f("  lookup:\n    timeout: 0\n"), &["functions.lookup.timeout"]);
    assert_bad_policy(&f("  lookup:\n    timeout: 7200\n"), &["functions.lookup.timeout", "3600"]);
    assert_bad_policy(&f("  lookup:\n    max_calls: 0\n"), &["functions.lookup.max_calls"]);
    assert_bad_policy(&f("  lookup:\n    max_arg_bytes: 1g\n"), &["functions.lookup.max_arg_bytes", "16 MiB"]);
    assert_bad_policy(&f("  lookup:\n    max_result_bytes: lots\n"), &["max_result_bytes"]);
    assert_bad_policy(&f("  lookup:\n    command: []\n"), &["functions.lookup.command", "empty"]);
    assert_bad_policy(&f("  lookup:\n    command: [price-tool]\n"), &["functions.lookup.command", "absolute"]);
    assert_bad_policy(&f("  lookup:\n    critcal: true\n"), &["critcal"]);
    assert_bad_policy(&f("  lookup: 3\n"), &["functions.lookup"]);
    // Valid: defaults filled in, shown by the effective policy.
    let (_d, path) = temp_file("p.yaml", f("  lookup:\n    critical: true\n").as_bytes());
    let out = terrarium(&["policy", "check", path.to_str().expect("utf-8")], b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "functions:\n  lookup:\n    timeout: 10.0\n    max_arg_bytes: 64k\n    max_result_bytes: 1m\n    \
             max_calls: 100\n    critical: true"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn the_server_refuses_to_start_without_good_tokens() {
    use std::os::unix::fs::PermissionsExt;
    let token = "t".repeat(40);
    fn serve(file: &str) -> Vec<&str> {
        vec!["serve", "--listen", "127.0.0.1:0", "--token-file", file]
    }
    let (_a, open) = temp_file("tokens", format!("alice approve {token}\n").as_bytes());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_usage_error(&serve(open.to_str().expect("utf-8")), b"", &["mode 644", "chmod 600"]);
    for (text, want) in [
        (String::new(), "no tokens"),
        ("alice approve short\n".to_string(), "shorter than 32"),
        (format!("alice sudo {token}\n"), "\"sudo\" is not submit, approve or admin"),
        (format!("alice approve {token} extra\n"), ":1: expected NAME ROLES TOKEN"),
    ] {
        let (_d, path) = temp_file("tokens", text.as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_usage_error(&serve(path.to_str().expect("utf-8")), b"", &[want]);
    }
    assert_usage_error(&["serve", "--listen", "127.0.0.1:0"], b"", &["no tokens", "TERRARIUM_TOKEN"]);
    assert_usage_error(&["serve", "--listen", "nowhere"], b"", &["--listen"]);
    assert_usage_error(&["serve", "--max-running", "0"], b"", &["--max-running"]);
    assert_usage_error(&["serve", "--max-waiting=-1"], b"", &["--max-waiting"]);
    assert_usage_error(
        &["serve", "--listen", "127.0.0.1:0", "--token-file", "/nonexistent/tokens"],
        b"",
        &["/nonexistent"],
    );
}
