//! The crate's layering, read from its source: dependencies between the top-level
//! modules of `src/` point one way (docs/architecture.md draws them), a tier never
//! reaches the router, the audit log, the sandbox or another tier, and no file of
//! `src/` grows past the size one concept fits in.
//!
//! A dependency is any `crate::NAME` path (or `use crate::{NAME, …}` group) in code;
//! comments and doc links do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/ is readable").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` under `src/`: `tier/docker/engine.rs` → `["tier", "docker", "engine"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src/");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of `text` without comments (line comments, doc comments, block comments)
/// and without the contents of string literals (a message may mention `crate::x`).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A plain string literal (raw strings in src/ hold no `crate::` paths).
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The top-level modules `code` names through `crate::`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `$crate::` or another crate's path.
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        found.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// Top-level module → the other top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let module = module_of(&f);
        let Some(top) = module.first().cloned() else { continue };
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("source is UTF-8");
        let names = named_modules(&code_only(&text));
        g.entry(top.clone()).or_default().extend(names.into_iter().filter(|n| *n != top));
    }
    g
}

/// A cycle in `g`, if there is one, as the path that closes it.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[from..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys().find_map(|n| visit(n, g, &mut state, &mut Vec::new()))
}

#[test]
fn the_parser_of_this_test_sees_paths_and_groups_but_not_comments() {
    let code = code_only(
        "use crate::{a, b::{c, d}, e::f};\n// crate::comment\n/// [`crate::doc`]\nlet x = crate::g::h(\"crate::string\");\n",
    );
    let names: Vec<String> = named_modules(&code).into_iter().collect();
    assert_eq!(names, ["a", "b", "e", "g"]);
    let mut g = BTreeMap::new();
    g.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    g.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert_eq!(cycle(&g), Some(vec!["x".to_string(), "y".to_string(), "x".to_string()]));
}

#[test]
fn dependencies_between_modules_point_one_way() {
    let g = graph();
    assert!(g.len() > 10, "the modules of src/ were not found: {g:?}");
    if let Some(c) = cycle(&g) {
        panic!("an import cycle between modules: {} (docs/architecture.md says which way each points)", c.join(" → "));
    }
}

#[test]
fn the_bottom_layers_name_nothing_above_them() {
    let g = graph();
    // Leaves: plain helpers any module may use.
    for leaf in ["text", "dirs", "process", "breaker", "names", "hex"] {
        let deps = g.get(leaf).cloned().unwrap_or_default();
        assert!(deps.is_empty(), "{leaf} should depend on nothing of the crate, names {deps:?}");
    }
    let above_policy = ["executor", "error", "tier", "audit", "approval", "router", "sandbox", "server", "cli"];
    for low in ["policy", "analysis"] {
        let deps = g.get(low).cloned().unwrap_or_default();
        let up: Vec<_> =
            deps.iter().filter(|d| above_policy.contains(&d.as_str()) || d.as_str() == "command").collect();
        assert!(up.is_empty(), "{low} names modules above it: {up:?}");
    }
    for m in ["error", "executor"] {
        let deps = g.get(m).cloned().unwrap_or_default();
        let up: Vec<_> =
            deps.iter().filter(|d| ["audit", "approval", "sandbox", "router", "tier"].contains(&d.as_str())).collect();
        assert!(up.is_empty(), "{m} names modules above it: {up:?}");
    }
}

#[test]
fn a_tier_reaches_no_router_audit_sandbox_or_other_tier() {
    let mut files = Vec::new();
    rust_files(&src().join("tier"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let module = module_of(&f);
        let text = std::fs::read_to_string(&f).expect("source is UTF-8");
        let code = code_only(&text);
        for banned in ["router", "audit", "approval", "sandbox", "server", "cli", "redteam", "command"] {
            assert!(
                !named_modules(&code).contains(banned),
                "{} names crate::{banned}: a tier depends only on the policy and the executor's types",
                f.display()
            );
        }
        // Another tier: `crate::tier::X` where X is neither this tier nor the shared CPython parts.
        let own = module.get(1).cloned().unwrap_or_default();
        for (at, _) in code.match_indices("crate::tier::") {
            let other: String = code[at + "crate::tier::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(other == own || other == "cpython" || other.is_empty(), "{} reaches tier {other}", f.display());
        }
    }
}

/// Files that hold one concept each stay readable: none over 600 lines, except the
/// listed data-like files, each with its reason.
#[test]
fn no_source_file_over_600_lines() {
    let exceptions: &[(&str, &str)] = &[];
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for f in files {
        let n = std::fs::read_to_string(&f).expect("source is UTF-8").lines().count();
        let rel = f.strip_prefix(src()).expect("under src/").to_string_lossy().into_owned();
        if n > 600 && !exceptions.iter().any(|(p, _)| *p == rel) {
            long.push(format!("{rel} ({n} lines)"));
        }
    }
    assert!(long.is_empty(), "split these by concept: {long:?}");
}

/// The library's public surface is the sandbox, its policy and what a caller reads
/// back (outcomes, errors, the audit log, approvals, breakers); every other module is
/// `pub(crate)`, or public and hidden from the docs when Terrarium's own tests ask
/// for `internals`. A new `pub mod` or root re-export is a decision, made here.
#[test]
fn the_library_exposes_only_its_interface() {
    // As written: the `internals` feature's name is in a string, which `code_only` blanks.
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let lines: Vec<&str> = lib.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect();
    let mut public = Vec::new();
    let mut internal = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("pub mod ") {
            // Internal: public only with `internals`, hidden from the docs, and
            // `pub(crate)` without it.
            let hidden =
                i >= 2 && lines[i - 1] == "#[doc(hidden)]" && lines[i - 2] == "#[cfg(feature = \"internals\")]";
            if hidden {
                let twin = format!("pub(crate) mod {name}");
                assert!(lines.contains(&twin.as_str()), "{name} has no pub(crate) declaration without internals");
                internal.push(name.trim_end_matches(';'));
                continue;
            }
        }
        if line.starts_with("pub mod ") || line.starts_with("pub use ") {
            public.push(*line);
        }
    }
    let expected = [
        "pub mod approval;",
        "pub mod audit;",
        "pub mod breaker;",
        "pub mod cli;",
        "pub mod functions;",
        "pub mod policy;",
        "pub mod server;",
        "pub mod workspace;",
        "pub use command::Decision;",
        "pub use error::SandboxError;",
        "pub use executor::CallInfo;",
        "pub use executor::{CellInfo, ErrorInfo, ErrorKind, ExecRequest, Executor, Outcome, Status, TierSession, Usage};",
        "pub use policy::{Overrides, Policy, PolicyError, Tier, TierChoice};",
        "pub use sandbox::{BLOCKING_CALLS, CommandReport, Sandbox, SandboxBuilder, Session, SessionHandle, SessionOptions};",
        "pub use sandbox::{InFlightRun, OpenSession, PolicyChange, StopReport, Stopped};",
        "pub use terrarium_fuel::CountingAlloc as FuelCountingAlloc;",
        "pub use tier::docker::{DockerConfig, DockerExecutor};",
        "pub use tier::rustpython::isolated::run_zygote_if_requested;",
        "pub use tier::rustpython::{EmbeddedExecutor, IsolatedConfig, IsolatedExecutor};",
        "pub use tier::wasm::{WasmConfig, WasmExecutor};",
    ];
    assert_eq!(public, expected, "src/lib.rs's public items changed");
    for m in ["analysis", "command", "executor", "router", "sandbox", "tier"] {
        assert!(internal.contains(&m), "{m} is not declared internal: {internal:?}");
    }
}
