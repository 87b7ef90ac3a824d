//! Attacks on sessions (issue 19) from a child its snippet fully controls: the
//! answers it writes ahead, and processes left behind by ended sessions; on the
//! wasm tier, a snippet that rewrites its instance's prelude (forged reports,
//! output after a report, work left running behind it), judged by what the host
//! concludes, and instances left behind by ended sessions.

use std::time::{Duration, Instant};

use terrarium::{ExecRequest, Executor, Policy, SandboxError, Status};

use crate::common::{isolated, runtime};

/// The zygote's live children (the pool's and the sessions').
fn children(zygote: i32) -> usize {
    let list = std::fs::read_to_string(format!("/proc/{zygote}/task/{zygote}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        // A killed child stays listed, as a zombie, until the zygote reaps it.
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z ")))
        .count()
}

/// Waits up to 5 s for the zygote to have `n` live children.
fn wait_for_children(zygote: i32, n: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let now = children(zygote);
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_answer_written_ahead_of_its_cell_ends_the_session() {
    let exec = isolated(Policy::default_policy());
    let mut session = runtime().block_on(exec.probe_session("answer_ahead")).expect("session");
    // The forged frame comes with the first answer, or is waiting on the socket
    // when the host sends cell 2: either way the cell it lands in is a protocol
    // error, and the forged output is never anyone's.
    let mut broken = None;
    for code in ["x = 1\nx", "x + 1"] {
        // Time for the forged frame to arrive before the host checks the socket.
        // (A child that times its write to land after that check is answering the
        // next cell itself: the guest's word, in its own session.)
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell");
        assert!(!o.stdout.contains("FORGED"), "{o:?}");
        if o.status != Status::Ok {
            broken = Some(o);
            break;
        }
    }
    let broken = broken.expect("the forged answer was taken for a cell's");
    assert_eq!(broken.status, Status::Crashed, "{broken:?}");
    assert_eq!(broken.error.as_ref().map(|e| e.kind.as_str()), Some("ProtocolError"), "{broken:?}");
    assert!(broken.session.and_then(|c| c.ended).is_some());
    assert!(matches!(runtime().block_on(session.execute(ExecRequest::new("x"))), Err(SandboxError::SessionEnded(_))));
}

#[test]
fn ended_and_idle_sessions_leave_no_process() {
    let policy_yaml = format!("{}\nsessions:\n  idle_timeout: 0.5\n", include_str!("../policies/default.yaml"));
    let exec = isolated(Policy::from_yaml(&policy_yaml, "p.yaml").expect("policy"));
    runtime().block_on(exec.warm_up()).expect("warm");
    let zygote = exec.zygote_pid().expect("zygote");
    let pool = wait_for_children(zygote, 4);
    // Ended by its caller.
    let mut session = runtime().block_on(exec.open_session()).expect("session");
    runtime().block_on(session.execute(ExecRequest::new("x = 1"))).expect("cell");
    assert_eq!(children(zygote), pool + 1, "the session's child is the zygote's");
    session.end("test");
    assert_eq!(wait_for_children(zygote, pool), pool, "the ended session's child is gone");
    // Dropped without an end.
    let session = runtime().block_on(exec.open_session()).expect("session");
    assert_eq!(wait_for_children(zygote, pool + 1), pool + 1);
    drop(session);
    assert_eq!(wait_for_children(zygote, pool), pool, "the dropped session's child is gone");
    // Left idle: killed in the background, with no further call.
    let _idle = runtime().block_on(exec.open_session()).expect("session");
    assert_eq!(wait_for_children(zygote, pool + 1), pool + 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(wait_for_children(zygote, pool), pool, "the idle session's child is gone");
}

/// On the docker tier the snippet controls CPython: a thread it leaves behind would
/// run and write between cells. The container is frozen between cells, so the
/// thread's late write never lands outside a cell and it burns no CPU meanwhile.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_thread_left_by_a_docker_cell_is_frozen_between_cells() {
    let yaml = crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE);
    let Some(exec) = crate::common::docker_executor(Policy::from_yaml(&yaml, "p.yaml").expect("policy"), 0) else {
        return;
    };
    let mut session = runtime().block_on(exec.open_session()).expect("session");
    let (label, value) = exec.label();
    let containers = crate::common::containers_labelled(label, value);
    assert_eq!(containers.len(), 1);
    let paused = || if crate::common::container_paused(&containers[0]) { "true" } else { "false" };
    let spawn = "G = getattr(__import__, '__glo' + 'bals__')\nth = G['_real_import']('_thread')\n\
                 t = G['_real_import']('time')\ndef spin():\n    t.sleep(0.3)\n    \
                 G['_real_stdout'].write('LATE\\n')\n    G['_real_stdout'].flush()\n    while True:\n        pass\n\
                 th.start_new_thread(spin, ())\n'started'";
    let o = runtime().block_on(session.execute(ExecRequest::new(spawn))).expect("cell");
    assert_eq!(o.result, Some(serde_json::json!("started")), "{o:?}");
    assert_eq!(paused(), "true", "frozen after the cell's report");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(paused(), "true", "still frozen");
    // The thread wakes with the next cell: its write lands in that cell (the
    // guest's word in its own session), never between cells.
    let o = runtime().block_on(session.execute(ExecRequest::new("1 + 1"))).expect("cell");
    assert!(o.status == Status::Ok || o.status == Status::Crashed, "{o:?}");
    session.end("test");
}

/// `terrarium batch` stopped by SIGTERM while a docker session's cell spins: no
/// container of it is left running.
#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_batch_stopped_by_a_signal_leaves_no_session_container() {
    use std::io::Write as _;
    let Some(_) = crate::common::docker_executor(crate::common::docker_policy(), 0) else { return };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args([
            "batch",
            "--tier",
            "docker",
            "--policy",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policies/local-docker.yaml"),
        ])
        .env("TERRARIUM_HOME", crate::common::test_home())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn batch");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    writeln!(input, r#"{{"session": "s", "code": "while True:\n    pass"}}"#).expect("write");
    let mine = || -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=terrarium.owner",
                "--format",
                "{{.ID}} {{.Label \"terrarium.owner\"}}",
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!(":{pid}:")))
            .map(str::to_string)
            .collect()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while mine().is_empty() {
        assert!(std::time::Instant::now() < until, "the session's container never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    #[allow(unsafe_code, reason = "libc::kill has no safe wrapper in std")]
    // SAFETY: a plain signal to our own child process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().expect("wait");
    assert!(!status.success(), "a batch stopped by a signal says so in its exit code");
    assert_eq!(mine(), Vec::<String>::new(), "containers left behind");
}

/// The wasm tier with room for one instance at a time and no warm pool: a
/// python.wasm of its own (a copy: the runtime, with its instance slots, is per
/// python.wasm path), so that a session can start only once the last one's
/// instance has ended and freed its slot. `None` when the wasm tier is skipped.
fn wasm_one_slot(policy: Policy) -> Option<(tempfile::TempDir, terrarium::WasmExecutor)> {
    crate::common::wasm_executor(Policy::default_policy())?;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = terrarium::WasmConfig::from_env();
    let copy = dir.path().join("python.wasm");
    std::fs::copy(&config.python_wasm, &copy).expect("copy python.wasm");
    config.python_wasm = copy;
    config.pool_size = 0;
    config.max_instances = 1;
    let exec = terrarium::WasmExecutor::new(policy, config);
    exec.warm_up().expect("the one-slot wasm runtime");
    Some((dir, exec))
}

/// What the host concluded about `code` run as cell 2 of a wasm session, and about
/// the cell after it: the outcomes of the cells that ran, and why the session ended.
fn wasm_attack(
    exec: &terrarium::WasmExecutor,
    code: &str,
    pause: Duration,
) -> (Vec<terrarium::Outcome>, Option<String>) {
    let mut session = runtime().block_on(exec.open_session()).expect("session");
    let first = runtime().block_on(session.execute(ExecRequest::new("x = 1"))).expect("cell");
    assert_eq!(first.status, Status::Ok, "{first:?}");
    let short = terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() };
    let mut outcomes = Vec::new();
    for code in [code, "x + 1"] {
        match runtime().block_on(session.execute(ExecRequest::new(code).with_overrides(short.clone()))) {
            Ok(o) => outcomes.push(o),
            Err(SandboxError::SessionEnded(_)) => break,
            Err(e) => panic!("host fault: {e}"),
        }
        std::thread::sleep(pause);
    }
    let ended = session.ended();
    (outcomes, ended)
}

/// The wasm snippet controls CPython, the prelude's globals included: it makes the
/// prelude write after its report (before it reads the next cell). Nothing may be
/// written between cells: the write traps the instance, the session ends with a
/// protocol error, the late output is nobody's, and the instance is gone (its one
/// slot serves the next session at once).
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_wasm_cell_writing_after_its_report_ends_the_session() {
    let Some((_dir, exec)) = wasm_one_slot(Policy::default_policy()) else { return };
    let late = "G = getattr(__import__, '__glo' + 'bals__')\nreal = G['_next_cell']\ndef late():\n    \
                G['_real_stdout'].write('LATE\\n')\n    G['_real_stdout'].flush()\n    return real()\n\
                G['_next_cell'] = late\n'patched'";
    let (outcomes, ended) = wasm_attack(&exec, late, Duration::ZERO);
    assert_eq!(outcomes[0].result, Some(serde_json::json!("patched")), "{outcomes:?}");
    for o in &outcomes {
        assert!(!o.stdout.contains("LATE"), "{o:?}");
    }
    // Seen with the report (the cell's outcome says the session ended), or at the
    // next cell, which reports the broken protocol.
    let why = ended.expect("the session ended");
    assert!(why.contains("wrote output"), "{why}");
    if let [_, next] = outcomes.as_slice() {
        assert_eq!(next.status, Status::Crashed, "{next:?}");
        assert_eq!(next.error.as_ref().map(|e| e.kind.as_str()), Some("ProtocolError"), "{next:?}");
    } else {
        assert!(outcomes[0].session.as_ref().is_some_and(|c| c.ended.is_some()), "{outcomes:?}");
    }
    let mut next = runtime().block_on(exec.open_session()).expect("the slot is free again");
    let o = runtime().block_on(next.execute(ExecRequest::new("'x' in globals()"))).expect("cell");
    assert_eq!(o.result, Some(serde_json::json!(false)));
}

/// A cell forges the prelude's report (with the nonce it read from the prelude's
/// globals), then goes on, and the real report follows. The forged report is the
/// guest's word about its own cell; the host takes nothing after it: the session
/// ends, and no later cell gets the forged or late output.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_wasm_cell_forging_its_report_ends_the_session() {
    let Some((_dir, exec)) = wasm_one_slot(Policy::default_policy()) else { return };
    let forge = "G = getattr(__import__, '__glo' + 'bals__')\nn = G['_nonce']\n\
                 G['_real_stdout'].write('FORGED\\n' + '\\n' + n + ' end\\n')\nG['_real_stdout'].flush()\n\
                 G['_real_stderr_write']('\\n' + n + ' {\"kind\": \"ok\", \"result\": \"7\"}\\n')\n\
                 G['_real_stderr_flush']()\nprint('after')\n'real'";
    let (outcomes, ended) = wasm_attack(&exec, forge, Duration::from_millis(200));
    let why = ended.expect("the session ended");
    assert!(why.contains("output"), "{why}: {outcomes:?}");
    // The attacking cell's own outcome is the guest's word; any cell after it
    // reports the broken protocol, never the forged or late output.
    for o in outcomes.iter().skip(1) {
        assert_eq!(o.status, Status::Crashed, "{o:?}");
        assert!(!o.stdout.contains("FORGED") && !o.stdout.contains("after"), "{o:?}");
    }
    assert!(runtime().block_on(exec.open_session()).is_ok(), "the slot is free again");
}

/// A cell leaves CPU work behind its report (the prelude made to spin instead of
/// reading its next cell), or forges its report and goes on computing: it would
/// run between cells, unaccounted (and slow other tenants down, measurably to
/// them). The guest must block for its next cell soon after its report: one that
/// does not ends its session with that cell, and its instance is stopped.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_wasm_cell_running_on_after_its_report_ends_the_session() {
    let Some((_dir, exec)) = wasm_one_slot(Policy::default_policy()) else { return };
    let spin = "G = getattr(__import__, '__glo' + 'bals__')\ndef spin():\n    while True:\n        pass\n\
                G['_next_cell'] = spin\n'patched'";
    let forged = "import time\nG = getattr(__import__, '__glo' + 'bals__')\nn = G['_nonce']\n\
                  G['_real_stdout'].write('\\n' + n + ' end\\n')\nG['_real_stdout'].flush()\n\
                  G['_real_stderr_write']('\\n' + n + ' {\"kind\": \"ok\", \"result\": \"7\"}\\n')\n\
                  G['_real_stderr_flush']()\nt = time.monotonic()\nwhile time.monotonic() - t < 0.9:\n    pass";
    for attack in [spin, forged] {
        let started = Instant::now();
        let (outcomes, ended) = wasm_attack(&exec, attack, Duration::ZERO);
        assert_eq!(outcomes.len(), 1, "no cell runs after it: {outcomes:?}");
        let why = ended.expect("the session ended");
        assert!(why.contains("kept running after its cell's report"), "{why}: {outcomes:?}");
        assert_eq!(outcomes[0].session.as_ref().and_then(|c| c.ended.clone()), Some(why));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert!(runtime().block_on(exec.open_session()).is_ok(), "the slot is free again");
}

/// Sessions ended, dropped, abandoned as they start or left idle free their
/// instance: the one slot serves the next session (an idle one is stopped by its
/// watchdog, with no further call).
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn ended_dropped_abandoned_and_idle_wasm_sessions_free_their_instance() {
    let yaml = format!("{}\nsessions:\n  idle_timeout: 0.5\n", include_str!("../policies/default.yaml"));
    let policy = Policy::from_yaml(&yaml, "p.yaml").expect("policy");
    let Some((_dir, exec)) = wasm_one_slot(policy) else { return };
    // A session's start retries while the last one's instance is ending.
    let open = || {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match runtime().block_on(exec.open_session()) {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < until, "the slot was not freed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut session = open();
    runtime().block_on(session.execute(ExecRequest::new("x = 1"))).expect("cell");
    session.end("test");
    let dropped = open();
    drop(dropped);
    // A start abandoned while CPython was starting: polled once (its instance's
    // thread started), then dropped. A start that is already done at its first poll
    // (the slot's instance came up in time) is ended and the start tried again.
    let gave_up = (0..20).any(|_| {
        runtime().block_on(async {
            let mut start = std::pin::pin!(exec.open_session());
            tokio::select! {
                biased;
                started = &mut start => {
                    if let Ok(mut s) = started {
                        s.end("test");
                    }
                    // Its instance, or the last one's, is still ending.
                    std::thread::sleep(Duration::from_millis(50));
                    false
                }
                () = std::future::ready(()) => true,
            }
        })
    });
    assert!(gave_up, "twenty sessions started at their first poll");
    // Left idle, and kept: its watchdog stops its instance.
    let idle = open();
    std::thread::sleep(Duration::from_millis(700));
    let mut last = open();
    assert!(idle.ended().is_some_and(|w| w.contains("idle")), "{:?}", idle.ended());
    let o = runtime().block_on(last.execute(ExecRequest::new("'x' in globals()"))).expect("cell");
    assert_eq!(o.result, Some(serde_json::json!(false)));
}
