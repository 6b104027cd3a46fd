//! Loading what every command needs: config, database, templates, the
//! tracking secret and the channel routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_channels::dkim::DkimSigner;
use herald_channels::fcm::{FcmChannel, FcmSettings, ServiceAccountKey};
use herald_channels::outbox::OutboxChannel;
use herald_channels::pacer::Pacer;
use herald_channels::rate::RateLimit;
use herald_channels::smtp::{SmtpChannel, SmtpSettings, TlsMode};
use herald_channels::twilio::{TwilioChannel, TwilioSender, TwilioSettings};
use herald_domain::config::{self, ConfigSet, EmailProvider, PushProvider, RateSpec, SmsProvider};
use herald_domain::token::TokenSigner;
use herald_domain::types::Channel;
use herald_engine::Clock;
use herald_engine::dispatch::{Dispatcher, Route};
use herald_engine::fallback::CampaignFallback;
use herald_engine::handoff::Handoff;
use herald_engine::trigger::CampaignGate;
use herald_storage::Db;
use herald_storage::store::SqlStore;
use herald_templates::TemplateSet;

use crate::{Cli, EXIT_INVALID, Exit};

/// Loads and checks the config directory, printing every problem (exit 2 on any).
pub fn load_config(cli: &Cli) -> anyhow::Result<ConfigSet> {
    config::load(&cli.config).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}\n");
        }
        eprintln!("{} problem(s) in {}", errors.len(), cli.config.display());
        Exit(EXIT_INVALID).into()
    })
}

/// The database URL in effect.
pub fn database_url(cli: &Cli, config: &ConfigSet) -> String {
    cli.database
        .clone()
        .unwrap_or_else(|| config.herald.database.url.clone())
}

/// Connects and migrates.
pub async fn connect(cli: &Cli, config: &ConfigSet) -> anyhow::Result<Db> {
    let url = database_url(cli, config);
    let db = Db::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))?;
    let Some(keys) = digest_keys(config) else {
        return Ok(db);
    };
    // Plain digests of earlier versions become keyed on the first start with the secret.
    let wrapped = herald_storage::contacts::wrap_plain_digests(&db, &keys)
        .await
        .context("cannot key the digests of forgotten contacts")?;
    if wrapped > 0 {
        eprintln!(
            "keyed {wrapped} digests of forgotten contacts' addresses with the tracking secret"
        );
    }
    Ok(db.with_digest_keys(keys))
}

/// The keys forgotten identifiers are digested under: derived from the
/// tracking secret and, after a rotation, `[tracking] secret_previous_env`;
/// `None` without the secret.
fn digest_keys(config: &ConfigSet) -> Option<herald_storage::contacts::DigestKeys> {
    let t = &config.herald.tracking;
    let current = std::env::var(&t.secret_env)
        .ok()
        .filter(|s| !s.is_empty())?;
    let previous = t
        .secret_previous_env
        .as_ref()
        .and_then(|v| std::env::var(v).ok())
        .filter(|s| !s.is_empty());
    let previous: Vec<&[u8]> = previous.iter().map(|s| s.as_bytes()).collect();
    Some(herald_storage::contacts::DigestKeys::from_secrets(
        current.as_bytes(),
        &previous,
    ))
}

/// Connects and returns the store, with the `[rfm]` and `[lifecycle]` settings segments need.
pub async fn store(cli: &Cli, config: &ConfigSet) -> anyhow::Result<SqlStore> {
    let db = connect(cli, config).await?;
    Ok(SqlStore::with_segment_config(
        db,
        config.herald.rfm.clone(),
        config.herald.lifecycle.clone(),
    ))
}

/// Loads the templates and registers every campaign's subjects and titles.
pub fn load_templates(cli: &Cli, config: &ConfigSet) -> anyhow::Result<TemplateSet> {
    let mut set = if cli.templates.exists() {
        TemplateSet::load(&cli.templates).map_err(|e| {
            eprintln!("{e}");
            Exit(EXIT_INVALID)
        })?
    } else {
        TemplateSet::new()
    };
    herald_engine::render::register_inline(&mut set, config.campaigns.values()).map_err(|e| {
        eprintln!("{e}");
        Exit(EXIT_INVALID)
    })?;
    Ok(set)
}

/// The tracking secret from the environment variable `[tracking].secret_env` names.
pub fn signer(config: &ConfigSet) -> anyhow::Result<TokenSigner> {
    let var = &config.herald.tracking.secret_env;
    let secret = std::env::var(var).map_err(|_| {
        anyhow::anyhow!("set the environment variable {var} to the tracking secret (it signs unsubscribe, open and click links); for example: export {var}=$(openssl rand -hex 32)")
    })?;
    if secret.len() < 16 {
        anyhow::bail!(
            "{var} is too short: use at least 16 characters (32 random bytes in hex is best)"
        );
    }
    Ok(TokenSigner::new(secret.as_bytes()))
}

/// Looks up the value of a secret by the name of its environment variable.
pub type Secrets<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Secrets from the process environment.
pub fn env_secrets(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn secret_from_env(
    secrets: Secrets,
    var: &Option<String>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(v) => secrets(v)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("set the environment variable {v} to the {what}")),
    }
}

fn pacer(rate: Option<RateSpec>) -> Arc<Pacer> {
    Arc::new(Pacer::new(rate.map(RateLimit::from)))
}

/// A signer for each `[channels.email] dkim` key, its private key read from the environment.
fn dkim_signers(
    secrets: Secrets,
    email: &config::EmailChannelConfig,
) -> anyhow::Result<Vec<Arc<DkimSigner>>> {
    email
        .dkim_keys()
        .iter()
        .map(|k| {
            let text = secrets(&k.key_env).ok_or_else(|| {
                anyhow::anyhow!(
                    "set the environment variable {} to the DKIM private key of selector `{}`",
                    k.key_env,
                    k.selector
                )
            })?;
            let signer = DkimSigner::new(&k.domain, &k.selector, k.algorithm, &text)
                .with_context(|| format!("[channels.email] dkim selector `{}`", k.selector))?;
            Ok(Arc::new(signer))
        })
        .collect()
}

fn required_env(
    secrets: Secrets,
    var: &Option<String>,
    key: &str,
    what: &str,
) -> anyhow::Result<String> {
    let var = var.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "set `{key}` in herald.toml to the environment variable that holds the {what}"
        )
    })?;
    secrets(var).ok_or_else(|| anyhow::anyhow!("set the environment variable {var} to the {what}"))
}

/// This process's `[dispatch] workers` dispatchers, named `{owner}/{i}`,
/// with the campaigns' gate and fallback and `[dispatch]`'s batch and lease,
/// and the hand-off they take batches from (the planner hands to it, under
/// `owner`): what `herald run` and `herald send` both run. `lanes`: only
/// these routes get workers (`herald send` of one campaign: its channels);
/// `None`: every route (the daemon).
pub fn workers(
    config: &Arc<ConfigSet>,
    store: &Arc<SqlStore>,
    clock: &Arc<dyn Clock>,
    routes: &HashMap<Channel, Route>,
    owner: &str,
    lanes: Option<&[Channel]>,
) -> (Arc<Handoff>, Vec<Dispatcher>) {
    let d = &config.herald.dispatch;
    let batch = d.batch.max(1);
    let lease = Duration::from_secs(d.lease.secs().max(1) as u64);
    let handoff = Arc::new(
        Handoff::new(owner.to_string(), batch as usize, lease)
            .with_delivered_on_accept(delivered_on_accept(routes))
            .with_channels(handed_channels(routes, batch)),
    );
    let gate = CampaignGate::for_config(store.clone(), config.clone());
    let fallback = CampaignFallback::for_config(store.clone(), config.clone());
    // A lane per route: its own workers, claiming only its messages, so a
    // throttled or blocked route never holds another's.
    // A lane with nothing to send is not free: each of its workers asks the
    // database how much of the run is left every poll (a count over the
    // run's messages), which made a `herald send` of an email campaign
    // spend most of its CPU on its SMS and push lanes.
    let mut lanes: Vec<Channel> = routes
        .keys()
        .copied()
        .filter(|c| lanes.is_none_or(|l| l.contains(c)))
        .collect();
    lanes.sort_by_key(|c| c.as_str());
    let per_lane = d.workers.max(1);
    let dispatchers = lanes
        .into_iter()
        .flat_map(|lane| (0..per_lane).map(move |i| (lane, i)))
        .map(|(lane, i)| {
            let mut w = Dispatcher::new(
                store.clone(),
                clock.clone(),
                routes.clone(),
                format!("{owner}/{lane}/{i}"),
            )
            .with_handoff(handoff.clone())
            .with_lane(lane, per_lane);
            w.batch = batch;
            w.lease = lease;
            w.blocked_wait = Some(Duration::from_millis(d.blocked_wait.millis().max(0) as u64));
            if let Some(g) = &gate {
                w = w.with_gate(g.clone());
            }
            if let Some(f) = &fallback {
                w = w.with_fallback(f.clone());
            }
            w
        })
        .collect();
    (handoff, dispatchers)
}

/// The routes whose messages the planner may hand straight to a worker: those
/// whose horizon is a whole batch (unlimited, or fast enough to send a batch
/// within about a second). A slower route's pages are written `planned` and
/// claimed by its lane at its pace, so no worker holds a batch it cannot
/// send soon.
pub fn handed_channels(routes: &HashMap<Channel, Route>, batch: u32) -> Vec<Channel> {
    routes
        .iter()
        .filter(|(_, r)| {
            herald_engine::dispatch::claim_horizon(r.pacer.current_rate(), r.width, 1, batch)
                >= batch
        })
        .map(|(c, _)| *c)
        .collect()
}

/// The channels whose adapter counts acceptance as delivery: the planner
/// writes the messages it hands to them `delivered` before the send.
pub fn delivered_on_accept(routes: &HashMap<Channel, Route>) -> Vec<Channel> {
    routes
        .iter()
        .filter(|(_, r)| r.adapter.delivered_on_accept())
        .map(|(c, _)| *c)
        .collect()
}

/// The adapters, rate limits and concurrency of every channel.
pub fn routes(
    config: &ConfigSet,
    store: &Arc<SqlStore>,
    secrets: Secrets,
) -> anyhow::Result<HashMap<Channel, Route>> {
    let ch = &config.herald.channels;
    // Outbox writes are group-committed: concurrent sends share INSERTs.
    let outbox: Arc<dyn herald_channels::Channel> = Arc::new(OutboxChannel::new(Arc::new(
        herald_storage::outbox::BatchedOutbox::start(store.db().clone()),
    )));
    let email: Arc<dyn herald_channels::Channel> = match ch.email.provider {
        EmailProvider::Outbox => outbox.clone(),
        EmailProvider::Smtp => {
            let user = secret_from_env(secrets, &ch.email.username_env, "SMTP user name")?;
            let password = secret_from_env(secrets, &ch.email.password_env, "SMTP password")?;
            let mut s =
                SmtpSettings::new(ch.email.host.clone(), ch.email.port, ch.email.from.clone());
            s.tls = match ch.email.tls {
                config::TlsMode::None => TlsMode::None,
                config::TlsMode::Starttls => TlsMode::StartTls,
                config::TlsMode::Tls => TlsMode::Tls,
            };
            s.credentials = user.zip(password);
            s.allow_plaintext_auth = ch.email.allow_plaintext_auth;
            s.dkim = dkim_signers(secrets, &ch.email)?;
            s.relay = ch.email.effective_relay();
            s.ses_configuration_set = ch.email.ses_configuration_set.clone();
            s.pool_size = ch.email.concurrency.max(1);
            s.timeout = Duration::from_secs(30);
            Arc::new(SmtpChannel::new(s).context("the [channels.email] settings are unusable")?)
        }
    };
    let mut routes = HashMap::new();
    let batch = config.herald.dispatch.batch.max(1) as usize;
    let mut add = |c: Channel,
                   adapter: Arc<dyn herald_channels::Channel>,
                   rate: Option<RateSpec>,
                   concurrency: usize,
                   outbox: bool| {
        let width = outbox_width(outbox, rate.is_some(), concurrency, batch);
        routes.insert(c, Route::new(adapter, pacer(rate), width));
    };
    add(
        Channel::Email,
        email,
        ch.email.rate,
        ch.email.concurrency,
        ch.email.provider == EmailProvider::Outbox,
    );
    let sms: Arc<dyn herald_channels::Channel> = match ch.sms.provider {
        SmsProvider::Outbox => outbox.clone(),
        SmsProvider::Twilio => {
            let sid = required_env(
                secrets,
                &ch.sms.account_sid_env,
                "[channels.sms] account_sid_env",
                "Twilio account SID",
            )?;
            let token = required_env(
                secrets,
                &ch.sms.auth_token_env,
                "[channels.sms] auth_token_env",
                "Twilio auth token",
            )?;
            let from = TwilioSender::parse(&ch.sms.from).context("[channels.sms] from")?;
            let mut s = TwilioSettings::new(sid, token, from);
            s.base_url = ch.sms.base_url.clone();
            s.max_idle_connections = ch.sms.concurrency.max(1);
            Arc::new(TwilioChannel::new(s).context("the [channels.sms] settings are unusable")?)
        }
    };
    let push: Arc<dyn herald_channels::Channel> = match ch.push.provider {
        PushProvider::Outbox => outbox,
        PushProvider::Fcm => {
            let raw = required_env(
                secrets,
                &ch.push.credentials_env,
                "[channels.push] credentials_env",
                "FCM service-account key (JSON, or a path to it)",
            )?;
            let key =
                ServiceAccountKey::from_env_value(&raw).context("the FCM service-account key")?;
            let mut s = FcmSettings::new(ch.push.project_id.clone(), key);
            s.base_url = ch.push.base_url.clone();
            s.max_idle_connections = ch.push.concurrency.max(1);
            Arc::new(FcmChannel::new(s).context("the [channels.push] settings are unusable")?)
        }
    };
    add(
        Channel::Sms,
        sms,
        ch.sms.rate,
        ch.sms.concurrency,
        ch.sms.provider == SmsProvider::Outbox,
    );
    add(
        Channel::Push,
        push,
        ch.push.rate,
        ch.push.concurrency,
        ch.push.provider == PushProvider::Outbox,
    );
    Ok(routes)
}

/// How many sends a route has in flight. `concurrency` is a provider's
/// (connections, requests); the outbox is herald's own database, where
/// the sends in flight together are written by one INSERT (group commit):
/// an unlimited outbox route sends a worker's whole batch at once, since
/// 8 in flight made INSERTs of a few rows (and as many distinct statements
/// for SQLite's statement cache). A rate-limited one keeps its
/// `concurrency`, which bounds what a crash leaves `unknown` with its rate.
pub fn outbox_width(outbox: bool, limited: bool, concurrency: usize, batch: usize) -> usize {
    if outbox && !limited {
        concurrency.max(batch)
    } else {
        concurrency
    }
}
