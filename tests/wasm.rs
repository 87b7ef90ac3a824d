//! The wasm tier (CPython on WASI under wasmtime), attacked: each limit and each
//! denial is tried. These need python.wasm (`scripts/setup-wasm`); a missing one
//! fails them with that instruction unless `TERRARIUM_SKIP_WASM=1` (printed).

use std::time::Duration;

use terrarium::{ExecRequest, Overrides, Policy, Status};

use crate::common::{default_policy_with, exec_wasm, run_wasm, run_wasm_policy, temp_file, wasm_executor};

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn real_cpython_runs_the_snippet() {
    let wide = crate::common::wide_policy();
    let Some(o) = run_wasm_policy(wide, "import json\nprint(json.dumps([1, 2]))\nimport sys\nsys.version_info[:2]")
    else {
        return;
    };
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.stdout, "[1, 2]\n");
    assert_eq!(o.result, Some(serde_json::json!([3, 12])), "not CPython 3.12: {o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn exceptions_keep_their_python_type() {
    let Some(o) = run_wasm("{}['missing']") else { return };
    assert_eq!(o.status, Status::Exception);
    assert_eq!(o.error.map(|e| e.kind), Some("KeyError".into()));
    let Some(o) = run_wasm("def f(:\n  pass") else { return };
    assert_eq!(o.error.map(|e| e.kind), Some("SyntaxError".into()));
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn fuel_runs_out() {
    let policy = Policy::from_yaml(&format!("{}\nterrarium:\n  fuel: 2000000000\n", default_policy_yaml()), "<test>")
        .expect("fuel policy");
    let Some(o) = run_wasm_policy(policy, "while True: pass") else { return };
    assert_eq!(o.status, Status::FuelExhausted, "{o:?}");
    assert_eq!(o.usage.fuel, Some(2_000_000_000));
}

fn default_policy_yaml() -> String {
    terrarium::policy::DEFAULT_POLICY_YAML.to_string()
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn host_files_cannot_be_read_or_written() {
    for code in [
        "open('/etc/passwd').read()",
        "open('/tmp/terrarium-wasm-escape', 'w').write('x')",
        "import io\nio.open('/etc/hostname').read()",
    ] {
        let Some(o) = run_wasm(&format!("{code}\nprint('ESCAPED')")) else { return };
        assert_ne!(o.status, Status::Ok, "{code}: {o:?}");
        assert!(!o.stdout.contains("ESCAPED"), "{code}: {o:?}");
    }
    assert!(!std::path::Path::new("/tmp/terrarium-wasm-escape").exists());
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn even_allowed_os_reaches_no_host() {
    // The wall is WASI, not the prelude: with `os` allowed, the host is still absent.
    let policy = Policy::from_yaml(
        &default_policy_with(
            r#"allowed_modules: ["math", "time", "json"]"#,
            r#"allowed_modules: ["math", "time", "json", "os"]"#,
        ),
        "<test>",
    )
    .expect("policy");
    let Some(o) = run_wasm_policy(policy, "import os\nsorted(os.environ), os.listdir('/')") else { return };
    let listed = o.result.clone();
    assert!(o.status != Status::Ok || listed == Some(serde_json::json!([[], []])), "the guest saw host state: {o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn sockets_and_processes_are_denied() {
    for code in [
        "import socket",
        "import subprocess",
        "import ctypes",
        "__import__('os').system('id')",
        "__import__('os', {}, {}, [], 0)",
    ] {
        let Some(o) = run_wasm(code) else { return };
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
    }
    // CPython's module graph reaches `os` past the import policy; the wall behind it is
    // WASI, which has no processes to start.
    let Some(o) = run_wasm("import json\njson.codecs.sys.modules['os'].system('id')") else { return };
    assert!(matches!(o.status, Status::Denied | Status::Exception), "{o:?}");
}

#[test]
fn a_missing_python_wasm_is_a_setup_error_naming_the_fix() {
    let (dir, _) = temp_file("unused", b"");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_terrarium"))
        .args(["run", "--tier", "wasm", "-c", "1"])
        .env("TERRARIUM_CACHE", dir.path())
        .env("TERRARIUM_PYTHON_WASM", dir.path().join("python.wasm"))
        .output()
        .expect("run terrarium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("scripts/setup-wasm"), "{stderr}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn results_are_json_without_importing_json() {
    let Some(o) = run_wasm("[1, 2.5, 'é😀', None, True, {'a': (1, 2)}]") else { return };
    assert_eq!(o.result, Some(serde_json::json!([1, 2.5, "é😀", null, true, {"a": [1, 2]}])), "{o:?}");
    // Not JSON-representable, or cyclic: no result, no failure.
    for code in ["object()", "float('nan')", "l = []\nl.append(l)\nl"] {
        let Some(o) = run_wasm(code) else { return };
        assert_eq!((o.status, o.result.clone()), (Status::Ok, None), "{code}: {o:?}");
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn deep_c_recursion_ends_as_an_outcome() {
    // CPython's C stack inside wasm is small; overflowing it traps the instance, which
    // is reported, never a host crash.
    let Some(o) = run_wasm("x = []\nfor _ in range(100000):\n    x = [x]\nrepr(x)") else { return };
    assert_ne!(o.status, Status::Ok, "{o:?}");
    assert_eq!(run_wasm("1 + 1").and_then(|o| o.result), Some(serde_json::json!(2)));
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn warm_instances_serve_single_use_with_their_own_deadline() {
    let Some(exec) = crate::common::wasm_executor_with_pool(Policy::default_policy(), 2) else { return };
    exec.fill_pool().expect("warm instances start");
    // Each request gets a fresh interpreter, so a patch does not survive.
    let o = exec_wasm(&exec, ExecRequest::new("import math\nmath.pi = 3\nmath.pi"));
    assert_eq!(o.result, Some(serde_json::json!(3)), "{o:?}");
    exec.fill_pool().expect("refilled");
    let o = exec_wasm(&exec, ExecRequest::new("import math\nmath.pi"));
    assert_eq!(o.result, Some(serde_json::json!(std::f64::consts::PI)), "{o:?}");
    // The deadline counts from the request, not from the instance's start.
    exec.fill_pool().expect("refilled");
    std::thread::sleep(Duration::from_millis(300));
    let req = ExecRequest::new("while True: pass")
        .with_overrides(Overrides { timeout: Some(Duration::from_millis(500)), ..Overrides::default() });
    let o = exec_wasm(&exec, req);
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(o.usage.wall_ms >= 450, "ended before its deadline: {o:?}");
    exec.fill_pool().expect("refilled");
    let o = exec_wasm(&exec, ExecRequest::new("import json\njson.dumps([1])"));
    assert_eq!(o.result, Some(serde_json::json!("[1]")), "{o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_scratch_directory_is_private_writable_and_removed() {
    let Some(exec) = wasm_executor(Policy::default_policy()) else { return };
    let mut req = ExecRequest::new(
        "open('/scratch/a.txt', 'w').write('hello')\nopen('a.txt').read() + str(len(open('/scratch/a.txt').read()))",
    );
    req.scratch = true;
    let before = scratch_dirs();
    let o = exec_wasm(&exec, req);
    assert_eq!(o.result, Some(serde_json::json!("hello5")), "{o:?}");
    assert_eq!(scratch_dirs(), before, "the scratch directory was not removed");
    // Outside it, nothing: not the host, not a way up.
    for code in ["open('/tmp/terrarium-escape', 'w')", "open('../etc/passwd')", "open('/scratch/../etc/passwd')"] {
        let mut req = ExecRequest::new(code);
        req.scratch = true;
        let o = exec_wasm(&exec, req);
        assert_ne!(o.status, Status::Ok, "{code}: {o:?}");
    }
    // Without --scratch there is no /scratch.
    let o = exec_wasm(&exec, ExecRequest::new("open('/scratch/a.txt', 'w')"));
    assert_ne!(o.status, Status::Ok, "{o:?}");
}

/// The policy's `file_io` breaker guards the wasm tier's disk: scratch directories
/// that cannot be made (here their parent is open to every user, which is refused)
/// open it, after which none is tried until it lets a trial through; runs that need
/// no scratch directory go on.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn failing_scratch_directories_open_the_file_io_breaker() {
    use std::os::unix::fs::PermissionsExt;
    if wasm_executor(Policy::default_policy()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // The tier's own breaker (the `api` settings) counts these host faults too: set
    // out of the way, so that only `file_io` opens.
    let yaml = default_policy_yaml()
        .replacen("  file_io:\n      failure_threshold: 3", "  file_io:\n      failure_threshold: 2", 1)
        .replacen("  api:\n      failure_threshold: 3", "  api:\n      failure_threshold: 10", 1);
    assert_eq!(yaml.matches("failure_threshold: 3").count(), 1, "the default policy's breakers moved");
    let policy = Policy::from_yaml(&yaml, "<test>").expect("policy");
    let config =
        terrarium::WasmConfig { pool_size: 0, scratch_parent: shared.clone(), ..terrarium::WasmConfig::from_env() };
    let sandbox = terrarium::Sandbox::builder().policy(policy).wasm(config).build().expect("sandbox");
    let run = |scratch: bool| {
        let mut req = ExecRequest::new("1 + 1");
        req.tier = terrarium::TierChoice::Fixed(terrarium::Tier::Wasm);
        req.scratch = scratch;
        crate::common::runtime().block_on(sandbox.execute(req))
    };
    for _ in 0..2 {
        let e = run(true).expect_err("the scratch directory's parent is open to others");
        assert!(e.to_string().contains("cannot create a scratch directory"), "{e}");
    }
    let file_io = sandbox.breakers().get("file_io").expect("file_io breaker");
    assert_eq!(file_io.snapshot().state, terrarium::breaker::State::Open);
    let e = run(true).expect_err("breaker open");
    assert!(e.to_string().contains("breaker file_io open"), "{e}");
    assert_eq!(file_io.snapshot().total_failures, 2, "refused at once: the disk was not tried");
    let o = run(false).expect("a run without a scratch directory");
    assert_eq!((o.status, o.result), (Status::Ok, Some(serde_json::json!(2))));
    assert_eq!(std::fs::read_dir(&shared).expect("shared").count(), 0, "nothing was made there");
}

fn scratch_dirs() -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("terrarium-scratch-")).count())
        .unwrap_or(0)
}

#[test]
fn the_interpreter_tier_refuses_a_scratch_request() {
    let mut req = ExecRequest::new("1");
    req.scratch = true;
    let r = crate::common::runtime().block_on(terrarium::Executor::execute(crate::common::default_isolated(), req));
    let err = r.expect_err("refused");
    assert!(err.to_string().contains("scratch"), "{err}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn a_read_only_mount_granted_by_the_policy_can_be_read_and_nothing_more() {
    let dir = crate::common::readable_dir();
    let policy = crate::common::policy_mounting(dir.path(), "python:3.12-slim");
    let Some(exec_) = wasm_executor(policy) else { return };
    let o = exec_wasm(&exec_, ExecRequest::new("open('/data/data.txt').read()"));
    assert_eq!(o.result, Some(serde_json::json!("granted")), "{o:?}");
    for code in ["open('/data/new.txt', 'w').write('x')", "open('/data/../etc/passwd').read()"] {
        let o = exec_wasm(&exec_, ExecRequest::new(code));
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "the mount was written to");
}

/// Red-team attack `sleep_forever`: a guest blocked in WASI's `poll_oneoff` is not
/// running wasm, so the epoch deadline alone never stopped it; a warm instance held
/// its thread and slot for the whole hour and the request failed as a host error.
/// Sleeps are now clamped to the deadline, on cold and warm instances alike.
#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn sleep_forever() {
    let one_second = Overrides { timeout: Some(Duration::from_secs(1)), ..Overrides::default() };
    let Some(cold) = wasm_executor(Policy::default_policy()) else { return };
    let Some(warm) = crate::common::wasm_executor_with_pool(Policy::default_policy(), 1) else { return };
    warm.fill_pool().expect("a warm instance starts");
    for (name, exec) in [("cold", &cold), ("warm", &warm)] {
        for code in [
            "import time\ntime.sleep(3600)",
            "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass",
        ] {
            let o = exec_wasm(exec, ExecRequest::new(code).with_overrides(one_second.clone()));
            assert_eq!(o.status, Status::Timeout, "{name}: {code}: {o:?}");
        }
    }
    // A sleep inside the deadline still sleeps its full length.
    let o = exec_wasm(
        &cold,
        ExecRequest::new("import time\nt = time.monotonic()\ntime.sleep(0.2)\ntime.monotonic() - t >= 0.2"),
    );
    assert_eq!(o.result, Some(serde_json::json!(true)), "{o:?}");
}
