//! Rollout (SPEC section 5, `[rollout]`): a run first sends to a test
//! fraction of the audience across the variants; the rest is planned under
//! the arm [`WAITING_ARM`], which no worker claims. After `decide_after` the
//! daemon's [`Roller`] picks the winner on the outcomes so far, records the
//! decision once per run, and releases the waiting messages to the winner as
//! `rollout:WINNER` (kept apart from the test messages in the report).
//!
//! Without a clear winner the decision is not recorded: it is tried again
//! every [`RETRY_EVERY_MS`] until `decide_by`, when the leader goes.
//!
//! Exactly once: the `rollouts` row is keyed by run, so the first decision
//! recorded is the one every daemon releases; a message is released only
//! while it still waits, so a page released twice changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_domain::assign::unit_hash;
use herald_domain::config::{Campaign, ConfigSet, Rollout as RolloutConfig, RolloutMetric};
use herald_domain::stats::{
    ArmCounts, Measure, MetricArm, Rollout, TestKind, decide_rollout_adjusted,
};

use crate::clock::Clock;
use crate::plan::{HOLDOUT_ARM, PlanContext};
use crate::run::EngineError;
use crate::store::{PersonalisationRequest, Store, StoreResult};

/// The arm of a message waiting for its run's rollout decision. `*` is in no
/// variant name, so no variant can be mistaken for it.
pub const WAITING_ARM: &str = "rollout:*";

/// The prefix of the arm of a released message: `rollout:WINNER`.
pub const RELEASED_PREFIX: &str = "rollout:";

/// The reason a waiting message carries until it is released.
pub const WAITING_REASON: &str = "waiting for the rollout decision";

/// The reason a released message carries (with the policies that moved it).
pub const RELEASED_REASON: &str = "rollout";

/// How often an undecided rollout (no clear winner before `decide_by`) is tried again.
pub const RETRY_EVERY_MS: i64 = 3_600_000;

/// Waiting messages released per page.
pub const RELEASE_PAGE: u32 = 2000;

/// Whether the contact `external_id` is in the test fraction of `campaign`'s
/// rollout: a second hash of the contact, independent of the arm's, so the
/// test keeps the variants' split by weight.
pub fn in_test(campaign: &str, external_id: &str, rollout: &RolloutConfig) -> bool {
    // `/` is in no campaign name: this hash is no other campaign's arm hash.
    unit_hash(&format!("{campaign}/rollout"), external_id) < rollout.test_fraction.get()
}

/// The arm of a message released to `variant`.
pub fn released_arm(variant: &str) -> String {
    format!("{RELEASED_PREFIX}{variant}")
}

/// The variant whose content a message of `arm` gets: the arm itself, or the
/// winner of a released message.
pub fn variant_of(arm: &str) -> &str {
    arm.strip_prefix(RELEASED_PREFIX)
        .filter(|v| *v != "*")
        .unwrap_or(arm)
}

/// Whether `arm` is a rollout arm (waiting, or released): not a tested variant.
pub fn is_rollout_arm(arm: &str) -> bool {
    arm.starts_with(RELEASED_PREFIX)
}

/// The metric's name as recorded.
pub fn metric_name(metric: RolloutMetric) -> &'static str {
    match metric {
        RolloutMetric::Conversion => "conversion",
        RolloutMetric::Click => "click",
        RolloutMetric::Open => "open",
    }
}

/// A run with messages waiting for its rollout decision.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingRun {
    /// The run.
    pub run_id: i64,
    /// Its campaign's name.
    pub campaign: String,
    /// Its audience snapshot instant (ms): `decide_after` counts from it.
    pub started_at: i64,
}

/// The outcomes so far of one arm of a run's test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmOutcomes {
    /// The arm.
    pub arm: String,
    /// Its messages, whatever their status (intention to treat).
    pub assigned: u64,
    /// Delivered (the denominator of opens and clicks, as in the report).
    pub delivered: u64,
    /// Opened by a person.
    pub opened: u64,
    /// Clicked.
    pub clicked: u64,
    /// Converted on the campaign's goal.
    pub converted: u64,
    /// The latest planned send time (ms).
    pub last_send_at: Option<i64>,
    /// CUPED (`[results] cuped`): messages with their pre-period goal recorded.
    pub pre_recorded: u64,
    /// Had the goal event in the window before the message.
    pub pre_converted: u64,
    /// Converted and had it before: conversion's sum of products.
    pub both_converted: u64,
}

impl ArmOutcomes {
    /// Conversion's CUPED sums: converted against the goal in the window
    /// before, as the report adjusts it.
    fn cuped_conversion(&self) -> MetricArm {
        let n = self.assigned;
        let share = |k: u64| Measure::Proportion { n, sum: k as f64 };
        MetricArm::Adjusted {
            n,
            post: share(self.converted),
            pre: share(self.pre_converted),
            sum_of_products: self.both_converted as f64,
        }
    }
}

/// A waiting message, to release.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingMessage {
    /// The message.
    pub id: i64,
    /// Its contact.
    pub contact_id: i64,
    /// Still `planned` (a suppressed one only changes arm).
    pub planned: bool,
}

/// One waiting message's release: the winner's send time and why it moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// The message.
    pub id: i64,
    /// Its new send time (ms); ignored for a message that is not planned.
    pub send_at: i64,
    /// Its reason.
    pub reason: String,
}

/// A decision to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The run.
    pub run_id: i64,
    /// When (ms).
    pub decided_at: i64,
    /// `conversion`, `click` or `open`.
    pub metric: &'static str,
    /// The variants' counts on the metric, in file order.
    pub variants: Vec<(String, ArmCounts)>,
    /// What `pick_winner` decided.
    pub rollout: Rollout,
    /// Decided before every tested message's goal window had closed.
    pub window_cut_short: bool,
}

impl Decision {
    /// The chosen variant's name.
    pub fn chosen(&self) -> &str {
        &self.variants[self.rollout.chosen].0
    }
}

/// What rollouts need from the database (`herald-storage` implements it).
#[async_trait]
pub trait RolloutStore: Send + Sync {
    /// Running (or drained) runs of these campaigns with messages in [`WAITING_ARM`].
    async fn waiting_runs(&self, campaigns: &[String]) -> StoreResult<Vec<WaitingRun>>;
    /// The run's outcomes per arm at `now`, rollout arms included (the caller
    /// picks); a message whose send may not have reached the provider yet is
    /// not counted delivered.
    async fn arm_outcomes(&self, run_id: i64, now: i64) -> StoreResult<Vec<ArmOutcomes>>;
    /// The variant the run's recorded decision chose, if one was recorded.
    async fn recorded_choice(&self, run_id: i64) -> StoreResult<Option<String>>;
    /// Records `decision` unless the run already decided; returns the chosen
    /// variant as recorded (the first decision wins) and whether this call recorded it.
    async fn record_decision(&self, decision: &Decision) -> StoreResult<(String, bool)>;
    /// Up to `limit` waiting messages of the run with id above `after`, in id order.
    async fn waiting_page(
        &self,
        run_id: i64,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<WaitingMessage>>;
    /// Moves these messages, if still waiting, to `arm`; planned ones get
    /// their new send time and reason. Returns how many moved.
    async fn release(&self, run_id: i64, arm: &str, rows: &[Release], now: i64)
    -> StoreResult<u64>;
}

/// The decision over a run's outcomes at `now`, or `None` when the campaign
/// has no variants. Without a clear winner it is undecided
/// (`rollout.decided == false`) unless `last_call`. Pure: the selection and
/// its words are unit tests.
pub fn decide(
    campaign: &Campaign,
    metric: RolloutMetric,
    outcomes: &[ArmOutcomes],
    run_id: i64,
    now: i64,
    last_call: bool,
) -> Option<Decision> {
    let by_arm: HashMap<&str, &ArmOutcomes> =
        outcomes.iter().map(|o| (o.arm.as_str(), o)).collect();
    let empty = ArmOutcomes::default();
    let variants: Vec<(String, ArmCounts)> = campaign
        .variant_names()
        .into_iter()
        .map(|name| {
            let o = by_arm.get(name).copied().unwrap_or(&empty);
            let (n, k) = match metric {
                RolloutMetric::Conversion => (o.assigned, o.converted),
                RolloutMetric::Click => (o.delivered, o.clicked),
                RolloutMetric::Open => (o.delivered, o.opened),
            };
            // k > n cannot come from the database; clamp rather than refuse to decide.
            let counts = ArmCounts::new(n, k.min(n))
                .unwrap_or_else(|_| ArmCounts::new(0, 0).expect("0 of 0 is a valid count"));
            (name.to_string(), counts)
        })
        .collect();
    let named: Vec<(&str, ArmCounts)> = variants.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    // With `[results] cuped` a conversion decision is taken on the adjusted
    // comparison, as the report's, where every tested contact has its history
    // recorded (the report's rule: a missing one would bias the lift). Clicks
    // and opens have no pre-period measure in herald.
    let cuped = campaign.results.as_ref().is_some_and(|r| r.cuped.is_some())
        && metric == RolloutMetric::Conversion;
    let adjusted: Option<Vec<MetricArm>> = cuped
        .then(|| {
            campaign
                .variant_names()
                .into_iter()
                .map(|name| by_arm.get(name).copied().unwrap_or(&empty))
                .map(|o| (o.pre_recorded == o.assigned).then(|| o.cuped_conversion()))
                .collect()
        })
        .flatten();
    // With `[results] sequential`, a decision taken at any hourly look stays valid.
    let test = campaign
        .results
        .as_ref()
        .map_or(TestKind::FixedHorizon, |r| r.test());
    let rollout = decide_rollout_adjusted(
        &named,
        adjusted.as_deref(),
        metric_name(metric),
        last_call,
        test,
    )?;
    let last_test_send = outcomes
        .iter()
        .filter(|o| !is_rollout_arm(&o.arm) && o.arm != HOLDOUT_ARM)
        .filter_map(|o| o.last_send_at)
        .max();
    let window_cut_short = match (campaign.goal_window_ms(), last_test_send) {
        (Some(window), Some(last)) => last.saturating_add(window) > now,
        _ => false,
    };
    Some(Decision {
        run_id,
        decided_at: now,
        metric: metric_name(metric),
        variants,
        rollout,
        window_cut_short,
    })
}

/// What one pass of the [`Roller`] did, per run.
#[derive(Debug, Clone, PartialEq)]
pub struct Rolled {
    /// The run.
    pub run_id: i64,
    /// The variant the rest went to.
    pub chosen: String,
    /// Whether this pass recorded the decision (false: it had been made before).
    pub decided_here: bool,
    /// Messages this pass released.
    pub released: u64,
}

/// Decides and releases due rollouts; the daemon calls [`Roller::tick`] on its schedule.
pub struct Roller {
    store: Arc<dyn Store>,
    rollouts: Arc<dyn RolloutStore>,
    clock: Arc<dyn Clock>,
    config: Arc<ConfigSet>,
    /// Undecided runs and when to try them again (ms); a restarted daemon tries at once.
    retry_at: Mutex<HashMap<i64, i64>>,
}

impl Roller {
    /// A roller over the campaigns of `config`.
    pub fn new(
        store: Arc<dyn Store>,
        rollouts: Arc<dyn RolloutStore>,
        clock: Arc<dyn Clock>,
        config: Arc<ConfigSet>,
    ) -> Self {
        Self {
            store,
            rollouts,
            clock,
            config,
            retry_at: Mutex::new(HashMap::new()),
        }
    }

    fn retry_due(&self, run_id: i64, now: i64) -> bool {
        self.retry_at
            .lock()
            .map_or(true, |m| m.get(&run_id).is_none_or(|&at| now >= at))
    }

    fn retry_later(&self, run_id: i64, at: i64) {
        if let Ok(mut m) = self.retry_at.lock() {
            m.insert(run_id, at);
        }
    }

    /// Decides every rollout whose `decide_after` has passed and releases its
    /// waiting messages to the winner (finishing a release a crash cut short).
    pub async fn tick(&self) -> Result<Vec<Rolled>, EngineError> {
        let names: Vec<String> = self
            .config
            .campaigns
            .values()
            .filter(|c| c.rollout.is_some())
            .map(|c| c.name.clone())
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut done = Vec::new();
        for run in self.rollouts.waiting_runs(&names).await? {
            let Some(campaign) = self.config.campaigns.get(&run.campaign) else {
                continue;
            };
            let Some(cfg) = &campaign.rollout else {
                continue;
            };
            let now = self.clock.now_ms();
            if now < run.started_at + cfg.decide_after.millis() {
                continue;
            }
            let (chosen, decided_here) = match self.rollouts.recorded_choice(run.run_id).await? {
                // Decided before (here or by another daemon): finish its release.
                Some(chosen) => (chosen, false),
                None => {
                    if !self.retry_due(run.run_id, now) {
                        continue;
                    }
                    let deadline = run.started_at.saturating_add(cfg.decide_by().millis());
                    let last_call = now >= deadline;
                    let outcomes = self.rollouts.arm_outcomes(run.run_id, now).await?;
                    let Some(decision) =
                        decide(campaign, cfg.metric, &outcomes, run.run_id, now, last_call)
                    else {
                        continue;
                    };
                    if !decision.rollout.decided {
                        // The deadline's own pass is the last call, so it decides on time.
                        self.retry_later(
                            run.run_id,
                            now.saturating_add(RETRY_EVERY_MS).min(deadline),
                        );
                        tracing::info!(
                            campaign = %campaign.name, run = run.run_id,
                            "rollout not decided: {}", decision.rollout.reason
                        );
                        continue;
                    }
                    let (chosen, decided_here) = self.rollouts.record_decision(&decision).await?;
                    if decided_here {
                        tracing::info!(
                            campaign = %campaign.name, run = run.run_id, chosen = %chosen,
                            "rollout decided: {}", decision.rollout.reason
                        );
                    }
                    (chosen, decided_here)
                }
            };
            let released = self.release(campaign, run.run_id, &chosen).await?;
            done.push(Rolled {
                run_id: run.run_id,
                chosen,
                decided_here,
                released,
            });
        }
        Ok(done)
    }

    /// Releases the run's waiting messages to `chosen`, with the send times
    /// planning would give them under that variant (its own hour, quiet hours, spread).
    async fn release(
        &self,
        campaign: &Campaign,
        run_id: i64,
        chosen: &str,
    ) -> Result<u64, EngineError> {
        let variant_hour = campaign
            .variants
            .iter()
            .find(|v| v.name.get_ref().as_str() == chosen)
            .and_then(|v| v.send_time.map(|t| t.hour));
        let arm = released_arm(chosen);
        let mut after = 0;
        let mut released = 0;
        loop {
            let page = self
                .rollouts
                .waiting_page(run_id, after, RELEASE_PAGE)
                .await?;
            let Some(last) = page.last().map(|m| m.id) else {
                break;
            };
            after = last;
            let now = self.clock.now_ms();
            let ctx = PlanContext::new(campaign, &self.config.herald, run_id, now);
            let ids: Vec<i64> = page
                .iter()
                .filter(|m| m.planned)
                .map(|m| m.contact_id)
                .collect();
            // Where and when each contact is: the time zone, and the best hour.
            let request = PersonalisationRequest::best_hour(now, &self.config.herald);
            let contacts: HashMap<i64, _> = if ids.is_empty() {
                HashMap::new()
            } else {
                self.store
                    .contacts(&ids, &request)
                    .await?
                    .into_iter()
                    .map(|c| (c.id, c))
                    .collect()
            };
            let rows: Vec<Release> = page
                .iter()
                .map(|m| {
                    let (send_at, moved) = match contacts.get(&m.contact_id) {
                        Some(c) => ctx.send_at(
                            ctx.tz_of(c.timezone.as_deref()),
                            variant_hour,
                            c.personal.best_hour,
                            &c.external_id,
                        ),
                        // A forgotten contact: its message is released as is, at once.
                        None => (now, Vec::new()),
                    };
                    let reason = std::iter::once(RELEASED_REASON)
                        .chain(moved)
                        .collect::<Vec<_>>()
                        .join(", ");
                    Release {
                        id: m.id,
                        send_at,
                        reason,
                    }
                })
                .collect();
            released += self.rollouts.release(run_id, &arm, &rows, now).await?;
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(extra: &str) -> Campaign {
        let src = format!(
            r#"
name = "roll"
where = 'attrs.x == 1'
channels = ["email"]
goal = {{ event = "order_placed", within = "1d" }}
{extra}
[rollout]
test_fraction = 0.2
decide_after = "2s"
metric = "conversion"

[[variants]]
name = "a"
email = {{ subject = "s", template = "a.email.hbs" }}

[[variants]]
name = "b"
email = {{ subject = "s", template = "b.email.hbs" }}
"#
        );
        Campaign::parse("c.toml", &src).unwrap()
    }

    fn arm(name: &str, assigned: u64, converted: u64) -> ArmOutcomes {
        ArmOutcomes {
            arm: name.into(),
            assigned,
            delivered: assigned,
            converted,
            last_send_at: Some(1_000),
            ..ArmOutcomes::default()
        }
    }

    #[test]
    fn the_test_fraction_is_a_second_hash_and_keeps_the_split() {
        let c = campaign("");
        let r = c.rollout.as_ref().unwrap();
        let n = 20_000;
        let in_test: Vec<bool> = (0..n)
            .map(|i| in_test("roll", &format!("u{i}"), r))
            .collect();
        let tested = in_test.iter().filter(|t| **t).count();
        // 20% of 20,000: 4,000 with a standard deviation of about 57.
        assert!((3_700..4_300).contains(&tested), "{tested}");
        // Independent of the arm hash: the test splits like the whole.
        let first_arm = |i: usize| herald_domain::assign::unit_hash("roll", &format!("u{i}")) < 0.5;
        let a_in_test = (0..n).filter(|&i| in_test[i] && first_arm(i)).count();
        let share = a_in_test as f64 / tested as f64;
        assert!((0.46..0.54).contains(&share), "{share}");
        // Stable.
        assert_eq!(in_test[7], super::in_test("roll", "u7", r));
    }

    #[test]
    fn arms_name_their_variant() {
        assert_eq!(variant_of("a"), "a");
        assert_eq!(variant_of(&released_arm("b")), "b");
        assert_eq!(variant_of(WAITING_ARM), WAITING_ARM);
        assert!(is_rollout_arm(WAITING_ARM) && is_rollout_arm("rollout:b"));
        assert!(!is_rollout_arm("rollout") && !is_rollout_arm(HOLDOUT_ARM));
    }

    #[test]
    fn a_clear_winner_goes_and_only_test_arms_count() {
        let c = campaign("");
        let outcomes = vec![
            arm("a", 1_000, 20),
            arm("b", 1_000, 80),
            arm(HOLDOUT_ARM, 500, 1),
            // The waiting messages' numbers never count.
            arm(WAITING_ARM, 8_000, 7_999),
        ];
        let d = decide(&c, RolloutMetric::Conversion, &outcomes, 3, 2_000, false).unwrap();
        assert_eq!(d.chosen(), "b");
        assert!(d.rollout.clear_winner);
        assert_eq!(
            d.variants
                .iter()
                .map(|(n, c)| (n.as_str(), c.n(), c.k()))
                .collect::<Vec<_>>(),
            [("a", 1_000, 20), ("b", 1_000, 80)]
        );
        assert_eq!((d.run_id, d.decided_at, d.metric), (3, 2_000, "conversion"));
        // The tested messages' 1-day goal window had not closed.
        assert!(d.window_cut_short);
        let later = decide(
            &c,
            RolloutMetric::Conversion,
            &outcomes,
            3,
            1_000 + 86_400_000,
            false,
        )
        .unwrap();
        assert!(!later.window_cut_short);
    }

    #[test]
    fn with_sequential_testing_on_the_decision_reads_the_sequential_p() {
        // b's chance to beat a is about 97%, yet its sequential p is far above 5%.
        let outcomes = [arm("a", 10_000, 500), arm("b", 10_000, 560)];
        let fixed = decide(
            &campaign(""),
            RolloutMetric::Conversion,
            &outcomes,
            1,
            2_000,
            false,
        );
        assert!(fixed.unwrap().rollout.clear_winner);
        let c = campaign("[results]\nsequential = true\n");
        let d = decide(&c, RolloutMetric::Conversion, &outcomes, 1, 2_000, false).unwrap();
        assert!(!d.rollout.decided, "{}", d.rollout.reason);
        assert!(d.rollout.rivals[0].sequential_p.is_some());
        assert!(
            d.rollout.reason.contains("sequential p"),
            "{}",
            d.rollout.reason
        );
    }

    #[test]
    fn without_a_clear_winner_it_waits_then_the_leader_goes_and_says_why() {
        let c = campaign("");
        let close = [arm("a", 100, 10), arm("b", 100, 11)];
        let early = decide(&c, RolloutMetric::Conversion, &close, 1, 2_000, false).unwrap();
        assert!(!early.rollout.decided);
        assert!(
            early.rollout.reason.starts_with("no clear winner yet"),
            "{}",
            early.rollout.reason
        );
        let d = decide(&c, RolloutMetric::Conversion, &close, 1, 4_000, true).unwrap();
        assert!(d.rollout.decided && !d.rollout.clear_winner);
        assert_eq!(d.chosen(), "b");
        assert_eq!(d.variants[d.rollout.leader].0, "b");
        assert!(
            d.rollout
                .reason
                .ends_with("so the variant with the higher observed rate, b, goes"),
            "{}",
            d.rollout.reason
        );
        // No outcomes at all: at the last call, still a decision, the first variant.
        let none = decide(&c, RolloutMetric::Conversion, &[], 1, 2_000, true).unwrap();
        assert_eq!(none.chosen(), "a");
        assert!(!none.rollout.clear_winner);
    }

    /// The marketer's run: 0/17 clicks against 16/16 sent `a` to everyone else.
    #[test]
    fn zero_of_17_against_16_of_16_clicks_sends_b() {
        let c = campaign("");
        let mut a = arm("a", 17, 0);
        a.clicked = 0;
        let mut b = arm("b", 16, 0);
        b.clicked = 16;
        let d = decide(&c, RolloutMetric::Click, &[a, b], 1, 2_000, false).unwrap();
        assert!(d.rollout.decided && d.rollout.clear_winner);
        assert_eq!((d.chosen(), d.metric), ("b", "click"));
        assert!(
            d.rollout.reason.contains("best click rate"),
            "{}",
            d.rollout.reason
        );
        assert_eq!(
            c.rollout.as_ref().unwrap().decide_by(),
            herald_domain::duration::Span::from_secs(4)
        );
    }

    #[test]
    fn clicks_and_opens_count_per_delivered() {
        let c = campaign("");
        let mut a = arm("a", 1_000, 0);
        a.delivered = 500;
        a.clicked = 10;
        let mut b = arm("b", 1_000, 0);
        b.delivered = 500;
        b.clicked = 60;
        b.opened = 3;
        let d = decide(
            &c,
            RolloutMetric::Click,
            &[a.clone(), b.clone()],
            1,
            0,
            true,
        )
        .unwrap();
        assert_eq!((d.chosen(), d.metric), ("b", "click"));
        assert_eq!(d.variants[1].1.n(), 500);
        let o = decide(&c, RolloutMetric::Open, &[a, b], 1, 0, true).unwrap();
        assert_eq!(o.variants[1].1.k(), 3);
    }
}
