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
    for f in ["compile('1', 's', 'eval')", "open('/etc/passwd')", "breakpoint()", "input()", "vars()"] {
        assert_denied(&format!("{f}\nprint('ESCAPED')"));
    }
}

#[test]
fn eval_and_exec_of_text_meet_the_same_walls_as_the_snippet() {
    // See: issue 15 (given back once the walls no longer depend on names).
    let o = run("g = {}\nexec('y = 5\\ndef f(): return y * 2', g)\n[eval('1 + 2'), g['y'], g['f']()]");
    assert_eq!((o.status, o.result.clone()), (Status::Ok, Some(serde_json::json!([3, 5, 10]))), "{o:?}");
    for code in [
        "exec('import os', {})",
        "eval('__import__(\"sys\")')",
        "eval('().__class__.__base__.__subclasses__()')",
        "exec('match getattr:\\n    case object(__globals__=g):\\n        pass', {})",
        "exec('x = 1', {'__builtins__': {}})\nexec(b'import os')",
        "eval(compile('1', 's', 'eval'))",
    ] {
        assert_denied(&format!("{code}\nprint('ESCAPED')"));
    }
    // Called back from a stdlib function's frame, eval would see that module's names.
    assert_denied("import json\njson.loads('[1]', parse_int=eval)");
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
