//! Attacks on the workspace wall, on each tier that mounts one: a run that tries
//! to make the host read or write outside its copy (a symbolic link to
//! `/etc/passwd`, a hard link, a FIFO, `..`, a link to a directory outside), to
//! get past the quotas (a file over `max_file_size`, 100,000 small files), or to
//! keep writing after it reported. Judged by what the host did: no version made,
//! the refusal naming the path, nothing written outside the workspace, and the
//! live files untouched.

use std::path::Path;

use terrarium::{Status, Tier};

use crate::workspace::{ready, run_in, ws_policy, ws_sandbox};

/// Every file under `dir` (relative paths), without following links.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("inside").display().to_string());
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The attacks, each with what the refusal must name (parts joined by ` && `;
/// `None`: the run may fail in its own way, as long as nothing is kept).
const ATTACKS: &[(&str, &str, Option<&str>)] = &[
    ("symlink to /etc/passwd", "import os\nos.symlink('/etc/passwd', 'pw')", Some("pw: it is a symbolic link")),
    (
        "symlink to a directory outside, written through",
        "import os\nos.symlink('/tmp', 'out')\ntry:\n    open('out/planted', 'w').write('x')\nexcept OSError:\n    pass",
        Some("out: it is a symbolic link"),
    ),
    ("hard link", "import os\nopen('a', 'w').write('x')\nos.link('a', 'b')", Some("it is a hard link")),
    ("FIFO", "import os\nos.mkfifo('pipe')", Some("pipe: it is a FIFO")),
    ("hard link to /etc/passwd", "import os\nos.link('/etc/passwd', 'pw')", Some("pw: it is a hard link")),
    (
        "dot-dot through a link to the parent (past the prelude's own check)",
        "import os\nos.symlink('..', 'up')\ntry:\n    open('up/escape.txt', 'w').write('x')\nexcept OSError:\n    pass",
        Some("up: it is a symbolic link"),
    ),
    ("dot-dot", "open('../escape.txt', 'w').write('x')", None),
    ("dot-dot from a subdirectory", "import os\nos.mkdir('d')\nopen('d/../../escape2.txt', 'w').write('x')", None),
    ("absolute path beside the workspace", "open('/workspace/../escape3.txt', 'w').write('x')", None),
    (
        "a file over max_file_size",
        "with open('big', 'wb') as f:\n    for _ in range(3):\n        f.write(b'x' * (1 << 20))",
        Some("big: && max_file_size"),
    ),
    (
        "300 files held open at once",
        "import time\nheld = [open('o%d' % i, 'w') for i in range(300)]\ntime.sleep(3)",
        Some("files open under it"),
    ),
    (
        "100,000 small files",
        "import os\nfor i in range(100000):\n    open('f%d' % i, 'w').close()",
        Some("max_files (2000)"),
    ),
];

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn slow_escape_attempts_through_a_workspace_are_refused_or_bounded_on_every_tier() {
    let passwd = std::fs::read("/etc/passwd").expect("passwd");
    for tier in [Tier::Wasm, Tier::Docker] {
        if !ready(tier) {
            continue;
        }
        let home = tempfile::tempdir().expect("home");
        // Appended right after `allow`: part of the `workspaces` section.
        let policy = ws_policy("  max_file_size: 2m\n  max_files: 2000\n");
        assert_eq!(policy.workspaces().quota.max_files, 2000, "the quota is in the policy");
        let s = ws_sandbox(home.path(), policy);
        let seed = run_in(&s, tier, "proj", "open('keep.txt', 'w').write('kept')");
        assert_eq!(seed.workspace.as_ref().and_then(|w| w.version), Some(1), "{tier}: {seed:?}");
        let root = home.path().join("workspaces");
        let before = listing(&root);
        for (name, code, named) in ATTACKS {
            let o = run_in(&s, tier, "proj", code);
            let w = o.workspace.clone().expect("report");
            // What each attack reached, in the test's output.
            eprintln!(
                "{tier} / {name}: run {:?}, workspace {}: {}",
                o.status,
                w.status,
                w.message.as_deref().unwrap_or("")
            );
            assert_ne!(w.status, "committed", "{tier} / {name}: {o:?}");
            assert_eq!(w.version, None, "{tier} / {name}");
            if let Some(named) = named
                && (o.status == Status::Ok || w.status == "refused")
            {
                // The run itself succeeded: the host refused what it left.
                assert_eq!((o.status, w.status.as_str()), (Status::Denied, "refused"), "{tier} / {name}: {o:?}");
                let msg = w.message.clone().unwrap_or_default();
                // Every part: refused while the run went (the guard) or after it (the
                // read-back), the message names the path and the bound.
                for part in named.split(" && ") {
                    assert!(msg.contains(part), "{tier} / {name}: {part:?} not in {msg}");
                }
                assert!(!msg.contains(home.path().to_str().expect("utf-8")), "{tier} / {name}: a host path: {msg}");
            }
            // Nothing outside the workspace's copy was written, and no copy is left.
            let after = listing(&root);
            let new: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
            assert!(new.is_empty(), "{tier} / {name}: new files {new:?}");
            assert_eq!(
                std::fs::read_to_string(root.join("proj/live/keep.txt")).expect("keep"),
                "kept",
                "{tier} / {name}"
            );
            assert!(!Path::new("/tmp/planted").exists(), "{tier} / {name}");
            assert!(!home.path().join("escape.txt").exists(), "{tier} / {name}");
        }
        assert_eq!(std::fs::read("/etc/passwd").expect("passwd"), passwd, "{tier}");
        let head = s.workspaces().expect("root").get("proj").expect("proj").head().expect("head");
        assert_eq!(head.version, 1, "{tier}: no attack made a version");
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_process_left_running_in_the_container_cannot_change_the_copy_after_it_is_read() {
    if !ready(Tier::Docker) {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let s = ws_sandbox(home.path(), ws_policy(""));
    // A thread that keeps writing after the snippet's own code has returned.
    let code = "import threading, time\n\
                def scribble():\n    for i in range(200):\n        open('late%d' % i, 'w').write('x')\n        time.sleep(0.01)\n\
                threading.Thread(target=scribble, daemon=False).start()\n'done'";
    let o = run_in(&s, Tier::Docker, "proj", code);
    let w = o.workspace.clone().expect("report");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let live = home.path().join("workspaces/proj/live");
    let kept: Vec<String> = std::fs::read_dir(&live)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    // Whatever it wrote before the copy was read is exactly what the version holds.
    assert_eq!(kept.len(), w.changes.len(), "{o:?}");
    let staging = home.path().join("workspaces/proj/staging");
    assert_eq!(std::fs::read_dir(staging).expect("staging").count(), 0, "no copy is left to write into");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_run_that_fills_its_copy_past_the_quota_is_stopped_while_it_goes() {
    // Files under max_file_size each, without end: only the total bounds them.
    let code = "import os\nblock = b'x' * (1 << 20)\nfor i in range(100000):\n    with open('f%d' % i, 'wb') as f:\n        f.write(block)\n    print(i, flush=True)";
    for tier in [Tier::Wasm, Tier::Docker] {
        if !ready(tier) {
            continue;
        }
        let home = tempfile::tempdir().expect("home");
        let s = ws_sandbox(home.path(), ws_policy("  max_file_size: 2m\n  max_total_size: 8m\n"));
        let o = run_in(&s, tier, "fill", code);
        let w = o.workspace.clone().expect("report");
        let msg = w.message.clone().unwrap_or_default();
        assert_eq!((o.status, w.status.as_str()), (Status::Denied, "refused"), "{tier}: {o:?}");
        assert!(msg.contains("max_total_size") && msg.contains("the run was stopped"), "{tier}: {msg}");
        // How far it got: bounded near the quota (the guard samples every 50 ms and
        // the engine takes its time to kill; a loaded machine adds to both), not by
        // the 60 s deadline, which would let it write 100 GiB.
        let written = o.stdout.lines().last().and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0) + 1;
        eprintln!("{tier}: stopped after {written} MiB (quota 8 MiB)");
        assert!(written < 1024, "{tier}: {written} MiB written before the stop");
        assert_eq!(s.workspaces().expect("root").get("fill").expect("fill").head().expect("head").version, 0);
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_file_removed_while_open_and_still_written_is_measured_too() {
    // The name is gone, the data is still on the host's disk while the file is open.
    let code = "import os\nf = open('hidden', 'wb')\nos.remove('hidden')\nblock = b'x' * (1 << 20)\nfor i in range(1500):\n    f.write(block)\n    f.flush()\n    print(i, flush=True)";
    for tier in [Tier::Wasm, Tier::Docker] {
        if !ready(tier) {
            continue;
        }
        let home = tempfile::tempdir().expect("home");
        let s = ws_sandbox(home.path(), ws_policy("  max_file_size: 4m\n  max_total_size: 8m\n"));
        let o = run_in(&s, tier, "hide", code);
        let w = o.workspace.clone().expect("report");
        let written = o.stdout.lines().last().and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0) + 1;
        eprintln!("{tier}: {:?} / {} after {written} MiB: {}", o.status, w.status, w.message.as_deref().unwrap_or(""));
        assert_ne!(o.status, Status::Ok, "{tier}: {o:?}");
        assert!(written < 1500, "{tier}: {written} MiB written to a removed file (all 1500: unbounded)");
        if tier == Tier::Wasm {
            // This process holds the file: the guard sees it and stops the run.
            assert_eq!(w.status, "refused", "{tier}: {o:?}");
            assert!(w.message.as_deref().unwrap_or("").contains("removed while open"), "{tier}: {o:?}");
        }
    }
}
