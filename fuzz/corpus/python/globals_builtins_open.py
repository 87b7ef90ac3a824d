b = globals()["__builtins__"]
o = b["open"] if isinstance(b, dict) else b.open
print(o("{{SECRET_PATH}}").read())
