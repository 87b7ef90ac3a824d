subs = type.__subclasses__(object)
os = [c for c in subs if c.__name__ == "_wrap_close"][0].__init__.__globals__
os["system"]("touch {{MARKER}}")
