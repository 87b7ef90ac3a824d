//! Attacks on sessions (issue 19) from a child its snippet fully controls: the
//! answers it writes ahead, and processes left behind by ended sessions.

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
