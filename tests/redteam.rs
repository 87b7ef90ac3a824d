//! `terrarium redteam`, run as users run it: the real binary, real tiers, a real
//! harness. The full corpus on every tier runs in `scripts/test` (CI); these tests
//! check that the harness sees escapes (a control that must fail), refuses bad
//! corpora and fails loudly on a tier that is not there.

use crate::common::{readable_dir, temp_file, terrarium};

fn corpus_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write corpus");
    }
    dir
}

fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}"))
}

#[test]
fn a_slice_of_the_corpus_with_variants_is_contained_on_the_interpreter_tier() {
    let out = terrarium(
        &["redteam", "--tiers", "rustpython", "--variants", "2", "--seed", "7", "--only", "subclasses", "--json"],
        b"",
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = report(&out.stdout);
    assert_eq!(r["passed"], true);
    let row = &r["matrix"][0];
    assert_eq!(row["category"], "introspection");
    assert!(row["attempted"].as_u64().unwrap_or(0) >= 4, "attacks and their variants ran: {row}");
    assert_eq!(row["attempted"], row["contained"]);
    assert_eq!(r["parity"][0]["disagreements"], 0);
}

/// The control: a policy that grants the harness's own directory to the wasm tier
/// lets the snippet print the planted secret, and the harness must call that an
/// escape and exit 1.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_planted_secret_that_leaves_is_an_escape() {
    let work = readable_dir();
    let policy = format!(
        "{}terrarium:\n  read_only_mounts:\n    - source: {}\n      target: /data\n",
        terrarium::policy::DEFAULT_POLICY_YAML,
        work.path().display()
    );
    let (_p, policy_path) = temp_file("policy.yaml", policy.as_bytes());
    let corpus = corpus_dir(&[(
        "control.yaml",
        "category: filesystem\nattacks:\n  - name: granted_mount_read\n    effect: secret_read\n    code: print(open('/data/w/secret.txt').read())\n",
    )]);
    let out = terrarium(
        &[
            "redteam",
            "--policy",
            &policy_path.to_string_lossy(),
            "--tiers",
            "wasm",
            "--variants",
            "0",
            "--corpus",
            &corpus.path().to_string_lossy(),
            "--workdir",
            // A new directory inside the mounted one.
            &work.path().join("w").to_string_lossy(),
            "--json",
        ],
        b"",
    );
    assert_eq!(out.code, 1, "an escape fails the run: {}\n{}", out.stdout, out.stderr);
    let r = report(&out.stdout);
    assert_eq!(r["passed"], false);
    assert_eq!(r["matrix"][0]["escaped"], 1, "{r}");
    let failure = &r["failures"][0];
    assert_eq!(failure["kind"], "escaped");
    assert_eq!(failure["attack"], "granted_mount_read");
    assert!(failure["detail"].as_str().unwrap_or_default().contains("secret_read"), "{failure}");
}

#[test]
fn bad_corpora_and_options_are_usage_errors() {
    let bad = corpus_dir(&[("x.yaml", "category: network\nattacks:\n  - {name: a, effect: teleport, code: x}\n")]);
    let out = terrarium(&["redteam", "--tiers", "rustpython", "--corpus", &bad.path().to_string_lossy()], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("effect \"teleport\""), "{}", out.stderr);
    let empty = corpus_dir(&[]);
    let out = terrarium(&["redteam", "--corpus", &empty.path().to_string_lossy()], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no .yaml corpus files"), "{}", out.stderr);
    let out = terrarium(&["redteam", "--tiers", "quantum"], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = terrarium(&["redteam", "--tiers", "rustpython", "--only", "no_such_attack_anywhere"], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = terrarium(&["redteam", "--tiers", "rustpython", "--jobs", "0"], b"");
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn a_tier_that_is_not_there_fails_the_run_saying_how_to_set_it_up() {
    let out = crate::common::terrarium_env(
        &["redteam", "--tiers", "docker", "--only", "tcp_loopback"],
        b"",
        &[("DOCKER_HOST", "unix:///nonexistent/terrarium-test.sock")],
    );
    assert_eq!(out.code, 5, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("tier docker is unavailable"), "{}", out.stderr);
    assert!(out.stderr.contains("scripts/setup-docker"), "{}", out.stderr);
}
