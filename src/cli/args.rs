//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Runs untrusted Python snippets under a policy.
#[derive(Debug, Parser)]
#[command(name = "terrarium", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one snippet.
    Run(RunArgs),
    /// Run JSON Lines requests from stdin, one outcome line per request, in order.
    Batch(BatchArgs),
    /// Run cells one after another in one session, as at a Python prompt
    /// (Ctrl-D ends it).
    Repl(BatchArgs),
    /// Serve Terrarium's tools (run Python, sessions, tier status) over the Model
    /// Context Protocol on stdin and stdout, for an agent's MCP client.
    Mcp(BatchArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Measure round-trip latency of one snippet on this machine (JSON summary).
    Bench(BenchArgs),
    /// Check that each tier can run here (and compile python.wasm once if needed).
    Doctor(DoctorArgs),
    /// Read, check and back up the audit log.
    Audit(AuditArgs),
    /// Show the circuit breakers: settings and last recorded transition.
    Breakers(BreakersArgs),
    /// Check a system command against the policy's `commands` rules and, when it is
    /// allowed, run it in a fresh docker-tier container (never through a shell).
    #[command(name = "command")]
    Exec(CommandArgs),
    /// The queue of critical operations waiting for a human: list, show, approve, deny.
    Approvals(ApprovalsArgs),
    /// Serve Terrarium over HTTP (loopback by default), with the /review page for
    /// the approvals queue.
    Serve(ServeArgs),
    /// Run the attack corpus and its variants on every tier; exit 1 on any escape,
    /// host crash, uncontained outcome or policy-parity disagreement.
    Redteam(RedteamArgs),
    /// Workspaces: create, list, log, diff, show, rollback, verify, export.
    Workspace(WorkspaceArgs),
    /// Emergency stop: refuse new work, stop everything running (recording it
    /// first), expire pending approvals; stays stopped until `terrarium resume`.
    Stop(StopArgs),
    /// Resume a deployment stopped by `terrarium stop`.
    Resume(ResumeArgs),
    /// The data key stored work is sealed under (encryption at rest): make one,
    /// or rotate to the one configured.
    #[command(subcommand, name = "data-key")]
    DataKey(DataKeyCommand),
}

/// `terrarium data-key ...`.
#[derive(Debug, Subcommand)]
pub enum DataKeyCommand {
    /// Write a new random key to FILE (0600; never over an existing file) and
    /// print its id. Point TERRARIUM_DATA_KEY_FILE at it.
    New {
        /// Where to write it.
        file: PathBuf,
    },
    /// Seal everything stored (the audit database and the workspaces' stores)
    /// under the key now configured (TERRARIUM_DATA_KEY_FILE or
    /// TERRARIUM_DATA_KEY), opening what is sealed under the OLD key; what is
    /// still in the clear is sealed too. Run it with every Terrarium process of
    /// the deployment stopped.
    Rotate {
        /// The key file everything is sealed under now (omit when nothing is
        /// sealed yet).
        #[arg(long, value_name = "FILE")]
        old: Option<PathBuf>,
        /// The audit database (default: audit.db in $TERRARIUM_HOME, else in
        /// $XDG_DATA_HOME/terrarium or ~/.local/share/terrarium).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// The workspaces root (default: $TERRARIUM_HOME/workspaces).
        #[arg(long, value_name = "DIR")]
        workspaces: Option<PathBuf>,
    },
}

/// Where a stop or resume goes: a running server, or the deployment's state
/// directory when no server runs.
#[derive(Debug, Args)]
pub struct OpsTarget {
    /// The running server (`http://HOST:PORT`); the bearer token, with the admin
    /// role, is read from `TERRARIUM_TOKEN`.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7878", conflicts_with = "offline")]
    pub server: String,
    /// No server runs: mark the deployment (the audit log's directory) stopped
    /// or resumed directly; servers started later obey it.
    #[arg(long)]
    pub offline: bool,
    /// With --offline: the audit database (default: audit.db in $TERRARIUM_HOME,
    /// else in $XDG_DATA_HOME/terrarium or ~/.local/share/terrarium).
    #[arg(long, value_name = "FILE", requires = "offline")]
    pub db: Option<PathBuf>,
    /// With --offline: who does it, as recorded (default: $USER).
    #[arg(long = "as", value_name = "NAME", requires = "offline")]
    pub who: Option<String>,
}

/// `terrarium stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Why (recorded, and told to every caller refused while stopped).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub target: OpsTarget,
}

/// `terrarium resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub target: OpsTarget,
}

/// `terrarium workspace`.
#[derive(Debug, Args)]
pub struct WorkspaceArgs {
    /// Policy file: its `workspaces.root` says where workspaces live (default:
    /// $TERRARIUM_HOME/workspaces).
    #[arg(long, value_name = "FILE", global = true)]
    pub policy: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: WorkspaceCommand,
}

/// `terrarium workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create an empty workspace (version 0).
    Create {
        /// Its name.
        name: String,
    },
    /// Every workspace with its current version (JSON Lines).
    List,
    /// A workspace's versions, oldest first, with their manifests' sha256 (JSON Lines).
    Log {
        /// The workspace.
        name: String,
    },
    /// What changed from version A to version B: each path, then a unified diff.
    Diff {
        /// The workspace.
        name: String,
        /// The older version.
        a: u64,
        /// The newer version.
        b: u64,
    },
    /// A file's content in one version, to stdout.
    Show {
        /// The workspace.
        name: String,
        /// The version.
        version: u64,
        /// The file's path in the workspace.
        path: String,
    },
    /// Make a new version with an earlier version's files, and rewrite the live
    /// files to match (history is kept).
    Rollback {
        /// The workspace.
        name: String,
        /// The version to go back to.
        version: u64,
    },
    /// Compare the live files with the current version; exit 1 and name every
    /// path changed, added or removed behind Terrarium's back (recorded in the
    /// audit log).
    Verify {
        /// The workspace.
        name: String,
    },
    /// Write one version's files into a new directory.
    Export {
        /// The workspace.
        name: String,
        /// The version.
        version: u64,
        /// A directory that does not exist yet.
        dir: PathBuf,
    },
}

/// `terrarium serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback sends tokens in clear text:
    /// put a TLS proxy in front.
    #[arg(long, value_name = "ADDR", default_value = crate::server::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Policy file (default: the built-in policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Bearer tokens, one per line: `NAME ROLES TOKEN` (roles: submit, approve,
    /// admin, comma-separated); mode 600. `TERRARIUM_TOKEN` adds one named `env`
    /// with every role.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Requests served at once; more get 429.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_requests: usize,
    /// Runs and commands in a tier at once; more get 429.
    #[arg(long, value_name = "N", default_value = "16")]
    pub max_running: std::num::NonZeroUsize,
    /// Critical operations waiting for a human at once; more get 429.
    #[arg(long, value_name = "N", default_value = "64")]
    pub max_waiting: std::num::NonZeroUsize,
    /// A host name clients may reach the server by (repeatable). IP addresses and
    /// `localhost` always may; any other name in a request's Host header is refused
    /// (a page whose name was rebound to this address cannot call the server).
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Connections open at once (kept 64 below the descriptor limit); more wait in
    /// the listen backlog. A client that reads no reply for 10 s is disconnected.
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_connections: std::num::NonZeroUsize,
}

/// `terrarium command`.
#[derive(Debug, Args)]
pub struct CommandArgs {
    /// Policy with the `commands` rules and the docker tier's settings (default:
    /// the built-in policy, which allows no command).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Only decide; do not run an allowed command.
    #[arg(long)]
    pub check: bool,
    /// A command that needs approval waits this long in the approvals queue (in the
    /// audit database) for `terrarium approvals approve ID`; then it is denied.
    /// Without it, such a command is denied at once.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
    /// The decision (and the outcome) as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The command: one argument is a command line (quoted as a shell would
    /// quote it); several are its words as given.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub words: Vec<String>,
}

/// `terrarium approvals`.
#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// The database (default: the audit log's, as `terrarium audit`).
    #[arg(long, value_name = "FILE", global = true)]
    pub db: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

/// `terrarium approvals ...`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Items, newest first (JSON Lines).
    List {
        /// Only `pending`, `approved`, `denied` or `expired` ones.
        #[arg(long)]
        status: Option<crate::approval::ApprovalStatus>,
        /// Only items older than this id (the next page starts before the last id shown).
        #[arg(long)]
        before: Option<i64>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// One item (JSON).
    Show {
        /// Its id.
        id: i64,
    },
    /// Approve a pending item.
    Approve(DecideArgs),
    /// Deny a pending item.
    Deny(DecideArgs),
}

/// Who decides what.
#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The item's id.
    pub id: i64,
    /// Who decides, as recorded in the audit log (default: $USER).
    #[arg(long = "as", value_name = "NAME")]
    pub who: Option<String>,
    /// A note kept with the decision.
    #[arg(long)]
    pub note: Option<String>,
}

/// `terrarium redteam`.
#[derive(Debug, Args)]
pub struct RedteamArgs {
    /// Policy under test (default: the built-in policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Tiers to attack, comma-separated (default: every tier in this build that
    /// the policy allows). A tier that is not set up fails the run.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub tiers: Vec<String>,
    /// Variants of each attack besides the attack as written.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub variants: u32,
    /// The mutator's seed (the same seed gives the same variants).
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight per tier.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// The fuel budget of the resource-exhaustion attacks on the rustpython tier:
    /// each must end within it (`fuel_exhausted`, not at its deadline, unless it
    /// only sleeps). 0: none beyond the policy's.
    #[arg(long, value_name = "UNITS", default_value_t = 20_000_000)]
    pub rustpython_fuel: u64,
    /// A directory of corpus files to use instead of the built-in corpus.
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<PathBuf>,
    /// Only attacks whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// Where the harness plants its secret file and watches for marker files: a
    /// new directory, made here, in a parent no other user can change (default: a
    /// fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// The report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `terrarium breakers`.
#[derive(Debug, Args)]
pub struct BreakersArgs {
    /// Policy file with the breakers' settings (default: the built-in policy).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The audit database whose transitions are shown (default: as `terrarium audit`).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// One JSON object per breaker instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `terrarium audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The audit database (default: audit.db in $TERRARIUM_HOME, else in
    /// $XDG_DATA_HOME/terrarium or ~/.local/share/terrarium).
    #[arg(long, value_name = "FILE", global = true)]
    pub db: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `terrarium audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest events, oldest first (JSON Lines).
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
    },
    /// Print one event (JSON) and, for a request, its code.
    Show {
        /// The event's seq.
        seq: i64,
    },
    /// Print the source stored under a sha256 (as events name it).
    Code {
        /// The sha256.
        sha256: String,
    },
    /// Check the hash chain; names every edited, deleted or reordered row (exit 1).
    Verify,
    /// Print every event as JSON Lines.
    Export,
    /// Delete events older than DAYS (the chain stays verifiable from an anchor).
    Prune {
        /// Age in days.
        #[arg(long)]
        days: u32,
    },
    /// Copy the live database to FILE (SQLite online backup) with a head file
    /// (FILE.head), so that `audit verify --db FILE` checks the copy.
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Restore a backup as the log (--db, default the state directory's
    /// audit.db): only one that verifies, only where no log is yet; the next
    /// process continues its chain.
    Restore {
        /// The backup.
        file: PathBuf,
    },
}

/// `terrarium doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Policy file whose settings (e.g. the docker image) are checked (default: the
    /// built-in policies/default.yaml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Record the deployment's baseline (the policy file, python.wasm, the compiled
    /// module cache, the docker image's id, by digest) in $TERRARIUM_HOME; later
    /// runs of `terrarium doctor` name every part that changed since.
    #[arg(long)]
    pub baseline: bool,
    /// One JSON report: every check, and the docker image's Python and packages
    /// with their versions.
    #[arg(long)]
    pub json: bool,
}

/// `terrarium bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Policy file (default: the built-in policies/default.yaml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Measure embedded mode (in this process; for trusted code only) instead of
    /// isolated mode.
    #[arg(long)]
    pub embedded: bool,
    /// Isolated mode without new namespaces per child (to measure their cost).
    #[arg(long, conflicts_with = "embedded")]
    pub no_namespaces: bool,
    /// Measure the wasm tier with warm instances (refilled, untimed, between requests).
    #[arg(long, conflicts_with_all = ["embedded", "no_namespaces"])]
    pub wasm: bool,
    /// Measure the wasm tier starting CPython for every request.
    #[arg(long, conflicts_with_all = ["embedded", "no_namespaces", "wasm"])]
    pub wasm_cold: bool,
    /// Measure the docker tier with a warm container (started, untimed, before each
    /// request). Needs a policy whose image the engine has.
    #[arg(long, conflicts_with_all = ["embedded", "no_namespaces", "wasm", "wasm_cold"])]
    pub docker: bool,
    /// Measure the docker tier creating and starting a container for every request.
    #[arg(long, conflicts_with_all = ["embedded", "no_namespaces", "wasm", "wasm_cold", "docker"])]
    pub docker_cold: bool,
    /// Timed requests.
    #[arg(short = 'n', default_value_t = 1000)]
    pub n: usize,
    /// The code to run.
    #[arg(short = 'c', value_name = "CODE")]
    pub code: String,
}

/// Options shared by `run` and `batch`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Policy file (default: the built-in policies/default.yaml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Tier: auto, rustpython, wasm or docker.
    #[arg(long, default_value = "auto", value_name = "TIER")]
    pub tier: String,
    /// Deadline in seconds; may only tighten the policy's.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Memory cap (e.g. 256m); may only tighten the policy's.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Fuel budget (rustpython: instructions and native work; wasm: wasmtime's
    /// fuel); may only tighten the policy's.
    #[arg(long, value_name = "UNITS")]
    pub fuel: Option<u64>,
}

/// `terrarium run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Give the run a private writable directory, /scratch, deleted afterwards
    /// (wasm and docker tiers).
    #[arg(long, conflicts_with = "workspace")]
    pub scratch: bool,
    /// Mount workspace NAME read-write at /workspace, the run's working directory
    /// (wasm and docker tiers; the policy's workspaces.allow must name it). The run
    /// works on a copy; what it changes becomes a new version.
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
    /// The code to run.
    #[arg(short = 'c', value_name = "CODE", conflicts_with = "file")]
    pub code: Option<String>,
    /// A file with the code, or - for stdin.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `terrarium batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `terrarium policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print the effective policy.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}
