//! `terrarium redteam`: the attack corpus and its variants against every tier, as
//! a matrix. Exit 0 when nothing escaped and nothing on the host failed, 1 when
//! something did, 2 on a usage error, 5 when a tier is unavailable.

use std::process::ExitCode;

use super::{CliError, EXIT_HOST, RedteamArgs, runtime};
use crate::policy::{Policy, Tier};
use crate::redteam::{self, Options};

pub(super) fn run(args: RedteamArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let tiers = tiers(&args, &policy)?;
    let mut corpus = match &args.corpus {
        Some(dir) => redteam::load_corpus(dir),
        None => redteam::builtin_corpus(),
    }
    .map_err(CliError::usage)?;
    if let Some(only) = &args.only {
        corpus.retain(|a| a.name.contains(only.as_str()));
        if corpus.is_empty() {
            return Err(CliError::usage(anyhow::anyhow!("--only {only:?}: no attack's name contains it")));
        }
    }
    if args.jobs == 0 || args.jobs > 64 {
        return Err(CliError::usage(anyhow::anyhow!("--jobs {}: expected 1 to 64", args.jobs)));
    }
    if args.variants > 100 {
        return Err(CliError::usage(anyhow::anyhow!("--variants {}: at most 100", args.variants)));
    }
    // The secret every tier inherits in its environment and must not hand over.
    // SAFETY: no thread exists yet: the async runtime is built below, and nothing
    // before this point in the command starts one.
    #[allow(unsafe_code, reason = "planting the secret before any thread exists")]
    unsafe {
        redteam::harness::plant_env_secret()
    };
    let json = args.json;
    let options = Options {
        policy,
        tiers,
        corpus,
        variants: args.variants,
        seed: args.seed,
        jobs: args.jobs,
        workdir: args.workdir,
        #[cfg(feature = "rustpython")]
        isolated: None,
        progress: Some(Box::new(|line: &str| eprintln!("terrarium redteam: {line}"))),
        rustpython_fuel: (args.rustpython_fuel > 0).then_some(args.rustpython_fuel),
    };
    let report = runtime()?.block_on(redteam::run(options))?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn tiers(args: &RedteamArgs, policy: &Policy) -> Result<Vec<Tier>, CliError> {
    if args.tiers.is_empty() {
        let in_build = |t: &Tier| match t {
            Tier::Rustpython => cfg!(feature = "rustpython"),
            Tier::Wasm => cfg!(feature = "wasm"),
            Tier::Docker => cfg!(feature = "docker"),
        };
        let built: Vec<Tier> =
            Tier::ALL.into_iter().filter(in_build).filter(|t| crate::router::refusal(policy, *t).is_none()).collect();
        if built.is_empty() {
            return Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("no tier in this build runs this policy") });
        }
        return Ok(built);
    }
    let mut out = Vec::new();
    for name in &args.tiers {
        let tier = Tier::parse(name.trim())
            .ok_or_else(|| CliError::usage(anyhow::anyhow!("--tiers {name:?}: expected rustpython, wasm or docker")))?;
        if let Some(why) = crate::router::refusal(policy, tier) {
            return Err(CliError::usage(anyhow::anyhow!(why)));
        }
        if !out.contains(&tier) {
            out.push(tier);
        }
    }
    Ok(out)
}
