//! `terrarium stop` and `terrarium resume`: the emergency stop of a running server
//! (over its admin endpoints) or of a deployment with no server running
//! (`--offline`: the stop is kept beside the audit log, and every process that
//! opens that log later obeys it).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use super::args::{OpsTarget, ResumeArgs, StopArgs};
use super::{CliError, EXIT_HOST};

/// How long the server may take to answer (a stop waits for the tiers, up to
/// [`crate::sandbox`]'s settle bound, and for sessions).
const ANSWER_WITHIN: Duration = Duration::from_secs(90);

pub(super) fn stop(args: StopArgs) -> Result<ExitCode, CliError> {
    if args.target.offline {
        let sandbox = offline_sandbox(&args.target)?;
        let who = who(&args.target)?;
        let report = super::runtime()?.block_on(sandbox.emergency_stop(&who, &args.reason))?;
        flush(&sandbox);
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let body = serde_json::json!({ "reason": args.reason }).to_string();
    post(&args.target.server, "/v1/emergency-stop", &body)
}

pub(super) fn resume(args: ResumeArgs) -> Result<ExitCode, CliError> {
    if args.target.offline {
        let sandbox = offline_sandbox(&args.target)?;
        let who = who(&args.target)?;
        let was = super::runtime()?.block_on(sandbox.resume(&who))?;
        flush(&sandbox);
        println!("{}", serde_json::json!({ "resumed": was }));
        return Ok(ExitCode::SUCCESS);
    }
    post(&args.target.server, "/v1/resume", "")
}

fn who(target: &OpsTarget) -> Result<String, CliError> {
    target
        .who
        .clone()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("who stops it? pass --as NAME (no $USER)")))
}

fn offline_sandbox(target: &OpsTarget) -> Result<crate::Sandbox, CliError> {
    let path = match &target.db {
        Some(p) => p.clone(),
        None => crate::audit::default_path().map_err(|e| CliError { code: EXIT_HOST, error: e.into() })?,
    };
    Ok(crate::Sandbox::builder().audit(path).build()?)
}

fn flush(sandbox: &crate::Sandbox) {
    if let Err(e) = sandbox.flush_audit(Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
}

/// POSTs `body` (JSON, or nothing) to `path` on the server at `url` with the
/// admin token from `TERRARIUM_TOKEN`, prints the answer, and exits 0 on 200.
fn post(url: &str, path: &str, body: &str) -> Result<ExitCode, CliError> {
    let token = std::env::var(super::serve::TOKEN_ENV).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
        CliError::usage(anyhow::anyhow!(
            "set {} to a token with the admin role (or pass --offline when no server runs)",
            super::serve::TOKEN_ENV
        ))
    })?;
    let authority = url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("--server {url:?}: expected http://HOST:PORT")))?;
    let unreachable = |e: std::io::Error| CliError {
        code: EXIT_HOST,
        error: anyhow::anyhow!(
            "no server answers at {url} ({e}); is it running? Pass --offline to mark the deployment without one"
        ),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| CliError::usage(anyhow::anyhow!("--server {url:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("--server {url:?}: no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(unreachable)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(unreachable)?;
    let (status, text) = parse_answer(&answer)
        .ok_or_else(|| CliError { code: EXIT_HOST, error: anyhow::anyhow!("the server's answer is not HTTP/1.1") })?;
    if status == 200 {
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        println!("{pretty}");
        return Ok(ExitCode::SUCCESS);
    }
    let why = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("the server answered {status}: {why}") })
}

/// The status and body of an HTTP/1.1 answer (with a length or chunked).
fn parse_answer(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = &raw[split + 4..];
    let status = head.lines().next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Some((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).ok()?.trim(), 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
    Some((status, String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_with_a_length_and_chunked_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(super::parse_answer(plain), Some((200, "{}".into())));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(super::parse_answer(chunked), Some((503, "abcde".into())));
        assert_eq!(super::parse_answer(b"garbage"), None);
    }
}
