//! The wasm tier (CPython 3.12 on WASI under wasmtime), as a library caller sees it.
//!
//! - `wasm/warm/*`: one request on a warm instance (the pool is refilled, untimed,
//!   before each timed request).
//! - `wasm/cold/print`: a fresh instance per request (CPython's start-up included).
//! - `wasm/refill_2`: time to start two warm instances (refill rate = 2 / time).
//! - `wasm/session/*`: one cell in a session kept open (its instance kept, its
//!   state kept; cells/s = 1 / time), beside the single runs above.
//!
//! Needs python.wasm (`scripts/setup-wasm`).

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::{ExecRequest, Executor, Policy, Status, WasmConfig, WasmExecutor};

fn executor(pool: usize) -> WasmExecutor {
    let mut config = WasmConfig::from_env();
    config.pool_size = pool;
    let exec = WasmExecutor::new(Policy::default_policy(), config);
    exec.warm_up().expect("python.wasm is not set up: run scripts/setup-wasm");
    exec
}

async fn run(exec: &WasmExecutor, code: &str) {
    let o = exec.execute(ExecRequest::new(code)).await.expect("host fault");
    assert_eq!(o.status, Status::Ok, "{o:?}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("wasm");
    let warm = executor(1);
    for (name, code) in [
        ("warm/print", "print(1+1)"),
        ("warm/loop_10k", "t = 0\nfor i in range(10000):\n    t += i\nt"),
        ("warm/json_dumps_100", "import json\njson.dumps(list(range(100)))"),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    warm.fill_pool().expect("refill");
                    let t = Instant::now();
                    rt.block_on(run(&warm, code));
                    total += t.elapsed();
                }
                total
            });
        });
    }
    // Cells of one session (its instance kept). A session ends at its max_cells
    // (1000 by default): a new one starts, untimed.
    let mut session = rt.block_on(warm.open_session()).expect("session");
    for (name, code) in
        [("session/print", "print(1+1)"), ("session/loop_10k", "t = 0\nfor i in range(10000):\n    t += i\nt")]
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if session.ended().is_some() {
                        session = rt.block_on(warm.open_session()).expect("session");
                    }
                    let t = Instant::now();
                    let o = rt.block_on(session.execute(ExecRequest::new(code))).expect("host fault");
                    total += t.elapsed();
                    assert_eq!(o.status, Status::Ok, "{o:?}");
                }
                total
            });
        });
    }
    drop(session);
    let cold = executor(0);
    group.bench_function("cold/print", |b| b.iter(|| rt.block_on(run(&cold, "print(1+1)"))));
    group.bench_function("refill_2", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let e = executor(2);
                let t = Instant::now();
                e.fill_pool().expect("fill");
                total += t.elapsed();
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
