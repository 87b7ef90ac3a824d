//! Isolated rustpython tier (the default for untrusted code): round trips through a
//! confined single-use child of a warm zygote, as a library caller sees them.
//!
//! - `isolated/warm/*`: one request with a full pool (the pool is refilled, untimed,
//!   before each timed request).
//! - `isolated/refill_16`: time for the zygote to fork 16 confined children (forks/s
//!   = 16 / time).
//! - `isolated/stream_200`: 200 requests, two in flight at a time, with refills on
//!   the clock (sustained throughput; criterion prints elements/s).
//! - `isolated/session/*`: one cell in a session kept open (cells/s = 1 / time),
//!   beside `warm/*`, the same snippet as a single run.

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use terrarium::{ExecRequest, Executor, IsolatedConfig, IsolatedExecutor, Policy, Status};

fn executor(pool: usize) -> IsolatedExecutor {
    let mut config = IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    config.pool_size = pool;
    IsolatedExecutor::new(Policy::default_policy(), config)
}

async fn run(exec: &IsolatedExecutor, code: &str) {
    let o = exec.execute(ExecRequest::new(code)).await.expect("host fault");
    assert_eq!(o.status, Status::Ok, "{o:?}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let exec = executor(4);
    rt.block_on(exec.warm_up()).expect("warm up");
    let mut group = c.benchmark_group("isolated");
    for (name, code) in [
        ("warm/one_plus_one", "1+1"),
        ("warm/sum_range_10k", "sum(range(10000))"),
        ("warm/loop_10k", "t = 0\nfor i in range(10000):\n    t += i\nt"),
        ("warm/json_dumps_100", "import json\njson.dumps(list(range(100)))"),
    ] {
        rt.block_on(run(&exec, code));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(exec.warm_up()).expect("refill");
                    let t = Instant::now();
                    rt.block_on(run(&exec, code));
                    total += t.elapsed();
                }
                total
            });
        });
    }

    let big = std::sync::Arc::new(executor(16));
    rt.block_on(big.warm_up()).expect("warm up");
    group.bench_function("refill_16", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Drain the pool (untimed), then time its refill.
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..16 {
                        let e = big.clone();
                        set.spawn(async move { run(&e, "1").await });
                    }
                    while set.join_next().await.is_some() {}
                });
                let t = Instant::now();
                rt.block_on(big.warm_up()).expect("refill");
                total += t.elapsed();
            }
            total
        });
    });

    // Cells of one session (its child kept), beside the single runs above. A
    // session ends at its max_cells (1000 by default): a new one starts, untimed.
    let mut session = rt.block_on(exec.open_session()).expect("session");
    for (name, code) in
        [("session/one_plus_one", "1+1"), ("session/loop_10k", "t = 0\nfor i in range(10000):\n    t += i\nt")]
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if session.ended().is_some() {
                        session = rt.block_on(exec.open_session()).expect("session");
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

    group.throughput(Throughput::Elements(200));
    group.bench_function("stream_200", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..100 {
                    tokio::join!(run(&exec, "1+1"), run(&exec, "1+1"));
                }
            });
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
