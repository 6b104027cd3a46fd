//! The rollout decision (SPEC section 5): the variant with the highest rate wins if
//! its chance to beat each other variant is at least [`WINNER_MIN_CHANCE`];
//! otherwise the first variant goes. Either way the reason is spelled out in words.

use serde::Serialize;

use super::{ArmCounts, Comparison, compare};

/// The leader must beat every other variant with at least this chance to win outright.
pub const WINNER_MIN_CHANCE: f64 = 0.95;

/// The leader's chance to beat one other variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RivalChance {
    /// Index of the rival among the variants given.
    pub variant: usize,
    /// Chance the leader beats it, taking it as the control; `None` without an estimate.
    pub chance_to_beat: Option<f64>,
}

/// Which variant goes to the rest of the audience, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    /// Index of the variant that goes.
    pub chosen: usize,
    /// Index of the variant with the highest rate (the first of equals).
    pub leader: usize,
    /// The leader won outright; otherwise the first variant goes.
    pub clear_winner: bool,
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

/// Decides among the `(name, counts)` of the variants (the holdout excluded), in
/// file order; `None` when there are none.
pub fn pick_winner(variants: &[(&str, ArmCounts)]) -> Option<Rollout> {
    let (first_name, _) = *variants.first()?;
    let mut leader = 0;
    for (index, (_, counts)) in variants.iter().enumerate().skip(1) {
        if counts.cmp_rate(variants[leader].1).is_gt() {
            leader = index;
        }
    }
    let (leader_name, leader_counts) = variants[leader];
    if variants.len() == 1 {
        return Some(Rollout {
            chosen: 0,
            leader: 0,
            clear_winner: true,
            rivals: Vec::new(),
            reason: format!("{leader_name} is the only variant"),
        });
    }

    let rivals: Vec<RivalChance> = variants
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(index, (_, counts))| RivalChance {
            variant: index,
            chance_to_beat: match compare(*counts, leader_counts) {
                Comparison::Estimate(estimate) => Some(estimate.chance_to_beat),
                Comparison::NotEnoughData { .. } => None,
            },
        })
        .collect();

    let leader_rate = percent(leader_counts.rate().unwrap_or(0.0));
    let fallback = format!("so the first variant, {first_name}, goes");
    let no_estimate = rivals.iter().find(|rival| rival.chance_to_beat.is_none());
    let weakest = rivals
        .iter()
        .filter_map(|rival| rival.chance_to_beat.map(|chance| (rival.variant, chance)))
        .min_by(|a, b| a.1.total_cmp(&b.1));

    let (clear_winner, reason) = match (no_estimate, weakest) {
        (Some(rival), _) => (
            false,
            format!(
                "no clear winner: {leader_name} converted best ({leader_rate}), but against {}: \
                 {}; {fallback}",
                variants[rival.variant].0,
                super::NOT_ENOUGH_DATA,
            ),
        ),
        (None, Some((rival, chance))) if chance < WINNER_MIN_CHANCE => (
            false,
            format!(
                "no clear winner: {leader_name} converted best ({leader_rate}), but its chance \
                 to beat {} is {}, below {}; {fallback}",
                variants[rival].0,
                percent(chance),
                percent(WINNER_MIN_CHANCE),
            ),
        ),
        (None, Some((rival, chance))) => (
            true,
            format!(
                "{leader_name} converted best ({leader_rate}) with at least a {} chance to beat \
                 every other variant (lowest: {} against {})",
                percent(WINNER_MIN_CHANCE),
                percent(chance),
                variants[rival].0,
            ),
        ),
        // Unreachable: with two or more variants there is at least one rival.
        (None, None) => (false, format!("no rival to compare with; {fallback}")),
    };

    Some(Rollout {
        chosen: if clear_winner { leader } else { 0 },
        leader,
        clear_winner,
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

    #[test]
    fn no_variants_no_decision() {
        assert_eq!(pick_winner(&[]), None);
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
    fn a_leader_short_of_the_threshold_falls_back_to_the_first_variant() {
        // 560 vs 500 of 10,000: a 96.3% chance to beat A, but only ~72% against C.
        let rollout = pick_winner(&[
            ("A", arm(10_000, 500)),
            ("B", arm(10_000, 560)),
            ("C", arm(10_000, 545)),
        ])
        .unwrap();
        assert_eq!((rollout.chosen, rollout.leader), (0, 1));
        assert!(!rollout.clear_winner);
        assert!(
            rollout.reason.starts_with(
                "no clear winner: B converted best (5.6%), but its chance to beat C is"
            ),
            "{}",
            rollout.reason
        );
        assert!(
            rollout
                .reason
                .ends_with("below 95.0%; so the first variant, A, goes"),
            "{}",
            rollout.reason
        );
    }

    #[test]
    fn a_rival_without_conversions_leaves_no_clear_winner() {
        let rollout = pick_winner(&[("A", arm(1_000, 0)), ("B", arm(1_000, 40))]).unwrap();
        assert_eq!((rollout.chosen, rollout.leader), (0, 1));
        assert!(!rollout.clear_winner);
        assert_eq!(
            rollout.rivals,
            [RivalChance {
                variant: 0,
                chance_to_beat: None
            }]
        );
        assert_eq!(
            rollout.reason,
            "no clear winner: B converted best (4.0%), but against A: not enough conversions \
             to compare; so the first variant, A, goes"
        );
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
