//! The walls behind the snippet guards, checked from *trusted* code: even code
//! with the real builtins finds nothing that reaches the host.

use super::*;

/// Runs `code` as trusted code (the real builtins, no analysis) in a sealed
/// interpreter that first imported `preload`; during the run `_t_allowed` answers
/// for `preload`, and the globals also hold `snippet_globals` (a fresh snippet
/// environment) and `allowed`. Returns `str(result)`, or `raised ...`.
fn trusted_with(code: &'static str, preload: Vec<String>) -> String {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let w = Worker::new().expect("worker");
            w.preload(&preload);
            w.seal().expect("seal");
            RUN.with(|r| {
                *r.borrow_mut() = Some(RunState {
                    ctrl: w.ctrl.clone(),
                    run_id: 0,
                    stdout: String::new(),
                    stderr: String::new(),
                    max_output: 1 << 20,
                    deadline: Instant::now() + Duration::from_secs(600),
                    allowed: std::sync::Arc::new(preload.iter().cloned().collect()),
                    functions: std::sync::Arc::from([]),
                    globals: None,
                });
            });
            w.interp.enter(|vm| {
                let snippet_globals: PyObjectRef = w.fresh_globals(vm).into();
                let names: Vec<PyObjectRef> = preload.iter().map(|m| vm.ctx.new_str(m.as_str()).into()).collect();
                let globals = vm.ctx.new_dict();
                globals.set_item("__builtins__", vm.builtins.clone().into(), vm).expect("builtins");
                globals.set_item("snippet_globals", snippet_globals, vm).expect("roots");
                globals.set_item("allowed", vm.ctx.new_list(names).into(), vm).expect("allowed");
                let code = vm.compile(code, Mode::BlockExpr, "<trusted>").expect("compile");
                match vm.run_code_obj(code, Scope::with_builtins(None, globals, vm)) {
                    Ok(v) => v.str(vm).map(|s| s.as_wtf8().to_string_lossy().into_owned()).unwrap_or_default(),
                    Err(e) => format!("raised {}", exc_text(vm, &e)),
                }
            })
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Runs `code` with the real builtins and returns `str(result)`.
fn trusted(code: &'static str) -> String {
    trusted_with(code, Vec::new())
}

/// Walks the object graph from a snippet's names (`walk_test.py`) under a policy
/// allowing `allowed`, with the real getattr; returns the walk's report.
fn walk(allowed: Vec<String>) -> String {
    trusted_with(include_str!("../../../guest/walk_test.py"), allowed)
}

#[track_caller]
fn assert_walk_reaches_nothing(allowed: Vec<String>) {
    let report = walk(allowed);
    assert!(report.contains(" 0 reached"), "{report}");
    eprintln!("{report}");
}

#[test]
fn the_object_graph_from_a_snippet_reaches_no_internals_default_policy() {
    // See: issue 15.
    assert_walk_reaches_nothing(vec!["math".into(), "time".into(), "json".into()]);
}

#[test]
fn the_object_graph_from_a_snippet_reaches_no_internals_every_module_served() {
    let builder = Interpreter::builder(Settings::default());
    let mut names: BTreeSet<String> =
        rustpython_stdlib::stdlib_module_defs(&builder.ctx).iter().map(|d| d.name.as_str().to_string()).collect();
    names.extend(rustpython_pylib::FROZEN_STDLIB.decode().map(|(n, _)| n.to_string()));
    let served: Vec<String> = names.into_iter().filter(|n| !n.contains('.') && serves_module(n)).collect();
    assert!(served.len() > 30, "{served:?}");
    assert_walk_reaches_nothing(served);
}

#[test]
fn the_removed_internals_are_gone_even_for_trusted_code() {
    // Trusted code has the real builtins and no static analysis: what it cannot
    // reach, no snippet route can.
    for (what, code) in [
        (
            "function globals",
            "def f(): pass
hasattr(f, '__globals__') or hasattr(f, '__code__') or hasattr(f, '__closure__')",
        ),
        (
            "match class patterns",
            "r = False
match getattr:
    case object(__globals__=g):
        r = True
r",
        ),
        ("a builtin's module", "hasattr(len, '__self__')"),
        ("subclasses", "hasattr(object, '__subclasses__')"),
        (
            "generator frames",
            "def g():
    yield 1
x = g()
hasattr(x, 'gi_frame') or hasattr(x, 'gi_code')",
        ),
        (
            "traceback frames",
            "try:
    1/0
except Exception as e:
    r = hasattr(e.__traceback__, 'tb_frame')
r",
        ),
        (
            "frame internals",
            "import sys
f = sys._getframe()
any(hasattr(f, n) for n in ('f_back', 'f_globals', 'f_locals', 'f_builtins', 'f_code'))",
        ),
        (
            "code rebuilding",
            "c = compile('0', 'x', 'eval')
hasattr(c, 'replace')",
        ),
        (
            "functions from code",
            "c = compile('0', 'x', 'eval')\ntry:\n    type(lambda: 0)(c, {})\n    r = True\nexcept TypeError:\n    r = False\nr",
        ),
        (
            "code from parts",
            "c = compile('0', 'x', 'eval')\ntry:\n    type(c)(0, 0, 0, 0, 0, 0, b'', (), (), (), 'x', 'x', 'x', 1, b'', b'')\n    r = True\nexcept TypeError:\n    r = False\nr",
        ),
    ] {
        assert_eq!(trusted(code), "False", "{what} is still reachable");
    }
    // ABCs still answer isinstance through their own subclasses.
    assert_eq!(
        trusted(
            "import collections.abc
isinstance([], collections.abc.Sequence) and isinstance({}, collections.abc.Mapping)"
        ),
        "True"
    );
    assert_eq!(
        trusted(
            "import abc
class A(abc.ABC): pass
class B(A): pass
B in A.__subclasses__()"
        ),
        "True"
    );
    assert!(
        trusted(
            "import abc
abc.ABCMeta.__subclasses__(object)"
        )
        .starts_with("raised"),
        "plain classes stay unlisted"
    );
}

#[test]
fn create_builtin_cannot_recreate_pruned_modules() {
    let r = trusted(
        "import _imp\nclass S:\n    name = 'gc'\n    origin = 'built-in'\ntry:\n    m = _imp.create_builtin(S())\n    r = 'created ' + repr(m)\nexcept Exception as e:\n    r = 'refused'\nr",
    );
    assert!(!r.starts_with("created <module 'gc'"), "{r}");
}

#[test]
fn no_file_access_even_with_real_builtins() {
    let r = trusted(
        "try:\n    open('/etc/passwd').read()\n    r = 'READ'\nexcept Exception as e:\n    r = type(e).__name__\nr",
    );
    assert_ne!(r, "READ");
    let r = trusted("import os\ntry:\n    os.listdir('/')\n    r = 'LISTED'\nexcept OSError:\n    r = 'refused'\nr");
    assert_eq!(r, "refused");
    let r = trusted("import os\nsorted(os.environ)");
    assert_eq!(r, "[]");
}

#[test]
fn no_sockets_processes_or_threads_exist() {
    for m in ["socket", "_socket", "subprocess", "_posixsubprocess", "threading", "select", "mmap", "gc", "_ctypes"] {
        let code: &'static str = Box::leak(
            format!("try:\n    __import__('{m}')\n    r = 'IMPORTED'\nexcept ImportError:\n    r = 'absent'\nr")
                .into_boxed_str(),
        );
        assert_eq!(trusted(code), "absent", "{m} is importable");
    }
}

#[test]
fn thread_starts_no_os_thread() {
    // Without the `threading` feature only a pure-Python `_thread` stand-in
    // exists, which runs the function inline.
    let r = trusted(
        "import _thread\nseen = []\ntry:\n    _thread.start_new_thread(lambda: seen.append(_thread.get_ident()), ())\nexcept Exception as e:\n    seen.append(type(e).__name__)\nstr(seen == [_thread.get_ident()] or seen)",
    );
    assert!(r == "True" || r.contains("Error"), "{r}");
}

#[test]
fn interpreter_settings_are_gone_from_sys() {
    let r = trusted(
        "import sys\n[n for n in ('settrace', 'setprofile', 'setrecursionlimit', '_current_frames', 'monitoring') if hasattr(sys, n)]",
    );
    assert_eq!(r, "[]");
}

/// The names the host injects into the prelude are the ones the prelude documents
/// at its top and the guest-Python lint (`ruff.toml`) knows, and no others.
#[test]
fn the_injected_names_are_documented_and_known_to_the_lint() {
    use std::collections::BTreeSet;
    let names = |text: &str, split: &str| -> BTreeSet<String> {
        text.split(split)
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next().map(str::to_string))
            .filter(|n| n.starts_with("_t_"))
            .collect()
    };
    let injected = names(include_str!("mod.rs"), "set(");
    assert!(injected.len() > 20, "{injected:?}");
    let header: String = include_str!("../../../guest/rustpython_prelude.py")
        .lines()
        .take_while(|l| l.starts_with('#') || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    for name in &injected {
        assert!(header.contains(name.as_str()), "{name} is injected but not documented in the prelude's header");
    }
    let listed: BTreeSet<String> =
        include_str!("../../../../ruff.toml").split('"').filter(|w| w.starts_with("_t_")).map(str::to_string).collect();
    assert_eq!(listed, injected, "ruff.toml's builtins differ from what the host injects");
}
