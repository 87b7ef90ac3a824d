//! Judging the red team's runs: each by its host effects, its status against the
//! attack's contained list (narrowed under a fuel budget), and its fuel count.

use super::*;

pub(super) fn judge(
    options: &Options,
    verdicts: Vec<Verdict>,
    parity: Vec<ParityRow>,
    mut failures: Vec<Failure>,
    unattributed: Vec<String>,
) -> Report {
    let mut rows: BTreeMap<(Category, usize), (Row, Vec<u64>)> = BTreeMap::new();
    for v in verdicts {
        let attack = &options.corpus[v.attack];
        let ci = attack.category;
        let ti = options.tiers.iter().position(|t| *t == v.tier).unwrap_or(0);
        let (row, overshoot) = rows.entry((ci, ti)).or_insert_with(|| (Row::new(attack.category, v.tier), Vec::new()));
        row.attempted += 1;
        overshoot.extend(&v.overshoot_ms);
        let fail = |kind: FailureKind, detail: String| Failure {
            kind,
            tier: v.tier.to_string(),
            attack: attack.name.clone(),
            variant: v.variant.label(),
            detail,
            steps: v.steps.clone(),
        };
        if !v.effects.is_empty() {
            row.escaped += 1;
            failures.push(fail(FailureKind::Escaped, v.effects.join("; ")));
        } else if let Some(e) = &v.host_fault {
            row.host_crashes += 1;
            failures.push(fail(FailureKind::HostCrash, e.clone()));
        } else {
            // The policy refusing a request (denied, or refused before it ran) always
            // contains it. A variant may also fail on its own (an exception) or, when
            // it swallows exceptions or is split, end `ok`; neither is an escape.
            let also_contained = |s: &str| {
                s == "denied"
                    || s == "refused"
                    || (!v.variant.transforms.is_empty() && (s == "exception" || (v.variant.lenient && s == "ok")))
            };
            // Under a fuel budget, work ends at the budget, not at the deadline.
            let contained: Vec<String> = match v.fuel {
                Some(_) if !attack.waits => attack
                    .contained
                    .iter()
                    .filter(|s| *s != "timeout")
                    .cloned()
                    .chain(std::iter::once("fuel_exhausted".to_string()))
                    .collect(),
                _ => attack.contained.clone(),
            };
            let under = v.fuel.map(|f| format!(" under a fuel budget of {f}")).unwrap_or_default();
            match v.statuses.iter().find(|s| !contained.contains(s) && !also_contained(s)) {
                Some(s) => {
                    row.uncontained += 1;
                    failures.push(fail(
                        FailureKind::Uncontained,
                        format!("ended {s}{under}; contained means one of {}", contained.join(", ")),
                    ));
                }
                None if v.fuel_over.is_some() => {
                    row.uncontained += 1;
                    failures.push(fail(FailureKind::Uncontained, v.fuel_over.clone().unwrap_or_default()));
                }
                None => row.contained += 1,
            }
        }
    }
    let matrix: Vec<Row> = rows
        .into_values()
        .map(|(mut row, mut overshoot)| {
            overshoot.sort_unstable();
            row.overshoot_p99_ms = (!overshoot.is_empty()).then(|| overshoot[(overshoot.len() * 99).div_ceil(100) - 1]);
            row
        })
        .collect();
    let passed = failures.is_empty() && unattributed.is_empty();
    Report {
        seed: options.seed,
        variants: options.variants,
        tiers: options.tiers.iter().map(ToString::to_string).collect(),
        attacks: options.corpus.len(),
        matrix,
        parity,
        unattributed,
        failures,
        passed,
    }
}
