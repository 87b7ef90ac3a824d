//! Embedded rustpython tier: one snippet's round trip through the executor on a
//! warm interpreter (analysis, compile, run, capture), as a library caller sees it.

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::{EmbeddedExecutor, ExecRequest, Executor, Overrides, Policy, Status};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let exec = EmbeddedExecutor::with_workers(Policy::default_policy(), 1);
    rt.block_on(exec.warm_up(1)).expect("warm up");
    let mut group = c.benchmark_group("embedded");
    for (name, code) in [
        ("one_plus_one", "1+1"),
        ("loop_10k", "t = 0\nfor i in range(10000):\n    t += i\nt"),
        // `sum` adds exact ints as machine words (vendor/patches/rustpython-vm.patch).
        ("sum_range_10k", "sum(range(10000))"),
        // A module-level loop that reads builtins by name: each read misses the
        // module's dict before it finds the builtin.
        ("builtins_in_loop_2k", "n = 0\nfor i in range(2000):\n    n += abs(-i) + len('ab')\nn"),
        ("json_dumps_100", "import json\njson.dumps(list(range(100)))"),
    ] {
        let probe = rt.block_on(exec.execute(ExecRequest::new(code))).expect("run");
        assert_eq!(probe.status, Status::Ok, "{name}: {probe:?}");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(exec.execute(ExecRequest::new(code))).expect("run"));
        });
    }
    // The same loop under a fuel budget it stays within: the count is kept on every
    // run, budget or not, so this should match `loop_10k` (the cost of counting
    // itself shows against a build without it: benches/compare REV).
    let budget = Overrides { fuel: Some(1_000_000), ..Overrides::default() };
    let loop_10k = "t = 0\nfor i in range(10000):\n    t += i\nt";
    let probe = rt.block_on(exec.execute(ExecRequest::new(loop_10k).with_overrides(budget.clone()))).expect("run");
    assert_eq!(probe.status, Status::Ok, "loop under a budget: {probe:?}");
    group.bench_function("loop_10k_fuel_budget", |b| {
        b.iter(|| rt.block_on(exec.execute(ExecRequest::new(loop_10k).with_overrides(budget.clone()))).expect("run"));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
