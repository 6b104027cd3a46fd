//! `herald serve`: the tracking server alone (opens, clicks, unsubscribes,
//! provider webhooks, `POST /events`, the SMTP bounce listener). SIGINT or
//! SIGTERM stops it after every answered open and click is written.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use herald_server::{AppState, HttpLimits, ServerConfig, SmtpSettings, goal_specs};

use crate::{Cli, app};

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Fetches SNS signing certificates and subscription confirmations over https.
struct HttpsFetcher(reqwest::Client);

/// How long fetching an SNS certificate or confirming a subscription may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl HttpsFetcher {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("cannot build the HTTP client for SNS certificates")?,
        ))
    }
}

#[async_trait::async_trait]
impl herald_server::CertFetcher for HttpsFetcher {
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let r = self
            .0
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        Ok(r.bytes().await.map_err(|e| e.to_string())?.to_vec())
    }
}

/// A configured span as a timeout (a zero span would close everything at once: one second at least).
fn span(s: herald_domain::duration::Span) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(s.secs()).unwrap_or(0).max(1))
}

/// The tracking server's state for `config`: secrets from the environment,
/// goal specs of every campaign, the SMTP bounce listener if configured.
pub fn tracking_state(
    cli: &Cli,
    config: &herald_domain::config::ConfigSet,
    store: &herald_storage::store::SqlStore,
    signer: herald_domain::token::TokenSigner,
    extra_metrics: Option<herald_server::ExtraMetrics>,
) -> anyhow::Result<AppState> {
    let t = &config.herald.tracking;
    let mut server = ServerConfig::new(t.public_url.clone());
    server.events_token = std::env::var(&t.events_token_env).ok();
    if server.events_token.is_none() {
        eprintln!(
            "warning: {} is not set: POST /events answers 403 until it is",
            t.events_token_env
        );
    }
    server.api_token = std::env::var(&t.api_token_env)
        .ok()
        .filter(|v| !v.is_empty());
    if server.api_token.is_none() {
        eprintln!(
            "warning: {} is not set: the report API answers 401 until it is",
            t.api_token_env
        );
    }
    // The report API is never on the public listener (loopback by default).
    let admin = t.admin_address();
    server.admin_listen = Some(admin.parse().with_context(|| {
        format!("[tracking] admin_listen `{admin}` is not an address like 127.0.0.1:8081")
    })?);
    server.http = HttpLimits {
        header_timeout: span(t.header_timeout),
        idle_timeout: span(t.idle_timeout),
        body_timeout: span(t.body_timeout),
        max_connections: t.max_connections.max(1),
    };
    if let Some(var) = &t.sendgrid_verification_key_env {
        let key = std::env::var(var).with_context(|| {
            format!("[tracking] sendgrid_verification_key_env names {var}, which is not set")
        })?;
        server.sendgrid_key = Some(herald_server::sendgrid_key(&key).with_context(|| var.clone())?);
    }
    if !t.sns_topic_arns.is_empty() {
        server.sns = Some(herald_server::SnsSettings {
            topic_arns: t.sns_topic_arns.clone(),
            fetcher: Arc::new(HttpsFetcher::new()?),
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    }
    server.twilio_auth_token = config
        .herald
        .channels
        .sms
        .auth_token_env
        .as_ref()
        .and_then(|v| std::env::var(v).ok());
    server.opt_out_keywords = config.herald.defaults.opt_out_keywords.clone();
    server.goals = goal_specs(config.campaigns.values());
    if let Some(listen) = &t.smtp_listen {
        let addr: SocketAddr = listen.parse().with_context(|| {
            format!("[tracking] smtp_listen `{listen}` is not an address like 127.0.0.1:2525")
        })?;
        server.smtp = Some(SmtpSettings {
            listen: addr,
            bounce_domain: config.herald.channels.email.bounce_domain.clone(),
            idle_timeout: span(t.smtp_command_timeout),
            session_timeout: span(t.smtp_session_timeout),
            max_sessions: t.smtp_max_sessions.max(1),
            max_idle_commands: t.smtp_max_idle_commands,
            ..SmtpSettings::default()
        });
    }
    server.console = Some(console_settings(cli, config));
    let report = crate::report::report_source(store.db().clone(), config.clone().into());
    Ok(AppState::with_hooks(
        store.db().clone(),
        signer,
        server,
        Some(report),
        extra_metrics,
    ))
}

/// `[console]`: the password from its variable, the session key from the tracking secret.
fn console_settings(
    cli: &Cli,
    config: &herald_domain::config::ConfigSet,
) -> herald_server::ConsoleSettings {
    let c = &config.herald.console;
    let var = &config.herald.tracking.secret_env;
    // `app::signer` has already refused a missing or short secret.
    let secret = std::env::var(var).unwrap_or_default();
    let password = std::env::var(&c.password_env)
        .ok()
        .filter(|p| !p.is_empty());
    if password.is_none() {
        eprintln!(
            "warning: {} is not set: nobody can sign in to the console until it is",
            c.password_env
        );
    }
    let mut s = herald_server::ConsoleSettings::new(secret.as_bytes(), password);
    s.timezone = c.timezone.0;
    // The pages read stored figures; this process keeps them fresh (one
    // process at a time on a shared database, by a lease).
    s.refresh_every = Some(herald_server::console::figures::REFRESH_EVERY);
    s.password_env = c.password_env.clone();
    s.secure_cookie = c
        .url
        .as_deref()
        .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("https://"));
    // What `herald check` says, once at start (the config is read once too).
    let (mut by_campaign, general) = crate::check::console_problems(cli, config);
    s.campaigns = Arc::new(
        config
            .campaigns
            .values()
            .map(|c| herald_server::console::CampaignEntry {
                campaign: c.clone(),
                problems: by_campaign.remove(&c.name).unwrap_or_default(),
            })
            .collect(),
    );
    s.problems = Arc::new(general);
    s.config = Some(Arc::new(config.clone()));
    let ch = &config.herald.channels;
    s.rates = vec![
        ("email".into(), ch.email.rate.map(|r| r.per_second.get())),
        ("push".into(), ch.push.rate.map(|r| r.per_second.get())),
        ("sms".into(), ch.sms.rate.map(|r| r.per_second.get())),
    ];
    s
}

/// Binds `[tracking] listen`.
pub async fn tracking_listener(
    config: &herald_domain::config::ConfigSet,
) -> anyhow::Result<tokio::net::TcpListener> {
    let t = &config.herald.tracking;
    tokio::net::TcpListener::bind(&t.listen)
        .await
        .with_context(|| format!("cannot listen on [tracking] listen = {}", t.listen))
}

/// Runs `herald serve`.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = app::load_config(cli)?;
    let store = app::store(cli, &config).await?;
    let signer = app::signer(&config)?;
    let state = tracking_state(cli, &config, &store, signer, None)?;
    let listener = tracking_listener(&config).await?;
    println!(
        "tracking server on http://{} (links point to {})",
        listener.local_addr()?,
        config.herald.tracking.public_url
    );
    let admin = config.herald.tracking.admin_address();
    if !admin.ends_with(":0") {
        println!(
            "report API on http://{admin} (bearer token: ${})",
            config.herald.tracking.api_token_env
        );
        println!(
            "console on http://{admin}/console/ (password: ${})",
            config.herald.console.password_env
        );
    }
    herald_server::run(listener, state, shutdown_signal()).await?;
    println!("stopped: every answered open and click is recorded");
    Ok(())
}
