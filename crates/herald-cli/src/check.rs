//! `herald check`: validates every config file, segment and template. Each
//! campaign's templates are rendered against sample contacts of its audience,
//! with their real personalisation (`rfm`, `lifecycle`, `best_hour`, `top`), or
//! against a built-in sample when the database has none, so a missing variable
//! (a `top.order_placed.sku` for someone who never ordered) is found here and
//! not as a hole in a sent message. Exit 2 on any problem.

use std::borrow::Cow;
use std::collections::BTreeMap;

use herald_domain::config::{Campaign, ConfigSet, MAX_SMS_BODY_CHARS};
use herald_domain::segment::{Lifecycle, Rfm};
use herald_domain::token::TokenSigner;
use herald_domain::types::{CampaignKind, Channel};
use herald_engine::render::{CampaignRenderer, MessageRenderer, template_reads};
use herald_engine::store::{
    ClaimedMessage, ContactView, Personalisation, PersonalisationRequest, Store, TopKey,
};
use herald_storage::store::SqlStore;
use herald_templates::{TemplateSet, sms_segments};
use serde_json::{Value, json};

use crate::{Cli, EXIT_INVALID, Exit, app};

/// Audience members each campaign's templates are rendered for.
pub const SAMPLE_CONTACTS: u32 = 20;

/// The id of [`builtin_sample`]: no stored contact has it (ids start at 1).
pub const BUILTIN_SAMPLE_ID: i64 = 0;

/// A contact with the fields every template may print, for configs without data yet:
/// a lapsed repeat buyer who opens the app in the evening. [`render_problems`] gives it
/// a value for every `top.EVENT.PROPERTY` the templates read.
pub fn builtin_sample() -> ContactView {
    ContactView {
        id: BUILTIN_SAMPLE_ID,
        external_id: "sample-1".into(),
        email: Some("sample@example.com".into()),
        phone: Some("+8613800138000".into()),
        timezone: Some("Asia/Shanghai".into()),
        locale: Some("en".into()),
        attrs: json!({}),
        tags: vec![],
        personal: Personalisation {
            rfm: Some(Rfm {
                r: 3,
                f: 3,
                m: 3,
                r_days: 120,
                f_count: 3,
                m_value: 320.0,
            }),
            lifecycle: Some(Lifecycle::Silent),
            best_hour: Some(20),
            top: BTreeMap::new(),
            top_lists: BTreeMap::new(),
        },
    }
}

/// A plausible value for each of `keys`, for the built-in sample: `sample-sku` for `sku`.
pub fn sample_top(keys: &[TopKey]) -> BTreeMap<TopKey, Value> {
    keys.iter()
        .map(|k| (k.clone(), json!(format!("sample-{}", k.property))))
        .collect()
}

/// `contact`, or for the built-in sample a copy with a value for each of `keys`.
pub fn with_sample_top<'a>(contact: &'a ContactView, keys: &[TopKey]) -> Cow<'a, ContactView> {
    if contact.id != BUILTIN_SAMPLE_ID {
        return Cow::Borrowed(contact);
    }
    let mut c = contact.clone();
    c.personal.top.extend(sample_top(keys));
    Cow::Owned(c)
}

/// Renders every variant of `campaign` on every channel for each of `contacts`; returns the problems.
pub fn render_problems(
    config: &ConfigSet,
    templates: std::sync::Arc<TemplateSet>,
    campaign: &Campaign,
    contacts: &[ContactView],
) -> Vec<String> {
    let renderer = CampaignRenderer::new(
        templates,
        campaign.clone(),
        &config.herald,
        TokenSigner::new(b"herald-check-only-secret"),
    );
    let keys = renderer.personalisation(0).top;
    let contacts: Vec<Cow<'_, ContactView>> =
        contacts.iter().map(|c| with_sample_top(c, &keys)).collect();
    let mut problems = Vec::new();
    // Every variant on the campaign's channels, then every series step on its own.
    let first = campaign.variants[0].name.get_ref().to_string();
    let mut parts: Vec<(i32, String, String, &[Channel])> = campaign
        .variants
        .iter()
        .map(|v| {
            let name = v.name.get_ref().to_string();
            (
                0,
                name.clone(),
                format!("variant `{name}`"),
                campaign.channels.as_slice(),
            )
        })
        .collect();
    for (i, step) in campaign.steps.iter().enumerate() {
        let channels = step.channels.as_deref().unwrap_or(&campaign.channels);
        parts.push((
            i as i32 + 1,
            first.clone(),
            format!("step {}", i + 1),
            channels,
        ));
    }
    for (step, arm, label, channels) in &parts {
        for &channel in *channels {
            for contact in &contacts {
                let msg = ClaimedMessage {
                    id: 0,
                    run_id: 0,
                    contact_id: contact.id,
                    arm: arm.clone(),
                    channel,
                    address: "sample".into(),
                    attempts: 0,
                    step: *step,
                    send_at: 0,
                    written: None,
                    first: false,
                };
                match renderer.render(&msg, contact) {
                    Err(e) => {
                        // The contact has no such value in the window: say how to allow that.
                        let hint = if e.contains("variable `top.") {
                            format!(
                                " (no such value among the contact's events of the last {}; use {{{{default top.EVENT.PROPERTY \"...\"}}}} where a contact may have none)",
                                config.herald.personalisation.window
                            )
                        } else {
                            String::new()
                        };
                        problems.push(format!(
                            "{}: {label}, {channel}, contact `{}`: {e}{hint}",
                            campaign.file, contact.external_id
                        ));
                        break;
                    }
                    Ok(out) if channel == Channel::Sms => {
                        let max = config.herald.channels.sms.max_segments;
                        let count = sms_segments(&out.message.body);
                        let chars = out.message.body.encode_utf16().count();
                        if chars > MAX_SMS_BODY_CHARS {
                            problems.push(format!(
                                "{}: {label}, contact `{}` (locale {}): the SMS is {chars} characters with the opt-out line; Twilio refuses more than {MAX_SMS_BODY_CHARS} whatever max_segments says; shorten the template",
                                campaign.file,
                                contact.external_id,
                                contact.locale.as_deref().unwrap_or("none"),
                            ));
                            break;
                        }
                        if count.segments > max {
                            problems.push(format!(
                                "{}: {label}: the SMS is {} segments ({:?}, {} units) with the opt-out line{}, over max_segments = {max}; shorten the template",
                                campaign.file,
                                count.segments,
                                count.encoding,
                                count.units,
                                if campaign.kind == CampaignKind::Marketing { "" } else { " (none: transactional)" }
                            ));
                            break;
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    problems
}

/// A copy of the first sample for each locale of a per-locale `opt_out_line` that no
/// sample has: each line is counted in the SMS length checks, whoever the audience is.
pub fn opt_out_locale_samples(config: &ConfigSet, contacts: &[ContactView]) -> Vec<ContactView> {
    let (Some(first), Some(line)) = (contacts.first(), &config.herald.channels.sms.opt_out_line)
    else {
        return Vec::new();
    };
    line.locales()
        .into_iter()
        .filter(|l| !contacts.iter().any(|c| c.locale.as_deref() == Some(*l)))
        .map(|l| ContactView {
            locale: Some(l.to_string()),
            ..first.clone()
        })
        .collect()
}

/// Sample audience members of `campaign` from the database, with the personalisation
/// its templates read.
pub async fn sample_contacts(
    store: &SqlStore,
    config: &ConfigSet,
    templates: &TemplateSet,
    campaign: &Campaign,
) -> anyhow::Result<Vec<ContactView>> {
    let now = chrono::Utc::now().timestamp_millis();
    let members = store
        .audience_page(
            config.audience_of(campaign),
            now,
            campaign.topic.as_deref(),
            0,
            SAMPLE_CONTACTS,
            None,
        )
        .await?;
    let ids: Vec<i64> = members.iter().map(|m| m.contact_id).collect();
    let want = PersonalisationRequest {
        now,
        ..PersonalisationRequest::reads(&config.herald, &template_reads(templates, campaign))
    };
    Ok(store.contacts(&ids, &want).await?)
}

/// What the tracking server's webhooks accept unchecked or refuse, for a
/// setup that sends real email (`[channels.email] provider = "smtp"`).
pub fn webhook_warnings(herald: &herald_domain::config::HeraldConfig) -> Vec<String> {
    use herald_domain::config::{EmailProvider, EmailRelay};
    let t = &herald.tracking;
    let mut out = Vec::new();
    if herald.channels.email.provider != EmailProvider::Smtp {
        return out;
    }
    // Only a sender that says which provider relays its mail gets that
    // provider's webhook warnings: a plain SMTP server posts no events.
    let relay = herald.channels.email.effective_relay();
    match &t.sendgrid_verification_key_env {
        None if relay != Some(EmailRelay::Sendgrid) => {}
        None => out.push(
            "SendGrid event webhooks are accepted unsigned: set [tracking] sendgrid_verification_key_env to the variable holding SendGrid's verification key".into(),
        ),
        Some(var) if std::env::var(var).is_err() => out.push(format!(
            "[tracking] sendgrid_verification_key_env names {var}, which is not set: `herald serve` will not start"
        )),
        Some(_) => {}
    }
    if t.sns_topic_arns.is_empty() && relay == Some(EmailRelay::Ses) {
        out.push(
            "SES notifications (SNS) are refused: list their topics in [tracking] sns_topic_arns to accept them".into(),
        );
    }
    out
}

/// Campaigns whose arms would reshuffle: their name, holdout or weights changed since a recorded run.
pub async fn reshuffle_warnings(
    store: &SqlStore,
    config: &ConfigSet,
) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    for (name, fingerprint, runs) in herald_storage::runs::campaign_fingerprints(store.db()).await?
    {
        match config.campaigns.get(&name) {
            Some(c) if c.assignment_fingerprint() != fingerprint => warnings.push(format!(
                "{}: campaign `{name}` has {runs} run(s), and its holdout or variant weights changed since: contacts will be reassigned to other arms, and reports across these runs mix assignments",
                c.file
            )),
            None => {
                let stored_arms = fingerprint.strip_prefix(name.as_str()).and_then(|rest| rest.strip_prefix(';'));
                let renamed = config
                    .campaigns
                    .values()
                    .find(|c| Some(c.arms_fingerprint().as_str()) == stored_arms);
                if let Some(c) = renamed {
                    warnings.push(format!(
                        "{}: campaign `{}` looks like `{name}` renamed ({runs} run(s)); arm assignment hashes the name, so every contact is reshuffled",
                        c.file, c.name
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(warnings)
}

/// The problems `herald check` finds without the database, per campaign
/// name, and those of no one campaign: what the console shows in place.
/// Templates are rendered against the built-in sample contact only, so a
/// server starts without reading contacts.
pub fn console_problems(
    cli: &Cli,
    config: &ConfigSet,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let templates = match app::load_templates(cli, config) {
        Ok(t) => std::sync::Arc::new(t),
        Err(e) => return (BTreeMap::new(), vec![format!("{e:#}")]),
    };
    let mut problems = static_problems(cli, config, &templates);
    problems.extend(crate::sender_check::check(&config.herald, &|v| std::env::var(v).ok()).errors);
    let mut by_campaign: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut general = Vec::new();
    for p in problems {
        match config
            .campaigns
            .values()
            .find(|c| p.starts_with(&format!("{}:", c.file)))
        {
            Some(c) => by_campaign.entry(c.name.clone()).or_default().push(p),
            None => general.push(p),
        }
    }
    for c in config.campaigns.values() {
        if by_campaign.contains_key(&c.name) {
            continue;
        }
        let mut contacts = vec![builtin_sample()];
        contacts.extend(opt_out_locale_samples(config, &contacts));
        let found = render_problems(config, templates.clone(), c, &contacts);
        if !found.is_empty() {
            by_campaign.insert(c.name.clone(), found);
        }
    }
    (by_campaign, general)
}

/// Missing templates and segments that do not compile, for both databases.
fn static_problems(
    cli: &Cli,
    config: &ConfigSet,
    templates: &std::sync::Arc<TemplateSet>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for c in config.campaigns.values() {
        for v in &c.variants {
            for (ch, t) in [
                (Channel::Email, v.email.as_ref().map(|e| &e.template)),
                (Channel::Sms, v.sms.as_ref().map(|s| &s.template)),
                (Channel::Push, v.push.as_ref().map(|p| &p.template)),
            ] {
                if let Some(t) = t
                    && !templates.contains(t)
                {
                    problems.push(format!(
                        "{}: variant `{}`, {ch}: template `{t}` is not in {}",
                        c.file,
                        v.name.get_ref(),
                        cli.templates.display()
                    ));
                }
            }
        }
    }
    // Segments must compile to SQL for both databases.
    for (name, expr) in config
        .segments
        .values()
        .map(|s| (s.file.clone(), &s.filter))
        .chain(config.campaigns.values().filter_map(|c| match &c.audience {
            herald_domain::config::Audience::Inline(e) => Some((c.file.clone(), e)),
            _ => None,
        }))
    {
        if let Err(e) = herald_storage::segment_sql::compiles_on_both(
            expr,
            &config.herald.rfm,
            &config.herald.lifecycle,
        ) {
            problems.push(format!("{name}: {e}"));
        }
    }
    problems
}

/// Filter literals that cannot match the types the stored contacts actually
/// hold for an undeclared attribute (`attrs.vip == "true"` where every
/// contact with a `vip` holds a boolean): such a filter silently matches
/// nobody. Declared attributes are checked when the config loads; these need
/// the database, so only `herald check` looks. Each problem points at the
/// literal like a config error does.
pub async fn observed_type_problems(
    store: &SqlStore,
    config: &ConfigSet,
) -> anyhow::Result<Vec<herald_domain::diagnostic::Diagnostic>> {
    use herald_domain::config::Audience;
    use herald_domain::segment::Expr;
    use herald_storage::observed::FilterTypes;

    // (file, filter, the text its spans index, the text's offset in the file)
    let mut filters: Vec<(&str, &Expr, Cow<'_, str>, usize)> = Vec::new();
    for seg in config.segments.values() {
        filters.push((
            seg.file.as_str(),
            &seg.filter,
            Cow::Borrowed(seg.source.as_str()),
            seg.filter_offset,
        ));
    }
    for c in config.campaigns.values() {
        if let Audience::Inline(expr) = &c.audience {
            let src = std::fs::read_to_string(&c.file).unwrap_or_default();
            let text = src.get(c.filter_offset()..).unwrap_or("").to_string();
            filters.push((c.file.as_str(), expr, Cow::Owned(text), c.filter_offset()));
        }
    }
    let types = FilterTypes::of(
        store.db(),
        &config.herald.contacts.attrs,
        filters.iter().map(|(_, expr, _, _)| *expr),
    )
    .await?;
    let mut out = Vec::new();
    for (file, expr, text, offset) in &filters {
        if let Err(e) = types.check(expr, text) {
            let src = std::fs::read_to_string(file).unwrap_or_default();
            out.push(e.into_diagnostic(file, &src, *offset));
        }
    }
    Ok(out)
}

/// Runs the check command.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let templates = std::sync::Arc::new(app::load_templates(cli, &config)?);
    let mut problems = static_problems(cli, &config, &templates);
    let sender = crate::sender_check::check(&config.herald, &|v| std::env::var(v).ok());
    for w in &sender.warnings {
        eprintln!("warning: {w}");
    }
    problems.extend(sender.errors);
    for w in webhook_warnings(&config.herald) {
        eprintln!("warning: {w}");
    }
    let store = match app::store(cli, &config).await {
        Ok(store) => Some(store),
        Err(e) => {
            eprintln!(
                "warning: {e:#}; templates are checked against a built-in sample contact only"
            );
            None
        }
    };
    let mut diagnostics = Vec::new();
    if let Some(s) = &store {
        for w in reshuffle_warnings(s, &config).await? {
            eprintln!("warning: {w}");
        }
        diagnostics = observed_type_problems(s, &config).await?;
    }
    if problems.is_empty() {
        for c in config.campaigns.values() {
            let mut contacts = match &store {
                Some(s) => sample_contacts(s, &config, &templates, c).await?,
                None => vec![],
            };
            if contacts.is_empty() {
                contacts.push(builtin_sample());
            }
            contacts.extend(opt_out_locale_samples(&config, &contacts));
            problems.extend(render_problems(&config, templates.clone(), c, &contacts));
        }
    }
    if !problems.is_empty() || !diagnostics.is_empty() {
        for d in &diagnostics {
            eprintln!("{d}\n");
        }
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("{} problem(s)", problems.len() + diagnostics.len());
        return Err(Exit(EXIT_INVALID).into());
    }
    println!(
        "ok: herald.toml, {} segment(s), {} campaign(s), {} template(s)",
        config.segments.len(),
        config.campaigns.len(),
        templates.names().count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_domain::config::HeraldConfig;
    use herald_engine::render::register_inline;

    use super::*;

    /// A config with `herald_toml` and one marketing SMS campaign over `template`.
    fn sms_setup(herald_toml: &str, template: &str) -> (ConfigSet, Arc<TemplateSet>) {
        let campaign = Campaign::parse(
            "config/campaigns/c.toml",
            "name = \"c\"\nwhere = 'attrs.x == 1'\nchannels = [\"sms\"]\n[[variants]]\nname = \"a\"\nsms = { template = \"t.sms.hbs\" }\n",
        )
        .unwrap();
        let mut set = TemplateSet::from_strings(&[("t.sms.hbs", template)]).unwrap();
        register_inline(&mut set, [&campaign]).unwrap();
        let config = ConfigSet {
            herald: HeraldConfig::parse("herald.toml", herald_toml).unwrap(),
            segments: BTreeMap::new(),
            campaigns: BTreeMap::from([("c".to_string(), campaign)]),
        };
        (config, Arc::new(set))
    }

    fn problems(
        config: &ConfigSet,
        set: &Arc<TemplateSet>,
        contacts: &[ContactView],
    ) -> Vec<String> {
        render_problems(config, set.clone(), &config.campaigns["c"], contacts)
    }

    #[test]
    fn an_sms_over_1600_characters_is_refused_whatever_max_segments_says() {
        let toml = "[channels.sms]\nmax_segments = 20\n";
        let long = "a".repeat(MAX_SMS_BODY_CHARS - 10);
        let (config, set) = sms_setup(toml, &long);
        let found = problems(&config, &set, &[builtin_sample()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("1600"), "{found:?}");
        // The same template without the opt-out line's length fits.
        let (config, set) = sms_setup(toml, &"a".repeat(MAX_SMS_BODY_CHARS - 30));
        assert_eq!(
            problems(&config, &set, &[builtin_sample()]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_locales_opt_out_line_is_counted_in_the_segment_check() {
        // 66 characters: with "Reply STOP to opt out" one GSM-7 segment; with "回TD退订"
        // the whole SMS is UCS-2, 71 units, two segments.
        let toml = "[channels.sms]\nmax_segments = 1\nopt_out_line = { default = \"Reply STOP to opt out\", zh-CN = \"回TD退订\" }\n";
        let (config, set) = sms_setup(toml, &"a".repeat(66));
        let sample = vec![builtin_sample()];
        assert_eq!(problems(&config, &set, &sample), Vec::<String>::new());
        let extra = opt_out_locale_samples(&config, &sample);
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].locale.as_deref(), Some("zh-CN"));
        let all: Vec<ContactView> = sample.into_iter().chain(extra).collect();
        let found = problems(&config, &set, &all);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("2 segments"), "{found:?}");
    }
}
