//! The warm pool: containers started ahead with the request's prelude waiting,
//! taken one per request and refilled in the background.

use super::*;

impl Shared {
    pub(super) fn lock_pool(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many containers the pool lacks (ready + starting), now counted as
    /// starting: the caller starts that many. Under the pool's lock, so that
    /// concurrent refills do not overshoot.
    pub(super) fn reserve(&self) -> usize {
        let pool = self.lock_pool();
        let missing = self.config.pool_size.saturating_sub(pool.len() + self.starting.load(Ordering::SeqCst));
        self.starting.fetch_add(missing, Ordering::SeqCst);
        missing
    }

    pub(super) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (engine::LABEL.to_string(), "1".to_string()),
            (engine::OWNER_LABEL.to_string(), engine::owner()),
            (engine::EXECUTOR_LABEL.to_string(), self.executor_id.clone()),
        ])
    }

    /// The engine, connected on first use. A failed connection is not remembered:
    /// the next request tries again (an engine may come back).
    pub(super) async fn engine(&self) -> Result<Engine, SandboxError> {
        let mut slot = self.engine.lock().await;
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let socket = engine::socket_path(self.config.socket.as_deref())?;
        let e = Engine::connect(&socket, self.config.api_timeout)
            .await?
            .guarded_by(self.config.api_breaker.clone())
            .counting_removals(self.removing.clone());
        // Containers of crashed Terrarium processes; failing to reap is not fatal
        // to this request, but it is logged.
        if let Err(err) = e.reap_orphans().await {
            tracing::warn!(error = %err, "could not reap leftover containers");
        }
        *slot = Some(e.clone());
        Ok(e)
    }

    /// A warm container that is still waiting, if the pool has one. One whose
    /// output stream has ended or that wrote anything while waiting (its container
    /// died, e.g. the engine restarted) is discarded, never handed a request.
    pub(super) fn take_warm(&self, engine: &Engine) -> Option<Warm> {
        use futures_util::FutureExt;
        loop {
            let mut w = self.lock_pool().pop_front()?;
            if w.output.next().now_or_never().is_none() {
                return Some(w);
            }
            tracing::warn!(container = %w.id, "a warm container died while waiting; discarded");
            let (engine, id) = (engine.clone(), w.id);
            tokio::spawn(async move {
                let _ = engine.remove(&id).await;
            });
        }
    }

    /// Starts containers in the background until the pool (ready + starting) is full.
    pub(super) fn refill(shared: Arc<Shared>, engine: Engine) {
        for _ in 0..shared.reserve() {
            let (s, e) = (shared.clone(), engine.clone());
            tokio::spawn(async move {
                let closed = &s.closed;
                match Shared::start_warm(s.clone(), e).await {
                    Err(_) if closed.load(Ordering::SeqCst) => {}
                    Err(err) => tracing::warn!(error = %err, "a warm container could not start"),
                    Ok(()) => {}
                }
            });
        }
    }

    /// Starts one warm container (already counted in `starting`) and puts it in
    /// the pool when it is ready.
    pub(super) async fn start_warm(shared: Arc<Shared>, engine: Engine) -> Result<(), SandboxError> {
        let n = nonce();
        let launch = Launch {
            cmd: engine::prelude_cmd(PRELUDE, &n, &preload(&shared.policy), None),
            scratch: false,
            workspace: None,
            labels: shared.labels(),
        };
        let started = start_container(&engine, &shared.policy, &launch, &n).await;
        let warm = match started {
            Ok(w) => w,
            Err(e) => {
                shared.starting.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if shared.closed.load(Ordering::SeqCst) {
            shared.starting.fetch_sub(1, Ordering::SeqCst);
            return engine.remove(&warm.id).await;
        }
        // Into the pool before the count drops, so that it is never counted as
        // neither.
        let mut pool = shared.lock_pool();
        pool.push_back(warm);
        shared.starting.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Creates, attaches and starts a container and waits for its ready marker. The
/// container is removed again when any step fails.
pub(super) async fn start_container(
    engine: &Engine,
    policy: &Policy,
    launch: &Launch,
    nonce: &str,
) -> Result<Warm, SandboxError> {
    let id = engine.create(engine::spec(policy, launch)?).await?;
    // Dropped while it starts (its run stopped, its caller gone): removed then.
    let reaper = super::stream::Reaper::arm(engine, &id);
    match attach_and_start(engine, &id, nonce).await {
        Ok(w) => {
            reaper.disarm();
            Ok(w)
        }
        Err(e) => {
            reaper.disarm();
            let _ = engine.remove(&id).await;
            Err(e)
        }
    }
}

pub(super) async fn attach_and_start(engine: &Engine, id: &str, nonce: &str) -> Result<Warm, SandboxError> {
    // Attach before start, so that nothing the container writes is missed.
    let (input, mut output) = engine.attach(id).await?;
    engine.start(id).await?;
    let ready = format!("\n{nonce} ready\n");
    let mut stderr = Vec::new();
    let mut stdout = Vec::new();
    let until = tokio::time::Instant::now() + STARTUP_LIMIT;
    loop {
        match tokio::time::timeout_at(until, output.next()).await {
            Err(_) => return Err(host(format!("a container did not start within {}s", STARTUP_LIMIT.as_secs()))),
            Ok(None) => {
                let ended = engine.inspect(id).await.ok();
                let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(2000)..]).into_owned();
                return Err(host(format!(
                    "the container ended before Python was ready (exit code {:?}); its stderr: {}{}",
                    ended.and_then(|e| e.exit_code),
                    tail.trim(),
                    String::from_utf8_lossy(&stdout).trim()
                )));
            }
            Ok(Some(Err(e))) => return Err(host(format!("a container's output broke during start-up: {e}"))),
            Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                stderr.extend_from_slice(&message);
                if stderr.windows(ready.len()).any(|w| w == ready.as_bytes()) {
                    return Ok(Warm { id: id.to_string(), nonce: nonce.to_string(), input, output, stderr });
                }
                if stderr.len() > STDERR_SLACK {
                    return Err(host("a container wrote too much to stderr before it was ready"));
                }
            }
            Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                if stdout.len() < STDERR_SLACK {
                    stdout.extend_from_slice(&message);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}
