//! Attacks on the import whitelist: reaching modules the policy does not list, or
//! that the rustpython tier never serves, directly or through attribute chains.

use terrarium::Status;

use crate::common::{run, run_wide};

#[test]
fn unlisted_modules_are_denied() {
    for code in
        ["import os", "import socket", "import subprocess", "from os import path", "import os.path", "import json, sys"]
    {
        let o = run(code);
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
    }
}

#[test]
fn listed_modules_work() {
    let o = run("import json\njson.dumps({'a': 1})");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!("{\"a\": 1}")));
    let o = run("import math, time\nmath.floor(2.5) + (time.time() > 0)");
    assert_eq!(o.result, Some(serde_json::json!(3)));
}

#[test]
fn module_attribute_chains_stop_at_the_proxy() {
    // On a bare interpreter this reaches `sys`.
    let o = run("import json\nprint(json.decoder.re.enum.sys)");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    assert_eq!(o.error.as_ref().map(|e| e.kind.as_str()), Some("AttributeError"));
    assert!(!o.stdout.contains("module 'sys'"));
    let o = run("from json import decoder\ndecoder.re");
    assert_eq!(o.status, Status::Exception, "{o:?}");
    let o = run("import json\njson.scanner");
    assert_eq!(o.status, Status::Ok, "allowed submodules stay reachable: {o:?}");
}

#[test]
fn internals_are_refused_even_when_the_policy_lists_them() {
    // The wide policy lists sys, _imp, inspect, gc, io and os.
    for code in
        ["import sys", "import _imp", "import inspect", "import gc", "import io", "import os", "__import__('_imp')"]
    {
        let o = run_wide(&format!("{code}\nprint('ESCAPED')"));
        assert_eq!(o.status, Status::Denied, "{code}: {o:?}");
        assert!(!o.stdout.contains("ESCAPED"));
    }
}

#[test]
fn relative_imports_are_refused() {
    let o = run("from . import json");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    let o = run("__import__('json', globals(), None, (), 1)");
    assert_eq!(o.status, Status::Denied, "{o:?}");
}

#[test]
fn private_names_cannot_be_imported_from_modules() {
    let o = run("from json import __builtins__");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    let o = run("from json import _default_encoder");
    assert_eq!(o.status, Status::Exception, "underscore names are not in the proxy: {o:?}");
}
