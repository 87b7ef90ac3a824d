//! Alerts reach the operator: a real server with the policy's notifiers, a
//! loopback webhook receiver that refuses the first delivery (so the retry is
//! seen), and a command notifier (`tee`, run without a shell); denials past the
//! rate, an approval request and an emergency stop are each reported, the rate
//! limit holds back and then delivers; the shipped Prometheus rules check.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::server::{ADMIN, SUBMIT, Server};

/// A webhook receiver on loopback: answers 503 to the first `refuse` requests,
/// 200 to the rest, and keeps the JSON bodies it accepted.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    requests: Arc<AtomicUsize>,
}

fn receiver(refuse: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let (g, n) = (got.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut line, mut length) = (String::new(), 0usize);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let seen = n.fetch_add(1, Ordering::SeqCst);
            let status = if seen < refuse {
                "503 Service Unavailable"
            } else {
                if first.starts_with("POST /hook ")
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    g.lock().expect("lock").push(v);
                }
                "200 OK"
            };
            let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        }
    });
    Receiver { addr, got, requests }
}

impl Receiver {
    /// Waits (up to 30 s) until `n` alerts of `kind` arrived; returns them.
    fn wait_for(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let of: Vec<serde_json::Value> =
                self.got.lock().expect("lock").iter().filter(|a| a["kind"] == kind).cloned().collect();
            if of.len() >= n {
                return of;
            }
            assert!(Instant::now() < until, "{n} {kind} alerts never arrived: {:?}", self.got.lock().expect("lock"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
fn alerts_reach_the_webhook_and_the_command_retried_and_rate_limited() {
    let hook = receiver(1);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("alerts.jsonl");
    let policy = format!(
        "{}\napprovals:\n  critical: [writable_scratch]\n  timeout: 2\nalerts:\n  webhook: \"http://{}/hook\"\n  \
         command: [\"/usr/bin/tee\", \"-a\", \"{}\"]\n  min_interval: 3\n  denials_per_minute: 2\n  attempts: 3\n",
        terrarium::policy::DEFAULT_POLICY_YAML,
        hook.addr,
        file.display()
    );
    let s = Server::start(Some(&policy), &[]);
    let deny = || {
        let r = s.call("POST", "/v1/execute", Some(SUBMIT), Some(r#"{"code": "import os"}"#));
        assert_eq!(r.json()["status"], "denied", "{}", r.body);
    };
    // Three denials in a minute, past the rate of two: one alert, delivered on the
    // second attempt (the receiver refused the first).
    let began = Instant::now();
    for _ in 0..3 {
        deny();
    }
    let first = hook.wait_for("denials", 1);
    assert!(hook.requests.load(Ordering::SeqCst) >= 2, "the refused delivery was not retried");
    assert_eq!(first[0]["data"]["in_last_minute"], 3, "{first:?}");
    assert!(!first[0].to_string().contains("import os"), "an alert carries a snippet's code: {first:?}");
    // Two more within min_interval: held back, then delivered once, standing for both.
    deny();
    deny();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.got.lock().expect("lock").iter().filter(|a| a["kind"] == "denials").count(), 1, "not rate-limited");
    let both = hook.wait_for("denials", 2);
    assert_eq!(both[1]["suppressed"], 1, "the held alert stands for the other: {both:?}");
    assert_eq!(both[1]["data"]["in_last_minute"], 5, "the count is the minute's, not capped at the rate: {both:?}");
    assert!(began.elapsed() >= Duration::from_secs(3), "delivered before min_interval ended");

    // An approval request (a scratch run: critical here), without its code.
    let waits = s.call(
        "POST",
        "/v1/execute",
        Some(SUBMIT),
        Some(r#"{"code": "print('secret')", "tier": "wasm", "scratch": true}"#),
    );
    assert_eq!(waits.json()["status"], "denied", "{}", waits.body);
    let asked = hook.wait_for("approval_requested", 1);
    assert!(asked[0]["data"]["id"].is_number() && !asked[0].to_string().contains("secret"), "{asked:?}");

    // An emergency stop.
    let stop = s.call("POST", "/v1/emergency-stop", Some(ADMIN), Some(r#"{"reason": "alert drill"}"#));
    assert_eq!(stop.status, 200, "{}", stop.body);
    let stopped = hook.wait_for("emergency_stop", 1);
    assert!(stopped[0]["summary"].as_str().unwrap_or("").contains("alert drill"), "{stopped:?}");

    // The command notifier got the same alerts, one JSON line each.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let kinds: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["kind"].as_str().map(str::to_string))
            .collect();
        if ["denials", "approval_requested", "emergency_stop"].iter().all(|k| kinds.iter().any(|x| x == k)) {
            assert_eq!(kinds.iter().filter(|k| *k == "denials").count(), 2, "{kinds:?}");
            break;
        }
        assert!(Instant::now() < until, "the command notifier got {kinds:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn alert_settings_that_cannot_work_are_refused_with_the_key() {
    let with = |alerts: &str| {
        let text = format!("{}\nalerts:\n{alerts}", terrarium::policy::DEFAULT_POLICY_YAML);
        terrarium::Policy::from_yaml(&text, "<alerts>").err().map(|e| e.to_string())
    };
    for (alerts, needle) in [
        ("  webhook: \"https://example.invalid/x\"\n", "alerts.webhook"),
        ("  webhook: \"http://127.0.0.1/x\"\n", "explicit port"),
        ("  webhook: \"http://user:pw@127.0.0.1:9/x\"\n", "credentials"),
        ("  command: []\n", "alerts.command"),
        ("  command: [\"notify-send\"]\n", "absolute path"),
        ("  min_interval: -1\n", "alerts.min_interval"),
        ("  denials_per_minute: 0\n", "alerts.denials_per_minute"),
        ("  attempts: 11\n", "alerts.attempts"),
        ("  pager: true\n", "pager"),
    ] {
        let e = with(alerts).unwrap_or_else(|| panic!("accepted: {alerts}"));
        assert!(e.contains(needle), "{alerts}: {e}");
    }
    assert_eq!(with("  webhook: \"http://127.0.0.1:9093/hook\"\n  command: [\"/bin/true\"]\n"), None);
}

/// The shipped alerting rules are valid Prometheus rules.
#[test]
#[cfg_attr(terrarium_skip_promtool, ignore = "TERRARIUM_SKIP_PROMTOOL=1")]
fn the_prometheus_rules_check() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus/terrarium-rules.yml");
    let out = match std::process::Command::new("promtool").args(["check", "rules", rules]).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "promtool is not installed ({e}): apt-get install prometheus (scripts/test does), or set \
             TERRARIUM_SKIP_PROMTOOL=1 to skip"
        ),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS: 6 rules found"), "{text}");
}
