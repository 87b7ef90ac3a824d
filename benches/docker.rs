//! The docker tier (CPython in a hardened container of the local engine), as a
//! library caller sees it.
//!
//! - `docker/warm/print`: one request on a warm container (the pool is refilled,
//!   untimed, before each timed request).
//! - `docker/cold/print`: create, attach, start, run and remove a container per
//!   request.
//! - `docker/refill_1`: time to start one warm container (bounds sustained
//!   throughput: the engine spends it on every request).
//! - `docker/session/print`: one cell in a session kept open (its container kept;
//!   cells/s = 1 / time), beside `warm/print`, the same snippet as a single run.
//!
//! Needs a running engine and the local image (`scripts/setup-docker`).

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::{DockerConfig, DockerExecutor, ExecRequest, Executor, Policy, Status};

const POLICY: &str = include_str!("../policies/local-docker.yaml");

fn executor(rt: &tokio::runtime::Runtime, pool: usize) -> DockerExecutor {
    let policy = Policy::from_yaml(POLICY, "policies/local-docker.yaml").expect("policy");
    let exec = DockerExecutor::new(policy, DockerConfig { pool_size: pool, ..DockerConfig::default() });
    rt.block_on(exec.connect()).expect("the docker tier is not set up: run scripts/setup-docker (as root)");
    exec
}

async fn run(exec: &DockerExecutor, code: &str) {
    let o = exec.execute(ExecRequest::new(code)).await.expect("host fault");
    assert_eq!(o.status, Status::Ok, "{o:?}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("docker");
    let warm = executor(&rt, 1);
    group.bench_function("warm/print", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                rt.block_on(warm.fill_pool()).expect("refill");
                let t = Instant::now();
                rt.block_on(run(&warm, "print(1+1)"));
                total += t.elapsed();
            }
            total
        });
    });
    // Cells of one session (its container kept). A session ends at its max_cells
    // (1000 by default): a new one starts, untimed.
    let mut session = rt.block_on(warm.open_session()).expect("session");
    group.bench_function("session/print", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if session.ended().is_some() {
                    session = rt.block_on(warm.open_session()).expect("session");
                }
                let t = Instant::now();
                let o = rt.block_on(session.execute(ExecRequest::new("print(1+1)"))).expect("host fault");
                total += t.elapsed();
                assert_eq!(o.status, Status::Ok, "{o:?}");
            }
            total
        });
    });
    drop(session);
    rt.block_on(warm.shutdown()).expect("shutdown");
    let cold = executor(&rt, 0);
    group.bench_function("cold/print", |b| b.iter(|| rt.block_on(run(&cold, "print(1+1)"))));
    group.bench_function("refill_1", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let e = executor(&rt, 1);
                let t = Instant::now();
                rt.block_on(e.fill_pool()).expect("fill");
                total += t.elapsed();
                rt.block_on(e.shutdown()).expect("shutdown");
            }
            total
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
