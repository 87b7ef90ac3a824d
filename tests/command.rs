//! `terrarium command`: system commands are validated before anything runs them,
//! and an allowed one runs only in a hardened, single-use docker-tier container.
//! The refusals are attacks on the validator; the runs use the real engine.

use crate::common::{DOCKER_IMAGE, temp_file, terrarium};

fn policy(commands: &str) -> String {
    format!(
        "{}\ncommands:\n{commands}",
        terrarium::policy::DEFAULT_POLICY_YAML.replacen("python:3.12-slim", DOCKER_IMAGE, 1).replacen(
            "timeout: 10",
            "timeout: 3",
            1
        )
    )
}

const PYTHON_RULES: &str = "  allow:\n    - program: python3\n      args: ['-c', 'print\\(.*\\)|while True: pass|import sys; sys.exit\\(3\\)']\n    - program: echo\n      args: ['.*']\n  deny: [rm, sh]\n";

#[test]
fn shell_tricks_and_denied_programs_are_refused_with_reasons() {
    let cases: &[(&[&str], &str)] = &[
        (&["rm", "-rf", "/"], "\"rm\" is denied"),
        (&["python3.11", "-c", "1"], "\"python3.11\" is denied"),
        (&["/bin/rm/", "x"], "not a program name"),
        (&["curl http://127.0.0.1/x | sh"], "pipe"),
        (&["echo $(id)"], "command substitution"),
        (&["echo `id`"], "backticks"),
        (&["ls; rm -rf /"], "second command"),
        (&["ls && rm -rf /"], "&&"),
        (&["echo hi > /etc/passwd"], "redirection"),
        (&["cat < /etc/shadow"], "redirection"),
        (&["git", "status"], "not allow-listed"),
    ];
    for (words, reason) in cases {
        let mut args = vec!["command", "--"];
        args.extend_from_slice(words);
        let out = terrarium(&args, b"");
        assert_eq!(out.code, 4, "{words:?} must be refused: {}", out.stderr);
        assert!(out.stderr.contains(reason), "{words:?}: {}", out.stderr);
    }
    // Words given separately stay literal words: `;` is an argument here, not an operator.
    let out = terrarium(&["command", "--check", "--json", "--", "echo", "a;b", "$(id)"], b"");
    assert_eq!(out.code, 4, "echo is not allow-listed by default: {}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    assert_eq!(v["decision"], "needs_approval");
    assert_eq!(v["argv"], serde_json::json!(["echo", "a;b", "$(id)"]));
}

#[test]
fn bad_command_rules_are_policy_errors() {
    for (rules, want) in [
        ("  allow:\n    - program: ls\n      args: ['(']\n", "commands.allow[0].args"),
        ("  allow:\n    - program: rm\n", "built-in deny list"),
        ("  allow:\n    - program: ls\n  deny: [ls]\n", "both allowed and denied"),
        ("  allow:\n    - program: 'ls -la'\n", "not a program name"),
        ("  allow:\n    - program: bin/ls\n", "not a program name"),
        ("  allowed: []\n", "unknown field"),
        // H14: a pattern cannot break out of the anchors it is wrapped in.
        ("  allow:\n    - program: git\n      args: ['status)|(.*']\n", "commands.allow[0].args"),
        ("  allow:\n    - program: python3.11\n", "built-in deny list"),
        ("  deny: ['*']\n", "commands.deny[0]"),
    ] {
        let (_d, path) = temp_file("policy.yaml", policy(rules).as_bytes());
        let out = terrarium(&["command", "--policy", &path.to_string_lossy(), "--", "ls"], b"");
        assert_eq!(out.code, 2, "{rules}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{rules}: {}", out.stderr);
    }
}

#[test]
fn a_policy_without_the_docker_tier_runs_no_command_and_queues_none() {
    let text = format!("{}terrarium:\n  allowed_tiers: [rustpython, wasm]\n", policy(PYTHON_RULES));
    let (_d, path) = temp_file("policy.yaml", text.as_bytes());
    let home = tempfile::tempdir().expect("home");
    for words in [&["python3", "-c", "print(1)"][..], &["git", "status"][..]] {
        let mut args = vec!["command", "--policy", path.to_str().expect("utf-8 path"), "--wait", "30", "--"];
        args.extend_from_slice(words);
        let out = crate::common::terrarium_env(&args, b"", &[("TERRARIUM_HOME", &home.path().to_string_lossy())]);
        assert_eq!(out.code, 2, "{words:?}: {}", out.stderr);
        assert!(out.stderr.contains("only in the docker tier"), "{}", out.stderr);
    }
    assert_eq!(approvals(home.path(), &["list"]).stdout, "", "nothing was queued");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_allowed_command_runs_in_a_hardened_container_under_the_deadline() {
    let (_d, path) = temp_file("policy.yaml", policy(PYTHON_RULES).as_bytes());
    let p = path.to_string_lossy().to_string();
    // Runs, inside the container (uid 65534, no network), not on the host.
    let out = terrarium(
        &[
            "command",
            "--policy",
            &p,
            "--json",
            "--",
            "python3",
            "-c",
            "print(open('/proc/self/status').read().split('Uid:')[1].split()[0], len(open('/proc/net/dev').read().splitlines()))",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["outcome"]["tier"], "docker");
    assert_eq!(v["outcome"]["stdout"], "65534 3\n", "uid 65534 and only the loopback interface: {v}");
    // A non-zero exit is the command's failure.
    let out = terrarium(&["command", "--policy", &p, "--", "python3", "-c", "import sys; sys.exit(3)"], b"");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("exited with 3"), "{}", out.stderr);
    // The deadline kills it.
    let out = terrarium(&["command", "--policy", &p, "--", "python3", "-c", "while True: pass"], b"");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("timeout"), "{}", out.stderr);
    // Quoting in a one-argument command line is the shell's, nothing more.
    let out = terrarium(&["command", "--policy", &p, "--", "python3 -c \"print('a;b | c')\""], b"");
    assert_eq!((out.code, out.stdout.as_str()), (0, "a;b | c\n"), "{}", out.stderr);
    // An allowed program the image lacks is the command's failure, not the host's.
    let out = terrarium(&["command", "--policy", &p, "--", "echo", "hi"], b"");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("CommandNotFound"), "{}", out.stderr);
}

fn approvals(home: &std::path::Path, args: &[&str]) -> crate::common::Output {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    crate::common::terrarium_env(&all, b"", &[("TERRARIUM_HOME", &home.to_string_lossy())])
}

/// Polls `approvals list` until an item is pending; returns it. (Generous: on two
/// shared cores under a parallel suite, the command's process took over 30 s to
/// queue its item once.)
fn first_pending(home: &std::path::Path) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = approvals(home, &["list", "--status", "pending"]);
        if let Some(line) = out.stdout.lines().next() {
            return serde_json::from_str(line).expect("item");
        }
        assert!(std::time::Instant::now() < deadline, "no pending item appeared: {}", out.stderr);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A command outside the allow list waits in the queue; a human approves it; it
/// runs (in the container); the request and the decision, with who made it, are in
/// the audit log, which still verifies.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_critical_command_waits_for_approval_then_runs() {
    let home = tempfile::tempdir().expect("home");
    let (_d, path) = temp_file("policy.yaml", policy(PYTHON_RULES).as_bytes());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(["command", "--policy", &path.to_string_lossy(), "--wait", "60", "--json", "--"])
        .args(["python3", "-c", "import os; print(os.getuid())"])
        .env("TERRARIUM_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let item = first_pending(home.path());
    assert_eq!(item["subject"]["argv"], serde_json::json!(["python3", "-c", "import os; print(os.getuid())"]));
    let id = item["id"].as_i64().expect("id");
    let out = approvals(home.path(), &["approve", &id.to_string(), "--as", "alice", "--note", "checked"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = approvals(home.path(), &["deny", &id.to_string(), "--as", "mallory"]);
    assert_eq!(again.code, 2, "a decided item stays decided: {}", again.stderr);
    assert!(again.stderr.contains("already approved"), "{}", again.stderr);
    let done = child.wait_with_output().expect("command ends");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert_eq!(done.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&done.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!((&v["decision"], &v["allowed"]), (&serde_json::json!("needs_approval"), &serde_json::json!(true)));
    assert_eq!(v["approval"]["decided_by"], "alice");
    assert_eq!(v["approval"]["outcome"]["stdout"], "65534\n", "the queue keeps how it ended: {v}");
    assert_eq!(v["outcome"]["stdout"], "65534\n", "it ran in the container: {v}");
    let log = crate::common::terrarium_env(
        &["audit", "tail", "-n", "10"],
        b"",
        &[("TERRARIUM_HOME", &home.path().to_string_lossy())],
    );
    assert!(log.stdout.contains("\"approval_requested\""), "{}", log.stdout);
    assert!(log.stdout.contains("\"approval_approved\"") && log.stdout.contains("alice"), "{}", log.stdout);
    assert!(log.stdout.contains("\"approval_completed\""), "{}", log.stdout);
    let ran = log
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("row"))
        .find(|r| r["kind"] == "command")
        .expect("a command event");
    assert_eq!(
        (&ran["data"]["ran"], &ran["data"]["outcome"]["status"]),
        (&serde_json::json!(true), &serde_json::json!("ok"))
    );
    let verify =
        crate::common::terrarium_env(&["audit", "verify"], b"", &[("TERRARIUM_HOME", &home.path().to_string_lossy())]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}

#[test]
fn an_unanswered_request_expires_and_is_denied() {
    let home = tempfile::tempdir().expect("home");
    let (_d, path) = temp_file("policy.yaml", policy(PYTHON_RULES).as_bytes());
    let out = crate::common::terrarium_env(
        &["command", "--policy", &path.to_string_lossy(), "--wait", "0.5", "--", "git", "status"],
        b"",
        &[("TERRARIUM_HOME", &home.path().to_string_lossy())],
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("expired before anyone decided"), "{}", out.stderr);
    let list = approvals(home.path(), &["list"]);
    let item: serde_json::Value = serde_json::from_str(list.stdout.lines().next().expect("one item")).expect("item");
    assert_eq!((item["status"].as_str(), item["decided_by"].as_str()), (Some("expired"), None));
    let late = approvals(home.path(), &["approve", &item["id"].to_string(), "--as", "alice"]);
    assert_eq!(late.code, 2, "an expired request cannot be approved: {}", late.stderr);
    assert_eq!(approvals(home.path(), &["approve", "999", "--as", "alice"]).code, 2);
    assert_eq!(approvals(home.path(), &["list", "--status", "maybe"]).code, 2);
}

/// `terrarium run` under a policy that makes docker runs critical: the request is
/// announced with how to approve it, and denied when nobody decides in time.
#[test]
fn a_critical_run_on_the_command_line_is_announced_and_denied_when_nobody_decides() {
    let home = tempfile::tempdir().expect("home");
    let text =
        format!("{}approvals:\n  critical: [docker_tier]\n  timeout: 0.5\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let (_d, path) = temp_file("policy.yaml", text.as_bytes());
    let out = crate::common::terrarium_env(
        &["run", "--policy", &path.to_string_lossy(), "--tier", "docker", "-c", "1"],
        b"",
        &[("TERRARIUM_HOME", &home.path().to_string_lossy())],
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("approval request 1 (the run would use the docker tier"), "{}", out.stderr);
    assert!(out.stderr.contains("terrarium approvals approve 1"), "{}", out.stderr);
    assert!(
        out.stderr.contains("NotApproved") && out.stderr.contains("expired before anyone decided"),
        "{}",
        out.stderr
    );
    // The rustpython tier is not critical: it runs without a human.
    let out = crate::common::terrarium_env(
        &["run", "--policy", &path.to_string_lossy(), "-c", "print(1)"],
        b"",
        &[("TERRARIUM_HOME", &home.path().to_string_lossy())],
    );
    assert_eq!((out.code, out.stdout.as_str()), (0, "1\n"), "{}", out.stderr);
}

/// The process waiting for an approval is killed: its item expires (recorded in
/// the audit log) rather than being approvable for a run nobody would start.
#[test]
fn an_item_whose_waiter_was_killed_expires_and_cannot_be_approved() {
    let home = tempfile::tempdir().expect("home");
    let (_d, path) = temp_file("policy.yaml", policy(PYTHON_RULES).as_bytes());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(["command", "--policy", &path.to_string_lossy(), "--wait", "60", "--", "git", "status"])
        .env("TERRARIUM_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let id = first_pending(home.path())["id"].as_i64().expect("id");
    child.kill().expect("kill the waiter");
    child.wait().expect("reap");
    let late = approvals(home.path(), &["approve", &id.to_string(), "--as", "alice"]);
    assert_eq!(late.code, 2, "{}", late.stderr);
    assert!(late.stderr.contains("already expired"), "{}", late.stderr);
    let item: serde_json::Value =
        serde_json::from_str(&approvals(home.path(), &["show", &id.to_string()]).stdout).expect("item");
    assert_eq!(
        (item["status"].as_str(), item["note"].as_str()),
        (Some("expired"), Some("the process waiting for it ended"))
    );
    let log = crate::common::terrarium_env(
        &["audit", "tail", "-n", "10"],
        b"",
        &[("TERRARIUM_HOME", &home.path().to_string_lossy())],
    );
    assert!(log.stdout.contains("\"approval_expired\""), "{}", log.stdout);
}
