b = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)
b["leaked"] = "{{TOKEN}}"
