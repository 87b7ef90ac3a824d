__builtins__ = {"open": open}
print(__builtins__["open"]("{{SECRET_PATH}}").read())
