//! The Docker engine, as this tier uses it: a connection over the engine's unix
//! socket with the API version negotiated (Debian's engine speaks 1.41), the
//! hardened container specification, and the container operations (create, attach,
//! start, kill, inspect, remove, reap), each bounded by a timeout so that an engine
//! that stops answering gives a host error instead of a hang.
//!
//! # Security invariant
//! Every container Terrarium creates carries the whole hardening of the policy
//! ([`spec`]): no network (unless the policy names one), every capability dropped,
//! `no-new-privileges`, a read-only root with only small `noexec,nosuid` tmpfs mounts,
//! memory equal to memory+swap, a CPU quota, a pids limit, an unprivileged user, no
//! host mounts but the policy's read-only ones and a run's own copy of its
//! workspace (with a file-size limit), no logging to the host's disk. Code reaches the container on its
//! stdin, never through a shell. Every container is labelled with its owner, and
//! containers whose owner process is gone are removed at start-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::Stream;

use crate::error::SandboxError;
use crate::policy::{Policy, Tier};

/// Label on every container Terrarium creates.
pub const LABEL: &str = "terrarium";
/// Label naming the process that owns a container: `host:pid:start-time`.
pub const OWNER_LABEL: &str = "terrarium.owner";
/// Label naming the executor that created a container.
pub const EXECUTOR_LABEL: &str = "terrarium.executor";
/// Processes a container may have at once (a fork bomb stops here).
pub const PIDS_LIMIT: i64 = 64;
/// CPU period the policy's `cpu_quota` is a share of (100 ms).
pub const CPU_PERIOD: i64 = 100_000;
/// Size of the writable `/tmp` every container has.
pub const TMP_SIZE: &str = "16m";
/// Size of `/scratch` for requests that ask for it.
pub const SCRATCH_SIZE: &str = "64m";
/// How long [`Engine::inspect`] waits for the out-of-memory flag of a container
/// killed by `SIGKILL`.
const OOM_FLAG_WAIT: Duration = Duration::from_millis(500);
/// How often [`Engine::inspect`] asks again while it waits for that flag.
const OOM_FLAG_POLL: Duration = Duration::from_millis(20);
/// The exit code of a container's process killed by `SIGKILL` (128 + 9).
const SIGKILL_EXIT: i64 = 137;

/// A container's output as bollard decodes it.
pub type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;
/// A container's stdin.
pub type Input = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A connection to one engine, with its API version negotiated.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
    api_timeout: Duration,
    api: Option<crate::breaker::Breaker>,
    /// Removals started off the caller's path and not finished yet.
    removing: Arc<std::sync::atomic::AtomicUsize>,
}

/// How a container ended, from `inspect`.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The main process's exit code.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it (the cgroup's memory limit).
    pub oom_killed: bool,
}

fn host(message: String) -> SandboxError {
    SandboxError::Host { tier: Tier::Docker, message }
}

/// The socket to use: `socket` when given, else `DOCKER_HOST` when it is a
/// `unix://` address, else `/var/run/docker.sock`.
///
/// # Errors
/// A `DOCKER_HOST` that is not a unix socket (this tier only talks to a local engine).
pub fn socket_path(socket: Option<&Path>) -> Result<PathBuf, SandboxError> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => Err(SandboxError::TierUnavailable {
                tier: Tier::Docker,
                reason: format!("DOCKER_HOST={h} is not a unix:// socket; the docker tier only uses a local engine"),
            }),
        },
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

impl Engine {
    /// Connects and negotiates the API version.
    ///
    /// # Errors
    /// A host error naming the socket and how to start an engine when none answers.
    pub async fn connect(socket: &Path, api_timeout: Duration) -> Result<Engine, SandboxError> {
        let not_running = |why: String| {
            host(format!(
                "no Docker engine answers at {} ({why}); start one (as root, scripts/setup-docker installs and \
                 starts it)",
                socket.display()
            ))
        };
        if !socket.exists() {
            return Err(not_running("the socket does not exist".into()));
        }
        let addr = socket.to_str().ok_or_else(|| not_running("the path is not UTF-8".into()))?;
        let secs = api_timeout.as_secs().max(1);
        let docker = Docker::connect_with_unix(addr, secs, bollard::API_DEFAULT_VERSION)
            .map_err(|e| not_running(e.to_string()))?;
        let docker = match tokio::time::timeout(api_timeout, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(not_running(e.to_string())),
            Err(_) => return Err(not_running(format!("no answer within {}s", api_timeout.as_secs_f64()))),
        };
        Ok(Engine { docker, socket: socket.to_path_buf(), api_timeout, api: None, removing: Arc::default() })
    }

    /// Counts this connection's detached removals in `removing` (shared with
    /// whoever asks how many are still going).
    pub fn counting_removals(mut self, removing: Arc<std::sync::atomic::AtomicUsize>) -> Engine {
        self.removing = removing;
        self
    }

    /// This engine with every API call going through `breaker`.
    #[must_use]
    pub fn guarded_by(mut self, breaker: Option<crate::breaker::Breaker>) -> Engine {
        self.api = breaker;
        self
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Runs one API call under the engine timeout and through the `api` breaker,
    /// when there is one: refused at once while it is open; an error or a timeout is
    /// a host error that says what was being done, and counts against the breaker.
    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, SandboxError> {
        let at = self.socket.display();
        let permit = match &self.api {
            Some(b) => Some(b.allow().map_err(|open| host(format!("Docker engine at {at}: {what}: {open}")))?),
            None => None,
        };
        let r = match tokio::time::timeout(self.api_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("Docker engine at {at}: {what}: {e}")),
            Err(_) => {
                Err(format!("Docker engine at {at}: {what}: no answer within {}s", self.api_timeout.as_secs_f64()))
            }
        };
        match (permit, &r) {
            (Some(p), Err(message)) => p.failed(message),
            (Some(p), Ok(_)) => p.succeeded(),
            (None, _) => {}
        }
        r.map_err(host)
    }

    /// Whether the engine has `image` (no registry is contacted).
    pub async fn has_image(&self, image: &str) -> Result<bool, SandboxError> {
        Ok(self.image_id(image).await?.is_some())
    }

    /// The engine's id of `image` (`sha256:…`, its configuration's digest), or
    /// `None` when it does not have it (no registry is contacted).
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, SandboxError> {
        let inspected = async {
            match self.docker.inspect_image(image).await {
                Ok(i) => Ok(Some(i.id.unwrap_or_default())),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.call("inspect an image", inspected).await
    }

    /// Creates a container; a missing image is [`SandboxError::TierUnavailable`]
    /// naming the fix.
    pub async fn create(&self, body: ContainerCreateBody) -> Result<String, SandboxError> {
        let image = body.image.clone().unwrap_or_default();
        let created = async {
            match self.docker.create_container(None, body).await {
                Ok(r) => Ok(Some(r.id)),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.call("create a container", created).await?.ok_or_else(|| missing_image(&image))
    }

    /// Attaches to a created container's stdin, stdout and stderr.
    pub async fn attach(&self, id: &str) -> Result<(Input, Output), SandboxError> {
        let options =
            AttachContainerOptionsBuilder::default().stream(true).stdin(true).stdout(true).stderr(true).build();
        let r = self.call("attach to a container", self.docker.attach_container(id, Some(options))).await?;
        Ok((r.input, r.output))
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), SandboxError> {
        self.call("start a container", self.docker.start_container(id, None)).await
    }

    /// Freezes every process of a container (the cgroup freezer): none runs, none
    /// writes, until [`Engine::unpause`].
    pub async fn pause(&self, id: &str) -> Result<(), SandboxError> {
        self.call("pause a container", self.docker.pause_container(id)).await
    }

    /// Thaws a container [`Engine::pause`] froze.
    pub async fn unpause(&self, id: &str) -> Result<(), SandboxError> {
        self.call("unpause a container", self.docker.unpause_container(id)).await
    }

    /// Starts a created container whose program may not be in its image. The
    /// engine answers a program it cannot run (not found, not executable) with its
    /// "invalid parameter" status, 400: that is `Ok(false)`, the command's failure
    /// rather than the host's. Every other failure is a host error.
    pub async fn start_program(&self, id: &str) -> Result<bool, SandboxError> {
        let started = async {
            match self.docker.start_container(id, None).await {
                Ok(()) => Ok(true),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 400, .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        self.call("start a container", started).await
    }

    /// How a container ended (or `None` fields while it runs). A container killed by
    /// `SIGKILL` ([`SIGKILL_EXIT`]) without the out-of-memory flag is asked again, for up
    /// to [`OOM_FLAG_WAIT`]: with cgroup v1 the engine can record the kernel's
    /// out-of-memory event after the exit, and a memory-limit kill read too early
    /// looks like a crash (seen under CI's load).
    pub async fn inspect(&self, id: &str) -> Result<Ended, SandboxError> {
        let until = tokio::time::Instant::now() + OOM_FLAG_WAIT;
        loop {
            let r = self.call("inspect a container", self.docker.inspect_container(id, None)).await?;
            let state = r.state.unwrap_or_default();
            let ended = Ended { exit_code: state.exit_code, oom_killed: state.oom_killed.unwrap_or(false) };
            if ended.oom_killed || ended.exit_code != Some(SIGKILL_EXIT) || tokio::time::Instant::now() >= until {
                return Ok(ended);
            }
            tokio::time::sleep(OOM_FLAG_POLL).await;
        }
    }

    /// Removes container `id` off the caller's path (on the current runtime, or
    /// a thread of its own when there is none); `what` names it in the warning
    /// when it cannot be removed. Counted (see [`Engine::counting_removals`]) until
    /// done.
    pub fn remove_detached(&self, id: String, what: &'static str) {
        let engine = self.clone();
        engine.removing.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let remove = async move {
            if let Err(e) = engine.remove(&id).await {
                tracing::warn!(error = %e, "could not remove {what}");
            }
            engine.removing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(remove);
            }
            Err(_) => {
                let started = std::thread::Builder::new().name("terrarium-docker-remove".into()).spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        rt.block_on(remove);
                    }
                });
                if started.is_err() {
                    self.removing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }

    /// Kills (SIGKILL) and removes a container, whatever its state. Not through the
    /// `api` breaker: a kill at a run's deadline and the removal of what a run left
    /// are attempted even while the breaker keeps new work away.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match tokio::time::timeout(self.api_timeout, self.docker.remove_container(id, Some(options))).await {
            Ok(Ok(())) | Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => Ok(()),
            // Removal already in progress (the engine's 409, e.g. another process
            // reaping): wait until it is gone, so that "removed" means gone.
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. })) => {
                let until = tokio::time::Instant::now() + self.api_timeout;
                while tokio::time::Instant::now() < until {
                    match self.docker.inspect_container(id, None).await {
                        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                            return Ok(());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                Err(host(format!("Docker engine at {}: a container's removal did not finish", self.socket.display())))
            }
            Ok(Err(e)) => Err(host(format!("Docker engine at {}: remove a container: {e}", self.socket.display()))),
            Err(_) => Err(host(format!("Docker engine at {}: remove a container: no answer", self.socket.display()))),
        }
    }

    /// Ids of the containers carrying `label=value` (running or not).
    pub async fn labelled(
        &self,
        label: &str,
        value: Option<&str>,
    ) -> Result<Vec<(String, HashMap<String, String>)>, SandboxError> {
        let filter = match value {
            Some(v) => format!("{label}={v}"),
            None => label.to_string(),
        };
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_string(), vec![filter])]))
            .build();
        let list = self.call("list containers", self.docker.list_containers(Some(options))).await?;
        Ok(list.into_iter().filter_map(|c| Some((c.id?, c.labels.unwrap_or_default()))).collect())
    }

    /// Removes Terrarium's containers whose owner process on this host is gone (a
    /// host process that crashed or was killed cannot remove its own). Returns how
    /// many were removed.
    pub async fn reap_orphans(&self) -> Result<usize, SandboxError> {
        let me = host_name();
        let mut reaped = 0;
        for (id, labels) in self.labelled(LABEL, None).await? {
            let Some(owner) = labels.get(OWNER_LABEL) else { continue };
            let mut parts = owner.rsplitn(3, ':');
            let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if host != me || crate::process::alive(pid, start) {
                continue;
            }
            self.remove(&id).await?;
            reaped += 1;
        }
        if reaped > 0 {
            tracing::info!(reaped, "removed containers left by Terrarium processes that are gone");
        }
        Ok(reaped)
    }
}

/// The error for a policy image the engine does not have.
pub fn missing_image(image: &str) -> SandboxError {
    SandboxError::TierUnavailable {
        tier: Tier::Docker,
        reason: format!(
            "the image {image:?} (security.sandbox.docker.image) is not on the engine: pull it (docker pull \
             {image}) or build Terrarium's local image (scripts/setup-docker builds terrarium-python:local) and \
             name it in the policy"
        ),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// This process, as the owner label names it.
pub fn owner() -> String {
    let (pid, start) = crate::process::me();
    format!("{}:{pid}:{start}", host_name())
}

/// What one container is started for.
pub struct Launch {
    /// The command (exec form: no shell), e.g. [`prelude_cmd`].
    pub cmd: Vec<String>,
    /// Whether the run gets a writable `/scratch`.
    pub scratch: bool,
    /// The run's copy of a workspace, bound read-write at `/workspace`.
    pub workspace: Option<crate::workspace::Mount>,
    /// Labels on the container (owner, executor).
    pub labels: HashMap<String, String>,
}

/// CPython running the shared prelude: `nonce` marks its lines, `preload` lists
/// the modules it imports before saying ready, `writable` names the run's
/// writable directory (`scratch`, `workspace`), which becomes its working directory.
pub fn prelude_cmd(prelude: &str, nonce: &str, preload: &str, writable: Option<&str>) -> Vec<String> {
    prelude_cmd_with(prelude, nonce, preload, writable, "mark")
}

/// [`prelude_cmd`] with the prelude's flags (`mark`, `mark session`).
pub fn prelude_cmd_with(prelude: &str, nonce: &str, preload: &str, writable: Option<&str>, flags: &str) -> Vec<String> {
    vec![
        "python3".to_string(),
        "-I".into(),
        "-B".into(),
        "-c".into(),
        prelude.to_string(),
        nonce.to_string(),
        preload.to_string(),
        writable.unwrap_or("-").into(),
        // `mark`: end stdout with a marker, so the host stops reading at the
        // prelude's report.
        flags.into(),
    ]
}

/// The container specification: the policy's hardening, all of it.
///
/// # Errors
/// A read-only mount's source is no longer the directory pinned when the policy was
/// loaded.
pub fn spec(policy: &Policy, launch: &Launch) -> Result<ContainerCreateBody, SandboxError> {
    for m in policy.read_only_mounts() {
        m.pinned.open().map_err(|e| SandboxError::Host {
            tier: crate::executor::Tier::Docker,
            message: format!("terrarium.read_only_mounts {}: {e}", m.target),
        })?;
    }
    let d = policy.docker();
    let memory = i64::try_from(policy.max_memory()).unwrap_or(i64::MAX);
    let cpu_quota = i64::try_from(policy.cpu_quota()).unwrap_or(CPU_PERIOD);
    let tmpfs_opts = |size: &str| format!("rw,noexec,nosuid,nodev,size={size},mode=1777");
    let mut tmpfs = HashMap::from([("/tmp".to_string(), tmpfs_opts(TMP_SIZE))]);
    if launch.scratch {
        tmpfs.insert("/scratch".to_string(), tmpfs_opts(SCRATCH_SIZE));
    }
    let bind = |source: String, target: String, read_only: bool| Mount {
        typ: Some(MountType::BIND),
        source: Some(source),
        target: Some(target),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..MountBindOptions::default()
        }),
        ..Mount::default()
    };
    // Only what the policy grants, read-only, not propagating host mounts; and the
    // run's own copy of its workspace, read-write.
    let mut mounts: Vec<Mount> = policy
        .read_only_mounts()
        .iter()
        .map(|m| bind(m.source.display().to_string(), m.target.clone(), true))
        .collect();
    let mut ulimits = vec![
        ResourcesUlimits { name: Some("core".into()), soft: Some(0), hard: Some(0) },
        ResourcesUlimits { name: Some("nofile".into()), soft: Some(256), hard: Some(256) },
    ];
    if let Some(w) = &launch.workspace {
        mounts.push(bind(w.path().display().to_string(), "/workspace".into(), false));
        // No file the run writes grows past the quota's file size (the copy is on
        // the host's disk): the kernel stops it there.
        let fsize = i64::try_from(policy.workspaces().quota.max_file_bytes).unwrap_or(i64::MAX);
        ulimits.push(ResourcesUlimits { name: Some("fsize".into()), soft: Some(fsize), hard: Some(fsize) });
    }
    let host_config = HostConfig {
        network_mode: Some(d.network.clone()),
        cap_drop: Some(d.cap_drop.clone()),
        cap_add: Some(Vec::new()),
        security_opt: Some(d.security_opt.clone()),
        privileged: Some(false),
        readonly_rootfs: Some(policy.readonly_filesystem()),
        tmpfs: Some(tmpfs),
        memory: Some(memory),
        memory_swap: Some(memory),
        memory_swappiness: None,
        cpu_period: Some(CPU_PERIOD),
        cpu_quota: Some(cpu_quota),
        pids_limit: Some(PIDS_LIMIT),
        // The host's OOM killer takes a sandbox before anything else.
        oom_score_adj: Some(1000),
        ipc_mode: Some("private".into()),
        ulimits: Some(ulimits),
        // Output comes over the attach stream, capped; nothing is logged to disk.
        log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
        publish_all_ports: Some(false),
        binds: Some(Vec::new()),
        mounts: Some(mounts),
        ..HostConfig::default()
    };
    Ok(ContainerCreateBody {
        image: Some(d.image.clone()),
        cmd: Some(launch.cmd.clone()),
        entrypoint: Some(Vec::new()),
        user: Some(launch.workspace.as_ref().map_or_else(|| "65534:65534".into(), |w| w.container_user())),
        working_dir: Some("/".into()),
        hostname: Some("sandbox".into()),
        env: Some(vec!["PYTHONDONTWRITEBYTECODE=1".into(), "PYTHONHASHSEED=random".into()]),
        network_disabled: Some(policy.network_disabled()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(launch.labels.clone()),
        host_config: Some(host_config),
        ..ContainerCreateBody::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_carries_every_hardening_flag() {
        let policy = Policy::default_policy();
        let launch =
            Launch { cmd: prelude_cmd("pass", "n", "", None), scratch: false, workspace: None, labels: HashMap::new() };
        let s = spec(&policy, &launch).expect("spec");
        let h = s.host_config.as_ref().expect("host config");
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(h.security_opt.as_deref(), Some(&["no-new-privileges".to_string()][..]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.memory, Some(512 << 20));
        assert_eq!(h.memory_swap, h.memory);
        assert_eq!((h.cpu_period, h.cpu_quota), (Some(100_000), Some(100_000)));
        assert_eq!(h.pids_limit, Some(PIDS_LIMIT));
        assert_eq!(h.privileged, Some(false));
        assert!(h.binds.as_ref().is_some_and(Vec::is_empty) && h.mounts.as_ref().is_some_and(Vec::is_empty));
        let tmp = &h.tmpfs.as_ref().expect("tmpfs")["/tmp"];
        assert!(tmp.contains("noexec") && tmp.contains("nosuid"), "{tmp}");
        assert_eq!(s.user.as_deref(), Some("65534:65534"));
        assert_eq!(s.network_disabled, Some(true));
        assert!(s.cmd.as_ref().is_some_and(|c| c[0] == "python3" && !c.iter().any(|a| a == "sh")));
    }

    #[test]
    fn the_owner_label_names_this_process() {
        let me = owner();
        let mut parts = me.rsplitn(3, ':');
        let (start, pid) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        assert!(crate::process::alive(pid, start), "{me}");
    }
}
