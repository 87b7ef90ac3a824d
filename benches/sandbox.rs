//! What the sandbox adds to a request on top of its tier: the static analysis and
//! routing, and the audit log's two durable events (arrival, outcome).
//!
//! - `sandbox/route`: analysis of a small snippet plus the routing decision for the
//!   rustpython tier (candidates, needed modules, the tier's module check).
//! - `sandbox/audit_record`: one event recorded and durable (committed), alone.
//! - `sandbox/audit_record_x8`: eight threads recording at once (group commit), per
//!   event.
//!
//! A request through a sandbox with an audit log pays `route` once and
//! `audit_record` twice (its arrival and its outcome are durable before it runs and
//! before it returns). A difference of two end-to-end timings is not used: the
//! isolated tier's pool refills on the same two cores and swamps it.

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::audit::{AuditLog, Event};
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
    let event =
        || Event { kind: "bench".into(), request_id: Some("r".into()), data: serde_json::json!({"x": 1}), code: None };
    group.bench_function("audit_record", |b| b.iter(|| log.record(event()).expect("record")));
    group.bench_function("audit_record_x8", |b| {
        b.iter_custom(|iters| {
            let log = Arc::new(log.clone());
            let t = Instant::now();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        for _ in 0..iters {
                            log.record(event()).expect("record");
                        }
                    })
                })
                .collect();
            for th in threads {
                th.join().expect("join");
            }
            t.elapsed() / 8
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
