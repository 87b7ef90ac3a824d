"""Edits applied by scripts/vendor-ruff to the vendored parser crates (see there)."""
import re
import sys


def manifest(src, dst):
    text = open(src).read()
    text = text.replace('rust-version = "1.96"', 'rust-version = "1.95"')
    # Test, bench and example targets and dev-dependencies: their files are not vendored.
    parts = re.split(r"(?m)^(?=\[)", text)
    keep = [p for p in parts if not re.match(r"\[\[(test|bench|example)\]\]|\[dev-dependencies|\[lints", p)]
    # Their own lint tables refer to the upstream workspace; and the sources test cfg
    # features (salsa, cache) the published crates do not declare.
    keep.append('\n[lints.rust]\nunexpected_cfgs = "allow"\n')
    open(dst, "w").write("".join(keep))


def lexer(path):
    text = open(path).read()
    old = (
        "            use std::debug_assert_matches;\n"
        "            debug_assert_matches!(self.cursor.previous().to_ascii_lowercase(), 'x' | 'o' | 'b');\n"
    )
    new = "            debug_assert!(matches!(self.cursor.previous().to_ascii_lowercase(), 'x' | 'o' | 'b'));\n"
    if old not in text:
        sys.exit(f"{path} changed upstream: review the 1.95 adjustment by hand")
    open(path, "w").write(text.replace(old, new))


if __name__ == "__main__":
    {"manifest": manifest, "lexer": lexer}[sys.argv[1]](*sys.argv[2:])
