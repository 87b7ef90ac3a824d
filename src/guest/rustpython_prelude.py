# Terrarium's prelude for the rustpython tier. Runs once per interpreter, as trusted
# code with the real builtins, before any snippet. It builds the restricted builtins
# that snippets get, the guarded importer that hands out module proxies, and the
# capability-free stand-ins that stdlib modules import instead of host modules.
#
# The host injects, as globals of this script (native functions; their state lives
# in Rust):
#   _t_stdout(text), _t_stderr(text)
#                           append to the run's captured stdout or stderr
#   _t_deny(reason)         end the run as `denied` (returns the exception to raise)
#   _t_sleep(seconds)       sleep, counted against the run's deadline, interruptible
#   _t_urandom(n)           n bytes of entropy
#   _t_gc_pause(on)         pause the cycle collector while an import is in progress
#   _t_unraisable(args)     sys.unraisablehook: drops the exception (native, so that
#                           it never raises itself once a run has ended)
#   _t_import               snippets' __import__ (importer/): policy and served-
#                           module checks, module proxies, all state in Rust
#   _t_importer_setup(real_import, skip_type), _t_proxy_override(module, make),
#   _t_hide(module, name)   what the native importer needs from this file
#   _t_import_time_caller(name)
#                           whether the running code is a module's import-time code
#   _t_check(source)        the static analysis' refusal of `source`, or None
#   _t_asyncio_source       source of the asyncio stand-in (asyncio_standin.py)
#   _t_getattr, _t_setattr, _t_delattr, _t_hasattr
#                           snippets' attribute builtins: they read the name's exact
#                           str value and refuse what the static analysis refuses
#   _t_attr_allowed(name)   the same rule, for the checks below
#   _t_abc_subclasses(cls)  ABCMeta.__subclasses__ (type.__subclasses__ is removed)
#   _t_globals(), _t_locals()
#                           globals()/locals() that answer only in snippet code
#   _t_eval, _t_exec        snippets' eval/exec of text, checked like the snippet
#
# Security: the walls are below this file. After it runs, the host deletes from the
# interpreter's types every attribute that hands out interpreter internals (function
# globals, closures and code, builtin functions' modules, frames, code rebuilding,
# type.__subclasses__; see walls.rs), so no object here is reachable through a
# function or a frame, whatever route a snippet takes. What this file adds on top
# are early refusals with good messages, what module proxies replace (the proxies
# themselves and the importer are native: importer/), and patches to the few
# served stdlib modules that used the removed attributes.

import sys

_real_builtins = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
_real_import = _real_builtins["__import__"]
_ModuleType = type(sys)


def _check_attr(name):
    if not _t_attr_allowed(name):
        raise _t_deny("attribute %s is not accessible in the sandbox" % (str.__repr__(name),))


# --- str.format: replacement fields can walk attributes ({0.__globals__}) ---------

import _string

_real_format = str.format
_real_format_map = str.format_map


def _check_format(fmt, depth=0):
    if depth > 4:
        return
    for _literal, field, spec, _conv in _string.formatter_parser(fmt):
        if field:
            _first, rest = _string.formatter_field_name_split(field)
            for is_attr, part in rest:
                if is_attr:
                    _check_attr(part)
        if spec and "{" in spec:
            _check_format(spec, depth + 1)


def _safe_format(self, *args, **kwargs):
    if isinstance(self, str):
        _check_format(self)
    return _real_format(self, *args, **kwargs)


def _safe_format_map(self, mapping):
    if isinstance(self, str):
        _check_format(self)
    return _real_format_map(self, mapping)


# --- guarded replacements inside proxies of particular modules ------------------


def _guarded_attrgetter(*names):
    import operator
    for n in names:
        if isinstance(n, str):
            for part in str.split(n, "."):
                _check_attr(part)
    return operator.attrgetter(*names)


def _guarded_methodcaller(name, *args, **kwargs):
    import operator
    _check_attr(name)
    return operator.methodcaller(name, *args, **kwargs)


def _make_safe_formatter():
    import string

    class Formatter(string.Formatter):
        def get_field(self, field_name, args, kwargs):
            _first, rest = _string.formatter_field_name_split(field_name)
            for is_attr, part in rest:
                if is_attr:
                    _check_attr(part)
            return string.Formatter.get_field(self, field_name, args, kwargs)

    return Formatter


# Names that replace a module's own in every proxy of it (the importer is native:
# importer/proxies.rs; it calls these once per proxy).
_PROXY_OVERRIDES = {
    "operator": lambda: {"attrgetter": _guarded_attrgetter, "methodcaller": _guarded_methodcaller},
    "string": lambda: {"Formatter": _make_safe_formatter()},
    # The VM's native typing code (Generic[...], subclassing Generic) looks these
    # up on whatever `import typing` gives the running frame: the snippet's proxy.
    "typing": lambda: {n: getattr(sys.modules["typing"], n)
                       for n in ("_generic_class_getitem", "_generic_init_subclass", "_GenericAlias")},
}
def _denied_builtin(name):
    def denied(*args, **kwargs):
        raise _t_deny("%s() is not available in the sandbox" % (name,))
    denied.__name__ = name
    return denied


_REMOVED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "vars",
                     "help", "exit", "quit", "copyright", "credits", "license",
                     "__loader__", "__spec__", "__build_class__")

_snippet_builtins = {}
for _k, _v in _real_builtins.items():
    if _k in _REMOVED_BUILTINS:
        continue
    _snippet_builtins[_k] = _v
for _k in ("open", "compile", "input", "breakpoint", "vars"):
    _snippet_builtins[_k] = _denied_builtin(_k)
# Text only, checked like the snippet, run with these builtins (native: worker.rs).
_snippet_builtins["eval"] = _t_eval
_snippet_builtins["exec"] = _t_exec
_snippet_builtins["__build_class__"] = _real_builtins["__build_class__"]
_snippet_builtins["__import__"] = _t_import
_snippet_builtins["getattr"] = _t_getattr
_snippet_builtins["setattr"] = _t_setattr
_snippet_builtins["delattr"] = _t_delattr
_snippet_builtins["hasattr"] = _t_hasattr
_snippet_builtins["globals"] = _t_globals
_snippet_builtins["locals"] = _t_locals


# --- stdlib modules that evaluate text as code -------------------------------------

# typing and annotationlib eval() string annotations and ForwardRefs; dataclasses
# exec()s methods it writes from field names. Left alone they would run text a
# snippet chose with the real builtins, past the static analysis, with any loaded
# module's globals (looked up in sys.modules). In those modules: eval/compile check
# the text as snippet source and always run it with snippet builtins; exec (only
# dataclasses' own generated text) runs with snippet builtins; dataclass field names
# must be identifiers; `sys.modules` is empty and `builtins` is the snippet builtins.

_real_eval = _real_builtins["eval"]
_real_exec = _real_builtins["exec"]
_real_compile = _real_builtins["compile"]
_CodeType = type(_real_compile("0", "<terrarium>", "eval"))


def _check_text(source):
    if not isinstance(source, str):
        raise _t_deny("only text can be evaluated in the sandbox")
    finding = _t_check(source)
    if finding is not None:
        raise _t_deny("evaluated text: " + finding)


def _is_module_namespace(d):
    for m in list(sys.modules.values()):
        if type(m) is _ModuleType and m.__dict__ is d:
            return True
    return False


def _sandbox_globals(g):
    # A module's own namespace is never lent to evaluated text (typing passes
    # sys.modules[cls.__module__].__dict__, and a class chooses its __module__).
    g = {} if g is None or _is_module_namespace(g) else dict(g)
    g["__builtins__"] = dict(_snippet_builtins)
    return g


# Text evaluated for a snippet is compiled as `<snippet>`: code under that name, or
# run with the snippet builtins, is the snippet's own to the host (it sees an empty
# sys.modules, importer/), whatever stdlib module compiled it.


def _h_eval(source, globals=None, locals=None):
    if not isinstance(source, _CodeType):
        _check_text(source)
        source = _real_compile(source, "<snippet>", "eval")
    if locals is not None and _is_module_namespace(locals):
        locals = None
    return _real_eval(source, _sandbox_globals(globals), locals)


def _h_compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1):
    _check_text(source)
    return _real_compile(source, "<snippet>", mode, flags, dont_inherit, optimize)


def _h_exec(source, globals=None, locals=None):
    # Only dataclasses' own generated text comes here; the field names in it are
    # checked (_checked_field below), and it runs as snippet code with fresh
    # globals: never the namespace of the module a class claims to be from
    # (`__module__ = "dataclasses"` would hand its methods dataclasses' own
    # globals, importers included). What the text needs comes in `locals`.
    if locals is None:
        raise _t_deny("exec() without a namespace is not available here")
    if not isinstance(source, str):
        raise _t_deny("only text can be executed here")
    return _real_exec(_real_compile(source, "<snippet>", "exec"), _sandbox_globals(None), locals)


_PASSED_SYS = frozenset((
    "_getframemodulename", "stdout", "stderr", "stdin", "_clear_type_descriptors", "version_info",
    "version", "hexversion", "api_version", "maxsize", "maxunicode", "flags", "implementation",
    "byteorder", "platform", "float_info", "int_info", "hash_info", "float_repr_style",
    "getrecursionlimit", "getsizeof", "intern", "exc_info", "exception", "getdefaultencoding",
    "getfilesystemencoding", "getfilesystemencodeerrors", "is_finalizing", "audit",
    "dont_write_bytecode", "_git", "copyright", "get_int_max_str_digits", "set_int_max_str_digits",
    "__stdout__", "__stderr__"))


class _SysViewBase:
    """The base of every `sys` view (the importer never puts one in a proxy)."""

    __slots__ = ()


def _sys_view(modules, window=True):
    """What stdlib modules see as `sys`: the few attributes they use, and a
    sys.modules that shows only `modules`.

    Its methods run as trusted code (they read the real sys), so a snippet that
    gets hold of a view (contextlib's redirect reads `getattr(sys, name)` with a name
    it chose) must not be able to steer them: the state is in closure cells, which
    the walls make unreachable, not in attributes; the classes are made per view
    (replacing a method only replaces it with the snippet's own code); names are
    compared as exact str values."""
    shown = frozenset(modules)
    passed = _PASSED_SYS
    real = sys

    def visible(name):
        # `modules`, and a module still running its import-time code when that
        # code itself asks (re's import-time enum.global_enum registers in `re`):
        # checked natively on the frames, none of which may be the snippet's.
        if type(name) is not str:
            return False
        if name in shown:
            return True
        # Never the import machinery's own modules, nor one already hardened (a
        # module is hardened only once it has finished loading).
        if name in _viewed or name.split(".")[0] in _KEEP_REAL:
            return False
        if _loaded(name) is not None or type(real.modules.get(name)) is not _ModuleType:
            return False
        return _t_import_time_caller(name)

    class _Modules:
        __slots__ = ()

        def get(self, name, default=None):
            return real.modules.get(name, default) if visible(name) else default

        def __getitem__(self, name):
            if not visible(name):
                raise KeyError(name)
            return real.modules[name]

        def __contains__(self, name):
            return visible(name) and name in real.modules

    modules_window = _Modules() if window else None

    class _SysView(_SysViewBase):
        __slots__ = ()

        def __getattr__(self, name):
            if type(name) is str and name == "modules" and modules_window is not None:
                return modules_window
            if type(name) is not str or name not in passed:
                raise AttributeError("sys.%s is not available here" % (name,))
            return getattr(real, name)

        def __setattr__(self, name, value):
            # contextlib.redirect_stdout/stderr swap the streams; nothing else is set.
            if type(name) is not str or name not in ("stdout", "stderr"):
                raise AttributeError("sys.%s cannot be set here" % (name,))
            setattr(real, name, value)

    return _SysView()


# Every loaded stdlib module sees `sys` through a view with an empty sys.modules and
# `builtins` as the snippet builtins: stdlib functions that look a module up by a
# name a snippet chose (enum's _convert_, contextlib's redirect, warnings'
# catch_warnings) or that hold the interpreter's builtins reach nothing through
# them. The import machinery keeps the real ones.
_SYS_VIEW = _sys_view(())
_KEEP_REAL = ("sys", "builtins", "__main__", "_imp", "importlib", "_frozen_importlib",
              "_frozen_importlib_external", "marshal", "_io", "_thread", "_warnings")
_viewed = set()


def _loaded(name):
    """The module `name` once its import-time code has finished, else None (a
    module still initializing is hardened by the import that loads it, after)."""
    m = sys.modules.get(name)
    if type(m) is not _ModuleType:
        return None
    spec = m.__dict__.get("__spec__")
    if spec is not None and getattr(spec, "_initializing", False):
        return None
    return m


def _view_sys_in_modules():
    for name in list(sys.modules):
        if name in _viewed:
            continue
        m = _loaded(name)
        if m is None:
            continue
        _viewed.add(name)
        if name.split(".")[0] in _KEEP_REAL:
            continue
        d = m.__dict__
        for k, v in list(d.items()):
            if v is sys:
                d[k] = _SYS_VIEW
            elif v is _builtins_module:
                d[k] = _builtins_view
        # A module's loader and spec are importers: their methods run module code
        # with the real builtins on any object given. Loaded modules keep neither.
        for k in ("__loader__", "__spec__"):
            if k in d:
                d[k] = None


_builtins_view = _ModuleType("builtins")
_builtins_view.__dict__.update(_snippet_builtins)
_builtins_module = _real_import("builtins")


def _checked_field(get_field):
    # dataclasses writes each field name into the source of the methods it makes;
    # the names come from the class's annotations (its __annotate__ included),
    # whatever the snippet put there. Checked where dataclasses reads them.
    import keyword

    def checked(cls, a_name, *args, **kwargs):
        if type(a_name) is not str or not a_name.isidentifier() or keyword.iskeyword(a_name):
            raise TypeError("dataclass field names must be identifiers, not %r" % (a_name,))
        return get_field(cls, a_name, *args, **kwargs)
    return checked


def _set_hidden(m, **names):
    """Names the hardening below sets on a module: its own code reads them as
    globals; a snippet's proxy of the module never shows them."""
    for k, v in names.items():
        setattr(m, k, v)
        _t_hide(m.__name__, k)


def _harden_annotationlib(m):
    # (Its `sys` and `builtins` are replaced with every module's, see above.)
    _set_hidden(m, eval=_h_eval, compile=_h_compile)
    real_call = m.call_annotate_function
    value = m.Format.VALUE

    def call_annotate_function(annotate, format, *, owner=None, _is_evaluate=False):
        # The forward-reference and string formats rebuild the annotate function
        # from its code and builtins, which the sandbox removes; what can be given
        # then is the value (typing.NamedTuple, TypedDict and dataclasses ask for
        # forward references first).
        try:
            return real_call(annotate, format, owner=owner, _is_evaluate=_is_evaluate)
        except AttributeError:
            if format == value:
                raise
            return real_call(annotate, value, owner=owner, _is_evaluate=_is_evaluate)

    m.call_annotate_function = call_annotate_function


class _NoSignatures:
    """dataclasses' view of inspect: signatures need function code, which is gone
    from the interpreter; a dataclass's generated doc string goes without one."""

    @staticmethod
    def signature(*args, **kwargs):
        raise ValueError("signatures are not available in the sandbox")

    @staticmethod
    def unwrap(func, *args, **kwargs):
        return _real_import("inspect").unwrap(func, *args, **kwargs)


def _no_class_cell(f, oldcls, newcls):
    # dataclass(slots=True) rewrites methods' __class__ cells through __code__ and
    # __closure__, which no longer exist; methods using zero-argument super() on
    # such a class see the class before slots were added.
    return False


def _harden_dataclasses(m):
    _set_hidden(m, exec=_h_exec, sys=_sys_view(("dataclasses", "typing")), inspect=_NoSignatures)
    m._get_field = _checked_field(m._get_field)
    m._update_func_cell_for__class__ = _no_class_cell


def _harden_contextlib(m):
    # Its redirects read getattr(sys, name) with a name the snippet chose: its
    # view has the streams and no sys.modules at all.
    _set_hidden(m, sys=_sys_view((), window=False))


def _harden_string(m):
    # Template compiles its pattern into a class attribute on first use; classes
    # that exist at the seal are immutable (walls.rs), so it is compiled now.
    m.Template._compile_pattern()


_HARDEN = {"annotationlib": _harden_annotationlib, "dataclasses": _harden_dataclasses,
           "contextlib": _harden_contextlib, "string": _harden_string}
_hardened = set()


def _harden_loaded():
    _view_sys_in_modules()
    if len(_hardened) == len(_HARDEN):
        return
    # typing loads annotationlib lazily, on the first forward reference.
    if _loaded("typing") is not None or _loaded("dataclasses") is not None:
        _real_import("annotationlib")
    for name, harden in _HARDEN.items():
        m = _loaded(name)
        if m is not None and name not in _hardened:
            harden(m)
            _hardened.add(name)
    _view_sys_in_modules()


# The snippets' importer is native (importer/): it imports with the real
# __import__ (whose loads _find_and_load below hardens) and hands out proxies that
# never carry a `sys` view.
_t_importer_setup(_real_import, _SysViewBase)

# Stdlib code imports lazily too, inside its functions (functools.singledispatch
# imports typing, enum's signatures inspect): every load, by any route (__import__,
# importlib, the interpreter's own), goes through _find_and_load, and is hardened
# as soon as the import finishes, not at the snippet's next import.
import _frozen_importlib as _bootstrap_module
_real_find_and_load = _bootstrap_module._find_and_load


_import_depth = [0]


def _find_and_load(name, import_):
    # Every module is hardened as soon as its own load finishes, at any depth of an
    # import chain (modules still running their import-time code are left for the
    # load that finishes them, see _loaded): snippet code can run inside a trusted
    # import (a finalizer on a refcount drop, an __eq__ called by a cache lookup),
    # and must find no module there with the real sys. A module that is still
    # initializing keeps its real sys until then (re's import-time
    # enum.global_enum writes into sys.modules["re"]). The cycle collector is also
    # paused for the whole import.
    if _import_depth[0] == 0:
        _t_gc_pause(True)
    _import_depth[0] += 1
    try:
        return _real_find_and_load(name, import_)
    finally:
        _import_depth[0] -= 1
        try:
            # Failed imports too: what they loaded before failing stays loaded.
            _harden_loaded()
        finally:
            if _import_depth[0] == 0:
                _t_gc_pause(False)


_bootstrap_module._find_and_load = _find_and_load


def _new_module(name):
    # importlib makes modules with type(sys)(name); after the seal sys is an
    # instance of a module subtype (importer/), which new modules must not be.
    return _ModuleType(name)


_bootstrap_module._new_module = _new_module
for _k, _v in _PROXY_OVERRIDES.items():
    _t_proxy_override(_k, _v)


# --- the interpreter itself: close what stdlib code could be tricked into using --

# Codecs: str.encode and bytes.decode import `encodings.<name>` for a name the snippet
# chooses. The bytes-to-bytes codecs import modules the tier does not serve
# (bz2, compression, zlib, binascii, quopri) and are no text encodings anyway: the
# codec search finds only the others.
import _codecs as _codecs_native
import encodings as _encodings_module

_BYTES_CODECS = frozenset(("base64_codec", "bz2_codec", "hex_codec", "quopri_codec", "rot_13", "uu_codec",
                           "zlib_codec"))


def _text_codec_search_over(search, normalize, aliases):
    # State in closure cells, which the walls make unreachable (not in defaults).
    def _text_codec_search(encoding):
        if type(encoding) is not str:
            return None
        norm = normalize(encoding)
        if {norm, aliases.get(norm), aliases.get(norm.replace(".", "_"))} & _BYTES_CODECS:
            return None
        return search(encoding)
    return _text_codec_search


_codecs_native.unregister(_encodings_module.search_function)
_codecs_native.register(_text_codec_search_over(
    _encodings_module.search_function, _encodings_module.normalize_encoding, _encodings_module._aliases))


# type.__subclasses__ is removed (it lists every class, importers included);
# isinstance() against an ABC asks the ABC for its subclasses, so ABCs keep a
# native variant that lists only classes with a metaclass of their own.
import abc as _abc_module
# Its import-time code reads a frame's f_locals, which the host removes later.
import _collections_abc as _collections_abc_module  # noqa: F401 (loaded for its import-time code)


def __subclasses__(cls):
    return _t_abc_subclasses(cls)


_abc_module.ABCMeta.__subclasses__ = __subclasses__
del __subclasses__

for _k in ("settrace", "setprofile", "setrecursionlimit", "_current_frames", "_current_exceptions",
           "setswitchinterval", "monitoring", "call_tracing", "addaudithook",
           "_clear_type_cache", "_clear_internal_caches", "activate_stack_trampoline",
           "remote_exec", "setdlopenflags", "breakpointhook", "set_asyncgen_hooks",
           "set_coroutine_origin_tracking_depth", "_enablelegacywindowsfsencoding",
           "_settraceallthreads", "_setprofileallthreads"):
    try:
        delattr(sys, _k)
    except AttributeError:
        pass


# An exception no one can catch (a finalizer that raised): dropped. The VM calls
# this hook unconditionally; without one it panics.
sys.unraisablehook = _t_unraisable
# `open` stays (tokenize imports it by name); this build has no FileIO behind it.
for _k in ("breakpoint", "input"):
    _real_builtins.pop(_k, None)


class _Stream:
    """sys.stdout / sys.stderr: `write` is native (worker.rs) and appends to the
    run's capped capture buffer; the stream objects hold no state."""

    __slots__ = ()

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"


class _Stdout(_Stream):
    __slots__ = ()
    write = _t_stdout


class _Stderr(_Stream):
    __slots__ = ()
    write = _t_stderr


sys.stdout = _Stdout()
sys.stderr = _Stderr()
sys.stdin = None

# time.sleep must count against the deadline and wake when the run is cancelled.
import time as _time
_time.sleep = _t_sleep


# --- capability-free stand-ins for host modules that stdlib code imports ---------

_os = _ModuleType("os", "Terrarium stand-in: no files, processes, environment or network.")
_os.name = "posix"
_os.sep = "/"
_os.altsep = None
_os.extsep = "."
_os.pathsep = ":"
_os.curdir = "."
_os.pardir = ".."
_os.linesep = "\n"
_os.devnull = "/dev/null"
_os.environ = {}
_os.urandom = _t_urandom


def _fspath(p):
    if isinstance(p, (str, bytes)):
        return p
    raise TypeError("expected str or bytes, not %s" % type(p).__name__)


def _no_host(*args, **kwargs):
    raise OSError(38, "not available in the sandbox")


_os.fspath = _fspath
_os.fsencode = lambda s: s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
_os.fsdecode = lambda s: s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s
_os.getenv = lambda key, default=None: default
_os.cpu_count = lambda: 1
_os.getpid = lambda: 1
for _k in ("stat", "lstat", "listdir", "scandir", "open", "getcwd", "remove", "unlink",
           "mkdir", "makedirs", "rmdir", "rename", "replace", "system", "popen", "kill",
           "execv", "execve", "walk", "chdir", "chmod", "access", "readlink"):
    setattr(_os, _k, _no_host)
# No `fork`: stdlib modules test hasattr(os, "fork") before registering fork hooks.
_os.PathLike = type("PathLike", (), {})
_os.error = OSError
sys.modules["os"] = _os
# importlib's path machinery (pulled in by inspect, hence dataclasses) loads `posix`
# by name; it gets the same stand-in, whose file functions all fail.
sys.modules["posix"] = _os
try:
    import posixpath as _posixpath
    _os.path = _posixpath
    sys.modules["os.path"] = _posixpath
except Exception:  # the path helpers are a convenience, not a requirement
    pass


# asyncio: the real package needs sockets, selectors, threads and subprocesses.
_asyncio = _ModuleType("asyncio", "Terrarium stand-in: an event loop with no sockets, pipes or threads.")
exec(compile(_t_asyncio_source, "<terrarium asyncio>", "exec"), _asyncio.__dict__)
sys.modules["asyncio"] = _asyncio


# Modules whose import-time code reads what the host removes once this file and the
# policy's modules are loaded (a function's __code__), and that other modules import
# lazily: load them now, with the stand-ins above in place.
import types as _types_module  # noqa: F401 (loaded now, see above)
import importlib.machinery as _importlib_machinery  # noqa: F401
import annotationlib as _annotationlib_module  # noqa: F401


def harden_all():
    """Before the host seals the interpreter: the policy's modules are loaded."""
    _harden_loaded()


def after_fork():
    """In a fresh child of the zygote: draw new seeds, so that children forked from
    one interpreter do not share random streams."""
    r = sys.modules.get("random")
    if r is not None:
        r.seed(int.from_bytes(_t_urandom(32), "big"))


# Patch str.format last: the code above uses it while setting up.
_HOST_PATCH_STR_FORMAT = (_safe_format, _safe_format_map)
