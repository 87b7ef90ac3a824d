//! `terrarium serve`'s cost over a library call: the same sandbox (isolated
//! rustpython tier, audit log on) called directly and through the HTTP server on
//! loopback (a fresh connection per request, token check, JSON both ways).
//!
//! - `server/direct/one_plus_one`: `Sandbox::execute` in process.
//! - `server/http/one_plus_one`: `POST /v1/execute` to the server.
//! - `server/http/health`: the HTTP floor (no token, no run).

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use terrarium::server::auth::{Role, Tokens};
use terrarium::server::{ServerConfig, app, serve};
use terrarium::{ExecRequest, IsolatedConfig, Policy, Sandbox, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bench-token-0123456789abcdef0123456789abcdef";

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    c.read_to_string(&mut raw).await.expect("read");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let home = tempfile::tempdir().expect("home");
    let mut isolated = IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    isolated.pool_size = 4;
    let sandbox = Arc::new(
        Sandbox::builder()
            .policy(Policy::default_policy())
            .isolated(isolated)
            .audit(home.path().join("audit.db"))
            .build()
            .expect("sandbox"),
    );
    let mut tokens = Tokens::default();
    tokens.add("bench", [Role::Submit].into_iter().collect(), TOKEN).expect("token");
    let router = app(sandbox.clone(), ServerConfig::new(tokens, 1 << 20)).expect("app");
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(serve(
        router,
        "127.0.0.1:0".parse().expect("addr"),
        std::time::Duration::from_secs(10),
        1024,
        move |a| tx.send(a).expect("addr"),
        std::future::pending(),
    ));
    let addr = rx.recv().expect("listening");

    let mut group = c.benchmark_group("server");
    group.bench_function("direct/one_plus_one", |b| {
        b.iter(|| {
            let o = rt.block_on(sandbox.execute(ExecRequest::new("1+1"))).expect("run");
            assert_eq!(o.status, Status::Ok);
        });
    });
    group.bench_function("http/one_plus_one", |b| {
        b.iter(|| rt.block_on(http(addr, "POST", "/v1/execute", r#"{"code": "1+1"}"#)));
    });
    group.bench_function("http/health", |b| {
        b.iter(|| rt.block_on(http(addr, "GET", "/v1/health", "")));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
