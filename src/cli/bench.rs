//! `terrarium bench`: round-trip latency of one snippet, as the library sees it.
//!
//! Isolated mode is measured with a warm pool: before each timed request the pool
//! is refilled (untimed), so the figure is the request path alone; refill cost shows
//! in throughput, not here. Prints one JSON object with percentiles in µs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::args::BenchArgs;
use super::{CliError, EXIT_HOST, local_runtime};
use crate::executor::{ExecRequest, Executor, Status};
use crate::policy::Policy;

pub(super) fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default_policy(),
    };
    let rt = local_runtime()?;
    let n = args.n.max(1);
    let samples = if args.docker || args.docker_cold {
        docker(&rt, policy, &args.code, n, args.docker)?
    } else if args.wasm || args.wasm_cold {
        wasm(&rt, policy, &args.code, n, args.wasm)?
    } else if args.embedded {
        let exec = crate::tier::rustpython::EmbeddedExecutor::with_workers(policy, 1);
        rt.block_on(exec.warm_up(1))?;
        measure(&rt, &exec, &args.code, n, |_| async { Ok(()) })?
    } else {
        use crate::tier::rustpython::{IsolatedConfig, IsolatedExecutor};
        let mut config = IsolatedConfig::from_env()?;
        config.namespaces = !args.no_namespaces;
        let exec = IsolatedExecutor::new(policy, config);
        let exec_ref = &exec;
        measure(&rt, &exec, &args.code, n, |_| async move { exec_ref.warm_up().await })?
    };
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let pct = |p: f64| {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
    };
    let mean = sorted.iter().map(Duration::as_secs_f64).sum::<f64>() / sorted.len() as f64 * 1e6;
    let summary = serde_json::json!({
        "mode": match (args.wasm, args.wasm_cold, args.embedded, args.no_namespaces) {
            _ if args.docker => "docker (warm container)",
            _ if args.docker_cold => "docker (cold container per request)",
            (true, _, _, _) => "wasm (warm instance)",
            (_, true, _, _) => "wasm (cold instance per request)",
            (_, _, true, _) => "embedded",
            (_, _, _, false) => "isolated",
            (_, _, _, true) => "isolated, no namespaces",
        },
        "n": n,
        "p50_us": pct(0.50).round(),
        "p99_us": pct(0.99).round(),
        "mean_us": mean.round(),
    });
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "wasm")]
fn wasm(
    rt: &tokio::runtime::Runtime,
    policy: Policy,
    code: &str,
    n: usize,
    warm: bool,
) -> Result<Vec<Duration>, CliError> {
    use crate::tier::wasm::{WasmConfig, WasmExecutor};
    let mut config = WasmConfig::from_env();
    config.pool_size = usize::from(warm);
    let exec = WasmExecutor::new(policy, config);
    exec.warm_up()?;
    let exec_ref = &exec;
    measure(rt, &exec, code, n, |_| async move { if warm { exec_ref.fill_pool() } else { Ok(()) } })
}

#[cfg(not(feature = "wasm"))]
fn wasm(_: &tokio::runtime::Runtime, _: Policy, _: &str, _: usize, _: bool) -> Result<Vec<Duration>, CliError> {
    Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("this build has no wasm tier") })
}

#[cfg(feature = "docker")]
fn docker(
    rt: &tokio::runtime::Runtime,
    policy: Policy,
    code: &str,
    n: usize,
    warm: bool,
) -> Result<Vec<Duration>, CliError> {
    use crate::tier::docker::{DockerConfig, DockerExecutor};
    let config = DockerConfig { pool_size: usize::from(warm), ..DockerConfig::default() };
    let exec = DockerExecutor::new(policy, config);
    rt.block_on(exec.connect())?;
    let exec_ref = &exec;
    let samples =
        measure(rt, &exec, code, n, |_| async move { if warm { exec_ref.fill_pool().await } else { Ok(()) } });
    rt.block_on(exec.shutdown())?;
    samples
}

#[cfg(not(feature = "docker"))]
fn docker(_: &tokio::runtime::Runtime, _: Policy, _: &str, _: usize, _: bool) -> Result<Vec<Duration>, CliError> {
    Err(CliError { code: EXIT_HOST, error: anyhow::anyhow!("this build has no docker tier") })
}

/// Runs `code` `n` times (after 20 untimed runs), calling `before` untimed before
/// each, and returns each request's round trip.
fn measure<'a, F, Fut>(
    rt: &tokio::runtime::Runtime,
    exec: &'a dyn Executor,
    code: &str,
    n: usize,
    before: F,
) -> Result<Vec<Duration>, CliError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::error::SandboxError>> + 'a,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 20 {
        rt.block_on(before(i))?;
        let t = Instant::now();
        let o = rt.block_on(exec.execute(ExecRequest::new(code)))?;
        let elapsed = t.elapsed();
        if o.status != Status::Ok {
            let why = o.error.map(|e| format!("{}: {}", e.kind, e.message)).unwrap_or_default();
            return Err(CliError {
                code: EXIT_HOST,
                error: anyhow::anyhow!("the benchmark snippet did not run cleanly ({}): {why}", o.status.as_str()),
            });
        }
        if i >= 20 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}
