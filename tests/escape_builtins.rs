//! Attacks that try to reach the real builtins (`__import__`, `exec`, `open`) from a
//! snippet. Each must end `denied` (or fail) without the escape's effect.

use terrarium::Status;

use crate::common::{assert_denied, run, run_wide};

#[test]
fn function_globals_give_nothing() {
    // The escape seen on a bare interpreter: a stdlib function's globals hold the
    // real builtins.
    assert_denied("import json\njson.dumps.__globals__['__builtins__']['__import__']('sys')");
    assert_denied("import json\ng = getattr(json.dumps, '__glo' + 'bals__')\nprint('ESCAPED')");
    assert_denied("import json\nf = json.dumps\nprint('{0.__globals__}'.format(f))");
    assert_denied("import json\nprint('{0.__globals__[__builtins__]}'.format_map({0: json.dumps}))");
}

#[test]
fn guarded_getattr_cannot_be_replaced_by_helpers() {
    let o = run_wide("import operator, json\noperator.attrgetter('__globals__')(json.dumps)\nprint('ESCAPED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    let o = run_wide("import string, json\nstring.Formatter().format('{0.__globals__}', json.dumps)\nprint('ESCAPED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    let o = run_wide("import operator\noperator.methodcaller('__subclasses__')(object)\nprint('ESCAPED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
}

#[test]
fn snippet_builtins_are_the_restricted_copy() {
    assert_denied("__builtins__['__import__']('sys')\nprint('ESCAPED')");
    assert_denied("__import__('os')\nprint('ESCAPED')");
    for f in [
        "exec('1')",
        "eval('1')",
        "compile('1', 's', 'eval')",
        "open('/etc/passwd')",
        "breakpoint()",
        "input()",
        "vars()",
    ] {
        assert_denied(&format!("{f}\nprint('ESCAPED')"));
    }
}

#[test]
fn a_denial_cannot_be_caught() {
    let o = run("try:\n    __import__('os')\nexcept BaseException:\n    pass\nprint('ESCAPED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(!o.stdout.contains("ESCAPED"));
    // Catching in a loop does not help either.
    let o = run(
        "for i in range(1000):\n    try:\n        __import__('os')\n    except BaseException:\n        pass\nprint('ESCAPED')",
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(!o.stdout.contains("ESCAPED"));
}

#[test]
fn messages_carry_no_host_paths() {
    for code in ["import os", "1/0", "import json\njson.loads('{')", "def (:", "undefined_name"] {
        let o = run(code);
        let text = format!("{o:?}");
        for host in [env!("CARGO_MANIFEST_DIR"), ".cargo/registry", "/root/", "/home/"] {
            assert!(!text.contains(host), "{code:?} leaked {host:?}: {text}");
        }
    }
}
