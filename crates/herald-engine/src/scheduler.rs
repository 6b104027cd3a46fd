//! The daemon's scheduler: on every tick, for each scheduled campaign, asks
//! [`crate::schedule::due`] which fires to run, and starts them. A run is
//! keyed by (campaign, scheduled instant) in the database, so a second
//! daemon, a restart or a repeated tick finds the run instead of firing it
//! again; a plan left half done by a dead daemon (or a killed `herald send`)
//! is resumed once its planning lease lapses, and a plan paused with
//! `herald runs pause` once it is resumed.

use std::collections::HashMap;
use std::sync::Arc;

use herald_domain::config::{Campaign, Schedule, Trigger};

use crate::clock::Clock;
use crate::run::{Engine, EngineError};
use crate::schedule::due;
use crate::store::Store;

/// How far back a scheduler that has never seen a campaign looks for fires
/// it missed (they are reported, and run if within `catch_up`).
pub const LOOKBACK_MS: i64 = 7 * 86_400_000;

/// What one tick did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickReport {
    /// (campaign, scheduled instant, run id, whether this tick created it).
    pub started: Vec<(String, i64, i64, bool)>,
    /// (campaign, scheduled instant) fires too late for `catch_up`.
    pub missed: Vec<(String, i64)>,
    /// Runs whose interrupted planning this tick finished.
    pub resumed: Vec<i64>,
}

/// Fires scheduled campaigns.
pub struct Scheduler {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Per campaign, the instant up to which fires were handled.
    seen: HashMap<String, i64>,
}

impl Scheduler {
    /// A scheduler over `engine`'s campaigns.
    pub fn new(engine: Arc<Engine>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            engine,
            store,
            clock,
            seen: HashMap::new(),
        }
    }

    /// Starts every fire due now; resumes plans whose planner died.
    pub async fn tick(&mut self) -> Result<TickReport, EngineError> {
        let mut report = TickReport::default();
        let config = self.engine.config();
        for campaign in config.campaigns.values() {
            let now = self.clock.now_ms();
            if let Some(Trigger::Enters { every, .. }) = &campaign.trigger {
                // One segment-entry pass per `every`, at its multiples of the epoch.
                let every = every.millis().max(1000);
                let slot = now - now.rem_euclid(every);
                // An interrupted pass first: passes diff against the one before, in order.
                for run in self.store.unfinished_plans(&campaign.name).await? {
                    if self.engine.plan(campaign, &run).await?.finished {
                        report.resumed.push(run.id);
                    }
                }
                let last = self.store.last_scheduled(&campaign.name).await?;
                if last.is_none_or(|l| l < slot) {
                    let (run, stats) = self.engine.start_run(campaign, slot, "schedule").await?;
                    tracing::info!(campaign = %campaign.name, run = run.id, entrants = stats.members, "segment-entry pass planned");
                    report
                        .started
                        .push((campaign.name.clone(), slot, run.id, run.created));
                }
                continue;
            }
            if campaign.trigger.is_some() {
                continue;
            }
            if matches!(campaign.schedule, Schedule::Manual) {
                // `herald send` plans its run itself; one it left unfinished
                // (killed, or paused and then resumed) is the daemon's to finish.
                report.resumed.extend(self.resume_plans(campaign).await?);
                continue;
            }
            let last_seen = match self.seen.get(&campaign.name) {
                Some(&t) => t,
                None => {
                    let last = self.store.last_scheduled(&campaign.name).await?;
                    last.unwrap_or(i64::MIN).max(now - LOOKBACK_MS)
                }
            };
            let fires = due(&campaign.schedule, last_seen, now, campaign.catch_up);
            for at in fires.missed {
                tracing::warn!(
                    campaign = %campaign.name,
                    fire = at,
                    "a scheduled fire was missed (herald was not running, and it is more than catch_up late)"
                );
                report.missed.push((campaign.name.clone(), at));
            }
            for at in fires.run {
                let (run, stats) = self.engine.start_run(campaign, at, "schedule").await?;
                tracing::info!(campaign = %campaign.name, run = run.id, members = stats.members, "run started");
                report
                    .started
                    .push((campaign.name.clone(), at, run.id, run.created));
            }
            self.seen.insert(campaign.name.clone(), now);
            report.resumed.extend(self.resume_plans(campaign).await?);
        }
        Ok(report)
    }

    /// Plans the rest of each of `campaign`'s runs still planning (its planner
    /// died, or it was paused and resumed); returns those now fully planned.
    async fn resume_plans(&self, campaign: &Campaign) -> Result<Vec<i64>, EngineError> {
        let mut resumed = Vec::new();
        for run in self.store.unfinished_plans(&campaign.name).await? {
            if self.engine.plan(campaign, &run).await?.finished {
                resumed.push(run.id);
            }
        }
        Ok(resumed)
    }
}
