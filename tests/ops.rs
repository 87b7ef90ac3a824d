//! What an operator does on a bad day, tried for real: the emergency stop of a
//! running server under a mixed load (isolated, wasm and docker runs, a session,
//! a pending approval), judged by what still runs afterwards (the server's
//! process tree, its containers), what the audit log kept, and whether the stop
//! holds across a restart until resumed.

use std::time::{Duration, Instant};

use crate::common::server::{ADMIN, APPROVE, Reply, SUBMIT, Server, call};
use crate::common::{DOCKER_IMAGE, default_policy_with};

/// CPU time (clock ticks) used so far by `pid` and every process below it.
fn tree_ticks(pid: u32) -> u64 {
    let mut total = 0;
    let mut parents = vec![pid];
    while let Some(p) = parents.pop() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // Fields after the command (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime are fields 14-17 (index 11-14 here).
        total += f.get(11..15).map_or(0, |t| t.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            parents.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

/// The containers this server created (its owner label names its pid).
fn server_containers(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--filter", "label=terrarium.owner", "--format", "{{.ID}} {{.Labels}}"])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{pid}:")))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect()
}

fn audit_rows(s: &Server) -> Vec<serde_json::Value> {
    let out = s.cli(&["audit", "tail", "-n", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

/// Waits until the audit log has a `request` event for each of `ids`.
fn wait_requested(s: &Server, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = audit_rows(s);
        let seen = |id: &str| rows.iter().any(|r| r["kind"] == "request" && r["request_id"] == id);
        if ids.iter().all(|id| seen(id)) {
            return;
        }
        assert!(Instant::now() < deadline, "not every run started: {ids:?}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[cfg_attr(any(terrarium_skip_docker, terrarium_skip_wasm), ignore = "TERRARIUM_SKIP_DOCKER/WASM=1")]
fn slow_an_emergency_stop_under_mixed_load_stops_everything_records_it_and_holds_until_resumed() {
    let policy = format!(
        "{}\napprovals:\n  critical: [writable_scratch]\n  timeout: 120\ncommands:\n  allow:\n    - program: python3\n      \
         args: ['-c', 'import time; time.sleep\\(60\\)']\n  deny: [rm]\n",
        default_policy_with("python:3.12-slim", DOCKER_IMAGE).replacen("timeout: 10", "timeout: 40", 1)
    );
    let mut s = Server::start(Some(&policy), &[]);
    let addr = s.addr;
    // The docker tier's engine and warm pool are up before the load starts.
    let warm = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1+1", "tier": "docker"}"#));
    assert_eq!((warm.status, &warm.json()["result"]), (200, &serde_json::json!(2)), "{}", warm.body);
    let session = s.call("POST", "/v1/sessions", Some(SUBMIT), Some(r#"{"tier": "rustpython"}"#));
    assert_eq!(session.status, 200, "{}", session.body);
    let sid = session.json()["id"].as_str().expect("session id").to_string();
    let first = s.call("POST", &format!("/v1/sessions/{sid}/cells"), Some(SUBMIT), Some(r#"{"code": "x = 1"}"#));
    assert_eq!(first.json()["status"], "ok", "{}", first.body);

    let post = move |path: String, body: &'static str| {
        std::thread::spawn(move || call(addr, "POST", &path, Some(SUBMIT), Some(body.as_bytes()), &[]))
    };
    let load = [
        post("/v1/execute".into(), r#"{"code": "while True: pass", "tier": "rustpython", "id": "spin-isolated"}"#),
        post("/v1/execute".into(), r#"{"code": "while True: pass", "tier": "wasm", "id": "spin-wasm"}"#),
        post(
            "/v1/execute".into(),
            r#"{"code": "import time\ntime.sleep(60)", "tier": "docker", "id": "sleep-docker"}"#,
        ),
        post("/v1/execute".into(), r#"{"code": "1", "tier": "wasm", "scratch": true, "id": "waits-for-a-human"}"#),
        post("/v1/execute".into(), r#"{"code": "import time\ntime.sleep(60)", "tier": "wasm", "id": "sleep-wasm"}"#),
        post("/v1/commands".into(), r#"{"argv": ["python3", "-c", "import time; time.sleep(60)"]}"#),
        post(format!("/v1/sessions/{sid}/cells"), r#"{"code": "while True: x += 1", "id": "spin-cell"}"#),
    ];
    wait_requested(
        &s,
        &[
            "req:ci:spin-isolated",
            "req:ci:spin-wasm",
            "req:ci:sleep-docker",
            "req:ci:waits-for-a-human",
            "req:ci:spin-cell",
            "req:ci:sleep-wasm",
        ],
    );
    let pending = crate::server::first_pending(&s);
    let pending_id = pending["id"].as_i64().expect("approval id");
    // Every run is going (the docker one in a container from the warm pool).
    std::thread::sleep(Duration::from_millis(1500));
    let during = server_containers(s.pid());

    let began = Instant::now();
    let stop = s.call("POST", "/v1/emergency-stop", Some(ADMIN), Some(r#"{"reason": "drill: key leaked"}"#));
    let took = began.elapsed();
    assert_eq!(stop.status, 200, "{}", stop.body);
    let report = stop.json();
    assert_eq!(report["still_running"], 0, "the stop returned with runs still going: {report}");
    assert_eq!(report["persisted"], true, "{report}");
    assert!(took < Duration::from_secs(30), "the stop took {took:?}");
    let run_ids: Vec<&str> =
        report["runs"].as_array().expect("runs").iter().filter_map(|r| r["request_id"].as_str()).collect();
    for id in [
        "req:ci:spin-isolated",
        "req:ci:spin-wasm",
        "req:ci:sleep-docker",
        "req:ci:waits-for-a-human",
        "req:ci:spin-cell",
    ] {
        assert!(run_ids.contains(&id), "{id} missing from the stop's report: {report}");
    }
    assert!(report["sessions"].as_array().expect("sessions").iter().any(|x| x["session"] == sid.as_str()), "{report}");
    assert_eq!(report["approvals"], serde_json::json!([pending_id]), "{report}");

    // Every caller in flight was answered: stopped, with the reason.
    for client in load {
        let r: Reply = client.join().expect("client");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body.contains("drill: key leaked"), "{}", r.body);
    }
    // Nothing runs: the server's process tree (its isolated children, its wasm
    // threads) uses no CPU to speak of, and the docker run's container is gone.
    std::thread::sleep(Duration::from_secs(1));
    let t0 = tree_ticks(s.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = tree_ticks(s.pid()) - t0;
    assert!(used < 60, "the server's processes used {used} ticks in the 2 s after the stop");
    // The warm pool's containers stay (they never ran anything); the run's is
    // gone (were it left, every container seen during the load would remain).
    let after = server_containers(s.pid());
    assert!(during.iter().any(|c| !after.contains(c)), "the docker run's container was left: {during:?} -> {after:?}");
    assert!(after.len() <= 2, "only the warm pool's two containers may stay: {during:?} -> {after:?}");

    // New work is refused (503, the reason), health says so, the approval expired.
    for (path, body) in [
        ("/v1/execute", r#"{"code": "1+1"}"#),
        ("/v1/sessions", r#"{"tier": "rustpython"}"#),
        ("/v1/commands", r#"{"argv": ["ls"]}"#),
    ] {
        let r = s.call("POST", path, Some(SUBMIT), Some(body));
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert!(r.body.contains("stopped"), "{path}: {}", r.body);
    }
    let health = s.call("GET", "/v1/health", None, None).json();
    assert_eq!(
        (health["status"].as_str(), health["stopped"]["by"].as_str()),
        (Some("stopped"), Some("root")),
        "{health}"
    );
    let late = s.call("POST", &format!("/v1/approvals/{pending_id}/approve"), Some(APPROVE), None);
    assert_eq!(late.status, 503, "nothing is approved while stopped: {}", late.body);
    let item = s.call("GET", &format!("/v1/approvals/{pending_id}"), Some(APPROVE), None).json();
    assert_eq!(item["status"], "expired", "{item}");
    assert!(item["note"].as_str().unwrap_or("").starts_with("stopped: drill"), "{item}");
    let metrics = s.call("GET", "/metrics", Some(ADMIN), None);
    assert!(metrics.body.contains("terrarium_stopped 1"), "{}", metrics.body);

    // One record of everything in flight, written before anything was stopped.
    let rows = audit_rows(&s);
    let stops: Vec<&serde_json::Value> = rows.iter().filter(|r| r["kind"] == "emergency_stop").collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    let stop_seq = stops[0]["seq"].as_i64().expect("seq");
    let recorded = serde_json::to_string(&stops[0]["data"]).expect("data");
    for id in ["req:ci:spin-isolated", "req:ci:spin-wasm", "req:ci:sleep-docker", "req:ci:waits-for-a-human", &sid] {
        assert!(recorded.contains(id), "{id} is not in the stop's record: {recorded}");
    }
    assert!(recorded.contains("\"kind\":\"execute\"") && recorded.contains("waits-for-a-human"), "{recorded}");
    for row in rows.iter().filter(|r| r["kind"] == "outcome" && r["request_id"] == "req:ci:spin-wasm") {
        assert!(row["seq"].as_i64() > Some(stop_seq), "an outcome came before the stop's record: {row}");
    }
    assert_eq!(s.cli(&["audit", "verify"]).code, 0);

    // A restart does not resume.
    s.restart();
    let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1+1"}"#));
    assert_eq!(r.status, 503, "a restarted server runs work while stopped: {}", r.body);
    // Only an admin resumes; then work runs again.
    assert_eq!(s.call("POST", "/v1/resume", Some(SUBMIT), None).status, 403);
    let home = s.home.path().to_string_lossy().into_owned();
    let url = format!("http://{}", s.addr);
    let resumed = crate::common::terrarium_env(
        &["resume", "--server", &url],
        b"",
        &[("TERRARIUM_HOME", &home), ("TERRARIUM_TOKEN", ADMIN)],
    );
    assert_eq!(resumed.code, 0, "{}{}", resumed.stdout, resumed.stderr);
    assert!(resumed.stdout.contains("drill: key leaked"), "{}", resumed.stdout);
    let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1+1"}"#));
    assert_eq!((r.status, &r.json()["result"]), (200, &serde_json::json!(2)), "{}", r.body);
    assert!(audit_rows(&s).iter().any(|r| r["kind"] == "resume" && r["data"]["by"] == "root"));
}

#[test]
fn a_stop_without_a_server_holds_for_every_later_process_and_doctor_reports_it() {
    let home = tempfile::tempdir().expect("home");
    let h = home.path().to_string_lossy().into_owned();
    let env = [("TERRARIUM_HOME", h.as_str())];
    let cli = |args: &[&str]| crate::common::terrarium_env(args, b"", &env);
    // No server: said so, nothing marked.
    let refused = cli(&["stop", "--reason", "x", "--server", "http://127.0.0.1:9"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--offline"), "{}", refused.stderr);
    let forged = cli(&["stop", "--offline", "--as", "ops", "--reason", "x\u{1b}[31mRED"]);
    assert_ne!(forged.code, 0, "a reason with an escape sequence was kept");
    assert!(!home.path().join("stopped.json").exists());
    let stop = cli(&["stop", "--offline", "--as", "ops", "--reason", "disk full"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(home.path().join("stopped.json").exists());
    let run = cli(&["run", "-c", "print(1+1)"]);
    assert_ne!(run.code, 0, "a run started while stopped: {}", run.stdout);
    assert!(run.stderr.contains("stopped by ops (disk full)"), "{}", run.stderr);
    let doctor = cli(&["doctor"]);
    let line = doctor.stdout.lines().find(|l| l.contains("stop:")).unwrap_or_default().to_string();
    assert!(line.starts_with("FAILED") && line.contains("STOPPED by ops (disk full)"), "{}", doctor.stdout);
    // An unreadable stop file counts as stopped; a FIFO in its place is refused,
    // never waited on.
    std::fs::write(home.path().join("stopped.json"), "{not json").expect("write");
    let run = cli(&["run", "-c", "print(1+1)"]);
    assert!(run.stderr.contains("could not be read"), "{}", run.stderr);
    std::fs::remove_file(home.path().join("stopped.json")).expect("rm");
    let fifo = std::ffi::CString::new(home.path().join("stopped.json").to_string_lossy().into_owned()).expect("path");
    // SAFETY: mkfifo(3) with a NUL-terminated path this test owns.
    #[allow(unsafe_code, reason = "mkfifo has no safe wrapper in std")]
    let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo");
    let run = cli(&["run", "-c", "print(1+1)"]);
    assert!(run.code != 0 && run.stderr.contains("could not be read"), "{}", run.stderr);
    std::fs::remove_file(home.path().join("stopped.json")).expect("rm fifo");
    std::fs::write(home.path().join("stopped.json"), "{not json").expect("write");
    let resume = cli(&["resume", "--offline", "--as", "ops"]);
    assert_eq!(resume.code, 0, "{}", resume.stderr);
    let run = cli(&["run", "-c", "print(1+1)"]);
    assert_eq!((run.code, run.stdout.trim()), (0, "2"), "{}", run.stderr);
    let rows = crate::common::terrarium_env(&["audit", "tail", "-n", "50"], b"", &env).stdout;
    assert!(rows.contains("\"emergency_stop\"") && rows.contains("\"resume\""), "{rows}");
}

/// A running server changes its policy only once a human approved the diff; an
/// invalid file, a refusal or the same policy leaves the one in force, and each
/// is audited. SIGHUP asks as the endpoint does.
#[test]
fn a_policy_change_applies_only_once_approved_and_a_refused_or_invalid_one_changes_nothing() {
    let policy = format!("{}\napprovals:\n  timeout: 60\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = Server::start(Some(&policy), &[]);
    let file = s.home.path().join("policy.yaml");
    let random = || s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "import random\nrandom.seed(1)"}"#));
    assert_eq!(random().json()["status"], "denied", "random is not allowed yet");
    let reload = |token: &str| s.call("POST", "/v1/policy/reload", Some(token), None);
    assert_eq!(reload(SUBMIT).status, 403, "only an admin asks for a policy change");
    let same = reload(ADMIN);
    assert_eq!((same.status, same.json()["status"].as_str()), (200, Some("unchanged")), "{}", same.body);

    // An invalid file: refused, the policy in force stays.
    std::fs::write(&file, format!("{policy}\nsecurity:\n  oops: 1\n")).expect("write");
    let bad = reload(ADMIN);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("the policy in force stays"), "{}", bad.body);
    assert_eq!(random().json()["status"], "denied");

    // A real change waits for a human; who asked cannot approve it.
    let wider = format!(
        "{}alerts:\n  webhook: \"http://127.0.0.1:9/secret-relay-path\"\n",
        policy.replacen(
            r#"allowed_modules: ["math", "time", "json"]"#,
            r#"allowed_modules: ["math", "time", "json", "random"]"#,
            1
        )
    );
    assert_ne!(wider, policy);
    std::fs::write(&file, &wider).expect("write");
    let addr = s.addr;
    let asking = std::thread::spawn(move || call(addr, "POST", "/v1/policy/reload", Some(ADMIN), None, &[]));
    let item = crate::server::first_pending(&s);
    assert_eq!(
        (item["kind"].as_str(), item["subject"]["caller"].as_str()),
        (Some("policy_change"), Some("root")),
        "{item}"
    );
    let diff = item["subject"]["diff"].as_str().unwrap_or("");
    assert!(diff.contains("+") && diff.contains("random"), "the reviewer sees the diff: {diff}");
    assert!(
        !diff.contains("secret-relay-path") && diff.contains("http://127.0.0.1:9/<sha256:"),
        "the webhook's path shows by digest only: {diff}"
    );
    let id = item["id"].as_i64().expect("id");
    assert_eq!(s.call("POST", &format!("/v1/approvals/{id}/approve"), Some(ADMIN), None).status, 403, "own request");
    assert_eq!(random().json()["status"], "denied", "nothing applies before the decision");
    assert_eq!(s.call("POST", &format!("/v1/approvals/{id}/approve"), Some(APPROVE), None).status, 200);
    let applied = asking.join().expect("reload");
    assert_eq!((applied.status, applied.json()["status"].as_str()), (200, Some("applied")), "{}", applied.body);
    assert_eq!(random().json()["status"], "ok", "the approved policy is in force");

    // SIGHUP asks too; a denial keeps the policy in force.
    std::fs::write(&file, &policy).expect("write");
    // SAFETY: kill(2) on our own child's pid, which we have not reaped.
    #[allow(unsafe_code, reason = "sending a signal has no safe wrapper in std")]
    let rc = unsafe { libc::kill(i32::try_from(s.pid()).expect("pid"), libc::SIGHUP) };
    assert_eq!(rc, 0);
    let item = crate::server::first_pending(&s);
    assert_eq!(item["subject"]["caller"], "signal:SIGHUP", "{item}");
    let id = item["id"].as_i64().expect("id");
    assert_eq!(s.call("POST", &format!("/v1/approvals/{id}/deny"), Some(APPROVE), None).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(random().json()["status"], "ok", "a denied change leaves the policy in force");

    let rows = audit_rows(&s);
    let changes: Vec<&str> =
        rows.iter().filter(|r| r["kind"] == "policy_change").filter_map(|r| r["data"]["status"].as_str()).collect();
    assert_eq!(changes, ["unchanged", "invalid", "applied", "refused"], "{rows:?}");
    assert_eq!(s.cli(&["audit", "verify"]).code, 0);
}
