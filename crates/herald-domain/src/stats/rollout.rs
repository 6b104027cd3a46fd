//! The rollout decision (SPEC section 5): the variant with the highest rate on
//! the rollout's metric wins if its chance to beat each other variant is at
//! least [`WINNER_MIN_CHANCE`]; against a variant where gbstats has no
//! estimate (a rate of 0% or 100%), Fisher's exact test must give one-sided
//! p below [`FISHER_MAX_P`] instead. Without a clear winner the decision
//! waits (the caller retries) until its last call, when the leader, the
//! variant with the higher observed rate, goes. Either way the reason is
//! spelled out in words that name the metric actually used.
//!
//! With sequential testing on (`[results] sequential`), a decision taken at
//! any look must stay valid however often it looked: the leader then wins
//! when its always-valid p-value against each other variant is below
//! [`SEQUENTIAL_MAX_P`] and its lift is positive (see [`decide_rollout_with`]).
//!
//! With CUPED (`[results] cuped`) the leader's chances and p-values come from
//! the regression-adjusted comparison, as the report's do
//! ([`decide_rollout_adjusted`]); the leader is still the variant with the
//! highest observed rate.

use serde::Serialize;

use super::{
    ArmCounts, Comparison, MetricArm, MetricComparison, TestKind, compare_metric, compare_with,
};

/// The leader must beat every other variant with at least this chance to win outright.
pub const WINNER_MIN_CHANCE: f64 = 0.95;

/// Where gbstats has no estimate, the leader must beat the rival with a
/// one-sided Fisher exact p-value below this.
pub const FISHER_MAX_P: f64 = 0.05;

/// With sequential testing, the leader must beat each rival with an
/// always-valid p-value below this.
pub const SEQUENTIAL_MAX_P: f64 = 0.05;

/// Terms of the hypergeometric tail summed at most; where gbstats has no
/// estimate the tail is a single term, so this only bounds other callers.
const FISHER_MAX_TERMS: u64 = 1_000_000;

/// The leader's chance to beat one other variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RivalChance {
    /// Index of the rival among the variants given.
    pub variant: usize,
    /// Chance the leader beats it, taking it as the control; `None` without an estimate.
    pub chance_to_beat: Option<f64>,
    /// Without an estimate: the one-sided Fisher exact p-value of "the leader's
    /// rate is higher than the rival's".
    pub fisher_p: Option<f64>,
    /// With sequential testing: the leader's always-valid two-sided p-value
    /// against this rival; `null` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequential_p: Option<f64>,
    /// The chance and p-value are CUPED-adjusted (`[results] cuped`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cuped: bool,
}

impl RivalChance {
    /// Whether the leader beats this rival clearly.
    pub fn beaten(&self) -> bool {
        match (self.chance_to_beat, self.fisher_p, self.sequential_p) {
            // A positive lift is a chance to beat above one half.
            (Some(chance), _, Some(p)) => p < SEQUENTIAL_MAX_P && chance > 0.5,
            (Some(chance), _, None) => chance >= WINNER_MIN_CHANCE,
            (None, Some(p), _) => p < FISHER_MAX_P,
            (None, None, _) => false,
        }
    }
}

/// Which variant goes to the rest of the audience, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    /// Index of the variant that goes.
    pub chosen: usize,
    /// Index of the variant with the highest rate (the first of equals).
    pub leader: usize,
    /// The leader won outright.
    pub clear_winner: bool,
    /// A decision was made; `false`: no clear winner yet and this was not the
    /// last call, so the caller tries again later and sends nothing.
    pub decided: bool,
    /// The leader against each other variant, in the order given.
    pub rivals: Vec<RivalChance>,
    /// The decision in words.
    pub reason: String,
}

/// A share as a percentage, never rounded up to a certainty it is not.
fn percent(share: f64) -> String {
    let shown = format!("{:.1}%", share * 100.0);
    if share < 1.0 && shown == "100.0%" {
        ">99.9%".to_owned()
    } else {
        shown
    }
}

/// A p-value for people: tiny ones in scientific notation.
fn p_value(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    use statrs::function::gamma::ln_gamma;
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// One-sided Fisher exact test: the chance, with the margins fixed, that the
/// `leader` arm has at least as many successes as it has, were both rates
/// equal. Small when the leader's rate is truly higher. 1 for an empty arm.
pub fn fisher_one_sided(leader: ArmCounts, rival: ArmCounts) -> f64 {
    let (n1, k1) = (leader.n(), leader.k());
    let total = n1 + rival.n();
    let successes = k1 + rival.k();
    if n1 == 0 || rival.n() == 0 {
        return 1.0;
    }
    let ln_all = ln_choose(total, n1);
    let top = n1.min(successes);
    let mut p = 0.0;
    for x in (k1..=top).take(FISHER_MAX_TERMS as usize) {
        // x of the leader's n1 are successes, the rest of the successes are the rival's.
        if n1 - x > total - successes {
            continue;
        }
        p += (ln_choose(successes, x) + ln_choose(total - successes, n1 - x) - ln_all).exp();
    }
    p.min(1.0)
}

/// How the decision names the metric: "converted best", "had the best click rate".
fn best_at(metric: &str) -> String {
    match metric {
        "conversion" => "converted best".to_owned(),
        other => format!("had the best {other} rate"),
    }
}

/// Decides among the `(name, counts)` of the variants (the holdout excluded), in
/// file order, on the conversion metric, as a last call; `None` when there are none.
pub fn pick_winner(variants: &[(&str, ArmCounts)]) -> Option<Rollout> {
    decide_rollout(variants, "conversion", true)
}

/// Decides among the `(name, counts)` of the variants on `metric` (`conversion`,
/// `click` or `open`: the words name it). Without a clear winner the result is
/// undecided unless `last_call`, when the leader goes. `None` without variants.
pub fn decide_rollout(
    variants: &[(&str, ArmCounts)],
    metric: &str,
    last_call: bool,
) -> Option<Rollout> {
    decide_rollout_with(variants, metric, last_call, TestKind::FixedHorizon)
}

/// [`decide_rollout`] under `test`: with [`TestKind::Sequential`] the leader
/// beats a rival when its sequential p-value is below [`SEQUENTIAL_MAX_P`] and
/// its lift positive, instead of by its chance to beat; where there is no
/// estimate Fisher's exact test decides as before.
pub fn decide_rollout_with(
    variants: &[(&str, ArmCounts)],
    metric: &str,
    last_call: bool,
    test: TestKind,
) -> Option<Rollout> {
    decide_rollout_adjusted(variants, None, metric, last_call, test)
}

/// [`decide_rollout_with`], the leader's test against each rival on the
/// CUPED-adjusted sums `adjusted` (one [`MetricArm::Adjusted`] a variant, in
/// the order of `variants`) when given: its chance to beat and p-value are
/// the adjusted ones, as in the report. Against a rival where the adjusted
/// comparison has no estimate, the unadjusted one (or Fisher's) decides.
pub fn decide_rollout_adjusted(
    variants: &[(&str, ArmCounts)],
    adjusted: Option<&[MetricArm]>,
    metric: &str,
    last_call: bool,
    test: TestKind,
) -> Option<Rollout> {
    variants.first()?;
    let adjusted = adjusted.filter(|a| a.len() == variants.len());
    // With CUPED's sums the leader is the variant ahead once adjusted (its
    // adjusted lift over the first variant, the first's being zero), so a
    // variant that converts more only because its contacts bought more before
    // can't lead, and so can't go at the deadline either. Where any variant
    // has no adjusted estimate, the observed rates pick it as before.
    let adjusted_leader = adjusted.and_then(|arms| {
        let mut best = (0, 0.0);
        for (index, arm) in arms.iter().enumerate().skip(1) {
            match compare_metric(&arms[0], arm, test).ok()? {
                MetricComparison::Estimate(e) if e.abs_lift > best.1 => best = (index, e.abs_lift),
                MetricComparison::Estimate(_) => {}
                MetricComparison::NotEnoughData { .. } => return None,
            }
        }
        Some(best.0)
    });
    let mut leader = 0;
    for (index, (_, counts)) in variants.iter().enumerate().skip(1) {
        if counts.cmp_rate(variants[leader].1).is_gt() {
            leader = index;
        }
    }
    let led_once_adjusted = adjusted_leader.is_some_and(|a| a != leader);
    let leader = adjusted_leader.unwrap_or(leader);
    let (leader_name, leader_counts) = variants[leader];
    if variants.len() == 1 {
        return Some(Rollout {
            chosen: 0,
            leader: 0,
            clear_winner: true,
            decided: true,
            rivals: Vec::new(),
            reason: format!("{leader_name} is the only variant"),
        });
    }

    let rivals: Vec<RivalChance> = variants
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(index, (_, counts))| {
            let sequential = matches!(test, TestKind::Sequential { .. });
            let cuped = adjusted
                .and_then(|arms| compare_metric(&arms[index], &arms[leader], test).ok())
                .and_then(|c| match c {
                    MetricComparison::Estimate(e) => Some(e),
                    MetricComparison::NotEnoughData { .. } => None,
                });
            if let Some(e) = cuped {
                return RivalChance {
                    variant: index,
                    chance_to_beat: Some(e.chance_to_beat),
                    fisher_p: None,
                    sequential_p: sequential.then_some(e.p_value),
                    cuped: true,
                };
            }
            match compare_with(*counts, leader_counts, test) {
                Comparison::Estimate(estimate) => RivalChance {
                    variant: index,
                    chance_to_beat: Some(estimate.chance_to_beat),
                    fisher_p: None,
                    sequential_p: sequential.then_some(estimate.p_value),
                    cuped: false,
                },
                Comparison::NotEnoughData { .. } => RivalChance {
                    variant: index,
                    chance_to_beat: None,
                    fisher_p: Some(fisher_one_sided(leader_counts, *counts)),
                    sequential_p: None,
                    cuped: false,
                },
            }
        })
        .collect();

    let best = best_at(metric);
    let leader_rate = if led_once_adjusted {
        format!(
            "{} observed, the highest once CUPED-adjusted",
            percent(leader_counts.rate().unwrap_or(0.0))
        )
    } else {
        percent(leader_counts.rate().unwrap_or(0.0))
    };
    let against = |rival: &RivalChance| {
        let (name, counts) = variants[rival.variant];
        let adjusted = if rival.cuped { "CUPED-adjusted " } else { "" };
        match (rival.chance_to_beat, rival.fisher_p, rival.sequential_p) {
            (Some(_), _, Some(p)) => {
                format!(
                    "its {adjusted}sequential p against {name} is {}",
                    p_value(p)
                )
            }
            (Some(chance), _, None) => {
                format!("its {adjusted}chance to beat {name} is {}", percent(chance))
            }
            (None, Some(p), _) => format!(
                "against {name} ({}, where gbstats has no estimate) Fisher's exact test gives one-sided p = {}",
                percent(counts.rate().unwrap_or(0.0)),
                p_value(p)
            ),
            (None, None, _) => format!("against {name}: {}", super::NOT_ENOUGH_DATA),
        }
    };
    let failing = rivals.iter().find(|rival| !rival.beaten());
    let clear_winner = failing.is_none();
    let reason = match failing {
        None => {
            let estimated = rivals
                .iter()
                .filter_map(|rival| rival.chance_to_beat.map(|chance| (rival.variant, chance)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let exact: Vec<String> = rivals
                .iter()
                .filter(|rival| rival.chance_to_beat.is_none())
                .map(against)
                .collect();
            let mut words = format!("{leader_name} {best} ({leader_rate})");
            let adjusted = if rivals.iter().any(|r| r.cuped) {
                " CUPED-adjusted"
            } else {
                ""
            };
            let sequential = rivals
                .iter()
                .filter_map(|rival| rival.sequential_p.map(|p| (rival.variant, p)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((rival, p)) = sequential {
                words.push_str(&format!(
                    " with a{adjusted} sequential (always valid) p below {} against every other variant \
                     (highest: {} against {})",
                    p_value(SEQUENTIAL_MAX_P),
                    p_value(p),
                    variants[rival].0,
                ));
            } else if let Some((rival, chance)) = estimated {
                words.push_str(&format!(
                    " with at least a {}{adjusted} chance to beat every other variant (lowest: {} against {})",
                    percent(WINNER_MIN_CHANCE),
                    percent(chance),
                    variants[rival].0,
                ));
            }
            for e in exact {
                words.push_str(&format!("; {e}, below {}", p_value(FISHER_MAX_P)));
            }
            words
        }
        Some(rival) => {
            let threshold = match rival.chance_to_beat {
                Some(_) if rival.sequential_p.is_some() => {
                    format!(", not below {}", p_value(SEQUENTIAL_MAX_P))
                }
                Some(_) => format!(", below {}", percent(WINNER_MIN_CHANCE)),
                None if rival.fisher_p.is_some() => {
                    format!(", not below {}", p_value(FISHER_MAX_P))
                }
                None => String::new(),
            };
            if last_call {
                format!(
                    "no clear winner by the decision deadline: {leader_name} {best} ({leader_rate}), but {}{threshold}; so the variant {}, {leader_name}, goes",
                    against(rival),
                    if adjusted_leader.is_some() {
                        "ahead once CUPED-adjusted"
                    } else {
                        "with the higher observed rate"
                    }
                )
            } else {
                format!(
                    "no clear winner yet: {leader_name} {best} ({leader_rate}), but {}{threshold}; retried hourly until the decision deadline",
                    against(rival)
                )
            }
        }
    };

    Some(Rollout {
        chosen: leader,
        leader,
        clear_winner,
        decided: clear_winner || last_call,
        rivals,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(n: u64, k: u64) -> ArmCounts {
        ArmCounts::new(n, k).unwrap()
    }

    /// Conversion's CUPED sums: `n` contacts, `pre` of them converted before,
    /// `converted` after, `both` of them among the `pre`.
    fn cuped(n: u64, pre: u64, converted: u64, both: u64) -> MetricArm {
        let share = |k: u64| super::super::Measure::Proportion { n, sum: k as f64 };
        MetricArm::Adjusted {
            n,
            post: share(converted),
            pre: share(pre),
            sum_of_products: both as f64,
        }
    }

    #[test]
    fn with_cuped_a_variant_behind_once_adjusted_never_goes_at_the_deadline() {
        // B has more past buyers (500 against 200) but converts less within
        // each group: 50% against 60% of them, 5% against 10% of the rest.
        // Observed, B leads (27.5% against 20%); adjusted, A does.
        let variants = [("A", arm(1_000, 200)), ("B", arm(1_000, 275))];
        let adjusted = [cuped(1_000, 200, 200, 120), cuped(1_000, 500, 275, 250)];
        let test = TestKind::FixedHorizon;
        let plain = decide_rollout(&variants, "conversion", true).unwrap();
        assert_eq!(plain.chosen, 1, "{}", plain.reason);
        let d =
            decide_rollout_adjusted(&variants, Some(&adjusted), "conversion", true, test).unwrap();
        assert_eq!((d.leader, d.chosen), (0, 0), "{}", d.reason);
        assert!(d.reason.contains("A"), "{}", d.reason);
        assert!(!d.reason.contains("B goes"), "{}", d.reason);
    }

    #[test]
    fn with_cuped_the_leaders_test_is_the_adjusted_one() {
        // 30% of those who converted before convert again, 5% of the others,
        // in both arms; B only has more of the former (500 against 200).
        let variants = [("A", arm(1_000, 100)), ("B", arm(1_000, 175))];
        let adjusted = [cuped(1_000, 200, 100, 60), cuped(1_000, 500, 175, 150)];
        let plain = decide_rollout(&variants, "conversion", false).unwrap();
        assert!(
            plain.clear_winner && !plain.rivals[0].cuped,
            "{}",
            plain.reason
        );
        let test = TestKind::FixedHorizon;
        let d =
            decide_rollout_adjusted(&variants, Some(&adjusted), "conversion", false, test).unwrap();
        // Adjusted, the two are level (B's lift is not above zero), so A,
        // the first, leads; B only led on the observed rates.
        assert_eq!(d.leader, 0, "{}", d.reason);
        assert!(
            !d.clear_winner && !d.decided && d.rivals[0].cuped,
            "{}",
            d.reason
        );
        assert!(
            d.reason.contains("its CUPED-adjusted chance to beat B is"),
            "{}",
            d.reason
        );
        // Where the adjusted comparison has no estimate (A converted nobody),
        // the unadjusted decision stands: Fisher's exact test.
        let variants = [("A", arm(1_000, 0)), ("B", arm(1_000, 50))];
        let adjusted = [cuped(1_000, 200, 0, 0), cuped(1_000, 500, 50, 40)];
        let d =
            decide_rollout_adjusted(&variants, Some(&adjusted), "conversion", false, test).unwrap();
        assert!(d.clear_winner && !d.rivals[0].cuped, "{}", d.reason);
        assert!(d.rivals[0].fisher_p.is_some(), "{:?}", d.rivals);
    }

    #[test]
    fn no_variants_no_decision() {
        assert_eq!(pick_winner(&[]), None);
    }

    #[test]
    fn with_sequential_testing_the_leader_needs_a_sequential_p_below_five_percent() {
        let sequential = TestKind::Sequential { tuning: 5000.0 };
        // 560 vs 500 of 10,000: a 97% chance to beat, fixed p = 0.06; the
        // sequential p is far higher, so it waits.
        let close = [("A", arm(10_000, 500)), ("B", arm(10_000, 560))];
        let fixed = decide_rollout(&close, "conversion", false).unwrap();
        assert!(fixed.clear_winner, "{}", fixed.reason);
        let waits = decide_rollout_with(&close, "conversion", false, sequential).unwrap();
        assert!(!waits.clear_winner && !waits.decided, "{}", waits.reason);
        let p = waits.rivals[0].sequential_p.unwrap();
        assert!(p >= SEQUENTIAL_MAX_P, "{p}");
        assert!(
            waits.reason.contains("its sequential p against A is")
                && waits.reason.contains("not below 0.050"),
            "{}",
            waits.reason
        );
        // 650 vs 500: clear under both.
        let clear = [
            ("A", arm(10_000, 500)),
            ("B", arm(10_000, 650)),
            ("C", arm(10_000, 505)),
        ];
        let goes = decide_rollout_with(&clear, "conversion", false, sequential).unwrap();
        assert!(goes.clear_winner && goes.chosen == 1, "{}", goes.reason);
        assert!(goes.rivals.iter().all(|r| r.sequential_p.unwrap() < 0.05));
        assert!(
            goes.reason.starts_with(
                "B converted best (6.5%) with a sequential (always valid) p below 0.050"
            ),
            "{}",
            goes.reason
        );
        // Fixed horizon leaves sequential_p out.
        assert!(fixed.rivals.iter().all(|r| r.sequential_p.is_none()));
    }

    #[test]
    fn a_single_variant_goes() {
        let rollout = pick_winner(&[("A", arm(100, 5))]).unwrap();
        assert_eq!((rollout.chosen, rollout.clear_winner), (0, true));
        assert_eq!(rollout.reason, "A is the only variant");
    }

    #[test]
    fn a_clear_leader_wins() {
        let rollout = pick_winner(&[
            ("A", arm(10_000, 500)),
            ("B", arm(10_000, 650)),
            ("C", arm(10_000, 520)),
        ])
        .unwrap();
        assert_eq!(rollout.chosen, 1);
        assert_eq!(rollout.leader, 1);
        assert!(rollout.clear_winner);
        assert_eq!(rollout.rivals.len(), 2);
        assert_eq!(rollout.rivals[0].variant, 0);
        assert_eq!(rollout.rivals[1].variant, 2);
        assert!(
            rollout
                .rivals
                .iter()
                .all(|r| r.chance_to_beat.unwrap() >= WINNER_MIN_CHANCE)
        );
        assert!(
            rollout
                .reason
                .starts_with("B converted best (6.5%) with at least a 95.0% chance"),
            "{}",
            rollout.reason
        );
        assert!(rollout.reason.ends_with("against C)"), "{}", rollout.reason);
    }

    #[test]
    fn a_leader_short_of_the_threshold_waits_then_goes_as_the_leader() {
        // 560 vs 500 of 10,000: a 96.3% chance to beat A, but only ~72% against C.
        let variants = [
            ("A", arm(10_000, 500)),
            ("B", arm(10_000, 560)),
            ("C", arm(10_000, 545)),
        ];
        let early = decide_rollout(&variants, "conversion", false).unwrap();
        assert!(!early.decided && !early.clear_winner);
        assert!(
            early.reason.starts_with(
                "no clear winner yet: B converted best (5.6%), but its chance to beat C is"
            ),
            "{}",
            early.reason
        );
        let rollout = pick_winner(&variants).unwrap();
        assert_eq!((rollout.chosen, rollout.leader), (1, 1));
        assert!(rollout.decided && !rollout.clear_winner);
        assert!(
            rollout
                .reason
                .ends_with("below 95.0%; so the variant with the higher observed rate, B, goes"),
            "{}",
            rollout.reason
        );
    }

    #[test]
    fn a_rival_without_conversions_is_beaten_by_fishers_exact_test() {
        let rollout = pick_winner(&[("A", arm(1_000, 0)), ("B", arm(1_000, 40))]).unwrap();
        assert_eq!((rollout.chosen, rollout.leader), (1, 1));
        assert!(rollout.clear_winner && rollout.decided);
        assert_eq!(rollout.rivals[0].chance_to_beat, None);
        assert!(rollout.rivals[0].fisher_p.unwrap() < 1e-10);
    }

    /// The marketer's case: a at 0/17 clicks, b at 16/16. gbstats has no
    /// estimate, and the old rule sent a, the clear loser, to everyone else.
    #[test]
    fn zero_of_17_against_16_of_16_clicks_picks_b_and_says_clicks() {
        let variants = [("a", arm(17, 0)), ("b", arm(16, 16))];
        let rollout = decide_rollout(&variants, "click", false).unwrap();
        assert_eq!((rollout.chosen, rollout.leader), (1, 1));
        assert!(rollout.clear_winner && rollout.decided);
        // 1 / C(33, 16).
        let p = rollout.rivals[0].fisher_p.unwrap();
        assert!((p - 1.0 / 1_166_803_110.0).abs() < 1e-15, "{p}");
        assert!(
            rollout
                .reason
                .starts_with("b had the best click rate (100.0%); against a (0.0%"),
            "{}",
            rollout.reason
        );
        assert!(!rollout.reason.contains("converted"), "{}", rollout.reason);
    }

    #[test]
    fn fishers_exact_test_matches_the_tea_tasting_table() {
        // Three of four cups right: p = 17/70, Fisher's own example.
        let p = fisher_one_sided(arm(4, 3), arm(4, 1));
        assert!((p - 17.0 / 70.0).abs() < 1e-12, "{p}");
        assert_eq!(fisher_one_sided(arm(0, 0), arm(4, 1)), 1.0);
        // Too few to tell: 2/2 against 0/2 is p = 1/6, so no clear winner.
        let small = decide_rollout(&[("a", arm(2, 0)), ("b", arm(2, 2))], "open", false).unwrap();
        assert!(!small.decided, "{}", small.reason);
        assert!(small.reason.contains("best open rate"), "{}", small.reason);
    }

    #[test]
    fn ties_go_to_the_first_and_are_not_clear() {
        let rollout = pick_winner(&[("A", arm(1_000, 50)), ("B", arm(2_000, 100))]).unwrap();
        assert_eq!(
            (rollout.chosen, rollout.leader, rollout.clear_winner),
            (0, 0, false)
        );
        assert_eq!(rollout.rivals[0].chance_to_beat, Some(0.5));
    }

    #[test]
    fn empty_variants_never_lead() {
        let rollout = pick_winner(&[("A", arm(0, 0)), ("B", arm(10, 1))]).unwrap();
        assert_eq!(rollout.leader, 1);
        assert!(!rollout.clear_winner);
    }

    #[test]
    fn near_certainty_is_not_shown_as_certainty() {
        assert_eq!(percent(0.99996), ">99.9%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(percent(0.95), "95.0%");
    }
}
