//! `terrarium command`: system commands are validated before anything runs them,
//! and an allowed one runs only in a hardened, single-use docker-tier container.
//! The refusals are attacks on the validator; the runs use the real engine.

use crate::common::{DOCKER_IMAGE, SKIP_DOCKER, temp_file, terrarium};

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

const PYTHON_RULES: &str = "  allow:\n    - program: python3\n      args: ['-c', 'print\\(.*\\)', 'while True: pass', 'import sys; sys.exit\\(3\\)']\n    - program: echo\n      args: ['.*']\n  deny: [rm, sh]\n";

#[test]
fn shell_tricks_and_denied_programs_are_refused_with_reasons() {
    let cases: &[(&[&str], &str)] = &[
        (&["rm", "-rf", "/"], "rm is denied"),
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
    ] {
        let (_d, path) = temp_file("policy.yaml", policy(rules).as_bytes());
        let out = terrarium(&["command", "--policy", &path.to_string_lossy(), "--", "ls"], b"");
        assert_eq!(out.code, 2, "{rules}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{rules}: {}", out.stderr);
    }
}

#[test]
fn an_allowed_command_runs_in_a_hardened_container_under_the_deadline() {
    if std::env::var_os(SKIP_DOCKER).is_some_and(|v| v == "1") {
        eprintln!("skipped: {SKIP_DOCKER}=1");
        return;
    }
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
