//! What the sandbox adds to a request on top of its tier: the static analysis and
//! routing, and the audit log's two durable events (arrival, outcome).
//!
//! - `sandbox/route`: analysis of a small snippet plus the routing decision for the
//!   rustpython tier (candidates, needed modules, the tier's module check).
//! - `sandbox/audit_record`: one event recorded (appended to the journal, so it
//!   survives the process; what a request waits for).
//! - `sandbox/audit_to_database`: one event recorded and then committed to SQLite
//!   (`flush`), alone.
//!
//! - `sandbox/overhead`: `Sandbox::execute` with an audit log for a snippet the
//!   analysis refuses, so no tier runs: the request's whole path through the
//!   sandbox (arrival recorded, analysis on its thread, routing, the refusal, the
//!   closing events recorded) and nothing else; `sandbox/block_on_baseline` is
//!   the harness's own cost, to subtract.
//!
//! A request through a sandbox with an audit log pays `route` once and
//! `audit_record` two to five times (arrival before it runs; route, findings,
//! denial and outcome before it returns). A difference of two end-to-end timings is not used: the
//! isolated tier's pool refills on the same two cores and swamps it.

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::audit::{AuditLog, Event, EventKind};
use terrarium::breaker::Breaker;
use terrarium::policy::BreakerPolicy;
use terrarium::{Policy, TierChoice};

const CODE: &str = "import json\njson.dumps([1, 2])";

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sandbox");
    let policy = Policy::default_policy();
    group.bench_function("route", |b| {
        b.iter(|| {
            let a = terrarium::analysis::analyze(CODE);
            let needed = terrarium::router::needed_modules(&a, &policy);
            let tiers = terrarium::router::candidates(&policy, TierChoice::Auto);
            let ok = terrarium::router::missing(&needed, terrarium::tier::rustpython::serves_module).is_none();
            assert!(ok && !tiers.is_empty());
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(&dir.path().join("audit.db"), Breaker::new("database", BreakerPolicy::default()))
        .expect("audit log");
    let event = || Event {
        kind: EventKind::Execute,
        request_id: Some("r".into()),
        data: serde_json::json!({"x": 1}),
        code: None,
    };
    group.bench_function("audit_record", |b| b.iter(|| log.record(event()).expect("record")));
    // The previous bench left the writer far behind: a log of its own.
    let log = AuditLog::open(&dir.path().join("flushed.db"), Breaker::new("database", BreakerPolicy::default()))
        .expect("audit log");
    group.bench_function("audit_to_database", |b| {
        b.iter(|| {
            log.record(event()).expect("record");
            log.flush(Duration::from_secs(5)).expect("flush");
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let sandbox = terrarium::Sandbox::builder()
        .policy(policy.clone())
        .audit(dir.path().join("sandbox.db"))
        .build()
        .expect("sandbox");
    // What `block_on` itself costs (the harness around `overhead`).
    group.bench_function("block_on_baseline", |b| b.iter(|| rt.block_on(async { std::hint::black_box(1) })));
    group.bench_function("overhead", |b| {
        b.iter(|| {
            let o = rt
                .block_on(sandbox.execute(terrarium::ExecRequest::new("().__class__.__subclasses__()")))
                .expect("execute");
            assert_eq!(o.status, terrarium::Status::Denied);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
