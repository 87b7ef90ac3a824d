//! Which tier serves a request: the lightest one the policy allows, at or above its
//! minimum isolation, that can import what the snippet imports and whose breaker
//! is not open.
//!
//! The router decides from facts the [`crate::Sandbox`] gathers (the snippet's
//! imports from the static analysis, each tier's module set, breaker states); it
//! runs nothing itself.
//!
//! # Invariant
//! A request never runs on a tier the policy does not allow or below
//! `terrarium.min_isolation`; a fixed tier (`--tier`, `terrarium.tier`) is never
//! replaced by another. When no tier can serve, the answer says why for each.

use crate::analysis::Analysis;
use crate::policy::{Policy, Tier, TierChoice};

/// The tiers a request may run on, in the order the router tries them (lightest
/// first): the fixed tier alone, or every allowed tier at or above the minimum
/// isolation. Empty when a fixed tier is not allowed.
pub fn candidates(policy: &Policy, requested: TierChoice) -> Vec<Tier> {
    let choice = match requested {
        TierChoice::Auto => policy.tier(),
        fixed => fixed,
    };
    let allowed = |t: &Tier| refusal(policy, *t).is_none();
    match choice {
        TierChoice::Fixed(t) => [t].into_iter().filter(allowed).collect(),
        TierChoice::Auto => Tier::ALL.into_iter().filter(allowed).collect(),
    }
}

/// Why `policy` refuses the fixed tier `tier`, if it does: not in
/// `terrarium.allowed_tiers`, or below `terrarium.min_isolation`.
pub fn refusal(policy: &Policy, tier: Tier) -> Option<String> {
    if !policy.allowed_tiers().contains(&tier) {
        return Some(format!("tier {tier} is not allowed: {tier} is not in the policy's terrarium.allowed_tiers"));
    }
    if tier < policy.min_isolation() {
        return Some(format!(
            "tier {tier} is not allowed: {tier} is below the policy's terrarium.min_isolation ({})",
            policy.min_isolation()
        ));
    }
    None
}

/// The modules a tier must be able to import for this snippet: its absolute
/// imports that the policy allows (an import the policy refuses is denied on every
/// tier, so it never moves a request to another one).
pub fn needed_modules(analysis: &Analysis, policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = analysis
        .imports
        .iter()
        .filter(|i| i.level == 0 && !i.module.is_empty() && policy.allows_module(&i.module))
        .map(|i| i.module.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why a tier was passed over.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// It cannot import this module.
    Module(String),
    /// The request asks for `/scratch` or a workspace and the tier has no file system.
    NoFileSystem,
    /// Its breaker is open.
    BreakerOpen(crate::breaker::Open),
    /// Its module set could not be learned (a host fault, also counted by its breaker).
    Unknown(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Module(m) => write!(f, "cannot import {m}"),
            Skip::NoFileSystem => f.write_str("has no file system (for /scratch or /workspace)"),
            Skip::BreakerOpen(o) => write!(f, "{o}"),
            Skip::Unknown(e) => write!(f, "its modules could not be listed: {e}"),
        }
    }
}

/// The reason given in an outcome for running on `tier` after passing over
/// `skipped`.
pub fn reason(tier: Tier, requested: TierChoice, skipped: &[(Tier, Skip)]) -> String {
    if let TierChoice::Fixed(_) = requested {
        return format!("{tier}: the tier asked for");
    }
    if skipped.is_empty() {
        return format!("{tier}: the lightest allowed tier that serves the request");
    }
    let why: Vec<String> = skipped.iter().map(|(t, s)| format!("{t} {s}")).collect();
    format!("{tier}: escalated ({})", why.join("; "))
}

/// The first module of `needed` that `serves` refuses.
pub fn missing(needed: &[String], serves: impl Fn(&str) -> bool) -> Option<&str> {
    needed.iter().map(String::as_str).find(|m| !serves(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        let text = format!("{}terrarium:\n{extra}", crate::policy::DEFAULT_POLICY_YAML);
        Policy::from_yaml(&text, "<router test>").expect("policy")
    }

    #[test]
    fn candidates_respect_allowed_tiers_minimum_isolation_and_fixed_tiers() {
        let p = policy("  allowed_tiers: [rustpython, docker]\n");
        assert_eq!(candidates(&p, TierChoice::Auto), [Tier::Rustpython, Tier::Docker]);
        assert_eq!(candidates(&p, TierChoice::Fixed(Tier::Wasm)), Vec::<Tier>::new());
        let p = policy("  min_isolation: wasm\n");
        assert_eq!(candidates(&p, TierChoice::Auto), [Tier::Wasm, Tier::Docker]);
        assert_eq!(candidates(&p, TierChoice::Fixed(Tier::Rustpython)), Vec::<Tier>::new());
        let p = policy("  tier: wasm\n");
        assert_eq!(candidates(&p, TierChoice::Auto), [Tier::Wasm]);
        assert_eq!(candidates(&p, TierChoice::Fixed(Tier::Docker)), [Tier::Docker]);
    }

    #[test]
    fn only_imports_the_policy_allows_count() {
        let p = policy("  tier: auto\n");
        let a = crate::analysis::analyze("import json, os\nfrom math import pi\nfrom . import x\nimport json.decoder");
        assert_eq!(needed_modules(&a, &p), ["json", "json.decoder", "math"]);
    }
}
