//! `terrarium serve`: the HTTP server (see [`crate::server`]) over one sandbox
//! with the audit log at the usual place (`TERRARIUM_HOME`). Prints
//! `terrarium: serving on http://ADDR` once it listens; on SIGINT or SIGTERM it
//! stops accepting, gives requests in progress a short grace period, and exits.

use std::process::ExitCode;
use std::sync::Arc;

use super::args::ServeArgs;
use super::{CliError, EXIT_HOST};
use crate::policy::Policy;
use crate::server::auth::{Role, Tokens};
use crate::server::{ServerConfig, app, serve};

/// How long requests in progress may go on after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The environment variable holding one token with every role.
pub const TOKEN_ENV: &str = "TERRARIUM_TOKEN";

pub(super) fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    let policy = match &args.policy {
        Some(path) => Policy::from_file(path)?,
        None => Policy::default_policy(),
    };
    let mut tokens = match &args.token_file {
        Some(path) => Tokens::from_file(path).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?,
        None => Tokens::default(),
    };
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        tokens
            .add("env", [Role::Admin].into_iter().collect(), &token)
            .map_err(|e| CliError::usage(anyhow::anyhow!("{TOKEN_ENV}: {e}")))?;
    }
    let mut config = ServerConfig::new(tokens, policy.max_code_size());
    config.max_requests = args.max_requests;
    config.max_connections = args.max_connections.get();
    config.allowed_hosts = args.allow_host.iter().map(|h| h.to_ascii_lowercase()).collect();
    config.policy_file = args.policy.clone();
    let path = crate::audit::default_path().map_err(|e| CliError { code: EXIT_HOST, error: e.into() })?;
    let sandbox = Arc::new(
        crate::Sandbox::builder()
            .policy(policy)
            .audit(path)
            .max_running(args.max_running)
            .max_waiting(args.max_waiting)
            .build()?,
    );
    let (header_timeout, max_connections) = (config.header_timeout, config.max_connections);
    let rt = super::runtime()?;
    // Inside the runtime: the app watches SIGHUP (a policy reload).
    let router = {
        let _in = rt.enter();
        app(sandbox.clone(), config).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?
    };
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "terrarium: warning: listening on {} (not loopback): bearer tokens travel in clear text unless a TLS proxy is in front",
            args.listen
        );
    }
    crate::process::raise_open_files_limit();
    let failed =
        |e: std::io::Error| CliError { code: EXIT_HOST, error: anyhow::anyhow!("serving on {}: {e}", args.listen) };
    rt.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ready = |addr| eprintln!("terrarium: serving on http://{addr}");
        let mut server = tokio::spawn(serve(router, args.listen, header_timeout, max_connections, ready, async {
            let _ = stopped.await;
        }));
        tokio::select! {
            r = &mut server => return r.map_err(|e| failed(std::io::Error::other(e)))?.map_err(failed),
            () = stop_signal() => {}
        }
        // New connections stop at once; requests in progress get a grace period
        // (one waiting for a human could otherwise hold the exit for its deadline;
        // its queue item expires once this process is gone).
        eprintln!("terrarium: stopping; requests in progress have {} s", SHUTDOWN_GRACE.as_secs());
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(r) => r.map_err(|e| failed(std::io::Error::other(e)))?.map_err(failed),
            Err(_) => {
                eprintln!("terrarium: requests still in progress after the grace period were cut off");
                server.abort();
                Ok(())
            }
        }
    })?;
    if let Err(e) = sandbox.flush_audit(std::time::Duration::from_secs(10)) {
        eprintln!("terrarium: warning: {e}");
    }
    eprintln!("terrarium: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
