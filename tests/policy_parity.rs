//! One policy, one answer: the same import cases get the same allow/deny decision
//! on the rustpython tier (isolated mode), the wasm tier and the docker tier.

use terrarium::{ExecRequest, Policy, Status};

use crate::common::{DOCKER_IMAGE, docker_executor, exec, exec_wasm, isolated, wasm_executor};

fn policy(allowed: &[String]) -> Policy {
    let modules: Vec<&str> = allowed.iter().map(String::as_str).collect();
    Policy::default_policy().with_allowed_modules(&modules)
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn the_same_policy_decides_the_same_on_every_tier() {
    let mut disagreements = Vec::new();
    // The table `terrarium redteam` runs too (redteam/parity.yaml).
    for case in terrarium::redteam::parity_cases().expect("the parity table parses") {
        let (allowed, code, want) = (&case.allowed_modules, case.code.as_str(), &case.allowed);
        let p = policy(allowed);
        let rp = exec(&isolated(p.clone()), ExecRequest::new(code));
        let Some(wasm) = wasm_executor(p.clone()) else { return };
        let wa = exec_wasm(&wasm, ExecRequest::new(code));
        let docker_policy = Policy::from_yaml(&p.to_yaml().replacen("python:3.12-slim", DOCKER_IMAGE, 1), "<parity>")
            .expect("docker parity policy");
        let Some(docker) = docker_executor(docker_policy, 0) else { return };
        let dk = exec(&docker, ExecRequest::new(code));
        for (tier, o) in [("rustpython", &rp), ("wasm", &wa), ("docker", &dk)] {
            let ran = o.status != Status::Denied;
            if ran != *want {
                disagreements.push(format!("{tier}: {code:?} under {allowed:?}: {:?} {:?}", o.status, o.error));
            }
        }
    }
    assert!(disagreements.is_empty(), "decisions that differ from the table:\n{}", disagreements.join("\n"));
}
