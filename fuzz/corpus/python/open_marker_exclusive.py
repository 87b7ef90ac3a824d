with open("{{MARKER}}", "x") as f:
    f.write("x")
