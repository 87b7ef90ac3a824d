//! Sessions (issue 19): cells share state within a session and nothing between
//! sessions; a limit ends a session with its reason, and every later cell is
//! refused; idle sessions expire; everything is in the audit log.

use std::sync::Arc;
use std::time::Duration;

use terrarium::{
    ExecRequest, Outcome, Policy, Sandbox, SandboxError, Session, SessionOptions, Status, Tier, TierChoice,
};

use crate::common::{run, runtime};

fn sandbox_with(policy: Policy, audit: Option<&std::path::Path>) -> Arc<Sandbox> {
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    let mut b = Sandbox::builder().policy(policy).isolated(isolated);
    if let Some(path) = audit {
        b = b.audit(path);
    }
    Arc::new(b.build().expect("sandbox"))
}

fn sandbox() -> Arc<Sandbox> {
    sandbox_with(Policy::default_policy(), None)
}

/// The default policy with a `sessions` section added.
fn session_policy(sessions: &str) -> Policy {
    let yaml = format!("{}\nsessions:\n{sessions}\n", include_str!("../policies/default.yaml"));
    Policy::from_yaml(&yaml, "sessions.yaml").expect("policy")
}

fn open(s: &Arc<Sandbox>) -> Session {
    runtime().block_on(s.session(SessionOptions::default())).expect("session")
}

fn cell(session: &mut Session, code: &str) -> Outcome {
    runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell")
}

fn refused(session: &mut Session, code: &str) -> String {
    match runtime().block_on(session.execute(ExecRequest::new(code))) {
        Err(e @ SandboxError::SessionEnded(_)) => e.to_string(),
        other => panic!("expected the session to have ended, got {other:?}"),
    }
}

/// Declares each check once per tier that keeps sessions through a [`Sandbox`]:
/// `fn name(tier) { ... }`, run on the interpreter tier (isolated) and on the wasm
/// tier (opted out with `TERRARIUM_SKIP_WASM=1`), so that their sessions cannot
/// drift apart. (The docker tier's sessions have their own tests below: they need
/// the engine and its image.)
macro_rules! each_session_tier {
    ($($(#[$doc:meta])* fn $name:ident($tier:ident) $body:block)*) => {
        mod rustpython {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                fn $name() {
                    let $tier = Tier::Rustpython;
                    $body
                }
            )*
        }
        mod wasm {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                #[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
                fn $name() {
                    let $tier = Tier::Wasm;
                    $body
                }
            )*
        }
    };
}

/// A session on `tier`.
fn open_on(s: &Arc<Sandbox>, tier: Tier) -> Session {
    let opts = SessionOptions { tier: TierChoice::Fixed(tier), caller: None, workspace: None };
    runtime().block_on(s.session(opts)).unwrap_or_else(|e| panic!("a {tier} session: {e}"))
}

/// A single run on `tier` through the sandbox.
fn single_run(s: &Arc<Sandbox>, tier: Tier, code: &str) -> Outcome {
    let mut req = ExecRequest::new(code);
    req.tier = TierChoice::Fixed(tier);
    runtime().block_on(s.execute(req)).expect("single run")
}

each_session_tier! {
    fn cells_share_definitions_imports_and_patches(tier) {
        let s = sandbox();
        let mut session = open_on(&s, tier);
        assert_eq!(cell(&mut session, "def double(x):\n    return 2 * x").status, Status::Ok);
        let o = cell(&mut session, "double(21)");
        assert_eq!(o.result, Some(serde_json::json!(42)), "{o:?}");
        assert_eq!(o.session.as_ref().map(|c| c.cell), Some(2));
        assert_eq!(cell(&mut session, "import json\njson.dumps = lambda *a, **k: 'patched'").status, Status::Ok);
        assert_eq!(cell(&mut session, "json.dumps([1])").result, Some(serde_json::json!("patched")));
        // A class-level patch stays too, within this session.
        cell(&mut session, "class Point:\n    pass");
        assert_eq!(cell(&mut session, "Point.norm = lambda self: 7").status, Status::Ok);
        assert_eq!(cell(&mut session, "Point().norm()").result, Some(serde_json::json!(7)));
        // A cell's exception leaves the state as it was.
        assert_eq!(cell(&mut session, "1/0").status, Status::Exception);
        assert_eq!(cell(&mut session, "double(2)").result, Some(serde_json::json!(4)));
        // Output is each cell's own.
        let o = cell(&mut session, "print('one')");
        assert_eq!(o.stdout, "one\n", "{o:?}");
        assert_eq!(cell(&mut session, "print('two')\n3").stdout, "two\n");
        assert_eq!(session.ended(), None);
    }

    fn nothing_crosses_between_sessions_or_into_single_runs(tier) {
        let s = sandbox();
        let mut a = open_on(&s, tier);
        let mut b = open_on(&s, tier);
        cell(&mut a, "secret = 'a'\nimport json\njson.dumps = lambda *x, **k: 'evil'");
        let o = cell(&mut a, "import json\njson.JSONEncoder.default = lambda self, o: 'evil'");
        if tier == Tier::Rustpython {
            // The standard library's classes are sealed in every session, as in every run.
            assert_eq!(o.error.map(|e| e.kind), Some("TypeError".into()));
        } else {
            // CPython's are not: the patch holds in this session (and only there).
            assert_eq!(o.status, Status::Ok, "{o:?}");
            let o = cell(&mut a, "json.JSONEncoder().encode(object())");
            assert_eq!(o.result, Some(serde_json::json!("\"evil\"")), "{o:?}");
        }
        assert_eq!(cell(&mut b, "'secret' in globals()").result, Some(serde_json::json!(false)));
        assert_eq!(cell(&mut b, "import json\njson.dumps([1])").result, Some(serde_json::json!("[1]")));
        let o = cell(&mut b, "import json\ntry:\n    r = json.dumps(object())\nexcept TypeError:\n    r = 'clean'\nr");
        assert_eq!(o.result, Some(serde_json::json!("clean")));
        assert_eq!(single_run(&s, tier, "import json\njson.dumps([1])").result, Some(serde_json::json!("[1]")));
        assert_eq!(single_run(&s, tier, "'secret' in globals()").result, Some(serde_json::json!(false)));
        // And `a` still has its own.
        assert_eq!(cell(&mut a, "secret").result, Some(serde_json::json!("a")));
    }

    fn a_cell_over_its_timeout_ends_the_session(tier) {
        let s = sandbox();
        let mut session = open_on(&s, tier);
        cell(&mut session, "x = 1");
        let req = ExecRequest::new("while True:\n    pass")
            .with_overrides(terrarium::Overrides { timeout: Some(Duration::from_millis(500)), ..Default::default() });
        let o = runtime().block_on(session.execute(req)).expect("cell");
        assert_eq!(o.status, Status::Timeout, "{o:?}");
        let ended = o.session.and_then(|c| c.ended).expect("the cell says the session ended");
        assert!(ended.contains("timeout"), "{ended}");
        let e = refused(&mut session, "x");
        assert!(e.starts_with("session ended: ") && e.contains("timeout"), "{e}");
    }

    fn a_cell_over_the_sessions_memory_ends_it(tier) {
        let s = sandbox_with(session_policy("  max_memory: 64m"), None);
        let mut session = open_on(&s, tier);
        cell(&mut session, "keep = []");
        let o = cell(&mut session, "for _ in range(1000):\n    keep.append(bytearray(1 << 20))");
        // The process killed at its limit, or the interpreter refusing the allocation.
        let clean_error = o.status == Status::Exception && o.error.as_ref().is_some_and(|e| e.kind == "MemoryError");
        assert!(o.status == Status::MemoryLimit || clean_error, "{o:?}");
        let why = o.session.and_then(|c| c.ended).expect("the session ended");
        assert!(why.contains("memory"), "{why}");
        assert!(refused(&mut session, "keep").contains("memory"));
    }

    fn an_idle_session_expires_without_another_cell(tier) {
        let s = sandbox_with(session_policy("  idle_timeout: 0.5"), None);
        let mut session = open_on(&s, tier);
        cell(&mut session, "x = 1");
        std::thread::sleep(Duration::from_millis(1500));
        // The watchdog ended it (and stopped its child or instance) in the background.
        let why = session.ended().expect("ended while idle");
        assert!(why.contains("idle"), "{why}");
        assert!(refused(&mut session, "x").contains("sessions.idle_timeout"));
    }

    fn the_last_allowed_cell_ends_the_session(tier) {
        let s = sandbox_with(session_policy("  max_cells: 2"), None);
        let mut session = open_on(&s, tier);
        assert_eq!(cell(&mut session, "1").session.and_then(|c| c.ended), None);
        let o = cell(&mut session, "2");
        assert_eq!(o.result, Some(serde_json::json!(2)));
        assert!(o.session.and_then(|c| c.ended).is_some_and(|w| w.contains("sessions.max_cells")));
        refused(&mut session, "3");
    }

    /// Output past a cell's cap ends the session with the output kept to the cap.
    fn output_over_the_cap_ends_the_session(tier) {
        let s = sandbox();
        let mut session = open_on(&s, tier);
        assert_eq!(cell(&mut session, "print('small')").stdout, "small\n");
        let cap = 16 << 10;
        let req = ExecRequest::new("while True:\n    print('x' * 1000)")
            .with_overrides(terrarium::Overrides { max_output: Some(cap), ..Default::default() });
        let o = runtime().block_on(session.execute(req)).expect("cell");
        assert_eq!(o.status, Status::OutputLimit, "{o:?}");
        assert!(o.stdout.len() as u64 <= cap, "{} bytes kept", o.stdout.len());
        let why = o.session.and_then(|c| c.ended).expect("the session ended");
        assert!(why.contains("output cap"), "{why}");
        assert!(refused(&mut session, "1").contains("output cap"));
    }

    fn an_abandoned_cell_ends_its_session_and_an_ended_session_frees_its_slot(tier) {
        let s = sandbox_with(session_policy("  max_open: 1"), None);
        let mut session = open_on(&s, tier);
        cell(&mut session, "x = 1");
        // The caller stops waiting half-way through a cell (its future is dropped).
        let gave_up = runtime().block_on(async {
            tokio::time::timeout(Duration::from_millis(300), session.execute(ExecRequest::new("while True:\n    pass")))
                .await
                .is_err()
        });
        assert!(gave_up);
        let why = session.ended().expect("an abandoned cell ends the session");
        assert!(why.contains("abandoned"), "{why}");
        assert!(refused(&mut session, "x").contains("abandoned"));
        // Seen ended, it no longer holds the only slot.
        let _next = open_on(&s, tier);
    }

    fn a_cell_killed_at_the_sessions_lifetime_says_so_and_is_charged_its_own_cpu(tier) {
        let s = sandbox_with(session_policy("  max_lifetime: 2"), None);
        let mut session = open_on(&s, tier);
        // CPU used by an earlier cell is not charged to the one killed later (CPython
        // in wasm runs the loop at about 2 iterations per µs: 300,000 leave the
        // session most of its lifetime).
        let n = if tier == Tier::Wasm { 300_000 } else { 3_000_000 };
        cell(&mut session, &format!("t = 0\nfor i in range({n}):\n    t += i"));
        let o = cell(&mut session, "while True:\n    pass");
        assert_eq!(o.status, Status::Timeout, "{o:?}");
        let message = o.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        assert!(message.contains("sessions.max_lifetime"), "{message}");
        let (cpu, wall) = (o.usage.cpu_ms.expect("cpu"), o.usage.wall_ms);
        assert!(cpu <= wall + 50, "cpu {cpu} ms against wall {wall} ms: {o:?}");
    }

    fn an_import_refused_before_the_cell_runs_keeps_the_session(tier) {
        let s = sandbox();
        let mut session = open_on(&s, tier);
        cell(&mut session, "x = 41");
        assert_eq!(cell(&mut session, "import os").status, Status::Denied);
        assert_eq!(cell(&mut session, "x + 1").result, Some(serde_json::json!(42)));
        let o = cell(&mut session, "__import__('o' + 's')");
        assert_eq!(o.status, Status::Denied);
        let ended = o.session.and_then(|c| c.ended);
        if tier == Tier::Rustpython {
            // One refused while the cell ran stopped its interpreter mid-cell: the
            // session ends rather than go on from a half-run cell.
            assert!(ended.is_some_and(|w| w.contains("unable to go on")));
        } else {
            // CPython's prelude refused it as a PermissionError the cell could
            // catch: the interpreter goes on (as on the docker tier).
            assert_eq!(ended, None);
            assert_eq!(cell(&mut session, "x").result, Some(serde_json::json!(41)));
        }
    }
}

#[test]
fn a_session_and_its_cells_are_in_the_audit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let s = sandbox_with(Policy::default_policy(), Some(&path));
    let mut session = open(&s);
    let id = session.id().to_string();
    cell(&mut session, "x = 1");
    cell(&mut session, "x + 1");
    session.end("done here");
    s.flush_audit(Duration::from_secs(5)).expect("flush");
    let rows = terrarium::audit::tail(&path, usize::MAX).expect("tail");
    let kinds: Vec<&str> = rows
        .iter()
        .filter(|r| r.request_id.as_deref() == Some(&format!("session:{id}")))
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["session_start", "request", "route", "outcome", "request", "route", "outcome", "session_end"],
        "{rows:#?}"
    );
    let end = rows.iter().find(|r| r.kind == "session_end").expect("end");
    assert_eq!((end.data["reason"].as_str(), end.data["cells"].as_u64()), (Some("done here"), Some(2)), "{}", end.data);
    assert_eq!(terrarium::audit::verify(&path).expect("verify").1, Vec::<String>::new());
}

/// The embedded interpreter (trusted code, in this process) keeps no sessions:
/// sessions are for the confined tiers.
#[test]
fn the_embedded_interpreter_keeps_no_sessions() {
    use terrarium::Executor as _;
    let embedded = terrarium::EmbeddedExecutor::new(Policy::default_policy());
    match runtime().block_on(embedded.open_session()) {
        Err(SandboxError::InvalidRequest(why)) => assert!(why.contains("does not keep sessions"), "{why}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an embedded session started"),
    }
}

#[test]
fn batch_lines_with_a_session_name_share_its_state_in_order() {
    let lines = [
        r#"{"id": "a1", "session": "a", "code": "x = 'a'\ncount = 0"}"#,
        r#"{"id": "b1", "session": "b", "code": "'x' in globals()"}"#,
        r#"{"id": "p1", "code": "'x' in globals()"}"#,
        r#"{"id": "a2", "session": "a", "code": "count += 1\ncount"}"#,
        r#"{"id": "a3", "session": "a", "code": "count += 1\n(x, count)"}"#,
        r#"{"id": "b2", "session": "b", "timeout": 0.5, "code": "while True:\n    pass"}"#,
        r#"{"id": "b3", "session": "b", "code": "1"}"#,
        r#"{"id": "bad", "session": "", "code": "1"}"#,
    ];
    let out = crate::common::terrarium(&["batch"], lines.join("\n").as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let outcomes: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("outcome line")).collect();
    let ids: Vec<&str> = outcomes.iter().map(|o| o["id"].as_str().unwrap_or("?")).collect();
    assert_eq!(ids, ["a1", "b1", "p1", "a2", "a3", "b2", "b3", "bad"], "outcomes in input order");
    let result = |i: usize| outcomes[i]["result"].clone();
    assert_eq!(result(1), serde_json::json!(false), "session b does not see a");
    assert_eq!(result(2), serde_json::json!(false), "a single run sees no session");
    assert_eq!(result(3), serde_json::json!(1));
    assert_eq!(result(4), serde_json::json!(["a", 2]));
    assert_eq!(outcomes[4]["session"]["cell"], 3);
    assert_eq!(outcomes[5]["status"], "timeout");
    assert_eq!(outcomes[6]["status"], "error");
    assert!(outcomes[6]["error"]["message"].as_str().is_some_and(|m| m.contains("session ended")), "{}", outcomes[6]);
    assert!(outcomes[7]["error"]["message"].as_str().is_some_and(|m| m.contains("session names")), "{}", outcomes[7]);
}

/// A pseudo-terminal pair: (controller, the terminal end a program gets).
fn pty() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (-1, -1);
    #[allow(unsafe_code, reason = "openpty has no safe wrapper in std")]
    // SAFETY: two valid out-pointers; null name, termios and window size are allowed.
    let rc = unsafe {
        libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    #[allow(unsafe_code, reason = "adopting the descriptors openpty returned")]
    // SAFETY: both descriptors are open and owned by nobody else.
    unsafe {
        (std::fs::File::from_raw_fd(controller), std::os::fd::OwnedFd::from_raw_fd(terminal))
    }
}

#[test]
fn the_repl_at_a_terminal_keeps_definitions_shows_errors_and_ends_on_ctrl_d() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let (mut controller, terminal) = pty();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .arg("repl")
        .env("TERRARIUM_HOME", crate::common::test_home())
        .stdin(terminal.try_clone().expect("dup"))
        .stdout(terminal.try_clone().expect("dup"))
        .stderr(terminal)
        .spawn()
        .expect("spawn terrarium repl");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut reader = controller.try_clone().expect("dup");
    let seen = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock().expect("screen").push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // Waits until the screen shows `text` after what was consumed so far.
    let mut from = 0;
    let mut expect = |text: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = screen.lock().expect("screen").clone();
            if let Some(i) = s[from..].find(text) {
                from += i + text.len();
                return;
            }
            assert!(std::time::Instant::now() < until, "waited for {text:?}; the screen shows:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    expect(">>> ");
    controller.write_all(b"def double(x):\n").expect("type");
    expect("... ");
    controller.write_all(b"    return 2 * x\n").expect("type");
    expect("... ");
    controller.write_all(b"\n").expect("type");
    expect(">>> ");
    controller.write_all(b"double(21)\n").expect("type");
    expect("42");
    expect(">>> ");
    controller.write_all(b"1/0\n").expect("type");
    expect("ZeroDivisionError: division by zero");
    expect(">>> ");
    controller.write_all(b"print(double(2))\n").expect("type");
    expect("4");
    expect(">>> ");
    // Ctrl-D at the prompt: the end of input.
    controller.write_all(&[4]).expect("type");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < until, "the repl did not end on Ctrl-D");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn sessions_past_the_policys_max_open_are_refused_as_busy() {
    let s = sandbox_with(session_policy("  max_open: 2"), None);
    let a = open(&s);
    let _b = open(&s);
    match runtime().block_on(s.session(SessionOptions::default())) {
        Err(SandboxError::Busy(why)) => assert!(why.contains("sessions.max_open"), "{why}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a third session opened"),
    }
    // Ending one frees its slot.
    a.end("done");
    let _c = open(&s);
}

#[test]
fn cells_refused_after_the_end_and_failed_starts_are_in_the_audit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let s = sandbox_with(session_policy("  max_cells: 2\n  max_open: 1"), Some(&path));
    let mut session = open(&s);
    let id = session.id().to_string();
    cell(&mut session, "1");
    // A second session is refused while the first is open: recorded too.
    assert!(runtime().block_on(s.session(SessionOptions::default())).is_err());
    cell(&mut session, "2");
    refused(&mut session, "3");
    drop(session);
    s.flush_audit(Duration::from_secs(5)).expect("flush");
    let rows = terrarium::audit::tail(&path, usize::MAX).expect("tail");
    let of_session: Vec<&str> = rows
        .iter()
        .filter(|r| r.request_id.as_deref() == Some(&format!("session:{id}")))
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(
        of_session,
        [
            "session_start",
            "request",
            "route",
            "outcome",
            "request",
            "route",
            "outcome",
            "session_end",
            "request",
            "outcome"
        ]
    );
    let refused_cell = rows.iter().rfind(|r| r.kind == "outcome").expect("the refused cell's outcome");
    assert!(
        refused_cell.data["host_error"].as_str().is_some_and(|e| e.starts_with("session ended:")),
        "{:?}",
        refused_cell.data
    );
    let failed = rows.iter().filter(|r| r.kind == "session_start" && r.data.get("refused").is_some()).count();
    assert_eq!(failed, 1, "{rows:#?}");
}

#[test]
fn an_overlong_batch_line_is_refused_unread_and_the_batch_goes_on() {
    let policy = format!("{}terrarium:\n  max_code_size: 1k\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let (_d, path) = crate::common::temp_file("p.yaml", policy.as_bytes());
    let long = format!("{{\"id\": \"long\", \"code\": \"{}\"}}", "x".repeat(200_000));
    let input = format!("{long}\n{{\"id\": \"next\", \"code\": \"1+1\"}}\n");
    let out = crate::common::terrarium(&["batch", "--policy", path.to_str().expect("utf-8")], input.as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("line")).collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0]["status"], "error");
    assert!(lines[0]["error"]["message"].as_str().is_some_and(|m| m.contains("refused unread")), "{}", lines[0]);
    assert_eq!(lines[1]["result"], 2);
}

/// A docker-tier session under the local test image's policy plus `sessions`
/// (`None` when the docker tier is skipped).
fn docker_session(sessions: &str) -> Option<(terrarium::DockerExecutor, Box<dyn terrarium::TierSession>)> {
    let yaml = format!(
        "{}\nsessions:\n{sessions}\n",
        crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE)
    );
    let exec = crate::common::docker_executor(Policy::from_yaml(&yaml, "docker-sessions.yaml").expect("policy"), 0)?;
    use terrarium::Executor as _;
    let session = runtime().block_on(exec.open_session()).expect("docker session");
    Some((exec, session))
}

fn tier_cell(session: &mut Box<dyn terrarium::TierSession>, code: &str) -> Outcome {
    runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell")
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn docker_sessions_keep_state_in_one_container_and_end_at_a_limit() {
    let Some((exec, mut session)) = docker_session("  max_cells: 100") else { return };
    let (label, value) = exec.label();
    let (label, value) = (label.to_string(), value.to_string());
    let containers = crate::common::containers_labelled(&label, &value);
    assert_eq!(containers.len(), 1, "one container for the session");
    // Between cells the container is frozen: nothing a cell left behind runs.
    let paused = || crate::common::container_paused(&containers[0]);
    assert!(paused(), "frozen before its first cell");
    assert_eq!(tier_cell(&mut session, "import json\ndef double(x):\n    return 2 * x").status, Status::Ok);
    let o = tier_cell(&mut session, "print('out')\njson.dumps([double(21)])");
    assert_eq!((o.stdout.as_str(), o.result.clone()), ("out\n", Some(serde_json::json!("[42]"))), "{o:?}");
    assert_eq!(o.session.as_ref().map(|c| c.cell), Some(2));
    assert!(paused(), "frozen after a cell's report");
    assert_eq!(tier_cell(&mut session, "import socket").status, Status::Denied);
    assert_eq!(tier_cell(&mut session, "double(2)").result, Some(serde_json::json!(4)));
    // Another session of the same executor starts clean.
    use terrarium::Executor as _;
    let mut other = runtime().block_on(exec.open_session()).expect("second session");
    assert_eq!(tier_cell(&mut other, "'double' in globals()").result, Some(serde_json::json!(false)));
    drop(other);
    // A cell over its deadline ends the session and its container is gone at once.
    let req = ExecRequest::new("while True:\n    pass")
        .with_overrides(terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() });
    let o = runtime().block_on(session.execute(req)).expect("cell");
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(o.session.and_then(|c| c.ended).is_some_and(|w| w.contains("timeout")));
    let left = crate::common::containers_labelled(&label, &value);
    assert!(left.len() <= 1, "the ended session's container was not removed: {left:?}");
    match runtime().block_on(session.execute(ExecRequest::new("1"))) {
        Err(SandboxError::SessionEnded(why)) => assert!(why.contains("timeout"), "{why}"),
        other => panic!("expected session ended, got {other:?}"),
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn docker_sessions_end_at_their_memory_and_when_idle() {
    let Some((exec, mut session)) = docker_session("  max_memory: 64m\n  idle_timeout: 2") else { return };
    let (label, value) = exec.label();
    let (label, value) = (label.to_string(), value.to_string());
    tier_cell(&mut session, "keep = []");
    let o = tier_cell(&mut session, "for _ in range(40):\n    keep.append(bytearray(8 << 20))");
    let clean_error = o.status == Status::Exception && o.error.as_ref().is_some_and(|e| e.kind == "MemoryError");
    assert!(o.status == Status::MemoryLimit || clean_error, "{o:?}");
    if o.status == Status::MemoryLimit {
        assert!(o.session.and_then(|c| c.ended).is_some());
    }
    // Idle: the watchdog removes the container without another cell.
    use terrarium::Executor as _;
    let idle = runtime().block_on(exec.open_session()).expect("session");
    std::thread::sleep(Duration::from_secs(4));
    assert!(idle.ended().is_some_and(|w| w.contains("idle")), "{:?}", idle.ended());
    drop(idle);
    drop(session);
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !crate::common::containers_labelled(&label, &value).is_empty() {
        assert!(std::time::Instant::now() < until, "session containers were left behind");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A session on the docker tier is a critical operation when the policy lists
/// `docker_tier`: it starts only once a human approves it (here from another
/// process, the CLI), and not at all when nobody does.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_docker_session_waits_for_a_humans_approval() {
    let home = tempfile::tempdir().expect("home");
    let path = home.path().join("audit.db");
    let yaml = format!(
        "{}\napprovals:\n  critical: [docker_tier]\n  timeout: 30\n",
        crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE)
    );
    let policy = Policy::from_yaml(&yaml, "p.yaml").expect("policy");
    if crate::common::docker_executor(policy.clone(), 0).is_none() {
        return;
    }
    let s = sandbox_with(policy, Some(&path));
    let approver = {
        let home = home.path().to_path_buf();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let list = crate::common::terrarium_env(
                    &["approvals", "list", "--status", "pending"],
                    b"",
                    &[("TERRARIUM_HOME", &home.to_string_lossy())],
                );
                if let Some(item) = list.stdout.lines().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                {
                    assert_eq!(item["kind"], "session", "{item}");
                    let id = item["id"].to_string();
                    let out = crate::common::terrarium_env(
                        &["approvals", "approve", &id, "--as", "alice"],
                        b"",
                        &[("TERRARIUM_HOME", &home.to_string_lossy())],
                    );
                    assert_eq!(out.code, 0, "{}", out.stderr);
                    return;
                }
                assert!(std::time::Instant::now() < until, "no session waited for approval");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let opts = SessionOptions { tier: TierChoice::Fixed(terrarium::Tier::Docker), caller: None, workspace: None };
    let mut session = runtime().block_on(s.session(opts)).expect("approved session");
    approver.join().expect("approver");
    assert_eq!(cell(&mut session, "x = 20\nx + 1").result, Some(serde_json::json!(21)));
    assert_eq!(cell(&mut session, "x * 2").result, Some(serde_json::json!(40)));
}

#[test]
fn denial_reasons_and_exception_types_stay_bounded_and_inert() {
    let o = run("__import__('k' * 50000)");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(
        o.error.as_ref().is_some_and(|e| e.message.len() <= 1024),
        "{} bytes",
        o.error.map_or(0, |e| e.message.len())
    );
    // A class named with terminal controls is shown escaped by `run`.
    let out =
        crate::common::terrarium(&["run", "-c", "E = type('\\x1b]0;PWNED\\x07', (Exception,), {})\nraise E('m')"], b"");
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
    assert!(out.stderr.contains("PWNED"), "{:?}", out.stderr);
}

/// On the wasm tier each cell gets the policy's fuel (`terrarium.fuel`) afresh, and
/// says what it used: two cells that together use more than one budget both run; a
/// cell that uses up its own ends the session.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn wasm_cells_each_get_the_policys_fuel() {
    let yaml = format!("{}terrarium:\n  fuel: 1000000000\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = sandbox_with(Policy::from_yaml(&yaml, "fuel.yaml").expect("policy"), None);
    let mut session = open_on(&s, Tier::Wasm);
    let mut used = 0;
    for _ in 0..2 {
        // About 530 million units each (measured).
        let o = cell(&mut session, "t = 0\nfor i in range(100000):\n    t += i");
        assert_eq!(o.status, Status::Ok, "{o:?}");
        let fuel = o.usage.fuel.expect("the cell's fuel");
        assert!(fuel > 100_000_000 && fuel < 1_000_000_000, "{fuel}: {o:?}");
        used += fuel;
    }
    assert!(used > 1_000_000_000, "the two cells together used {used}, more than one cell's budget");
    let o = cell(&mut session, "while True:\n    pass");
    assert_eq!((o.status, o.usage.fuel), (Status::FuelExhausted, Some(1_000_000_000)), "{o:?}");
    assert!(o.session.and_then(|c| c.ended).is_some_and(|w| w.contains("fuel")));
    assert!(refused(&mut session, "1").contains("fuel"));
}

/// A cell's fuel is set when the guest reads the cell, not when the host sends it:
/// work a cell leaves behind its report (here the prelude made to count before it
/// reads the next cell, through epoch checks while the next cell is sent) runs on
/// that cell's fuel, and the next cell still gets its own in full.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn wasm_fuel_is_set_as_the_cell_is_read() {
    let yaml = format!("{}terrarium:\n  fuel: 1000000000\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = sandbox_with(Policy::from_yaml(&yaml, "fuel.yaml").expect("policy"), None);
    let mut session = open_on(&s, Tier::Wasm);
    // After its report: about 280 million units, ~55 ms (measured), longer than the
    // host takes to send the next cell and well inside the grace a guest has to park
    // again (250 ms; 150 ms of work here failed on a loaded machine).
    let slow = "G = getattr(__import__, '__glo' + 'bals__')\nreal = G['_next_cell']\ndef slow():\n    \
                for _ in range(300000):\n        pass\n    return real()\nG['_next_cell'] = slow";
    assert_eq!(cell(&mut session, slow).status, Status::Ok);
    // About 765 million units: more than the first cell left (about 720 million)
    // had the budget been set at its report rather than as this cell is read.
    let o = cell(&mut session, "t = 0\nfor i in range(150000):\n    t += i");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    let fuel = o.usage.fuel.expect("fuel");
    assert!(fuel > 600_000_000 && fuel < 1_000_000_000, "{fuel}: {o:?}");
}

/// A batch's session that idles out frees its slot among the open ones by itself
/// (not when a later line names it), and a later cell of it gets the reason.
#[test]
fn a_batch_session_that_idles_out_frees_its_slot() {
    use std::io::{BufRead, Write};
    let yaml = format!("{}\nsessions:\n  idle_timeout: 1\n  max_open: 1\n", include_str!("../policies/default.yaml"));
    let (_dir, policy) = crate::common::temp_file("p.yaml", yaml.as_bytes());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(["batch", "--policy", policy.to_str().expect("utf-8")])
        .env("TERRARIUM_HOME", crate::common::test_home())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("batch");
    let mut input = child.stdin.take().expect("stdin");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next =
        || serde_json::from_str::<serde_json::Value>(&lines.next().expect("a line").expect("read")).expect("json");
    writeln!(input, r#"{{"code": "x = 1", "session": "a"}}"#).expect("write");
    assert_eq!(next()["status"], "ok");
    std::thread::sleep(Duration::from_millis(3500));
    writeln!(input, r#"{{"code": "2", "session": "b"}}"#).expect("write");
    let b = next();
    assert_eq!((b["status"].as_str(), b["result"].as_i64()), (Some("ok"), Some(2)), "{b}");
    writeln!(input, r#"{{"code": "x", "session": "a"}}"#).expect("write");
    let a = next();
    assert!(a["error"]["message"].as_str().unwrap_or("").contains("idle"), "{a}");
    drop(input);
    assert!(child.wait().expect("wait").success());
}

/// A tighter `--memory` caps the sessions `batch` opens, as it caps single runs.
#[test]
fn the_memory_flag_caps_a_batch_sessions_memory() {
    let lines = b"{\"code\": \"x = bytearray(200 * 1024 * 1024)\\nlen(x)\", \"session\": \"s\"}\n";
    let out = crate::common::terrarium(&["batch", "--memory", "64m"], lines);
    let o: serde_json::Value = serde_json::from_str(out.stdout.lines().next().expect("a line")).expect("json");
    assert_ne!(o["result"].as_i64(), Some(200 * 1024 * 1024), "{o}");
    assert!(o["status"] == "memory_limit" || o["error"]["type"] == "MemoryError", "{o}");
}
