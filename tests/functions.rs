//! Host functions (issue 19): a snippet calls the functions the policy declares,
//! implemented by a Rust closure, by the operator's command, or (over HTTP, see
//! server.rs) by the API's caller; every call is checked by the host (declared,
//! argument size, call count, timeout), critical calls wait for a human, and every
//! call is in the audit log and the outcome.

use std::sync::Arc;
use std::time::Duration;

use terrarium::functions::{FunctionCall, FunctionError};
use terrarium::{ExecRequest, Outcome, Policy, Sandbox, SandboxBuilder, Status, TierChoice};

use crate::common::runtime;

/// The default policy with `functions` added (and `extra` sections).
fn policy_with(functions: &str, extra: &str) -> Policy {
    let yaml = format!("{}\nfunctions:\n{functions}\n{extra}", include_str!("../policies/default.yaml"));
    Policy::from_yaml(&yaml, "functions.yaml").expect("policy")
}

fn builder(policy: Policy) -> SandboxBuilder {
    let isolated = terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    Sandbox::builder().policy(policy).isolated(isolated)
}

/// A closure that prices an item: `price(item, qty=1)`.
fn price(call: FunctionCall) -> impl std::future::Future<Output = Result<serde_json::Value, FunctionError>> {
    async move {
        let item = call.args.first().and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let qty = call.kwargs.get("qty").and_then(serde_json::Value::as_i64).unwrap_or(1);
        match item.as_str() {
            "apple" => Ok(serde_json::json!({"item": item, "total": 3 * qty, "tags": ["fruit", null, true, 1.5]})),
            _ => Err(FunctionError::new("KeyError", format!("no price for {item}"))),
        }
    }
}

fn run_on(s: &Sandbox, tier: terrarium::Tier, code: &str) -> Outcome {
    let req = ExecRequest { tier: TierChoice::Fixed(tier), ..ExecRequest::new(code) };
    runtime().block_on(s.execute(req)).expect("run")
}

const PRICE: &str = "  price:\n    timeout: 5\n    max_arg_bytes: 1k\n    max_calls: 3\n";

#[test]
fn a_rust_closure_answers_with_values_and_typed_errors() {
    let s = builder(policy_with(PRICE, "")).function("price", price).build().expect("sandbox");
    let o = run_on(
        &s,
        terrarium::Tier::Rustpython,
        "from host import price\nr = price('apple', qty=2)\ntry:\n    price('pear')\nexcept KeyError as e:\n    err = str(e)\n[r, err]",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(
        o.result,
        Some(
            serde_json::json!([{"item": "apple", "total": 6, "tags": ["fruit", null, true, 1.5]}, "'no price for pear'"])
        )
    );
    let calls: Vec<(&str, &str)> = o.calls.iter().map(|c| (c.function.as_str(), c.status.as_str())).collect();
    assert_eq!(calls, [("price", "ok"), ("price", "error")]);
    assert!(o.usage.host_wait_ms.is_some(), "{:?}", o.usage);
}

#[test]
fn undeclared_oversized_and_too_many_calls_are_refused() {
    let s = builder(policy_with(PRICE, "")).function("price", price).build().expect("sandbox");
    let tier = terrarium::Tier::Rustpython;
    let o = run_on(&s, tier, "from host import steal");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    assert_eq!(o.error.as_ref().map(|e| e.kind.as_str()), Some("ImportError"), "{o:?}");
    // The size is the host's check: the run ends denied, whatever the guest does.
    let o = run_on(&s, tier, "import host\nhost.price('x' * 2000)");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().unwrap().message.contains("max_arg_bytes of 1024"), "{o:?}");
    let o = run_on(
        &s,
        tier,
        "from host import price\nfor _ in range(5):\n    try:\n        price('apple')\n    except BaseException:\n        pass\n'kept going'",
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().unwrap().message.contains("more than its max_calls of 3"), "{o:?}");
    assert_eq!(o.result, None);
    assert_eq!(o.calls.iter().filter(|c| c.status == "ok").count(), 3, "{:?}", o.calls);
    // Without `functions` in the policy there is no host module at all.
    let plain = builder(Policy::default_policy()).build().expect("sandbox");
    let o = run_on(&plain, tier, "import host");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    // Arguments that are not JSON values are the snippet's TypeError.
    let o = run_on(&s, tier, "from host import price\nprice(object())");
    assert_eq!(o.error.as_ref().map(|e| e.kind.as_str()), Some("TypeError"), "{o:?}");
}

#[test]
fn a_hanging_function_is_cut_at_its_timeout_without_using_the_runs() {
    let policy = policy_with("  slow:\n    timeout: 0.5\n", "");
    let s = builder(policy)
        .function("slow", |_call| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(serde_json::Value::Null)
        })
        .build()
        .expect("sandbox");
    // The run's own timeout (the default policy's) is longer than the wait; the
    // function's timeout raises TimeoutError in the snippet, which goes on.
    let o = run_on(
        &s,
        terrarium::Tier::Rustpython,
        "from host import slow\ntry:\n    slow()\nexcept TimeoutError as e:\n    m = str(e)\nm",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(o.result.as_ref().and_then(|v| v.as_str()).unwrap_or("").contains("timeout of 0.5s"), "{o:?}");
    assert_eq!(o.calls[0].status, "timeout");
}

#[test]
fn waiting_for_the_host_does_not_count_against_the_runs_timeout() {
    // A 1 s run makes three calls of 0.6 s each: 1.8 s of waiting, and it ends ok.
    let policy = policy_with("  wait:\n    timeout: 5\n", "");
    let policy = policy
        .tighten(&terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() })
        .expect("tighten");
    let s = builder(policy)
        .function("wait", |_call| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(serde_json::json!("done"))
        })
        .build()
        .expect("sandbox");
    let o = run_on(&s, terrarium::Tier::Rustpython, "from host import wait\n[wait(), wait(), wait()]");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(o.usage.host_wait_ms.unwrap_or(0) >= 1800, "{:?}", o.usage);
    // The run's own CPU still has its deadline.
    let o = run_on(&s, terrarium::Tier::Rustpython, "from host import wait\nwait()\nwhile True:\n    pass");
    assert_eq!(o.status, Status::Timeout, "{o:?}");
}

#[test]
fn an_operators_command_answers_with_json_on_stdout() {
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("double.sh");
    // Reads the call as JSON on stdin; prints a result, or an error and exits 3.
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r line\ncase \"$line\" in\n  *'\"boom\"'*) echo '{\"error\": {\"type\": \"ValueError\", \"message\": \"boom refused\"}}'; exit 3;;\n  *) printf '{\"got\": %s}' \"$line\";;\nesac\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let functions = format!("  echo:\n    command: [{:?}]\n", script.display().to_string());
    let s = builder(policy_with(&functions, "")).build().expect("sandbox");
    let o = run_on(
        &s,
        terrarium::Tier::Rustpython,
        "from host import echo\nr = echo(1, [2], k='v')\ntry:\n    echo('boom')\nexcept ValueError as e:\n    r['err'] = str(e)\nr",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(
        o.result,
        Some(
            serde_json::json!({"got": {"function": "echo", "args": [1, [2]], "kwargs": {"k": "v"}}, "err": "boom refused"})
        )
    );
}

#[test]
fn every_call_is_in_the_audit_log() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("audit.db");
    let s = Arc::new(builder(policy_with(PRICE, "")).audit(&db).function("price", price).build().expect("sandbox"));
    let o = run_on(&s, terrarium::Tier::Rustpython, "from host import price\nprice('apple')['total']");
    assert_eq!(o.result, Some(serde_json::json!(3)), "{o:?}");
    s.flush_audit(Duration::from_secs(10)).expect("flush");
    let rows = terrarium::audit::tail(&db, usize::MAX).expect("rows");
    let call = rows.iter().find(|r| r.kind == "host_call").expect("a host_call event");
    assert_eq!(call.data["function"], "price");
    assert_eq!(call.data["status"], "ok");
    assert_eq!(call.data["arguments_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(call.data["result_sha256"].as_str().map(str::len), Some(64));
    let outcome = rows.iter().find(|r| r.kind == "outcome").expect("outcome");
    assert_eq!(outcome.data["calls"][0]["function"], "price");
}
