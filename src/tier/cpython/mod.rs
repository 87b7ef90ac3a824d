//! What the wasm and docker tiers share: both run the real CPython, started with the
//! same prelude (`prelude.py`), which reads one request on stdin, applies the
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

/// Makes a run whose stdout and stderr together passed `max_output` end
/// `output_limit` (the tiers cap each stream on its own as it arrives).
pub(crate) fn apply_output_cap(o: &mut Outcome, max_output: usize) {
    if matches!(o.status, Status::Ok | Status::Exception) && o.stdout.len().saturating_add(o.stderr.len()) > max_output
    {
        o.result = None;
        o.end(Status::OutputLimit, "OutputLimit", "the run's output exceeded the policy's max_output");
    }
}

/// Makes a run that sent a denial line `denied`, however it ended otherwise (a
/// deadline excepted: the host's own kill stands).
pub(crate) fn apply_denial(o: &mut Outcome, denial: Option<&str>) {
    if let Some(reason) = denial
        && o.status != Status::Timeout
    {
        o.result = None;
        o.end(Status::Denied, "PolicyDenied", reason);
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
#[cfg_attr(not(feature = "docker"), allow(dead_code, reason = "only the docker tier marks the end of stdout"))]
pub(crate) fn stdout_end(nonce: &str) -> String {
    format!("\n{nonce} end\n")
}

/// How the host reads a CPython run: the run's stderr (its status line behind
/// `nonce`), its exit code and whether its output was cut at the cap, as the
/// outcome both CPython tiers return. Nothing in `stderr` is trusted: any text gives
/// an outcome, never a panic (the `ipc_decode` fuzz target holds it to that).
pub fn decode_report(tier: Tier, stderr: &str, nonce: &str, exit: Option<i32>, output_full: bool) -> Outcome {
    let report = split_status(stderr, nonce);
    let mut o = Outcome::blank(tier);
    o.stderr = report.stderr;
    apply_status(&mut o, report.status_line.as_deref(), exit, output_full);
    apply_denial(&mut o, report.denial.as_deref());
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
}
