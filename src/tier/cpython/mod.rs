//! What the wasm and docker tiers share: both run the real CPython, started with the
//! same prelude (`prelude.py`), which reads one request on stdin, applies the
//! policy's module whitelist and an audit hook, runs the snippet, and reports how it
//! ended on stderr behind a per-run nonce. This module writes the request and reads
//! the report.
//!
//! # Security invariant
//! The prelude is policy, not the wall (each tier's sandbox is the wall), but it is
//! the same policy in both tiers: the same whitelist, the same refusals, the same
//! statuses. The status line is found by a random nonce the snippet is not told
//! before it runs; only the last one counts, and the prelude writes it after the
//! snippet has finished.

use crate::executor::{Outcome, Status, Tier};
use crate::policy::Policy;

/// The program CPython starts with (see its header). Arguments after it: the
/// nonce, modules to import ahead of the request (space-separated), `scratch` or
/// `-`, and optionally `mark` (end stdout with [`stdout_end`]).
pub(crate) const PRELUDE: &str = include_str!("prelude.py");
/// The socket-free event loop the prelude installs as `asyncio` (shared with the
/// rustpython tier).
const ASYNCIO_STANDIN: &str = include_str!("../asyncio_standin.py");

/// The request text the prelude reads: allowed modules; the sandbox paths of the
/// policy's read-only mounts (tab-separated); the asyncio source's length (in
/// characters); then the asyncio source and the snippet.
pub(crate) fn request_text(policy: &Policy, code: &str) -> String {
    let asyncio = if policy.allows_module("asyncio") { ASYNCIO_STANDIN } else { "" };
    let allowed: Vec<&str> = policy.allowed_modules().iter().map(String::as_str).collect();
    let readable: Vec<&str> = policy.read_only_mounts().iter().map(|m| m.target.as_str()).collect();
    format!("{}\n{}\n{}\n{asyncio}{code}", allowed.join(" "), readable.join("\t"), asyncio.chars().count())
}

/// Applies the prelude's status line (or its absence) to `o`.
pub(crate) fn apply_status(o: &mut Outcome, line: Option<&str>, exit: Option<i32>, output_full: bool) {
    let Some(v) = line.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) else {
        if output_full {
            return o.end(Status::OutputLimit, "OutputLimit", "the run's output exceeded the policy's max_output");
        }
        let code = exit.map_or("no exit code".to_string(), |c| format!("exit code {c}"));
        return o.end(Status::Crashed, "Crashed", format!("the interpreter ended without a status ({code})"));
    };
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    match field("kind").as_str() {
        "ok" => {
            o.result = v.get("result").and_then(serde_json::Value::as_str).and_then(|r| serde_json::from_str(r).ok());
            if output_full {
                o.end(Status::OutputLimit, "OutputLimit", "the run's output exceeded the policy's max_output");
            }
        }
        "denied" => o.end(Status::Denied, "PolicyDenied", field("message")),
        _ => {
            let kind = field("type");
            if output_full {
                o.end(Status::OutputLimit, "OutputLimit", "the run's output exceeded the policy's max_output");
            } else {
                o.end(Status::Exception, &kind, field("message"));
            }
        }
    }
}

/// Splits the prelude's status line (`\n<nonce> {json}\n`, the last one) off stderr.
pub(crate) fn split_status(stderr: &str, nonce: &str) -> (String, Option<String>) {
    let ready = format!("\n{nonce} ready\n");
    let stderr = &stderr.replacen(&ready, "", 1);
    let marker = format!("\n{nonce} ");
    match stderr.rfind(&marker) {
        Some(at) => {
            let line = stderr[at + marker.len()..].trim_end_matches('\n').to_string();
            (stderr[..at].to_string(), Some(line))
        }
        None => (stderr.to_string(), None),
    }
}

/// The line the prelude ends stdout with when asked to (`mark`).
pub(crate) fn stdout_end(nonce: &str) -> String {
    format!("\n{nonce} end\n")
}

/// How the host reads a CPython run: the run's stderr (its status line behind
/// `nonce`), its exit code and whether its output was cut at the cap, as the
/// outcome both CPython tiers return. Nothing in `stderr` is trusted: any text gives
/// an outcome, never a panic (the `ipc_decode` fuzz target holds it to that).
pub fn decode_report(tier: Tier, stderr: &str, nonce: &str, exit: Option<i32>, output_full: bool) -> Outcome {
    let (err_text, status_line) = split_status(stderr, nonce);
    let mut o = Outcome::blank(tier);
    o.stderr = err_text;
    apply_status(&mut o, status_line.as_deref(), exit, output_full);
    o
}

pub(crate) fn nonce() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_split_from_stderr() {
        let (err, line) = split_status("\nabc ready\nwarn\n\nabc {\"kind\": \"ok\"}\n", "abc");
        assert_eq!(err, "warn\n");
        assert_eq!(line.as_deref(), Some("{\"kind\": \"ok\"}"));
        let (err, line) = split_status("no status", "abc");
        assert_eq!((err.as_str(), line), ("no status", None));
    }
}
