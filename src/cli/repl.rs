//! `terrarium repl`: a person at a terminal runs cells in one session, as at a
//! Python prompt. A cell is one line, or a block: a first line that opens one
//! (ends with `:`, a backslash or an open bracket) reads on until an empty line.
//!
//! Output is escaped for the terminal like `run`'s (H16). A cell that ends the
//! session says why; the next cell starts a new session, and says so.

use std::io::{BufRead, IsTerminal as _, Write};
use std::process::ExitCode;
use std::sync::Arc;

use super::args::BatchArgs;
use super::{CliError, EXIT_HOST, flush_audit, local_caller, target, terminal};
use crate::executor::{ExecRequest, Outcome, Status};
use crate::sandbox::{Session, SessionOptions};

pub(super) fn run(args: BatchArgs) -> Result<ExitCode, CliError> {
    let target = Arc::new(target(&args.common, false)?);
    // A runtime thread of its own: a session's idle watchdog runs while this
    // thread waits for the person to type.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError { code: EXIT_HOST, error: anyhow::anyhow!("cannot start the async runtime: {e}") })?;
    let interactive = std::io::stdin().is_terminal();
    let options = || SessionOptions { tier: target.choice, caller: Some(local_caller()), workspace: None };
    let mut session: Option<Session> = None;
    let mut input = std::io::stdin().lock();
    if interactive {
        eprintln!("terrarium repl: cells share one session under the policy; Ctrl-D ends it.");
    }
    while let Some(code) = read_cell(&mut input, interactive) {
        if code.trim().is_empty() {
            continue;
        }
        let s = match session.as_mut() {
            Some(s) => s,
            None => match rt.block_on(target.sandbox.session(options())) {
                Ok(s) => session.insert(s),
                Err(e) => {
                    eprintln!("terrarium: cannot start a session: {e}");
                    break;
                }
            },
        };
        let req = ExecRequest { overrides: target.overrides.clone(), ..ExecRequest::new(code) };
        match rt.block_on(s.execute(req)) {
            Ok(o) => {
                show(&o);
                if let Some(why) = o.session.as_ref().and_then(|c| c.ended.as_deref()) {
                    eprintln!(
                        "terrarium: session ended: {}; the next cell starts a new one",
                        terminal::message_for_terminal(why)
                    );
                    session = None;
                }
            }
            Err(crate::error::SandboxError::SessionEnded(why)) => {
                eprintln!(
                    "terrarium: session ended: {}; the next cell starts a new one",
                    terminal::message_for_terminal(&why)
                );
                session = None;
            }
            Err(e) => eprintln!("terrarium: {}", terminal::message_for_terminal(&e.to_string())),
        }
    }
    if let Some(s) = session.take() {
        s.end("the repl ended");
    }
    if interactive {
        eprintln!();
    }
    flush_audit(&target);
    Ok(ExitCode::SUCCESS)
}

/// One cell from `input` (prompting on a terminal), or `None` at the end of input.
fn read_cell(input: &mut impl BufRead, interactive: bool) -> Option<String> {
    let prompt = |p: &str| {
        if interactive {
            eprint!("{p}");
            let _ = std::io::stderr().flush();
        }
    };
    prompt(">>> ");
    let mut cell = String::new();
    if input.read_line(&mut cell).ok()? == 0 {
        return None;
    }
    if !opens_block(&cell) {
        return Some(cell);
    }
    loop {
        prompt("... ");
        let mut line = String::new();
        // End of input ends the block (and, on the next read, the repl).
        if input.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            return Some(cell);
        }
        cell.push_str(&line);
    }
}

/// Whether a cell's first line needs more lines: a block header, a continued
/// line, or brackets left open (counted outside strings and comments).
fn opens_block(line: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut code_end = line.len();
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '#' => {
                    code_end = i;
                    break;
                }
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    let code = line[..code_end].trim_end();
    depth > 0 || code.ends_with(':') || code.ends_with('\\')
}

/// A cell's output, its value (as JSON) and, for an exception, its last line as
/// Python prints it.
fn show(o: &Outcome) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", terminal::for_stream(&o.stdout, std::io::stdout().is_terminal()));
    if let Some(value) = o.result.as_ref().filter(|v| !v.is_null()) {
        let _ = writeln!(out, "{}", terminal::for_stream(&value.to_string(), std::io::stdout().is_terminal()));
    }
    let _ = out.flush();
    let _ = write!(std::io::stderr(), "{}", terminal::for_stream(&o.stderr, std::io::stderr().is_terminal()));
    if let Some(e) = &o.error {
        // Both are the guest's text (a class may be named anything).
        let (kind, message) = (terminal::message_for_terminal(&e.kind), terminal::message_for_terminal(&e.message));
        match o.status {
            // The last line of Python's traceback.
            Status::Exception => eprintln!("{kind}: {message}"),
            s => eprintln!("terrarium: {}: {kind}: {message}", s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::opens_block;

    #[test]
    fn blocks_are_told_from_lines() {
        for open in ["def f(x):", "for i in range(3):  ", "x = [1,", "f(\"(\",", "y = 1 + \\"] {
            assert!(opens_block(open), "{open:?}");
        }
        for line in ["x = 1", "print('a:')", "d = {'k': 1}", "s = ')('", "# for x:", "x = 1  # (open"] {
            assert!(!opens_block(line), "{line:?}");
        }
    }
}
