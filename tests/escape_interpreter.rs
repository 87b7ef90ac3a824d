//! Attacks on the interpreter tier's walls and on the host's trust in its children,
//! named after the findings of the outside review behind issue 15 (F1–F7). Each is
//! judged by the capability it reaches (a module outside the policy, a function's
//! globals, a frame), not only by an effect on the host.
//!
//! See: issue 15.

use std::time::{Duration, Instant};

use terrarium::{ExecRequest, Executor, IsolatedConfig, IsolatedExecutor, Outcome, Policy, Status, Tier};

use crate::common::{default_isolated, exec, run, run_embedded, run_policy, run_wide, runtime};

/// The default policy with `module` allowed too.
fn policy_allowing(module: &str) -> String {
    crate::common::default_policy_with(
        r#"allowed_modules: ["math", "time", "json"]"#,
        &format!(r#"allowed_modules: ["math", "time", "json", "{module}"]"#),
    )
}

/// Runs `code` under the default policy with `module` allowed too, and asserts that
/// it reached nothing (see [`assert_reached_nothing`]); returns the outcome.
#[track_caller]
fn attack_with(module: &str, what: &str, code: &str) -> Outcome {
    let o = run_policy(&policy_allowing(module), code);
    assert_reached_nothing(what, &o);
    o
}

/// Asserts that `o` reached no interpreter internals: it did not end `ok` with the
/// marker, and nothing it printed names a module outside the policy or a host path.
#[track_caller]
fn assert_reached_nothing(what: &str, o: &Outcome) {
    assert_ne!(o.status, Status::Ok, "{what} ran to the end: {o:?}");
    let text = format!("{} {} {:?}", o.stdout, o.stderr, o.result);
    for leak in ["REACHED", "<module 'sys'", "<module '_io'", "<module 'marshal'", "built-in function exec", "/"] {
        assert!(!o.stdout.contains(leak), "{what} printed {leak:?}: {text}");
    }
}

/// F1's snippet from the review: a class pattern reads `__globals__` directly.
const F1_MATCH: &str = "match getattr:\n    case object(__globals__=g):\n        pass\nprint('REACHED', g['sys'])";

#[test]
fn f1_match_class_patterns_reach_no_globals() {
    for (mode, o) in [("isolated", run(F1_MATCH)), ("embedded", run_embedded(F1_MATCH))] {
        assert_eq!(o.status, Status::Denied, "{mode}: {o:?}");
        assert_reached_nothing(mode, &o);
    }
    // Positional patterns read the names in `__match_args__`.
    let o =
        run("class C:\n    __match_args__ = ('__globals__',)\nmatch C():\n    case C(g):\n        print('REACHED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    // The relatives the review reached the same way: subclasses, frames of
    // generators, coroutines, async generators and tracebacks.
    for code in [
        "match object:\n    case type(__subclasses__=s):\n        print('REACHED', s())",
        "def g():\n    yield 1\nmatch g():\n    case object(gi_frame=f):\n        print('REACHED', f)",
        "async def c():\n    pass\nmatch c():\n    case object(cr_frame=f):\n        print('REACHED', f)",
        "try:\n    1/0\nexcept Exception as e:\n    match e.__traceback__:\n        case object(tb_frame=f):\n            print('REACHED', f)",
    ] {
        let o = run(code);
        assert_reached_nothing(code, &o);
    }
}

/// F2's snippet from the review: a `str` subclass whose `startswith` lies.
const F2_STR_SUBCLASS: &str = "class S(str):\n    def startswith(self, p):\n        return False\n    def split(self, *a):\n        return ['x']\n    def __eq__(self, o):\n        return False\n    def __hash__(self):\n        return 1\n";

#[test]
fn f2_str_subclasses_do_not_fool_the_attribute_builtins() {
    for call in [
        "g = getattr(getattr, S('__globals__'))\nprint('REACHED', g['sys'], g['sys'].executable)",
        "setattr(getattr, S('__dict__'), {})\nprint('REACHED')",
        "delattr(getattr, S('__globals__'))\nprint('REACHED')",
    ] {
        let o = run(&format!("{F2_STR_SUBCLASS}{call}"));
        assert_eq!(o.status, Status::Denied, "{call}: {o:?}");
        assert_reached_nothing(call, &o);
    }
    let o = run(&format!("{F2_STR_SUBCLASS}hasattr(getattr, S('__globals__'))"));
    assert_eq!((o.status, o.result), (Status::Ok, Some(serde_json::json!(false))), "hasattr says absent");
    // The guarded attrgetter, whose check called `split` on the name.
    attack_with(
        "operator",
        "attrgetter",
        &format!("{F2_STR_SUBCLASS}import operator\nprint('REACHED', operator.attrgetter(S('__globals__'))(getattr))"),
    );
}

#[test]
fn f3_typing_forward_references_reach_no_globals() {
    attack_with(
        "typing",
        "typing ForwardRef.evaluate(owner=getattr)",
        "import typing\nfr = typing.get_args(typing.List['sys'])[0]\nprint('REACHED', fr.evaluate(owner=getattr))",
    );
    attack_with(
        "typing",
        "typing ForwardRef to the importer",
        "import typing\nfr = typing.get_args(typing.List['_real_import'])[0]\nprint('REACHED', fr.evaluate(owner=getattr)('_io'))",
    );
}

#[test]
fn f4_string_formatter_through_super_reaches_no_globals() {
    let o = attack_with(
        "string",
        "super(Formatter).get_field",
        "import string\nF = string.Formatter\nobj, _ = super(F, F()).get_field('0.' + '_'*2 + 'globals' + '_'*2, (getattr,), {})\nprint('REACHED', obj['sys'])",
    );
    // With the guard stepped around, the wall is what answers: no such attribute.
    assert_eq!(o.error.as_ref().map(|e| e.kind.as_str()), Some("AttributeError"), "{o:?}");
}

#[test]
fn f5_the_real_operator_classes_reach_no_globals() {
    let policy = policy_allowing("operator");
    let o = run_policy(
        &policy,
        "import operator\nA = type(operator.attrgetter('x'))\nprint('REACHED', A('_'*2 + 'globals' + '_'*2)(getattr)['sys'])",
    );
    assert_reached_nothing("type(attrgetter)", &o);
    assert_eq!(o.error.as_ref().map(|e| e.kind.as_str()), Some("AttributeError"), "the wall answers: {o:?}");
    let o = run_policy(
        &policy,
        "import operator\nM = type(operator.methodcaller('x'))\nprint('REACHED', M('_'*2 + 'subclasses' + '_'*2)(object))",
    );
    assert_reached_nothing("type(methodcaller)", &o);
}

#[test]
fn module_level_builtins_do_not_hand_out_their_module() {
    // `len.__self__` was the real builtins module; operator reaches it past the
    // names.
    attack_with(
        "operator",
        "len.__self__",
        "import operator\nA = type(operator.attrgetter('x'))\nprint('REACHED', A('_'*2 + 'self' + '_'*2)(len))",
    );
}

#[test]
fn stdlib_callbacks_do_not_hand_out_their_module_globals() {
    // globals() called back from a stdlib function's frame would be that module's.
    let o = run_wide(
        "import contextlib\nwith contextlib.ExitStack() as s:\n    s.callback(lambda: None)\n    s.callback(globals)\nprint('REACHED')",
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    let o = run("x = 1\nsorted(globals())[:3] + [locals()['x']]");
    assert_eq!(o.status, Status::Ok, "the snippet's own globals and locals still answer: {o:?}");
}

#[test]
fn honest_code_gets_back_what_the_name_guards_broke() {
    let o = run(
        "try:\n    try:\n        1/0\n    except ZeroDivisionError as e:\n        raise ValueError('x') from e\nexcept ValueError as v:\n    r = [type(v.__cause__).__name__, type(v.__context__).__name__, v.__suppress_context__]\nr",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!(["ZeroDivisionError", "ZeroDivisionError", true])));
    let o = run_policy(
        &policy_allowing("typing"),
        "import typing\nT = typing.TypeVar('T')\nclass Box(typing.Generic[T]):\n    def __init__(self, v):\n        self.v = v\nb = Box[int](3)\n[b.v, b.__orig_class__ == Box[int]]",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!([3, true])));
}

/// Pids of the live children of `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn pool_of_one() -> IsolatedExecutor {
    let mut config = IsolatedConfig::new(env!("CARGO_BIN_EXE_terrarium"));
    config.pool_size = 1;
    IsolatedExecutor::new(Policy::default_policy(), config)
}

#[test]
fn f6_a_child_cannot_forge_its_answer_on_stderr() {
    // The runtime's fallback writes go to descriptor 2; the answer channel is 3.
    let o = runtime()
        .block_on(default_isolated().probe_misbehaving_child("print('real')\n'value'", "forge_on_stderr"))
        .expect("host fault");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.stdout, "real\n", "the host took the forged frame: {o:?}");
    assert_eq!(o.result, Some(serde_json::json!("value")));
    assert_eq!(o.tier, Tier::Rustpython);
}

#[test]
fn a_child_that_rewrites_the_shared_code_changes_only_its_own_copy() {
    // Children share the zygote's code (in huge pages once the first child is
    // announced). A child whose snippet controls it makes a page of that code
    // writable and plants a breakpoint in a function; no later child may see it.
    let pool = pool_of_one();
    for _ in 0..3 {
        let o = exec(&pool, ExecRequest::new("1+1"));
        assert_eq!(o.status, Status::Ok, "{o:?}");
    }
    let o = runtime().block_on(pool.probe_misbehaving_child("2+2", "rewrite_code")).expect("host fault");
    assert_eq!(o.status, Status::Ok, "the child could not rewrite its own code, so this test proves nothing: {o:?}");
    for _ in 0..10 {
        let o = runtime().block_on(pool.probe_misbehaving_child("3+3", "check_code")).expect("host fault");
        assert_eq!(o.status, Status::Ok, "a later child runs another child's rewritten code: {o:?}");
        assert_eq!(o.result, Some(serde_json::json!(6)));
    }
}

#[test]
fn f6_a_denial_is_final_whatever_the_snippet_does_next() {
    // The child tells the host of a denial when it happens; catching the
    // PermissionError and returning normally does not take it back.
    let o = run("try:\n    import os\nexcept BaseException:\n    pass\nprint('after')\n'ok'");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert_eq!(o.result, None, "a denied run has no value: {o:?}");
}

#[test]
fn f7_a_child_that_keeps_running_after_its_answer_is_killed() {
    let exec = pool_of_one();
    runtime().block_on(exec.warm_up()).expect("warm up");
    let zygote = exec.zygote_pid().expect("zygote");
    for how in ["linger_after_answer", "spin_after_answer", "hold_memory_after_answer"] {
        let started = Instant::now();
        let o = runtime().block_on(exec.probe_misbehaving_child("print('answered')", how)).expect("host fault");
        assert_eq!(o.status, Status::Ok, "{how}: {o:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{how}: the request waited for the child");
        // The child was SIGKILLed before the run returned; what is left once the
        // zygote has reaped it is the pool (one child, ready or being forked).
        assert_only_the_pool_left(zygote, how);
    }
    // A batch of them, then the count once more.
    for _ in 0..4 {
        let o = runtime().block_on(exec.probe_misbehaving_child("1", "hold_memory_after_answer")).expect("host fault");
        assert_eq!(o.status, Status::Ok);
    }
    assert_only_the_pool_left(zygote, "a batch");
}

/// Waits (a killed child's teardown and reaping take a few milliseconds) until the
/// zygote has at most its one pooled child; fails after two seconds.
#[track_caller]
fn assert_only_the_pool_left(zygote: i32, what: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let left = children_of(zygote);
        if left.len() <= 1 {
            return;
        }
        assert!(Instant::now() < until, "{what}: children of the zygote after the run: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn f7_a_cancelled_request_kills_its_child() {
    let exec = pool_of_one();
    runtime().block_on(exec.warm_up()).expect("warm up");
    let zygote = exec.zygote_pid().expect("zygote");
    // The caller gives up long before the deadline: dropping the request's future
    // kills its child.
    let gave_up = runtime().block_on(async {
        tokio::time::timeout(Duration::from_millis(300), exec.execute(ExecRequest::new("import time\ntime.sleep(30)")))
            .await
    });
    assert!(gave_up.is_err(), "the sleep finished early");
    assert_only_the_pool_left(zygote, "a cancelled request");
}

#[test]
fn usage_and_tier_are_the_hosts_observation() {
    let o = exec(default_isolated(), ExecRequest::new("sum(range(300000))"));
    assert_eq!(o.status, Status::Ok);
    assert_eq!(o.tier, Tier::Rustpython);
    assert!(
        o.usage.peak_memory_bytes.is_some_and(|m| m > 1 << 20),
        "the kernel's accounting, not the child's word: {o:?}"
    );
    assert!(o.guest_word().contains(&"result") && !o.guest_word().contains(&"tier"));
}

/// F9's snippet from the review: catch two denials, then clear the prelude's record.
const F9_CLEAR_DENIALS: &str = "import json\nm = json.decoder.re.enum.sys.modules['__main__']\ntry:\n    __import__('subprocess')\nexcept PermissionError as e:\n    print('caught:', e)\ntry:\n    open('/etc/passwd')\nexcept PermissionError as e:\n    print('caught:', e)\nm._denial.clear()\nprint('the run goes on')\n'ok'";

/// F10's snippet, after a denial: forge an ok status line and leave at once.
const F10_FORGE_STATUS: &str = "import json\nsys = json.decoder.re.enum.sys\nm = sys.modules['__main__']\ntry:\n    __import__('subprocess')\nexcept PermissionError:\n    pass\nm._denial.clear()\nm._real_stderr_write('\\n' + m._nonce + ' {\"kind\": \"ok\", \"result\": \"{\\\\\"forged\\\\\": true}\"}\\n')\nm._real_stderr_flush()\nns = {}\nexec('import posix', ns)\nns['posix']._exit(0)";

#[track_caller]
fn assert_denied_after_all(tier: &str, o: &Outcome) {
    assert_eq!(o.status, Status::Denied, "{tier}: {o:?}");
    assert_eq!(o.result, None, "{tier}: {o:?}");
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn f9_f10_denials_on_the_cpython_tiers_cannot_be_taken_back() {
    if let Some(o) = crate::common::run_wasm(F9_CLEAR_DENIALS) {
        assert_denied_after_all("wasm F9", &o);
    }
    if let Some(o) = crate::common::run_wasm(F10_FORGE_STATUS) {
        assert_denied_after_all("wasm F10", &o);
    }
    if let Some(o) = crate::common::run_docker(F9_CLEAR_DENIALS) {
        assert_denied_after_all("docker F9", &o);
    }
    if let Some(o) = crate::common::run_docker(F10_FORGE_STATUS) {
        assert_denied_after_all("docker F10", &o);
    }
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn f8_modules_imported_by_name_on_the_cpython_tiers_reach_nothing_on_the_host() {
    // The whitelist is the prelude's policy inside a CPython the snippet shares; these
    // routes still import by name (docs/security-model.md). What holds is the
    // tier's wall: the modules they bring can do nothing to the host.
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("f8-marker");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let code = format!(
        "ns = {{}}\nexec('import os, subprocess, socket', ns)\nimport json\nsys = json.decoder.re.enum.sys\n\
         gcd = sys.modules['_frozen_importlib']._gcd_import\nshutil = gcd('shutil')\n\
         results = []\n\
         for attempt in (lambda: ns['subprocess'].run(['touch', {m:?}]),\n\
                         lambda: ns['os'].system('touch ' + {m:?}),\n\
                         lambda: ns['socket'].create_connection(('127.0.0.1', {port}), timeout=1),\n\
                         lambda: open({m:?}, 'w').write('x'),\n\
                         lambda: shutil.copy('/etc/hostname', {m:?})):\n\
         \x20   try:\n\
         \x20       attempt()\n\
         \x20       results.append('ran')\n\
         \x20   except BaseException as e:\n\
         \x20       results.append(type(e).__name__)\n\
         print(results)",
        m = marker.to_string_lossy(),
    );
    for (tier, o) in [("wasm", crate::common::run_wasm(&code)), ("docker", crate::common::run_docker(&code))] {
        let Some(o) = o else { continue };
        assert!(!marker.exists(), "{tier}: a file appeared on the host: {o:?}");
        assert!(listener.accept().is_err(), "{tier}: a connection reached the host: {o:?}");
        assert_eq!(o.tier.as_str(), tier);
    }
}

// The outside attack on this change (the breaches it found, now regression tests).

#[test]
fn b1_a_str_subclass_import_name_cannot_choose_the_module() {
    let o = run(
        "class S(str):\n    def __hash__(self):\n        return hash('sys')\n    def __eq__(self, other):\n        return other == 'sys' or str.__eq__(self, other)\nsysp = __builtins__['__import__'](S('json'), None, None, ['dumps'], 0)\nprint('REACHED', sysp.modules['sys'])",
    );
    assert_reached_nothing("S('json') hashing as 'sys'", &o);
}

#[test]
fn b2_a_str_subclass_cannot_pass_for_a_servable_module() {
    for policy in [policy_allowing("sys"), crate::common::WIDE_POLICY.to_string()] {
        let o = run_policy(
            &policy,
            "class S(str):\n    def split(self, sep=None, maxsplit=-1):\n        return ['math']\ns = __builtins__['__import__'](S('sys'))\nprint('REACHED', s.modules['builtins'])",
        );
        assert_reached_nothing("S('sys') splitting as 'math'", &o);
    }
}

#[test]
fn b3_the_preludes_views_of_sys_are_not_in_any_proxy() {
    attack_with("typing", "typing.sys", "import typing\nprint('REACHED', typing.sys._getframe())");
    attack_with(
        "dataclasses",
        "dataclasses.sys",
        "import dataclasses\nprint('REACHED', dataclasses.sys.modules['dataclasses'].annotationlib.enum.sys)",
    );
    attack_with(
        "dataclasses",
        "dataclasses.exec",
        "import dataclasses\nprint('REACHED', dataclasses.exec, dataclasses.inspect)",
    );
}

#[test]
fn b4_a_code_object_from_stdlib_cannot_be_run_or_rebuilt() {
    // A class pattern whose metaclass claims every instance reads any attribute past
    // the names; the code object it finds must be inert.
    attack_with(
        "typing",
        "FunctionType(stdlib code)",
        "import typing\nclass M(type):\n    def __instancecheck__(cls, obj):\n        return True\nclass Any(metaclass=M):\n    pass\nAny.__match_args__ = tuple(['_' * 2 + 'forward_code' + '_' * 2])\nfr = typing.get_args(typing.List['int'])[0]\nmatch fr:\n    case Any(code):\n        pass\nf = type(lambda: 0)(code, {'len': 42})\nprint('REACHED', f())",
    );
}

// The second outside attack on this change.

#[test]
fn r1_r2_enum_convert_cannot_look_up_sys_by_name() {
    attack_with(
        "enum",
        "Enum._convert_('sys')",
        "import enum\nE = enum.Enum._convert_('Zz', 'sys', lambda n: n in ('modules', '_getframe'))\nprint('REACHED', E.modules.value)",
    );
    // The same class reached from the default policy through a class pattern.
    let o = run(
        "import json\nclass Meta(type):\n    def __instancecheck__(cls, o):\n        return True\nclass C(metaclass=Meta):\n    pass\nC.__match_args__ = ('_' * 2 + 'mro' + '_' * 2,)\nmatch type(json.decoder.FLAGS):\n    case C(mro):\n        pass\nEnum = [c for c in mro if c.__name__ == 'Enum'][0]\nE = Enum._convert_('Zz', 'sys', lambda n: n == 'modules')\nprint('REACHED', E.modules.value)",
    );
    assert_reached_nothing("Enum._convert_ from the default policy", &o);
}

#[test]
fn r3_contextlib_redirect_cannot_read_sys_modules() {
    attack_with(
        "contextlib",
        "redirect_stdout._stream = 'modules'",
        "import contextlib\ncm = contextlib.redirect_stdout({})\ncm._stream = 'modules'\nwith cm:\n    mods = cm._old_targets[0]\nprint('REACHED', mods['sys'])",
    );
    // Redirecting the snippet's own output still works.
    let o = run_policy(
        &policy_allowing("contextlib"),
        "import contextlib\nclass W:\n    def __init__(self):\n        self.parts = []\n    def write(self, s):\n        self.parts.append(s)\nw = W()\nwith contextlib.redirect_stdout(w):\n    print('inside')\nprint('outside')\n''.join(w.parts)",
    );
    assert_eq!((o.status, o.stdout.as_str()), (Status::Ok, "outside\n"), "{o:?}");
    assert_eq!(o.result, Some(serde_json::json!("inside\n")));
}

#[test]
fn r4_catch_warnings_holds_no_real_module() {
    attack_with(
        "warnings",
        "catch_warnings()._module",
        "import warnings\ncw = warnings.catch_warnings()\nm = cw._module\nprint('REACHED', m, getattr(m, 'sys', None))",
    );
}

#[test]
#[cfg_attr(terrarium_skip_wasm, ignore = "TERRARIUM_SKIP_WASM=1")]
#[cfg_attr(terrarium_skip_docker, ignore = "TERRARIUM_SKIP_DOCKER=1")]
fn h2_stdout_and_stderr_together_are_held_to_max_output() {
    let code =
        "import json\nsys = json.codecs.sys\nprint('a' * 1000000)\nsys.stderr.write('b' * 1000000)\nsys.stderr.flush()";
    if let Some(o) = crate::common::run_wasm(code) {
        assert_eq!(o.status, Status::OutputLimit, "wasm: {:?}", o.error);
    }
    if let Some(o) = crate::common::run_docker(code) {
        assert_eq!(o.status, Status::OutputLimit, "docker: {:?}", o.error);
    }
    // On the interpreter tier the value counts too.
    let o = run("'x' * 3000000");
    assert_eq!(o.status, Status::OutputLimit, "{:?}", o.error);
}

// The outside attack on the native importer (issue 15, session 7).

/// `from m import name` falls back to `sys.modules[m.__name__ + "." + name]`.
#[test]
fn i1_a_renamed_proxy_cannot_import_from_sys_modules() {
    for code in [
        "import json\njson.__name__ = 'importlib'\nfrom json import _bootstrap\nprint('REACHED', _bootstrap.sys)",
        "import json\njson.__name__ = 'os'\nfrom json import path\nprint('REACHED', path)",
        "import json\njson.__name__ = 're'\nfrom json import _parser\nprint('REACHED', _parser)",
    ] {
        for (mode, o) in [("isolated", run(code)), ("embedded", run_embedded(code))] {
            assert_reached_nothing(&format!("{mode}: {code}"), &o);
            assert!(!o.stdout.contains("REACHED"), "{mode}: {o:?}");
        }
    }
}

#[test]
fn i1_a_snippets_own_import_cannot_name_a_loaded_module() {
    let o = run(
        "bi = globals()['_' * 2 + 'builtins' + '_' * 2]\nclass Fake:\n    pass\nfake = Fake()\nfake.__name__ = 'importlib'\nbi['_' * 2 + 'import' + '_' * 2] = lambda *a, **k: fake\nfrom json import _bootstrap\nprint('REACHED', _bootstrap, _bootstrap.sys)",
    );
    assert_reached_nothing("a fake module from the snippet's own __import__", &o);
}

/// A key planted in a proxy's namespace, with a real name's hash and an `__eq__`
/// that raises: the importer must not run it (nor panic on it) when it refreshes
/// the proxy.
#[test]
fn i2_a_key_planted_in_a_proxy_cannot_crash_the_importer() {
    let o = run(
        "import json\nclass M(type):\n    def __instancecheck__(cls, o):\n        return True\nclass C(metaclass=M):\n    __match_args__ = ('_' * 2 + 'dict' + '_' * 2,)\nmatch json:\n    case C(d):\n        pass\nclass K(str):\n    def __hash__(self):\n        return hash('loads')\n    def __eq__(self, o):\n        raise ValueError('boom')\ndel d['loads']\nd[K('q')] = 1\nimport json\nprint('survived')",
    );
    assert_ne!(o.status, Status::Crashed, "{o:?}");
    assert!(o.stdout.contains("survived") || o.status == Status::Exception, "{o:?}");
    // And eval/exec globals with such a key.
    let o = run(
        "class K(str):\n    def __hash__(self):\n        return hash('_' * 2 + 'builtins' + '_' * 2)\n    def __eq__(self, o):\n        raise ValueError('boom')\ng = {K('x'): 1}\nexec('y = 1', g)\nprint('ran')",
    );
    assert_ne!(o.status, Status::Crashed, "{o:?}");
}

/// The names the prelude sets on a module for the module's own code (dataclasses'
/// checked `exec`, its view of `sys`) are never in the proxy, not even while it is
/// being refreshed with snippet code running.
#[test]
fn i3_hidden_names_never_appear_in_a_proxy_mid_refresh() {
    let o = run_policy(
        &policy_allowing("dataclasses"),
        "class M(type):\n    def __instancecheck__(cls, o):\n        return True\nclass C(metaclass=M):\n    __match_args__ = ('_' * 2 + 'dict' + '_' * 2,)\nimport dataclasses\nmatch dataclasses:\n    case C(d):\n        pass\nleak = {}\ndef mk(t):\n    class K(str):\n        def __hash__(self):\n            return hash(t)\n        def __eq__(self, o):\n            for k, v in list(d.items()):\n                if type(k) is str and k in ('exec', 'inspect', 'sys'):\n                    leak[k] = v\n            return False\n    return K\nfor t in ('exec', 'inspect', 'sys'):\n    d[mk(t)('x' + t)] = 1\nimport dataclasses as again\nprint(sorted(leak))",
    );
    assert_eq!((o.status, o.stdout.as_str()), (Status::Ok, "[]\n"), "{o:?}");
}

/// A field name from `__annotate__` is pasted into the source of the methods
/// dataclasses writes: it must be an identifier, and that source runs as snippet
/// code (it sees no real `sys.modules`).
#[test]
fn i4_a_dataclass_field_name_cannot_inject_code() {
    let o = run_policy(
        &policy_allowing("dataclasses"),
        r#"import dataclasses
P = """x=0):
  pass
 class F: pass
 f = F()
 f.__name__ = 'importlib'
 __builtins__['__import__'] = lambda *a, **k: f
 from json import _bootstrap
 sys = _bootstrap.sys
 B = sys.modules['builtins']
 print('bootstrap:', _bootstrap, 'sys:', sys)
 print('builtins:', B.open, B.exec, B.eval, B.compile, B.__import__)
 print('frame:', sys._getframe(), 'exe:', sys.executable)
 print('disallowed:', _bootstrap._gcd_import('marshal'), _bootstrap._gcd_import('inspect'))
 raise LookupError(B, sys)
 def zz(y=0"""
class C:
    def __annotate__(format):
        return {P: dataclasses.InitVar(int)}
try:
    dataclasses.dataclass(C)
except LookupError as e:
    B, sys = e.args
print("back in snippet:", B, sys)
ns = {}
B.exec("import os as o; r = o.listdir", ns)
print(ns["r"])
"#,
    );
    assert_reached_nothing("a field name that is code", &o);
    assert!(o.error.as_ref().is_some_and(|e| e.message.contains("must be identifiers")), "{o:?}");
}

/// Modules that run text or import by name with the interpreter's own builtins are
/// never served by this tier, whatever the policy allows (the router sends such
/// requests to a CPython tier).
#[test]
fn i5_only_vetted_modules_are_served() {
    for (module, code) in [
        ("timeit", "import timeit\nprint('REACHED', timeit.timeit('import sys', number=1))"),
        (
            "rlcompleter",
            "import rlcompleter\nns = {}\nrlcompleter.Completer(ns).complete('x.', 0)\nprint('REACHED', ns)",
        ),
        ("logging", "import logging.config\nprint('REACHED')"),
    ] {
        let o = attack_with(module, module, code);
        assert_eq!(o.status, Status::Denied, "{module}: {o:?}");
        assert!(o.error.as_ref().is_some_and(|e| e.message.contains("does not provide")), "{module}: {o:?}");
        assert!(!terrarium::tier::rustpython::serves_module(module), "{module}");
    }
    // What the fences around typing give back to honest code.
    let o = run_policy(
        &policy_allowing("typing"),
        "import typing\nclass N(typing.NamedTuple):\n    a: int\n    b: str = 'x'\nclass TD(typing.TypedDict):\n    k: int\ndef f(a: 'int') -> 'str':\n    pass\n[repr(N(3)), TD(k=1), sorted(typing.get_type_hints(f))]",
    );
    assert_eq!(o.result, Some(serde_json::json!(["N(a=3, b='x')", {"k": 1}, ["a", "return"]])), "{o:?}");
}

/// contextlib's redirect reads `getattr(sys, name)` with a name the snippet chose:
/// the `sys` view's window on sys.modules must not be steerable once held.
#[test]
fn g1_the_sys_views_window_cannot_be_widened() {
    let o = run_policy(
        &policy_allowing("contextlib"),
        r#"import contextlib
r = contextlib.redirect_stdout(None)
r._stream = "modules"            # contextlib's sys is the prelude's _SysView; getattr(view, "modules")
try:
    with r:                      # __enter__: _old_targets.append(getattr(sys, "modules")), then setattr fails
        pass
except AttributeError as e:
    print("setattr refused:", e)
mods = r._old_targets[0]
print("got:", mods)
mods._names = frozenset(["sys", "builtins", "_frozen_importlib", "marshal"])
sys = mods.get("sys")            # _Modules.get runs as prelude code: real sys.modules
B = mods.get("builtins")
print("real:", sys, B)
print(B.open, B.exec, B.eval, B.compile)
print("exe:", sys.executable)
print("frame:", sys._getframe())
ns = {}
B.exec("import sys, marshal, inspect\nf = sys._getframe(0)\nimp = __import__\nn = len(sys.modules)", ns)
print(ns["f"], ns["imp"], ns["n"], ns["marshal"], ns["inspect"])
print(mods.get("_frozen_importlib"))
print("code:", B.compile("1+1", "x", "eval"), B.eval("6*7"))
"#,
    );
    assert_reached_nothing("contextlib's view of sys.modules, widened", &o);
    // Replacing its methods only runs the snippet's own code; a str subclass does
    // not pass for a name the view lets through.
    let o = run_policy(
        &policy_allowing("contextlib"),
        "import contextlib\nr = contextlib.redirect_stdout(None)\nr._stream = 'modules'\ntry:\n    with r:\n        pass\nexcept AttributeError:\n    pass\nm = r._old_targets[0]\ntype(m).get = lambda self, n, d=None: n\nprint(m.get('sys'))\nclass S(str):\n    def __eq__(self, o):\n        return True\n    def __hash__(self):\n        return hash('stdout')\nr2 = contextlib.redirect_stdout(None)\nr2._stream = S('_getframe')\nwith r2:\n    pass\nprint('REACHED', r2._old_targets)",
    );
    assert_reached_nothing("a str subclass passing for stdout", &o);
}

/// A class that claims `__module__ = "dataclasses"` must not hand its generated
/// methods dataclasses' own globals (its loader ran stdlib code with the real
/// builtins on any object); no loaded module keeps its loader or spec.
#[test]
fn d1_a_dataclass_cannot_borrow_a_modules_globals() {
    let o = run_policy(
        &policy_allowing("dataclasses"),
        r#"import dataclasses
got = {}
class C:
    __module__ = "dataclasses"
    __loader__: dataclasses.InitVar[int] = dataclasses.field(init=False)
    def __post_init__(self, loader):
        got['loader'] = loader
dataclasses.dataclass(C)
C()
FI = got['loader']
print("loader:", FI)
class Spec:
    name = "reprlib"
class Fake:
    __spec__ = Spec()
m = Fake()
FI.exec_module(m)          # runs frozen reprlib's code in m's instance dict, with the real builtins
B = m.builtins             # reprlib does `import builtins`: the real module
print("builtins:", B, B.open, B.exec, B.eval, B.compile)
ns = {"__builtins__": B}
B.exec("import sys, marshal, inspect, _frozen_importlib as fi\nf = sys._getframe(0)\nimp = __import__", ns)
sys = ns["sys"]
print("sys:", sys, sys.executable, len(sys.modules))
print("disallowed:", ns["marshal"], ns["inspect"], ns["fi"])
print("frame:", ns["f"], "import:", ns["imp"], "code:", B.compile("1", "x", "eval"))
"#,
    );
    assert_reached_nothing("FrozenImporter through dataclasses' globals", &o);
    let o = run_policy(
        &policy_allowing("dataclasses"),
        "import dataclasses\ngot = {}\nclass C:\n    __module__ = 'dataclasses'\n    __spec__: dataclasses.InitVar[int] = dataclasses.field(init=False)\n    def __post_init__(self, spec):\n        got['spec'] = spec\ndataclasses.dataclass(C)\nC()\nprint('REACHED', got['spec'].loader)",
    );
    assert_reached_nothing("a module's spec through dataclasses' globals", &o);
}

/// A module stdlib code imports lazily during a run (functools.singledispatch
/// imports typing) is hardened as soon as that import finishes, and evaluated
/// annotations never get a module's namespace as their locals.
#[test]
fn j1_a_module_loaded_lazily_during_a_run_is_hardened_at_once() {
    let o = run_policy(
        &policy_allowing("functools"),
        r#"import functools
got = []
def cb(x):
    got.append(x)
    return int
class B:                      # a class claiming to be from "sys"
    __module__ = "sys"
    a: "cb(modules)"          # evaluated with locals = sys.__dict__ (the real one)
B.cb = cb
flip = []
class O:                      # not a class for singledispatch, a class for get_type_hints
    __mro__ = (B,)
    @property
    def __class__(self):
        return type if flip else O
    @property
    def __annotate__(self):
        flip.append(1)
        return lambda fmt: {}
sd = functools.singledispatch(lambda x: 0)
try:
    sd.register(O())          # lazily imports typing: its `sys` is the real one
except TypeError:
    pass
mods = got[0]
sys, Bi = mods["sys"], mods["builtins"]
print("real:", sys, Bi, Bi.open, Bi.exec, Bi.eval, Bi.compile)
print("exe:", sys.executable, "| importer:", mods["_frozen_importlib"], "| marshal:", mods["marshal"])
ns = {}
Bi.exec("import sys, inspect, _frozen_importlib as fi\nf = sys._getframe(0)\nn = len(sys.modules)\nimp = __import__\ndis = __import__('dis')", ns)
print("frame:", ns["f"], "| n:", ns["n"], "| import:", ns["imp"], "| refused imports:", ns["inspect"], ns["dis"])
print("code:", Bi.compile("1+1", "x", "eval"), Bi.eval("6*7"))
"#,
    );
    assert_reached_nothing("typing loaded by functools, then get_type_hints", &o);
}

/// inspect, loaded lazily by enum during a run, sees no real sys either.
#[test]
fn j2_inspect_loaded_lazily_reaches_no_host_path() {
    let o = run_policy(
        &policy_allowing("enum"),
        r#"import enum
class M(type):
    def __instancecheck__(cls, o): return True
class C(metaclass=M):
    __match_args__ = ("_"*2 + "signature" + "_"*2,)
match enum.Enum:
    case C(sig): pass            # EnumType.__signature__ does `from inspect import ...`: a fresh inspect
Signature = type(sig)
class D:                          # a "method descriptor" with a text signature
    __module__ = "sys"
    __text_signature__ = "(exe=executable, prefix=prefix, ver=version, loaded=marshal.__name__, fi=_frozen_importlib.__name__)"
    def __get__(self, *a): return self
    def __call__(self, *a): pass
print(Signature, Signature.from_callable(D()))
"#,
    );
    assert!(!o.stdout.contains('/'), "a host path: {o:?}");
    assert!(!o.stdout.contains("marshal"), "{o:?}");
}

/// A served submodule first imported after the seal (not preloaded) is served.
#[test]
fn a_submodule_imported_after_the_seal_is_served() {
    let o = run_policy(
        &policy_allowing("html"),
        "import html.parser\nclass P(html.parser.HTMLParser):\n    def handle_starttag(self, tag, attrs):\n        print(tag)\nP().feed('<b>x</b>')",
    );
    assert_eq!((o.status, o.stdout.as_str()), (Status::Ok, "b\n"), "{o:?}");
}

/// A hook planted on a stdlib class (EnumType) ran inside a module's import-time
/// code and read that module's namespace through the sys views' window for
/// modules still loading. Stdlib classes are immutable for snippets, and that
/// window is open only to the loading module's own code.
#[test]
fn k1_a_hook_on_a_stdlib_class_cannot_run_inside_import_time_code() {
    let o = run(r#"import json
class M(type):
    def __instancecheck__(cls, o): return True
def native(obj, name):            # read any attribute natively (computed __match_args__)
    C = M("C", (), {"__match_args__": (name,)})
    match obj:
        case C(v): return v
Flag = type(json.decoder.FLAGS)                 # re.RegexFlag, an Enum class, public in json.decoder
EnumType = type(Flag)
Enum = native(Flag, "_"*2 + "mro" + "_"*2)[-2]
orig = EnumType._check_for_existing_members_
got = {}
def hook(mcls, class_name, bases):              # runs inside every Enum class creation
    if not got:
        got[0] = 1
        E = Enum._convert_("TT", "inspect", lambda n: n in ("sys", "builtins"))   # enum's sys view admits an initializing module
        got.update({m.name: m.value for m in E})
    return orig(class_name, bases)
EnumType._check_for_existing_members_ = classmethod(hook)
native(Enum, "_"*2 + "signature" + "_"*2)       # EnumType.__signature__: `from inspect import ...` (real import); inspect defines _ParameterKind(IntEnum)
sys, B = got["sys"], got["builtins"]
print("real:", sys, B, B.open, B.exec, B.eval, B.compile)
print("exe:", sys.executable)
ns = {}
B.exec("import sys, marshal, _frozen_importlib as fi\nf = sys._getframe(0)\nn = len(sys.modules)\nimp = __import__", ns)
print("frame:", ns["f"], "| n:", ns["n"], "| import:", ns["imp"], "| refused imports:", ns["marshal"], ns["fi"])
print("code:", B.compile("1+1", "x", "eval"), B.eval("6*7"))
"#);
    assert_reached_nothing("a hook on EnumType during inspect's import", &o);
    let o = run("import json\nt = type(json.decoder.FLAGS)\nt.value = property(lambda self: 1)\nprint('REACHED')");
    assert_reached_nothing("a property planted on a stdlib enum", &o);
    assert!(o.error.as_ref().is_some_and(|e| e.message.contains("immutable")), "{o:?}");
}

#[test]
fn k3_contextlibs_view_has_no_window_on_sys_modules() {
    let policy = crate::common::default_policy_with(
        r#"allowed_modules: ["math", "time", "json"]"#,
        r#"allowed_modules: ["math", "time", "json", "enum", "contextlib", "html", "re"]"#,
    );
    let o = run_policy(
        &policy,
        &(NATIVE_ATTRIBUTE.to_string()
            + r#"import enum, contextlib
class R(contextlib.redirect_stderr):           # contextlib's redirect hands out its sys view's `modules` window
    _stream = "modules"
r = R(None)
try:
    r.__enter__()
except AttributeError:
    pass
window = r._old_targets[0]
got = {}
def value(self):                               # Enum.value: read by re._compile for every RegexFlag
    if "m" not in got:
        m = window.get("html.parser")          # still initializing: the view admits it
        if m is not None:
            got["m"] = m
    return self._value_
enum.Enum.value = property(value)
import html.parser                             # its import-time code: re.compile(..., re.VERBOSE)
m = got["m"]
print("module:", m, m.re, m._markupbase)
B = native(m, "_"*2 + "builtins" + "_"*2)
print("builtins:", type(B), B["open"], B["exec"], B["eval"], B["compile"])
ns = {}
B["exec"]("import sys, marshal, _frozen_importlib as fi\nf = sys._getframe(0)\nexe = sys.executable\nn = len(sys.modules)", ns)
print("frame:", ns["f"], "| exe:", ns["exe"], "| n:", ns["n"], "| refused imports:", ns["marshal"], ns["fi"])
"#),
    );
    assert_reached_nothing("contextlib's window, a planted Enum.value, html.parser loading", &o);
}

/// A native callable as a snippet object's finalizer runs, with no frame of its
/// own, wherever the collector happens to run: inside a module's import-time code
/// it passed the frame check for modules still loading. After the seal no sys view
/// shows a module that is still loading.
#[test]
fn l1_a_finalizer_inside_import_time_code_reaches_no_module() {
    let o = run(r#"import json
D = "_"*2 + "del" + "_"*2
class M(type):
    def __instancecheck__(cls, o): return True
def native(obj, name):                      # native attribute read (computed __match_args__)
    C = M("C", (), {"__match_args__": (name,)})
    match obj:
        case C(v): return v
Flag = type(json.decoder.FLAGS)             # re.RegexFlag, public in json.decoder
Enum = native(Flag, "_"*2 + "mro" + "_"*2)[-2]
got = []
# 1. sync with the automatic cycle collector: a canary dies at the next collection
canary = []
def cd(self):
    canary.append(1)
Kc = type("Kc", (), {D: cd})
a = Kc(); a.me = a; del a
keep = []
while not canary:
    keep.append([0])
pre = [[0] for i in range(1000)]            # the next collection now falls ~1000 allocations into inspect's import
# 2. cyclic garbage whose __del__ is a chain of NATIVE callables: no snippet frame on the stack
filt = frozenset(("sys", "builtins")).__contains__
chain = map(got.append, map(Enum._convert_, ["T"], ["inspect"], [filt]))
K = type("K", (), {D: staticmethod(chain.__next__)})
o = K(); o.me = o
del o
# 3. EnumType.__signature__ lazily imports inspect from enum's frame; the collector
#    runs the chain inside inspect's import-time code, so the frame walk sees only trusted frames
native(Enum, "_"*2 + "signature" + "_"*2)
E = got[0]
sys, B = E.sys.value, E.builtins.value
print("real:", sys, B, B.open, B.exec, B.eval, B.compile)
print("exe:", sys.executable)
ns = {}
B.exec("import sys, marshal, _frozen_importlib as fi\nf = sys._getframe(0)\nn = len(sys.modules)\nimp = __import__\nmods = sorted(sys.modules)[:6]", ns)
print("frame:", ns["f"], "| n:", ns["n"], "| import:", ns["imp"], "| refused imports:", ns["marshal"], ns["fi"], ns["mods"])
print("code:", B.compile("1+1", "x", "eval"), B.eval("6*7"))
try:
    B.open("/etc/hostname").read()
except Exception as e:
    print("open:", type(e).__name__, e)
"#);
    assert_reached_nothing("Enum._convert_ from a finalizer during inspect's import", &o);
}

/// A finalizer that raises inside trusted code used to panic the interpreter (no
/// sys.unraisablehook).
#[test]
fn l3_a_finalizer_that_raises_does_not_crash_the_child() {
    let o = run(r#"import json
D = "_"*2 + "del" + "_"*2
class M(type):
    def __instancecheck__(cls, o): return True
def native(obj, name):
    C = M("C", (), {"__match_args__": (name,)})
    match obj:
        case C(v): return v
Enum = native(type(json.decoder.FLAGS), "_"*2 + "mro" + "_"*2)[-2]
canary = []
def cd(self):
    canary.append(1)
Kc = type("Kc", (), {D: cd})
a = Kc(); a.me = a; del a
keep = []
while not canary:
    keep.append([0])
pre = [[0] for i in range(1000)]
chain = map({}.__getitem__, ["nope"])
K = type("K", (), {D: staticmethod(chain.__next__)})
o = K(); o.me = o
del o
native(Enum, "_"*2 + "signature" + "_"*2)
print("done")
"#);
    assert_ne!(o.status, Status::Crashed, "{o:?}");
}

/// `from pkg import name` imports `pkg.name` when it is not an attribute yet: that
/// submodule is checked against the policy and the served list before anything runs.
#[test]
fn m1_a_from_import_does_not_run_a_submodule_the_tier_refuses() {
    let o = run("from json import tool\nprint('REACHED')");
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().is_some_and(|e| e.message.contains("json.tool")), "{o:?}");
    let o = run("from json import decoder, loads\nprint(decoder.JSONDecoder, loads('1'))");
    assert_eq!(o.status, Status::Ok, "{o:?}");
}

/// The attacks' prologue: `native(obj, name)` reads an attribute the way a class
/// pattern does, natively (what the removed attributes must withstand).
const NATIVE_ATTRIBUTE: &str = r#"class M(type):
    def __instancecheck__(cls, o): return True
def native(obj, name):
    C = M("C", (), {"__match_args__": (name,)})
    match obj:
        case C(v): return v
"#;

/// Round 9: a snippet's `__del__`, timed by a canary to fire during the codec
/// search's lazy `import encodings.cp1252`, read `EnumType.__signature__`, which
/// imported `inspect` inside that import; unhardened until the outer import ended,
/// its `_signature_fromstr` evaluated `sys.executable` against the real `sys`. The
/// cycle collector is now paused while an import is in progress.
#[test]
fn n1_a_finalizer_cannot_run_while_an_import_is_in_progress() {
    let code = NATIVE_ATTRIBUTE.to_string()
        + r#"
import json
U = "_" * 2
D = U + "del" + U
Enum = native(type(json.decoder.FLAGS), U + "mro" + U)[-2]
def g(self, *a): return self
def c(self, *a): return 1
F = type("F", (), {U + "get" + U: g, U + "call" + U: c,
                   U + "text_signature" + U: "(a=sys.executable, b=sys.prefix)", U + "module" + U: "nonexistent"})
got = []
def fin(self):
    try:
        sig = native(Enum, U + "signature" + U)
        got.append(str(type(sig).from_callable(F())))
    except BaseException as e:
        got.append("E " + type(e).__name__)
for pre_count in (1700, 1800, 1900, 1950):
    canary = []
    def cd(self): canary.append(1)
    Kc = type("Kc", (), {D: cd}); a = Kc(); a.me = a; del a
    keep = []
    while not canary: keep.append([0])
    pre = [[0] for i in range(pre_count)]
    K = type("K", (), {D: fin}); o = K(); o.me = o; del o
    "abc".encode(["cp1252", "cp037", "cp437", "cp850"][len(got) % 4])
print("got:", got)
"#;
    let o = run(&code);
    let text = format!("{} {} {:?}", o.stdout, o.stderr, o.error);
    assert!(!text.contains("/usr") && !text.contains(env!("CARGO_BIN_EXE_terrarium")), "host paths: {text}");
    assert!(!text.contains("a='"), "a signature evaluated against the real sys: {text}");
}

/// Round 10: snippet code run inside a trusted import without the cycle collector:
/// a `__del__` on the refcount drop when `re.compile` evicts the snippet's pattern
/// from its cache, and an `__eq__` reached through a hash collision in that cache,
/// both inside `encodings.idna`'s import-time `re.compile`. Modules are now
/// hardened as soon as their own load finishes, so `inspect`, imported there, never
/// holds the real `sys` where the snippet can reach it.
#[test]
fn o1_snippet_code_run_inside_an_import_finds_every_loaded_module_hardened() {
    let prologue = NATIVE_ATTRIBUTE.to_string()
        + r#"
import re
U = "_" * 2
Enum = native(type(re.IGNORECASE), U + "mro" + U)[-2]
def g(self, *a): return self
def c(self, *a): return 1
F = type("F", (), {U + "get" + U: g, U + "call" + U: c,
                   U + "text_signature" + U: "(a=sys.executable, b=sys.prefix)", U + "module" + U: "nonexistent"})
got = []
def leak():
    got.append("in")
    try:
        got.append(str(type(native(Enum, U + "signature" + U)).from_callable(F())))
    except BaseException as e:
        got.append("E " + type(e).__name__)
"#;
    let evicted = prologue.clone()
        + r#"
P = type("P", (str,), {U + "del" + U: lambda self: leak()})
for i in range(600): re.compile("a%d" % i)
re.compile(P("zz"))
for i in range(511): re.compile("b%d" % i)
"abc".encode("idna")
print("got:", got)
"#;
    let collided = prologue
        + r#"
LIT = "[\u002E\u3002\uFF0E\uFF61]"
class EM(type):
    def __hash__(cls): return hash(str)
    def __eq__(cls, other):
        if not got: leak()
        return False
class P(str, metaclass=EM):
    def __hash__(self): return hash(LIT)
for i in range(300): re.compile("a%d" % i)
re.compile(P("zz"))
"abc".encode("idna")
print("got:", got)
"#;
    for (what, code) in [("a finalizer on cache eviction", evicted), ("an __eq__ in a cache lookup", collided)] {
        let o = run_policy(&policy_allowing("re"), &code);
        let text = format!("{} {} {:?}", o.stdout, o.stderr, o.error);
        assert!(text.contains("'in'"), "{what}: the hook did not run, so this tests nothing: {text}");
        assert!(!text.contains("a='") && !text.contains("/usr"), "{what}: the real sys inside an import: {text}");
    }
}

/// Round 10: `str.encode` imported `encodings.<name>` for any codec the snippet
/// named, and the bytes-to-bytes ones import modules the tier does not serve (bz2,
/// compression, zlib, binascii, quopri). The codec search now finds text codecs only.
#[test]
fn o2_a_codec_name_does_not_import_modules_the_tier_does_not_serve() {
    let o = run("out = []\nfor e in ('bz2', 'zlib', 'base64', 'hex', 'quopri', 'uu', 'rot13', 'bz2_codec'):\n    \
         try:\n        'abc'.encode(e)\n        out.append(e + ' found')\n    except LookupError as x:\n        \
         out.append(str(x))\nprint(out)\nprint('é'.encode('cp1252'), 'x'.encode('idna'), b'\\xe9'.decode('latin-1'))");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(!o.stdout.contains("found") && !o.stdout.contains("not a text encoding"), "{}", o.stdout);
    assert!(o.stdout.contains("unknown encoding: bz2") && o.stdout.contains("b'\\xe9' b'x' é"), "{}", o.stdout);
}

/// Round 11: a hook planted in `re`'s cache ran inside `html.parser`'s import-time
/// `re.compile`, imported the half-loaded module (a proxy of it), then made the load
/// fail, so that the module it held was never hardened. A module still loading is
/// now refused.
#[test]
fn p1_a_module_still_loading_is_not_handed_to_a_snippet() {
    let policy = crate::common::default_policy_with(
        r#"allowed_modules: ["math", "time", "json"]"#,
        r#"allowed_modules: ["math", "time", "json", "re", "html"]"#,
    );
    let o = run_policy(
        &policy,
        r#"import re, html
got = []
LIT = "&#(?:[0-9]+|[xX][0-9a-fA-F]+)[^0-9a-fA-F]"
class EM(type):
    def __hash__(cls): return hash(str)
    def __eq__(cls, other):
        if not got:
            got.append(__import__("html.parser", None, None, ["interesting_normal"]))
            raise ValueError("abort the load")
        return False
class P(str, metaclass=EM):
    def __hash__(self): return hash(LIT)
for i in range(300): re.compile("a%d" % i)
re.compile(P("zz"))
try:
    import html.parser
except ValueError as e:
    print("first import", e)
print("REACHED", sorted(k for k in dir(got[0]) if not k.startswith("_")))
"#,
    );
    assert_eq!(o.status, Status::Denied, "{o:?}");
    assert!(o.error.as_ref().is_some_and(|e| e.message.contains("still loading")), "{o:?}");
    assert!(!o.stdout.contains("REACHED"), "{o:?}");
}

/// The run's last value is read by the host from the interpreter's storage: a
/// subclass whose methods would run the snippet's code after its run (when the
/// deadline and the output capture are no longer the run's) is never called, and a
/// cycle or a float that JSON cannot carry gives no value rather than a hang.
#[test]
fn the_result_is_read_without_running_the_snippets_code() {
    let code = r#"
class D(dict):
    def items(self): print("items ran"); return [("forged", 1)]
    def keys(self): print("keys ran"); return ["forged"]
    def __iter__(self): print("iter ran"); return iter(["forged"])
    def __getitem__(self, k): print("getitem ran"); return "forged"
class L(list):
    def __iter__(self): print("list iter ran"); return iter(["forged"])
    def __len__(self): print("len ran"); return 0
class S(str):
    def __str__(self): print("str ran"); return "forged"
    def __repr__(self): print("repr ran"); return "forged"
class I(int):
    def __repr__(self): print("int repr ran"); return "99"
class F(float):
    def __repr__(self): print("float repr ran"); return "99.0"
D(a=L([S("s"), I(7), F(1.5)]))
"#;
    let expected = serde_json::json!({"a": ["s", 7, 1.5]});
    for o in [run(code), run_embedded(code)] {
        assert_eq!(o.status, Status::Ok, "{o:?}");
        assert_eq!(o.stdout, "", "the snippet's methods ran: {o:?}");
        assert_eq!(o.result, Some(expected.clone()), "{o:?}");
    }
    for code in ["x = []\nx.append(x)\nx", "d = {}\nd['d'] = d\nd", "float('nan')", "[1, float('inf')]", "{(1, 2): 3}"]
    {
        for o in [run(code), run_embedded(code)] {
            assert_eq!(o.status, Status::Ok, "{code:?}: {o:?}");
            assert_eq!(o.result, None, "{code:?} has no JSON form: {o:?}");
        }
    }
    // Keys as json.dumps writes them; integers past 64 bits as a double (within
    // the JSON parser's rounding).
    let o = run("{1: 'a', 1.5: 'b', False: 'c', None: 'd', 'k': 2**70}");
    let mut got = o.result.clone().unwrap_or_default();
    let k = got.as_object_mut().and_then(|m| m.remove("k")).and_then(|k| k.as_f64()).unwrap_or_default();
    assert!((k / 2f64.powi(70) - 1.0).abs() < 1e-15, "{o:?}");
    assert_eq!(got, serde_json::json!({"1": "a", "1.5": "b", "false": "c", "null": "d"}), "{o:?}");
}

// The outside attack on issue 17's changes (embedded reuse, the native value
// reader): a finalizer, a value and a collection, each aimed at the gap between
// one run and the next.

/// A snippet that leaves cyclic garbage (`G(3)`) whose `__del__` runs `finalizer`,
/// built so that the collector's young generation is `slack` allocations short of
/// its threshold when the snippet's `last` lines run: the next allocations
/// anywhere (the value's reading, the interpreter's set-up for the next run)
/// collect it. `setup` comes first.
fn timed_finalizer(setup: &str, finalizer: &str, last: &str, slack: usize) -> String {
    format!(
        r#"
state = {{"fired": 0}}
{setup}
class G:
    def __init__(self, tag): self.tag = tag; self.me = self
    def __del__(self):
        state["fired"] = self.tag
        if self.tag == 3:
            {finalizer}
keep = []
G(1)
while state["fired"] != 1: keep.append([])
G(2)
n = 0
while state["fired"] != 2:
    keep.append([]); n += 1
G(3)
for i in range(n - {slack}): keep.append([])
{last}
"#
    )
}

/// F3 of the attack on issue 17: a finalizer left behind by one run of an
/// embedded interpreter ran between runs, where no deadline reached it, and the
/// next request was reported as timing out. Now the collector runs only inside
/// runs, and a run's garbage is collected before it ends: the finalizer is its
/// own run's (stopped by its deadline), and the next request is served.
#[test]
fn a_finalizer_left_by_one_embedded_run_is_not_the_next_requests() {
    for slack in 1..=4 {
        let exec = terrarium::EmbeddedExecutor::with_workers(Policy::default_policy(), 1);
        let short = terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() };
        let spinning = timed_finalizer("", "while True: pass", "None", slack);
        let first = crate::common::exec(&exec, ExecRequest::new(spinning).with_overrides(short));
        assert!(matches!(first.status, Status::Ok | Status::Timeout), "slack {slack}: {first:?}");
        let started = Instant::now();
        let next = crate::common::exec(&exec, ExecRequest::new("1 + 1"));
        assert_eq!(
            (next.status, next.result.clone()),
            (Status::Ok, Some(serde_json::json!(2))),
            "slack {slack}: {next:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "slack {slack}: the next request waited");
    }
}

/// Runs `code` `runs` times on one embedded interpreter: each run must end `ok` and
/// print nothing (the snippets below print only when a finalizer of theirs runs in
/// a run other than its own).
fn assert_runs_end_ok_and_silent(code: &str, runs: usize) {
    let exec = terrarium::EmbeddedExecutor::with_workers(Policy::default_policy(), 1);
    for run in 1..=runs {
        let o = crate::common::exec(&exec, ExecRequest::new(code));
        assert_eq!((o.status, o.stdout.as_str()), (Status::Ok, ""), "run {run}: {o:?}");
    }
}

/// Round 2 of the review of issue 17's embedded collection (finding 3a): a
/// collection of the young generation only missed an old cycle that a run made
/// garbage. Run 1 hangs a cycle with a finalizer on `json.encoder.ESCAPE_DCT` (a
/// real dict every run of the interpreter shares), run 2 unhooks it, and the
/// finalizer ran in a later request (its output there, or a spin to its deadline).
/// Now what survives a run's collection is frozen: the unhooked cycle is never
/// finalized, in run 2 or after (runs 3 and 4 make garbage to collect).
#[test]
fn an_old_cycle_a_run_unhooks_is_never_finalized_in_a_later_run() {
    let code = r#"
import json
D = json.encoder.ESCAPE_DCT
D["n"] = D.get("n", 0) + 1
n = D["n"]
if n == 1:
    class O:
        def __del__(self):
            if D["n"] != 2:
                print("finalized in run %d, not run 2" % D["n"])
    o = O(); o.me = o
    D["k"] = o
elif n == 2:
    del D["k"]
else:
    junk = [[] for _ in range(20000)]; del junk
None
"#;
    assert_runs_end_ok_and_silent(code, 4);
}

/// Finding 3b of the same review: a finalizer that runs during the end-of-run
/// collection made new cyclic garbage with a finalizer of its own, which that
/// pass had not seen; it was finalized during the next request. The collection
/// repeats until a pass frees nothing (and an interpreter whose finalizers never
/// stop making garbage is not reused).
#[test]
fn garbage_a_finalizer_makes_is_collected_in_the_same_run() {
    let exec = terrarium::EmbeddedExecutor::with_workers(Policy::default_policy(), 1);
    let chain = "class W:\n    def __del__(self):\n        print('W')\n\
                 class X:\n    def __del__(self):\n        w = W(); w.me = w\n\
                 x = X(); x.me = x\ndel x\nNone";
    let first = crate::common::exec(&exec, ExecRequest::new(chain));
    assert_eq!((first.status, first.stdout.as_str()), (Status::Ok, "W\n"), "{first:?}");
    let next = crate::common::exec(&exec, ExecRequest::new("print('next')"));
    assert_eq!(next.stdout, "next\n", "{next:?}");
    // Finalizers that make garbage without end: the run ends, the next is clean.
    let endless = "class E:\n    def __del__(self):\n        e = E(); e.me = e\ne = E(); e.me = e\ndel e\nNone";
    let _ = crate::common::exec(&exec, ExecRequest::new(endless));
    let after = crate::common::exec(&exec, ExecRequest::new("print('after')"));
    assert_eq!((after.status, after.stdout.as_str()), (Status::Ok, "after\n"), "{after:?}");
}

/// The re-review of that fix: a finalizer that resurrects its own object while it
/// makes new cyclic garbage left a pass that counted nothing collected, so the
/// repeated collection stopped, and the new garbage's finalizer ran in the next
/// request. The collection now repeats until a pass leaves nothing new in the
/// youngest generation.
#[test]
fn a_resurrecting_finalizers_garbage_is_finalized_in_its_run() {
    let code = r#"
import json
D = json.encoder.ESCAPE_DCT
D["r"] = D.get("r", 0) + 1
class W:
    def __del__(self):
        if self.born != D["r"]:
            print("W born in run %d finalized in run %d" % (self.born, D["r"]))
class X:
    def __del__(self):
        w = W(); w.me = w; w.born = D["r"]
        w.x = self
x = X(); x.me = x
del x
None
"#;
    assert_runs_end_ok_and_silent(code, 4);
}

/// F5 of the attack on issue 17: reading a value allocated (a big integer's
/// range check), the allocation ran a collection, and the snippet's finalizer
/// changed the value halfway through the read. The collector is paused while the
/// value is read: what is returned is what the snippet left.
#[test]
fn no_finalizer_runs_while_the_value_is_read() {
    for slack in 0..=5 {
        let code = timed_finalizer(
            "inner = [\"before\"]\nbig = [10**30] * 50 + [inner]",
            "inner[0] = \"mutated after the snippet ended\" if state.get(\"ended\") else \"mutated by the snippet\"",
            "state[\"ended\"] = True\nbig",
            slack,
        );
        for o in [run(&code), run_embedded(&code)] {
            assert_eq!(o.status, Status::Ok, "slack {slack}: {o:?}");
            let last = o.result.as_ref().and_then(|v| v.as_array()).and_then(|a| a.last()).cloned();
            assert_ne!(
                last,
                Some(serde_json::json!(["mutated after the snippet ended"])),
                "slack {slack}: the value changed while it was read: {o:?}"
            );
        }
    }
}

/// F4 of the attack on issue 17: the value reader counted items, not bytes, so a
/// 3 MB string was `ok` under a 1 MiB cap in embedded mode, and a 10 MB string
/// listed 1,000 times was copied until the host process aborted. Each string now
/// costs its length and each integer its digits, in both modes, and integers past
/// Python's 4,300-digit limit have no JSON form (as in `json.dumps`).
#[test]
fn a_value_is_measured_in_bytes_not_items() {
    for code in [
        "'x' * 3_000_000",
        "['x' * 100_000] * 100",
        "['x' * 10**7] * 1000",
        "{'k' * 2_000_000: 1}",
        // Counted as their text, escapes and separators included (round 2).
        "[-1.2345678901234567e-300] * 1_000_000",
        "'\\x00' * 1_000_000",
        "[None] * 300_000",
    ] {
        for (mode, o) in [("isolated", run(code)), ("embedded", run_embedded(code))] {
            assert_eq!(o.status, Status::OutputLimit, "{mode} {code:?}: {o:?}");
            assert!(o.result.is_none(), "{mode} {code:?}: {o:?}");
        }
    }
    for code in ["10**100000", "[10**5000] * 1000", "{10**5000: 1}"] {
        for (mode, o) in [("isolated", run(code)), ("embedded", run_embedded(code))] {
            assert_eq!((o.status, o.result.clone()), (Status::Ok, None), "{mode} {code:?} has no JSON form: {o:?}");
        }
    }
    let o = run_embedded("['x' * 1000] * 100");
    assert_eq!(o.result.as_ref().and_then(|v| v.as_array()).map(Vec::len), Some(100), "within the cap: {o:?}");
}

/// Round 2 of the attack on issue 17, F1: a native (`globals`) as a class's
/// `__del__` ran with no frame on the stack as the run's objects were dropped,
/// the frame lookup panicked, and a second such panic in a destructor aborted the
/// host process. Now no frame means "not the snippet's code": refused, and the
/// host goes on serving.
#[test]
fn a_native_finalizer_with_no_frame_is_refused_not_a_panic() {
    let codes = [
        "class C:\n    __del__ = globals\na = C(); b = C()",
        "class C:\n    __del__ = locals\na = C(); b = C()",
        "class E(Exception):\n    __str__ = globals\nraise E()",
    ];
    for code in codes {
        for (mode, o) in [("isolated", run(code)), ("embedded", run_embedded(code))] {
            assert!(matches!(o.status, Status::Ok | Status::Denied | Status::Exception), "{mode} {code:?}: {o:?}");
        }
    }
    assert_eq!(run_embedded("1 + 1").result, Some(serde_json::json!(2)), "the embedded tier stopped serving");
}

/// Round 2, F2: a cycle hung on a module proxy (`math.keep = c`) outlived its
/// run's collection (the proxies were dropped only when the next run began) and
/// its finalizer ran in the next request. The proxies now go with the run.
#[test]
fn a_cycle_hung_on_a_module_proxy_is_its_own_runs() {
    let exec = terrarium::EmbeddedExecutor::with_workers(Policy::default_policy(), 1);
    let short = terrarium::Overrides { timeout: Some(Duration::from_secs(1)), ..Default::default() };
    let plant = "import math\nclass C:\n    def __del__(self):\n        while True: pass\nc = C(); c.me = c\nmath.keep = c\nNone";
    let first = crate::common::exec(&exec, ExecRequest::new(plant).with_overrides(short));
    assert!(matches!(first.status, Status::Ok | Status::Timeout), "{first:?}");
    let next = crate::common::exec(&exec, ExecRequest::new("1 + 1"));
    assert_eq!((next.status, next.result.clone()), (Status::Ok, Some(serde_json::json!(2))), "{next:?}");
}

/// Review of the maud page and the embedded collection (B3): the finalizers of a
/// run that had ended (here at its output cap) raise at their first instruction,
/// and so did the prelude's Python `sys.unraisablehook`; the interpreter then
/// printed each failure on the host process's own stdout, outside any outcome (one
/// line per finalizer, as many as the snippet liked). The hook is native now.
#[test]
fn finalizers_of_an_ended_run_print_nothing_on_the_hosts_stdout() {
    let code = "class X:\n    def __del__(self):\n        pass\nkeep = []\nfor i in range(2000):\n    \
                x = X(); x.me = x; keep.append(x)\ndel x\nprint('A' * 2000000)";
    let out = crate::common::terrarium(&["bench", "--embedded", "-n", "1", "-c", code], b"");
    let stdout = &out.stdout;
    assert!(!stdout.contains("run ended") && !stdout.contains("KeyboardInterrupt"), "{stdout}");
    assert!(stdout.lines().count() < 50, "{} lines on stdout", stdout.lines().count());
}
