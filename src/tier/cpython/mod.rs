//! What the wasm and docker tiers share: both run the real CPython, started with the
//! same prelude (`src/guest/cpython_prelude.py`), which reads one request on stdin, applies the
//! policy's module whitelist and an audit hook, runs the snippet, and reports how it
//! ended on stderr behind a per-run nonce. This module writes the request and reads
//! the report.
//!
//! # Security invariant
//! The prelude is policy, not the wall (each tier's sandbox is the wall), but it is
//! the same policy in both tiers: the same whitelist, the same refusals, the same
//! statuses. The snippet runs in the same interpreter as the prelude, so it can
//! read the nonce and write lines of its own: what the status line says (`ok` or
//! `exception`, the value) is the guest's word about its own output. A denial is
//! not: the prelude writes each one to stderr, unbuffered, the moment it happens,
//! before the snippet regains control, and the host reads every denial line;
//! stderr cannot be taken back, so a run with a denial is `denied` whatever it
//! prints or claims afterwards. Limits (deadline, fuel, memory, output) are the
//! host's own observation.

use crate::executor::{ErrorKind, Outcome, Status};
use crate::policy::Policy;

/// The program CPython starts with (see its header). Arguments after it: the
/// nonce, modules to import ahead of the request (space-separated), `scratch` or
/// `-`, and optionally `mark` (end stdout with [`stdout_end`]).
pub(crate) const PRELUDE: &str = include_str!("../../guest/cpython_prelude.py");
/// The socket-free event loop the prelude installs as `asyncio` (shared with the
/// rustpython tier).
const ASYNCIO_STANDIN: &str = include_str!("../../guest/asyncio_standin.py");

/// The request text the prelude reads, for a run without host functions (see
/// [`request_text_with`]).
#[cfg_attr(not(feature = "wasm"), allow(dead_code, reason = "the docker tier always names the functions"))]
pub(crate) fn request_text(policy: &Policy, code: &str) -> String {
    request_text_with(policy, code, &[])
}

/// The request text the prelude reads: allowed modules; the sandbox paths of the
/// policy's read-only mounts (tab-separated); the host functions the run may call;
/// the asyncio source's length (in characters); then the asyncio source and the
/// snippet.
pub(crate) fn request_text_with(policy: &Policy, code: &str, functions: &[String]) -> String {
    let asyncio = if policy.allows_module("asyncio") { ASYNCIO_STANDIN } else { "" };
    let allowed: Vec<&str> = policy.allowed_modules().iter().map(String::as_str).collect();
    let readable: Vec<&str> = policy.read_only_mounts().iter().map(|m| m.target.as_str()).collect();
    format!(
        "{}\n{}\n{}\n{}\n{asyncio}{code}",
        allowed.join(" "),
        readable.join("\t"),
        functions.join(" "),
        asyncio.chars().count()
    )
}

/// A request framed by its length in bytes (a session's cells; a run that may
/// call host functions, whose stdin stays open for the replies).
pub(crate) fn framed(text: &str) -> String {
    format!("{}\n{text}", text.len())
}

/// The prelude's call line marker: `"\n<nonce> call "`, then a JSON array
/// `[name, {"args": [...], "kwargs": {...}}]` and a newline.
pub(crate) fn call_marker(nonce: &str) -> String {
    format!("\n{nonce} call ")
}

/// A host call's reply as the prelude reads it: framed JSON, `{"value": v}`,
/// `{"raise": [kind, message]}` or `{"refused": reason}`.
pub(crate) fn call_reply_frame(reply: &crate::executor::CallReply) -> String {
    use crate::executor::CallReply;
    let body = match reply {
        CallReply::Value(v) => serde_json::json!({ "value": v }),
        CallReply::Raise { kind, message } => serde_json::json!({ "raise": [kind, message] }),
        CallReply::Refused(why) => serde_json::json!({ "refused": why }),
    };
    framed(&body.to_string())
}

/// Takes the prelude's host call lines out of a growing stderr (they are the
/// host's channel, not the guest's output).
pub(crate) struct CallLines {
    marker: String,
    /// Stderr before this holds no call line not taken yet.
    pub(crate) scanned: usize,
}

impl CallLines {
    /// Call lines of the run behind `nonce`, in stderr from byte `from` on.
    pub(crate) fn new(nonce: &str, from: usize) -> CallLines {
        CallLines { marker: call_marker(nonce), scanned: from }
    }

    /// Takes the next complete call line out of `err`: the call (`None` when it
    /// is malformed) and the bytes taken; `None` until a whole line has arrived.
    pub(crate) fn take(&mut self, err: &mut Vec<u8>) -> Option<(Option<crate::executor::HostCall>, usize)> {
        let m = self.marker.as_bytes();
        let start = self.scanned.saturating_sub(m.len()).min(err.len());
        let Some(at) = err[start..].windows(m.len()).position(|w| w == m).map(|p| p + start) else {
            self.scanned = err.len();
            return None;
        };
        let body = at + m.len();
        let Some(nl) = err[body..].iter().position(|b| *b == b'\n').map(|p| body + p) else {
            self.scanned = at;
            return None;
        };
        let call = parse_call(&err[body..nl]);
        err.drain(at..=nl);
        self.scanned = at;
        Some((call, nl + 1 - at))
    }
}

/// The host's reply to one call line: the call answered by `host`, or refused
/// when the line is malformed or the run has no host functions.
pub(crate) async fn answer_line(
    call: Option<crate::executor::HostCall>,
    host: Option<&crate::executor::HostLink>,
) -> crate::executor::CallReply {
    use crate::executor::CallReply;
    match (call, host) {
        (Some(call), Some(host)) => host.call(call).await,
        (None, _) => CallReply::Refused("a malformed host function call".into()),
        (Some(_), None) => CallReply::Refused("this run has no host functions".into()),
    }
}

/// Parses a call line's payload (after [`call_marker`], without its newline).
pub(crate) fn parse_call(payload: &[u8]) -> Option<crate::executor::HostCall> {
    let (name, args): (String, serde_json::Value) = serde_json::from_slice(payload).ok()?;
    Some(crate::executor::HostCall { name, args })
}

/// Applies the prelude's status line (or its absence) to `o`.
pub(crate) fn apply_status(o: &mut Outcome, line: Option<&str>, exit: Option<i32>, output_full: bool) {
    let Some(v) = line.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) else {
        if output_full {
            return o.end(
                Status::OutputLimit,
                ErrorKind::OutputLimit,
                "the run's output exceeded the policy's max_output",
            );
        }
        let code = exit.map_or("no exit code".to_string(), |c| format!("exit code {c}"));
        return o.end(Status::Crashed, ErrorKind::Crashed, format!("the interpreter ended without a status ({code})"));
    };
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    match field("kind").as_str() {
        "ok" => {
            o.result = v.get("result").and_then(serde_json::Value::as_str).and_then(|r| serde_json::from_str(r).ok());
            if output_full {
                o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output");
            }
        }
        "denied" => o.end(Status::Denied, ErrorKind::PolicyDenied, field("message")),
        _ => {
            let kind = field("type");
            if output_full {
                o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output");
            } else {
                o.raise(kind, field("message"));
            }
        }
    }
}

/// Makes a run whose stdout and stderr together passed `max_output` end
/// `output_limit` (the tiers cap each stream on its own as it arrives).
pub(crate) fn apply_output_cap(o: &mut Outcome, max_output: usize) {
    if matches!(o.status, Status::Ok | Status::Exception) && o.stdout.len().saturating_add(o.stderr.len()) > max_output
    {
        o.result = None;
        o.end(Status::OutputLimit, ErrorKind::OutputLimit, "the run's output exceeded the policy's max_output");
    }
}

/// Makes a run that sent a denial line `denied`, however it ended otherwise (a
/// deadline excepted: the host's own kill stands).
pub(crate) fn apply_denial(o: &mut Outcome, denial: Option<&str>) {
    if let Some(reason) = denial
        && o.status != Status::Timeout
    {
        o.result = None;
        o.end(Status::Denied, ErrorKind::PolicyDenied, reason);
    }
}

/// What the host reads from a CPython run's stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// The guest's stderr, without the prelude's lines.
    pub stderr: String,
    /// The last status line's JSON (`\n<nonce> {...}`).
    pub status_line: Option<String>,
    /// The first denial line's reason (`\n<nonce> denied "..."`).
    pub denial: Option<String>,
}

/// Splits the prelude's lines off stderr: the ready marker, every denial line (the
/// first one's reason is kept), and the last status line.
pub(crate) fn split_status(stderr: &str, nonce: &str) -> Report {
    let ready = format!("\n{nonce} ready\n");
    let mut text = stderr.replacen(&ready, "", 1);
    let denied = format!("\n{nonce} denied ");
    let mut denial = None;
    while let Some(at) = text.find(&denied) {
        let rest = &text[at + denied.len()..];
        let end = rest.find('\n').unwrap_or(rest.len());
        if denial.is_none() {
            // A line that does not parse still denies: the guest can add denials.
            let reason = serde_json::from_str::<String>(&rest[..end]).unwrap_or_else(|_| rest[..end].to_string());
            denial = Some(reason);
        }
        let stop = (at + denied.len() + end + 1).min(text.len());
        text.replace_range(at..stop, "");
    }
    let marker = format!("\n{nonce} {{");
    let (stderr, status_line) = match text.rfind(&marker) {
        Some(at) => {
            let line = text[at + marker.len() - 1..].trim_end_matches('\n').to_string();
            (text[..at].to_string(), Some(line))
        }
        None => (text, None),
    };
    Report { stderr, status_line, denial }
}

/// The line the prelude ends stdout with when asked to (`mark`).
#[cfg_attr(
    not(any(feature = "wasm", feature = "docker")),
    allow(dead_code, reason = "only sessions (wasm) and the docker tier mark the end of stdout")
)]
pub(crate) fn stdout_end(nonce: &str) -> String {
    format!("\n{nonce} end\n")
}

/// How the host reads a CPython run: the run's stderr (its status line behind
/// `nonce`), its exit code and whether its output was cut at the cap, as the
/// outcome both CPython tiers return. Nothing in `stderr` is trusted: any text gives
/// an outcome, never a panic (the `ipc_decode` fuzz target holds it to that).
#[cfg(any(test, feature = "internals"))]
pub fn decode_report(
    tier: crate::policy::Tier,
    stderr: &str,
    nonce: &str,
    exit: Option<i32>,
    output_full: bool,
) -> Outcome {
    let report = split_status(stderr, nonce);
    let mut o = Outcome::blank(tier);
    o.stderr = report.stderr;
    apply_status(&mut o, report.status_line.as_deref(), exit, output_full);
    apply_denial(&mut o, report.denial.as_deref());
    o
}

pub(crate) fn nonce() -> String {
    crate::hex::random(16).unwrap_or_else(|| "0".repeat(32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Tier;

    #[test]
    fn the_status_line_is_split_from_stderr() {
        let r = split_status("\nabc ready\nwarn\n\nabc {\"kind\": \"ok\"}\n", "abc");
        assert_eq!(r.stderr, "warn\n");
        assert_eq!(r.status_line.as_deref(), Some("{\"kind\": \"ok\"}"));
        assert_eq!(r.denial, None);
        let r = split_status("no status", "abc");
        assert_eq!((r.stderr.as_str(), r.status_line, r.denial), ("no status", None, None));
    }

    #[test]
    fn a_denial_line_denies_whatever_status_follows() {
        // See: issue 15 (F9, F10): the snippet caught the PermissionError, cleared
        // the prelude's record and forged an ok status.
        let stderr = "\nabc ready\nx\nabc denied \"import of 'os'\"\ny\nabc {\"kind\": \"ok\", \"result\": \"1\"}\n";
        let o = decode_report(Tier::Wasm, stderr, "abc", Some(0), false);
        assert_eq!(o.status, Status::Denied);
        assert_eq!(o.error.map(|e| e.message), Some("import of 'os'".to_string()));
        assert_eq!(o.result, None);
        assert_eq!(o.stderr, "xy", "the guest wrote x, then y");
        // A forged ok without a denial is the guest's word about its own output.
        let o = decode_report(Tier::Wasm, "\nabc {\"kind\": \"ok\"}\n", "abc", Some(0), false);
        assert_eq!(o.status, Status::Ok);
    }

    /// Runs `code` through the prelude under the host's own CPython (`python3`), as
    /// the docker tier runs it in its container, and decodes the report.
    fn on_host_cpython(policy: &Policy, code: &str) -> Outcome {
        use std::io::Write as _;
        let nonce = nonce();
        let mut child = std::process::Command::new("python3")
            .args(["-I", "-B", "-c", PRELUDE, &nonce, "", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the host's python3 (the guest-Python tests run the preludes under it)");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(request_text(policy, code).as_bytes()).expect("request");
        drop(stdin);
        let out = child.wait_with_output().expect("python3 ran");
        let mut o =
            decode_report(Tier::Docker, &String::from_utf8_lossy(&out.stderr), &nonce, out.status.code(), false);
        o.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        o
    }

    /// The CPython tiers' prelude, tested directly: output and value come back, the
    /// guest's exceptions keep their type, a module outside the policy is denied
    /// (and stays denied when caught), and the asyncio stand-in serves when allowed.
    #[test]
    fn the_cpython_prelude_runs_and_denies_under_the_hosts_cpython() {
        let policy = Policy::default_policy();
        let o = on_host_cpython(&policy, "import math\nprint(math.sqrt(16))\n1 + 1");
        assert_eq!(
            (o.status, o.stdout.as_str(), o.result.clone()),
            (Status::Ok, "4.0\n", Some(serde_json::json!(2))),
            "{o:?}"
        );
        let o = on_host_cpython(&policy, "1/0");
        assert_eq!((o.status, o.error.map(|e| e.kind)), (Status::Exception, Some("ZeroDivisionError".into())));
        let o = on_host_cpython(&policy, "try:\n    import os\nexcept BaseException:\n    pass\nprint('after')");
        assert_eq!(o.status, Status::Denied, "{o:?}");
        assert!(o.error.is_some_and(|e| e.message.contains("'os'")));
        let asyncio = Policy::from_yaml(
            &crate::policy::DEFAULT_POLICY_YAML.replacen(r#"["math", "time", "json"]"#, r#"["asyncio"]"#, 1),
            "<test>",
        )
        .expect("policy");
        let o = on_host_cpython(&asyncio, "import asyncio\nasync def f():\n    return 7\nasyncio.run(f())");
        assert_eq!((o.status, o.result), (Status::Ok, Some(serde_json::json!(7))));
    }
}
