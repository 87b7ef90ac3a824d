//! The attack corpus: YAML files of attacks (built in, or a directory given),
//! parsed and checked, and the parity cases every tier must agree on.

use super::*;

/// One attack from the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attack {
    /// Unique name (regression tests are named after it).
    pub name: String,
    /// What it goes after.
    pub category: Category,
    /// The host effect that would mean it worked.
    pub effect: Effect,
    /// The requests, in order (one unless it needs a session).
    pub steps: Vec<String>,
    /// Statuses that count as contained (see [`CONTAINED_NAMES`]).
    pub contained: Vec<String>,
    /// Tiers it runs on (all when empty).
    pub tiers: Vec<Tier>,
    /// It waits (sleeps, or on the kernel for memory) rather than works, so a fuel
    /// budget does not bound it: under one, it may still end at its deadline (see
    /// [`Options::rustpython_fuel`]).
    pub waits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCorpus {
    pub(super) category: Category,
    #[allow(dead_code, reason = "documentation for readers of the file")]
    pub(super) description: Option<String>,
    pub(super) attacks: Vec<RawAttack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttack {
    pub(super) name: String,
    pub(super) effect: Effect,
    #[allow(dead_code, reason = "documentation for readers of the file")]
    pub(super) why: Option<String>,
    pub(super) code: Option<String>,
    pub(super) steps: Option<Vec<String>>,
    pub(super) contained: Option<Vec<String>>,
    pub(super) tiers: Option<Vec<String>>,
    pub(super) waits: Option<bool>,
}

/// A corpus file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct CorpusError {
    /// The file.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

/// Parses one corpus file.
///
/// # Errors
/// Malformed YAML, unknown keys, an unknown category, effect, status, tier or
/// placeholder, an attack with no code or with both `code` and `steps`.
pub fn parse_corpus(text: &str, origin: &str) -> Result<Vec<Attack>, CorpusError> {
    let err = |message: String| CorpusError { origin: origin.to_string(), message };
    let raw: RawCorpus = serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::with_capacity(raw.attacks.len());
    for a in raw.attacks {
        let at = |m: String| err(format!("attack {:?}: {m}", a.name));
        if a.name.is_empty() || !a.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(at("names are lower-case letters, digits and _".into()));
        }
        let steps = match (&a.code, &a.steps) {
            (Some(c), None) => vec![c.clone()],
            (None, Some(s)) if !s.is_empty() => s.clone(),
            (Some(_), Some(_)) => return Err(at("has both code and steps".into())),
            _ => return Err(at("has no code".into())),
        };
        for step in &steps {
            if step.trim().is_empty() {
                return Err(at("has an empty step".into()));
            }
            let mut rest = step.as_str();
            while let Some(open) = rest.find("{{") {
                let close = rest[open..].find("}}").ok_or_else(|| at("has an unclosed {{".into()))?;
                let name = &rest[open + 2..open + close];
                if !PLACEHOLDERS.contains(&name) {
                    return Err(at(format!("placeholder {{{{{name}}}}} is not one of {}", PLACEHOLDERS.join(", "))));
                }
                rest = &rest[open + close + 2..];
            }
        }
        let contained = a.contained.unwrap_or_else(|| CONTAINED_NAMES.iter().map(|s| s.to_string()).collect());
        if contained.is_empty() {
            return Err(at("contained is empty".into()));
        }
        if let Some(bad) = contained.iter().find(|c| !CONTAINED_NAMES.contains(&c.as_str())) {
            return Err(at(format!("contained status {bad:?} is not one of {}", CONTAINED_NAMES.join(", "))));
        }
        let mut tiers = Vec::new();
        for t in a.tiers.unwrap_or_default() {
            tiers.push(Tier::parse(&t).ok_or_else(|| at(format!("tier {t:?} is not rustpython, wasm or docker")))?);
        }
        let waits = a.waits.unwrap_or(false);
        out.push(Attack { name: a.name, category: raw.category, effect: a.effect, steps, contained, tiers, waits });
    }
    Ok(out)
}

/// The corpus compiled into this binary.
///
/// # Errors
/// Never for a binary whose tests passed; the parse is checked all the same.
pub fn builtin_corpus() -> Result<Vec<Attack>, CorpusError> {
    let mut all = Vec::new();
    for (name, text) in BUILTIN {
        all.extend(parse_corpus(text, &format!("redteam/corpus/{name}"))?);
    }
    check_names(all)
}

/// Every `*.yaml` file in `dir`.
///
/// # Errors
/// An unreadable directory or file, or any [`parse_corpus`] error.
pub fn load_corpus(dir: &Path) -> Result<Vec<Attack>, CorpusError> {
    let err = |m: String| CorpusError { origin: dir.display().to_string(), message: m };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("holds no .yaml corpus files".into()));
    }
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| CorpusError { origin: f.display().to_string(), message: e.to_string() })?;
        all.extend(parse_corpus(&text, &f.display().to_string())?);
    }
    check_names(all)
}

pub(super) fn check_names(all: Vec<Attack>) -> Result<Vec<Attack>, CorpusError> {
    let mut seen = std::collections::HashSet::new();
    for a in &all {
        if !seen.insert(a.name.as_str()) {
            return Err(CorpusError {
                origin: a.category.to_string(),
                message: format!("attack {:?} appears twice", a.name),
            });
        }
    }
    Ok(all)
}

/// One row of the policy-parity table: under a whitelist, a snippet is allowed or
/// denied, the same on every tier.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityCase {
    /// The policy's `allowed_modules` for this case.
    pub allowed_modules: Vec<String>,
    /// The snippet.
    pub code: String,
    /// Whether it must run (`true`) or be denied.
    pub allowed: bool,
}

/// The policy-parity table (`redteam/parity.yaml`).
///
/// # Errors
/// Only if the compiled-in table is malformed (a test holds it to parse).
pub fn parity_cases() -> Result<Vec<ParityCase>, CorpusError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        cases: Vec<ParityCase>,
    }
    serde_yaml::from_str::<File>(PARITY)
        .map(|f| f.cases)
        .map_err(|e| CorpusError { origin: "redteam/parity.yaml".into(), message: e.to_string() })
}
