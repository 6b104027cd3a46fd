//! `herald send CAMPAIGN --test-to ADDRESS,...`: every variant rendered for
//! a sample audience member (or the built-in sample contact when the
//! audience is empty) and sent through the real channel adapters to the
//! given addresses only: an email address gets the email, an E.164 phone
//! number the SMS, a push token (`push:TOKEN`, or a long bare token) the push. Nothing is recorded in runs or messages: a test send is
//! no part of any experiment, and its tokens name message 0, which the
//! tracking server knows nothing of (its links answer 404, its opens count nothing).

use std::sync::Arc;

use herald_domain::address::{E164Phone, EmailAddress};
use herald_domain::config::{Campaign, ConfigSet};
use herald_domain::token::TokenSigner;
use herald_domain::types::Channel;
use herald_engine::render::{CampaignRenderer, MessageRenderer};
use herald_engine::store::ClaimedMessage;
use herald_storage::store::SqlStore;
use herald_templates::TemplateSet;

use crate::{EXIT_INVALID, Exit, app, check, send};

/// The message id test sends carry: no message has it.
const TEST_MESSAGE_ID: i64 = 0;

/// The shortest bare string taken for a push token: FCM and APNs tokens are
/// 64 characters or more, so a typo of an address or a number is not one.
const MIN_BARE_TOKEN: usize = 32;

/// Which channel an address is for: an email address, an E.164 phone number
/// for SMS, or a push token: `push:TOKEN`, or a bare token (at least
/// [`MIN_BARE_TOKEN`] characters of letters, digits, `-`, `_`, `:` and `.`).
pub fn channel_of(address: &str) -> Result<(Channel, String), String> {
    if let Some(token) = address.strip_prefix("push:") {
        let token = token.trim();
        if token.is_empty() || !is_token(token) {
            return Err(format!(
                "`{address}` is not a push token: after `push:` come the device's registration token's letters, digits, `-`, `_`, `:` or `.`"
            ));
        }
        return Ok((Channel::Push, token.to_string()));
    }
    if let Ok(email) = EmailAddress::parse(address) {
        return Ok((Channel::Email, email.to_string()));
    }
    if let Ok(phone) = E164Phone::parse(address) {
        return Ok((Channel::Sms, phone.to_string()));
    }
    if address.len() >= MIN_BARE_TOKEN && is_token(address) {
        return Ok((Channel::Push, address.to_string()));
    }
    Err(format!(
        "`{address}` is neither an email address, a phone number in E.164 form (+8613800138000), nor a push token (push:TOKEN)"
    ))
}

/// The characters of FCM and APNs registration tokens.
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// Renders each variant for a sample contact and sends it to `addresses`.
pub async fn run(
    config: Arc<ConfigSet>,
    templates: Arc<TemplateSet>,
    store: Arc<SqlStore>,
    campaign: &Campaign,
    signer: TokenSigner,
    addresses: &[String],
) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    let mut refused = false;
    for raw in addresses.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        match channel_of(raw) {
            Ok((channel, _)) if !campaign.channels.contains(&channel) => {
                eprintln!(
                    "error: `{raw}` is for {channel}, which campaign `{}` does not use (channels: {})",
                    campaign.name,
                    campaign
                        .channels
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                refused = true;
            }
            Ok(target) => targets.push(target),
            Err(e) => {
                eprintln!("error: {e}");
                refused = true;
            }
        }
    }
    if targets.is_empty() && !refused {
        eprintln!("error: --test-to needs at least one address");
        refused = true;
    }
    if refused {
        eprintln!("nothing was sent");
        return Err(Exit(EXIT_INVALID).into());
    }
    send::preflight(&config, templates.clone(), &store, campaign).await?;

    let renderer =
        CampaignRenderer::new(templates.clone(), campaign.clone(), &config.herald, signer);
    let keys = renderer.personalisation(0).top;
    let sample = check::sample_contacts(&store, &config, &templates, campaign)
        .await?
        .into_iter()
        .next();
    let (contact, whose) = match sample {
        Some(c) => {
            let whose = format!("audience member `{}`", c.external_id);
            (c, whose)
        }
        None => (
            check::with_sample_top(&check::builtin_sample(), &keys).into_owned(),
            "the built-in sample contact (the audience is empty)".to_string(),
        ),
    };
    println!(
        "test send of `{}`, rendered for {whose}; nothing is recorded",
        campaign.name
    );
    let routes = app::routes(&config, &store, &app::env_secrets)?;
    let mut failed = 0;
    for variant in &campaign.variants {
        let name = variant.name.get_ref().as_str();
        for (channel, address) in &targets {
            if !variant.has(*channel) {
                println!("  variant `{name}` has no {channel} content: nothing sent to {address}");
                continue;
            }
            let msg = ClaimedMessage {
                id: TEST_MESSAGE_ID,
                run_id: 0,
                contact_id: contact.id,
                arm: name.to_string(),
                channel: *channel,
                address: address.clone(),
                attempts: 0,
                step: 0,
                send_at: chrono::Utc::now().timestamp_millis(),
                written: None,
                first: false,
            };
            let mut out = match renderer.render(&msg, &contact) {
                Ok(out) => out.message,
                Err(e) => {
                    eprintln!("  variant `{name}`, {channel}: cannot render: {e}");
                    failed += 1;
                    continue;
                }
            };
            out.to = address.clone();
            let route = routes
                .get(channel)
                .ok_or_else(|| anyhow::anyhow!("no route for {channel}"))?;
            let what = out
                .subject
                .as_deref()
                .map_or_else(String::new, |s| format!(" \"{s}\""));
            match route.adapter.send(&out).await {
                Ok(receipt) => println!(
                    "  sent variant `{name}` ({channel}){what} to {address}{}",
                    receipt
                        .provider_id
                        .map_or_else(String::new, |id| format!(": accepted as {id}"))
                ),
                Err(e) => {
                    eprintln!("  variant `{name}` ({channel}) to {address}: not sent: {e}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} test message(s) were not sent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_picks_its_channel_or_is_refused() {
        assert_eq!(
            channel_of("ann@example.com").unwrap(),
            (Channel::Email, "ann@example.com".to_string())
        );
        assert_eq!(channel_of("+8613800138000").unwrap().0, Channel::Sms);
        let err = channel_of("13800138000").unwrap_err();
        assert!(err.contains("E.164"), "{err}");
        // A short bare string is a mistake, not a token; `push:` says it is one.
        assert!(channel_of("push-token-abc").is_err());
        assert_eq!(
            channel_of("push:abc-1").unwrap(),
            (Channel::Push, "abc-1".to_string())
        );
        let fcm = "dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";
        assert_eq!(channel_of(fcm).unwrap(), (Channel::Push, fcm.to_string()));
        assert!(channel_of("push:").is_err());
        assert!(channel_of("push:a b").is_err());
    }
}
