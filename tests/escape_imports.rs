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

/// A child's imports are served by proxies its zygote made ahead (Terrarium's own
/// warm-up, before any snippet), and an import whose module's names did not change
/// since its proxy was filled skips the walk. Neither may show a snippet less or
/// more than a run's first import would: the same names, isolated and embedded,
/// for every module the wide policy lists (with the prelude's replacements).
#[test]
fn a_childs_ready_proxies_hold_what_a_fresh_import_gives() {
    let modules = [
        "math",
        "time",
        "json",
        "collections",
        "itertools",
        "functools",
        "re",
        "dataclasses",
        "decimal",
        "fractions",
        "datetime",
        "statistics",
        "heapq",
        "bisect",
        "typing",
        "enum",
        "abc",
        "string",
        "random",
        "copy",
        "hashlib",
        "contextlib",
        "asyncio",
        "operator",
    ];
    let code = format!(
        "import {}\nnames = {{}}\nfor m in [{}]:\n    names[m.__name__] = sorted(dir(m))\nnames",
        modules.join(", "),
        modules.join(", ")
    );
    let embedded = terrarium::EmbeddedExecutor::with_workers(crate::common::wide_policy(), 1);
    // The zygote's warm-ups ran before its proxies were made: `most_common` binds
    // `collections.heapq` (a module, which no proxy shows) in place of `None`. The
    // embedded interpreter (shared stdlib state between runs) is brought there first.
    let warm = "import collections\ncollections.Counter('abca').most_common(1)";
    assert_eq!(crate::common::exec(&embedded, terrarium::ExecRequest::new(warm)).status, Status::Ok);
    let fresh = crate::common::exec(&embedded, terrarium::ExecRequest::new(code.as_str()));
    assert_eq!(fresh.status, Status::Ok, "{fresh:?}");
    // Several requests: each takes another child of the pool, and uses the same
    // fuel (the modes need not agree: embedded mode's first imports walk).
    let mut fuel = None;
    for _ in 0..3 {
        let ready = run_wide(&code);
        assert_eq!(ready.status, Status::Ok, "{:?}", ready.error);
        assert!(ready.result == fresh.result, "a child's proxies differ from a fresh run's");
        let heapq = run_wide("import collections\nhasattr(collections, 'heapq')");
        assert_eq!(heapq.result, Some(serde_json::json!(false)), "a value from before the warm-ups: {heapq:?}");
        assert!(fuel.is_none() || fuel == ready.usage.fuel, "{fuel:?} then {:?}", ready.usage.fuel);
        fuel = ready.usage.fuel;
    }
}

/// The skipped walk must not hide a name the module gained: a submodule loaded
/// mid-run (`html.parser` is not loaded ahead) appears in its package's proxy at
/// the next import, as it did when every import walked the package.
#[test]
fn a_submodule_loaded_mid_run_appears_in_its_packages_proxy() {
    let policy = crate::common::default_policy_with(r#""json"]"#, r#""json", "html"]"#);
    let code = "import html\nbefore = hasattr(html, 'parser')\nimport html.parser\n\
                import html as again\n(before, hasattr(html, 'parser'), again is html, html.parser.HTMLParser.__name__)";
    let o = crate::common::run_policy(&policy, code);
    assert_eq!(o.result, Some(serde_json::json!([false, true, true, "HTMLParser"])), "{o:?}");
}
