//! One policy, one answer: the same import cases get the same allow/deny decision
//! on the rustpython tier (isolated mode), the wasm tier and the docker tier.

use terrarium::{ExecRequest, Policy, Status};

use crate::common::{DOCKER_IMAGE, docker_executor, exec, exec_wasm, isolated, wasm_executor};

/// (policy's allowed_modules, code, allowed?)
const CASES: &[(&str, &str, bool)] = &[
    (r#"["math", "time", "json"]"#, "import math", true),
    (r#"["math", "time", "json"]"#, "import json", true),
    (r#"["math", "time", "json"]"#, "from json import dumps", true),
    (r#"["math", "time", "json"]"#, "import json.decoder", true),
    (r#"["math", "time", "json"]"#, "import collections", false),
    (r#"["math", "time", "json"]"#, "import os", false),
    (r#"["math", "time", "json"]"#, "import socket", false),
    (r#"["math", "time", "json"]"#, "import subprocess", false),
    (r#"["math", "time", "json"]"#, "__import__('collections')", false),
    (r#"["math", "time", "json"]"#, "import importlib", false),
    (r#"["math", "time", "json"]"#, "from . import x", false),
    (r#"["math", "collections"]"#, "import collections", true),
    (r#"["math", "collections"]"#, "import collections.abc", true),
    (r#"["math", "collections"]"#, "import json", false),
    (r#"["re"]"#, "import re\nre.compile('a+').match('aa').group()", true),
    (r#"[]"#, "import math", false),
];

fn policy(allowed: &str) -> Policy {
    let text = crate::common::default_policy_with(
        r#"allowed_modules: ["math", "time", "json"]"#,
        &format!("allowed_modules: {allowed}"),
    );
    Policy::from_yaml(&text, "<parity>").expect("parity policy")
}

#[test]
fn the_same_policy_decides_the_same_on_every_tier() {
    let mut disagreements = Vec::new();
    for (allowed, code, want) in CASES {
        let p = policy(allowed);
        let rp = exec(&isolated(p.clone()), ExecRequest::new(*code));
        let Some(wasm) = wasm_executor(p.clone()) else { return };
        let wa = exec_wasm(&wasm, ExecRequest::new(*code));
        let docker_policy = Policy::from_yaml(&p.to_yaml().replacen("python:3.12-slim", DOCKER_IMAGE, 1), "<parity>")
            .expect("docker parity policy");
        let Some(docker) = docker_executor(docker_policy, 0) else { return };
        let dk = exec(&docker, ExecRequest::new(*code));
        for (tier, o) in [("rustpython", &rp), ("wasm", &wa), ("docker", &dk)] {
            let allowed = o.status != Status::Denied;
            if allowed != *want {
                disagreements.push(format!("{tier}: {code:?} under {allowed}: {:?} {:?}", o.status, o.error));
            }
        }
    }
    assert!(disagreements.is_empty(), "decisions that differ from the table:\n{}", disagreements.join("\n"));
}
