//! The command line: `terrarium run | batch | policy check`.
//!
//! Exit codes of `run`: 0 ok, 1 guest exception, 2 usage or configuration error,
//! 3 a limit (timeout, memory, fuel, output, crashed), 4 denied by policy, 5 host
//! error (including a tier that is unavailable).

mod args;
mod batch;
#[cfg(feature = "rustpython")]
mod bench;
mod checks;
mod command;
mod datakey;
mod doctor;
mod ops;
mod redteam;
mod repl;
mod serve;
mod terminal;
mod workspace;

use std::io::{IsTerminal as _, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::error::SandboxError;
use crate::executor::{ExecRequest, Outcome, Status};
use crate::policy::{Overrides, Policy, PolicyError, Tier, TierChoice};
pub(crate) use args::{ApprovalsArgs, ApprovalsCommand, CommandArgs, RedteamArgs};
use args::{AuditArgs, AuditCommand, BreakersArgs, Cli, Command, CommonArgs, PolicyCommand, RunArgs};

/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a host error.
pub const EXIT_HOST: u8 = 5;

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("terrarium: {}", terminal::message_for_terminal(&format!("{e:#}")));
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERRARIUM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// A CLI failure with the exit code it maps to.
#[derive(Debug)]
struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    fn usage(error: impl Into<anyhow::Error>) -> CliError {
        CliError { code: EXIT_USAGE, error: error.into() }
    }

    fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // With its causes, each once: a message that already ends with its
        // cause's (as "not run: CAUSE") does not repeat it.
        let mut text = self.error.to_string();
        if f.alternate() {
            for cause in self.error.chain().skip(1).map(ToString::to_string) {
                if !text.ends_with(&cause) {
                    text = format!("{text}: {cause}");
                }
            }
        }
        f.write_str(&text)
    }
}

impl From<SandboxError> for CliError {
    fn from(e: SandboxError) -> CliError {
        let code = match e {
            SandboxError::Policy(_) | SandboxError::InvalidRequest(_) => EXIT_USAGE,
            SandboxError::Workspace(ref w) if !matches!(w, crate::workspace::WorkspaceError::Host { .. }) => EXIT_USAGE,
            _ => EXIT_HOST,
        };
        CliError { code, error: e.into() }
    }
}

impl From<PolicyError> for CliError {
    fn from(e: PolicyError) -> CliError {
        CliError::usage(e)
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => {
            let policy = Policy::from_file(&file)?;
            print!("{}", policy.to_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_one(args),
        Command::Batch(args) => batch::run_batch(args),
        Command::Repl(args) => repl::run(args),
        Command::Mcp(args) => mcp_command(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Audit(args) => audit_command(args),
        Command::Breakers(args) => breakers_command(args),
        Command::Redteam(args) => redteam::run(args),
        Command::Exec(args) => command::run(args),
        Command::Approvals(args) => command::approvals(args),
        Command::Serve(args) => serve::run(args),
        Command::Workspace(args) => workspace::run(args),
        Command::Stop(args) => ops::stop(args),
        Command::Resume(args) => ops::resume(args),
        Command::DataKey(command) => datakey::run(command),
        #[cfg(feature = "rustpython")]
        Command::Bench(args) => bench::run(args),
        #[cfg(not(feature = "rustpython"))]
        Command::Bench(_) => {
            Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("this build has no rustpython tier to measure") })
        }
    }
}

/// What a command runs requests through, after the policy and tier are settled.
struct Target {
    sandbox: std::sync::Arc<crate::Sandbox>,
    choice: TierChoice,
    overrides: Overrides,
}

impl Target {
    /// The tier named in outcomes for requests that never reached one.
    fn nominal_tier(&self) -> Tier {
        match (self.choice, self.sandbox.policy().tier()) {
            (TierChoice::Fixed(t), _) | (TierChoice::Auto, TierChoice::Fixed(t)) => t,
            (TierChoice::Auto, TierChoice::Auto) => Tier::Rustpython,
        }
    }
}

/// `many`: the command will run many requests (batch), so warm pools pay off.
fn target(common: &CommonArgs, many: bool) -> Result<Target, CliError> {
    target_announcing(common, many, None)
}

/// As [`target`]; approval requests are announced to `also` too (after stderr).
fn target_announcing(
    common: &CommonArgs,
    many: bool,
    also: Option<crate::approval::Announce>,
) -> Result<Target, CliError> {
    let policy = match &common.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let choice = TierChoice::parse(&common.tier).ok_or_else(|| {
        CliError::usage(anyhow::anyhow!("--tier {:?}: expected auto, rustpython, wasm or docker", common.tier))
    })?;
    // Refused before anything starts, with the router's own reason.
    if let TierChoice::Fixed(tier) = choice
        && let Some(why) = crate::router::refusal(&policy, tier)
    {
        return Err(CliError::usage(anyhow::anyhow!(why)));
    }
    let mut overrides = Overrides::default();
    if let Some(t) = common.timeout {
        let Some(d) = crate::policy::timeout_secs(t) else {
            return Err(CliError::usage(anyhow::anyhow!("--timeout {t}: expected a positive number of seconds")));
        };
        overrides.timeout = Some(d);
    }
    if let Some(m) = &common.memory {
        let size = crate::policy::parse_size(m).map_err(|e| CliError::usage(anyhow::anyhow!("--memory: {e}")))?;
        overrides.max_memory = Some(size);
    }
    overrides.fuel = common.fuel;
    // Reject loosening before any code runs.
    policy.tighten(&overrides)?;
    // A tighter --memory caps the sessions `batch` and `repl` open too (a cell's
    // own override cannot shrink a process that is already running).
    let mut policy = policy;
    if let Some(m) = overrides.max_memory {
        policy.cap_session_memory(m);
    }
    #[allow(unused_mut, reason = "only builds with the CPython tiers set pool sizes")]
    let mut builder = crate::Sandbox::builder().policy(policy);
    // Code from the command line is untrusted: the rustpython tier runs it in
    // isolated mode (one confined child per run). A single run would only pay for
    // warm wasm instances or containers it never uses.
    let pool = if many { 2 } else { 0 };
    #[cfg(feature = "wasm")]
    {
        let mut config = crate::tier::wasm::WasmConfig::from_env();
        config.pool_size = pool;
        builder = builder.wasm(config);
    }
    #[cfg(feature = "docker")]
    {
        let config = crate::tier::docker::DockerConfig { pool_size: pool, ..Default::default() };
        builder = builder.docker(config);
    }
    let _ = pool;
    // Every request is recorded before it runs; a log that cannot be opened stops
    // the command (set TERRARIUM_HOME to put it elsewhere).
    let path = crate::audit::default_path().map_err(|e| CliError { code: EXIT_HOST, error: e.into() })?;
    builder = builder.audit(path).announce(std::sync::Arc::new(move |item: &crate::approval::Item| {
        eprintln!(
            "terrarium: approval request {} ({}); waiting for: terrarium approvals approve {}",
            item.id, item.reason, item.id
        );
        if let Some(also) = &also {
            also(item);
        }
    }));
    Ok(Target { sandbox: std::sync::Arc::new(builder.build()?), choice, overrides })
}

fn read_code(args: &RunArgs) -> Result<String, CliError> {
    let bytes = match (&args.code, &args.file) {
        (Some(code), _) => return Ok(code.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::usage(anyhow::anyhow!("cannot read stdin: {e}")))?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).map_err(|e| CliError::usage(anyhow::anyhow!("{}: {e}", path.display())))?
        }
        (None, None) => {
            return Err(CliError::usage(anyhow::anyhow!("no code given: use -c CODE, a FILE, or - for stdin")));
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        CliError::usage(anyhow::anyhow!(
            "the code is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The runtime of commands that serve many callers (`serve`, `mcp`, the red team).
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError { code: EXIT_HOST, error: anyhow::anyhow!("cannot start the async runtime: {e}") })
}

/// The runtime of `run`, `batch` and `bench`: one thread, which drives the I/O
/// itself. On a multi-threaded runtime a child's answer wakes a worker thread, which
/// then wakes the thread blocked in `block_on`: two cross-CPU wake-ups on every
/// request (the isolated `1+1` p50 went from ~445 to ~305 µs without them; see
/// docs/benchmarks.md). The work of a request happens in children and interpreter
/// threads, so one host thread keeps up with every request in flight.
fn local_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError { code: EXIT_HOST, error: anyhow::anyhow!("cannot start the async runtime: {e}") })
}

fn run_one(args: RunArgs) -> Result<ExitCode, CliError> {
    let code = read_code(&args)?;
    let target = target(&args.common, false)?;
    let req = ExecRequest {
        id: None,
        code,
        overrides: target.overrides.clone(),
        scratch: args.scratch,
        tier: target.choice,
        caller: Some(local_caller()),
        host: None,
        workspace: args.workspace.clone(),
        mount: None,
    };
    let outcome = local_runtime()?.block_on(target.sandbox.execute(req))?;
    flush_audit(&target);
    // A reader that closed the pipe (`| head`) has taken what it wanted: a failed
    // write ends nothing but the output; the exit code still says how the run ended.
    if args.json {
        let _ = writeln!(std::io::stdout().lock(), "{}", json_line(&outcome));
    } else {
        print_outcome(&outcome);
    }
    Ok(ExitCode::from(exit_code(outcome.status)))
}

/// A run's stdout and stderr, then on any status but `ok` the line
/// `terrarium: STATUS: TYPE: MESSAGE`. The snippet's text reaches a terminal
/// escaped (H16), a pipe as it is; a failed write is ignored (see `run`).
pub(super) fn print_outcome(outcome: &Outcome) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", stdout_text(&outcome.stdout));
    let _ = out.flush();
    let stderr = terminal::for_stream(&outcome.stderr, std::io::stderr().is_terminal());
    let _ = write!(std::io::stderr(), "{stderr}");
    if let Some(err) = &outcome.error {
        // The type is the guest's text too (a class may be named anything).
        eprintln!(
            "terrarium: {}: {}: {}",
            outcome.status.as_str(),
            terminal::message_for_terminal(&err.kind),
            terminal::message_for_terminal(&err.message)
        );
    }
}

/// Sandbox text (a snippet's output, stored code) for this process's stdout: see
/// [`terminal::for_stream`].
fn stdout_text(text: &str) -> std::borrow::Cow<'_, str> {
    terminal::for_stream(text, std::io::stdout().is_terminal())
}

/// `terrarium mcp`: the MCP server on stdio until the client closes it.
fn mcp_command(args: args::BatchArgs) -> Result<ExitCode, CliError> {
    let waiting = crate::mcp::Waiting::default();
    let target = target_announcing(&args.common, true, Some(waiting.announce()))?;
    let rt = runtime()?;
    let caller = format!("mcp:{}", local_caller().trim_start_matches("local:"));
    let server = crate::mcp::McpServer::new(target.sandbox.clone(), caller, waiting);
    let served = rt.block_on(crate::mcp::serve_stdio(server));
    flush_audit(&target);
    served.map_err(|e| CliError { code: EXIT_HOST, error: e })?;
    Ok(ExitCode::SUCCESS)
}

/// Before exiting: the audit events are in the journal already; moving them into
/// the database now leaves no journal behind (a database that stays unavailable
/// is reported, and the journal is replayed by the next command).
fn flush_audit(target: &Target) {
    if let Err(e) = target.sandbox.flush_audit(Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
}

/// The exit code `run` gives for a status.
pub fn exit_code(status: Status) -> u8 {
    match status {
        Status::Ok => 0,
        Status::Exception => 1,
        Status::Denied => 4,
        s if s.is_limit() => 3,
        _ => EXIT_HOST,
    }
}

fn audit_command(args: AuditArgs) -> Result<ExitCode, CliError> {
    let host = |e: crate::audit::AuditError| CliError { code: EXIT_HOST, error: e.into() };
    let path = match args.db {
        Some(p) => p,
        None => crate::audit::default_path().map_err(host)?,
    };
    if let AuditCommand::Restore { file } = &args.command {
        return restore_audit(file, &path);
    }
    if !path.exists() {
        return Err(CliError::usage(anyhow::anyhow!("{}: no audit database there", path.display())));
    }
    // Events of commands that ended before their writer caught up.
    crate::audit::recover(&path).map_err(host)?;
    let print = |rows: Vec<crate::audit::Row>| {
        let mut out = std::io::stdout().lock();
        for r in rows {
            let _ = writeln!(out, "{}", json_line(&r));
        }
    };
    match args.command {
        AuditCommand::Tail { n } => print(crate::audit::tail(&path, n).map_err(host)?),
        AuditCommand::Export => print(crate::audit::tail(&path, usize::MAX).map_err(host)?),
        AuditCommand::Show { seq } => {
            let Some(r) = crate::audit::row(&path, seq).map_err(host)? else {
                return Err(CliError::usage(anyhow::anyhow!("no event {seq}")));
            };
            println!("{}", terminal::json_for_terminal(&serde_json::to_string_pretty(&r).unwrap_or_default()));
            if let Some(sha) = r.data.get("code_sha256").and_then(serde_json::Value::as_str)
                && r.event_kind() == Ok(crate::audit::EventKind::Request)
                && let Some(text) = crate::audit::code(&path, sha).map_err(host)?
            {
                println!("--- code {sha}\n{}", stdout_text(&text));
            }
        }
        AuditCommand::Code { sha256 } => match crate::audit::code(&path, &sha256).map_err(host)? {
            Some(text) => print!("{}", stdout_text(&text)),
            None => return Err(CliError::usage(anyhow::anyhow!("no code with sha256 {sha256}"))),
        },
        AuditCommand::Verify => {
            let report = crate::audit::verify_report(&path).map_err(host)?;
            if report.problems.is_empty() {
                print!("ok: {} events, hash chain intact", report.rows);
                if report.unopened > 0 {
                    print!(
                        "; {} sealed values not opened (no data key: their MACs were checked, not their contents)",
                        report.unopened
                    );
                }
                println!();
            } else {
                for p in &report.problems {
                    println!("{p}");
                }
                return Ok(ExitCode::from(1));
            }
        }
        AuditCommand::Prune { days } => {
            if days == 0 {
                return Err(CliError::usage(anyhow::anyhow!("--days must be at least 1")));
            }
            let log = open_audit_log(&path)?;
            let n = crate::audit::prune_days(&log, days).map_err(host)?;
            println!("deleted {n} events older than {days} days");
        }
        AuditCommand::Backup { file } => {
            let copied = crate::audit::backup(&path, &file).map_err(host)?;
            println!(
                "backed up {} events (last {}) from {} to {} (and its head file)",
                copied.events,
                copied.last_seq,
                path.display(),
                file.display()
            );
        }
        AuditCommand::Restore { .. } => unreachable!("restore is handled before the log is opened"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `terrarium audit restore FILE`: the backup, verified, as the log at `path`;
/// the restore is the restored log's first new event.
fn restore_audit(file: &std::path::Path, path: &std::path::Path) -> Result<ExitCode, CliError> {
    let host = |e: crate::audit::AuditError| CliError { code: EXIT_HOST, error: e.into() };
    // A sealed backup is restored only with its key: the restore is recorded in it.
    crate::audit::check_key(file).map_err(host)?;
    let copied = crate::audit::restore(file, path).map_err(host)?;
    let log = open_audit_log(path)?;
    let data = serde_json::json!({
        "from": file.display().to_string(), "events": copied.events, "last_seq": copied.last_seq,
        "last_hash": copied.last_hash, "by": local_caller(),
    });
    log.record(crate::audit::Event {
        kind: crate::audit::EventKind::AuditRestored,
        request_id: None,
        data,
        code: None,
    })
    .map_err(host)?;
    log.flush(std::time::Duration::from_secs(10)).map_err(host)?;
    println!(
        "restored {} events (last {}) from {} into {}",
        copied.events,
        copied.last_seq,
        file.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Breakers live in each Terrarium process; their transitions are audit events, so
/// this shows, for each breaker, its settings and the last transition any process
/// recorded.
/// The audit log for a command that writes to it directly (not through a
/// `Sandbox`), with a `database` breaker of default settings.
fn open_audit_log(path: &std::path::Path) -> Result<crate::audit::AuditLog, CliError> {
    let breaker = crate::breaker::Breaker::new("database", crate::policy::BreakerPolicy::default());
    crate::audit::AuditLog::open(path, breaker).map_err(|e| CliError { code: EXIT_HOST, error: e.into() })
}

fn breakers_command(args: BreakersArgs) -> Result<ExitCode, CliError> {
    let host = |e: crate::audit::AuditError| CliError { code: EXIT_HOST, error: e.into() };
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let path = match args.db {
        Some(p) => p,
        None => crate::audit::default_path().map_err(host)?,
    };
    let last = if path.exists() {
        crate::audit::recover(&path).map_err(host)?;
        crate::audit::breaker_transitions(&path).map_err(host)?
    } else {
        Vec::new()
    };
    for b in crate::breaker::Breakers::from_policy(&policy).snapshot() {
        let t = last.iter().find(|r| r.data["breaker"] == b.name.as_str());
        let state = t.and_then(|r| r.data["to"].as_str()).unwrap_or("closed");
        let reason = t.and_then(|r| r.data["reason"].as_str()).unwrap_or("no transition recorded");
        let at = t.map(|r| r.ts_us);
        if args.json {
            let v = serde_json::json!({
                "name": b.name, "state": state, "since_us": at, "reason": reason,
                "failure_threshold": b.failure_threshold, "recovery_timeout_secs": b.recovery_timeout_secs,
            });
            println!("{v}");
        } else {
            println!(
                "{:<11} {:<9} threshold {}, recovery {}s: {reason}",
                b.name, state, b.failure_threshold, b.recovery_timeout_secs
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `value` as one line of JSON that cannot drive the terminal it is printed on
/// (H16: the text in it comes from snippets and submitters).
pub(crate) fn json_line(value: &impl serde::Serialize) -> String {
    terminal::json_for_terminal(&serde_json::to_string(value).unwrap_or_default()).into_owned()
}

/// Who runs the CLI, as audit events name a caller: `local:USER` (or the uid).
pub(crate) fn local_caller() -> String {
    use std::os::unix::fs::MetadataExt as _;
    static CALLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CALLER
        .get_or_init(|| match std::env::var("USER") {
            Ok(user) if !user.is_empty() => format!("local:{user}"),
            _ => format!("local:uid{}", std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)),
        })
        .clone()
}
