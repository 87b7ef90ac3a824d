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
//! - `sandbox/session_cell` and `sandbox/session_host_call`: a cell of a
//!   rustpython session (no audit log) that does nothing, and one that calls a
//!   host function (a Rust closure) once: the difference is one call's round trip
//!   (child → supervisor → the policy's checks → closure → child).
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
    let yaml = format!("{}\nfunctions:\n  f:\n    max_calls: 1\n", terrarium::policy::DEFAULT_POLICY_YAML);
    let with_functions = Policy::from_yaml(&yaml, "bench.yaml").expect("policy");
    let sandbox = std::sync::Arc::new(
        terrarium::Sandbox::builder()
            .policy(with_functions)
            .isolated(terrarium::IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium")))
            .function("f", |_call| async { Ok(serde_json::json!(1)) })
            .build()
            .expect("sandbox"),
    );
    for (name, code) in [("session_cell", "1"), ("session_host_call", "from host import f\nf()")] {
        let mut session = rt.block_on(sandbox.session(terrarium::SessionOptions::default())).expect("session");
        group.bench_function(name, |b| {
            b.iter(|| {
                if session.ended().is_some() {
                    session = rt.block_on(sandbox.session(terrarium::SessionOptions::default())).expect("session");
                }
                let o = rt.block_on(session.execute(terrarium::ExecRequest::new(code))).expect("cell");
                assert_eq!(o.result, Some(serde_json::json!(1)), "{o:?}");
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
