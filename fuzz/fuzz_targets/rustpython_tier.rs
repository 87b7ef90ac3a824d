//! Arbitrary source on the rustpython tier's isolated mode under tight limits. A
//! child that crashes, times out or is denied is contained; what counts is the
//! host: an `Err` that is a host fault, a panic here, or the planted secret (in this
//! process's environment and in a file) showing up in an outcome.
//!
//! The zygote is the `terrarium` binary named by `TERRARIUM_WORKER_EXE` (the run
//! script builds it).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use terrarium::{ExecRequest, Executor, IsolatedConfig, IsolatedExecutor, Overrides, Policy};

const SECRET: &str = "TRRM-FUZZ-SECRET-5b1d0c";

struct Harness {
    rt: tokio::runtime::Runtime,
    exec: IsolatedExecutor,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join("terrarium-fuzz-secret");
        std::fs::create_dir_all(&dir).expect("secret dir");
        std::fs::write(dir.join("secret.txt"), SECRET).expect("secret file");
        let config = IsolatedConfig::from_env().expect("TERRARIUM_WORKER_EXE names the terrarium binary");
        let policy = Policy::default_policy().with_allowed_modules(&["math", "time", "json", "re", "collections"]);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        Harness { rt, exec: IsolatedExecutor::new(policy, config) }
    })
}

fuzz_target!(init: {
    // SAFETY: runs once, before the harness starts any thread of its own.
    unsafe { std::env::set_var("TERRARIUM_FUZZ_SECRET", SECRET) };
    let _ = harness();
}, |data: &[u8]| {
    let Ok(code) = std::str::from_utf8(data) else { return };
    let h = harness();
    let overrides = Overrides {
        timeout: Some(Duration::from_millis(500)),
        max_memory: Some(64 << 20),
        ..Overrides::default()
    };
    let req = ExecRequest::new(code).with_overrides(overrides);
    match h.rt.block_on(h.exec.execute(req)) {
        Ok(o) => {
            let seen = format!("{} {} {:?} {:?}", o.stdout, o.stderr, o.result, o.error);
            assert!(!seen.contains(SECRET), "the secret escaped: {seen}");
        }
        Err(e) => assert!(!e.is_host_fault(), "host fault: {e}"),
    }
});
