open("{{MARKER}}", "w").write("x")
