//! Starting a run: record the campaign, create the run keyed by (campaign,
//! scheduled instant), snapshot its audience page by page into message rows
//! (resuming where a crash left off), then hand it to the dispatcher.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_domain::config::{Campaign, ConfigSet};

use crate::clock::Clock;
use crate::plan::decide;
use crate::store::{CampaignRecord, PlannedMessage, RunCounts, RunRecord, Store, StoreError};

/// Audience members read and planned per page.
pub const PLAN_PAGE: u32 = 2000;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The campaign does not exist in the config.
    #[error("no campaign named `{0}` in config/campaigns/")]
    UnknownCampaign(String),
}

/// Figures of one planning pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanStats {
    /// Audience members planned by this pass (a resumed plan counts only the rest).
    pub members: u64,
}

/// Plans runs of the configured campaigns.
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<ConfigSet>,
}

impl Engine {
    /// An engine over `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Arc<ConfigSet>) -> Self {
        Self {
            store,
            clock,
            config,
        }
    }

    /// The campaign named `name`.
    pub fn campaign(&self, name: &str) -> Result<&Campaign, EngineError> {
        self.config
            .campaigns
            .get(name)
            .ok_or_else(|| EngineError::UnknownCampaign(name.to_string()))
    }

    /// Creates (or finds) the run of `campaign` at `scheduled_at` (ms) and plans it fully.
    pub async fn start_run(
        &self,
        campaign: &Campaign,
        scheduled_at: i64,
        origin: &str,
    ) -> Result<(RunRecord, PlanStats), EngineError> {
        let now = self.clock.now_ms();
        let record = CampaignRecord {
            name: campaign.name.clone(),
            kind: campaign.kind.as_str().to_string(),
            topic: campaign.topic.clone(),
            fingerprint: campaign.assignment_fingerprint(),
        };
        let campaign_id = self.store.upsert_campaign(&record, now).await?;
        let run = self
            .store
            .create_run(campaign_id, scheduled_at, now, origin, &record.fingerprint)
            .await?;
        let stats = if run.state == "planning" {
            self.plan(campaign, &run).await?
        } else {
            PlanStats::default()
        };
        Ok((run, stats))
    }

    /// Snapshots the audience of `run` into message rows, from where planning last stopped.
    pub async fn plan(
        &self,
        campaign: &Campaign,
        run: &RunRecord,
    ) -> Result<PlanStats, EngineError> {
        let mut after = self.store.last_planned_contact(run.id).await?;
        let mut stats = PlanStats::default();
        while let Some((last, rows)) = self.decide_page(campaign, run.now_at, after).await? {
            after = last;
            self.store
                .insert_planned(run.id, run.campaign_id, &rows, self.clock.now_ms())
                .await?;
            stats.members += rows.len() as u64;
        }
        self.store
            .finish_planning(run.id, self.clock.now_ms())
            .await?;
        Ok(stats)
    }

    /// What a run of `campaign` at `now` (ms) would plan, counted by arm, status
    /// and reason, without writing anything (`herald send --dry-run`).
    pub async fn dry_run(&self, campaign: &Campaign, now: i64) -> Result<RunCounts, EngineError> {
        let mut counts: BTreeMap<(String, String, Option<String>), i64> = BTreeMap::new();
        let mut after = 0;
        while let Some((last, rows)) = self.decide_page(campaign, now, after).await? {
            after = last;
            for p in rows {
                *counts
                    .entry((p.arm, p.status.as_str().to_string(), p.reason))
                    .or_insert(0) += 1;
            }
        }
        Ok(RunCounts {
            rows: counts
                .into_iter()
                .map(|((a, s, r), n)| (a, s, r, n))
                .collect(),
        })
    }

    /// One keyset page of the audience after contact `after`, decided; `None` past the end.
    async fn decide_page(
        &self,
        campaign: &Campaign,
        now: i64,
        after: i64,
    ) -> Result<Option<(i64, Vec<PlannedMessage>)>, EngineError> {
        let page = self
            .store
            .audience_page(
                self.config.audience_of(campaign),
                now,
                campaign.topic.as_deref(),
                after,
                PLAN_PAGE,
            )
            .await?;
        let Some(last) = page.last().map(|m| m.contact_id) else {
            return Ok(None);
        };
        let global_holdout = self.config.herald.defaults.global_holdout.get();
        let rows = page
            .iter()
            .map(|m| decide(campaign, global_holdout, m, now))
            .collect();
        Ok(Some((last, rows)))
    }
}
