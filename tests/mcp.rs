//! `terrarium mcp` (issue 20): an MCP client speaking JSON-RPC on the server's stdin
//! and stdout, as MCP clients do: initialize, list the tools, run a snippet, one the
//! policy denies, one that times out, and a session's cells.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

struct Client {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
}

impl Client {
    fn start() -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_terrarium"))
            .arg("mcp")
            .env("TERRARIUM_HOME", crate::common::test_home())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("terrarium mcp");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut c = Client { child, input, output, next: 1 };
        let init = c.request(
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}),
        );
        assert_eq!(init["serverInfo"]["name"], "terrarium", "{init}");
        c.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        c
    }

    fn send(&mut self, m: serde_json::Value) {
        writeln!(self.input, "{m}").expect("write");
        self.input.flush().expect("flush");
    }

    /// Sends a request and returns its result (every line on stdout is a message).
    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        self.send(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            assert!(self.output.read_line(&mut line).expect("read") > 0, "the server closed stdout");
            let m: serde_json::Value = serde_json::from_str(&line).expect("stdout carries only JSON-RPC");
            if m["id"] == id {
                return m["result"].clone();
            }
        }
    }

    fn call(&mut self, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.request("tools/call", serde_json::json!({"name": tool, "arguments": arguments}))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_mcp_client_lists_the_tools_and_runs_python() {
    let mut c = Client::start();
    let tools = c.request("tools/list", serde_json::json!({}));
    let names: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["end_session", "list_sessions", "run_python", "start_session", "tier_status"]);
    // An ok run: structured content (the outcome) and a text summary.
    let r = c.call("run_python", serde_json::json!({"code": "print(6*7)"}));
    assert_eq!((r["isError"].as_bool(), r["structuredContent"]["stdout"].as_str()), (Some(false), Some("42\n")), "{r}");
    assert!(r["content"][0]["text"].as_str().unwrap_or("").contains("42"), "{r}");
    // Denied by the policy: a tool error with the reason.
    let r = c.call("run_python", serde_json::json!({"code": "import socket"}));
    assert_eq!(
        (r["isError"].as_bool(), r["structuredContent"]["status"].as_str()),
        (Some(true), Some("denied")),
        "{r}"
    );
    assert!(r["content"][0]["text"].as_str().unwrap_or("").contains("not allowed by the policy"), "{r}");
    // Past its timeout.
    let r = c.call("run_python", serde_json::json!({"code": "while True:\n    pass", "timeout": 0.5}));
    assert_eq!(
        (r["isError"].as_bool(), r["structuredContent"]["status"].as_str()),
        (Some(true), Some("timeout")),
        "{r}"
    );
    // A loosening timeout is refused with the reason, not run.
    let r = c.call("run_python", serde_json::json!({"code": "1", "timeout": 1e6}));
    assert_eq!(r["isError"].as_bool(), Some(true), "{r}");
    assert!(r["content"][0]["text"].as_str().unwrap_or("").contains("timeout"), "{r}");
    // A session's cells share state; ended, it is gone.
    let s = c.call("start_session", serde_json::json!({}));
    let id = s["structuredContent"]["session"].as_str().expect("session id").to_string();
    c.call("run_python", serde_json::json!({"code": "def double(x):\n    return 2 * x", "session": id}));
    let r = c.call("run_python", serde_json::json!({"code": "double(21)", "session": id}));
    assert_eq!(r["structuredContent"]["result"], 42, "{r}");
    let listed = c.call("list_sessions", serde_json::json!({}));
    assert_eq!(listed["structuredContent"]["sessions"][0]["cells"], 2, "{listed}");
    assert_eq!(c.call("end_session", serde_json::json!({"session": id}))["isError"].as_bool(), Some(false));
    let r = c.call("run_python", serde_json::json!({"code": "double(1)", "session": id}));
    assert_eq!(r["isError"].as_bool(), Some(true), "{r}");
    let status = c.call("tier_status", serde_json::json!({}));
    assert!(status["structuredContent"]["breakers"].as_array().is_some_and(|b| !b.is_empty()), "{status}");
}

#[test]
fn a_clients_request_id_names_its_run_only_when_it_is_a_short_plain_token() {
    let mut c = Client::start();
    let mut run_with_id = |id: serde_json::Value| {
        let params = serde_json::json!({"name": "run_python", "arguments": {"code": "1"}});
        c.send(serde_json::json!({"jsonrpc": "2.0", "id": id.clone(), "method": "tools/call", "params": params}));
        loop {
            let mut line = String::new();
            assert!(c.output.read_line(&mut line).expect("read") > 0, "the server closed stdout");
            let m: serde_json::Value = serde_json::from_str(&line).expect("JSON-RPC");
            if m["id"] == id {
                return m["result"]["structuredContent"]["id"].as_str().expect("the run's id").to_string();
            }
        }
    };
    assert_eq!(run_with_id(serde_json::json!(7)), "mcp-7");
    assert_eq!(run_with_id(serde_json::json!("call-a.1")), "mcp-s-call-a.1");
    assert_eq!(run_with_id(serde_json::json!("7")), "mcp-s-7", "a string apart from the number 7");
    // The audit log gets a counter, not what the client chose.
    for odd in ["x".repeat(10_000), "a\nb".into(), "ids with spaces".into(), "req:other:1".into()] {
        let got = run_with_id(serde_json::json!(odd));
        assert!(got.starts_with("mcp-#") && got.len() < 30, "{got:?} for {odd:.40?}");
    }
}

/// Found by this file's two tests running at once: a second process creating the
/// audit log while the first switched it to WAL got "database is locked" at once
/// (SQLite does not wait there) and the server exited.
#[test]
fn servers_starting_at_once_on_a_new_home_all_start() {
    for round in 0..30 {
        let home = tempfile::tempdir().expect("home");
        let children: Vec<Child> = (0..6)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_terrarium"))
                    .arg("mcp")
                    .env("TERRARIUM_HOME", home.path())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("terrarium mcp")
            })
            .collect();
        for mut child in children {
            let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
            let mut input = child.stdin.take().expect("stdin");
            writeln!(input, "{init}").expect("write");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
            drop(input);
            let out = child.wait_with_output().expect("wait");
            assert!(
                line.contains("\"serverInfo\""),
                "round {round}: the server did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
