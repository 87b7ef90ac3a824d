//! Encryption at rest, through the real binary on real files: with a data key,
//! snippet text, outputs, and workspace contents never reach the disk in the
//! clear; the chain verifies without the key; a missing or wrong key is a clear
//! error and nothing is written; rotation keeps every row's MAC; and the backup
//! drill works sealed.

use std::path::{Path, PathBuf};

use crate::common::{Output, terrarium_env};

const SECRET_CODE: &str = "SECRET_CODE_7f3a";
const SECRET_OUTPUT: &str = "SECRET_OUTPUT_9c1d";
const SECRET_FILE: &str = "SECRET_FILE_44e0";

fn private_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(name);
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    d
}

/// The CLI with `TERRARIUM_HOME` = `home` and, when given, the data key file.
fn cli(home: &Path, key: Option<&Path>, args: &[&str]) -> Output {
    let home = home.to_string_lossy().into_owned();
    let key = key.map(|k| k.to_string_lossy().into_owned());
    let mut env = vec![("TERRARIUM_HOME", home.as_str())];
    if let Some(k) = &key {
        env.push(("TERRARIUM_DATA_KEY_FILE", k.as_str()));
    }
    terrarium_env(args, b"", &env)
}

/// Every file under `dir` whose bytes contain `needle`, except the workspaces'
/// live files (not sealed: runs and people use them as files).
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "live") {
                    continue;
                }
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
                found.push(p);
            }
        }
    }
    found
}

fn rows(home: &Path, key: Option<&Path>) -> Vec<serde_json::Value> {
    let out = cli(home, key, &["audit", "export"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    let out = cli(dir, None, &["data-key", "new", file.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("wrote data key "), "{}", out.stdout);
    file
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn stored_work_is_sealed_the_chain_verifies_without_the_key_and_rotation_keeps_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = private_dir(tmp.path(), "keys");
    let home = private_dir(tmp.path(), "home");
    let key1 = new_key(&keys, "k1");
    assert_eq!(std::fs::metadata(&key1).expect("key").permissions().mode() & 0o777, 0o600);
    let again = cli(&keys, None, &["data-key", "new", key1.to_str().expect("utf-8")]);
    assert_ne!(again.code, 0, "a key file is never overwritten");
    let k1 = Some(key1.as_path());

    // A run whose code and output are secrets, and a workspace file that is one.
    let (_p, policy) = crate::common::temp_file(
        "ws.yaml",
        format!("{}\nworkspaces:\n  allow: [\"*\"]\n", terrarium::policy::DEFAULT_POLICY_YAML).as_bytes(),
    );
    let policy = policy.to_str().expect("utf-8");
    let code = format!("x = '{SECRET_CODE}'\nraise ValueError('{SECRET_OUTPUT}')");
    let out = cli(&home, k1, &["run", "--json", "-c", &code]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains(SECRET_OUTPUT), "the caller sees its own output: {}", out.stdout);
    assert_eq!(cli(&home, k1, &["workspace", "create", "w"]).code, 0);
    let write = format!("open('f.txt', 'w').write('{SECRET_FILE}' * 5000)");
    let out = cli(&home, k1, &["run", "--policy", policy, "--tier", "wasm", "--workspace", "w", "-c", &write]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let sealed_objects: Vec<_> = std::fs::read_dir(home.join("workspaces/w/objects"))
        .expect("objects")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!sealed_objects.is_empty() && sealed_objects.iter().all(|n| n.ends_with(".sealed")), "{sealed_objects:?}");

    // On disk, nothing of it in the clear: database, its WAL, journals, objects.
    for secret in [SECRET_CODE, SECRET_OUTPUT, SECRET_FILE] {
        assert_eq!(files_holding(&home, secret), Vec::<PathBuf>::new(), "{secret} found in the clear");
    }
    let db = home.join("audit.db");
    let c = rusqlite::Connection::open(&db).expect("open");
    let kinds: Vec<(String, String)> = c
        .prepare("SELECT kind, typeof(data) FROM events")
        .expect("select")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .map(Result::unwrap)
        .collect();
    for (kind, ty) in &kinds {
        assert_eq!(ty, if kind == "breaker" { "text" } else { "blob" }, "{kind}");
    }
    drop(c);

    // With the key: everything reads back, and verifies, contents included.
    let with = rows(&home, k1);
    let request = with.iter().find(|r| r["kind"] == "request").expect("a request");
    let sha = request["data"]["code_sha256"].as_str().expect("sha");
    let shown = cli(&home, k1, &["audit", "code", sha]);
    assert_eq!(shown.stdout, code, "{}", shown.stderr);
    let outcome = with.iter().find(|r| r["kind"] == "outcome").expect("an outcome");
    assert!(outcome["data"].to_string().contains(SECRET_OUTPUT), "{outcome}");
    let verified = cli(&home, k1, &["audit", "verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert!(!verified.stdout.contains("not opened"), "{}", verified.stdout);
    let show = cli(&home, k1, &["workspace", "show", "w", "1", "f.txt"]);
    assert_eq!(show.stdout, SECRET_FILE.repeat(5000), "{}", show.stderr);

    // Without the key: the chain verifies; contents are unreadable, said so;
    // nothing is written (no row is added in the clear).
    let verified = cli(&home, None, &["audit", "verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert!(verified.stdout.contains("hash chain intact") && verified.stdout.contains("sealed values not opened"));
    let without = rows(&home, None);
    assert_eq!(without.len(), with.len());
    let hashes = |rows: &[serde_json::Value]| rows.iter().map(|r| r["hash"].clone()).collect::<Vec<_>>();
    assert_eq!(hashes(&without), hashes(&with), "the same rows, read without the key");
    let sealed = without.iter().find(|r| r["kind"] == "outcome").expect("outcome");
    assert!(sealed["data"]["sealed"].as_str().unwrap_or("").contains("no data key is set"), "{sealed}");
    for args in [&["audit", "code", sha][..], &["run", "-c", "print(1)"], &["workspace", "show", "w", "1", "f.txt"]] {
        let out = cli(&home, None, args);
        assert_ne!(out.code, 0, "{args:?} without the key: {}", out.stdout);
        assert!(
            out.stderr.contains("sealed under data key") && out.stderr.contains("no data key is set"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(&home.display().to_string()), "{}", out.stderr);
    }
    // Nor once the record of the key is deleted: the newest sealed row says it.
    rusqlite::Connection::open(&db).expect("open").execute_batch("DROP TABLE sealing").expect("drop");
    let out = cli(&home, None, &["run", "-c", "print(1)"]);
    assert!(out.code != 0 && out.stderr.contains("no data key is set"), "{}", out.stderr);
    assert_eq!(rows(&home, k1).len(), with.len(), "nothing was recorded without the key");

    // A wrong key: refused, named by id, nothing written.
    let key2 = new_key(&keys, "k2");
    let k2 = Some(key2.as_path());
    for args in [&["run", "-c", "print(1)"][..], &["audit", "verify"], &["audit", "tail"]] {
        let out = cli(&home, k2, args);
        assert_ne!(out.code, 0, "{args:?} with another key: {}", out.stdout);
        assert!(out.stderr.contains("the data key given is"), "{args:?}: {}", out.stderr);
    }

    // A sealed value moved to another row does not open there.
    let copy = tmp.path().join("moved.db");
    std::fs::copy(&db, &copy).expect("copy");
    let c = rusqlite::Connection::open(&copy).expect("open");
    c.execute_batch(
        "UPDATE events SET data = (SELECT data FROM events WHERE kind = 'request' LIMIT 1)
         WHERE seq = (SELECT seq FROM events WHERE kind = 'outcome' LIMIT 1)",
    )
    .expect("move");
    drop(c);
    let moved = cli(&home, k1, &["audit", "verify", "--db", copy.to_str().expect("utf-8")]);
    assert!(moved.stdout.contains("its sealed data does not open"), "{}{}", moved.stdout, moved.stderr);

    // Rotation: to key 2, from key 1; every row keeps its MAC; key 1 no longer works.
    let out = cli(&home, k2, &["data-key", "rotate", "--old", key1.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(report["audit"]["events"].as_u64().unwrap_or(0) >= 4, "{report}");
    assert!(report["workspaces"]["objects"].as_u64().unwrap_or(0) >= 1, "{report}");
    let rotated = rows(&home, k2);
    assert_eq!(rotated, with, "the same events, hashes included");
    let verified = cli(&home, k2, &["audit", "verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert_eq!(cli(&home, k2, &["workspace", "show", "w", "1", "f.txt"]).stdout, SECRET_FILE.repeat(5000));
    assert!(cli(&home, k1, &["run", "-c", "print(1)"]).stderr.contains("the data key given is"));
    assert_eq!(cli(&home, k2, &["run", "-c", "print(1)"]).code, 0);
    for secret in [SECRET_CODE, SECRET_OUTPUT, SECRET_FILE] {
        assert_eq!(files_holding(&home, secret), Vec::<PathBuf>::new(), "{secret} in the clear after rotation");
    }

    // The backup drill, sealed: the copy verifies without the key; a restore
    // without it is refused and installs nothing; with it, the chain goes on.
    let out_dir = private_dir(tmp.path(), "out");
    let backup = out_dir.join("b.db");
    let b = backup.to_str().expect("utf-8");
    let backed = rows(&home, k2);
    assert_eq!(cli(&home, k2, &["audit", "backup", b]).code, 0);
    let checked = cli(&home, None, &["audit", "verify", "--db", b]);
    assert_eq!(checked.code, 0, "{}", checked.stdout);
    let fresh = private_dir(tmp.path(), "fresh");
    let refused = cli(&fresh, None, &["audit", "restore", b]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("no data key is set"), "{}", refused.stderr);
    assert!(!fresh.join("audit.db").exists(), "a refused restore installed a database");
    let restored = cli(&fresh, k2, &["audit", "restore", b]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(cli(&fresh, k2, &["run", "-c", "print(3)"]).code, 0);
    let verified = cli(&fresh, k2, &["audit", "verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    let after = rows(&fresh, k2);
    assert_eq!(after[..backed.len()], backed[..], "the backup's events");
    assert_eq!(after[backed.len()]["kind"], "audit_restored", "then the restore, then the run");
}

/// A key that is not one, a key file open to others, both variables set: clear
/// errors that never repeat the key's text.
#[test]
fn a_bad_data_key_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = private_dir(tmp.path(), "home");
    let h = home.to_str().expect("utf-8");
    let open_key = tmp.path().join("open.key");
    std::fs::write(&open_key, format!("{}\n", "ab".repeat(32))).expect("write");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let fifo = tmp.path().join("fifo.key");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let hex = "cd".repeat(32);
    let grouped: String =
        hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":");
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("TERRARIUM_DATA_KEY_FILE", &grouped)], "looks like a key, not a path"),
        (&[("TERRARIUM_DATA_KEY_FILE", fifo.to_str().expect("utf-8"))], "not a regular file"),
        (&[("TERRARIUM_DATA_KEY_FILE", &format!("\"0x{hex}\".key"))], "looks like a key, not a path"),
        (&[("TERRARIUM_DATA_KEY", "not-a-key-at-all")], "64 hex digits"),
        (&[("TERRARIUM_DATA_KEY_FILE", open_key.to_str().expect("utf-8"))], "readable by others"),
        (&[("TERRARIUM_DATA_KEY_FILE", "/nonexistent/key")], "cannot open it"),
        (&[("TERRARIUM_DATA_KEY", &"ab".repeat(32)), ("TERRARIUM_DATA_KEY_FILE", "/x")], "both are set"),
    ];
    for (env, want) in cases {
        let mut env = env.to_vec();
        env.push(("TERRARIUM_HOME", h));
        let out = terrarium_env(&["run", "-c", "print(1)"], b"", &env);
        assert_ne!(out.code, 0, "{env:?}");
        assert!(out.stderr.contains(want), "{env:?}: {}", out.stderr);
        for secret in
            ["ab".repeat(32), hex.clone(), grouped.clone(), "cdcdcdcdcdcdcdcd".into(), "not-a-key-at-all".into()]
        {
            assert!(!out.stderr.contains(&secret), "{}", out.stderr);
        }
    }
}

/// A process that keeps the log open (a REPL, waiting for its next cell) with
/// the data key `key`, once it has run a first cell.
fn writer(home: &Path, key: Option<&Path>) -> std::process::Child {
    use std::io::{BufRead as _, Write as _};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"));
    cmd.arg("repl").env("TERRARIUM_HOME", home).env_remove("TERRARIUM_DATA_KEY_FILE");
    if let Some(k) = key {
        cmd.env("TERRARIUM_DATA_KEY_FILE", k);
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn a repl");
    child.stdin.as_mut().expect("stdin").write_all(b"print('ready')\n").expect("a cell");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    while !line.contains("ready") {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "the repl ended before its first cell");
    }
    child
}

/// A log in use by a process without the key is not sealed under it by another
/// (which would leave the first writing in the clear beside sealed rows); a
/// rotation does not run while any process writes the log.
#[test]
fn a_log_is_sealed_and_rotated_only_while_nobody_else_writes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = private_dir(tmp.path(), "keys");
    let home = private_dir(tmp.path(), "home");
    let (key1, key2) = (new_key(&keys, "k1"), new_key(&keys, "k2"));
    let mut plain = writer(&home, None);
    let out = cli(&home, Some(&key1), &["run", "-c", "print(1)"]);
    assert_ne!(out.code, 0, "sealed while a process without the key writes: {}", out.stdout);
    assert!(out.stderr.contains("other processes write this log without the data key"), "{}", out.stderr);
    let _ = plain.kill();
    let _ = plain.wait();
    assert_eq!(cli(&home, Some(&key1), &["run", "-c", "print(1)"]).code, 0);
    let mut sealed = writer(&home, Some(&key1));
    let out = cli(&home, Some(&key2), &["data-key", "rotate", "--old", key1.to_str().expect("utf-8")]);
    assert_ne!(out.code, 0, "rotated under a running writer: {}", out.stdout);
    assert!(out.stderr.contains("a process still writes this log"), "{}", out.stderr);
    let _ = sealed.kill();
    let _ = sealed.wait();
    let out = cli(&home, Some(&key2), &["data-key", "rotate", "--old", key1.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let verified = cli(&home, Some(&key2), &["audit", "verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
}
