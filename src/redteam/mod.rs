//! Variant simulation for security testing: an attack corpus, a mutator, and a
//! harness that runs corpus × variants on every tier and judges each run by its
//! effect on the host.
//!
//! - The corpus (`redteam/corpus/*.yaml`, compiled in; `--corpus DIR` for another)
//!   is data: each attack names its category, the host effect that would mean it
//!   worked, and which outcomes count as contained.
//! - [`mutate`] writes variants of each attack, deterministic from a seed.
//! - [`harness::Watch`] plants a secret, a marker directory and a listener, and
//!   reports what reached them.
//! - [`run`] sends every variant through a [`Sandbox`] fixed to each tier and
//!   builds a [`Report`]: per category and tier, attempted / contained /
//!   uncontained / escaped / host crashes / limit overshoot p99; the policy-parity
//!   table's disagreements; and each failure with its code.
//!
//! # Security invariant kept
//! A run is judged by the host, never by what the snippet says about itself: an
//! escape is a planted secret or another run's token in an outcome, a marker file
//! on the host, anything reaching the listener (also after the run ended), or a run
//! that outlives its deadline by more than the slack. A host fault (`Err` from a
//! tier) is a host crash. [`Report::passed`] is false on any of these, on an
//! outcome outside the attack's contained list, and on a parity disagreement.

pub mod harness;
pub mod mutate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
use crate::executor::{ExecRequest, Outcome, Status};
use crate::policy::{Policy, Tier, TierChoice};
use crate::sandbox::Sandbox;

mod corpus;
pub use corpus::*;
mod report;
pub use report::*;
mod judge;
use judge::judge;

crate::names::named! {
    /// What an attack goes after; the built-in corpus covers every category.
    "category" pub enum Category {
        /// Importing a module the policy does not allow.
        ImportBypass = "import_bypass",
        /// Reaching interpreter internals through attributes and frames.
        Introspection = "introspection",
        /// Replacing or reaching behind the builtins.
        BuiltinsTampering = "builtins_tampering",
        /// Reading, writing or listing host files.
        Filesystem = "filesystem",
        /// Opening connections.
        Network = "network",
        /// Starting processes or threads.
        ProcessThread = "process_thread",
        /// Outrunning a limit.
        ResourceExhaustion = "resource_exhaustion",
        /// Leaving state for a later run.
        StateLeakage = "state_leakage",
        /// One tier's own walls.
        TierSpecific = "tier_specific",
        /// The interpreter's own machinery (matching, finalizers, codecs).
        InterpreterInternals = "interpreter_internals",
    }
}

crate::names::named! {
    /// The host effect that would mean an attack worked.
    "effect" pub enum Effect {
        /// The planted secret file or variable was read.
        SecretRead = "secret_read",
        /// The loopback listener was reached.
        Connection = "connection",
        /// A file appeared in the marker directory.
        MarkerFile = "marker_file",
        /// Something of the run kept running after it.
        Outlives = "outlives",
        /// A later run saw what an earlier one left.
        StateLeak = "state_leak",
        /// The host process died.
        HostDead = "host_dead",
        /// A limit was passed by more than its margin.
        Overrun = "overrun",
        /// The snippet reached a capability it must not hold.
        Capability = "capability",
    }
}

crate::names::named! {
    /// Why a run failed the red team's bar.
    "failure kind" pub enum FailureKind {
        /// A host effect was seen.
        Escaped = "escaped",
        /// The host failed instead of the run.
        HostCrash = "host_crash",
        /// The run ended in a status the attack does not count as contained.
        Uncontained = "uncontained",
        /// A tier disagreed with the parity table.
        Parity = "parity",
    }
}

/// Statuses an attack may list as contained (`refused`: the sandbox refused the
/// request before any tier ran it, e.g. code over `max_code_size`). `denied` and
/// `refused` always count as contained: the policy stopped the attack.
pub const CONTAINED_NAMES: &[&str] =
    &["ok", "exception", "timeout", "memory_limit", "fuel_exhausted", "output_limit", "denied", "crashed", "refused"];

const PLACEHOLDERS: &[&str] = &["SECRET_PATH", "SECRET_DIR", "MARKER", "MARKER_DIR", "PORT", "TOKEN", "SECRET_ENV"];

/// The corpus compiled into the binary.
const BUILTIN: &[(&str, &str)] = &[
    ("import_bypass.yaml", include_str!("../../redteam/corpus/import_bypass.yaml")),
    ("introspection.yaml", include_str!("../../redteam/corpus/introspection.yaml")),
    ("interpreter_internals.yaml", include_str!("../../redteam/corpus/interpreter_internals.yaml")),
    ("builtins_tampering.yaml", include_str!("../../redteam/corpus/builtins_tampering.yaml")),
    ("filesystem.yaml", include_str!("../../redteam/corpus/filesystem.yaml")),
    ("network.yaml", include_str!("../../redteam/corpus/network.yaml")),
    ("process_thread.yaml", include_str!("../../redteam/corpus/process_thread.yaml")),
    ("resource_exhaustion.yaml", include_str!("../../redteam/corpus/resource_exhaustion.yaml")),
    ("state_leakage.yaml", include_str!("../../redteam/corpus/state_leakage.yaml")),
    ("tier_specific.yaml", include_str!("../../redteam/corpus/tier_specific.yaml")),
];

const PARITY: &str = include_str!("../../redteam/parity.yaml");

/// Where progress lines go.
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

/// What to run.
pub struct Options {
    /// The policy under test.
    pub policy: Policy,
    /// Tiers to run on, in order.
    pub tiers: Vec<Tier>,
    /// The attacks.
    pub corpus: Vec<Attack>,
    /// Variants per attack (besides the attack as written).
    pub variants: u32,
    /// The mutator's seed.
    pub seed: u64,
    /// Requests in flight per tier.
    pub jobs: usize,
    /// Where to plant the secret and markers (`None`: a fresh temporary directory).
    pub workdir: Option<std::path::PathBuf>,
    /// The rustpython tier's zygote (`None`: [`crate::IsolatedConfig::from_env`]).
    #[cfg(feature = "rustpython")]
    pub isolated: Option<crate::tier::rustpython::IsolatedConfig>,
    /// Called with a line of progress now and then.
    pub progress: Option<Progress>,
    /// The fuel budget of resource-exhaustion attacks on the rustpython tier
    /// (`None`: only the policy's). Under one, such an attack must end within it:
    /// `fuel_exhausted` counts as contained, and `timeout` does not, unless the
    /// attack [`Attack::waits`]; a run reporting more fuel than the budget fails.
    pub rustpython_fuel: Option<u64>,
}

/// One run: an attack or one of its variants, on one tier.
struct Job {
    attack: usize,
    variant: mutate::Variant,
    /// One token per attack step.
    tokens: Vec<String>,
}

struct Verdict {
    attack: usize,
    tier: Tier,
    variant: mutate::Variant,
    tokens: Vec<String>,
    steps: Vec<String>,
    effects: Vec<String>,
    host_fault: Option<String>,
    statuses: Vec<String>,
    overshoot_ms: Vec<u64>,
    /// The fuel budget the run had, when the red team gave it one.
    fuel: Option<u64>,
    /// A run that reported more fuel than its budget, or none at all.
    fuel_over: Option<String>,
}

/// How much longer than its deadline a run may take before it counts as having
/// outlived it (`overrun`): the deadline itself, at least 5 s (a loaded 2-core
/// machine and a container's removal fit in it; a run that ignores its deadline
/// does not).
fn overrun_slack(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(5))
}

/// How long the harness waits after the last run for effects that come late (a
/// thread or process that outlived its run).
pub const LATE_EFFECT_GRACE: Duration = Duration::from_secs(2);

/// Runs the corpus and its variants on every tier in `options.tiers`, then the
/// parity table, and judges every run by its host effects.
///
/// # Errors
/// [`SandboxError::TierUnavailable`] when a tier cannot run `1 + 1` (with how to
/// set it up); host errors while planting the watch. Failures of attacks are in
/// the [`Report`], not errors.
pub async fn run(options: Options) -> Result<Report, SandboxError> {
    let watch = Arc::new(
        harness::Watch::start(options.workdir.as_deref())
            .map_err(|e| SandboxError::Host { tier: Tier::Rustpython, message: format!("red-team watch: {e}") })?,
    );
    let say = |line: &str| {
        if let Some(p) = &options.progress {
            p(line);
        }
    };
    // The variants, made once (the parser recurses with the source's depth, and the
    // corpus has deep sources on purpose: a thread with a large stack).
    let corpus = options.corpus.clone();
    let (variants, seed) = (options.variants, options.seed);
    let plans: Vec<Vec<mutate::Variant>> = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            corpus
                .iter()
                .map(|a| {
                    let mut v = vec![mutate::Variant::original(&a.steps)];
                    v.extend((1..=variants).filter_map(|n| mutate::variant(&a.steps, seed, &a.name, n)));
                    v
                })
                .collect()
        })
        .map_err(|e| SandboxError::Host { tier: Tier::Rustpython, message: format!("cannot start a thread: {e}") })?
        .join()
        .map_err(|_| SandboxError::Host { tier: Tier::Rustpython, message: "the mutator panicked".into() })?;

    let mut verdicts = Vec::new();
    let mut parity = Vec::new();
    let mut failures = Vec::new();
    for &tier in &options.tiers {
        let sandbox = Arc::new(sandbox_for(&options, options.policy.clone())?);
        preflight(&sandbox, tier).await?;
        let corpus = &options.corpus;
        let jobs: Vec<Job> = plans
            .iter()
            .enumerate()
            .filter(|(i, _)| corpus[*i].tiers.is_empty() || corpus[*i].tiers.contains(&tier))
            .flat_map(|(i, vs)| {
                vs.iter().map(move |v| Job {
                    attack: i,
                    variant: v.clone(),
                    tokens: corpus[i].steps.iter().map(|_| harness::token()).collect(),
                })
            })
            .collect();
        say(&format!("{tier}: {} runs", jobs.len()));
        let started = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
        let mut handles = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (sandbox, watch, sem) = (sandbox.clone(), watch.clone(), sem.clone());
            let timeout = options.policy.timeout();
            let fuel = options
                .rustpython_fuel
                .filter(|_| tier == Tier::Rustpython && corpus[job.attack].category == Category::ResourceExhaustion);
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                run_job(&sandbox, &watch, tier, (timeout, fuel), job).await
            }));
        }
        for h in handles {
            match h.await {
                Ok(v) => verdicts.push(v),
                Err(e) => failures.push(Failure {
                    kind: FailureKind::HostCrash,
                    tier: tier.to_string(),
                    attack: "(harness task)".into(),
                    variant: String::new(),
                    detail: format!("a run's task ended abnormally: {e}"),
                    steps: Vec::new(),
                }),
            }
        }
        say(&format!("{tier}: done in {:.1} s", started.elapsed().as_secs_f64()));
        parity.push(run_parity(&options, tier, &mut failures).await?);
    }

    // Effects that came late: a thread or process that outlived its run.
    tokio::time::sleep(LATE_EFFECT_GRACE).await;
    let mut by_token: HashMap<&str, usize> = HashMap::new();
    for (i, v) in verdicts.iter().enumerate() {
        for t in &v.tokens {
            by_token.insert(t.as_str(), i);
        }
    }
    let mut late: Vec<(usize, String)> = Vec::new();
    let mut unattributed = Vec::new();
    for (token, what) in watch.host_effects() {
        match token.as_deref().and_then(|t| by_token.get(t)) {
            Some(&i) => late.push((i, what)),
            None => unattributed.push(what),
        }
    }
    for (i, what) in late {
        if !verdicts[i].effects.contains(&what) {
            verdicts[i].effects.push(what);
        }
    }
    Ok(judge(&options, verdicts, parity, failures, unattributed))
}

fn sandbox_for(options: &Options, policy: Policy) -> Result<Sandbox, SandboxError> {
    #[allow(unused_mut, reason = "the builder is only changed by tiers in this build")]
    let mut b = Sandbox::builder().policy(policy);
    #[cfg(feature = "rustpython")]
    if let Some(c) = &options.isolated {
        b = b.isolated(c.clone());
    }
    #[cfg(feature = "wasm")]
    {
        let mut c = crate::tier::wasm::WasmConfig::from_env();
        c.pool_size = options.jobs.min(4);
        b = b.wasm(c);
    }
    #[cfg(feature = "docker")]
    {
        b = b.docker(crate::tier::docker::DockerConfig { pool_size: options.jobs.min(4), ..Default::default() });
    }
    let _ = options;
    b.build()
}

/// `1 + 1` on the tier, so that a tier that is not set up fails the whole run
/// loudly instead of showing up as a column of host crashes.
async fn preflight(sandbox: &Sandbox, tier: Tier) -> Result<(), SandboxError> {
    let req = ExecRequest { tier: TierChoice::Fixed(tier), ..ExecRequest::new("1 + 1") };
    let o = sandbox.execute(req).await.map_err(|e| SandboxError::TierUnavailable {
        tier,
        reason: format!("{e} (set it up: scripts/setup-wasm, scripts/setup-docker; or leave it out with --tiers)"),
    })?;
    if o.status != Status::Ok {
        return Err(SandboxError::TierUnavailable {
            tier,
            reason: format!("1 + 1 ended {} ({:?}) under this policy", o.status.as_str(), o.error),
        });
    }
    Ok(())
}

fn outcome_text(o: &Outcome) -> String {
    let mut s = String::with_capacity(o.stdout.len() + o.stderr.len() + 64);
    s.push_str(&o.stdout);
    s.push('\n');
    s.push_str(&o.stderr);
    s.push('\n');
    if let Some(r) = &o.result {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    if let Some(e) = &o.error {
        s.push_str(e.kind.as_str());
        s.push_str(": ");
        s.push_str(&e.message);
    }
    s
}

async fn run_job(
    sandbox: &Sandbox,
    watch: &harness::Watch,
    tier: Tier,
    (timeout, fuel): (Duration, Option<u64>),
    job: Job,
) -> Verdict {
    let steps: Vec<String> = job
        .variant
        .steps
        .iter()
        .zip(&job.variant.origin)
        .map(|(code, &from)| watch.fill(code, &job.tokens[from]))
        .collect();
    let mut v = Verdict {
        attack: job.attack,
        tier,
        variant: job.variant.clone(),
        tokens: job.tokens.clone(),
        steps: steps.clone(),
        effects: Vec::new(),
        host_fault: None,
        statuses: Vec::new(),
        overshoot_ms: Vec::new(),
        fuel,
        fuel_over: None,
    };
    for (code, &from) in steps.iter().zip(&job.variant.origin) {
        let mut req = ExecRequest { tier: TierChoice::Fixed(tier), ..ExecRequest::new(code.clone()) };
        req.overrides.fuel = fuel;
        let started = Instant::now();
        let result = sandbox.execute(req).await;
        let elapsed = started.elapsed();
        match result {
            Ok(o) => {
                let text = outcome_text(&o);
                v.effects.extend(watch.effects_in(&text, &job.tokens[from]));
                if tier == Tier::Rustpython {
                    v.effects.extend(harness::capabilities_in(&text, sandbox.policy().allowed_modules()));
                }
                if o.status == Status::Timeout {
                    v.overshoot_ms.push(u64::try_from(elapsed.saturating_sub(timeout).as_millis()).unwrap_or(u64::MAX));
                }
                if elapsed > timeout + overrun_slack(timeout) {
                    v.effects.push(format!(
                        "overrun: the request took {:.1} s under a {:.1} s deadline",
                        elapsed.as_secs_f64(),
                        timeout.as_secs_f64()
                    ));
                }
                if let Some(budget) = fuel {
                    match o.usage.fuel {
                        Some(used) if used <= budget => {}
                        Some(used) => v.fuel_over = Some(format!("used {used} fuel under a budget of {budget}")),
                        None if o.status.is_limit() && o.status != Status::FuelExhausted => {}
                        None => v.fuel_over = Some(format!("ended {} without a fuel count", o.status.as_str())),
                    }
                }
                v.statuses.push(o.status.as_str().to_string());
            }
            Err(SandboxError::InvalidRequest(_) | SandboxError::Policy(_)) => v.statuses.push("refused".into()),
            Err(e) => {
                v.host_fault = Some(e.to_string());
                v.statuses.push("host_fault".into());
            }
        }
    }
    for (token, what) in watch.host_effects() {
        if token.as_deref().is_some_and(|t| job.tokens.iter().any(|own| own == t)) && !v.effects.contains(&what) {
            v.effects.push(what);
        }
    }
    v
}

async fn run_parity(options: &Options, tier: Tier, failures: &mut Vec<Failure>) -> Result<ParityRow, SandboxError> {
    let cases = parity_cases().map_err(|e| SandboxError::Host { tier, message: e.to_string() })?;
    let mut row = ParityRow { tier: tier.to_string(), ..ParityRow::default() };
    // One sandbox per whitelist.
    let mut sandboxes: BTreeMap<Vec<String>, Sandbox> = BTreeMap::new();
    for case in cases {
        if !sandboxes.contains_key(&case.allowed_modules) {
            let modules: Vec<&str> = case.allowed_modules.iter().map(String::as_str).collect();
            let s = sandbox_for(options, options.policy.with_allowed_modules(&modules))?;
            sandboxes.insert(case.allowed_modules.clone(), s);
        }
        let sandbox = &sandboxes[&case.allowed_modules];
        row.cases += 1;
        let req = ExecRequest { tier: TierChoice::Fixed(tier), ..ExecRequest::new(case.code.clone()) };
        let (allowed, seen) = match sandbox.execute(req).await {
            Ok(o) => (o.status != Status::Denied, format!("{} {:?}", o.status.as_str(), o.error)),
            Err(e) => (false, format!("host error: {e}")),
        };
        if allowed != case.allowed {
            row.disagreements += 1;
            failures.push(Failure {
                kind: FailureKind::Parity,
                tier: tier.to_string(),
                attack: case.code.clone(),
                variant: format!("allowed_modules {:?}", case.allowed_modules),
                detail: format!(
                    "the table says {}, the tier said {seen}",
                    if case.allowed { "allowed" } else { "denied" }
                ),
                steps: vec![case.code],
            });
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_corpus_covers_every_category_with_150_attacks() {
        let corpus = builtin_corpus().expect("corpus parses");
        assert!(corpus.len() >= 150, "{} attacks", corpus.len());
        for c in Category::ALL {
            let n = corpus.iter().filter(|a| a.category == *c).count();
            assert!(n >= 5, "category {c} has {n} attacks");
            assert!(
                corpus.iter().any(|a| a.category == *c && a.tiers.is_empty()),
                "category {c} has no attack for every tier"
            );
        }
        assert!(!parity_cases().expect("parity table").is_empty());
    }

    /// A typo in an attack would make it "contained" for nothing: every step (and
    /// every variant of it) must be Python the parser accepts, but for the attacks
    /// that are too deep on purpose.
    #[test]
    fn every_attack_and_variant_is_python() {
        let watch = harness::Watch::start(None).expect("watch");
        let corpus = builtin_corpus().expect("corpus");
        let bad = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || {
                let mut bad = Vec::new();
                for a in &corpus {
                    let mut variants = vec![mutate::Variant::original(&a.steps)];
                    variants.extend((1..=3).filter_map(|n| mutate::variant(&a.steps, 1, &a.name, n)));
                    for v in variants {
                        for step in &v.steps {
                            let code = watch.fill(step, &harness::token());
                            if let Err(e) = ruff_python_parser::parse_module(&code) {
                                bad.push(format!("{} [{}]: {e}", a.name, v.label()));
                            }
                        }
                    }
                }
                bad
            })
            .expect("thread")
            .join()
            .expect("no panic");
        assert!(bad.is_empty(), "attacks that are not Python:\n{}", bad.join("\n"));
    }

    #[test]
    fn corpus_files_are_checked() {
        let bad = [
            ("category: nope\nattacks: []", "category"),
            ("category: network\nattacks:\n  - {name: a, effect: fly, code: x}", "effect"),
            ("category: network\nattacks:\n  - {name: a, effect: connection}", "no code"),
            ("category: network\nattacks:\n  - {name: a, effect: connection, code: '{{HOME}}'}", "placeholder"),
            ("category: network\nattacks:\n  - {name: a, effect: connection, code: x, contained: [fine]}", "contained"),
            ("category: network\nattacks:\n  - {name: a, effect: connection, code: x, colour: red}", "unknown field"),
            ("category: network\nattacks:\n  - {name: A b, effect: connection, code: x}", "lower-case"),
            ("category: network\nattacks: [", "line 3"),
        ];
        for (text, want) in bad {
            let err = parse_corpus(text, "t.yaml").expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
