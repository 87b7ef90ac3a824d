//! Circuit breakers around a real tier: the docker engine goes away, the breaker
//! opens after the policy's threshold of host faults and then fails fast; the
//! engine comes back and, after the recovery timeout, one trial closes it. The
//! engine "goes away" for this executor only: it talks to the engine through a
//! symlink that is pointed at nothing, then back at the real socket (other tests
//! keep using the engine meanwhile).

use std::time::{Duration, Instant};

use terrarium::breaker::{Breaker, State};
use terrarium::policy::BreakerPolicy;
use terrarium::{DockerConfig, DockerExecutor, ExecRequest, Executor, SandboxError, Status};

use crate::common::{docker_executor, docker_policy, runtime};

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_stopped_engine_opens_the_breaker_and_a_trial_closes_it_when_it_is_back() {
    if docker_executor(docker_policy(), 0).is_none() {
        return;
    }
    let real = terrarium::tier::docker::engine::socket_path(None).expect("socket");
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("docker.sock");
    std::os::unix::fs::symlink(dir.path().join("stopped"), &link).expect("symlink");
    let exec = DockerExecutor::new(
        docker_policy(),
        DockerConfig { socket: Some(link.clone()), pool_size: 0, ..DockerConfig::default() },
    );
    let settings =
        BreakerPolicy { failure_threshold: 3, recovery_timeout: Duration::from_millis(500), log_failures: true };
    let breaker = Breaker::new("docker", settings);
    let run = |code: &str| runtime().block_on(breaker.run(exec.execute(ExecRequest::new(code))));

    // Engine stopped: the threshold's worth of host errors, then fail-fast.
    for i in 0..3 {
        match run("1 + 1") {
            Err(SandboxError::Host { message, .. }) => {
                assert!(message.contains("no Docker engine answers"), "{message}")
            }
            other => panic!("call {i}: expected a host error, got {other:?}"),
        }
    }
    assert_eq!(breaker.snapshot().state, State::Open);
    let started = Instant::now();
    match run("1 + 1") {
        Err(SandboxError::BreakerOpen(open)) => {
            assert!(open.to_string().starts_with("breaker docker open"), "{open}")
        }
        other => panic!("expected fail-fast, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(50), "fail-fast took {:?}", started.elapsed());

    // Engine back; after the recovery timeout one trial closes the breaker. The
    // trial's snippet raises: a guest's exception is the engine working.
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(&real, &link).expect("symlink to the engine");
    assert!(matches!(run("1 + 1"), Err(SandboxError::BreakerOpen(_))), "still open before the timeout");
    std::thread::sleep(Duration::from_millis(600));
    let o = run("1/0").expect("the trial reaches the engine");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    let s = breaker.snapshot();
    assert_eq!((s.state, s.consecutive_failures, s.total_failures), (State::Closed, 0, 3), "{s:?}");
    assert_eq!(run("6 * 7").expect("closed").result, Some(serde_json::json!(42)));
}
