//! Turning a claimed message and its contact into a [`RenderedMessage`]:
//! the interface the dispatcher renders through, and its handlebars
//! implementation over the campaign's variants.

use herald_channels::RenderedMessage;
use herald_domain::config::{
    Campaign, EmailContent, HeraldConfig, OptOutLine, PushContent, QuietHours, SendTime,
    SmsContent, Variant,
};
use herald_domain::token::{TokenKind, TokenSigner};
use herald_domain::types::{CampaignKind, Channel};
use herald_templates::{
    LinkContext, RenderData, Rendered, TemplateError, TemplateReads, TemplateSet, compose_sms,
    html_to_text,
};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use crate::store::{
    ClaimedMessage, ContactView, LinkRecord, Personalisation, PersonalisationRequest,
};

/// A rendered message and the tracked links it contains.
#[derive(Debug, Clone)]
pub struct RenderOutput {
    /// Ready to hand to a channel.
    pub message: RenderedMessage,
    /// Links to store before sending.
    pub links: Vec<LinkRecord>,
}

/// Renders messages of one campaign.
pub trait MessageRenderer: Send + Sync {
    /// Renders `msg` for `contact`, or says why it cannot be rendered.
    fn render(&self, msg: &ClaimedMessage, contact: &ContactView) -> Result<RenderOutput, String>;
    /// The personalisation the templates need, computed at `now` (ms).
    fn personalisation(&self, now: i64) -> PersonalisationRequest;
    /// When a message its route held (blocked) may go out, if not at `now`,
    /// and why. For a marketing campaign the planner's rules, applied again
    /// because the block moved the message out of the time it was planned
    /// for: the send time (the variant's hour, else the contact's best
    /// hour), then quiet hours, with the contact's `spread` offset kept.
    /// `None`: it may go now.
    fn released_at(
        &self,
        msg: &ClaimedMessage,
        contact: &ContactView,
        now: i64,
    ) -> Option<Deferral> {
        let _ = (msg, contact, now);
        None
    }

    /// What [`MessageRenderer::released_at`] reads that the templates may
    /// not (each contact's best hour, for a `send_time = "best_hour"`
    /// campaign), to fetch for the held messages only; `None`: nothing more.
    fn release_personalisation(&self, now: i64) -> Option<PersonalisationRequest> {
        let _ = now;
        None
    }
}

/// Where [`MessageRenderer::released_at`] moved a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    /// When it may go (ms).
    pub at: i64,
    /// The rules that moved it, as the planner names them
    /// (`best_hour, deferred (quiet hours), spread`).
    pub reason: String,
}

/// The name under which a variant's inline subject or title is registered.
pub fn inline_name(campaign: &str, variant: &str, channel: Channel) -> String {
    format!("campaigns/{campaign}/{variant}/{channel}.title")
}

/// The name a series step's inline subjects and titles are registered under, in
/// place of a variant's (steps have one content for every arm).
pub fn step_key(step: i32) -> String {
    format!("step-{step}")
}

/// Registers every campaign's inline subjects and titles (its variants' and
/// its `[[steps]]`') into `set`.
pub fn register_inline<'a>(
    set: &mut TemplateSet,
    campaigns: impl IntoIterator<Item = &'a Campaign>,
) -> Result<(), TemplateError> {
    for c in campaigns {
        for content in contents(c) {
            if let Some(e) = content.email {
                set.register_inline(
                    &inline_name(&c.name, &content.key, Channel::Email),
                    &e.subject,
                )?;
            }
            if let Some(p) = content.push {
                set.register_inline(&inline_name(&c.name, &content.key, Channel::Push), &p.title)?;
            }
        }
    }
    Ok(())
}

/// Every content of `campaign`: its variants', then its `[[steps]]`'.
fn contents(campaign: &Campaign) -> impl Iterator<Item = Content<'_>> {
    let variants = campaign.variants.iter().map(|v| Content {
        key: v.name.get_ref().to_string(),
        email: v.email.as_ref(),
        sms: v.sms.as_ref(),
        push: v.push.as_ref(),
    });
    let steps = campaign.steps.iter().enumerate().map(|(i, s)| Content {
        key: step_key(i as i32 + 1),
        email: s.email.as_ref(),
        sms: s.sms.as_ref(),
        push: s.push.as_ref(),
    });
    variants.chain(steps)
}

/// A JSON number for `v`: a whole number prints as one (`250`, not `250.0`).
fn number(v: f64) -> Value {
    // Within 2^53 a whole f64 converts to i64 exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() <= EXACT {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// `rfm`, `lifecycle`, `best_hour` and `top` as templates see them; a missing value is
/// null, which strict rendering reports like an absent one.
fn personal_data(p: &Personalisation) -> Map<String, Value> {
    let rfm = p.rfm.map(|r| {
        json!({
            "r": r.r, "f": r.f, "m": r.m,
            "r_days": r.r_days, "f_count": r.f_count, "m_value": number(r.m_value),
        })
    });
    let mut top = Map::new();
    for (key, value) in &p.top {
        let event = top
            .entry(key.event.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = event {
            props.insert(key.property.clone(), value.clone());
        }
    }
    let mut lists = Map::new();
    for (key, values) in &p.top_lists {
        let event = lists
            .entry(key.event.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = event {
            props.insert(key.property.clone(), Value::Array(values.clone()));
        }
    }
    Map::from_iter([
        (
            herald_templates::helpers::TOP_LISTS.to_string(),
            Value::Object(lists),
        ),
        ("rfm".to_string(), rfm.unwrap_or(Value::Null)),
        (
            "lifecycle".to_string(),
            p.lifecycle.map_or(Value::Null, |l| json!(l.as_str())),
        ),
        ("best_hour".to_string(), json!(p.best_hour)),
        ("top".to_string(), Value::Object(top)),
    ])
}

/// What templates see of a contact, campaign and variant (SPEC section 2).
pub fn template_data(
    contact: &ContactView,
    campaign: &Campaign,
    variant: &str,
    unsubscribe_url: &str,
) -> Value {
    let mut data = json!({
        "contact": {
            "external_id": contact.external_id,
            "email": contact.email,
            "phone": contact.phone,
            "timezone": contact.timezone,
            "locale": contact.locale,
            "attrs": contact.attrs,
            "tags": contact.tags,
        },
        "campaign": { "name": campaign.name, "kind": campaign.kind.as_str(), "topic": campaign.topic },
        "variant": { "name": variant },
        "unsubscribe_url": unsubscribe_url,
    });
    if let Value::Object(m) = &mut data {
        m.extend(personal_data(&contact.personal));
    }
    data
}

/// The personalisation the variants and steps of `campaign` read, in their files
/// (and locale variants) and inline subjects and titles.
pub fn template_reads(templates: &TemplateSet, campaign: &Campaign) -> TemplateReads {
    let mut reads = TemplateReads::default();
    for c in contents(campaign) {
        let files = [
            c.email.map(|e| &e.template),
            c.sms.map(|s| &s.template),
            c.push.map(|p| &p.template),
        ];
        for t in files.into_iter().flatten() {
            reads.extend(templates.reads(t));
        }
        for ch in [Channel::Email, Channel::Push] {
            reads.extend(templates.inline_reads(&inline_name(&campaign.name, &c.key, ch)));
        }
    }
    reads
}

/// Renders one campaign's messages with its compiled templates.
pub struct CampaignRenderer {
    templates: Arc<TemplateSet>,
    campaign: Campaign,
    signer: TokenSigner,
    public_url: String,
    bounce_domain: Option<String>,
    sms_opt_out_line: Option<OptOutLine>,
    callback_url: Option<String>,
    /// The personalisation the campaign's templates read (found once).
    personalisation: PersonalisationRequest,
    /// The quiet hours a held message meets again (marketing only).
    quiet_hours: Option<QuietHours>,
    /// For contacts without a (valid) time zone.
    default_tz: chrono_tz::Tz,
    /// Each contact's best hour, for releasing a held message of a
    /// `send_time = "best_hour"` marketing campaign whose templates do not
    /// read it (stamped with `now` when used).
    release_best_hour: Option<PersonalisationRequest>,
}

impl CampaignRenderer {
    /// A renderer of `campaign` with the tracking settings of `herald`.
    pub fn new(
        templates: Arc<TemplateSet>,
        campaign: Campaign,
        herald: &HeraldConfig,
        signer: TokenSigner,
    ) -> Self {
        let public_url = herald.tracking.public_url.trim_end_matches('/').to_string();
        let personalisation =
            PersonalisationRequest::reads(herald, &template_reads(&templates, &campaign));
        let release_best_hour = (campaign.kind == CampaignKind::Marketing
            && campaign.send_time == SendTime::BestHour
            && !personalisation.best_hour)
            .then(|| PersonalisationRequest::best_hour(0, herald));
        Self {
            personalisation,
            release_best_hour,
            templates,
            signer,
            bounce_domain: herald.channels.email.bounce_domain.clone(),
            sms_opt_out_line: herald.channels.sms.opt_out_line.clone(),
            callback_url: Some(format!("{public_url}/webhooks/twilio/status")),
            public_url,
            quiet_hours: campaign
                .quiet_hours
                .or(herald.defaults.quiet_hours)
                .filter(|_| campaign.kind == CampaignKind::Marketing),
            default_tz: herald.defaults.timezone.0,
            campaign,
        }
    }

    /// The content `msg` is rendered from: its variant's, or its series step's, and
    /// the name its inline subject or title is registered under.
    fn content(&self, msg: &ClaimedMessage) -> Result<Content<'_>, String> {
        if msg.step > 0 {
            let step = usize::try_from(msg.step - 1)
                .ok()
                .and_then(|i| self.campaign.steps.get(i))
                .ok_or_else(|| format!("step {} is no longer in the campaign", msg.step))?;
            return Ok(Content {
                key: step_key(msg.step),
                email: step.email.as_ref(),
                sms: step.sms.as_ref(),
                push: step.push.as_ref(),
            });
        }
        // A message released by a rollout carries its winner's content.
        let arm = crate::rollout::variant_of(&msg.arm);
        let variant = self
            .variant(arm)
            .ok_or_else(|| format!("variant `{}` is no longer in the campaign", msg.arm))?;
        Ok(Content {
            key: arm.to_string(),
            email: variant.email.as_ref(),
            sms: variant.sms.as_ref(),
            push: variant.push.as_ref(),
        })
    }

    fn variant(&self, name: &str) -> Option<&Variant> {
        self.campaign
            .variants
            .iter()
            .find(|v| v.name.get_ref().as_str() == name)
    }
}

/// What one message is rendered from.
struct Content<'a> {
    /// Its inline subjects' and titles' registration key.
    key: String,
    email: Option<&'a EmailContent>,
    sms: Option<&'a SmsContent>,
    push: Option<&'a PushContent>,
}

/// The HTML with a 1x1 open pixel before `</body>` (or at the end).
pub fn with_open_pixel(html: &str, pixel_url: &str) -> String {
    let img =
        format!(r#"<img src="{pixel_url}" width="1" height="1" alt="" style="display:none">"#);
    match html.rfind("</body>") {
        Some(i) => format!("{}{img}{}", &html[..i], &html[i..]),
        None => format!("{html}{img}"),
    }
}

/// The links to store: short links only. A click link's token carries its
/// URL (`TokenSigner::sign_link`), so it needs no row.
fn links_of(r: &Rendered) -> Vec<LinkRecord> {
    r.links
        .iter()
        .filter(|l| l.short_code.is_some())
        .map(|l| LinkRecord {
            idx: i32::from(l.index),
            url: l.url.clone(),
            short_code: l.short_code.clone(),
        })
        .collect()
}

impl MessageRenderer for CampaignRenderer {
    fn released_at(
        &self,
        msg: &ClaimedMessage,
        contact: &ContactView,
        now: i64,
    ) -> Option<Deferral> {
        if self.campaign.kind != CampaignKind::Marketing {
            return None;
        }
        let tz: chrono_tz::Tz = contact
            .timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.default_tz);
        // The contact's `spread` offset: the planner adds it last, so the
        // send-hour rule reads the instant before it (`now - offset`) and
        // the result gets it back.
        let offset = self.campaign.spread.map_or(0, |spread| {
            let key = format!("{}\0{}", self.campaign.name, contact.external_id);
            crate::policy::spread_offset(&key, spread)
        });
        let mut moved: Vec<&'static str> = Vec::new();
        let mut at = now;
        // The send time: the variant's own hour, else the contact's best hour.
        let variant_hour = self
            .variant(crate::rollout::variant_of(&msg.arm))
            .and_then(|v| v.send_time)
            .map(|t| t.hour);
        let hour = match (variant_hour, self.campaign.send_time) {
            (Some(h), _) => Some((h, crate::policy::REASON_VARIANT_HOUR)),
            (None, SendTime::BestHour) => contact
                .personal
                .best_hour
                .map(|h| (h, crate::policy::REASON_BEST_HOUR)),
            (None, SendTime::Immediate) => None,
        };
        // Still within its hour, it goes: the hour is the rule, not its first
        // minute (a block of a few minutes must not cost a day). Past it,
        // the next such hour, as the planner would choose from `now`.
        if let Some((hour, why)) = hour
            && crate::policy::local_hour_at(now - offset, tz) != hour
        {
            at = crate::policy::next_local_hour(now - offset, tz, hour) + offset;
            moved.push(why);
        }
        // Quiet hours at the instant it would go, spread or not.
        if let Some(end) = self
            .quiet_hours
            .as_ref()
            .and_then(|q| crate::policy::quiet_hours(at, tz, q))
        {
            at = end + offset;
            moved.push("deferred (quiet hours)");
        }
        if moved.is_empty() {
            return None;
        }
        if offset > 0 {
            moved.push("spread");
        }
        Some(Deferral {
            at,
            reason: moved.join(", "),
        })
    }

    fn release_personalisation(&self, now: i64) -> Option<PersonalisationRequest> {
        self.release_best_hour
            .as_ref()
            .map(|r| PersonalisationRequest { now, ..r.clone() })
    }

    fn personalisation(&self, now: i64) -> PersonalisationRequest {
        PersonalisationRequest {
            now,
            ..self.personalisation.clone()
        }
    }

    fn render(&self, msg: &ClaimedMessage, contact: &ContactView) -> Result<RenderOutput, String> {
        let content = self.content(msg)?;
        let arm = crate::rollout::variant_of(&msg.arm);
        let unsubscribe_url = format!(
            "{}/u/{}",
            self.public_url,
            self.signer.sign_message(TokenKind::Unsubscribe, msg.id)
        );
        let data = RenderData::new(template_data(
            contact,
            &self.campaign,
            arm,
            &unsubscribe_url,
        ));
        let locale = contact.locale.as_deref();
        let ctx = |short_links| LinkContext {
            message_id: msg.id,
            public_url: self.public_url.clone(),
            signer: self.signer.clone(),
            short_links,
        };
        let marketing = self.campaign.kind == CampaignKind::Marketing;
        let mut message = RenderedMessage {
            message_id: msg.id,
            channel: msg.channel,
            to: msg.address.clone(),
            subject: None,
            body: String::new(),
            text: None,
            unsubscribe_url: None,
            return_path: None,
            status_callback: None,
            callback_token: None,
        };
        let links;
        let title = |ch| {
            self.templates
                .render_inline_data(
                    &inline_name(&self.campaign.name, &content.key, ch),
                    &data,
                    Some(&ctx(false)),
                )
                .map_err(|e| e.to_string())
        };
        match msg.channel {
            Channel::Email => {
                let content = content.email.ok_or("the variant has no email content")?;
                let subject = title(Channel::Email)?;
                let body = self
                    .templates
                    .render_data(&content.template, locale, &data, Some(&ctx(false)))
                    .map_err(|e| e.to_string())?;
                message.subject = Some(subject.text);
                message.text = Some(html_to_text(&body.text));
                let pixel = format!(
                    "{}/o/{}",
                    self.public_url,
                    self.signer.sign_message(TokenKind::Open, msg.id)
                );
                message.body = with_open_pixel(&body.text, &pixel);
                message.unsubscribe_url = Some(unsubscribe_url.clone());
                let callback = self.signer.sign_message(TokenKind::Callback, msg.id);
                message.return_path = self
                    .bounce_domain
                    .as_ref()
                    .map(|d| format!("bounce+{callback}@{d}"));
                message.callback_token = Some(callback);
                links = links_of(&body);
            }
            Channel::Sms => {
                let content = content.sms.ok_or("the variant has no sms content")?;
                let body = self
                    .templates
                    .render_data(&content.template, locale, &data, Some(&ctx(true)))
                    .map_err(|e| e.to_string())?;
                let opt_out = if marketing {
                    self.sms_opt_out_line
                        .as_ref()
                        .and_then(|l| l.for_locale(locale))
                } else {
                    None
                };
                message.body = compose_sms(&body.text, opt_out);
                message.status_callback = self.callback_url.as_ref().map(|u| {
                    format!(
                        "{u}?m={}",
                        self.signer.sign_message(TokenKind::Callback, msg.id)
                    )
                });
                links = links_of(&body);
            }
            Channel::Push => {
                let content = content.push.ok_or("the variant has no push content")?;
                let t = title(Channel::Push)?;
                let body = self
                    .templates
                    .render_data(&content.template, locale, &data, Some(&ctx(false)))
                    .map_err(|e| e.to_string())?;
                message.subject = Some(t.text);
                message.body = body.text.clone();
                links = links_of(&body);
            }
        }
        Ok(RenderOutput { message, links })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TopKey;
    use herald_domain::segment::{Lifecycle, Rfm};
    use std::collections::BTreeMap;

    fn campaign() -> Campaign {
        Campaign::parse(
            "c.toml",
            r#"
name = "c"
where = 'attrs.x == 1'
channels = ["sms", "email"]
[[variants]]
name = "a"
email = { subject = "{{default top.order_placed.colour \"\"}}", template = "t.email.hbs" }
sms = { template = "t.sms.hbs" }
"#,
        )
        .unwrap()
    }

    fn contact(personal: Personalisation) -> ContactView {
        ContactView {
            id: 1,
            external_id: "c1".into(),
            email: Some("a@example.com".into()),
            phone: None,
            timezone: None,
            locale: Some("zh-CN".into()),
            attrs: json!({}),
            tags: vec![],
            personal,
        }
    }

    fn key(event: &str, property: &str) -> TopKey {
        TopKey {
            event: event.into(),
            property: property.into(),
        }
    }

    #[test]
    fn a_held_marketing_message_meets_quiet_hours_again() {
        let herald = HeraldConfig::parse(
            "herald.toml",
            "[defaults]\nquiet_hours = { start = \"21:00\", end = \"08:00\" }\n",
        )
        .unwrap();
        let templates = Arc::new(TemplateSet::from_strings(&[]).unwrap());
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let r = CampaignRenderer::new(templates.clone(), campaign(), &herald, signer.clone());
        let msg = ClaimedMessage {
            id: 1,
            run_id: 1,
            contact_id: 1,
            arm: "a".into(),
            channel: Channel::Sms,
            address: "+15005550006".into(),
            step: 0,
            attempts: 0,
            send_at: 0,
            written: None,
            first: false,
        };
        let mut paris = contact(Personalisation::default());
        paris.timezone = Some("Europe/Paris".into());
        // 2026-01-05 22:30 UTC is 23:30 in Paris: quiet until 08:00 Paris (07:00 UTC).
        let night = 1_767_652_200_000;
        assert_eq!(
            r.released_at(&msg, &paris, night),
            Some(Deferral {
                at: night + 8 * 3_600_000 + 30 * 60_000,
                reason: "deferred (quiet hours)".into()
            })
        );
        // 12:00 UTC: not quiet.
        assert_eq!(
            r.released_at(&msg, &paris, night - 10 * 3_600_000 - 30 * 60_000),
            None
        );
        // A transactional campaign ignores quiet hours.
        let mut t = campaign();
        t.kind = CampaignKind::Transactional;
        let r = CampaignRenderer::new(templates, t, &herald, signer);
        assert_eq!(r.released_at(&msg, &paris, night), None);
    }

    /// A held message of a campaign with send-time rules meets them again
    /// on release: still within its hour it goes, past it it waits for the
    /// next one (then quiet hours), its `spread` offset kept; a
    /// transactional campaign's goes at once.
    #[test]
    fn a_held_marketing_message_meets_its_send_hour_again() {
        const HOUR: i64 = 3_600_000;
        let herald = HeraldConfig::parse(
            "herald.toml",
            "[defaults]\nquiet_hours = { start = \"21:00\", end = \"08:00\" }\ntimezone = \"UTC\"\n",
        )
        .unwrap();
        let parse = |extra: &str| {
            Campaign::parse(
                "c.toml",
                &format!(
                    "name = \"c\"\nwhere = 'attrs.x == 1'\nchannels = [\"sms\"]\n{extra}\n\
                     [[variants]]\nname = \"a\"\nsms = {{ template = \"t.sms.hbs\" }}\nsend_time = {{ hour = 10 }}\n\
                     [[variants]]\nname = \"b\"\nsms = {{ template = \"t.sms.hbs\" }}\n"
                ),
            )
            .unwrap()
        };
        let templates = Arc::new(TemplateSet::from_strings(&[]).unwrap());
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let renderer =
            |c: Campaign| CampaignRenderer::new(templates.clone(), c, &herald, signer.clone());
        let msg = |arm: &str| ClaimedMessage {
            id: 1,
            run_id: 1,
            contact_id: 1,
            arm: arm.into(),
            channel: Channel::Sms,
            address: "+15005550006".into(),
            step: 0,
            attempts: 0,
            send_at: 0,
            written: None,
            first: false,
        };
        let mut c = contact(Personalisation {
            best_hour: Some(19),
            ..Personalisation::default()
        });
        c.timezone = Some("UTC".into());
        // 2026-01-05 00:00 UTC.
        let day = 1_767_571_200_000;
        let r = renderer(parse("send_time = \"best_hour\""));
        // Variant a's own hour, 10:00: at 10:40 it goes; at 11:05 tomorrow's 10:00.
        assert_eq!(
            r.released_at(&msg("a"), &c, day + 10 * HOUR + 40 * 60_000),
            None
        );
        assert_eq!(
            r.released_at(&msg("a"), &c, day + 11 * HOUR + 5 * 60_000),
            Some(Deferral {
                at: day + 34 * HOUR,
                reason: "variant_hour".into()
            })
        );
        // A rollout's release carries the variant's hour too.
        assert_eq!(
            r.released_at(&msg("rollout:a"), &c, day + 11 * HOUR)
                .map(|d| d.at),
            Some(day + 34 * HOUR)
        );
        // Variant b has none: the contact's best hour, 19:00, the same day.
        assert_eq!(
            r.released_at(&msg("b"), &c, day + 14 * HOUR),
            Some(Deferral {
                at: day + 19 * HOUR,
                reason: "best_hour".into()
            })
        );
        // Past 20:00 the next 19:00 is tomorrow's.
        assert_eq!(
            r.released_at(&msg("b"), &c, day + 20 * HOUR).map(|d| d.at),
            Some(day + 43 * HOUR)
        );
        // Best hour 22 is in quiet hours: moved to it, then to their end.
        let mut late = c.clone();
        late.personal.best_hour = Some(22);
        assert_eq!(
            r.released_at(&msg("b"), &late, day + 12 * HOUR),
            Some(Deferral {
                at: day + 32 * HOUR,
                reason: "best_hour, deferred (quiet hours)".into()
            })
        );
        // Without a best hour (no events), nothing but quiet hours applies.
        let mut unknown = c.clone();
        unknown.personal.best_hour = None;
        assert_eq!(r.released_at(&msg("b"), &unknown, day + 12 * HOUR), None);
        // With `spread`, the contact keeps its offset: its hour runs from
        // 10:00 + offset, and a deferral lands on the hour plus the offset.
        let spread = renderer(parse("spread = \"2h\""));
        let offset = crate::policy::spread_offset(
            "c\0c1",
            "2h".parse::<herald_domain::duration::Span>().unwrap(),
        );
        assert!(offset > 0);
        assert_eq!(
            spread.released_at(&msg("a"), &c, day + 10 * HOUR + offset + 50 * 60_000),
            None
        );
        assert_eq!(
            spread.released_at(&msg("a"), &c, day + 11 * HOUR + offset + 1),
            Some(Deferral {
                at: day + 34 * HOUR + offset,
                reason: "variant_hour, spread".into()
            })
        );
        // Transactional: no rule moves a released message.
        let mut t = parse("send_time = \"best_hour\"");
        t.kind = CampaignKind::Transactional;
        assert_eq!(
            renderer(t).released_at(&msg("a"), &c, day + 11 * HOUR),
            None
        );
        // The best hour is fetched for a release only when the templates do not read it.
        assert!(
            r.release_personalisation(day)
                .is_some_and(|p| p.best_hour && p.now == day)
        );
        assert!(spread.release_personalisation(day).is_none());
    }

    #[test]
    fn templates_see_rfm_lifecycle_best_hour_and_top() {
        let personal = Personalisation {
            rfm: Some(Rfm {
                r: 4,
                f: 2,
                m: 3,
                r_days: 31,
                f_count: 2,
                m_value: 550.0,
            }),
            lifecycle: Some(Lifecycle::Dormant),
            best_hour: Some(19),
            top: BTreeMap::from([
                (key("order_placed", "sku"), json!("tea")),
                (key("order_placed", "qty"), json!(2)),
            ]),
            top_lists: BTreeMap::new(),
        };
        let data = template_data(&contact(personal), &campaign(), "a", "u");
        assert_eq!(
            data["rfm"],
            json!({"r": 4, "f": 2, "m": 3, "r_days": 31, "f_count": 2, "m_value": 550})
        );
        assert_eq!(data["lifecycle"], "dormant");
        assert_eq!(data["best_hour"], 19);
        assert_eq!(
            data["top"],
            json!({"order_placed": {"sku": "tea", "qty": 2}})
        );
        assert_eq!(data["contact"]["external_id"], "c1");
    }

    #[test]
    fn a_missing_top_value_is_a_missing_variable_unless_defaulted() {
        let set = TemplateSet::from_strings(&[
            ("t.sms.hbs", "{{top.order_placed.sku}} {{rfm.r}}"),
            ("d.sms.hbs", "{{default top.order_placed.sku \"tea\"}}"),
        ])
        .unwrap();
        let data = template_data(&contact(Personalisation::default()), &campaign(), "a", "u");
        let e = set.render("t.sms.hbs", None, &data, None).unwrap_err();
        assert!(e.to_string().contains("top.order_placed.sku"), "{e}");
        assert_eq!(
            set.render("d.sms.hbs", None, &data, None).unwrap().text,
            "tea"
        );
    }

    /// `(top "EVENT" "PROPERTY" N)` renders the first N of the contact's
    /// ranked values (fewer when they have fewer, none when they have none),
    /// beside the one-item `top.EVENT.PROPERTY`; the request asks for them.
    #[test]
    fn top_returns_the_first_n_items() {
        let body = "{{top.order_placed.sku}}:{{#each (top \"order_placed\" \"sku\" 3)}}[{{this}}]{{/each}}\
                    {{#each (top \"order_placed\" \"sku\" 1)}}<{{this}}>{{/each}}\
                    {{#each (top \"app_open\" \"screen\" 2)}}{{this}}{{else}} none{{/each}}";
        let set = TemplateSet::from_strings(&[("t.sms.hbs", body)]).unwrap();
        let personal = Personalisation {
            top: BTreeMap::from([(key("order_placed", "sku"), json!("tea"))]),
            top_lists: BTreeMap::from([(
                key("order_placed", "sku"),
                vec![json!("tea"), json!("mug"), json!("pot"), json!("cup")],
            )]),
            ..Personalisation::default()
        };
        let data = template_data(&contact(personal), &campaign(), "a", "u");
        assert_eq!(
            set.render("t.sms.hbs", None, &data, None).unwrap().text,
            "tea:[tea][mug][pot]<tea> none"
        );
        let want = request(&[("t.sms.hbs", body), ("t.email.hbs", "<p>x</p>")]);
        assert_eq!(
            want.top_lists.into_iter().collect::<Vec<_>>(),
            [
                (key("app_open", "screen"), 2),
                (key("order_placed", "sku"), 3)
            ]
        );
    }

    /// What a request for `campaign()` over `templates` asks for.
    fn request(templates: &[(&str, &str)]) -> PersonalisationRequest {
        let mut set = TemplateSet::from_strings(templates).unwrap();
        let c = campaign();
        register_inline(&mut set, [&c]).unwrap();
        PersonalisationRequest::reads(&HeraldConfig::default(), &template_reads(&set, &c))
    }

    #[test]
    fn the_request_names_what_bodies_locale_variants_and_subjects_read() {
        let want = request(&[
            ("t.sms.hbs", "{{top.order_placed.sku}}"),
            ("t.sms.zh-CN.hbs", "{{top.app_open.screen}}"),
            ("t.email.hbs", "<p>{{contact.email}}</p>"),
        ]);
        assert_eq!(
            want.top,
            [
                key("app_open", "screen"),
                key("order_placed", "colour"),
                key("order_placed", "sku")
            ]
        );
        // Nothing reads RFM, lifecycle or best hour: their queries are not run.
        assert!(!want.rfm_lifecycle && !want.best_hour);
        let want = request(&[
            ("t.sms.hbs", "{{rfm.r}}"),
            ("t.email.hbs", "<p>{{contact.email}}</p>"),
            ("t.email.zh-CN.hbs", "<p>{{best_hour}}</p>"),
        ]);
        assert!(want.rfm_lifecycle && want.best_hour);
        let want = request(&[
            ("t.sms.hbs", "{{> part.sms.hbs}}"),
            ("part.sms.hbs", "{{lifecycle}}"),
            ("t.email.hbs", "<p>{{contact.email}}</p>"),
        ]);
        assert!(want.rfm_lifecycle && !want.best_hour);
    }

    #[test]
    fn the_open_pixel_goes_before_the_body_end() {
        assert_eq!(
            with_open_pixel("<html><body><p>x</p></body></html>", "https://t/o/T"),
            r#"<html><body><p>x</p><img src="https://t/o/T" width="1" height="1" alt="" style="display:none"></body></html>"#
        );
        assert!(
            with_open_pixel("<p>x</p>", "u")
                .ends_with(r#"<img src="u" width="1" height="1" alt="" style="display:none">"#)
        );
    }
}
