//! The audit log on real SQLite files: the hash chain catches edits, deletions and
//! reorderings; an outage loses nothing; the sandbox records every request and its
//! outcome; a process killed in a burst leaves a log that verifies and holds every
//! request whose outcome it returned.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use terrarium::audit::{self, AuditLog, Event, EventKind};
use terrarium::breaker::Breaker;
use terrarium::policy::BreakerPolicy;
use terrarium::{ExecRequest, Policy, Sandbox};

use crate::common::{runtime, terrarium_env};

/// The `database` breaker with a short recovery timeout (tests wait for it).
fn database_breaker() -> Breaker {
    Breaker::new(
        "database",
        BreakerPolicy { failure_threshold: 3, recovery_timeout: Duration::from_millis(100), log_failures: true },
    )
}

fn log_with(path: &Path, n: usize) -> AuditLog {
    let log = AuditLog::open(path, database_breaker()).expect("open");
    for i in 0..n {
        let e = Event {
            kind: EventKind::Request,
            request_id: Some(format!("r{i}")),
            data: serde_json::json!({"i": i}),
            code: None,
        };
        log.record(e).expect("record");
    }
    log.flush(Duration::from_secs(5)).expect("flush");
    log
}

fn sql(path: &Path, statement: &str) {
    let c = rusqlite::Connection::open(path).expect("open for tampering");
    c.execute_batch(statement).expect("tamper");
}

fn fresh(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    log_with(&path, n).close();
    (dir, path)
}

#[test]
fn an_intact_log_verifies() {
    let (_d, path) = fresh(10);
    let (rows, problems) = audit::verify(&path).expect("verify");
    assert_eq!((rows, problems), (10, Vec::<String>::new()));
}

#[test]
fn an_edited_row_is_named() {
    let (_d, path) = fresh(10);
    sql(&path, "UPDATE events SET data = '{\"i\": 99}' WHERE seq = 4");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert_eq!(problems, ["row 4: its content does not match its MAC (edited or forged)"]);
}

#[test]
fn an_edited_column_of_any_kind_is_named() {
    // See: issue 15 (the id column could be edited and verify still said intact).
    for (column, value) in [("uid", "'forged'"), ("ts_us", "1"), ("kind", "'nothing'"), ("request_id", "'r'")] {
        let (_d, path) = fresh(6);
        sql(&path, &format!("UPDATE events SET {column} = {value} WHERE seq = 3"));
        let (_, problems) = audit::verify(&path).expect("verify");
        assert_eq!(problems, ["row 3: its content does not match its MAC (edited or forged)"], "{column}");
    }
}

#[test]
fn edited_stored_code_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, database_breaker()).expect("open");
    let e = Event {
        kind: EventKind::Request,
        request_id: None,
        data: serde_json::json!({}),
        code: Some("print(1)".into()),
    };
    log.record(e).expect("record");
    log.flush(Duration::from_secs(5)).expect("flush");
    log.close();
    sql(&path, "UPDATE code SET text = 'print(2)'");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("stored code ") && problems[0].ends_with("its text does not match its hash (edited)")
    );
}

#[test]
fn a_deleted_row_is_named() {
    let (_d, path) = fresh(10);
    sql(&path, "DELETE FROM events WHERE seq = 5");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.starts_with("rows 5..5 are missing")), "{problems:?}");
    let (_d, path) = fresh(10);
    sql(&path, "DELETE FROM events WHERE seq >= 9");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.contains("rows 9..10 are missing")), "the newest rows: {problems:?}");
}

#[test]
fn a_swapped_pair_is_named() {
    let (_d, path) = fresh(10);
    // Swap everything but the position of rows 3 and 6, hashes included.
    sql(
        &path,
        "UPDATE events SET seq = -3 WHERE seq = 3;
         UPDATE events SET seq = 3 WHERE seq = 6;
         UPDATE events SET seq = 6 WHERE seq = -3;",
    );
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.starts_with("row 3:")), "{problems:?}");
}

#[test]
fn an_outage_keeps_events_in_the_journal_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = log_with(&path, 5);
    // Another process holds the write lock: the database is unavailable.
    let blocker = rusqlite::Connection::open(&path).expect("open");
    blocker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    for i in 0..20 {
        let e = Event {
            kind: EventKind::Execute,
            request_id: Some(format!("d{i}")),
            data: serde_json::json!(i),
            code: None,
        };
        log.record(e).expect("acknowledged once in the journal");
    }
    assert!(log.flush(Duration::from_millis(300)).is_err(), "the database is locked: nothing can be flushed");
    let journal = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("audit.db.journal."))
        .expect("a journal");
    assert!(journal.metadata().expect("metadata").len() > 0, "the events wait in the journal");
    blocker.execute_batch("ROLLBACK").expect("unlock");
    drop(blocker);
    // The breaker opened; after its recovery timeout the writer's retry replays the
    // journal.
    log.flush(Duration::from_secs(5)).expect("flushed once the database is back");
    let rows = audit::tail(&path, usize::MAX).expect("tail");
    let during = rows.iter().filter(|r| r.kind == "execute").count();
    assert_eq!(during, 20, "every event written during the outage is in the database");
    let ids: Vec<&str> = rows.iter().filter(|r| r.kind == "execute").filter_map(|r| r.request_id.as_deref()).collect();
    assert_eq!(ids, (0..20).map(|i| format!("d{i}")).collect::<Vec<_>>(), "in order");
    assert_eq!(audit::verify(&path).expect("verify").1, Vec::<String>::new());
}

#[test]
fn the_sandbox_records_each_request_and_its_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    let s =
        Sandbox::builder().policy(Policy::default_policy()).isolated(isolated).audit(&path).build().expect("sandbox");
    for (i, code) in ["1 + 1", "1/0", "import os"].iter().enumerate() {
        runtime().block_on(s.execute(ExecRequest::new(*code).with_id(format!("q{i}")))).expect("run");
    }
    s.flush_audit(Duration::from_secs(5)).expect("flush");
    let rows = audit::tail(&path, usize::MAX).expect("tail");
    let kinds = |id: &str| -> Vec<&str> {
        rows.iter().filter(|r| r.request_id.as_deref() == Some(id)).map(|r| r.kind.as_str()).collect()
    };
    // H15: a client's id is kept in its own namespace, and every event names the caller.
    assert_eq!(kinds("req:local:q0"), ["request", "route", "outcome"]);
    assert_eq!(kinds("req:local:q1"), ["request", "route", "outcome"]);
    assert!(kinds("q0").is_empty(), "a client id is never used bare");
    assert!(rows.iter().filter(|r| r.request_id.is_some()).all(|r| r.data["caller"] == "local"), "{rows:?}");
    let q2 = kinds("req:local:q2");
    assert_eq!((q2.first(), q2.last()), (Some(&"request"), Some(&"outcome")), "{q2:?}");
    assert!(q2.contains(&"route") && q2.contains(&"denial"), "{q2:?}");
    let outcome = rows.iter().rfind(|r| r.kind == "outcome").expect("outcome");
    assert_eq!(outcome.data["status"], "denied");
    // Refused before running: recorded, without its text.
    let huge = "x = 1\n".repeat(300_000);
    let r = runtime().block_on(s.execute(ExecRequest::new(huge).with_id("big")));
    assert!(matches!(r, Err(terrarium::SandboxError::InvalidRequest(_))), "{r:?}");
    s.flush_audit(Duration::from_secs(5)).expect("flush");
    let last = audit::tail(&path, 1).expect("tail");
    assert_eq!((last[0].kind.as_str(), last[0].request_id.as_deref()), ("request", Some("req:local:big")));
    assert!(last[0].data["refused"].as_str().is_some_and(|m| m.contains("max_code_size")), "{:?}", last[0].data);
    let big = last[0].data["code_sha256"].as_str().expect("sha");
    assert_eq!(audit::code(&path, big).expect("code"), None, "an oversized snippet's text is not stored");
    let sha = rows[0].data["code_sha256"].as_str().expect("sha");
    assert_eq!(audit::code(&path, sha).expect("code").as_deref(), Some("1 + 1"));
}

#[test]
fn the_command_line_reads_and_verifies_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().to_str().expect("utf-8");
    let env = [("TERRARIUM_HOME", home)];
    assert_eq!(terrarium_env(&["run", "-c", "print(1)"], b"", &env).code, 0);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("audit.db")).expect("audit.db").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the log holds snippets' source: owner only, got {mode:o}");
    }
    let out = terrarium_env(&["audit", "tail", "-n", "5"], b"", &env);
    let kinds: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["request", "route", "outcome"], "{}", out.stderr);
    let out = terrarium_env(&["audit", "show", "1"], b"", &env);
    assert!(out.stdout.contains("\"request\"") && out.stdout.ends_with("print(1)\n"), "{}", out.stdout);
    let out = terrarium_env(&["audit", "verify"], b"", &env);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let backup = dir.path().join("copy.db");
    let out = terrarium_env(&["audit", "backup", backup.to_str().expect("utf-8")], b"", &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(audit::verify(&backup).expect("verify backup"), (3, Vec::new()), "a backup verifies on its own");
    sql(&dir.path().join("audit.db"), "UPDATE events SET kind = 'nothing' WHERE seq = 1");
    let out = terrarium_env(&["audit", "verify"], b"", &env);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("row 1: its content does not match its MAC (edited or forged)"), "{}", out.stdout);
}

#[test]
fn a_process_killed_mid_burst_leaves_every_answered_request_in_a_log_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .arg("batch")
        .env("TERRARIUM_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn batch");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        for i in 0..1000 {
            if writeln!(stdin, "{{\"id\": \"k{i}\", \"code\": \"{i} + 1\"}}").is_err() {
                break;
            }
        }
        // Keep stdin open: the batch is killed, it does not end.
        std::thread::sleep(Duration::from_secs(60));
    });
    let mut answered = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while answered.len() < 300 {
        let line = lines.next().expect("an outcome line").expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        answered.push(v["id"].as_str().expect("id").to_string());
    }
    // SIGKILL, mid-burst.
    child.kill().expect("kill");
    let _ = child.wait();
    let path = dir.path().join("audit.db");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert_eq!(problems, Vec::<String>::new());
    let rows = audit::tail(&path, usize::MAX).expect("tail");
    let recorded: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.kind == "outcome")
        .filter_map(|r| r.request_id.as_deref()?.rsplit(':').next())
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !recorded.contains(id.as_str())).collect();
    assert!(missing.is_empty(), "answered but not in the log: {missing:?}");
}

#[test]
fn breaker_transitions_are_recorded_and_shown_by_terrarium_breakers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    let home = dir.path().join("home");
    let env =
        [("TERRARIUM_HOME", home.to_str().expect("utf-8")), ("DOCKER_HOST", &format!("unix://{}", sock.display()))];
    // Requests run one per core at once: by the twentieth, at least three have
    // failed on any machine of up to 16 cores.
    let lines: String = (0..20).map(|i| format!("{{\"id\": {i}, \"code\": \"1\"}}\n")).collect();
    let out = terrarium_env(&["batch", "--tier", "docker"], lines.as_bytes(), &env);
    let outcomes: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(outcomes.len(), 20, "{}", out.stderr);
    let last = outcomes[19]["error"]["message"].as_str().unwrap_or_default();
    assert!(last.contains("breaker docker open"), "the last request should fail fast: {last}");
    let out = terrarium_env(&["breakers", "--json"], b"", &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let docker = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .find(|v| v["name"] == "docker")
        .expect("a docker breaker");
    assert_eq!(docker["state"], "open", "{docker}");
    assert!(docker["reason"].as_str().unwrap_or_default().contains("no Docker engine answers"), "{docker}");
    assert_eq!(audit::verify(&home.join("audit.db")).expect("verify").1, Vec::<String>::new());
}

#[test]
fn retention_deletes_old_events_and_the_rest_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = log_with(&path, 5);
    std::thread::sleep(Duration::from_millis(5));
    let cutoff = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros();
    std::thread::sleep(Duration::from_millis(5));
    for i in 0..5 {
        log.record(Event { kind: EventKind::Execute, request_id: None, data: serde_json::json!(i), code: None })
            .expect("record");
    }
    log.flush(Duration::from_secs(5)).expect("flush");
    assert_eq!(audit::prune_before(&path, i64::try_from(cutoff).expect("fits")).expect("prune"), 5);
    let (rows, problems) = audit::verify(&path).expect("verify");
    assert_eq!((rows, problems), (5, Vec::<String>::new()));
    assert!(audit::tail(&path, 10).expect("tail").iter().all(|r| r.kind == "execute"));
    // Deleting one of the kept rows is still caught.
    sql(&path, "DELETE FROM events WHERE seq = 8");
    assert!(audit::verify(&path).expect("verify").1.iter().any(|p| p.starts_with("rows 8..8 are missing")));
}

// H4: tampering the outside review made that `verify` did not see.

#[test]
fn h4_deleting_the_newest_rows_with_the_head_is_named() {
    let (_d, path) = fresh(6);
    sql(&path, "DELETE FROM events WHERE seq > 4");
    std::fs::remove_file(path.with_file_name("audit.db.head")).expect("head");
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.contains("head file") && p.contains("missing")), "{problems:?}");
}

#[test]
fn h4_a_made_up_retention_anchor_is_named() {
    let (_d, path) = fresh(6);
    // Delete the oldest rows and anchor the rest at the last deleted row's hash.
    sql(
        &path,
        "INSERT OR REPLACE INTO anchor (id, seq, hash) SELECT 1, seq, hash FROM events WHERE seq = 3;
         DELETE FROM events WHERE seq <= 3",
    );
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.contains("anchor") && p.contains("not authentic")), "{problems:?}");
    // Real retention still verifies.
    let (_d, path) = fresh(6);
    assert!(audit::prune_before(&path, i64::MAX).expect("prune") > 0);
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().all(|p| !p.contains("anchor")), "{problems:?}");
}

#[test]
fn h4_a_recomputed_unkeyed_chain_is_named() {
    let (_d, path) = fresh(4);
    // Edit a row and recompute every hash with the unkeyed formula.
    sql(&path, "UPDATE events SET data = '{\"i\": 99}' WHERE seq = 2");
    let c = rusqlite::Connection::open(&path).expect("db");
    let rows: Vec<(i64, String, i64, String, Option<String>, String)> = c
        .prepare("SELECT seq, uid, ts_us, kind, request_id, data FROM events ORDER BY seq")
        .expect("select")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = "0".repeat(64);
    for (seq, uid, ts, kind, rid, data) in rows {
        let hash = unkeyed_hash(&[
            "v2",
            &prev,
            &seq.to_string(),
            &uid,
            &ts.to_string(),
            &kind,
            rid.as_deref().unwrap_or(""),
            &data,
        ]);
        c.execute("UPDATE events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3", rusqlite::params![prev, hash, seq])
            .expect("update");
        prev = hash;
    }
    drop(c);
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(!problems.is_empty(), "a recomputed chain verified");
}

/// The chain's unkeyed formula (length-prefixed parts, sha256, hex).
fn unkeyed_hash(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn h4_replaced_stored_code_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    let sandbox =
        Sandbox::builder().policy(Policy::default_policy()).isolated(isolated).audit(&path).build().expect("sandbox");
    runtime().block_on(sandbox.execute(ExecRequest::new("print('honest')"))).expect("run");
    sandbox.flush_audit(Duration::from_secs(5)).expect("flush");
    drop(sandbox);
    // Replace the text and its key together: the text still hashes to its key.
    let forged = "print(42)";
    sql(
        &path,
        &format!(
            "DELETE FROM code; INSERT INTO code (sha256, text) VALUES ('{}', '{forged}')",
            audit::sha256_hex(forged.as_bytes())
        ),
    );
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.contains("is not stored")), "{problems:?}");
}

#[test]
fn h4_a_journal_dropped_into_the_directory_is_not_replayed() {
    let (dir, path) = fresh(2);
    // A backdated event in a journal named like one of a process that is gone.
    let forged = r#"{"uid":"ffffffffffffffff0000000000000001","ts_us":1,"kind":"approval_approved","request_id":"approval-7","data":"{}","code":null}"#;
    let name = dir.path().join("audit.db.journal.999999.1");
    std::fs::write(&name, format!("{}\n{} {}\n", forged, "0".repeat(64), forged)).expect("journal");
    let (rows, problems) = audit::verify(&path).expect("verify");
    assert_eq!(rows, 2, "a forged event was replayed: {problems:?}");
    assert!(problems.iter().any(|p| p.contains("does not vouch for")), "{problems:?}");
    assert!(!name.exists(), "the journal is set aside");
}

#[test]
fn h4_an_approval_completed_without_its_approval_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, database_breaker()).expect("open");
    for kind in [EventKind::ApprovalRequested, EventKind::ApprovalCompleted] {
        let e = Event { kind, request_id: Some("approval-1".into()), data: serde_json::json!({}), code: None };
        log.record(e).expect("record");
    }
    log.flush(Duration::from_secs(5)).expect("flush");
    log.close();
    let (_, problems) = audit::verify(&path).expect("verify");
    assert!(problems.iter().any(|p| p.contains("approval-1 completed without an approval_approved")), "{problems:?}");
}

/// A2: rows deleted before a writer appends are recorded in the chain itself (a
/// `chain_break` row), so a later write does not hide the deletion.
#[test]
fn h4_deleting_the_newest_rows_then_writing_again_is_named() {
    for remove_head in [false, true] {
        let (_d, path) = fresh(6);
        sql(&path, "DELETE FROM events WHERE seq > 3");
        if remove_head {
            std::fs::remove_file(path.with_file_name("audit.db.head")).expect("head");
        }
        log_with(&path, 2).close();
        let (_, problems) = audit::verify(&path).expect("verify");
        assert!(problems.iter().any(|p| p.contains("changed behind it")), "head removed {remove_head}: {problems:?}");
    }
}

/// A3: journal lines are chained: a line dropped from a journal, or the lines
/// reordered, stops its replay there and sets the journal aside, named by verify.
#[test]
fn h4_a_journal_cut_or_reordered_is_named() {
    for tamper in ["drop the first line", "reverse the lines"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        log_with(&path, 1).close();
        // The database refuses new rows: the run's events stay in its journal.
        sql(&path, "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'refused'); END;");
        let home = dir.path().to_str().expect("utf-8");
        let _ = terrarium_env(&["run", "-c", "print(1)"], b"", &[("TERRARIUM_HOME", home)]);
        sql(&path, "DROP TRIGGER refuse");
        let journal = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("audit.db.journal.")))
            .expect("the run left its journal");
        let text = std::fs::read_to_string(&journal).expect("journal");
        let mut lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text}");
        if tamper == "drop the first line" {
            lines.remove(0);
        } else {
            lines.reverse();
        }
        std::fs::write(&journal, format!("{}\n", lines.join("\n"))).expect("tamper");
        let (_, problems) = audit::verify(&path).expect("verify");
        assert!(problems.iter().any(|p| p.contains("does not vouch for")), "{tamper}: {problems:?}");
    }
}

/// The backup drill: a backup verifies on its own, restores into a fresh state
/// directory, and the next process there continues its chain; a backup that does
/// not verify, or a directory that has a log, is refused.
#[test]
fn a_backup_verifies_restores_into_a_fresh_home_and_the_next_process_continues_its_chain() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        d.to_str().expect("utf-8").to_string()
    };
    let (live, fresh, other, out) = (mk("live"), mk("fresh"), mk("other"), mk("out"));
    let cli = |home: &str, args: &[&str]| terrarium_env(args, b"", &[("TERRARIUM_HOME", home)]);
    for code in ["print(1)", "print(2)"] {
        assert_eq!(cli(&live, &["run", "-c", code]).code, 0);
    }
    let copy = format!("{out}/b.db");
    let backed = cli(&live, &["audit", "backup", &copy]);
    assert_eq!(backed.code, 0, "{}", backed.stderr);
    let checked = cli(&live, &["audit", "verify", "--db", &copy]);
    assert_eq!((checked.code, checked.stdout.trim()), (0, "ok: 6 events, hash chain intact"), "{}", checked.stderr);

    let restored = cli(&fresh, &["audit", "restore", &copy]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(cli(&fresh, &["run", "-c", "print(3)"]).code, 0);
    let verified = cli(&fresh, &["audit", "verify"]);
    assert_eq!((verified.code, verified.stdout.trim()), (0, "ok: 10 events, hash chain intact"), "{}", verified.stdout);
    let rows = |home: &str| -> Vec<serde_json::Value> {
        cli(home, &["audit", "export"]).stdout.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
    };
    let (before, after) = (rows(&live), rows(&fresh));
    assert_eq!(after[..6], before[..6], "the restored events are the backup's, hashes included");
    assert_eq!((after[6]["kind"].as_str(), after[6]["data"]["last_seq"].as_i64()), (Some("audit_restored"), Some(6)));
    assert_eq!(after[7]["kind"], "request", "the next process appends after the restore: {:?}", after[7]);

    // Never over a log, never a backup that does not verify.
    let again = cli(&fresh, &["audit", "restore", &copy]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("a log is there already"), "{}", again.stderr);
    sql(Path::new(&copy), "UPDATE events SET data = '{}' WHERE seq = 2");
    let forged = cli(&other, &["audit", "restore", &copy]);
    assert_ne!(forged.code, 0);
    assert!(forged.stderr.contains("does not verify") && forged.stderr.contains("row 2"), "{}", forged.stderr);
    assert!(!Path::new(&other).join("audit.db").exists(), "a refused restore left a database");
    assert_eq!(std::fs::read_dir(&other).expect("ls").count(), 0, "a refused restore left its staging copy");

    // A cut-down backup carrying another log's head, and a backup whose approvals
    // table was written by hand, do not verify.
    let (a, b) = (format!("{out}/a.db"), format!("{out}/b2.db"));
    assert_eq!(cli(&live, &["audit", "backup", &a]).code, 0);
    assert_eq!(cli(&fresh, &["audit", "backup", &b]).code, 0);
    sql(Path::new(&a), "DELETE FROM events WHERE seq > 4");
    std::fs::copy(format!("{b}.head"), format!("{a}.head")).expect("copy head");
    let cut = cli(&live, &["audit", "verify", "--db", &a]);
    assert_eq!(cut.code, 1, "{}", cut.stdout);
    let forged_head = cli(&other, &["audit", "restore", &a]);
    assert_ne!(forged_head.code, 0, "{}", forged_head.stdout);
    let hand = format!("{out}/hand.db");
    assert_eq!(cli(&live, &["audit", "backup", &hand]).code, 0);
    sql(
        Path::new(&hand),
        "INSERT INTO approvals (kind, subject, reason, status, created_us, deadline_us, decided_by, decided_us) \
         VALUES ('policy_change', '{}', 'r', 'approved', 1, 9999999999999999, 'alice', 9999999999999999)",
    );
    let written = cli(&live, &["audit", "verify", "--db", &hand]);
    assert!(written.code == 1 && written.stdout.contains("the log has no such decision"), "{}", written.stdout);
}
