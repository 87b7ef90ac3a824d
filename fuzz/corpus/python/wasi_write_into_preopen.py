import json
open(json.__file__ + ".evil", "w").write("x")
open("{{MARKER}}", "w")
