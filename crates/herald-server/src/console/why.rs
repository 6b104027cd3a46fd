//! "Why they got nothing", on a contact's page. For a run where the contact
//! has a message that was never sent, the planner's own recorded status and
//! reason, in words. For the latest run of each configured campaign where
//! the contact has no message at all, the planner is replayed for them at
//! the run's instant with the engine's rules ([`herald_engine::plan::decide`]
//! over the store's audience query scoped to this one contact), on their
//! data as it stands now, so the page says which rule would keep them out.

use herald_domain::config::{Audience, Campaign, ConfigSet};
use herald_engine::plan::{PlanContext, decide};
use herald_engine::store::{Scope, Store};
use herald_storage::runs::{self, Which};
use herald_storage::store::SqlStore;
use serde_json::Value;

use crate::AppState;

/// One run's answer: run id, campaign, and why (plain text, not yet escaped).
pub type Answer = (i64, String, String);

/// Words for a message's stored `status` and `reason`, or `None` when the
/// message went out or still may (sent, delivered, planned...).
pub fn message_words(status: &str, reason: Option<&str>) -> Option<String> {
    let why = match (status, reason) {
        ("suppressed", Some(r)) => return Some(reason_words(r)),
        ("suppressed", None) => "suppressed".to_string(),
        ("held_out", _) => {
            "in the campaign's holdout arm (the control group): held out by design".to_string()
        }
        ("cancelled", _) => {
            "cancelled before it was sent (the run was cancelled, the contact was forgotten, or they met the campaign's exit event)".to_string()
        }
        ("failed", r) => format!("sending failed{}", r.map_or(String::new(), |r| format!(": {r}"))),
        ("bounced", _) => "sent, but the address bounced".to_string(),
        ("unknown", _) => {
            "the provider never said whether it took the message (status unknown)".to_string()
        }
        _ => return None,
    };
    Some(why)
}

/// Words for one of the planner's suppression reasons (`SuppressReason`).
pub fn reason_words(reason: &str) -> String {
    match reason {
        "opt_out" => "suppressed: they opted out of the channel or of the campaign's topic".into(),
        "cap" => "suppressed by a frequency cap: they had already had as many marketing messages on that channel as the caps allow".into(),
        "no_address" => "suppressed: no address on any of the campaign's channels".into(),
        "no_consent" => "suppressed: no consent for the campaign's channels (SMS needs a recorded yes)".into(),
        "invalid_address" => "suppressed: their address cannot be sent to".into(),
        "duplicate_address" => "suppressed: another contact in the run has the same address, and each address gets one message".into(),
        "reentry" => "suppressed: they got this campaign within its reentry window".into(),
        "global_holdout" => "suppressed: in the global holdout ([defaults] global_holdout), which no marketing campaign reaches".into(),
        other => format!("suppressed: {other}"),
    }
}

fn audience_words(campaign: &Campaign) -> String {
    match &campaign.audience {
        Audience::Segment(name) => format!("segment `{name}`"),
        Audience::Inline(_) => "the campaign's `where`".to_string(),
    }
}

/// The planner's verdict on contact `id` (created at `created`) in run
/// `run_id` of `campaign` at `at`, on today's data.
async fn replay(
    store: &SqlStore,
    cfg: &ConfigSet,
    campaign: &Campaign,
    run_id: i64,
    at: i64,
    id: i64,
    created: i64,
) -> Result<String, herald_engine::StoreError> {
    let ctx = PlanContext::new(campaign, &cfg.herald, run_id, at);
    let members = store
        .audience_in(
            cfg.audience_of(campaign),
            at,
            campaign.topic.as_deref(),
            &Scope::Contacts(vec![id]),
            0,
            1,
            ctx.history_since(),
        )
        .await?;
    let triggered = if campaign.trigger.is_some() {
        " It is a triggered campaign: only contacts whose trigger fell in the run get a message."
    } else {
        ""
    };
    let Some(member) = members.first() else {
        return Ok(format!(
            "not in the audience ({}) at the run's instant, as their data stands now.{triggered}",
            audience_words(campaign)
        ));
    };
    let planned = decide(&ctx, member);
    let status = planned.status.as_str();
    if let Some(words) = message_words(status, planned.reason.as_deref()) {
        return Ok(format!(
            "{words} (the planner's rules on their data as it stands now).{triggered}"
        ));
    }
    if created > at {
        return Ok(format!(
            "they were added after the run was planned; the next run would plan them a message.{triggered}"
        ));
    }
    Ok(format!(
        "on their data as it stands now the planner would send them one: they were not in the audience ({}) when the run was planned, or their data has changed since.{triggered}",
        audience_words(campaign)
    ))
}

/// Why `doc`'s contact (id `id`, created at `created`) got nothing: each run
/// where their message was not sent, then the latest run of each configured
/// campaign where they have no message, replayed.
pub async fn explain(
    st: &AppState,
    cfg: &ConfigSet,
    doc: &Value,
    id: i64,
    created: i64,
) -> Result<Vec<Answer>, String> {
    let mut out: Vec<Answer> = Vec::new();
    let mut runs_in: Vec<i64> = Vec::new();
    for m in doc["messages"].as_array().into_iter().flatten() {
        let run = m["run_id"].as_i64().unwrap_or(0);
        runs_in.push(run);
        if let Some(words) = message_words(m["status"].as_str().unwrap_or(""), m["reason"].as_str())
        {
            out.push((run, m["campaign"].as_str().unwrap_or("").to_string(), words));
        }
    }
    // The runs alone, not their counts: a lookup of the runs table, so a
    // contact's page costs their own rows, not every message of the runs.
    let latest = runs::runs_of(st.db(), Which::LatestPerCampaign)
        .await
        .map_err(|e| e.to_string())?;
    let store = super::segments::store(st, cfg);
    for run in latest.iter().filter(|r| !runs_in.contains(&r.id)) {
        let why = match cfg.campaigns.get(&run.campaign) {
            None => "the campaign is no longer in the config, so herald cannot replay its rules."
                .to_string(),
            Some(c) => replay(&store, cfg, c, run.id, run.planned_at, id, created)
                .await
                .map_err(|e| e.to_string())?,
        };
        out.push((run.id, run.campaign.clone(), why));
    }
    out.sort_by_key(|a| std::cmp::Reverse(a.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_planner_records_has_words() {
        // Every reason the planner can record, each in words of its own
        // (not the fallback that repeats the code).
        for r in herald_domain::types::SuppressReason::ALL.map(|r| r.as_str()) {
            let w = reason_words(r);
            assert!(
                w.starts_with("suppressed: ") || w.starts_with("suppressed by"),
                "{w}"
            );
            assert_ne!(w, format!("suppressed: {r}"), "no words for {r}");
        }
        assert!(
            message_words("suppressed", Some("cap"))
                .unwrap()
                .contains("frequency cap")
        );
        assert!(message_words("held_out", None).unwrap().contains("holdout"));
        assert_eq!(message_words("delivered", None), None);
        assert_eq!(message_words("planned", None), None);
        assert_eq!(
            message_words("failed", Some("mailbox full")).unwrap(),
            "sending failed: mailbox full"
        );
    }
}
