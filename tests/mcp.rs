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
