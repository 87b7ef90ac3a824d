//! Attacks on the docker tier's walls. The probe runs in a container with the
//! policy's hardening but without the prelude (so the policy's import whitelist and
//! audit hook are not what stops it): only the container's own walls answer. The
//! snippet-level attacks go through the executor, prelude included.

use std::net::TcpListener;
use std::process::Command;

use terrarium::{ExecRequest, Status};

use crate::common::{docker_executor, docker_policy, docker_policy_with, exec, run_docker, runtime};

/// The probe's report for `targets` under the default policy; `None` when skipped.
fn probe(targets: &[String]) -> Option<serde_json::Value> {
    let exec = docker_executor(docker_policy(), 0)?;
    Some(runtime().block_on(exec.probe(targets)).expect("probe"))
}

fn host_addresses() -> Vec<String> {
    let mut ips = Vec::new();
    let gw = Command::new("docker")
        .args(["network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Gateway}}"])
        .output()
        .expect("docker network inspect");
    let gw = String::from_utf8_lossy(&gw.stdout).trim().to_string();
    if !gw.is_empty() {
        ips.push(gw);
    }
    let all = Command::new("hostname").arg("-I").output().expect("hostname -I");
    ips.extend(
        String::from_utf8_lossy(&all.stdout).split_whitespace().filter(|ip| !ip.contains(':')).map(String::from),
    );
    assert!(!ips.is_empty(), "no host address to aim at");
    ips
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn the_network_reaches_nothing_not_even_the_host() {
    // A listener on every host address: any connection from the container is an escape.
    let listener = TcpListener::bind("0.0.0.0:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut targets: Vec<String> = host_addresses().iter().map(|ip| format!("{ip}:{port}")).collect();
    targets.push("1.1.1.1:53".into());
    let Some(p) = probe(&targets) else { return };
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]), "{p}");
    for t in &targets {
        let got = p["connect"][t].as_str().unwrap_or("missing");
        assert_ne!(got, "ok", "the container connected to {t}: {p}");
    }
    assert!(listener.accept().is_err(), "the host's listener received a connection from the container");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn the_root_file_system_is_read_only_and_tmp_cannot_execute() {
    let Some(p) = probe(&[]) else { return };
    assert_eq!(p["write_root"], "EROFS", "{p}");
    assert_eq!(p["write_usr"], "EROFS", "{p}");
    assert_eq!(p["write_tmp"], "ok", "the tmpfs /tmp is writable: {p}");
    assert_eq!(p["exec_tmp"], "EACCES", "a file written to /tmp ran: {p}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn no_capabilities_no_root_no_new_privileges() {
    let Some(p) = probe(&[]) else { return };
    assert_eq!(p["uid"], 65534, "{p}");
    assert_eq!(p["gid"], 65534, "{p}");
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(p[cap], "0000000000000000", "{cap}: {p}");
    }
    assert_eq!(p["NoNewPrivs"], "1", "{p}");
    assert_eq!(p["setuid_root"], "EPERM", "{p}");
    assert_eq!(p["chroot"], "EPERM", "{p}");
    assert_eq!(p["mknod"], "EPERM", "{p}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let Some(p) = probe(&[]) else { return };
    let forks = p["forks"].as_u64().expect("forks");
    assert!(forks < 64, "{forks} children: the pids limit did not hold: {p}");
    assert_eq!(p["forks_refused"], "EAGAIN", "{p}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn snippets_cannot_import_os_or_open_sockets_under_the_policy() {
    for code in ["import os", "import socket", "import subprocess", "__import__('os')"] {
        let Some(o) = run_docker(&format!("{code}\nprint('ESCAPED')")) else { return };
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
        assert!(!o.stdout.contains("ESCAPED"), "{code}: {o:?}");
    }
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn snippets_cannot_write_files_even_where_the_container_could() {
    let Some(o) = run_docker("open('/tmp/x', 'w').write('x')") else { return };
    assert_eq!(o.status, Status::Denied, "{o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn an_allowed_socket_module_still_reaches_nothing() {
    // Policy allows `socket`; the prelude's audit hook refuses the socket, and
    // behind it the container has no network.
    let policy = docker_policy_with(r#"["math", "time", "json"]"#, r#"["math", "time", "json", "socket"]"#);
    let Some(exec_) = docker_executor(policy, 0) else { return };
    let o = exec(&exec_, ExecRequest::new("import socket\nsocket.create_connection(('1.1.1.1', 53), 2)"));
    assert_eq!(o.status, Status::Denied, "{o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn errors_shown_to_the_snippet_name_no_host_paths() {
    let Some(o) = run_docker("import os") else { return };
    let text = format!("{:?} {} {}", o.error, o.stdout, o.stderr);
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    assert!(!text.contains(&home) && !text.contains("/var/run/docker.sock"), "{text}");
}
