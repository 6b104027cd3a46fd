//! `herald preview CAMPAIGN [--contact ID] [--variant V]`: the messages a
//! contact would get, rendered now with their real personalisation (`rfm`,
//! `lifecycle`, `best_hour`, `top`): every channel of every variant, or of
//! the one asked for. Without `--contact`, the first audience member (the
//! built-in sample when the audience is empty). Nothing is written or sent;
//! links are signed with a preview-only key, so they do not resolve.
//! An unknown campaign, variant or contact exits 2, as does a template that
//! fails to render.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use herald_domain::assign::{Arm, in_global_holdout};
use herald_domain::config::{Campaign, ConfigSet, Variant};
use herald_domain::token::TokenSigner;
use herald_domain::types::{CampaignKind, Channel};
use herald_engine::plan::HOLDOUT_ARM;
use herald_engine::render::{CampaignRenderer, MessageRenderer, RenderOutput};
use herald_engine::store::{
    ClaimedMessage, ContactView, Personalisation, PersonalisationRequest, Store,
};
use herald_storage::store::SqlStore;
use herald_templates::sms_segments;

use crate::{Cli, EXIT_INVALID, Exit, app, check};

/// Signs the links of previews: real tokens need the tracking secret, and a preview's
/// message id (0) matches no stored message anyway.
const PREVIEW_KEY: &[u8] = b"herald-preview-only-key";

/// Arguments of `herald preview`.
#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The campaign's name.
    pub campaign: String,
    /// The contact's external_id (default: the first member of the audience).
    #[arg(long)]
    pub contact: Option<String>,
    /// Only this variant (default: every variant).
    #[arg(long)]
    pub variant: Option<String>,
}

/// Prints `message` on stderr and fails with exit code 2.
fn invalid(message: String) -> anyhow::Error {
    eprintln!("error: {message}");
    Exit(EXIT_INVALID).into()
}

/// Runs `herald preview`.
pub async fn run(cli: &Cli, args: &PreviewArgs) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let campaign = config.campaigns.get(&args.campaign).ok_or_else(|| {
        let known: Vec<&str> = config.campaigns.keys().map(String::as_str).collect();
        invalid(format!(
            "no campaign named `{}` in {}/campaigns (known: {})",
            args.campaign,
            cli.config.display(),
            known.join(", ")
        ))
    })?;
    let variants: Vec<&Variant> = match &args.variant {
        None => campaign.variants.iter().collect(),
        Some(name) => vec![
            campaign
                .variants
                .iter()
                .find(|v| v.name.get_ref().as_str() == name)
                .ok_or_else(|| {
                    invalid(format!(
                        "campaign `{}` has no variant `{name}` (variants: {})",
                        campaign.name,
                        campaign.variant_names().join(", ")
                    ))
                })?,
        ],
    };
    let templates = Arc::new(app::load_templates(cli, &config)?);
    let store = app::store(cli, &config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let renderer = CampaignRenderer::new(
        templates,
        campaign.clone(),
        &config.herald,
        TokenSigner::new(PREVIEW_KEY),
    );
    // The templates' top pairs, and all the rest: the preview prints it, for one contact.
    let want = PersonalisationRequest {
        rfm_lifecycle: true,
        best_hour: true,
        ..renderer.personalisation(now)
    };

    let id = match &args.contact {
        Some(external_id) => Some(
            contact_id(&store, external_id)
                .await?
                .ok_or_else(|| invalid(format!("no contact with external_id `{external_id}`")))?,
        ),
        None => store
            .audience_page(
                config.audience_of(campaign),
                now,
                campaign.topic.as_deref(),
                0,
                1,
                None,
            )
            .await?
            .first()
            .map(|m| m.contact_id),
    };
    let contact = match id {
        Some(id) => store
            .contacts(&[id], &want)
            .await?
            .into_iter()
            .next()
            .context("the contact vanished while it was read")?,
        None => {
            eprintln!(
                "note: the audience of `{}` is empty now; showing the built-in sample contact",
                campaign.name
            );
            check::with_sample_top(&check::builtin_sample(), &want.top).into_owned()
        }
    };

    let in_audience = match id {
        Some(id) => Some(in_audience(&store, &config, campaign, id, now).await?),
        None => None,
    };
    print_header(&config, campaign, &contact, in_audience, now);
    let mut failed = 0;
    for v in variants {
        let arm = v.name.get_ref().as_str();
        for &channel in &campaign.channels {
            let address = match channel {
                Channel::Email => contact.email.clone(),
                Channel::Sms => contact.phone.clone(),
                Channel::Push => None,
            };
            let msg = ClaimedMessage {
                id: 0,
                run_id: 0,
                contact_id: contact.id,
                arm: arm.to_string(),
                channel,
                address: address.clone().unwrap_or_default(),
                attempts: 0,
                step: 0,
                send_at: now,
                written: None,
                first: false,
            };
            let to = address.map(|a| format!(" to {a}")).unwrap_or_default();
            println!("\n=== variant `{arm}`, {channel}{to}");
            match renderer.render(&msg, &contact) {
                Ok(out) => print_message(channel, &out),
                Err(e) => {
                    failed += 1;
                    println!("(not rendered)");
                    eprintln!("error: variant `{arm}`, {channel}: {e}");
                }
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} message(s) failed to render: fix the template(s) and run `herald check`"
        );
        return Err(Exit(EXIT_INVALID).into());
    }
    Ok(())
}

/// The id of the (not forgotten) contact with this external id.
async fn contact_id(store: &SqlStore, external_id: &str) -> anyhow::Result<Option<i64>> {
    Ok(herald_storage::contacts::live_contact_id(store.db(), external_id).await?)
}

/// Whether contact `id` is in the campaign's audience at `now`.
async fn in_audience(
    store: &SqlStore,
    config: &ConfigSet,
    campaign: &Campaign,
    id: i64,
    now: i64,
) -> anyhow::Result<bool> {
    Ok(
        herald_storage::segment_preview::contains(store, config.audience_of(campaign), id, now)
            .await?,
    )
}

/// Who the preview is for, where they stand, and what their templates see.
fn print_header(
    config: &ConfigSet,
    campaign: &Campaign,
    contact: &ContactView,
    in_audience: Option<bool>,
    now: i64,
) {
    let at = chrono::DateTime::from_timestamp_millis(now)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    println!(
        "preview of `{}` for contact `{}`, at {at} (nothing is sent; links use a preview key)",
        campaign.name, contact.external_id
    );
    match in_audience {
        Some(true) => println!("  in the audience now: yes"),
        Some(false) => println!("  in the audience now: no (rendered anyway)"),
        None => println!("  the built-in sample contact"),
    }
    let marketing = campaign.kind == CampaignKind::Marketing;
    let global = config.herald.defaults.global_holdout.get();
    let arm = if marketing && in_global_holdout(global, &contact.external_id) {
        "global holdout (gets no marketing)".to_string()
    } else {
        match campaign.arms.assign(&campaign.name, &contact.external_id) {
            Arm::Holdout => format!("{HOLDOUT_ARM} (gets nothing)"),
            Arm::Variant(i) => format!("variant `{}`", campaign.variants[i].name.get_ref()),
        }
    };
    println!("  assigned arm: {arm}");
    println!("  {}", describe(&contact.personal));
}

/// `lifecycle dormant; best_hour 19; rfm r=3 ...; top.order_placed.sku = "tea"`.
fn describe(p: &Personalisation) -> String {
    let lifecycle = p.lifecycle.map_or("-".to_string(), |l| l.to_string());
    let best_hour = p
        .best_hour
        .map_or("- (no events)".to_string(), |h| h.to_string());
    let rfm = p.rfm.map_or("- (no purchase)".to_string(), |r| {
        format!(
            "r={} f={} m={} (r_days {}, f_count {}, m_value {})",
            r.r, r.f, r.m, r.r_days, r.f_count, r.m_value
        )
    });
    let mut out = format!("lifecycle {lifecycle}; best_hour {best_hour}; rfm {rfm}");
    for (k, v) in &p.top {
        out.push_str(&format!("; top.{}.{} = {v}", k.event, k.property));
    }
    out
}

/// One rendered message: subject, text and HTML of an email; an SMS and its segments;
/// a push's title and body; then the destinations of its tracked links.
fn print_message(channel: Channel, out: &RenderOutput) {
    let m = &out.message;
    match channel {
        Channel::Email => {
            println!("Subject: {}", m.subject.as_deref().unwrap_or_default());
            println!(
                "--- text\n{}",
                m.text.as_deref().unwrap_or_default().trim_end()
            );
            println!("--- html\n{}", m.body.trim_end());
        }
        Channel::Sms => {
            println!("{}", m.body);
            let c = sms_segments(&m.body);
            let encoding = match c.encoding {
                herald_templates::SmsEncoding::Gsm7 => "GSM-7",
                herald_templates::SmsEncoding::Ucs2 => "UCS-2",
            };
            println!(
                "--- {} segment(s), {encoding}, {} units",
                c.segments, c.units
            );
        }
        Channel::Push => {
            println!("Title: {}", m.subject.as_deref().unwrap_or_default());
            println!("Body: {}", m.body.trim_end());
        }
    }
    if !out.links.is_empty() {
        println!("--- tracked links");
        for l in &out.links {
            println!("  [{}] {}", l.idx, l.url);
        }
    }
}
