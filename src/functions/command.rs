//! Host functions implemented by the operator's program (`functions.NAME.command`
//! in the policy): run without a shell, with an empty environment, the call as
//! JSON on its stdin (`{"function", "args", "kwargs"}`), its result as JSON on its
//! stdout. A program that exits non-zero may print `{"error": {"type", "message"}}`
//! to raise that in the snippet; otherwise the snippet gets `RuntimeError`.
//!
//! # Security
//! The program is the operator's, named by absolute path in the policy: the
//! snippet chooses only the arguments, which reach it as data on stdin, never as
//! argv. Its stderr is logged for the operator, never shown to the guest. It runs
//! in a process group of its own, killed whole when the call ends (answered, or
//! dropped at the call's timeout): nothing it started outlives the call.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{FunctionCall, FunctionError};

/// Kills a process group when dropped.
struct Group(i32);

impl Drop for Group {
    #[allow(unsafe_code, reason = "kill(2) has no safe wrapper in std")]
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no pointers; a negative pid names the process group
        // the program was started in (`process_group(0)`: its pid), which holds only
        // it and what it started. ESRCH (all gone) is the usual result.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// Runs `argv` for `call`; its stdout may hold at most `max_result` bytes.
pub(super) async fn run(
    argv: Vec<String>,
    call: FunctionCall,
    max_result: u64,
) -> Result<serde_json::Value, FunctionError> {
    let failed = |why: String| {
        tracing::warn!(function = %call.name, program = %argv[0], "host function command: {why}");
        FunctionError::new("RuntimeError", format!("host function {} failed: {why}", call.name))
    };
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("its program could not start ({})", e.kind())))?;
    let mut group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Group);
    let input = serde_json::json!({"function": call.name, "args": call.args, "kwargs": call.kwargs}).to_string();
    let (mut stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => (i, o, e),
        _ => return Err(failed("its pipes could not be opened".into())),
    };
    let write = async move {
        // A program that does not read its input is judged by its exit and output.
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
    };
    let cap = max_result.saturating_add(1);
    let read_out = async move {
        let mut out = Vec::new();
        let _ = stdout.take(cap).read_to_end(&mut out).await;
        out
    };
    let read_err = async move {
        let mut err = Vec::new();
        let _ = stderr.take(4096).read_to_end(&mut err).await;
        err
    };
    // Once the program exits, what it started is killed: its pipes then close
    // (a background process would hold them open).
    let exited = async {
        let status = child.wait().await;
        drop(group.take());
        status
    };
    let (status, (), out, err) = tokio::join!(exited, write, read_out, read_err);
    let status = status.map_err(|e| failed(format!("waiting for it failed ({})", e.kind())))?;
    if !err.is_empty() {
        tracing::info!(function = %call.name, stderr = %String::from_utf8_lossy(&err), "host function command's stderr");
    }
    if out.len() as u64 > max_result {
        return Err(FunctionError::new(
            "RuntimeError",
            format!("host function {}'s result is more than its max_result_bytes of {max_result}", call.name),
        ));
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out).ok();
    if !status.success() {
        if let Some(e) = parsed.as_ref().and_then(|v| v.get("error")) {
            let kind = e.get("type").and_then(serde_json::Value::as_str).unwrap_or("RuntimeError");
            let message = e.get("message").and_then(serde_json::Value::as_str).unwrap_or_default();
            return Err(FunctionError::new(kind, message.chars().take(4096).collect::<String>()));
        }
        let how = status.code().map_or_else(|| "was killed by a signal".to_string(), |c| format!("exited with {c}"));
        return Err(failed(format!("its program {how}")));
    }
    parsed.ok_or_else(|| failed("its program's output is not JSON".into()))
}
