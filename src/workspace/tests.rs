//! The store on real files: copies, change sets, versions, rollback, drift, and
//! what a run may leave that is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn store() -> (tempfile::TempDir, Workspaces) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = Workspaces::open(&tmp.path().join("ws")).expect("root");
    (tmp, ws)
}

/// Stages `ws`, lets `edit` change the copy by path, and harvests it.
fn run(w: &Workspace, edit: impl FnOnce(&Path)) -> (Staged, Result<ChangeSet, WorkspaceError>) {
    let staged = w.stage(None).expect("stage");
    edit(&PathBuf::from(staged.by_handle()));
    let set = w.harvest(&staged, &Quota::default());
    (staged, set)
}

fn commit(w: &Workspace, edit: impl FnOnce(&Path)) -> Manifest {
    let (staged, set) = run(w, edit);
    w.commit(&staged, &set.expect("harvest"), "test", &Quota::default()).expect("commit").0
}

#[test]
fn a_change_set_is_exact_and_becomes_a_version() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    let v1 = commit(&w, |d| {
        fs::write(d.join("keep.txt"), "same\n").expect("test file operation");
        fs::write(d.join("edit.txt"), "one\n").expect("test file operation");
        fs::write(d.join("gone.txt"), "bye\n").expect("test file operation");
        fs::write(d.join("run.sh"), "echo\n").expect("test file operation");
        fs::create_dir_all(d.join("a/b/c")).expect("test file operation");
        fs::write(d.join("a/b/c/deep.txt"), "deep\n").expect("test file operation");
    });
    assert_eq!(v1.version, 1);
    let live = tmp.path().join("ws/proj/live");
    assert_eq!(fs::read_to_string(live.join("a/b/c/deep.txt")).expect("test file operation"), "deep\n");
    let (staged, set) = run(&w, |d| {
        fs::write(d.join("edit.txt"), "two\n").expect("test file operation");
        fs::remove_file(d.join("gone.txt")).expect("test file operation");
        fs::write(d.join("empty"), "").expect("test file operation");
        fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("test file operation");
    });
    let set = set.expect("harvest");
    let got: Vec<(&str, Action)> = set.changes.iter().map(|c| (c.path.as_str(), c.action)).collect();
    assert_eq!(
        got,
        vec![
            ("edit.txt", Action::Modified),
            ("empty", Action::Added),
            ("gone.txt", Action::Deleted),
            ("run.sh", Action::Mode)
        ]
    );
    let text = w.staged_diff(&staged, &set, 1 << 16);
    assert!(text.contains("-one\n+two\n"), "{text}");
    let (v2, digest) = w.commit(&staged, &set, "test", &Quota::default()).expect("commit");
    assert_eq!((v2.version, digest.len()), (2, 64));
    assert_eq!(fs::read_to_string(live.join("edit.txt")).expect("test file operation"), "two\n");
    assert!(!live.join("gone.txt").exists());
    assert_eq!(fs::metadata(live.join("run.sh")).expect("test file operation").permissions().mode() & 0o777, 0o755);
    assert_eq!(w.show(1, "edit.txt").expect("test file operation"), b"one\n");
    assert_eq!(w.log().expect("test file operation").len(), 3);
    drop(staged);
    assert_eq!(
        fs::read_dir(tmp.path().join("ws/proj/staging")).expect("test file operation").count(),
        0,
        "copies are removed"
    );
}

#[test]
fn rollback_restores_identical_files_as_a_new_version() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    commit(&w, |d| fs::write(d.join("data.bin"), &big).expect("test file operation"));
    commit(&w, |d| {
        fs::write(d.join("data.bin"), b"overwritten").expect("test file operation");
        fs::write(d.join("extra"), b"x").expect("test file operation");
    });
    let (v3, _) = w.rollback(1, "rollback to 1").expect("rollback");
    assert_eq!((v3.version, v3.parent), (3, Some(2)));
    let live = tmp.path().join("ws/proj/live");
    assert_eq!(fs::read(live.join("data.bin")).expect("test file operation"), big);
    assert!(!live.join("extra").exists());
    assert_eq!(w.head().expect("test file operation").entries, w.version(1).expect("test file operation").entries);
    assert_eq!(w.version(2).expect("test file operation").entries.len(), 2, "history is kept");
}

#[test]
fn edits_behind_terrariums_back_are_named_by_verify() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    commit(&w, |d| {
        fs::write(d.join("a"), "a").expect("test file operation");
        fs::write(d.join("b"), "b").expect("test file operation");
    });
    assert!(w.verify().expect("test file operation").1.is_empty());
    let live = tmp.path().join("ws/proj/live");
    fs::write(live.join("a"), "tampered").expect("test file operation");
    fs::remove_file(live.join("b")).expect("test file operation");
    std::os::unix::fs::symlink("/etc/passwd", live.join("c")).expect("test file operation");
    let drift: Vec<(String, Action)> =
        w.verify().expect("test file operation").1.into_iter().map(|c| (c.path, c.action)).collect();
    assert_eq!(drift, vec![("a".into(), Action::Modified), ("b".into(), Action::Deleted), ("c".into(), Action::Added)]);
    w.rollback(1, "repair").expect("rollback repairs");
    assert!(w.verify().expect("test file operation").1.is_empty());
}

#[test]
fn links_fifos_and_quota_breaches_are_refused_by_path() {
    let (_tmp, all) = store();
    let w = all.create("proj").expect("create");
    let refused = |edit: &dyn Fn(&Path), quota: Quota| {
        let staged = w.stage(None).expect("stage");
        edit(&PathBuf::from(staged.by_handle()));
        match w.harvest(&staged, &quota) {
            Err(WorkspaceError::Refused(r)) => r,
            other => panic!("not refused: {other:?}"),
        }
    };
    let r = refused(
        &|d| std::os::unix::fs::symlink("/etc/passwd", d.join("pw")).expect("test file operation"),
        Quota::default(),
    );
    assert_eq!(r.path, "pw");
    assert!(r.reason.contains("symbolic link"), "{r}");
    let r = refused(
        &|d| {
            fs::create_dir(d.join("sub")).expect("test file operation");
            fs::write(d.join("sub/f"), "x").expect("test file operation");
            fs::hard_link(d.join("sub/f"), d.join("g")).expect("test file operation");
        },
        Quota::default(),
    );
    assert!(r.reason.contains("hard link"), "{r}");
    let r = refused(
        &|d| {
            let c = std::ffi::CString::new(d.join("fifo").to_str().expect("test file operation"))
                .expect("test file operation");
            // SAFETY: a valid C string; mkfifo only creates a name.
            #[allow(unsafe_code, reason = "libc::mkfifo has no safe wrapper in std")]
            let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
            assert_eq!(rc, 0);
        },
        Quota::default(),
    );
    assert_eq!(r.path, "fifo");
    let small = Quota { max_files: 3, max_file_bytes: 10, max_total_bytes: 15 };
    let r = refused(&|d| fs::write(d.join("big"), [0u8; 11]).expect("test file operation"), small);
    assert!(r.reason.contains("max_file_size"), "{r}");
    let r = refused(
        &|d| {
            fs::write(d.join("a"), [0u8; 8]).expect("test file operation");
            fs::write(d.join("b"), [0u8; 8]).expect("test file operation");
        },
        small,
    );
    assert!(r.reason.contains("max_total_size"), "{r}");
    let r = refused(
        &|d| {
            for i in 0..5 {
                fs::write(d.join(format!("f{i}")), "").expect("test file operation");
            }
        },
        small,
    );
    assert!(r.reason.contains("max_files"), "{r}");
    assert_eq!(w.head().expect("test file operation").version, 0, "nothing refused became a version");
}

#[test]
fn a_run_on_an_older_version_commits_only_when_paths_differ() {
    let (_tmp, all) = store();
    let w = all.create("proj").expect("create");
    let (s1, c1) = run(&w, |d| fs::write(d.join("x"), "1").expect("test file operation"));
    let (s2, c2) = run(&w, |d| fs::write(d.join("y"), "2").expect("test file operation"));
    let (s3, c3) = run(&w, |d| fs::write(d.join("x"), "3").expect("test file operation"));
    w.commit(&s1, &c1.expect("test file operation"), "first", &Quota::default()).expect("first");
    let (v, _) =
        w.commit(&s2, &c2.expect("test file operation"), "second", &Quota::default()).expect("disjoint paths merge");
    assert_eq!(v.entries.len(), 2);
    match w.commit(&s3, &c3.expect("test file operation"), "third", &Quota::default()) {
        Err(WorkspaceError::Conflict { paths, .. }) => assert_eq!(paths, vec!["x".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_and_versions_are_checked() {
    let (_tmp, all) = store();
    for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(65)] {
        assert!(matches!(all.create(bad), Err(WorkspaceError::Invalid(_))), "{bad}");
    }
    let w = all.create("ok").expect("create");
    assert!(matches!(all.create("ok"), Err(WorkspaceError::Invalid(_))));
    assert!(matches!(all.get("nope"), Err(WorkspaceError::NotFound(_))));
    assert!(matches!(w.version(7), Err(WorkspaceError::Invalid(_))));
    assert!(matches!(w.show(0, "missing"), Err(WorkspaceError::Invalid(_))));
    assert_eq!(all.list().expect("test file operation").len(), 1);
}

#[test]
fn names_that_could_fake_a_diff_and_paths_too_long_for_the_live_directory_are_refused() {
    let (_tmp, all) = store();
    let w = all.create("proj").expect("create");
    let (_s, set) = run(&w, |d| fs::write(d.join("a\n+++ b"), "x").expect("write"));
    match set {
        Err(WorkspaceError::Refused(r)) => assert!(r.reason.contains("control character"), "{r}"),
        other => panic!("{other:?}"),
    }
    let (_s, set) = run(&w, |d| {
        let mut p = d.to_path_buf();
        for _ in 0..6 {
            p = p.join("d".repeat(200));
            fs::create_dir(&p).expect("mkdir");
        }
    });
    match set {
        Err(WorkspaceError::Refused(r)) => assert!(r.reason.contains("longer than 1024"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn runs_merged_on_top_of_each_other_must_fit_the_quota_together() {
    let (_tmp, all) = store();
    let w = all.create("proj").expect("create");
    let quota = Quota { max_files: 10, max_file_bytes: 100, max_total_bytes: 150 };
    let copy = |name: &str| {
        let staged = w.stage(None).expect("stage");
        fs::write(PathBuf::from(staged.by_handle()).join(name), [0u8; 100]).expect("write");
        let set = w.harvest(&staged, &quota).expect("each fits alone");
        (staged, set)
    };
    let (s1, c1) = copy("a");
    let (s2, c2) = copy("b");
    w.commit(&s1, &c1, "first", &quota).expect("first");
    match w.commit(&s2, &c2, "second", &quota) {
        Err(WorkspaceError::Refused(r)) => assert!(r.reason.contains("max_total_size"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.head().expect("head").entries.len(), 1);
}
