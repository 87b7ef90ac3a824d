//! Attacks on the limits of isolated mode (the default): each tries to outrun its
//! bound and must end with the limit's status, with the host alive. The deadline is
//! a SIGKILL, so it must hold within 100 ms even inside native calls; speed itself
//! is measured in benches/.

use terrarium::{Executor, Policy, Status, TierSession};

use crate::common::{isolated, run, run_with_timeout, runtime, with_timeout};

/// Deadline used by these tests, and the slack allowed on top of it.
const DEADLINE: f64 = 1.0;
const SLACK_MS: u64 = 100;
/// The longest a run under [`DEADLINE`] may take, in milliseconds.
const BOUND_MS: u64 = (DEADLINE * 1000.0) as u64 + SLACK_MS;

#[track_caller]
fn assert_times_out(code: &str) {
    let o = run_with_timeout(code, DEADLINE);
    assert_eq!(o.status, Status::Timeout, "{code:?}: {o:?}");
    assert!(o.usage.wall_ms <= BOUND_MS, "{code:?} took {} ms, bound {BOUND_MS} ms", o.usage.wall_ms);
}

#[test]
fn infinite_loop_times_out() {
    assert_times_out("while True:\n    pass");
}

#[test]
fn catching_the_deadline_does_not_help() {
    assert_times_out(
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
    );
    assert_times_out(
        "def f():\n    try:\n        while True: pass\n    finally:\n        while True: pass\nwhile True:\n    try:\n        f()\n    except BaseException:\n        continue",
    );
}

#[test]
fn native_calls_end_at_the_deadline() {
    assert_times_out("sum(range(10**9))");
    assert_times_out("7**(10**8)");
    assert_times_out("try:\n    sum(range(10**10))\nexcept BaseException:\n    pass\nwhile True: pass");
}

#[test]
fn sleep_counts_against_the_deadline() {
    assert_times_out("import time\ntime.sleep(100)");
    assert_times_out(
        "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass",
    );
}

/// The host polls for a lone request's answer for a few hundred microseconds
/// before it sleeps: a deadline inside that window still ends the run as a kill,
/// and an answer split across the window is still read whole.
#[test]
fn a_deadline_inside_the_hosts_polling_still_kills() {
    // The zygote started (wall time counts the wait for a child).
    assert_eq!(run("1").status, Status::Ok);
    for secs in [0.000_05, 0.000_2] {
        let o = run_with_timeout("while True:\n    pass", secs);
        assert_eq!(o.status, Status::Timeout, "{secs}s: {o:?}");
        // Wall time counts the wait for a child, which the other tests here can
        // hold up: bounded as theirs are.
        assert!(o.usage.wall_ms <= BOUND_MS, "{secs}s: took {} ms", o.usage.wall_ms);
    }
    // A first chunk within the window, the rest after it (an answer larger than
    // one read), and a run that answers only after the window.
    let o = run_with_timeout("print('z' * 200_000)\nlen('y' * 70_000)", 5.0);
    assert_eq!((o.status, o.stdout.len(), o.result.clone()), (Status::Ok, 200_001, Some(serde_json::json!(70_000))));
    let o = run_with_timeout("import time\ntime.sleep(0.002)\n'late'", 5.0);
    assert_eq!(o.result, Some(serde_json::json!("late")), "{o:?}");
}

/// A session's cell polls for its answer too when it is all that runs on its
/// zygote's children (its own executor here, so nothing else does): the same
/// attacks as above, on a cell.
#[test]
fn a_deadline_inside_the_hosts_polling_still_kills_a_cell() {
    let exec = isolated(Policy::default_policy());
    let open = || runtime().block_on(exec.open_session()).expect("session");
    let cell = |s: &mut Box<dyn TierSession>, code: &str, secs: f64| {
        runtime().block_on(s.execute(with_timeout(code, secs))).expect("cell")
    };
    let mut s = open();
    assert_eq!(cell(&mut s, "x = 1", 5.0).status, Status::Ok);
    let o = cell(&mut s, "print('z' * 200_000)\nlen('y' * 70_000) + x", 5.0);
    assert_eq!((o.status, o.stdout.len(), o.result.clone()), (Status::Ok, 200_001, Some(serde_json::json!(70_001))));
    let o = cell(&mut s, "import time\ntime.sleep(0.002)\n'late'", 5.0);
    assert_eq!(o.result, Some(serde_json::json!("late")), "{o:?}");
    for secs in [0.000_05, 0.000_2] {
        let mut s = open();
        assert_eq!(cell(&mut s, "x = 1", 5.0).status, Status::Ok);
        let o = cell(&mut s, "while True:\n    pass", secs);
        assert_eq!(o.status, Status::Timeout, "{secs}s: {o:?}");
        assert!(o.usage.wall_ms <= BOUND_MS, "{secs}s: took {} ms", o.usage.wall_ms);
    }
}

#[test]
fn sleep_within_the_deadline_sleeps() {
    let o = run_with_timeout("import time\nt = time.monotonic()\ntime.sleep(0.2)\ntime.monotonic() - t >= 0.2", 5.0);
    assert_eq!(o.result, Some(serde_json::json!(true)), "{o:?}");
}

#[test]
fn output_flood_is_capped() {
    let o = run("while True:\n    print('x' * 1000)");
    assert_eq!(o.status, Status::OutputLimit, "{o:?}");
    assert!(o.stdout.len() + o.stderr.len() <= 1 << 20, "captured {} bytes", o.stdout.len());
    let o = run("try:\n    while True:\n        print('y' * 4096)\nexcept BaseException:\n    print('ESCAPED')");
    assert_eq!(o.status, Status::OutputLimit, "{o:?}");
    assert!(!o.stdout.contains("ESCAPED"));
}

#[test]
fn deep_recursion_is_an_exception_not_a_crash() {
    let o = run("def f(n):\n    return f(n + 1)\nf(0)");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    assert_eq!(o.error.map(|e| e.kind), Some("RecursionError".to_string()));
}

#[test]
fn deeply_nested_source_is_refused_before_compiling() {
    let code = format!("x = {}1", "-".repeat(100_000));
    let o = run(&code);
    assert_eq!(o.status, Status::Denied, "{:?}", o.error);
    let code = format!("x = {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let o = run(&code);
    assert_ne!(o.status, Status::Ok);
    // The host is alive and the tier still serves.
    assert_eq!(run("1 + 1").result, Some(serde_json::json!(2)));
}

#[test]
fn deeply_nested_data_is_an_exception_not_a_crash() {
    let o = run("import json\njson.loads('[' * 10**6)");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    assert_eq!(run("1 + 1").result, Some(serde_json::json!(2)));
}

/// Asserts that `code` ends as `memory_limit` or a `MemoryError`, and that the tier
/// still serves afterwards.
#[track_caller]
fn assert_memory_bounded(code: &str) {
    let o = run(code);
    let clean_error = o.status == Status::Exception && o.error.as_ref().is_some_and(|e| e.kind == "MemoryError");
    assert!(o.status == Status::MemoryLimit || clean_error, "{code:?}: {o:?}");
    assert_eq!(run("1 + 1").result, Some(serde_json::json!(2)), "the tier stopped serving after {code:?}");
}

#[test]
fn huge_allocations_hit_the_memory_limit() {
    assert_memory_bounded("'a' * 10**10");
    assert_memory_bounded("import json\njson.dumps(list(range(10**8)))");
    // Growth in small steps needs seconds of CPU to reach the cap: under a
    // deadline long enough that on a loaded machine the cap, not the clock, ends it.
    let slow_clock = terrarium::policy::DEFAULT_POLICY_YAML.replace("timeout: 10\n", "timeout: 120\n");
    assert_ne!(slow_clock, terrarium::policy::DEFAULT_POLICY_YAML, "the default policy's timeout line moved");
    let o = crate::common::run_policy(&slow_clock, "x = []\nwhile True:\n    x.append('a' * 1000)");
    let clean_error = o.status == Status::Exception && o.error.as_ref().is_some_and(|e| e.kind == "MemoryError");
    assert!(o.status == Status::MemoryLimit || clean_error, "{o:?}");
}

#[test]
fn catching_memory_errors_only_runs_into_the_deadline() {
    let o = run_with_timeout(
        "x = []\nwhile True:\n    try:\n        x.append(bytearray(10**6))\n    except MemoryError:\n        pass",
        DEADLINE,
    );
    assert!(matches!(o.status, Status::Timeout | Status::MemoryLimit), "{o:?}");
    assert_eq!(run("1 + 1").result, Some(serde_json::json!(2)));
}

#[test]
fn a_tighter_memory_override_is_enforced() {
    let req = terrarium::ExecRequest::new("x = bytearray(100 * 2**20)\nlen(x)")
        .with_overrides(terrarium::Overrides { max_memory: Some(32 << 20), ..Default::default() });
    let o = crate::common::exec_default(req);
    assert!(matches!(o.status, Status::MemoryLimit | Status::Exception), "{o:?}");
    assert_eq!(run("x = bytearray(100 * 2**20)\nlen(x)").result, Some(serde_json::json!(100 << 20)));
}

#[test]
fn a_result_longer_than_the_output_cap_is_output_limit() {
    // The last value counts against the output cap as printed output does; the
    // conversion stops counting items past the cap instead of building the text.
    for o in [run("list(range(2_000_000))"), crate::common::run_embedded("list(range(2_000_000))")] {
        assert_eq!(o.status, Status::OutputLimit, "{o:?}");
        assert!(o.result.is_none(), "{o:?}");
    }
}

#[test]
fn an_exception_message_longer_than_the_output_cap_is_output_limit() {
    // Its text reaches the caller and the audit log like printed output does.
    let o = run("raise ValueError('v' * 3_000_000)");
    assert_eq!(o.status, Status::OutputLimit, "{o:?}");
    assert!(o.error.as_ref().is_some_and(|e| e.message.len() < 1000), "{o:?}");
}
