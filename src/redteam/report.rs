//! What a red-team run reports: one row per category and tier, the failures
//! with their evidence, and the rendering of both.

use super::*;

/// One cell of the matrix: a category on a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The category.
    pub category: Category,
    /// The tier.
    pub tier: String,
    /// Runs (attack or variant, all its requests).
    pub attempted: u64,
    /// Runs with no host effect and a contained outcome.
    pub contained: u64,
    /// Runs with no host effect but an outcome the attack does not list.
    pub uncontained: u64,
    /// Runs with a host effect.
    pub escaped: u64,
    /// Runs during which a tier failed on the host's side.
    pub host_crashes: u64,
    /// 99th percentile of how long past the deadline runs that timed out ended
    /// (ms; `null` when none timed out).
    pub overshoot_p99_ms: Option<u64>,
}

impl Row {
    /// An empty cell for `category` on `tier`.
    pub fn new(category: Category, tier: Tier) -> Row {
        Row {
            category,
            tier: tier.to_string(),
            attempted: 0,
            contained: 0,
            uncontained: 0,
            escaped: 0,
            host_crashes: 0,
            overshoot_p99_ms: None,
        }
    }
}

/// The policy-parity table's result on one tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParityRow {
    /// The tier.
    pub tier: String,
    /// Cases run.
    pub cases: u64,
    /// Cases whose allow/deny differed from the table.
    pub disagreements: u64,
}

/// A run that failed the red team's bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Why it failed.
    pub kind: FailureKind,
    /// The tier.
    pub tier: String,
    /// The attack (or the parity case's code).
    pub attack: String,
    /// Which variant (`original`, or its transforms).
    pub variant: String,
    /// What was seen.
    pub detail: String,
    /// The requests sent.
    pub steps: Vec<String>,
}

/// The whole run's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The mutator's seed.
    pub seed: u64,
    /// Variants per attack.
    pub variants: u32,
    /// Tiers run.
    pub tiers: Vec<String>,
    /// Attacks in the corpus.
    pub attacks: usize,
    /// The matrix.
    pub matrix: Vec<Row>,
    /// Policy parity per tier.
    pub parity: Vec<ParityRow>,
    /// Host effects that named no run (any is an escape).
    pub unattributed: Vec<String>,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// No escape, host crash, uncontained outcome, unattributed effect or parity
    /// disagreement.
    pub passed: bool,
}

impl Report {
    /// The matrix as a text table, then the failures.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{:<20} {:<10} {:>9} {:>9} {:>11} {:>7} {:>12} {:>15}\n",
            "category", "tier", "attempted", "contained", "uncontained", "escaped", "host_crashes", "overshoot_p99"
        );
        for r in &self.matrix {
            let p99 = r.overshoot_p99_ms.map_or("-".to_string(), |ms| format!("{ms} ms"));
            s.push_str(&format!(
                "{:<20} {:<10} {:>9} {:>9} {:>11} {:>7} {:>12} {:>15}\n",
                r.category, r.tier, r.attempted, r.contained, r.uncontained, r.escaped, r.host_crashes, p99
            ));
        }
        for p in &self.parity {
            s.push_str(&format!(
                "{:<20} {:<10} {:>9} {:>9} {:>11}\n",
                "policy_parity",
                p.tier,
                p.cases,
                p.cases - p.disagreements,
                p.disagreements
            ));
        }
        for u in &self.unattributed {
            s.push_str(&format!("unattributed host effect: {u}\n"));
        }
        for f in &self.failures {
            s.push_str(&format!("\n{} on {}: {} [{}]\n  {}\n", f.kind, f.tier, f.attack, f.variant, f.detail));
            for (i, step) in f.steps.iter().enumerate() {
                let shown: String = step.chars().take(600).collect();
                s.push_str(&format!("  --- request {} ---\n{}\n", i + 1, indent(&shown)));
            }
        }
        s.push_str(&format!(
            "\n{} attacks, {} variants each, seed {}: {}\n",
            self.attacks,
            self.variants,
            self.seed,
            if self.passed { "no escapes, no host crashes" } else { "FAILED" }
        ));
        s
    }
}

pub(super) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
