# Terrarium's object-graph walk (a test, run by the rustpython worker's unit tests
# as trusted code with the real builtins). From every name a snippet has (its
# builtins and the proxies of every allowed module) it follows every attribute,
# breadth first, with the real getattr, and lists the paths that reach a module
# outside the policy, the real builtins, sys, a frame, a code object or an
# importer. Given by the host: snippet_globals, allowed (module names).

import sys
from collections import deque

_frame_t = type(sys._getframe())
_code_t = type(compile("0", "<walk>", "eval"))
_module_t = type(sys)
_real_builtins = sys.modules["builtins"]

forbidden = {id(sys): "sys", id(_real_builtins): "the real builtins module",
             id(_real_builtins.__dict__): "the real builtins dict"}
for _name, _mod in list(sys.modules.items()):
    if _mod is None:
        continue
    if _name.startswith("_frozen_importlib") or _name in ("_imp", "marshal", "importlib"):
        forbidden[id(_mod)] = "module " + _name
    if _name.startswith("_frozen_importlib"):
        for _v in list(vars(_mod).values()):
            if isinstance(_v, type):
                forbidden[id(_v)] = "importer machinery %s.%s" % (_name, _v.__name__)
for _f in sys.meta_path:
    forbidden[id(_f)] = "an importer"
    if not isinstance(_f, type):
        forbidden[id(type(_f))] = "an importer class"
# Plain values: their attributes are their type's methods bound to them, so the walk
# checks the type and does not descend into each value.
_VALUES = (str, bytes, bytearray, int, float, complex, bool, type(None), type(Ellipsis), type(NotImplemented),
           range, slice)
# Objects whose dir() only grows the graph (a method-wrapper's __call__ is a new
# method-wrapper): only the probes are followed on them.
_THIN = frozenset(("method-wrapper", "builtin_function_or_method", "wrapper_descriptor", "method_descriptor",
                   "getset_descriptor", "member_descriptor", "classmethod_descriptor"))


def module_allowed(name):
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in allowed for i in range(len(parts)))


# Names a walk of dir() may not list but a snippet can still ask for.
PROBES = ("__globals__", "__code__", "__closure__", "__builtins__", "__defaults__", "__kwdefaults__",
          "__self__", "__func__", "__wrapped__", "__dict__", "__class__", "__base__", "__bases__", "__mro__",
          "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "tb_frame", "tb_next",
          "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "__traceback__", "__context__",
          "__cause__", "__objclass__", "__loader__", "__spec__", "__module__", "fget", "fset", "__annotate__",
          "cell_contents", "__subclasses__", "__self_class__", "__thisclass__")
CALLS = (("__subclasses__", ()), ("mro", ()), ("__reduce_ex__", (2,)), ("__reduce__", ()))

builtins = snippet_globals["__builtins__"]
importer = builtins["__import__"]
queue = deque([("builtins", builtins), ("globals", snippet_globals)])
for _m in sorted(allowed):
    try:
        queue.append((_m, importer(_m, None, None, ("__doc__",))))
    except BaseException as e:
        queue.append(("import " + _m, e))

limit = 200000
seen = set()
keep = []  # every visited object stays alive, so no id is reused during the walk
bad = []
kinds = {}
visited = 0
while queue and visited < limit and len(bad) < 20:
    path, o = queue.popleft()
    if id(o) in seen:
        continue
    seen.add(id(o))
    keep.append(o)
    t = type(o)
    if t in _VALUES:
        queue.append((path + ".__class__", t))
        continue
    if t.__name__ == "method":
        # A bound method is new at every lookup: follow what it binds, count nothing.
        for n in ("__func__", "__self__"):
            try:
                queue.append((path + "." + n, getattr(o, n)))
            except BaseException:
                pass
        continue
    if t.__name__ not in _THIN:
        visited += 1
        kinds[t.__name__] = kinds.get(t.__name__, 0) + 1
    why = forbidden.get(id(o))
    if why is None and t is _frame_t:
        why = "a frame"
    if why is None and t is _code_t:
        why = "a code object"
    if why is None and getattr(t, "__module__", "") == "terrarium_prelude" and t.__name__ in (
            "_SysView", "_Modules", "_NoSignatures"):
        why = "the prelude's own %s" % (t.__name__,)
    if why is None and t is _module_t:
        _n = getattr(o, "__name__", "?")
        if not module_allowed(_n):
            why = "module %s, outside the policy" % (_n,)
        elif sys.modules.get(_n) is o:
            # Snippets get proxies; a real module's attributes include its imports.
            why = "the real module %s (not its proxy)" % (_n,)
    if why is not None:
        bad.append("%s -> %s" % (path, why))
        continue
    if len(path) > 400:
        continue
    if t.__name__ in _THIN:
        # Made anew at every lookup: follow only what it could bind or wrap.
        for n in ("__self__", "__func__", "__objclass__", "__wrapped__", "__globals__", "__code__",
                  "__closure__", "__class__"):
            try:
                queue.append((path + "." + n, getattr(o, n)))
            except BaseException:
                pass
        continue
    names = set(PROBES)
    try:
        names.update(n for n in dir(o) if isinstance(n, str))
    except BaseException:
        pass
    for n in sorted(names):
        try:
            v = getattr(o, n)
        except BaseException as e:
            # What a failed lookup raises is the snippet's too (an AttributeError
            # carries no object: its `obj` is removed).
            if type(e) is not AttributeError:
                queue.append((path + ".raise(" + n + ")", e))
            continue
        queue.append((path + "." + n, v))
    for n, args in CALLS:
        if isinstance(o, (tuple, list, dict, set, frozenset)):
            break  # a container's reduction is a new container of itself, forever
        try:
            v = getattr(o, n)(*args)
        except BaseException:
            continue
        queue.append((path + "." + n + "()", v))
    try:
        if isinstance(o, dict) or t.__name__ == "mappingproxy":
            for k, v in list(o.items())[:2000]:
                queue.append(("%s[%.40r]" % (path, k), v))
                queue.append(("%s.key(%.40r)" % (path, k), k))
        elif isinstance(o, (list, tuple, set, frozenset)):
            for i, v in enumerate(list(o)[:2000]):
                queue.append(("%s[%d]" % (path, i), v))
    except BaseException:
        pass

top = sorted(kinds.items(), key=lambda kv: -kv[1])[:12]
"visited %d objects (%s), %d left; %d reached: %s" % (visited, top, len(queue), len(bad), "; ".join(bad))
