//! Loading what every command needs: config, database, templates, the
//! tracking secret and the channel routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_channels::outbox::OutboxChannel;
use herald_channels::rate::{Limiter, RateLimit};
use herald_channels::smtp::{SmtpChannel, SmtpSettings, TlsMode};
use herald_domain::config::{self, ConfigSet, EmailProvider, RateSpec};
use herald_domain::token::TokenSigner;
use herald_domain::types::Channel;
use herald_engine::dispatch::Route;
use herald_storage::Db;
use herald_storage::store::SqlStore;
use herald_templates::TemplateSet;
use tokio::sync::Semaphore;

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
    Db::connect(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))
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

fn secret_from_env(var: &Option<String>, what: &str) -> anyhow::Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(v) => std::env::var(v)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("set the environment variable {v} to the {what}")),
    }
}

fn limiter(rate: Option<RateSpec>) -> Arc<Limiter> {
    Arc::new(Limiter::new(rate.map(|r| RateLimit {
        per_second: r.per_second.get(),
        burst: r.burst.map(|b| b.get()),
    })))
}

/// The adapters, rate limits and concurrency of every channel.
pub fn routes(
    config: &ConfigSet,
    store: &Arc<SqlStore>,
) -> anyhow::Result<HashMap<Channel, Route>> {
    let ch = &config.herald.channels;
    let outbox: Arc<dyn herald_channels::Channel> = Arc::new(OutboxChannel::new(store.clone()));
    let email: Arc<dyn herald_channels::Channel> = match ch.email.provider {
        EmailProvider::Outbox => outbox.clone(),
        EmailProvider::Smtp => {
            let user = secret_from_env(&ch.email.username_env, "SMTP user name")?;
            let password = secret_from_env(&ch.email.password_env, "SMTP password")?;
            let mut s =
                SmtpSettings::new(ch.email.host.clone(), ch.email.port, ch.email.from.clone());
            s.tls = match ch.email.tls {
                config::TlsMode::None => TlsMode::None,
                config::TlsMode::Starttls => TlsMode::StartTls,
                config::TlsMode::Tls => TlsMode::Tls,
            };
            s.credentials = user.zip(password);
            s.pool_size = ch.email.concurrency.max(1);
            s.timeout = Duration::from_secs(30);
            Arc::new(SmtpChannel::new(s).context("the [channels.email] settings are unusable")?)
        }
    };
    let mut routes = HashMap::new();
    let mut add =
        |c: Channel, adapter: Arc<dyn herald_channels::Channel>, rate, concurrency: usize| {
            routes.insert(
                c,
                Route {
                    adapter,
                    limiter: limiter(rate),
                    concurrency: Arc::new(Semaphore::new(concurrency.max(1))),
                },
            );
        };
    add(Channel::Email, email, ch.email.rate, ch.email.concurrency);
    add(
        Channel::Sms,
        outbox.clone(),
        ch.sms.rate,
        ch.sms.concurrency,
    );
    add(Channel::Push, outbox, ch.push.rate, ch.push.concurrency);
    Ok(routes)
}
