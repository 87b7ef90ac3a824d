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
async fn price(call: FunctionCall) -> Result<serde_json::Value, FunctionError> {
    let item = call.args.first().and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let qty = call.kwargs.get("qty").and_then(serde_json::Value::as_i64).unwrap_or(1);
    match item.as_str() {
        "apple" => Ok(serde_json::json!({"item": item, "total": 3 * qty, "tags": ["fruit", null, true, 1.5]})),
        _ => Err(FunctionError::new("KeyError", format!("no price for {item}"))),
    }
}

fn run_on(s: &Sandbox, tier: terrarium::Tier, code: &str) -> Outcome {
    let req = ExecRequest { tier: TierChoice::Fixed(tier), ..ExecRequest::new(code) };
    runtime().block_on(s.execute(req)).expect("run")
}

/// On the CPython tiers the snippet reaches the prelude's call function and names
/// an undeclared function, fifty times, ignoring each refusal.
const FORGED_CALLS: &str = "from host import price\ng = getattr(price, '__glo' + 'bals__')\ncall = g['_host_call']\n\
                            for _ in range(50):\n    try:\n        call('steal', (), {})\n    except BaseException:\n        pass\n'ok'";

const PRICE: &str = "  price:\n    timeout: 5\n    max_arg_bytes: 1k\n    max_calls: 3\n";

#[test]
fn a_rust_closure_answers_with_values_and_typed_errors() {
    let s = builder(policy_with(PRICE, "")).function("price", price).build().expect("sandbox");
    // A blocking closure too.
    let sync = builder(policy_with("  twice:\n    timeout: 5\n", ""))
        .function_blocking("twice", |call| Ok(serde_json::json!(call.args[0].as_i64().unwrap_or(0) * 2)))
        .build()
        .expect("sandbox");
    let o = run_on(&sync, terrarium::Tier::Rustpython, "from host import twice\ntwice(21)");
    assert_eq!(o.result, Some(serde_json::json!(42)), "{o:?}");
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
    assert!(o.error.as_ref().expect("error").message.contains("max_arg_bytes of 1024"), "{o:?}");
    let o = run_on(
        &s,
        tier,
        "from host import price\nfor _ in range(5):\n    try:\n        price('apple')\n    except BaseException:\n        pass\n'kept going'",
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().expect("error").message.contains("more than its max_calls of 3"), "{o:?}");
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

/// Found by an outside review: each call past its timeout kept a blocking thread,
/// and a snippet that made a hundred of them per run filled the runtime's pool, so
/// that every later run of the process hung.
#[test]
fn blocking_calls_past_their_timeout_hold_a_few_threads_not_the_pool() {
    let policy = policy_with("  slow:\n    timeout: 0.05\n", "");
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let s = builder(policy)
        .function_blocking("slow", move |_call| {
            let now = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(2));
            r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Ok(serde_json::Value::Null)
        })
        .build()
        .expect("sandbox");
    let code = "from host import slow\nkinds = {}\nfor i in range(60):\n    try:\n        slow()\n    \
                except Exception as e:\n        kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1\nkinds";
    let o = run_on(&s, terrarium::Tier::Rustpython, code);
    assert_eq!(o.status, Status::Ok, "{o:?}");
    let kinds = o.result.expect("kinds");
    assert_eq!(kinds["TimeoutError"], terrarium::BLOCKING_CALLS, "{kinds}");
    assert_eq!(kinds["RuntimeError"], 60 - terrarium::BLOCKING_CALLS, "{kinds}");
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= terrarium::BLOCKING_CALLS);
    // The process still runs other work at once.
    let started = std::time::Instant::now();
    let o = run_on(&s, terrarium::Tier::Rustpython, "1+1");
    assert_eq!(o.result, Some(serde_json::json!(2)), "{o:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Found by an outside review: integers past 64 bits reached the function as
/// floats (or `None`), int keys as strings, and arguments or results nested past
/// the host's JSON limit ended the run `crashed`.
#[test]
fn arguments_arrive_unchanged_or_not_at_all_and_deep_values_are_the_snippets_error() {
    let policy = policy_with("  echo:\n    timeout: 5\n", "");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let s = builder(policy)
        .function_blocking("echo", move |call| {
            log.lock().expect("log").push(serde_json::Value::Array(call.args.clone()));
            Ok(serde_json::Value::Null)
        })
        .build()
        .expect("sandbox");
    let code = "from host import echo\nout = []\ndeep = []\nfor _ in range(150):\n    deep = [deep]\n\
                for a in [10**30, 2**64, -2**63 - 1, {1: 2}, {None: 1}, deep, float('nan')]:\n    try:\n        \
                echo(a)\n        out.append('sent')\n    except TypeError:\n        out.append('TypeError')\n\
                echo(2**63 - 1, -2**63, 2**64 - 1, {'k': [1.5]})\nout";
    let o = run_on(&s, terrarium::Tier::Rustpython, code);
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!(vec!["TypeError"; 7])), "{o:?}");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(
        seen,
        vec![serde_json::json!([i64::MAX, i64::MIN, u64::MAX, {"k": [1.5]}])],
        "only the exact call reached the function"
    );
    // A result nested past the limit has no JSON form: `None`, not a crash.
    let o = run_on(&s, terrarium::Tier::Rustpython, "deep = []\nfor _ in range(200):\n    deep = [deep]\ndeep");
    assert_eq!((o.status, o.result.clone()), (Status::Ok, None), "{o:?}");
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

/// Decides the first pending item from another process (the CLI on the same
/// audit database), after checking what the approver is shown.
pub(crate) fn decide_from_cli(
    home: std::path::PathBuf,
    verb: &'static str,
) -> std::thread::JoinHandle<serde_json::Value> {
    std::thread::spawn(move || {
        let env = [("TERRARIUM_HOME", home.to_string_lossy().into_owned())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let list = crate::common::terrarium_env(&["approvals", "list", "--status", "pending"], b"", &env);
            if let Some(item) = list.stdout.lines().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                let id = item["id"].to_string();
                let out = crate::common::terrarium_env(
                    &["approvals", verb, &id, "--as", "alice", "--note", "checked the amount"],
                    b"",
                    &env,
                );
                assert_eq!(out.code, 0, "{}", out.stderr);
                return item;
            }
            assert!(std::time::Instant::now() < until, "no call waited for approval");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn a_critical_call_waits_for_a_human_approved_denied_or_expired() {
    let home = tempfile::tempdir().expect("home");
    let db = home.path().join("audit.db");
    let functions = "  transfer:\n    critical: true\n";
    let transfer = |call: FunctionCall| async move { Ok(serde_json::json!({"sent": call.args[0]})) };
    let s = builder(policy_with(functions, "approvals:\n  timeout: 30\n"))
        .audit(&db)
        .function("transfer", transfer)
        .build()
        .expect("sandbox");
    let code = "from host import transfer\ntry:\n    r = transfer(125)\nexcept PermissionError as e:\n    r = 'refused: ' + str(e)\nr";
    // Approved from another process while the run waits: the snippet goes on with
    // the result, and the run's own timeout did not tick during the wait.
    let approver = decide_from_cli(home.path().to_path_buf(), "approve");
    let o = run_on(&s, terrarium::Tier::Rustpython, code);
    let item = approver.join().expect("approver");
    assert_eq!(item["kind"], "function_call", "{item}");
    assert_eq!(item["subject"]["function"], "transfer", "{item}");
    assert_eq!(item["subject"]["arguments"]["args"], serde_json::json!([125]), "{item}");
    assert!(item["subject"]["code"].as_str().unwrap_or("").contains("transfer(125)"), "{item}");
    assert_eq!((o.status, o.result.clone()), (Status::Ok, Some(serde_json::json!({"sent": 125}))), "{o:?}");
    assert_eq!(o.calls[0].status, "ok");
    // Denied: PermissionError in the snippet, naming the decision.
    let approver = decide_from_cli(home.path().to_path_buf(), "deny");
    let o = run_on(&s, terrarium::Tier::Rustpython, code);
    approver.join().expect("approver");
    let said = o.result.as_ref().and_then(|v| v.as_str()).unwrap_or_default().to_string();
    assert!(said.starts_with("refused: ") && said.contains("denied by alice"), "{o:?}");
    assert_eq!(o.calls[0].status, "denied");
    // Expired: nobody decides within the approvals' timeout.
    let quick = builder(policy_with(functions, "approvals:\n  timeout: 1\n"))
        .audit(&db)
        .function("transfer", transfer)
        .build()
        .expect("sandbox");
    let o = run_on(&quick, terrarium::Tier::Rustpython, code);
    let said = o.result.as_ref().and_then(|v| v.as_str()).unwrap_or_default().to_string();
    assert!(said.starts_with("refused: ") && said.contains("expired"), "{o:?}");
    assert_eq!(o.calls[0].status, "expired");
    // All three, with their host calls, in the audit log.
    s.flush_audit(Duration::from_secs(10)).expect("flush");
    quick.flush_audit(Duration::from_secs(10)).expect("flush");
    let rows = terrarium::audit::tail(&db, usize::MAX).expect("rows");
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    for k in ["approval_approved", "approval_denied", "approval_expired"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let statuses: Vec<&str> =
        rows.iter().filter(|r| r.kind == "host_call").filter_map(|r| r.data["status"].as_str()).collect();
    assert_eq!(statuses, ["ok", "denied", "expired"]);
}

#[test]
fn over_http_the_api_caller_answers_a_sessions_calls() {
    use crate::common::server::{ADMIN, SUBMIT, Server};
    let policy = format!(
        "{}\nfunctions:\n  lookup:\n    timeout: 30\n  hurry:\n    timeout: 0.5\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    let s = Server::start(Some(&policy), &[]);
    let id = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    let cells = format!("/v1/sessions/{id}/cells");
    let code = "from host import lookup\\na = lookup('x', n=1)\\ntry:\\n    lookup('y')\\nexcept KeyError as e:\\n    b = str(e)\\n[a, b]";
    let r = s.call("POST", &cells, Some(SUBMIT), Some(&format!(r#"{{"code": "{code}"}}"#)));
    assert_eq!(r.status, 202, "{}", r.body);
    let call = r.json()["function_call"].clone();
    assert_eq!((r.json()["status"].as_str(), call["function"].as_str()), (Some("function_call"), Some("lookup")));
    assert_eq!((call["args"].clone(), call["kwargs"].clone()), (serde_json::json!(["x"]), serde_json::json!({"n": 1})));
    let answer = format!("/v1/sessions/{id}/calls/{}", call["id"].as_str().expect("call id"));
    // Only the session's owner answers; a cell of a paused session is a conflict.
    assert_eq!(s.call("POST", &answer, Some(ADMIN), Some(r#"{"result": 1}"#)).status, 404);
    assert_eq!(s.call("POST", &cells, Some(SUBMIT), Some(r#"{"code": "1"}"#)).status, 409);
    let r = s.call("POST", &answer, Some(SUBMIT), Some(r#"{"result": {"price": 5}}"#));
    assert_eq!(r.status, 202, "{}", r.body);
    let second = r.json()["function_call"].clone();
    assert_eq!(second["args"], serde_json::json!(["y"]));
    // Each call is answered once.
    assert_eq!(s.call("POST", &answer, Some(SUBMIT), Some(r#"{"result": 2}"#)).status, 404);
    let answer2 = format!("/v1/sessions/{id}/calls/{}", second["id"].as_str().expect("call id"));
    let r = s.call("POST", &answer2, Some(SUBMIT), Some(r#"{"error": {"type": "KeyError", "message": "no y"}}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], serde_json::json!([{"price": 5}, "'no y'"]), "{}", r.body);
    assert_eq!(r.json()["calls"].as_array().map(Vec::len), Some(2), "{}", r.body);
    // A call nobody answers ends at its function's timeout: TimeoutError in the cell.
    let r = s.call(
        "POST",
        &cells,
        Some(SUBMIT),
        Some(r#"{"code": "from host import hurry\ntry:\n    hurry()\nexcept TimeoutError:\n    r = 'gave up'\nr"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let late = format!("/v1/sessions/{id}/calls/{}", r.json()["function_call"]["id"].as_str().expect("id"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.call("POST", &late, Some(SUBMIT), Some(r#"{"result": 1}"#)).status, 404);
    // A single run cannot be paused: it is told to use a session.
    let r = s.call(
        "POST",
        "/v1/execute",
        Some(SUBMIT),
        Some(r#"{"code": "from host import lookup\ntry:\n    lookup(1)\nexcept NotImplementedError as e:\n    r = str(e)\nr"}"#),
    );
    assert!(r.json()["result"].as_str().unwrap_or("").contains("run this in a session"), "{}", r.body);
}

/// `price` called twice on `tier` (a value, then a typed error): the values come
/// back as Python values, the call lines are the host's channel (not the guest's
/// stderr), and both calls are in the outcome; a single run is not a session's cell.
fn prices_on(s: &Sandbox, tier: terrarium::Tier) {
    let o = run_on(
        s,
        tier,
        "from host import price\nprint('before')\nr = price('apple', qty=2)\ntry:\n    price('pear')\n\
         except KeyError as e:\n    err = str(e)\n[r, err]",
    );
    assert_eq!(o.status, Status::Ok, "{tier}: {o:?}");
    let want =
        serde_json::json!([{"item": "apple", "total": 6, "tags": ["fruit", null, true, 1.5]}, "'no price for pear'"]);
    assert_eq!(o.result, Some(want), "{tier}");
    assert_eq!((o.stdout.as_str(), o.stderr.as_str(), o.session.is_none()), ("before\n", "", true), "{tier}: {o:?}");
    assert_eq!(o.calls.len(), 2, "{tier}");
}

/// The default policy for the docker tier (local test image) with `functions`.
fn docker_policy_with(functions: &str, extra: &str) -> Option<Policy> {
    let yaml = format!(
        "{}\nfunctions:\n{functions}\n{extra}",
        crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE)
    );
    let policy = Policy::from_yaml(&yaml, "functions.yaml").expect("policy");
    crate::common::docker_executor(policy.clone(), 0).map(|_| policy)
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn host_functions_round_trip_on_the_docker_tier() {
    let Some(policy) = docker_policy_with(PRICE, "") else { return };
    let s = builder(policy).function("price", price).build().expect("sandbox");
    let docker = terrarium::Tier::Docker;
    prices_on(&s, docker);
    // The guest controls CPython: it can reach the prelude's call function and name
    // an undeclared function, or call too often. The host refuses, and the run is
    // denied whatever the guest does next.
    let o = run_on(&s, docker, FORGED_CALLS);
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().expect("error").message.contains("\"steal\" is not declared"), "{o:?}");
    // The run ends at the refusal: one call recorded, however many the guest sends.
    assert_eq!(o.calls.len(), 1, "{:?}", o.calls);
    let o = run_on(
        &s,
        docker,
        "from host import price\nfor _ in range(4):\n    try:\n        price('apple')\n    except BaseException:\n        pass",
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().expect("error").message.contains("max_calls of 3"), "{o:?}");
    // In a session, on the same container.
    let s = Arc::new(s);
    let opts = terrarium::SessionOptions { tier: TierChoice::Fixed(docker), caller: None, workspace: None };
    let mut session = runtime().block_on(s.session(opts)).expect("session");
    let cell = |session: &mut terrarium::Session, code: &str| {
        runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell")
    };
    assert_eq!(cell(&mut session, "from host import price").status, Status::Ok);
    let o = cell(&mut session, "price('apple')['total'] + price('apple', qty=3)['total']");
    assert_eq!(o.result, Some(serde_json::json!(12)), "{o:?}");
}

#[test]
fn an_operators_command_leaves_nothing_running_after_its_call() {
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("spawn.sh");
    // Starts a background process that would outlive the call, then answers.
    std::fs::write(&script, "#!/bin/sh\nsleep 1234.5 &\necho '\"started\"'\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let functions = format!("  spawn:\n    command: [{:?}]\n", script.display().to_string());
    let s = builder(policy_with(&functions, "")).build().expect("sandbox");
    let o = run_on(&s, terrarium::Tier::Rustpython, "from host import spawn\nspawn()");
    assert_eq!(o.result, Some(serde_json::json!("started")), "{o:?}");
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 1234.5"]).output().expect("pgrep");
    assert!(left.stdout.is_empty(), "a process the command started outlived the call: {left:?}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn on_docker_a_snippet_that_does_not_read_its_replies_still_ends_at_its_deadline() {
    let Some(policy) = docker_policy_with("  big:\n    timeout: 5\n", "") else { return };
    let policy = policy
        .tighten(&terrarium::Overrides { timeout: Some(Duration::from_secs(3)), ..Default::default() })
        .expect("t");
    let s = builder(policy)
        .function("big", |_call| async { Ok(serde_json::json!("x".repeat(900_000))) })
        .build()
        .expect("sandbox");
    // The snippet writes call lines itself and never reads a reply: the host's
    // write of the reply cannot complete, and must not hold the run past its
    // deadline.
    let code = "from host import big\nimport time\ng = getattr(big, '__glo' + 'bals__')\n\
                w, n = g['_real_stderr_write'], g['_nonce']\n\
                for _ in range(3):\n    w('\\n' + n + ' call [\"big\", {\"args\": [], \"kwargs\": {}}]\\n')\n\
                g['_real_stderr_flush']()\ntime.sleep(3600)";
    let started = std::time::Instant::now();
    let o = run_on(&s, terrarium::Tier::Docker, code);
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn over_http_a_caller_reattaches_to_a_running_cell_and_can_end_it() {
    use crate::common::server::{SUBMIT, Server};
    let policy = format!("{}\nfunctions:\n  ask:\n    timeout: 0.5\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = Server::start(Some(&policy), &[]);
    let id = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    let current = format!("/v1/sessions/{id}/cells/current");
    assert_eq!(s.call("GET", &current, Some(SUBMIT), None).status, 404, "no cell runs yet");
    // Three calls nobody answers in time: each one after the first is announced to
    // a caller that re-attaches.
    let code = r#"{"code": "from host import ask\nfor i in range(3):\n    try:\n        ask(i)\n    except TimeoutError:\n        pass\n'done'"}"#;
    let r = s.call("POST", &format!("/v1/sessions/{id}/cells"), Some(SUBMIT), Some(code));
    assert_eq!((r.status, r.json()["function_call"]["args"].clone()), (202, serde_json::json!([0])), "{}", r.body);
    let mut seen = vec![0];
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let r = s.call("GET", &current, Some(SUBMIT), None);
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 202, "{}", r.body);
        let arg = r.json()["function_call"]["args"][0].as_i64().expect("arg");
        if seen.last() != Some(&arg) {
            seen.push(arg);
        }
        assert!(std::time::Instant::now() < until, "the cell never ended");
    };
    assert_eq!(last.json()["result"], "done", "{}", last.body);
    assert_eq!(seen, [0, 1, 2], "every call was announced");
    // A cell waiting on a call nobody answers is stopped by ending the session.
    let policy = format!("{}\nfunctions:\n  ask:\n    timeout: 600\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = Server::start(Some(&policy), &[]);
    let id = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    let r = s.call(
        "POST",
        &format!("/v1/sessions/{id}/cells"),
        Some(SUBMIT),
        Some(r#"{"code": "from host import ask\nask()"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let ended = s.call("DELETE", &format!("/v1/sessions/{id}"), Some(SUBMIT), None);
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(s.call("GET", &format!("/v1/sessions/{id}"), Some(SUBMIT), None).status, 404);
}

#[test]
fn host_functions_round_trip_on_the_wasm_tier() {
    let policy = policy_with(PRICE, "");
    if crate::common::wasm_executor(policy.clone()).is_none() {
        return;
    }
    let s = builder(policy).function("price", price).build().expect("sandbox");
    let wasm = terrarium::Tier::Wasm;
    prices_on(&s, wasm);
    // A forged call of an undeclared name, repeated: refused once, the run ends.
    let o = run_on(&s, wasm, FORGED_CALLS);
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().expect("error").message.contains("\"steal\" is not declared"), "{o:?}");
    assert_eq!(o.calls.len(), 1, "{:?}", o.calls);
    // Waiting for the host is not the run's time: 3 × 0.6 s under a 1 s timeout.
    let slow = policy_with("  wait:\n    timeout: 5\n", "")
        .tighten(&terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() })
        .expect("tighten");
    let s2 = builder(slow)
        .function("wait", |_call| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(serde_json::json!("done"))
        })
        .build()
        .expect("sandbox");
    let o = run_on(&s2, wasm, "from host import wait\n[wait(), wait(), wait()]");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    // In a session, on the same instance.
    let s = Arc::new(s);
    let opts = terrarium::SessionOptions { tier: TierChoice::Fixed(wasm), caller: None, workspace: None };
    let mut session = runtime().block_on(s.session(opts)).expect("session");
    let cell = |session: &mut terrarium::Session, code: &str| {
        runtime().block_on(session.execute(ExecRequest::new(code))).expect("cell")
    };
    assert_eq!(cell(&mut session, "from host import price").status, Status::Ok);
    let o = cell(&mut session, "price('apple')['total'] + price('apple', qty=3)['total']");
    assert_eq!(o.result, Some(serde_json::json!(12)), "{o:?}");
}

/// The tiers this machine serves, for tests that run on each (a missing wasm or
/// docker tier fails loudly unless its opt-out variable says to skip it).
fn tiers_here() -> Vec<terrarium::Tier> {
    let mut tiers = vec![terrarium::Tier::Rustpython];
    if crate::common::wasm_executor(Policy::default_policy()).is_some() {
        tiers.push(terrarium::Tier::Wasm);
    }
    if crate::common::docker_executor(crate::common::docker_policy(), 0).is_some() {
        tiers.push(terrarium::Tier::Docker);
    }
    tiers
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_operators_command_and_the_api_caller_answer_on_every_tier() {
    use crate::common::server::{SUBMIT, Server};
    let base = crate::common::default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE);
    let functions = "functions:\n  echo:\n    command: [/bin/cat]\n  ask:\n    timeout: 30\n";
    let policy = Policy::from_yaml(&format!("{base}\n{functions}"), "p.yaml").expect("policy");
    let s = builder(policy).build().expect("sandbox");
    let tiers = tiers_here();
    for &tier in &tiers {
        let o = run_on(&s, tier, "from host import echo\necho(1, k=[2])");
        assert_eq!(
            o.result,
            Some(serde_json::json!({"function": "echo", "args": [1], "kwargs": {"k": [2]}})),
            "{tier}: {o:?}"
        );
    }
    let server = Server::start(Some(&format!("{base}\n{functions}")), &[]);
    for &tier in &tiers {
        let started = server.call("POST", "/v1/sessions", Some(SUBMIT), Some(&format!(r#"{{"tier": "{tier}"}}"#)));
        assert_eq!(started.status, 200, "{tier}: {}", started.body);
        let id = started.json()["id"].as_str().expect("id").to_string();
        let r = server.call(
            "POST",
            &format!("/v1/sessions/{id}/cells"),
            Some(SUBMIT),
            Some(r#"{"code": "from host import ask\nask('q') * 2"}"#),
        );
        assert_eq!(r.status, 202, "{tier}: {}", r.body);
        let call = r.json()["function_call"]["id"].as_str().expect("call id").to_string();
        let r =
            server.call("POST", &format!("/v1/sessions/{id}/calls/{call}"), Some(SUBMIT), Some(r#"{"result": 21}"#));
        assert_eq!((r.status, r.json()["result"].as_i64()), (200, Some(42)), "{tier}: {}", r.body);
        assert_eq!(server.call("DELETE", &format!("/v1/sessions/{id}"), Some(SUBMIT), None).status, 200);
    }
}

#[test]
fn on_wasm_only_the_time_blocked_on_a_reply_moves_the_deadline() {
    let policy = policy_with("  wait:\n    timeout: 5\n", "")
        .tighten(&terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() })
        .expect("tighten");
    if crate::common::wasm_executor(policy.clone()).is_none() {
        return;
    }
    let s = builder(policy)
        .function("wait", |_call| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(serde_json::json!("done"))
        })
        .build()
        .expect("sandbox");
    // Three calls written at once, none read: the snippet computes for 1.5 s of its
    // own while the host answers them. That time is the run's: it ends at its 1 s
    // deadline (were the host's 1.8 s of answering added, it would end ok).
    let code = "import time\nfrom host import wait\ng = getattr(wait, '__glo' + 'bals__')\n\
                w, n = g['_real_stderr_write'], g['_nonce']\n\
                for _ in range(3):\n    w('\\n' + n + ' call [\"wait\", {\"args\": [], \"kwargs\": {}}]\\n')\n\
                g['_real_stderr_flush']()\nt = time.monotonic()\nwhile time.monotonic() - t < 1.5:\n    pass\n'done'";
    let o = run_on(&s, terrarium::Tier::Wasm, code);
    assert_eq!(o.status, Status::Timeout, "{o:?}");
}
