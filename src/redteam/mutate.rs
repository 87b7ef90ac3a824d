//! Variants of an attack: the same intent, written the ways an attacker would write
//! it to slip past a filter that only knows the original.
//!
//! Each transform rewrites Python source and keeps it valid Python (rewrites that
//! need the syntax tree parse with the same parser the analyser uses, and give up
//! on source it refuses). A variant is a pipeline of one or two transforms chosen
//! by a generator seeded from the run's seed, the attack's name and the variant's
//! number: the same seed gives the same variants on every machine.
//!
//! Transforms that swallow exceptions or split the attack across requests change
//! what a contained outcome looks like (`ok` with no host effect is contained then);
//! [`Variant::lenient`] says so.

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, ExprContext, Stmt};
use ruff_text_size::Ranged;

/// One rewritten attack: the requests to send, in order (more than one when the
/// attack was split across a session), and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// The transforms applied, in order (`original` for none).
    pub transforms: Vec<&'static str>,
    /// The requests.
    pub steps: Vec<String>,
    /// For each request, the attack step it came from (a split step gives two).
    pub origin: Vec<usize>,
    /// Whether `ok` counts as contained (an exception may have been swallowed, or
    /// the attack's halves run apart).
    pub lenient: bool,
}

impl Variant {
    /// The attack as written.
    pub fn original(steps: &[String]) -> Variant {
        Variant { transforms: Vec::new(), steps: steps.to_vec(), origin: (0..steps.len()).collect(), lenient: false }
    }

    /// `original`, or the transforms joined by `+`.
    pub fn label(&self) -> String {
        if self.transforms.is_empty() { "original".to_string() } else { self.transforms.join("+") }
    }
}

/// The transforms, by name.
pub const TRANSFORMS: &[&str] = &[
    "rename",
    "getattr_runtime",
    "exec_string",
    "encode",
    "wrap_function",
    "wrap_class",
    "wrap_lambda",
    "wrap_comprehension",
    "wrap_generator",
    "try_swallow",
    "split_session",
];

/// A small deterministic generator (SplitMix64): the variants of a seed must be the
/// same everywhere, so no system randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`, `attack` and `variant`.
    pub fn for_variant(seed: u64, attack: &str, variant: u32) -> Rng {
        // FNV-1a over the attack's name, mixed with the seed and the variant.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in attack.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(seed ^ h.rotate_left(17) ^ u64::from(variant).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The `number`th variant (1-based) of `steps` (an attack's requests). Returns
/// `None` when no transform applies (e.g. source the parser refuses).
///
/// Parsing recurses with the source's depth: call it on a thread with a large
/// stack.
pub fn variant(steps: &[String], seed: u64, attack: &str, number: u32) -> Option<Variant> {
    let mut rng = Rng::for_variant(seed, attack, number);
    // A few tries: some transforms do not apply to some sources.
    for _ in 0..8 {
        let depth = 1 + rng.below(2);
        let mut v = Variant::original(steps);
        for _ in 0..depth {
            let name = TRANSFORMS[rng.below(TRANSFORMS.len())];
            if let Some(next) = apply(name, &v, &mut rng) {
                v = next;
            }
        }
        if !v.transforms.is_empty() && v.steps != steps {
            return Some(v);
        }
    }
    None
}

/// Applies the transform `name` to every step of `v` (`split_session` to the
/// last step only). `None` when it does not apply.
pub fn apply(name: &'static str, v: &Variant, rng: &mut Rng) -> Option<Variant> {
    let mut out = v.clone();
    out.transforms.push(name);
    if name == "split_session" {
        let last = out.steps.pop()?;
        let from = *out.origin.last()?;
        let (a, b) = split(&last)?;
        out.steps.push(a);
        out.steps.push(b);
        out.origin.push(from);
        out.lenient = true;
        return Some(out);
    }
    let mut steps = Vec::with_capacity(v.steps.len());
    for s in &v.steps {
        let rewritten = match name {
            "rename" => rename(s, rng)?,
            "getattr_runtime" => getattr_runtime(s, rng)?,
            "exec_string" => exec_string(s, rng),
            "encode" => encode(s, rng),
            "wrap_function" => format!("def _trrm_f{n}():\n{}\n_trrm_f{n}()\n", indent(s), n = rng.below(1000)),
            "wrap_class" => format!("class _TrrmC{}:\n{}\n", rng.below(1000), indent(s)),
            "wrap_lambda" => format!("(lambda: exec({}))()\n", py_str(s)),
            "wrap_comprehension" => format!("[exec({}) for _trrm_i in (0,)]\n", py_str(s)),
            "wrap_generator" => {
                format!("def _trrm_g():\n{}\n    yield 0\nfor _trrm_i in _trrm_g():\n    pass\n", indent(s))
            }
            "try_swallow" => {
                out.lenient = true;
                format!("try:\n{}\nexcept BaseException:\n    pass\n", indent(s))
            }
            _ => return None,
        };
        steps.push(rewritten);
    }
    out.steps = steps;
    Some(out)
}

fn indent(s: &str) -> String {
    let body: Vec<String> = s.lines().map(|l| format!("    {l}")).collect();
    if body.iter().all(|l| l.trim().is_empty()) { "    pass".to_string() } else { body.join("\n") }
}

/// A Python string literal for `s` (double-quoted, every non-ASCII or control
/// character escaped), valid anywhere an expression is.
pub fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text built at run time from character codes, with no quote in it (so it can sit
/// inside an f-string's braces).
fn runtime_text(s: &str, rng: &mut Rng) -> String {
    let codes: Vec<String> = s.chars().map(|c| (c as u32).to_string()).collect();
    match rng.below(3) {
        0 => format!("str().join(map(chr, [{}]))", codes.join(", ")),
        1 => codes.iter().map(|c| format!("chr({c})")).collect::<Vec<_>>().join("+"),
        _ => format!("bytes([{}]).decode()", s.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

fn exec_string(s: &str, rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("exec({})\n", py_str(s)),
        1 => format!("exec(compile({}, \"<trrm>\", \"exec\"))\n", py_str(s)),
        _ => format!("eval(compile({}, \"<trrm>\", \"exec\"))\n", py_str(s)),
    }
}

fn encode(s: &str, rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => format!("exec({})\n", runtime_text(s, rng)),
        1 => {
            let reversed: String = s.chars().rev().collect();
            format!("exec({}[::-1])\n", py_str(&reversed))
        }
        _ => {
            let hex = crate::hex::encode(s.as_bytes());
            format!("exec(bytes.fromhex(\"{hex}\").decode())\n")
        }
    }
}

/// Text edits: (start, end, replacement), applied back to front; inserts (start ==
/// end) at the same offset keep their order.
fn apply_edits(s: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    // Stable sort by start descending; at equal starts, later-pushed edits go first
    // so the earlier-pushed (outer) insert ends up in front.
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = s.to_string();
    for (start, end, text) in edits {
        out.replace_range(start..end, &text);
    }
    out
}

fn parse(s: &str) -> Option<Vec<Stmt>> {
    ruff_python_parser::parse_module(s).ok().map(|p| p.into_syntax().body.into_iter().collect())
}

/// Every attribute read `x.name` becomes `getattr(x, <name built at run time>)`.
fn getattr_runtime(s: &str, rng: &mut Rng) -> Option<String> {
    struct Attrs(Vec<(usize, usize, usize, String)>);
    impl<'a> Visitor<'a> for Attrs {
        fn visit_expr(&mut self, expr: &'a Expr) {
            if let Expr::Attribute(a) = expr
                && a.ctx == ExprContext::Load
            {
                self.0.push((
                    usize::from(a.range.start()),
                    usize::from(a.value.end()),
                    usize::from(a.attr.range.end()),
                    a.attr.as_str().to_string(),
                ));
            }
            visitor::walk_expr(self, expr);
        }
    }
    let body = parse(s)?;
    let mut attrs = Attrs(Vec::new());
    for stmt in &body {
        attrs.visit_stmt(stmt);
    }
    if attrs.0.is_empty() {
        return None;
    }
    let mut edits = Vec::new();
    for (start, value_end, end, name) in attrs.0 {
        // The dot: the last '.' between the value and the name (parentheses and
        // spaces may sit between).
        let dot = value_end + s[value_end..end].rfind('.')?;
        edits.push((start, start, "getattr(".to_string()));
        edits.push((dot, end, format!(", {})", runtime_text(&name, rng))));
    }
    Some(apply_edits(s, edits))
}

/// Names the snippet binds (assignments, loops, functions, classes) get new names.
fn rename(s: &str, rng: &mut Rng) -> Option<String> {
    #[derive(Default)]
    struct Names {
        bound: std::collections::BTreeSet<String>,
        uses: Vec<(usize, usize, String)>,
    }
    impl<'a> Visitor<'a> for Names {
        fn visit_stmt(&mut self, stmt: &'a Stmt) {
            match stmt {
                Stmt::FunctionDef(f) => {
                    self.bound.insert(f.name.to_string());
                    self.uses.push((usize::from(f.name.start()), usize::from(f.name.end()), f.name.to_string()));
                }
                Stmt::ClassDef(c) => {
                    self.bound.insert(c.name.to_string());
                    self.uses.push((usize::from(c.name.start()), usize::from(c.name.end()), c.name.to_string()));
                }
                _ => {}
            }
            visitor::walk_stmt(self, stmt);
        }
        fn visit_expr(&mut self, expr: &'a Expr) {
            if let Expr::Name(n) = expr {
                if n.ctx == ExprContext::Store {
                    self.bound.insert(n.id.to_string());
                }
                self.uses.push((usize::from(n.range.start()), usize::from(n.range.end()), n.id.to_string()));
            }
            visitor::walk_expr(self, expr);
        }
    }
    let body = parse(s)?;
    let mut names = Names::default();
    for stmt in &body {
        names.visit_stmt(stmt);
    }
    // Dunder names (`__name__`, `__builtins__`) mean something to Python; keep them.
    names.bound.retain(|n| !n.starts_with("__"));
    if names.bound.is_empty() {
        return None;
    }
    let fresh: std::collections::BTreeMap<String, String> =
        names.bound.iter().map(|n| (n.clone(), format!("_trrm_{}_{}", n.len(), rng.below(100_000)))).collect();
    let edits = names
        .uses
        .into_iter()
        .filter_map(|(start, end, name)| fresh.get(&name).map(|new| (start, end, new.clone())))
        .collect();
    Some(apply_edits(s, edits))
}

/// The source cut in two at a top-level statement boundary (`None` with fewer than
/// two statements).
fn split(s: &str) -> Option<(String, String)> {
    let body = parse(s)?;
    if body.len() < 2 {
        return None;
    }
    let at = usize::from(body[body.len() / 2].start());
    Some((s[..at].to_string(), s[at..].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &'static str, code: &str) -> Variant {
        let v = Variant::original(&[code.to_string()]);
        apply(name, &v, &mut Rng::for_variant(1, "t", 1)).unwrap_or_else(|| panic!("{name} applies"))
    }

    #[test]
    fn getattr_rewrites_nested_reads_only() {
        let v = one("getattr_runtime", "x = ().__class__.__bases__\n(a).b = 1\n");
        let out = &v.steps[0];
        assert!(out.starts_with("x = getattr(getattr(()"), "{out}");
        assert!(out.contains("(a).b = 1"), "stores stay: {out}");
        assert!(parse(out).is_some(), "valid Python: {out}");
    }

    #[test]
    fn every_transform_keeps_python_valid() {
        let code = "import math\nclass K:\n    v = 1\ndef f(a):\n    return a.real + K.v\ns = f\"{math.pi}\"\nprint(s, f(2))\n";
        for name in TRANSFORMS {
            let v = one(name, code);
            for step in &v.steps {
                assert!(parse(step).is_some(), "{name} made invalid Python:\n{step}");
            }
        }
    }

    #[test]
    fn variants_are_deterministic_and_seed_dependent() {
        let steps = vec!["a = ().__class__\nprint(a)\n".to_string()];
        let a = variant(&steps, 7, "x", 1);
        assert_eq!(a, variant(&steps, 7, "x", 1));
        let others: Vec<_> = (1..20).map(|n| variant(&steps, 8, "x", n)).collect();
        assert!(others.iter().any(|o| *o != a), "another seed gives other variants");
    }

    #[test]
    fn splitting_and_swallowing_are_lenient() {
        assert!(one("split_session", "a = 1\nb = 2\nprint(a + b)\n").lenient);
        assert_eq!(one("split_session", "a = 1\nb = 2\nprint(a + b)\n").steps.len(), 2);
        assert!(one("try_swallow", "1/0").lenient);
        assert!(!one("wrap_function", "1/0").lenient);
    }

    #[test]
    fn literals_escape_everything() {
        assert_eq!(py_str("a\"b\\\n\u{e9}"), "\"a\\\"b\\\\\\n\\U000000e9\"");
    }
}
