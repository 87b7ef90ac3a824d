//! `terrarium command -- CMD…`: a system command checked against the policy's
//! `commands` rules and, when allowed, run in a fresh docker-tier container. Exit
//! codes as `run`: 0 ok, 1 the command exited non-zero, 3 a limit, 4 denied (or
//! waiting for an approval nobody can give here), 2 usage, 5 host error.

use std::process::ExitCode;

use super::{CliError, CommandArgs, exit_code, runtime};
use crate::command::{Decision, decide};
use crate::policy::{Policy, Tier};

/// Exit code for a command that is denied.
const EXIT_DENIED: u8 = 4;

pub(super) fn run(args: CommandArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let line = command_line(&args.words);
    let decision = decide(&line, &policy.command_rules());
    let (kind, reason, argv) = match &decision {
        Decision::Allow { argv } => ("allow", String::new(), argv.clone()),
        Decision::Deny { reason } => ("deny", reason.clone(), Vec::new()),
        // Nobody can approve from here: a critical command is denied by default.
        Decision::NeedsApproval { argv, reason } => ("needs_approval", reason.clone(), argv.clone()),
    };
    let allowed = kind == "allow";
    let outcome = if allowed && !args.check {
        if let Some(why) = crate::router::refusal(&policy, Tier::Docker) {
            return Err(CliError::usage(anyhow::anyhow!("commands run only in the docker tier, and {why}")));
        }
        Some(run_in_docker(&policy, &argv)?)
    } else {
        None
    };
    if args.json {
        let v = serde_json::json!({ "decision": kind, "reason": reason, "argv": argv, "outcome": outcome });
        println!("{v}");
    } else {
        match (&decision, &outcome) {
            (Decision::Deny { reason }, _) => eprintln!("terrarium: denied: {reason}"),
            (Decision::NeedsApproval { reason, .. }, _) => {
                eprintln!("terrarium: needs approval: {reason}; no approver here, so it is denied")
            }
            (Decision::Allow { argv }, None) => println!("allowed: {}", argv.join(" ")),
            (Decision::Allow { .. }, Some(o)) => {
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                if let Some(err) = &o.error {
                    eprintln!("terrarium: {}: {}: {}", o.status.as_str(), err.kind, err.message);
                }
            }
        }
    }
    Ok(match (allowed, outcome) {
        (false, _) => ExitCode::from(EXIT_DENIED),
        (true, None) => ExitCode::SUCCESS,
        (true, Some(o)) => ExitCode::from(exit_code(o.status)),
    })
}

/// One argument is taken as the command line itself; several are words, quoted so
/// that each stays one literal word.
fn command_line(words: &[String]) -> String {
    if let [line] = words {
        return line.clone();
    }
    words.iter().map(|w| format!("'{}'", w.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ")
}

#[cfg(feature = "docker")]
fn run_in_docker(policy: &Policy, argv: &[String]) -> Result<crate::executor::Outcome, CliError> {
    let exec = crate::tier::docker::DockerExecutor::new(
        policy.clone(),
        crate::tier::docker::DockerConfig { pool_size: 0, ..Default::default() },
    );
    Ok(runtime()?.block_on(exec.run_command(argv))?)
}

#[cfg(not(feature = "docker"))]
fn run_in_docker(_: &Policy, _: &[String]) -> Result<crate::executor::Outcome, CliError> {
    Err(CliError { code: super::EXIT_HOST, error: anyhow::anyhow!("this build has no docker tier to run commands in") })
}
