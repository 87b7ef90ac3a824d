b = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)
real = b["__import__"]
b["__import__"] = lambda name, *a, **k: real("json")
import os
os.system("touch {{MARKER}}")
