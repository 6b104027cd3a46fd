//! `herald serve`: the tracking server alone (opens, clicks, unsubscribes,
//! provider webhooks, `POST /events`, the SMTP bounce listener). SIGINT or
//! SIGTERM stops it after every answered open and click is written.

use std::net::SocketAddr;

use anyhow::Context;
use herald_server::{AppState, ServerConfig, SmtpSettings, goal_specs};

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

/// The tracking server's state for `config`: secrets from the environment,
/// goal specs of every campaign, the SMTP bounce listener if configured.
pub fn tracking_state(
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
            ..SmtpSettings::default()
        });
    }
    let report = crate::report::report_source(store.db().clone(), config.clone().into());
    Ok(AppState::with_hooks(
        store.db().clone(),
        signer,
        server,
        Some(report),
        extra_metrics,
    ))
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
    let state = tracking_state(&config, &store, signer, None)?;
    let listener = tracking_listener(&config).await?;
    println!(
        "tracking server on http://{} (links point to {})",
        listener.local_addr()?,
        config.herald.tracking.public_url
    );
    herald_server::run(listener, state, shutdown_signal()).await?;
    println!("stopped: every answered open and click is recorded");
    Ok(())
}
