//! Static analysis of a snippet before it runs: one parse, a list of its imports,
//! and findings about constructs that reach interpreter internals.
//!
//! # Security
//! Analysis is an early refusal with a good message, not a wall: names can be built
//! at run time, so the interpreter tier's walls are below Python (the attributes
//! that hand out interpreter internals are removed from its types), and the CPython
//! tiers' behind WASI and the container. What analysis must do itself is cap
//! nesting depth, so that neither the compiler nor the interpreter recurses deep
//! enough to exhaust a stack.
//!
//! Parsing recurses with the depth of the source; call [`analyze`] on a thread with
//! a large stack (the rustpython tier's workers have one).

use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{Expr, Pattern, Stmt};
use ruff_text_size::Ranged;

/// Deepest expression or statement nesting accepted (CPython's own parser stops
/// near 200).
pub const MAX_NESTING: usize = 200;

/// Attribute names that reach frames, code objects or generator internals without a
/// leading underscore. The rustpython tier's prelude enforces the same list at run
/// time.
pub const DENIED_ATTRS: &[&str] = &[
    "gi_frame",
    "gi_code",
    "gi_yieldfrom",
    "gi_suspended",
    "cr_frame",
    "cr_code",
    "cr_await",
    "cr_origin",
    "cr_suspended",
    "ag_frame",
    "ag_code",
    "ag_await",
    "f_back",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_code",
    "f_trace",
    "tb_frame",
    "co_code",
    "co_consts",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
    "func_globals",
    "func_code",
    "im_func",
    "im_self",
    "mro",
];

/// Dunder attributes ordinary code uses that lead nowhere dangerous (also handed to
/// the rustpython tier's prelude).
pub const SAFE_DUNDERS: &[&str] = &[
    "__init__",
    "__new__",
    "__name__",
    "__qualname__",
    "__doc__",
    "__class__",
    "__module__",
    "__slots__",
    "__post_init__",
    "__match_args__",
    "__len__",
    "__iter__",
    "__next__",
    "__aiter__",
    "__anext__",
    "__await__",
    "__enter__",
    "__exit__",
    "__aenter__",
    "__aexit__",
    "__contains__",
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__missing__",
    "__call__",
    "__bool__",
    "__hash__",
    "__repr__",
    "__str__",
    "__format__",
    "__bytes__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "__round__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__add__",
    "__sub__",
    "__mul__",
    "__matmul__",
    "__truediv__",
    "__floordiv__",
    "__mod__",
    "__divmod__",
    "__pow__",
    "__lshift__",
    "__rshift__",
    "__and__",
    "__xor__",
    "__or__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__invert__",
    "__radd__",
    "__rsub__",
    "__rmul__",
    "__rtruediv__",
    "__rfloordiv__",
    "__rmod__",
    "__rpow__",
    "__rand__",
    "__ror__",
    "__rxor__",
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__ifloordiv__",
    "__imod__",
    "__ior__",
    "__iand__",
    "__ixor__",
    "__getattr__",
    "__setattr__",
    "__delattr__",
    "__set_name__",
    "__get__",
    "__set__",
    "__delete__",
    "__init_subclass__",
    "__class_getitem__",
    "__reversed__",
    "__length_hint__",
    "__copy__",
    "__deepcopy__",
    // Exception chaining and generic aliases: the interpreter tier's walls do not
    // depend on these names being absent.
    "__cause__",
    "__context__",
    "__suppress_context__",
    "__traceback__",
    "__notes__",
    "__orig_class__",
];

/// Whether snippets may use attribute `name`.
pub fn attr_allowed(name: &str) -> bool {
    if DENIED_ATTRS.contains(&name) {
        return false;
    }
    !name.starts_with("__") || SAFE_DUNDERS.contains(&name)
}

/// One `import` a snippet makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Absolute module name (`json.decoder`); empty for `from . import x`.
    pub module: String,
    /// Relative import level (0 for absolute).
    pub level: u32,
    /// 1-based line.
    pub line: usize,
}

crate::names::named! {
    /// How serious a finding is.
    "severity" pub enum Severity {
        /// The run is refused.
        Deny = "deny",
        /// Recorded; the run goes ahead.
        Warn = "warn",
    }
}

/// Something the analysis noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Deny or warn.
    pub severity: Severity,
    /// 1-based line.
    pub line: usize,
    /// What and why.
    pub message: String,
}

/// The result of analysing one snippet.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Every import statement.
    pub imports: Vec<Import>,
    /// What was noticed, in source order.
    pub findings: Vec<Finding>,
    /// The parser's complaint, when the source is not valid Python (the interpreter
    /// then reports the `SyntaxError` itself).
    pub syntax_error: Option<String>,
}

impl Analysis {
    /// The first finding that refuses the run.
    pub fn denial(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.severity == Severity::Deny)
    }
}

/// Parses and inspects `source`.
pub fn analyze(source: &str) -> Analysis {
    let mut out = Analysis::default();
    let lines = LineIndex::new(source);
    if !source.is_ascii() {
        hidden_characters(source, &lines, &mut out);
    }
    let parsed = match ruff_python_parser::parse_module(source) {
        Ok(p) => p,
        Err(e) => {
            out.syntax_error = Some(e.to_string());
            return out;
        }
    };
    if !source.is_ascii() {
        non_ascii_names(source, parsed.tokens(), &lines, &mut out);
    }
    let mut v = Inspector { lines: &lines, out: &mut out, depth: 0, too_deep: false };
    for stmt in &parsed.syntax().body {
        v.visit_stmt(stmt);
    }
    out.findings.sort_by_key(|f| f.line);
    out
}

/// Characters that make what a reviewer sees differ from what runs (bidirectional
/// controls, invisible characters; see [`crate::text::hidden`]): one warning per
/// line, naming them. The review page shows each as a visible mark.
fn hidden_characters(source: &str, lines: &LineIndex, out: &mut Analysis) {
    let mut last_line = 0;
    for (at, c) in source.char_indices() {
        let Some(name) = crate::text::hidden(c) else { continue };
        let line = lines.line(at);
        if line != last_line {
            last_line = line;
            let message = format!(
                "invisible or bidirectional control character U+{:04X} ({name}): what is displayed may differ from what runs",
                u32::from(c)
            );
            out.findings.push(Finding { severity: Severity::Warn, line, message });
        }
    }
}

/// Identifiers with non-ASCII letters, which can look like other identifiers
/// (Cyrillic `а` for Latin `a`): one warning per distinct name.
fn non_ascii_names(source: &str, tokens: &ruff_python_ast::token::Tokens, lines: &LineIndex, out: &mut Analysis) {
    let mut seen = std::collections::HashSet::new();
    for t in tokens.iter().filter(|t| t.kind() == ruff_python_ast::token::TokenKind::Name) {
        let Some(name) = source.get(t.range().start().into()..t.range().end().into()) else { continue };
        if name.is_ascii() || !seen.insert(name) {
            continue;
        }
        let odd = crate::text::non_ascii_code_points(name);
        let message = format!("identifier {name:?} has non-ASCII characters ({odd}): it may look like another name");
        out.findings.push(Finding { severity: Severity::Warn, line: lines.line(t.range().start().into()), message });
    }
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(source.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

struct Inspector<'s> {
    lines: &'s LineIndex,
    out: &'s mut Analysis,
    depth: usize,
    too_deep: bool,
}

impl Inspector<'_> {
    fn line_of(&self, node: &impl Ranged) -> usize {
        self.lines.line(usize::from(node.start()))
    }

    fn deny(&mut self, line: usize, message: String) {
        self.out.findings.push(Finding { severity: Severity::Deny, line, message });
    }

    fn warn(&mut self, line: usize, message: String) {
        self.out.findings.push(Finding { severity: Severity::Warn, line, message });
    }

    /// Tracks nesting; returns false (and records one finding) past the cap.
    fn enter(&mut self, line: usize) -> bool {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            if !self.too_deep {
                self.too_deep = true;
                self.deny(line, format!("the code nests deeper than {MAX_NESTING} levels"));
            }
            return false;
        }
        true
    }
}

impl<'a> Visitor<'a> for Inspector<'_> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        let line = self.line_of(stmt);
        match stmt {
            Stmt::Import(imp) => {
                for alias in &imp.names {
                    self.out.imports.push(Import { module: alias.name.to_string(), level: 0, line });
                }
            }
            Stmt::ImportFrom(imp) => {
                let module = imp.module.as_ref().map(|m| m.to_string()).unwrap_or_default();
                for alias in &imp.names {
                    if !attr_allowed(alias.name.as_str()) {
                        self.deny(line, format!("importing {:?} from a module is not allowed", alias.name.as_str()));
                    }
                }
                self.out.imports.push(Import { module, level: imp.level, line });
            }
            // `__match_args__` names the attributes positional class patterns read.
            Stmt::Assign(assign)
                if assign.targets.iter().any(|t| matches!(t, Expr::Name(n) if n.id.as_str() == "__match_args__")) =>
            {
                let names: &[Expr] = match &*assign.value {
                    Expr::Tuple(t) => &t.elts,
                    Expr::List(l) => &l.elts,
                    _ => &[],
                };
                for name in names {
                    if let Expr::StringLiteral(lit) = name
                        && !attr_allowed(lit.value.to_str())
                    {
                        let message = format!("attribute {:?} is not accessible in the sandbox", lit.value.to_str());
                        self.deny(line, message);
                    }
                }
            }
            _ => {}
        }
        if self.enter(line) {
            visitor::walk_stmt(self, stmt);
        }
        self.depth -= 1;
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        let line = self.line_of(expr);
        if let Expr::Attribute(attr) = expr
            && !attr_allowed(attr.attr.as_str())
        {
            self.deny(line, format!("attribute {:?} is not accessible in the sandbox", attr.attr.as_str()));
        }
        // Code and names built at run time: what static analysis cannot see through.
        if let Expr::Call(call) = expr
            && let Expr::Name(f) = &*call.func
        {
            match f.id.as_str() {
                name @ ("exec" | "eval" | "compile" | "__import__") => {
                    self.warn(line, format!("{name}() runs code or imports built at run time"));
                }
                name @ ("getattr" | "setattr" | "delattr" | "hasattr") => match call.arguments.args.get(1) {
                    Some(Expr::StringLiteral(lit)) if !attr_allowed(lit.value.to_str()) => {
                        let message = format!("attribute {:?} is not accessible in the sandbox", lit.value.to_str());
                        self.deny(line, message);
                    }
                    Some(Expr::StringLiteral(_)) | None => {}
                    Some(_) => self.warn(line, format!("{name}() with an attribute name computed at run time")),
                },
                _ => {}
            }
        }
        if self.enter(line) {
            visitor::walk_expr(self, expr);
        }
        self.depth -= 1;
    }

    fn visit_pattern(&mut self, pattern: &'a Pattern) {
        // `case C(name=...)` reads attribute `name` of the subject.
        if let Pattern::MatchClass(class) = pattern {
            let line = self.line_of(pattern);
            for kw in &class.arguments.keywords {
                if !attr_allowed(kw.attr.as_str()) {
                    self.deny(line, format!("attribute {:?} is not accessible in the sandbox", kw.attr.as_str()));
                }
            }
        }
        visitor::walk_pattern(self, pattern);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_imports_with_lines() {
        let a = analyze("import json, math\nfrom os import path\nfrom . import x\n");
        let mods: Vec<_> = a.imports.iter().map(|i| (i.module.as_str(), i.level, i.line)).collect();
        assert_eq!(mods, [("json", 0, 1), ("math", 0, 1), ("os", 0, 2), ("", 1, 3)]);
        assert!(a.denial().is_none());
    }

    #[test]
    fn refuses_dunder_chains_and_frame_walks() {
        for code in [
            "json.dumps.__globals__",
            "object.__subclasses__()",
            "(lambda: 0).__code__",
            "g.gi_frame.f_back",
            "f'{x.__globals__}'",
            "from json import __builtins__",
            "match getattr:\n    case object(__globals__=g):\n        pass",
            "getattr(f, '__globals__')",
            "class C:\n    __match_args__ = ('__globals__',)",
        ] {
            assert!(analyze(code).denial().is_some(), "{code} should be refused");
        }
        assert!(analyze("class A:\n    def __init__(self): self.x = 1\nA().__class__.__name__").denial().is_none());
    }

    #[test]
    fn warns_about_code_and_names_built_at_run_time() {
        for (code, want) in [
            ("eval('1')", "eval()"),
            ("exec(s)", "exec()"),
            ("compile(s, 'x', 'exec')", "compile()"),
            ("getattr(o, '_' + 'x')", "getattr() with an attribute name computed"),
            ("setattr(o, n, 1)", "setattr() with an attribute name computed"),
        ] {
            let a = analyze(code);
            assert!(
                a.findings.iter().any(|f| f.severity == Severity::Warn && f.message.contains(want)),
                "{code}: {:?}",
                a.findings
            );
            assert!(a.denial().is_none(), "{code}: a warning, not a refusal");
        }
        assert!(analyze("getattr(o, 'name')").findings.is_empty(), "a literal name is plain attribute access");
    }

    /// H5: Trojan Source and homoglyphs are findings, so that a reviewer is told.
    #[test]
    fn h5_bidi_controls_invisible_characters_and_homoglyph_names_are_reported() {
        let trojan =
            "access = 'user'\nif access != 'user\u{202E} \u{2066}# admin\u{2069} \u{2066}':\n    print('admin')\n";
        let a = analyze(trojan);
        let hidden: Vec<_> = a.findings.iter().filter(|f| f.message.contains("bidirectional")).collect();
        assert_eq!(hidden.len(), 1, "one finding per line: {:?}", a.findings);
        assert!(hidden[0].message.contains("U+202E") && hidden[0].line == 2, "{:?}", hidden[0]);
        let a = analyze("\u{0430}dmin = True\nif \u{0430}dmin: pass\nx = 'a\u{200B}b'\n");
        let names: Vec<_> = a.findings.iter().filter(|f| f.message.contains("non-ASCII")).collect();
        assert_eq!(names.len(), 1, "one finding per distinct name: {:?}", a.findings);
        assert!(names[0].message.contains("U+0430"), "{:?}", names[0]);
        assert!(a.findings.iter().any(|f| f.message.contains("U+200B")), "{:?}", a.findings);
        assert!(a.denial().is_none(), "warnings: the code runs as written");
        assert!(analyze("s = 'caf\u{e9}'").findings.is_empty(), "non-ASCII text in a string is ordinary");
    }

    #[test]
    fn caps_nesting() {
        let deep = format!("{}1", "-".repeat(1000));
        let a = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || analyze(&deep))
            .expect("spawn")
            .join()
            .expect("join");
        assert!(a.denial().is_some_and(|f| f.message.contains("nests deeper")));
    }

    #[test]
    fn reports_syntax_errors_without_findings() {
        let a = analyze("def (:");
        assert!(a.syntax_error.is_some());
    }
}
