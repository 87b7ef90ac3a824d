//! `terrarium serve` as a client sees it: the real binary on a loopback port,
//! real tiers, the real audit database. Attacks on the door: no token, a wrong
//! token, the wrong role, bad bodies, shell tricks in commands, a flood.

use crate::common::default_policy_with;
use crate::common::server::{ADMIN, APPROVE, Reply, SUBMIT, Server, call, parse_reply, request_bytes, sign_in};

fn audit_rows(server: &Server) -> Vec<serde_json::Value> {
    let out = server.cli(&["audit", "tail", "-n", "500"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

/// Waits until the audit log has a row of `kind` matching `pred` (the server
/// writes its log asynchronously).
fn wait_for_audit(server: &Server, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(row) = audit_rows(server).into_iter().find(|r| r["kind"] == kind && pred(r)) {
            return row;
        }
        assert!(std::time::Instant::now() < deadline, "no {kind} event in the audit log");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn h8_callers_without_a_token_or_without_the_role_get_401_or_403_and_are_audited_in_aggregate() {
    let s = Server::start(None, &[]);
    let exec = r#"{"code": "1 + 1"}"#;
    let none = s.call("POST", "/v1/execute", None, Some(exec));
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let guess = s.call("POST", "/v1/execute", Some("root-token-0123456789abcdef0123456789abcdeF"), Some(exec));
    assert_eq!(guess.status, 401, "one wrong character is a wrong token: {}", guess.body);
    let basic = call(s.addr, "POST", "/v1/execute", None, Some(exec.as_bytes()), &[("Authorization", ADMIN)]);
    assert_eq!(basic.status, 401, "a token without the Bearer scheme: {}", basic.body);
    for (method, path, token) in [
        ("POST", "/v1/execute", APPROVE),
        ("POST", "/v1/commands", APPROVE),
        ("GET", "/v1/approvals", SUBMIT),
        ("POST", "/v1/approvals/1/approve", SUBMIT),
        ("GET", "/v1/breakers", SUBMIT),
        ("GET", "/metrics", APPROVE),
    ] {
        let r = s.call(method, path, Some(token), Some(exec));
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap_or("").contains("role"), "{}", r.body);
    }
    // What needs no token.
    assert_eq!(s.call("GET", "/v1/health", None, None).status, 200);
    assert_eq!(s.call("GET", "/openapi.json", None, None).json()["openapi"], "3.1.0");
    // The right role goes through (admin may do everything).
    let ok = s.call("POST", "/v1/execute", Some(SUBMIT), Some(exec));
    assert_eq!((ok.status, &ok.json()["result"]), (200, &serde_json::json!(2)), "{}", ok.body);
    assert_eq!(s.call("GET", "/v1/breakers", Some(ADMIN), None).status, 200);
    assert_eq!(s.call("GET", "/v1/approvals", Some(ADMIN), None).status, 200);

    let refused = wait_for_audit(&s, "auth_denied", |r| r["data"]["token_name"] == "ci");
    assert_eq!(refused["data"]["status"], 403, "{refused}");
    // Aggregated (H8): the first refusal of each (status, token name) in a window is
    // an event; the others are counted once the window ends. Nothing is lost.
    wait_for_audit(&s, "auth_denied_repeated", |r| r["data"]["token_name"].is_null());
    wait_for_audit(&s, "auth_denied_repeated", |r| r["data"]["token_name"] == "alice");
    wait_for_audit(&s, "auth_denied_repeated", |r| r["data"]["token_name"] == "ci");
    let rows = audit_rows(&s);
    let denied: Vec<_> = rows.iter().filter(|r| r["kind"] == "auth_denied").collect();
    assert_eq!(denied.len(), 3, "one event per status and token name: {denied:#?}");
    let repeated: u64 =
        rows.iter().filter(|r| r["kind"] == "auth_denied_repeated").filter_map(|r| r["data"]["count"].as_u64()).sum();
    assert_eq!(denied.len() as u64 + repeated, 9, "every refusal is counted: {rows:#?}");
    assert!(denied.iter().any(|r| r["data"]["token_name"] == "alice" && r["data"]["status"] == 403));
    let all = serde_json::to_string(&rows).expect("rows");
    for secret in [ADMIN, SUBMIT, APPROVE, "root-token-0123456789abcdef0123456789abcdeF"] {
        assert!(!all.contains(secret), "a token reached the audit log");
    }
    let verify = s.cli(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let s = Server::start(None, &[]);
    let post = |body: &[u8]| call(s.addr, "POST", "/v1/execute", Some(SUBMIT), Some(body), &[]);
    for (body, status, needle) in [
        (&b"{"[..], 400, "bad JSON"),
        (b"", 400, "bad JSON"),
        (b"\xff\xfe", 400, "bad JSON"),
        (br#"{"code": "1", "network": true}"#, 400, "unknown field"),
        (br#"{"code": ""}"#, 400, "empty"),
        (br#"{"code": "1", "tier": "vm"}"#, 400, "expected auto"),
        (br#"{"code": "1", "timeout": -1}"#, 400, "positive"),
        (br#"{"code": "1", "timeout": 3600}"#, 400, "only tighten"),
        (br#"{"code": "1", "max_memory": "1t"}"#, 400, "only tighten"),
        (br#"{"code": "1", "allowed_modules": ["os"]}"#, 400, "only tighten"),
    ] {
        let r = post(body);
        assert_eq!(r.status, status, "{}: {}", String::from_utf8_lossy(body), r.body);
        assert!(r.json()["error"].as_str().unwrap_or("").contains(needle), "{needle:?}: {}", r.body);
    }
    // Bodies past the limit are refused without being read to the end.
    let big = format!(r#"{{"code": "{}"}}"#, "x".repeat(3 << 20));
    let r = post(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    // Code over the policy's size cap, inside the body limit.
    let r = post(format!(r#"{{"code": "{}"}}"#, "1".repeat((1 << 20) + 1)).as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    // Code at the cap whose JSON is half as long again (every other byte escaped) is
    // served.
    let r = post(format!(r#"{{"code": "{}"}}"#, "#\\n".repeat(1 << 19)).as_bytes());
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    assert_eq!(s.call("GET", "/v1/nothing", Some(ADMIN), None).status, 404);
    assert_eq!(s.call("GET", "/v1/approvals/abc", Some(ADMIN), None).status, 404);
    assert_eq!(s.call("GET", "/v1/approvals/999", Some(ADMIN), None).status, 404);
    assert_eq!(s.call("GET", "/v1/approvals?status=maybe", Some(ADMIN), None).status, 400);
    assert_eq!(s.call("POST", "/v1/approvals/999/approve", Some(ADMIN), None).status, 404);
    assert_eq!(s.call("POST", "/v1/approvals/1/maybe", Some(ADMIN), None).status, 404);
    assert_eq!(s.call("POST", "/v1/commands", Some(SUBMIT), Some("{}")).status, 400);
    // A guest's own failure is an outcome, not an HTTP error.
    let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "import os"}"#));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("denied")), "{}", r.body);
}

/// Every path the OpenAPI document names is served (with the role it names).
#[test]
fn the_openapi_document_describes_the_served_endpoints() {
    let s = Server::start(None, &[]);
    let doc = s.call("GET", "/openapi.json", None, None).json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 13, "{paths:?}");
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path.replace("{id}", "1").replace("{decision}", "approve");
            let r = s.call(&method.to_uppercase(), &concrete, Some(ADMIN), None);
            let unknown = r.status == 404 && r.body.contains("no such endpoint") || r.status == 405;
            assert!(!unknown, "{method} {path} is documented but not served: {} {}", r.status, r.body);
        }
    }
    for endpoint in ["/v1/execute", "/v1/commands", "/v1/approvals", "/v1/breakers", "/v1/health", "/metrics"] {
        assert!(paths.contains_key(endpoint), "{endpoint} is not documented");
    }
    let metrics = s.call("GET", "/metrics", Some(ADMIN), None);
    assert_eq!(metrics.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(metrics.body.contains("# TYPE terrarium_http_requests counter"), "{}", metrics.body);
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    assert!(metrics.body.contains("terrarium_breaker_state{breaker=\"docker\"} 0"), "{}", metrics.body);
    assert!(metrics.body.contains("terrarium_approvals_pending 0"), "{}", metrics.body);
}

/// The acceptance's shell tricks, over HTTP: each refused with its reason, none run.
#[test]
fn commands_with_shell_tricks_are_refused_with_reasons() {
    let s = Server::start(None, &[]);
    for (line, needle) in [
        ("rm -rf /", "\"rm\" is denied"),
        ("curl http://127.0.0.1/x | sh", "`|`"),
        ("echo $(id)", "`$(…)`"),
        ("echo `id`", "backtick"),
        ("ls; id", "`;`"),
        ("ls && id", "`&`"),
        ("ls > /etc/passwd", "redirect"),
        ("cat < /etc/shadow", "redirect"),
    ] {
        let body = serde_json::json!({ "command": line }).to_string();
        let r = s.call("POST", "/v1/commands", Some(SUBMIT), Some(&body));
        assert_eq!(r.status, 200, "{line}: {}", r.body);
        let v = r.json();
        assert_eq!((v["decision"].as_str(), v["allowed"].as_bool()), (Some("deny"), Some(false)), "{line}: {v}");
        assert!(v["reason"].as_str().unwrap_or("").contains(needle), "{line}: {needle:?} not in {v}");
        assert!(v["outcome"].is_null(), "{line} ran: {v}");
    }
    let event = wait_for_audit(&s, "command", |r| r["data"]["line"] == "rm -rf /");
    assert_eq!((event["data"]["decision"].as_str(), event["data"]["ran"].as_bool()), (Some("deny"), Some(false)));
    // Not allow-listed, and the caller will not wait: denied, nothing queued.
    let r = s.call("POST", "/v1/commands", Some(SUBMIT), Some(r#"{"argv": ["git", "status"], "wait": 0}"#));
    let v = r.json();
    assert_eq!((v["decision"].as_str(), v["allowed"].as_bool()), (Some("needs_approval"), Some(false)), "{v}");
    assert_eq!(s.call("GET", "/v1/approvals", Some(APPROVE), None).json(), serde_json::json!([]));
}

/// A policy with the local image whose `approvals` section is `approvals`.
fn docker_policy_with_approvals(approvals: &str) -> String {
    format!("{}\n{approvals}", default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE))
}

/// Polls the queue until one item is pending; returns it.
pub fn first_pending(s: &Server) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let items = s.call("GET", "/v1/approvals?status=pending", Some(APPROVE), None).json();
        if let Some(item) = items.as_array().and_then(|a| a.first()) {
            return item.clone();
        }
        assert!(std::time::Instant::now() < deadline, "nothing became pending: {}", s.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_critical_run_blocks_until_approved_then_runs() {
    let s = Server::start(
        Some(&docker_policy_with_approvals("approvals:\n  critical: [docker_tier]\n  timeout: 60\n")),
        &[],
    );
    let addr = s.addr;
    let body = r#"{"code": "print(6 * 7)", "tier": "docker", "id": "needs-a-human"}"#;
    let client =
        std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[]));
    let item = first_pending(&s);
    assert_eq!((item["kind"].as_str(), item["subject"]["tier"].as_str()), (Some("execute"), Some("docker")), "{item}");
    assert_eq!(item["subject"]["code"], "print(6 * 7)");
    assert!(item["reason"].as_str().unwrap_or("").contains("docker tier"), "{item}");
    assert!(!client.is_finished(), "the run waits for the decision");
    let id = item["id"].as_i64().expect("id");
    let decided = s.call("POST", &format!("/v1/approvals/{id}/approve"), Some(APPROVE), Some(r#"{"note": "fine"}"#));
    assert_eq!((decided.status, decided.json()["decided_by"].as_str()), (200, Some("alice")), "{}", decided.body);
    let r: Reply = client.join().expect("client");
    let v = r.json();
    assert_eq!((r.status, v["status"].as_str(), v["stdout"].as_str()), (200, Some("ok"), Some("42\n")), "{v}");
    assert!(v["route"].as_str().unwrap_or("").contains(&format!("approved as request {id}")), "{v}");
    let again = s.call("POST", &format!("/v1/approvals/{id}/deny"), Some(APPROVE), None);
    assert_eq!(again.status, 409, "a decision stands: {}", again.body);
    let done = s.call("GET", &format!("/v1/approvals/{id}"), Some(APPROVE), None).json();
    assert_eq!(done["outcome"]["stdout"], "42\n", "the queue keeps how it ended: {done}");
    let approved = wait_for_audit(&s, "approval_approved", |r| r["data"]["id"] == id);
    assert_eq!(approved["data"]["decided_by"], "alice");
    wait_for_audit(&s, "approval_completed", |r| r["data"]["id"] == id);
}

#[test]
fn an_unanswered_critical_run_expires_and_is_denied() {
    let policy = format!(
        "{}\napprovals:\n  critical: [docker_tier, writable_scratch]\n  timeout: 1\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    let s = Server::start(Some(&policy), &[]);
    for body in [r#"{"code": "1", "tier": "docker"}"#, r#"{"code": "1", "tier": "wasm", "scratch": true}"#] {
        let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(body));
        let v = r.json();
        assert_eq!((r.status, v["status"].as_str()), (200, Some("denied")), "{body}: {v}");
        assert_eq!(v["error"]["type"], "NotApproved", "{v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("expired"), "{v}");
    }
    let items = s.call("GET", "/v1/approvals", Some(APPROVE), None).json();
    let statuses: Vec<_> = items.as_array().expect("items").iter().map(|i| i["status"].clone()).collect();
    assert_eq!(statuses, [serde_json::json!("expired"), serde_json::json!("expired")]);
    let late = s.call("POST", &format!("/v1/approvals/{}/approve", items[0]["id"]), Some(APPROVE), None);
    assert_eq!(late.status, 409, "{}", late.body);
    wait_for_audit(&s, "approval_expired", |_| true);
}

/// The review page over plain HTTP: sign-in by role (refusals audited), a session
/// cookie that scripts cannot read, decisions only with the session's CSRF token,
/// and a Content Security Policy on every page.
#[test]
fn h10_the_review_page_needs_a_session_from_its_own_form_with_the_approve_role_and_its_csrf_token() {
    let s = Server::start(None, &[]);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let login = |token: &str| sign_in(s.addr, token);
    let page = s.call("GET", "/review", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"token\"") && !page.body.contains("Waiting for a decision"), "{}", page.body);
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'nonce-"), "{csp}");
    assert_eq!(login("nonsense-token-nonsense-token-nonsense").status, 401);
    assert_eq!(login(SUBMIT).status, 403, "a token without the approve role");
    let ok = login(APPROVE);
    assert_eq!((ok.status, ok.header("location")), (303, Some("/review")), "{ok:?}");
    let cookie = ok.header("set-cookie").expect("session cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let with_session = [("Cookie", session.as_str())];
    let page = call(s.addr, "GET", "/review", None, None, &with_session);
    assert!(page.body.contains("Signed in as <b id=\"who\">alice</b>"), "{}", page.body);
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf");
    let decide = |body: String, headers: &[(&str, &str)]| {
        call(s.addr, "POST", "/review/1/approve", None, Some(body.as_bytes()), headers)
    };
    let both = [form[0], with_session[0]];
    assert_eq!(decide(format!("csrf={csrf}"), &form).status, 401, "no session");
    assert_eq!(decide("csrf=forged".into(), &both).status, 403, "a forged CSRF token");
    assert_eq!(decide(format!("csrf={csrf}"), &both).status, 404, "a real session reaches the queue");
    let out = call(s.addr, "POST", "/review/logout", None, Some(b"csrf=forged"), &both);
    assert_eq!(out.status, 403, "a forged sign-out");
    let out = call(s.addr, "POST", "/review/logout", None, Some(format!("csrf={csrf}").as_bytes()), &both);
    assert_eq!(out.status, 303);
    assert_eq!(decide(format!("csrf={csrf}"), &both).status, 401, "the session ended");
    // H10: a sign-in posted by a page on another origin carries no check cookie.
    let forged =
        call(s.addr, "POST", "/review/login", None, Some(format!("token={APPROVE}&check=x").as_bytes()), &form);
    assert_eq!(forged.status, 403, "login CSRF: {}", forged.body);
    assert!(forged.header("set-cookie").is_none_or(|c| !c.starts_with("terrarium_review=")), "{forged:?}");
    // H10: one identity holds at most four sessions; its fifth sign-in ends the oldest.
    let session_of =
        |r: &Reply| r.header("set-cookie").and_then(|c| c.split(';').next()).expect("session cookie").to_string();
    let first = session_of(&login(APPROVE));
    let signed_in =
        |cookie: &str| call(s.addr, "GET", "/review", None, None, &[("Cookie", cookie)]).body.contains("Signed in as");
    assert!(signed_in(&first));
    for _ in 0..4 {
        assert_eq!(login(APPROVE).status, 303);
    }
    assert!(!signed_in(&first), "the oldest of alice's sessions ended");
    wait_for_audit(&s, "auth_denied", |r| r["data"]["status"] == 401 && r["data"]["endpoint"] == "POST /review/login");
    wait_for_audit(&s, "auth_denied", |r| {
        r["data"]["token_name"] == "ci" && r["data"]["endpoint"] == "POST /review/login"
    });
}

/// The review page's requests without a session (the page's poll, a decision
/// after the session ended) are refused callers like the API's: audited, in
/// aggregate (they were not audited at all).
#[test]
fn review_requests_without_a_session_are_audited_in_aggregate() {
    let s = Server::start(None, &[]);
    let state = s.call("GET", "/review/state", None, None);
    assert_eq!(state.status, 401, "{}", state.body);
    wait_for_audit(&s, "auth_denied", |r| r["data"]["status"] == 401 && r["data"]["endpoint"] == "GET /review/state");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let decided = call(s.addr, "POST", "/review/1/approve", None, Some(b"csrf=x"), &form);
    assert_eq!(decided.status, 401, "{}", decided.body);
    // The second 401 of the window is counted, then recorded with the count.
    wait_for_audit(&s, "auth_denied_repeated", |r| r["data"]["status"] == 401 && r["data"]["count"] == 1);
}

/// SIGTERM: the server stops within its grace period even while a request waits
/// for a human, and the abandoned item expires instead of staying approvable.
#[test]
fn a_terminated_server_exits_promptly_and_its_waiting_items_expire() {
    let policy =
        format!("{}\napprovals:\n  critical: [docker_tier]\n  timeout: 600\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let mut s = Server::start(Some(&policy), &[]);
    let addr = s.addr;
    let critical = r#"{"code": "1", "tier": "docker"}"#;
    let client =
        std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(critical.as_bytes()), &[]));
    let id = first_pending(&s)["id"].as_i64().expect("id");
    let status = s.terminate();
    assert!(status.success(), "{status:?}: {}", s.log());
    assert!(s.log().contains("cut off"), "{}", s.log());
    let r = client.join().expect("client");
    assert_ne!(r.status, 200, "the waiting request did not run: {r:?}");
    let item: serde_json::Value =
        serde_json::from_str(&s.cli(&["approvals", "show", &id.to_string()]).stdout).expect("item");
    assert_eq!(item["status"], "expired", "{item}");
    let late = s.cli(&["approvals", "approve", &id.to_string(), "--as", "alice"]);
    assert_eq!(late.code, 2, "{}", late.stderr);
}

/// Runs waiting for a human have their own budget: past it, another critical run
/// gets 429 (nothing queued), and ordinary runs go on meanwhile.
#[test]
fn approval_waits_have_their_own_limit_and_do_not_hold_up_other_runs() {
    let policy =
        format!("{}\napprovals:\n  critical: [docker_tier]\n  timeout: 60\n", terrarium::policy::DEFAULT_POLICY_YAML);
    // Four may wait, one per caller (a quarter each): one caller cannot hold them all.
    let s = Server::start(Some(&policy), &["--max-waiting", "4", "--max-running", "1"]);
    let addr = s.addr;
    let critical = r#"{"code": "1", "tier": "docker"}"#;
    let first =
        std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(critical.as_bytes()), &[]));
    let item = first_pending(&s);
    let second = s.call("POST", "/v1/execute", Some(SUBMIT), Some(critical));
    assert_eq!((second.status, second.header("retry-after")), (429, Some("1")), "{}", second.body);
    assert!(second.body.contains("the most one caller may"), "{}", second.body);
    let items = s.call("GET", "/v1/approvals", Some(APPROVE), None).json();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "the refused one was not queued: {items}");
    // Another caller still gets a place.
    let other_caller =
        std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(ADMIN), Some(critical.as_bytes()), &[]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let admins = loop {
        let items = s.call("GET", "/v1/approvals?status=pending", Some(APPROVE), None).json();
        if let Some(i) = items.as_array().and_then(|a| a.iter().find(|i| i["subject"]["caller"] == "root")) {
            break i["id"].as_i64().expect("id");
        }
        assert!(std::time::Instant::now() < deadline, "the second caller's item was not queued");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for _ in 0..3 {
        let other = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "2 + 2"}"#));
        assert_eq!((other.status, &other.json()["result"]), (200, &serde_json::json!(4)), "{}", other.body);
    }
    assert_eq!(s.call("POST", &format!("/v1/approvals/{admins}/deny"), Some(APPROVE), None).status, 200);
    assert_eq!(other_caller.join().expect("client").json()["status"], "denied");
    let id = item["id"].as_i64().expect("id");
    let denied = s.call("POST", &format!("/v1/approvals/{id}/deny"), Some(APPROVE), Some(r#"{"note": "no"}"#));
    assert_eq!(denied.status, 200, "{}", denied.body);
    let v = first.join().expect("client").json();
    assert_eq!((v["status"].as_str(), v["error"]["type"].as_str()), (Some("denied"), Some("NotApproved")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("denied by alice: no"), "{v}");
}

/// RSS and its peak (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One thousand clients at once: each gets an answer (200) or a 429 with
/// Retry-After, nothing else; the server's memory stays bounded and does not grow
/// from one burst to the next.
#[test]
fn slow_a_thousand_concurrent_requests_get_answers_or_429s_with_bounded_memory() {
    // A thousand sockets need more than the usual 1,024 descriptors here too.
    terrarium::process::raise_open_files_limit();
    let s = Server::start(None, &["--max-running", "8", "--max-requests", "128"]);
    let warm = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1 + 1"}"#));
    assert_eq!(warm.status, 200, "{}", warm.body);
    let burst = || {
        crate::common::runtime().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..1000 {
                let addr = s.addr;
                tasks.push(tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let body = format!(r#"{{"code": "{i} * 2"}}"#);
                    let mut c = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                    let req = request_bytes(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[]);
                    c.write_all(&req).await.map_err(|e| format!("send: {e}"))?;
                    let mut raw = Vec::new();
                    c.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
                    Ok::<_, String>((i, parse_reply(&raw)))
                }));
            }
            let mut replies = Vec::new();
            for t in tasks {
                replies.push(t.await.expect("task"));
            }
            replies
        })
    };
    let mut peaks = Vec::new();
    let mut total_busy = 0;
    for round in 0..2 {
        let replies = burst();
        let (mut ok, mut busy) = (0, 0);
        for r in replies {
            let (i, reply) = r.unwrap_or_else(|e| panic!("round {round}: a client got no answer: {e}"));
            match reply.status {
                200 => {
                    assert_eq!(reply.json()["result"], i * 2, "{}", reply.body);
                    ok += 1;
                }
                429 => {
                    assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
                    busy += 1;
                }
                other => panic!("round {round}: status {other}: {}", reply.body),
            }
        }
        assert_eq!(ok + busy, 1000);
        total_busy += busy;
        assert!(ok >= 8, "round {round}: only {ok} requests were served");
        let (rss, hwm) = memory_kib(s.pid());
        eprintln!("round {round}: {ok} answered, {busy} × 429; server RSS {rss} KiB, peak {hwm} KiB");
        assert!(hwm < 512 * 1024, "the server's peak memory is {hwm} KiB");
        peaks.push(hwm);
    }
    assert!(peaks[1] < peaks[0] + 64 * 1024, "memory grew from one burst to the next: {peaks:?}");
    let health = s.call("GET", "/v1/health", None, None);
    assert_eq!(health.status, 200, "the server is still up");
    let m = s.call("GET", "/metrics", Some(ADMIN), None).body;
    if total_busy > 0 {
        assert!(m.contains(&format!("terrarium_rejected_total{{reason=\"busy\"}} {total_busy}\n")), "{m}");
    }
}

/// Opens a connection that sends a request's headers announcing a body, and
/// then nothing: a slow-body client.
fn slow_body(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("Content-Length: 1000\r\n\r\n");
    s.write_all(head.as_bytes()).expect("send");
    s
}

/// H2: unauthenticated clients that never finish a body cannot hold the slots
/// authorised requests need, and a slow body is cut off.
#[test]
fn h2_a_slow_body_flood_leaves_authorised_requests_served() {
    let s = Server::start(None, &["--max-requests", "8"]);
    let flood: Vec<_> = (0..16)
        .map(|i| {
            let path = ["/review/login", "/review/logout", "/review/1/approve"][i % 3];
            slow_body(s.addr, path, None)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..5 {
        let ok = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1 + 1"}"#));
        assert_eq!(ok.status, 200, "an authorised request during the flood: {}", ok.body);
    }
    // The flood's own pool is full, but the health check answers outside it.
    assert_eq!(s.call("GET", "/v1/health", None, None).status, 200);
    // Each slow body is answered 408 once the body timeout passes, freeing its slot.
    use std::io::Read;
    for mut c in flood {
        c.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw);
        let reply = parse_reply(&raw);
        assert_eq!(reply.status, 408, "a slow body: {}", String::from_utf8_lossy(&raw));
    }
    assert_eq!(s.call("GET", "/v1/health", None, None).status, 200);
}

/// Slow headers: a connection that never finishes its request's headers is closed.
#[test]
fn h2_slow_headers_are_cut_off() {
    use std::io::{Read, Write};
    let s = Server::start(None, &[]);
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").expect("send");
    c.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "the connection stayed open");
}

/// H7: with the database locked for 20 s under an unauthenticated flood, the
/// health check answers throughout, and service is whole within 2 s of the release.
#[test]
fn h7_a_locked_database_under_a_flood_does_not_hang_the_server() {
    let s = Server::start(None, &[]);
    assert_eq!(s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1"}"#)).status, 200);
    let db = s.home.path().join("audit.db");
    let lock = rusqlite::Connection::open(&db).expect("db");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (s.addr, stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = call(
                        addr,
                        "POST",
                        "/v1/execute",
                        Some("wrong-token-wrong-token-wrong-token-wrong"),
                        Some(b"{}"),
                        &[],
                    );
                }
            })
        })
        .collect();
    let locked_until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut checks = 0;
    while std::time::Instant::now() < locked_until {
        let t = std::time::Instant::now();
        let h = s.call("GET", "/v1/health", None, None);
        assert!(h.status == 200 || h.status == 429, "health during the lock: {} {}", h.status, h.body);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "health took {:?}", t.elapsed());
        checks += 1;
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    lock.execute_batch("COMMIT").expect("unlock");
    drop(lock);
    let released = std::time::Instant::now();
    loop {
        let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "2 + 2"}"#));
        if r.status == 200 {
            break;
        }
        assert!(
            released.elapsed() < std::time::Duration::from_secs(2),
            "not served 2 s after the release: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        let _ = t.join();
    }
    assert!(checks >= 40, "only {checks} health checks in 20 s");
}

/// H4/A4: another process reading the log with a read-write connection while the
/// server writes must not cost the server its events, even if it is then killed:
/// nothing in Terrarium opens the database outside SQLite once a connection exists
/// (closing such a descriptor dropped the process's locks, and the reader reset the
/// WAL under the writer).
#[test]
fn h4_another_process_reading_the_log_loses_no_events() {
    let s = Server::start(None, &[]);
    let exec = r#"{"code": "1 + 1"}"#;
    for _ in 0..3 {
        assert_eq!(s.call("POST", "/v1/execute", Some(SUBMIT), Some(exec)).status, 200);
    }
    // The review queue opens connections of its own, as a reviewer would.
    assert_eq!(s.call("GET", "/v1/approvals", Some(ADMIN), None).status, 200);
    let db = s.home.path().join("audit.db");
    let reader = std::process::Command::new("python3")
        .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from events').fetchone()[0]); c.close()"])
        .arg(&db)
        .output()
        .expect("python3 reads the log");
    assert!(reader.status.success(), "{}", String::from_utf8_lossy(&reader.stderr));
    for _ in 0..3 {
        assert_eq!(s.call("POST", "/v1/execute", Some(SUBMIT), Some(exec)).status, 200);
    }
    assert_eq!(s.call("GET", "/v1/approvals", Some(ADMIN), None).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on the server child this test started.
    #[allow(unsafe_code, reason = "libc::kill has no safe wrapper in std")]
    unsafe {
        libc::kill(s.pid() as i32, libc::SIGKILL);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let verify = s.cli(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    let executes = audit_rows(&s).iter().filter(|r| r["kind"] == "outcome").count();
    assert_eq!(executes, 6, "every answered run's outcome is in the log");
}

/// The review page and the queue, attacked through what a submitter controls:
/// H5 (bidi controls shown as marks, argv word by word, the analysis' finding),
/// H6 (a subject too large to review is refused), H12 (no mount source reaches an
/// approver), H15 (events name the caller, client ids are namespaced, an empty
/// decider is refused).
#[test]
fn h5_h6_h12_h15_what_the_reviewer_sees_is_what_runs_and_names_no_host_path() {
    let secret_dir = tempfile::tempdir().expect("mount source");
    let source = secret_dir.path().to_string_lossy().to_string();
    let policy = format!(
        "{}\nterrarium:\n  read_only_mounts:\n    - source: {source}\n      target: /data\n\
         approvals:\n  critical: [writable_scratch, unlisted_command]\n  timeout: 60\n",
        terrarium::policy::DEFAULT_POLICY_YAML
    );
    let s = Server::start(Some(&policy), &[]);
    let addr = s.addr;
    // A Trojan Source snippet waits for approval (a writable scratch directory).
    let trojan = "access = 'user'\nif access != 'user\u{202E} \u{2066}# admin\u{2069} \u{2066}':\n    print('admin')\n";
    let body = serde_json::json!({"code": trojan, "tier": "wasm", "scratch": true, "id": "approval-1"}).to_string();
    let run = std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(body.as_bytes()), &[]));
    let item = first_pending(&s);
    let id = item["id"].as_i64().expect("id");
    let policy_shown = item["subject"]["policy"].as_str().expect("policy");
    assert!(!policy_shown.contains(&source) && policy_shown.contains("/data"), "H12: {policy_shown}");
    assert_eq!(item["subject"]["caller"], "ci", "H15: the approver sees who asks: {item}");
    let findings = item["subject"]["findings"].to_string();
    assert!(findings.contains("U+202E"), "H5: the analysis reports it: {findings}");
    let session =
        sign_in(addr, APPROVE).header("set-cookie").and_then(|c| c.split(';').next()).expect("cookie").to_string();
    let page = call(addr, "GET", "/review", None, None, &[("Cookie", &session)]);
    assert!(!page.body.contains('\u{202E}') && !page.body.contains('\u{2066}'), "H5: raw bidi controls on the page");
    assert!(
        page.body.contains(&format!("id=\"hidden-{id}\"")) && page.body.contains("\u{27E6}U+202E\u{27E7}"),
        "H5: {}",
        page.body
    );
    // H15: an empty decider is refused, on the CLI as on the API.
    let empty = s.cli(&["approvals", "deny", &id.to_string(), "--as", ""]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert!(empty.stderr.contains("decider"), "{}", empty.stderr);
    let denied = s.call("POST", &format!("/v1/approvals/{id}/deny"), Some(APPROVE), None);
    assert_eq!(denied.status, 200, "{}", denied.body);
    assert_eq!(run.join().expect("run").json()["status"], "denied");
    // H15: the client's id "approval-1" is not the gate's "approval-1".
    let request = wait_for_audit(&s, "request", |r| r["data"]["caller"] == "ci");
    assert_eq!(request["request_id"], "req:ci:approval-1", "{request}");
    let outcome = wait_for_audit(&s, "outcome", |r| r["request_id"] == "req:ci:approval-1");
    assert_eq!(outcome["data"]["caller"], "ci");
    // H5: a command's words, one by one, with a hidden character marked.
    let argv = serde_json::json!({"argv": ["git", "log", "--format=a b\u{202E}c"], "wait": 30}).to_string();
    let cmd = std::thread::spawn(move || call(addr, "POST", "/v1/commands", Some(SUBMIT), Some(argv.as_bytes()), &[]));
    let item = first_pending(&s);
    let cid = item["id"].as_i64().expect("id");
    let page = call(addr, "GET", "/review", None, None, &[("Cookie", &session)]);
    let words = page
        .body
        .split(&format!("id=\"argv-{cid}\">"))
        .nth(1)
        .and_then(|r| r.split("</ol>").next())
        .expect("argv list");
    assert_eq!(words.matches("<li>").count(), 3, "{words}");
    assert!(words.contains("a b\u{27E6}") || words.contains("a b<mark"), "{words}");
    s.call("POST", &format!("/v1/approvals/{cid}/deny"), Some(APPROVE), None);
    let v = cmd.join().expect("command").json();
    assert_eq!(v["allowed"], false, "{v}");
    let event = wait_for_audit(&s, "command", |r| r["data"]["caller"] == "ci");
    assert_eq!(event["data"]["argv"][0], "git");
    // H6: a command line too long to review is refused before it is queued.
    let long = serde_json::json!({"argv": ["git", "x".repeat(20_000)], "wait": 30}).to_string();
    let v = s.call("POST", "/v1/commands", Some(SUBMIT), Some(&long)).json();
    assert_eq!(v["decision"], "deny", "{v}");
    assert!(v["reason"].as_str().unwrap_or("").contains("more than 16384"), "{v}");
    // Pages: a limit out of range is a clear 400.
    assert_eq!(s.call("GET", "/v1/approvals?limit=0", Some(APPROVE), None).status, 400);
    assert_eq!(s.call("GET", "/v1/approvals?limit=1", Some(APPROVE), None).json().as_array().map(Vec::len), Some(1));
}

/// DNS rebinding: a page on a name rebound to the server's address sends that name
/// as Host; only IP addresses, localhost and names given with --allow-host pass.
#[test]
fn a_request_for_another_host_name_is_refused() {
    let s = Server::start(None, &["--allow-host", "sandbox.internal"]);
    let with_host = |host: &str| call(s.addr, "GET", "/v1/health", None, None, &[("Host", host)]);
    let port = s.addr.port();
    assert_eq!(with_host(&format!("evil.example:{port}")).status, 421, "a rebound name");
    assert_eq!(with_host("evil.example").status, 421);
    let login = call(s.addr, "GET", "/review", None, None, &[("Host", "evil.example")]);
    assert_eq!(login.status, 421, "the review page too");
    for ok in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "sandbox.internal".into(), "[::1]:1".into()] {
        assert_eq!(with_host(&ok).status, 200, "{ok}");
    }
}

/// S1: clients that pipeline requests and never read the replies lose their
/// connections once a write stalls, and past the connection cap new clients wait
/// in the backlog instead of the server running out of descriptors.
#[test]
fn s1_clients_that_never_read_their_replies_cannot_hold_the_server() {
    use std::io::{Read, Write};
    let s = Server::start(None, &["--max-connections", "32"]);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", s.pid())).map(|d| d.count()).unwrap_or(0);
    let base = fds();
    let one = format!("GET /openapi.json HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr);
    let flood: Vec<u8> = one.repeat(4000).into_bytes();
    for _ in 0..48 {
        let (addr, flood) = (s.addr, flood.clone());
        // Detached: each holds its socket, never reading, longer than the test runs.
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(60)));
            let _ = c.write_all(&flood);
            std::thread::sleep(std::time::Duration::from_secs(90));
        });
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let held = fds();
    assert!(held <= base + 32 + 2, "the connection cap bounds descriptors: {held} (base {base})");
    // Each stalled connection is closed 10 s after its reply stalls; those waiting in
    // the backlog are then accepted and closed in turn.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    while fds() > base + 2 {
        assert!(std::time::Instant::now() < deadline, "stalled connections are still held: {} (base {base})", fds());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let req = format!("GET /v1/health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", s.addr);
    c.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert_eq!(parse_reply(&raw).status, 200, "a new client is served");
}

/// Host review round 5 (F0): a client that hangs up while its critical request
/// waits gave back its waiting place but left the item pending; one submit token
/// piled up 1,500 items past the cap of 64. The item now expires at once.
#[test]
fn an_abandoned_wait_expires_its_item_and_gives_back_its_place() {
    use std::io::Write;
    let policy =
        format!("{}\napprovals:\n  critical: [docker_tier]\n  timeout: 60\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let s = Server::start(Some(&policy), &["--max-waiting", "4"]);
    let critical = r#"{"code": "1", "tier": "docker"}"#;
    let mut c = std::net::TcpStream::connect(s.addr).expect("connect");
    c.write_all(&request_bytes(s.addr, "POST", "/v1/execute", Some(SUBMIT), Some(critical.as_bytes()), &[]))
        .expect("send");
    let id = first_pending(&s)["id"].as_i64().expect("id");
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let item = s.call("GET", &format!("/v1/approvals/{id}"), Some(APPROVE), None).json();
        if item["status"] == "expired" {
            assert_eq!(item["note"], "the request waiting for it went away", "{item}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned item is still {item}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_for_audit(&s, "approval_expired", |r| r["data"]["id"] == id);
    // Its caller's place is free again (one per caller with four in all).
    let addr = s.addr;
    let again =
        std::thread::spawn(move || call(addr, "POST", "/v1/execute", Some(SUBMIT), Some(critical.as_bytes()), &[]));
    let next = first_pending(&s)["id"].as_i64().expect("id");
    assert_ne!(next, id);
    assert_eq!(s.call("POST", &format!("/v1/approvals/{next}/deny"), Some(APPROVE), None).status, 200);
    assert_eq!(again.join().expect("client").json()["status"], "denied");
    // The sign-in form stays reachable while anonymous slow bodies hold their pool.
    let holders: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut h = std::net::TcpStream::connect(s.addr).expect("connect");
            let head = format!(
                "POST /review/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nt",
                s.addr
            );
            h.write_all(head.as_bytes()).expect("send");
            h
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.call("GET", "/review", None, None).status, 200, "the sign-in form");
    drop(holders);
}

/// Whether `value` conforms to `schema` of the OpenAPI document `doc`: types
/// (one or a list, with `null`), enums, bounds, required fields, array items,
/// `oneOf` (exactly one), `anyOf` (at least one), `allOf` (every one, its parts'
/// properties together), `$ref`s, and no field the document does not name (a
/// response that grew a field the document does not describe is drift). Returns
/// where it does not.
fn conforms(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) -> Result<(), String> {
    use serde_json::Value;
    if let Some(r) = schema["$ref"].as_str() {
        let Some(name) = r.strip_prefix("#/components/schemas/") else { return Err(format!("{at}: $ref {r}")) };
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: $ref {r} names no schema"));
        }
        return conforms(doc, target, value, &format!("{at} ({name})"));
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let matching = options.iter().filter(|o| conforms(doc, o, value, at).is_ok()).count();
        if matching != 1 {
            return Err(format!("{at}: {value} matches {matching} (not one) of {schema}"));
        }
    }
    if let Some(options) = schema["anyOf"].as_array()
        && !options.iter().any(|o| conforms(doc, o, value, at).is_ok())
    {
        return Err(format!("{at}: {value} matches none of {schema}"));
    }
    if let Some(parts) = schema["allOf"].as_array() {
        // Each part holds, except that a field is known when any part names it (a
        // flattened struct is the allOf of its parts): the parts' properties and
        // required fields are checked together, the rest of each part alone.
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for part in parts {
            let mut part = part.clone();
            while let Some(r) = part["$ref"].as_str() {
                let name = r.trim_start_matches("#/components/schemas/");
                let target = doc["components"]["schemas"][name].clone();
                if target.is_null() {
                    return Err(format!("{at}: $ref {r} names no schema"));
                }
                part = target;
            }
            if let Some(fields) = part.as_object_mut() {
                if let Some(Value::Object(p)) = fields.remove("properties") {
                    properties.extend(p);
                }
                if let Some(Value::Array(r)) = fields.remove("required") {
                    required.extend(r);
                }
            }
            conforms(doc, &part, value, at)?;
        }
        if !properties.is_empty() {
            let together = serde_json::json!({ "properties": properties, "required": required });
            conforms(doc, &together, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|least| n < least) {
            return Err(format!("{at}: {value} is below the minimum {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|most| n > most) {
            return Err(format!("{at}: {value} is above the maximum {}", schema["maximum"]));
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        if schema["minItems"].as_u64().is_some_and(|least| (values.len() as u64) < least) {
            return Err(format!("{at}: {} items, fewer than {}", values.len(), schema["minItems"]));
        }
        for (i, v) in values.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    if let (Some(props), Some(fields)) = (schema["properties"].as_object(), value.as_object()) {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(required) {
                return Err(format!("{at}: {required} is required, missing from {value}"));
            }
        }
        for (k, v) in fields {
            let Some(s) = props.get(k) else { return Err(format!("{at}: field {k} is not in the document")) };
            conforms(doc, s, v, &format!("{at}.{k}"))?;
        }
    }
    Ok(())
}

/// `conforms` itself: what utoipa writes (type lists with null, `oneOf` with null
/// around a `$ref`, `allOf`, `anyOf`) is checked, not waved through.
#[test]
fn conforms_checks_every_construct_it_meets() {
    use serde_json::json;
    let doc = json!({"components": {"schemas": {
        "A": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer", "minimum": 0}}},
        "B": {"type": "object", "properties": {"b": {"type": ["string", "null"], "enum": ["x", null]}}},
    }}});
    let ok = |schema: serde_json::Value, value: serde_json::Value| conforms(&doc, &schema, &value, "t");
    let a = json!({"$ref": "#/components/schemas/A"});
    let maybe_a = json!({"oneOf": [{"type": "null"}, a]});
    assert!(ok(maybe_a.clone(), json!(null)).is_ok() && ok(maybe_a.clone(), json!({"a": 1})).is_ok());
    assert!(ok(maybe_a.clone(), json!({"a": -1})).is_err(), "minimum");
    assert!(ok(maybe_a.clone(), json!({})).is_err(), "required");
    assert!(ok(maybe_a, json!("a")).is_err(), "neither");
    assert!(ok(json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}), json!(1)).is_err(), "both");
    let both = json!({"allOf": [a, {"$ref": "#/components/schemas/B"}]});
    assert!(ok(both.clone(), json!({"a": 1, "b": "x"})).is_ok());
    assert!(ok(both.clone(), json!({"a": 1, "b": null})).is_ok());
    assert!(ok(both.clone(), json!({"a": 1, "b": "y"})).is_err(), "enum");
    assert!(ok(both.clone(), json!({"b": "x"})).is_err(), "a part's required field");
    assert!(ok(both, json!({"a": 1, "c": 2})).is_err(), "a field no part names");
    let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    assert!(ok(any.clone(), json!(1)).is_ok() && ok(any, json!(true)).is_err());
    assert!(ok(json!({"type": "array", "items": {"type": "string"}, "minItems": 1}), json!([])).is_err());
    assert!(ok(json!({"$ref": "#/components/schemas/Nothing"}), json!(1)).is_err(), "a dangling $ref");
}

/// The OpenAPI document's schemas hold for what the server really answers: each
/// endpoint's 200 body, and the error body, checked field by field.
#[test]
fn real_responses_conform_to_the_openapi_documents_schemas() {
    let policy = format!(
        "{}\napprovals:\n  critical: [docker_tier]\n  timeout: 1\n",
        default_policy_with("python:3.12-slim", crate::common::DOCKER_IMAGE)
    );
    let s = Server::start(Some(&policy), &[]);
    let doc = s.call("GET", "/openapi.json", None, None).json();
    let ok_schema = |method: &str, path: &str| {
        doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"].clone()
    };
    let check = |method: &str, path: &str, concrete: &str, token: Option<&str>, body: Option<&str>| {
        let r = s.call(&method.to_uppercase(), concrete, token, body);
        assert_eq!(r.status, 200, "{method} {concrete}: {}", r.body);
        let schema = ok_schema(method, path);
        assert!(!schema.is_null(), "{method} {path} documents no 200 body");
        if let Err(e) = conforms(&doc, &schema, &r.json(), &format!("{method} {concrete}")) {
            panic!("{e}");
        }
        r.json()
    };
    for code in ["print(1)\n1 + 1", "1/0", "import os", "x = ("] {
        let body = serde_json::json!({ "code": code, "id": "schema" }).to_string();
        check("post", "/v1/execute", "/v1/execute", Some(SUBMIT), Some(&body));
    }
    // A critical run nobody decides: denied after a second, and an item in the queue.
    check("post", "/v1/execute", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "1", "tier": "docker"}"#));
    check("post", "/v1/commands", "/v1/commands", Some(SUBMIT), Some(r#"{"command": "rm -rf /"}"#));
    let items = check("get", "/v1/approvals", "/v1/approvals", Some(APPROVE), None);
    let id = items[0]["id"].as_i64().expect("an item");
    check("get", "/v1/approvals/{id}", &format!("/v1/approvals/{id}"), Some(APPROVE), None);
    check("get", "/v1/breakers", "/v1/breakers", Some(ADMIN), None);
    check("get", "/v1/health", "/v1/health", None, None);
    let session = check("post", "/v1/sessions", "/v1/sessions", Some(SUBMIT), Some(r#"{"tier": "rustpython"}"#));
    let sid = session["id"].as_str().expect("id");
    for code in ["x = 1", "x + 1", "1/0"] {
        let body = serde_json::json!({ "code": code }).to_string();
        check("post", "/v1/sessions/{id}/cells", &format!("/v1/sessions/{sid}/cells"), Some(SUBMIT), Some(&body));
    }
    check("get", "/v1/sessions/{id}", &format!("/v1/sessions/{sid}"), Some(SUBMIT), None);
    check("delete", "/v1/sessions/{id}", &format!("/v1/sessions/{sid}"), Some(SUBMIT), None);
    let refused = s.call("GET", "/v1/breakers", None, None);
    assert_eq!(refused.status, 401);
    let error = serde_json::json!({ "$ref": "#/components/schemas/Error" });
    if let Err(e) = conforms(&doc, &error, &refused.json(), "401") {
        panic!("{e}");
    }
}

/// Sessions over HTTP: cells share state; a session is its token's alone; ended
/// sessions answer 410; idle ones are swept; stopping the server ends the rest,
/// and every end is audited.
#[test]
fn sessions_belong_to_their_token_keep_state_and_end_audited() {
    let policy = format!("{}\nsessions:\n  idle_timeout: 1\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let mut s = Server::start(Some(&policy), &[]);
    let started = s.call("POST", "/v1/sessions", Some(SUBMIT), None);
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.json()["id"].as_str().expect("id").to_string();
    assert_eq!(started.json()["tier"], "rustpython");
    let cells = format!("/v1/sessions/{id}/cells");
    let r = s.call("POST", &cells, Some(SUBMIT), Some(r#"{"code": "def double(x):\n    return 2 * x"}"#));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")), "{}", r.body);
    let r = s.call("POST", &cells, Some(SUBMIT), Some(r#"{"code": "double(21)", "id": "c2"}"#));
    assert_eq!((r.json()["result"].as_i64(), r.json()["session"]["cell"].as_i64()), (Some(42), Some(2)), "{}", r.body);
    // Another token (even an admin's) does not see it: 404, as for no session at all.
    for (method, path, body) in [
        ("POST", cells.as_str(), Some(r#"{"code": "1"}"#)),
        ("GET", &format!("/v1/sessions/{id}"), None),
        ("DELETE", &format!("/v1/sessions/{id}"), None),
    ] {
        let r = s.call(method, path, Some(ADMIN), body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
    }
    let shown = s.call("GET", &format!("/v1/sessions/{id}"), Some(SUBMIT), None);
    assert_eq!((shown.status, shown.json()["cells"].as_i64()), (200, Some(2)), "{}", shown.body);
    // A cell at a limit ends it; the next cell is 410 with the reason.
    let r = s.call("POST", &cells, Some(SUBMIT), Some(r#"{"code": "while True:\n    pass", "timeout": 0.5}"#));
    assert_eq!(r.json()["status"], "timeout", "{}", r.body);
    let r = s.call("POST", &cells, Some(SUBMIT), Some(r#"{"code": "double(1)"}"#));
    assert_eq!(r.status, 410, "{}", r.body);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.starts_with("session ended:")), "{}", r.body);
    // Ended by its owner.
    let other = s.call("POST", "/v1/sessions", Some(SUBMIT), Some("{}")).json()["id"].as_str().expect("id").to_string();
    let ended = s.call("DELETE", &format!("/v1/sessions/{other}"), Some(SUBMIT), None);
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(s.call("GET", &format!("/v1/sessions/{other}"), Some(SUBMIT), None).status, 404);
    // Left idle: swept within a second of its idle timeout.
    let idle = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(s.call("GET", &format!("/v1/sessions/{idle}"), Some(SUBMIT), None).status, 404);
    // Open when the server stops: ended with that reason.
    let last = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    let status = s.terminate();
    assert!(status.success(), "{status:?}: {}", s.log());
    let tail = s.cli(&["audit", "export"]).stdout;
    let ends: Vec<serde_json::Value> = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "session_end")
        .collect();
    let reason = |sid: &str| {
        ends.iter()
            .find(|e| e["request_id"] == format!("session:{sid}"))
            .map(|e| e["data"]["reason"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no session_end for {sid}: {tail}"))
    };
    assert!(reason(&id).contains("timeout"), "{}", reason(&id));
    assert!(reason(&other).contains("ended by ci"), "{}", reason(&other));
    assert!(reason(&idle).contains("idle"), "{}", reason(&idle));
    assert_eq!(reason(&last), "the server stopped");
}

/// A client that hangs up while its cell runs does not leave the session stuck:
/// the cell runs to its deadline, ends the session, and the next cell is 410.
#[test]
fn a_session_cell_whose_client_hangs_up_still_ends_at_its_deadline() {
    use std::io::Write as _;
    let policy = terrarium::policy::DEFAULT_POLICY_YAML.replacen("timeout: 10", "timeout: 2", 1);
    let s = Server::start(Some(&policy), &[]);
    let id = s.call("POST", "/v1/sessions", Some(SUBMIT), None).json()["id"].as_str().expect("id").to_string();
    let body = r#"{"code": "import time\ntime.sleep(1000)"}"#;
    let mut conn = std::net::TcpStream::connect(s.addr).expect("connect");
    write!(
        conn,
        "POST /v1/sessions/{id}/cells HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {SUBMIT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .expect("send");
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(3000));
    let r = s.call("POST", &format!("/v1/sessions/{id}/cells"), Some(SUBMIT), Some(r#"{"code": "1"}"#));
    assert!(r.status == 410 || r.status == 404, "{} {}", r.status, r.body);
    let log = s.cli(&["audit", "export"]).stdout;
    assert!(
        log.lines().any(|l| l.contains("\"kind\":\"outcome\"") && l.contains("\"timeout\"") && l.contains(&id)),
        "the abandoned cell's outcome was not recorded: {log}"
    );
}
