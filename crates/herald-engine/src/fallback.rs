//! Channel fallback: after a permanent failure on one channel (an
//! unregistered push token, a dead number), the message moves to the next
//! channel of its step's order that the contact can receive (address,
//! consent, no suppression), once. The dispatcher records the failed attempt
//! and the move in one transaction; a message that already fell back is
//! recorded failed like any other.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_domain::config::ConfigSet;
use herald_domain::types::Channel;

use crate::dispatch::Fallback;
use crate::plan::fallback_channel;
use crate::series::Series;
use crate::store::{AudienceMember, ClaimedMessage, Scope, Store, StoreResult};
use crate::trigger::RunCampaigns;

/// [`Fallback`] over the configured campaigns.
pub struct CampaignFallback {
    store: Arc<dyn Store>,
    config: Arc<ConfigSet>,
    runs: RunCampaigns,
}

impl CampaignFallback {
    /// A fallback over `config`'s campaigns; `None` when none has a second channel.
    pub fn for_config(store: Arc<dyn Store>, config: Arc<ConfigSet>) -> Option<Arc<dyn Fallback>> {
        let needed = config.campaigns.values().any(|c| {
            c.channels.len() > 1
                || c.steps
                    .iter()
                    .any(|s| s.channels.as_ref().is_some_and(|ch| ch.len() > 1))
        });
        needed.then(|| {
            Arc::new(Self {
                store,
                config,
                runs: RunCampaigns::default(),
            }) as Arc<dyn Fallback>
        })
    }
}

#[async_trait::async_trait]
impl Fallback for CampaignFallback {
    async fn reroute(
        &self,
        failed: &[ClaimedMessage],
        now: i64,
    ) -> StoreResult<Vec<(i64, Channel, String)>> {
        let ids: Vec<i64> = failed.iter().map(|m| m.id).collect();
        let once: HashSet<i64> = self.store.fell_back(&ids).await?.into_iter().collect();
        let mut by_run: HashMap<i64, Vec<&ClaimedMessage>> = HashMap::new();
        for m in failed.iter().filter(|m| !once.contains(&m.id)) {
            by_run.entry(m.run_id).or_default().push(m);
        }
        let mut out = Vec::new();
        for (run_id, msgs) in by_run {
            let Some(name) = self.runs.name(self.store.as_ref(), run_id).await? else {
                continue;
            };
            let Some(campaign) = self.config.campaigns.get(&name) else {
                continue;
            };
            let mut contacts: Vec<i64> = msgs.iter().map(|m| m.contact_id).collect();
            contacts.sort_unstable();
            contacts.dedup();
            // The contact's addresses, consents and suppressions as they are now.
            let members: HashMap<i64, AudienceMember> = self
                .store
                .audience_in(
                    self.config.audience_of(campaign),
                    now,
                    campaign.topic.as_deref(),
                    &Scope::Contacts(contacts.clone()),
                    0,
                    contacts.len() as u32,
                    None,
                )
                .await?
                .into_iter()
                .map(|m| (m.contact_id, m))
                .collect();
            let series = Series::of(campaign);
            for m in msgs {
                let (Some(member), Some(step)) = (
                    members.get(&m.contact_id),
                    series.step(usize::try_from(m.step).unwrap_or(usize::MAX)),
                ) else {
                    continue;
                };
                if let Some((channel, address)) = fallback_channel(step, member, m.channel) {
                    out.push((m.id, channel, address));
                }
            }
        }
        Ok(out)
    }
}
