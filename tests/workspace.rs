//! Workspaces against the real tiers: runs on wasm and docker edit a workspace
//! through their private copy, the change set is exact, versions are kept and
//! rolled back byte for byte, a human approves a change set from another
//! process, and edits behind Terrarium's back are found and audited.

use std::path::{Path, PathBuf};
use std::time::Duration;

use terrarium::{ExecRequest, Outcome, Policy, Sandbox, Status, Tier, TierChoice};

use crate::common::{DOCKER_IMAGE, docker_executor, docker_policy, runtime, terrarium_env, wasm_executor};

/// The default policy with the local image, `os` allowed, a 60 s deadline, every
/// workspace allowed, and `extra` sections appended.
pub(crate) fn ws_policy(extra: &str) -> Policy {
    let text = terrarium::policy::DEFAULT_POLICY_YAML
        .replacen("python:3.12-slim", DOCKER_IMAGE, 1)
        .replacen(r#"["math", "time", "json"]"#, r#"["math", "time", "json", "os"]"#, 1)
        .replacen("timeout: 10", "timeout: 60", 1);
    let text = format!("{text}\nworkspaces:\n  allow: [\"*\"]\n{extra}");
    Policy::from_yaml(&text, "<workspace test>").expect("workspace policy")
}

/// A sandbox whose workspaces and audit log are under `home`.
pub(crate) fn ws_sandbox(home: &Path, policy: Policy) -> Sandbox {
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    let wasm = terrarium::WasmConfig { pool_size: 0, ..terrarium::WasmConfig::from_env() };
    let docker = terrarium::DockerConfig { pool_size: 0, ..terrarium::DockerConfig::default() };
    Sandbox::builder()
        .policy(policy)
        .isolated(isolated)
        .wasm(wasm)
        .docker(docker)
        .audit(home.join("audit.db"))
        .workspaces_root(home.join("workspaces"))
        .build()
        .expect("sandbox")
}

/// Whether `tier` is set up (or its skip was printed).
pub(crate) fn ready(tier: Tier) -> bool {
    match tier {
        Tier::Wasm => wasm_executor(Policy::default_policy()).is_some(),
        Tier::Docker => docker_executor(docker_policy(), 0).is_some(),
        _ => true,
    }
}

/// Runs `code` on `tier` with workspace `name`.
pub(crate) fn run_in(s: &Sandbox, tier: Tier, name: &str, code: &str) -> Outcome {
    let req = ExecRequest {
        tier: TierChoice::Fixed(tier),
        workspace: Some(name.into()),
        id: Some(format!("ws-{tier}")),
        ..ExecRequest::new(code)
    };
    runtime().block_on(s.execute(req)).expect("run")
}

/// `(path, action)` of each change the outcome reports.
pub(crate) fn changes(o: &Outcome) -> Vec<(String, String)> {
    o.workspace.as_ref().expect("workspace report").changes.iter().map(|c| (c.path.clone(), c.action.clone())).collect()
}

fn live(home: &Path, name: &str) -> PathBuf {
    home.join("workspaces").join(name).join("live")
}

fn sha256(bytes: &[u8]) -> String {
    terrarium::audit::sha256_hex(bytes)
}

const FIRST: &str = r#"
import os
for name, text in [("keep.txt", "same\n"), ("edit.txt", "one\ntwo\nthree\n"), ("gone.txt", "bye\n"), ("run.sh", "echo hi\n")]:
    with open(name, "w") as f:
        f.write(text)
open("empty", "w").close()
block = bytes(range(256)) * 4096
with open("big.bin", "wb") as f:
    for _ in range(50):
        f.write(block)
path = "deep"
for i in range(40):
    path += "/d%d" % i
os.makedirs(path)
with open(path + "/leaf.txt", "w") as f:
    f.write("leaf\n")
os.getcwd()
"#;

const SECOND: &str = r#"
import os
with open("edit.txt", "w") as f:
    f.write("one\nTWO\nthree\n")
os.remove("gone.txt")
os.chmod("run.sh", 0o755)
open("new-empty", "w").close()
os.mkdir("newdir")
"#;

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn slow_a_run_on_wasm_and_on_docker_edits_a_workspace_with_an_exact_change_set() {
    for tier in [Tier::Wasm, Tier::Docker] {
        if !ready(tier) {
            continue;
        }
        let home = tempfile::tempdir().expect("home");
        let s = ws_sandbox(home.path(), ws_policy(""));
        let o = run_in(&s, tier, "proj", FIRST);
        assert_eq!((o.status, o.tier), (Status::Ok, tier), "{tier}: {o:?}");
        assert_eq!(o.result, Some(serde_json::json!("/workspace")), "{tier}: the working directory");
        let w = o.workspace.clone().expect("report");
        assert_eq!((w.status.as_str(), w.base, w.version), ("committed", 0, Some(1)), "{tier}: {w:?}");
        let added = changes(&o);
        assert!(added.iter().all(|(_, a)| a == "added"), "{tier}: {added:?}");
        // 6 files, 41 directories and the leaf.
        assert_eq!(added.len(), 6 + 41 + 1, "{tier}: {added:?}");
        let big = w.changes.iter().find(|c| c.path == "big.bin").expect("big.bin");
        assert_eq!(big.size, Some(50 << 20), "{tier}");
        let dir = live(home.path(), "proj");
        let expected_big: Vec<u8> = (0..50 * 4096).flat_map(|_| 0..=255u8).collect();
        assert_eq!(sha256(&std::fs::read(dir.join("big.bin")).expect("big")), sha256(&expected_big), "{tier}");
        let leaf: PathBuf = (0..40).fold(dir.join("deep"), |p, i| p.join(format!("d{i}"))).join("leaf.txt");
        assert_eq!(std::fs::read_to_string(leaf).expect("leaf"), "leaf\n", "{tier}");
        assert_eq!(std::fs::read(dir.join("empty")).expect("empty").len(), 0, "{tier}");

        let o = run_in(&s, tier, "proj", SECOND);
        assert_eq!(o.status, Status::Ok, "{tier}: {o:?}");
        let got = changes(&o);
        let mut want: Vec<(String, String)> =
            [("edit.txt", "modified"), ("gone.txt", "deleted"), ("new-empty", "added"), ("newdir", "added")]
                .iter()
                .map(|(p, a)| ((*p).to_string(), (*a).to_string()))
                .collect();
        // WASI has no chmod: only the docker tier can change a mode.
        if tier == Tier::Docker {
            want.push(("run.sh".into(), "mode".into()));
        }
        assert_eq!(got, want, "{tier}: the change set is exact");
        assert_eq!(o.workspace.as_ref().and_then(|w| w.version), Some(2), "{tier}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read_to_string(dir.join("edit.txt")).expect("edit"), "one\nTWO\nthree\n");
        assert!(!dir.join("gone.txt").exists(), "{tier}");
        let mode = if tier == Tier::Docker { 0o755 } else { 0o644 };
        assert_eq!(std::fs::metadata(dir.join("run.sh")).expect("run.sh").permissions().mode() & 0o777, mode);
        // A run that changes nothing makes no version; one that fails keeps nothing.
        let o = run_in(&s, tier, "proj", "open('keep.txt').read()");
        assert_eq!(o.workspace.as_ref().map(|w| w.status.as_str()), Some("unchanged"), "{tier}: {o:?}");
        assert_eq!(o.result, Some(serde_json::json!("same\n")), "{tier}");
        let o = run_in(&s, tier, "proj", "open('keep.txt', 'w').write('lost')\nraise ValueError('no')");
        assert_eq!(o.status, Status::Exception, "{tier}: {o:?}");
        assert_eq!(o.workspace.as_ref().map(|w| w.status.as_str()), Some("discarded"), "{tier}");
        assert_eq!(std::fs::read_to_string(dir.join("keep.txt")).expect("keep"), "same\n", "{tier}");
        // Nothing of the runs' copies is left.
        let staging = home.path().join("workspaces/proj/staging");
        assert_eq!(std::fs::read_dir(staging).expect("staging").count(), 0, "{tier}");
        // Each version is in the audit log with its manifest's digest.
        s.flush_audit(Duration::from_secs(10)).expect("flush");
        let rows = terrarium::audit::tail(&home.path().join("audit.db"), usize::MAX).expect("rows");
        let created = rows.iter().filter(|r| r.kind == "workspace_commit" && r.data["action"] == "create").count();
        assert_eq!(created, 1, "{tier}: made on first use, and recorded");
        let commits: Vec<_> =
            rows.iter().filter(|r| r.kind == "workspace_commit" && r.data["action"].is_null()).collect();
        assert_eq!(commits.len(), 2, "{tier}");
        assert_eq!(commits[1].data["manifest_sha256"].as_str().map(str::len), Some(64), "{tier}");
        assert!(rows.iter().any(|r| r.kind == "workspace_discard"), "{tier}");
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn the_router_sends_a_workspace_past_the_interpreter_and_the_policy_names_who_may_use_one() {
    if !ready(Tier::Wasm) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let s = ws_sandbox(home.path(), ws_policy(""));
    let req = ExecRequest { workspace: Some("auto".into()), ..ExecRequest::new("open('a', 'w').write('x')") };
    let o = runtime().block_on(s.execute(req)).expect("run");
    assert_eq!((o.status, o.tier), (Status::Ok, Tier::Wasm), "{o:?}");
    assert!(o.route.as_deref().unwrap_or("").contains("rustpython has no file system"), "{:?}", o.route);
    // Only the workspaces the policy names.
    let strict = Policy::from_yaml(
        &format!("{}\nworkspaces:\n  allow: [docs]\n", terrarium::policy::DEFAULT_POLICY_YAML),
        "<strict>",
    )
    .expect("policy");
    let s = ws_sandbox(home.path(), strict);
    for (name, why) in [("other", "does not let runs use workspace"), ("../x", "is not a workspace name")] {
        let req = ExecRequest { workspace: Some(name.into()), ..ExecRequest::new("1") };
        let err = runtime().block_on(s.execute(req)).expect_err("refused");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
    let req = ExecRequest { workspace: Some("docs".into()), scratch: true, ..ExecRequest::new("1") };
    let err = runtime().block_on(s.execute(req)).expect_err("both");
    assert!(err.to_string().contains("either a scratch directory or a workspace"), "{err}");
    // The default policy allows none.
    let s = ws_sandbox(home.path(), Policy::default_policy());
    let req = ExecRequest { workspace: Some("docs".into()), ..ExecRequest::new("1") };
    assert!(runtime().block_on(s.execute(req)).is_err());
}

/// Runs the CLI with `TERRARIUM_HOME` = `home`.
fn cli(home: &Path, args: &[&str]) -> crate::common::Output {
    let h = home.to_string_lossy().into_owned();
    terrarium_env(args, b"", &[("TERRARIUM_HOME", h.as_str())])
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn rollback_restores_byte_identical_files_and_the_log_keeps_every_version() {
    if !ready(Tier::Wasm) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let (_p, policy_file) = crate::common::temp_file(
        "ws.yaml",
        format!(
            "{}\nworkspaces:\n  allow: [\"*\"]\n",
            terrarium::policy::DEFAULT_POLICY_YAML.replacen(r#"["math", "time", "json"]"#, r#"["math", "os"]"#, 1)
        )
        .as_bytes(),
    );
    let policy = policy_file.to_str().expect("utf-8");
    let out = cli(home.path(), &["workspace", "create", "site"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let write = "data = bytes(range(256)) * 300\nopen('blob.bin', 'wb').write(data)\nopen('page.html', 'w').write('<h1>v1</h1>\\n')";
    let run = |code: &str| {
        cli(home.path(), &["run", "--policy", policy, "--tier", "wasm", "--workspace", "site", "--json", "-c", code])
    };
    let out = run(write);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let first: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(first["workspace"]["version"], 1, "{first}");
    let v1_blob = std::fs::read(live(home.path(), "site").join("blob.bin")).expect("blob");
    let out = run(
        "import os\nopen('page.html', 'w').write('<h1>v2</h1>\\n')\nopen('blob.bin', 'wb').write(b'gone')\nos.mkdir('extra')",
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let diff = cli(home.path(), &["workspace", "diff", "site", "1", "2"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    assert!(diff.stdout.contains("-<h1>v1</h1>\n+<h1>v2</h1>"), "{}", diff.stdout);
    assert!(diff.stdout.contains("blob.bin: binary or large"), "{}", diff.stdout);
    let show = cli(home.path(), &["workspace", "show", "site", "1", "page.html"]);
    assert_eq!(show.stdout, "<h1>v1</h1>\n");
    let back = cli(home.path(), &["workspace", "rollback", "site", "1"]);
    assert_eq!(back.code, 0, "{}", back.stderr);
    let dir = live(home.path(), "site");
    assert_eq!(std::fs::read(dir.join("blob.bin")).expect("blob"), v1_blob, "byte-identical");
    assert_eq!(std::fs::read_to_string(dir.join("page.html")).expect("page"), "<h1>v1</h1>\n");
    assert!(!dir.join("extra").exists());
    let log = cli(home.path(), &["workspace", "log", "site"]);
    let versions: Vec<serde_json::Value> = log.stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(versions.len(), 4, "{}", log.stdout);
    assert_eq!(versions[2]["reason"], "run (no id) on wasm");
    assert!(versions[3]["reason"].as_str().unwrap_or("").starts_with("rollback to version 1"), "{}", log.stdout);
    assert_eq!(versions[3]["parent"], 2);
    // Exported, a version is the same bytes again.
    let export = home.path().join("export");
    let out = cli(home.path(), &["workspace", "export", "site", "2", export.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(export.join("blob.bin")).expect("exported"), b"gone");
    let list = cli(home.path(), &["workspace", "list"]);
    assert!(list.stdout.contains("\"name\":\"site\"") && list.stdout.contains("\"version\":3"), "{}", list.stdout);
    // Bad input: a clear error, exit 2.
    for args in
        [&["workspace", "show", "site", "9", "x"][..], &["workspace", "log", "nope"], &["workspace", "create", "a/b"]]
    {
        let out = cli(home.path(), args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn edits_behind_terrariums_back_are_named_by_verify_and_audited() {
    if !ready(Tier::Wasm) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let s = ws_sandbox(home.path(), ws_policy(""));
    let o = run_in(&s, Tier::Wasm, "proj", "open('a.txt', 'w').write('a')\nopen('b.txt', 'w').write('b')");
    assert_eq!(o.workspace.as_ref().and_then(|w| w.version), Some(1), "{o:?}");
    drop(s);
    let ok = cli(home.path(), &["workspace", "verify", "proj"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let dir = live(home.path(), "proj");
    std::fs::write(dir.join("a.txt"), "tampered").expect("edit");
    std::fs::remove_file(dir.join("b.txt")).expect("remove");
    std::fs::write(dir.join("c.txt"), "planted").expect("add");
    let out = cli(home.path(), &["workspace", "verify", "proj"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for line in [
        "{\"action\":\"modified\",\"path\":\"a.txt\"}",
        "{\"action\":\"deleted\",\"path\":\"b.txt\"}",
        "{\"action\":\"added\",\"path\":\"c.txt\"}",
    ] {
        assert!(out.stdout.contains(line), "{line} in {}", out.stdout);
    }
    let rows = terrarium::audit::tail(&home.path().join("audit.db"), usize::MAX).expect("rows");
    let drift = rows.iter().find(|r| r.kind == "workspace_drift").expect("drift audited");
    assert_eq!(drift.data["changes"], 3, "{:?}", drift.data);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_critical_change_set_waits_for_a_human_and_only_an_approved_one_counts() {
    if !ready(Tier::Wasm) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let s = ws_sandbox(home.path(), ws_policy("approvals:\n  critical: [workspace_change]\n  timeout: 60\n"));
    let approver = crate::functions::decide_from_cli(home.path().to_path_buf(), "approve");
    let o = run_in(&s, Tier::Wasm, "proj", "open('notes.txt', 'w').write('hello\\n')");
    let item = approver.join().expect("approver");
    assert_eq!(item["kind"], "workspace_change", "{item}");
    assert_eq!(item["subject"]["workspace"], "proj", "{item}");
    assert!(item["subject"]["diff"].as_str().unwrap_or("").contains("+hello"), "{item}");
    assert_eq!(item["subject"]["changes"][0]["path"], "notes.txt", "{item}");
    let w = o.workspace.clone().expect("report");
    assert_eq!((o.status, w.status.as_str(), w.version), (Status::Ok, "committed", Some(1)), "{o:?}");
    assert_eq!(item["subject"]["digest"].as_str(), w.digest.as_deref(), "the approver saw this change set");
    let notes = live(home.path(), "proj").join("notes.txt");
    assert_eq!(std::fs::read_to_string(&notes).expect("notes"), "hello\n");
    // Denied: nothing of it reaches the workspace.
    let approver = crate::functions::decide_from_cli(home.path().to_path_buf(), "deny");
    let o =
        run_in(&s, Tier::Wasm, "proj", "open('notes.txt', 'w').write('overwritten\\n')\nopen('more', 'w').write('x')");
    approver.join().expect("approver");
    let w = o.workspace.clone().expect("report");
    assert_eq!((o.status, w.status.as_str(), w.version), (Status::Denied, "denied", None), "{o:?}");
    assert!(o.error.as_ref().is_some_and(|e| e.message.contains("denied by alice")), "{o:?}");
    assert_eq!(std::fs::read_to_string(&notes).expect("notes"), "hello\n");
    assert!(!live(home.path(), "proj").join("more").exists());
    s.flush_audit(Duration::from_secs(10)).expect("flush");
    let rows = terrarium::audit::tail(&home.path().join("audit.db"), usize::MAX).expect("rows");
    let discard = rows.iter().find(|r| r.kind == "workspace_discard").expect("denial audited");
    assert_eq!(discard.data["status"], "denied");
    assert_eq!(discard.data["change_digest"].as_str().map(str::len), Some(64));
    assert!(rows.iter().any(|r| r.kind == "approval_completed"), "the approved one completed");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn over_http_runs_edit_a_workspace_the_operator_reviews_rolls_back_and_is_told_of_drift_within_seconds() {
    use crate::common::server::{ADMIN, SUBMIT, Server};
    if !ready(Tier::Wasm) {
        return;
    }
    let policy = format!(
        "{}\nworkspaces:\n  allow: [\"*\"]\n",
        terrarium::policy::DEFAULT_POLICY_YAML.replacen(r#"["math", "time", "json"]"#, r#"["math", "os"]"#, 1)
    );
    let server = Server::start(Some(&policy), &[]);
    let r = server.call("POST", "/v1/workspaces", Some(SUBMIT), Some(r#"{"name": "api"}"#));
    assert_eq!(r.status, 403, "workspaces are the operator's: {}", r.body);
    let r = server.call("POST", "/v1/workspaces", Some(ADMIN), Some(r#"{"name": "api"}"#));
    assert_eq!((r.status, r.json()["version"].clone()), (200, serde_json::json!(0)), "{}", r.body);
    for text in ["one", "two"] {
        let body = serde_json::json!({"code": format!("open('a.txt', 'w').write('{text}\\n')"), "tier": "wasm", "workspace": "api"});
        let r = server.call("POST", "/v1/execute", Some(SUBMIT), Some(&body.to_string()));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["workspace"]["status"], "committed", "{}", r.body);
    }
    let versions = server.call("GET", "/v1/workspaces/api/versions", Some(ADMIN), None).json();
    assert_eq!(versions.as_array().map(Vec::len), Some(3), "{versions}");
    let diff = server.call("GET", "/v1/workspaces/api/diff?from=1&to=2", Some(ADMIN), None).json();
    assert!(diff["diff"].as_str().unwrap_or("").contains("-one\n+two\n"), "{diff}");
    let manifest = server.call("GET", "/v1/workspaces/api/versions/1", Some(ADMIN), None).json();
    assert_eq!(manifest["entries"]["a.txt"]["size"], 4, "{manifest}");
    assert_eq!(manifest["manifest_sha256"], versions[1]["manifest_sha256"], "{manifest}");
    let file = server.call("GET", "/v1/workspaces/api/versions/1/files/a.txt", Some(ADMIN), None);
    assert_eq!((file.status, file.body.as_str()), (200, "one\n"));
    let r = server.call("POST", "/v1/workspaces/api/rollback", Some(ADMIN), Some(r#"{"version": 1}"#));
    assert_eq!(r.json()["version"], 3, "{}", r.body);
    let live = server.home.path().join("workspaces/api/live/a.txt");
    assert_eq!(std::fs::read_to_string(&live).expect("live"), "one\n");
    assert_eq!(server.call("GET", "/v1/workspaces/nope/versions", Some(ADMIN), None).status, 404);
    let r = server.call("GET", "/v1/workspaces/api/versions/1/files/..%2F..%2Faudit.db", Some(ADMIN), None);
    assert!(r.status == 400 || r.status == 404, "{} {}", r.status, r.body);
    // Behind the server's back: found by its watcher within seconds.
    assert_eq!(server.call("GET", "/v1/health", None, None).json()["workspaces_drifted"], 0);
    std::fs::write(&live, "tampered\n").expect("tamper");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while server.call("GET", "/v1/health", None, None).json()["workspaces_drifted"] != 1 {
        assert!(std::time::Instant::now() < until, "drift not seen within 10 s: {}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = server.call("GET", "/metrics", Some(ADMIN), None);
    assert!(metrics.body.contains("terrarium_workspaces_drifted 1"), "{}", metrics.body);
    let verify = server.call("POST", "/v1/workspaces/api/verify", Some(ADMIN), None).json();
    assert_eq!(verify["drift"][0]["path"], "a.txt", "{verify}");
    assert_eq!(verify["drift"][0]["action"], "modified", "{verify}");
    let rows = terrarium::audit::tail(&server.home.path().join("audit.db"), usize::MAX).expect("rows");
    assert!(
        rows.iter().any(|r| r.kind == "workspace_drift" && r.data["found_by"] == "watch"),
        "the watcher audited it"
    );
    assert!(rows.iter().any(|r| r.kind == "workspace_commit" && r.data["action"] == "rollback"), "rollback audited");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_caller_that_stops_waiting_cannot_leave_an_approved_change_undone_or_unrecorded() {
    if !ready(Tier::Wasm) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let s = std::sync::Arc::new(ws_sandbox(
        home.path(),
        ws_policy("approvals:\n  critical: [workspace_change]\n  timeout: 60\n"),
    ));
    let s2 = s.clone();
    let req = ExecRequest {
        tier: TierChoice::Fixed(Tier::Wasm),
        workspace: Some("proj".into()),
        ..ExecRequest::new("open('kept.txt', 'w').write('approved after the caller left')")
    };
    // The caller gives up while the change set waits for a human...
    let task = runtime().spawn(async move { s2.execute(req).await });
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while runtime().block_on(s.approvals().expect("queue").pending()).expect("pending") == 0 {
        assert!(std::time::Instant::now() < until, "nothing waited for approval");
        std::thread::sleep(Duration::from_millis(50));
    }
    task.abort();
    let _ = runtime().block_on(task);
    // ...and the human approves anyway, only now (an approver started earlier could
    // decide before this test saw the change set wait, and the caller would not have
    // left): the version is made and recorded.
    crate::functions::decide_from_cli(home.path().to_path_buf(), "approve").join().expect("approver");
    let kept = live(home.path(), "proj").join("kept.txt");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !kept.exists() {
        assert!(std::time::Instant::now() < until, "the approved change set was not committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        s.flush_audit(Duration::from_secs(10)).expect("flush");
        let rows = terrarium::audit::tail(&home.path().join("audit.db"), usize::MAX).expect("rows");
        let commit = rows.iter().any(|r| r.kind == "workspace_commit" && r.data["version"] == 1);
        let completed = rows.iter().any(|r| r.kind == "approval_completed");
        if commit && completed {
            break;
        }
        assert!(std::time::Instant::now() < until, "the commit or the approval's completion was not recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_session_settles_its_workspace_after_each_cell_that_ends_ok_and_sees_what_others_committed() {
    use terrarium::SessionOptions;
    for tier in [Tier::Wasm, Tier::Docker] {
        if !ready(tier) {
            continue;
        }
        let home = tempfile::tempdir().expect("home");
        let s = std::sync::Arc::new(ws_sandbox(home.path(), ws_policy("")));
        let options = |tier| SessionOptions {
            tier: TierChoice::Fixed(tier),
            workspace: Some("proj".into()),
            ..SessionOptions::default()
        };
        let err = runtime().block_on(s.session(options(Tier::Rustpython))).err().expect("no file system");
        assert!(err.to_string().contains("no file system"), "{err}");
        let mut session = runtime().block_on(s.session(options(tier))).expect("session");
        let mut cell = |code: &str| runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell");
        let report = |o: &Outcome| {
            let w = o.workspace.clone().expect("report");
            (w.status, w.version, w.changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>())
        };
        let o = cell("import os\nopen('a.txt', 'w').write('1')\nx = 1\nos.getcwd()");
        assert_eq!(o.result, Some(serde_json::json!("/workspace")), "{tier}: {o:?}");
        assert_eq!(report(&o), ("committed".into(), Some(1), vec!["a.txt".into()]), "{tier}");
        // A cell that fails keeps its changes in the copy, settled with the next ok cell.
        let o = cell("open('b.txt', 'w').write('2')\nraise ValueError('later')");
        assert_eq!((o.status, report(&o).0.as_str()), (Status::Exception, "held"), "{tier}: {o:?}");
        // Another run commits meanwhile.
        let other = run_in(&s, tier, "proj", "open('c.txt', 'w').write('3')");
        assert_eq!(other.workspace.as_ref().and_then(|w| w.version), Some(2), "{tier}: {other:?}");
        let o = cell("x += 1\nsorted(os.listdir('.'))");
        assert_eq!(o.result, Some(serde_json::json!(["a.txt", "b.txt"])), "{tier}: the copy before settling");
        assert_eq!(report(&o), ("committed".into(), Some(3), vec!["b.txt".into()]), "{tier}: {o:?}");
        // The copy now holds what the other run committed too.
        let o = cell("sorted(os.listdir('.')), x");
        assert_eq!(o.result, Some(serde_json::json!([["a.txt", "b.txt", "c.txt"], 2])), "{tier}: {o:?}");
        assert_eq!(report(&o).0, "unchanged", "{tier}");
        let dir = live(home.path(), "proj");
        for (f, text) in [("a.txt", "1"), ("b.txt", "2"), ("c.txt", "3")] {
            assert_eq!(std::fs::read_to_string(dir.join(f)).expect(f), text, "{tier}");
        }
        session.end("done");
        // Removed once the session's instance or container is gone.
        let staging = home.path().join("workspaces/proj/staging");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&staging).expect("staging").count() > 0 {
            assert!(std::time::Instant::now() < until, "{tier}: the session's copy is not removed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
