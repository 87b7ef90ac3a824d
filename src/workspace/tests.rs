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
    w.commit(&staged, &set.expect("harvest"), "test").expect("commit").0
}

#[test]
fn a_change_set_is_exact_and_becomes_a_version() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    let v1 = commit(&w, |d| {
        fs::write(d.join("keep.txt"), "same\n").unwrap();
        fs::write(d.join("edit.txt"), "one\n").unwrap();
        fs::write(d.join("gone.txt"), "bye\n").unwrap();
        fs::write(d.join("run.sh"), "echo\n").unwrap();
        fs::create_dir_all(d.join("a/b/c")).unwrap();
        fs::write(d.join("a/b/c/deep.txt"), "deep\n").unwrap();
    });
    assert_eq!(v1.version, 1);
    let live = tmp.path().join("ws/proj/live");
    assert_eq!(fs::read_to_string(live.join("a/b/c/deep.txt")).unwrap(), "deep\n");
    let (staged, set) = run(&w, |d| {
        fs::write(d.join("edit.txt"), "two\n").unwrap();
        fs::remove_file(d.join("gone.txt")).unwrap();
        fs::write(d.join("empty"), "").unwrap();
        fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
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
    let (v2, digest) = w.commit(&staged, &set, "test").expect("commit");
    assert_eq!((v2.version, digest.len()), (2, 64));
    assert_eq!(fs::read_to_string(live.join("edit.txt")).unwrap(), "two\n");
    assert!(!live.join("gone.txt").exists());
    assert_eq!(fs::metadata(live.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(w.show(1, "edit.txt").unwrap(), b"one\n");
    assert_eq!(w.log().unwrap().len(), 3);
    drop(staged);
    assert_eq!(fs::read_dir(tmp.path().join("ws/proj/staging")).unwrap().count(), 0, "copies are removed");
}

#[test]
fn rollback_restores_identical_files_as_a_new_version() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    commit(&w, |d| fs::write(d.join("data.bin"), &big).unwrap());
    commit(&w, |d| {
        fs::write(d.join("data.bin"), b"overwritten").unwrap();
        fs::write(d.join("extra"), b"x").unwrap();
    });
    let (v3, _) = w.rollback(1, "rollback to 1").expect("rollback");
    assert_eq!((v3.version, v3.parent), (3, Some(2)));
    let live = tmp.path().join("ws/proj/live");
    assert_eq!(fs::read(live.join("data.bin")).unwrap(), big);
    assert!(!live.join("extra").exists());
    assert_eq!(w.head().unwrap().entries, w.version(1).unwrap().entries);
    assert_eq!(w.version(2).unwrap().entries.len(), 2, "history is kept");
}

#[test]
fn edits_behind_terrariums_back_are_named_by_verify() {
    let (tmp, all) = store();
    let w = all.create("proj").expect("create");
    commit(&w, |d| {
        fs::write(d.join("a"), "a").unwrap();
        fs::write(d.join("b"), "b").unwrap();
    });
    assert!(w.verify().unwrap().1.is_empty());
    let live = tmp.path().join("ws/proj/live");
    fs::write(live.join("a"), "tampered").unwrap();
    fs::remove_file(live.join("b")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", live.join("c")).unwrap();
    let drift: Vec<(String, Action)> = w.verify().unwrap().1.into_iter().map(|c| (c.path, c.action)).collect();
    assert_eq!(drift, vec![("a".into(), Action::Modified), ("b".into(), Action::Deleted), ("c".into(), Action::Added)]);
    w.rollback(1, "repair").expect("rollback repairs");
    assert!(w.verify().unwrap().1.is_empty());
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
    let r = refused(&|d| std::os::unix::fs::symlink("/etc/passwd", d.join("pw")).unwrap(), Quota::default());
    assert_eq!(r.path, "pw");
    assert!(r.reason.contains("symbolic link"), "{r}");
    let r = refused(
        &|d| {
            fs::create_dir(d.join("sub")).unwrap();
            fs::write(d.join("sub/f"), "x").unwrap();
            fs::hard_link(d.join("sub/f"), d.join("g")).unwrap();
        },
        Quota::default(),
    );
    assert!(r.reason.contains("hard link"), "{r}");
    let r = refused(
        &|d| {
            let c = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; mkfifo only creates a name.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
            assert_eq!(rc, 0);
        },
        Quota::default(),
    );
    assert_eq!(r.path, "fifo");
    let small = Quota { max_files: 3, max_file_bytes: 10, max_total_bytes: 15 };
    let r = refused(&|d| fs::write(d.join("big"), [0u8; 11]).unwrap(), small);
    assert!(r.reason.contains("max_file_size"), "{r}");
    let r = refused(
        &|d| {
            fs::write(d.join("a"), [0u8; 8]).unwrap();
            fs::write(d.join("b"), [0u8; 8]).unwrap();
        },
        small,
    );
    assert!(r.reason.contains("max_total_size"), "{r}");
    let r = refused(
        &|d| {
            for i in 0..5 {
                fs::write(d.join(format!("f{i}")), "").unwrap();
            }
        },
        small,
    );
    assert!(r.reason.contains("max_files"), "{r}");
    assert_eq!(w.head().unwrap().version, 0, "nothing refused became a version");
}

#[test]
fn a_run_on_an_older_version_commits_only_when_paths_differ() {
    let (_tmp, all) = store();
    let w = all.create("proj").expect("create");
    let (s1, c1) = run(&w, |d| fs::write(d.join("x"), "1").unwrap());
    let (s2, c2) = run(&w, |d| fs::write(d.join("y"), "2").unwrap());
    let (s3, c3) = run(&w, |d| fs::write(d.join("x"), "3").unwrap());
    w.commit(&s1, &c1.unwrap(), "first").expect("first");
    let (v, _) = w.commit(&s2, &c2.unwrap(), "second").expect("disjoint paths merge");
    assert_eq!(v.entries.len(), 2);
    match w.commit(&s3, &c3.unwrap(), "third") {
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
    assert_eq!(all.list().unwrap().len(), 1);
}
