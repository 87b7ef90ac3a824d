//! Attacks on what surrounds the sandbox: Terrarium's own files and the directories
//! it hands to sandboxes, by a second local user (uid 65534, `nobody`), against the
//! real binary. Named after the findings of the outside review behind issue 16.
//!
//! These tests act as another user, so they need root; run as another user they
//! fail saying so (they are not skipped).
//!
//! See: issue 16.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::common::terrarium_env;

/// The second local user.
const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid cannot fail and has no side effects.
    #[allow(unsafe_code, reason = "libc::geteuid has no safe wrapper in std")]
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests act as a second local user (uid {NOBODY}): run them as root (CI does)");
}

/// Runs `script` with `sh -c` as uid 65534: what the other user does.
fn as_nobody(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .status()
        .expect("sh as nobody");
    assert!(status.success(), "as uid {NOBODY}: {script}");
}

/// A directory other users can enter (the test's root; tempdirs are 0700).
fn shared_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

/// A directory `name` in `root` that the other user owns.
fn theirs(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("their directory");
    chown(&dir, NOBODY);
    dir
}

fn run_with_home(home: &Path, extra: &[(&str, &str)]) -> crate::common::Output {
    let mut env = vec![("TERRARIUM_HOME", home.to_str().expect("utf-8"))];
    env.extend_from_slice(extra);
    terrarium_env(&["run", "-c", "print(1)"], b"", &env)
}

#[test]
fn h1_a_state_directory_another_user_created_is_refused() {
    require_root();
    let root = shared_root();
    let victim = root.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // The other user pre-creates the state directory and plants links where
    // Terrarium keeps its head file and database.
    let state = root.path().join("state");
    std::fs::create_dir(&state).expect("state");
    chown(&state, NOBODY);
    as_nobody(&format!(
        "chmod 777 {s} && ln -s {v} {s}/audit.db.head && ln -s {v} {s}/audit.db",
        s = state.display(),
        v = victim.display()
    ));
    let out = run_with_home(&state, &[]);
    assert_ne!(out.code, 0, "ran with another user's state directory: {out:?}");
    assert!(out.stderr.contains(&state.display().to_string()) && out.stderr.contains("owned by uid 65534"), "{out:?}");
    let meta = std::fs::metadata(&victim).expect("victim");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep", "the link's target was written");
    assert_eq!(meta.mode() & 0o777, 0o644, "the link's target was chmod-ed");
}

#[test]
fn h1_a_state_directory_under_a_directory_others_can_write_is_refused() {
    require_root();
    let root = shared_root();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).expect("shared");
    // World-writable without the sticky bit: the other user could rename our
    // directory away and put a link in its place.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let state = shared.join("state");
    let out = run_with_home(&state, &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("writable by other users"), "{out:?}");
    // A private one of our own works, and a link planted in it by the owner
    // (the only one who can) is still not followed.
    let mine = root.path().join("mine");
    let out = run_with_home(&mine, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::metadata(&mine).expect("mine").mode() & 0o777, 0o700);
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn h1_the_compiled_module_cache_of_another_user_is_never_loaded() {
    require_root();
    let root = shared_root();
    let cache = theirs(root.path(), "cache");
    theirs(&cache, "compiled");
    let wasm = terrarium::WasmConfig::from_env().python_wasm;
    let home = tempfile::tempdir().expect("home");
    let out = terrarium_env(
        &["run", "--tier", "wasm", "-c", "print(1)"],
        b"",
        &[
            ("TERRARIUM_HOME", home.path().to_str().expect("utf-8")),
            ("TERRARIUM_CACHE", cache.to_str().expect("utf-8")),
            ("TERRARIUM_PYTHON_WASM", wasm.to_str().expect("utf-8")),
        ],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("cache directory") && out.stderr.contains("owned by uid 65534"), "{out:?}");
}

#[test]
fn h1_without_home_the_cache_does_not_fall_back_to_tmp() {
    let out = Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(["run", "--tier", "wasm", "-c", "print(1)"])
        .env_remove("HOME")
        .env_remove("TERRARIUM_CACHE")
        .env_remove("TERRARIUM_PYTHON_WASM")
        .env("TERRARIUM_HOME", crate::common::test_home())
        .env("TERRARIUM_AUDIT_KEY", crate::common::test_home().join("audit.key"))
        .output()
        .expect("terrarium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("TERRARIUM_CACHE"), "{stderr}");
    assert!(!stderr.contains("/tmp"), "{stderr}");
}

#[test]
fn h3_a_mount_source_under_another_users_directory_is_refused_and_cannot_be_swapped() {
    require_root();
    let root = shared_root();
    let theirs = theirs(root.path(), "theirs");
    as_nobody(&format!("mkdir {t}/data && echo granted > {t}/data/f && chmod -R a+rX {t}", t = theirs.display()));
    let policy = root.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "{}terrarium:\n  read_only_mounts:\n    - source: {}/data\n      target: /data\n",
            terrarium::policy::DEFAULT_POLICY_YAML,
            theirs.display()
        ),
    )
    .expect("policy");
    let policy = policy.to_str().expect("utf-8");
    let home = tempfile::tempdir().expect("home");
    let home = home.path().to_str().expect("utf-8");
    let read = "print(open('/data/f').read())";
    let out =
        terrarium_env(&["run", "--tier", "wasm", "--policy", policy, "-c", read], b"", &[("TERRARIUM_HOME", home)]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("read_only_mounts[0].source") && out.stderr.contains("uid 65534"), "{out:?}");
    // The swap the review made: the directory replaced with a link to /etc.
    as_nobody(&format!("mv {t}/data {t}/old && ln -s /etc {t}/data", t = theirs.display()));
    let shadow = "print(open('/data/shadow').read())";
    let out =
        terrarium_env(&["run", "--tier", "wasm", "--policy", policy, "-c", shadow], b"", &[("TERRARIUM_HOME", home)]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("root:"), "read /etc/shadow through the mount: {out:?}");
}

#[test]
fn h11_an_audit_backup_is_private() {
    let root = shared_root();
    let dest = root.path().join("backup.db");
    assert_eq!(terrarium_env(&["run", "-c", "1"], b"", &[]).code, 0, "a log to back up");
    let out = terrarium_env(&["audit", "backup", dest.to_str().expect("utf-8")], b"", &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::metadata(&dest).expect("backup").mode() & 0o777, 0o600);
    // A link where the backup goes is not followed.
    let victim = root.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    let link = root.path().join("link.db");
    std::os::unix::fs::symlink(&victim, &link).expect("link");
    let out = terrarium_env(&["audit", "backup", link.to_str().expect("utf-8")], b"", &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
}

#[test]
fn h13_mount_targets_are_normalised_before_the_reserved_check() {
    let data = crate::common::readable_dir();
    for target in ["//etc", "/etc/", "//proc//x", "/lib64", "/sbin", "/var/run", "/run"] {
        let text = format!(
            "{}terrarium:\n  read_only_mounts:\n    - source: {}\n      target: {target:?}\n",
            terrarium::policy::DEFAULT_POLICY_YAML,
            data.path().display()
        );
        let err = terrarium::Policy::from_yaml(&text, "<h13>").expect_err(target);
        assert!(err.to_string().contains("read_only_mounts[0].target"), "{target}: {err}");
    }
    let text = format!(
        "{}terrarium:\n  read_only_mounts:\n    - source: {}\n      target: //data//\n",
        terrarium::policy::DEFAULT_POLICY_YAML,
        data.path().display()
    );
    let p = terrarium::Policy::from_yaml(&text, "<h13>").expect("a plain target");
    assert_eq!(p.read_only_mounts()[0].target, "/data");
}

/// A directory like `/tmp`: everyone may create entries, only an entry's owner may
/// rename or remove it.
fn sticky_dir(root: &Path) -> std::path::PathBuf {
    let sticky = root.join("sticky");
    std::fs::create_dir(&sticky).expect("sticky");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    sticky
}

#[test]
fn h1_h3_a_link_another_user_planted_in_a_sticky_directory_is_not_followed() {
    require_root();
    let root = shared_root();
    let sticky = sticky_dir(root.path());
    let mine = root.path().join("mine");
    std::fs::create_dir(&mine).expect("mine");
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(mine.join("audit.db"), "not yours").expect("file");
    std::fs::set_permissions(mine.join("audit.db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // The other user points names in the shared directory at our directory and
    // at /etc.
    as_nobody(&format!("ln -s {m} {s}/state && ln -s /etc {s}/data", m = mine.display(), s = sticky.display()));
    let out = run_with_home(&sticky.join("state"), &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("owned by uid 65534"), "{out:?}");
    assert_eq!(std::fs::metadata(mine.join("audit.db")).expect("file").mode() & 0o777, 0o644, "chmod-ed");
    let policy = root.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "{}terrarium:\n  read_only_mounts:\n    - source: {}/data\n      target: /data\n",
            terrarium::policy::DEFAULT_POLICY_YAML,
            sticky.display()
        ),
    )
    .expect("policy");
    let out = terrarium_env(
        &[
            "run",
            "--tier",
            "wasm",
            "--policy",
            policy.to_str().expect("utf-8"),
            "-c",
            "print(open('/data/shadow').read())",
        ],
        b"",
        &[],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("root:"), "read /etc/shadow through the mount: {out:?}");
    assert!(out.stderr.contains("owned by uid 65534"), "{out:?}");
}

#[test]
fn h1_nothing_is_created_below_a_directory_another_user_controls() {
    require_root();
    let root = shared_root();
    let theirs = theirs(root.path(), "theirs");
    let out = run_with_home(&theirs.join("a").join("b"), &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!theirs.join("a").exists(), "created a directory below another user's before refusing");
}

/// The wasm tier's `/scratch` is made in `TMPDIR` only when no other user can
/// change it, and preopened by handle.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn h1_a_scratch_directory_is_never_made_where_another_user_can_swap_it() {
    require_root();
    let root = shared_root();
    let theirs = theirs(root.path(), "tmp");
    let out = terrarium_env(
        &["run", "--tier", "wasm", "--scratch", "-c", "open('/scratch/x', 'w').write('x')"],
        b"",
        &[("TMPDIR", theirs.to_str().expect("utf-8"))],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("scratch") && out.stderr.contains("uid 65534"), "{out:?}");
    assert_eq!(std::fs::read_dir(&theirs).expect("tmp").count(), 0, "something was made in it");
}

/// `audit backup` writes only into a directory of this user's that no one else
/// can change.
#[test]
fn h11_a_backup_is_never_written_into_another_users_directory() {
    require_root();
    let root = shared_root();
    let theirs = theirs(root.path(), "theirs");
    assert_eq!(terrarium_env(&["run", "-c", "1"], b"", &[]).code, 0, "a log to back up");
    let dest = theirs.join("b.db");
    let out = terrarium_env(&["audit", "backup", dest.to_str().expect("utf-8")], b"", &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("backup directory") && out.stderr.contains("uid 65534"), "{out:?}");
    assert!(!dest.exists());
}

/// The red team's work directory is made new; an existing one (with links to host
/// files planted in it) is refused before anything is written.
#[test]
fn h1_the_red_teams_work_directory_must_be_new() {
    let root = shared_root();
    let work = root.path().join("work");
    std::fs::create_dir(&work).expect("work");
    let victim = root.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    std::os::unix::fs::symlink(&victim, work.join("secret.txt")).expect("link");
    let out = terrarium_env(
        &["redteam", "--tiers", "rustpython", "--variants", "0", "--workdir", work.to_str().expect("utf-8")],
        b"",
        &[],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("must be new"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
}
