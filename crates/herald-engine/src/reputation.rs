//! The reputation guard's rule: a marketing run whose bounce or complaint
//! rate mailbox providers punish pauses itself (as `herald runs pause`
//! would, with the reason shown by `herald status`). Pure: the daemon reads
//! the counts and pauses (`herald_storage::reputation`).

use herald_domain::config::DispatchConfig;

/// When a run is hurting the sender's reputation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReputationRule {
    /// No verdict before this many deliveries (a few early bounces say little).
    pub min_deliveries: u64,
    /// Bounced deliveries over this share pause the run.
    pub max_bounce_rate: f64,
    /// Complaints over this share of deliveries pause the run.
    pub max_complaint_rate: f64,
}

impl ReputationRule {
    /// The rule `[dispatch]` sets.
    pub fn from_config(d: &DispatchConfig) -> Self {
        ReputationRule {
            min_deliveries: d.reputation_min_deliveries,
            max_bounce_rate: d.reputation_max_bounce_rate,
            max_complaint_rate: d.reputation_max_complaint_rate,
        }
    }

    /// Why a run with `deliveries` (messages providers took, bounced ones
    /// included), `bounced` and `complained` must pause, if it must.
    pub fn verdict(&self, deliveries: u64, bounced: u64, complained: u64) -> Option<String> {
        if deliveries < self.min_deliveries.max(1) {
            return None;
        }
        let rate = |n: u64| n as f64 / deliveries as f64;
        if rate(bounced) > self.max_bounce_rate {
            return Some(format!(
                "reputation guard: bounce rate {:.1}% over {:.1}% after {deliveries} deliveries",
                rate(bounced) * 100.0,
                self.max_bounce_rate * 100.0
            ));
        }
        if rate(complained) > self.max_complaint_rate {
            return Some(format!(
                "reputation guard: complaint rate {:.2}% over {:.2}% after {deliveries} deliveries",
                rate(complained) * 100.0,
                self.max_complaint_rate * 100.0
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_over_the_rates_only_after_enough_deliveries() {
        let rule = ReputationRule::from_config(&DispatchConfig::default());
        assert_eq!(rule.min_deliveries, 1000);
        // 10% bounces, but too few deliveries yet.
        assert_eq!(rule.verdict(999, 100, 0), None);
        assert_eq!(
            rule.verdict(1000, 100, 0).as_deref(),
            Some("reputation guard: bounce rate 10.0% over 5.0% after 1000 deliveries")
        );
        assert_eq!(rule.verdict(1000, 50, 0), None, "5% is not over 5%");
        assert_eq!(
            rule.verdict(1000, 0, 4).as_deref(),
            Some("reputation guard: complaint rate 0.40% over 0.30% after 1000 deliveries")
        );
        assert_eq!(rule.verdict(1000, 0, 3), None);
        assert_eq!(rule.verdict(0, 0, 0), None);
    }
}
