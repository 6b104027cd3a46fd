//! herald's tracking server (SPEC section 4): opens, clicks, unsubscribes,
//! Twilio and email-provider webhooks, app events with conversion
//! attribution, `/healthz` and `/metrics`, plus an SMTP bounce receiver.
//!
//! Start at [`run`] (or [`serve`] with listeners you bound) and [`AppState`];
//! [`router`] is the axum app. Opens and clicks go through the batched
//! writer in `writer`; everything else is written before it is answered.

pub mod console;
mod dsn;
mod email;
mod events;
mod listen;
mod metrics;
mod signature;
mod sms;
mod smtp;
mod sns;
mod state;
mod track;
mod twilio;
mod writer;

use std::future::Future;
use std::io;

use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_domain::config::Campaign;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use console::ConsoleSettings;
pub use dsn::{MailReport, read_report};
pub use email::{TOKEN_FIELD, TOKEN_HEADER, token_from_verp};
pub use events::{MAX_BODY, MAX_EVENTS, event_row};
pub use herald_storage::tracking::GoalSpec;
pub use listen::{
    BodyTimeout, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, FD_RESERVE, HttpLimits, effective_cap, fd_limit, raise_fd_limit,
};
pub use signature::{
    BadSendgridKey, MAX_WEBHOOK_BODY, SENDGRID_MAX_SKEW_SECS, SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER, sendgrid_key, verify_sendgrid,
};
pub use sms::{Intent, intent, normalise};
pub use sns::{CertFetcher, SnsError, SnsSettings, is_sns_host};
pub use state::{
    AppState, DEFAULT_HELP_REPLY, DEFAULT_MACHINE_OPEN_WINDOW, DEFAULT_SMTP_COMMAND_TIMEOUT,
    DEFAULT_SMTP_MAX_IDLE_COMMANDS, DEFAULT_SMTP_MAX_SESSIONS, DEFAULT_SMTP_SESSION_TIMEOUT,
    ExtraMetrics, HELP_KEYWORDS, OPT_IN_KEYWORDS, ReportError, ReportSource,
    STANDARD_OPT_OUT_KEYWORDS, ServerConfig, SmtpSettings,
};
pub use track::{PIXEL_GIF, machine_agent, open_pixel_tag, open_pixel_url};
pub use twilio::{SIGNATURE_HEADER, twilio_signature, verify_twilio_signature};
pub use writer::{WriterClosed, WriterSettings};

use metrics::Kind;

/// The current instant in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.to_string(),
    )
        .into_response()
}

/// The answer to anything unknown, forged or gone: the same for all, so it tells nothing.
pub(crate) fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found")
}

/// A 500 that logs the cause and shows none of it.
pub(crate) fn internal_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The goals of `campaigns` for attribution: each goal, and each secondary
/// goal over the goal's window (a campaign without a goal has no window, so
/// its secondary goals are not counted); a series' window spans its steps.
pub fn goal_specs<'a>(campaigns: impl IntoIterator<Item = &'a Campaign>) -> Vec<GoalSpec> {
    let mut out = Vec::new();
    for c in campaigns {
        let (Some(goal), Some(within_ms)) = (&c.goal, c.goal_window_ms()) else {
            continue;
        };
        out.push(GoalSpec {
            campaign_name: c.name.clone(),
            event: goal.event.clone(),
            within_ms,
            secondary: false,
        });
        for s in &c.secondary_goals {
            out.push(GoalSpec {
                campaign_name: c.name.clone(),
                event: s.clone(),
                within_ms,
                secondary: true,
            });
        }
    }
    out
}

fn kind_of(path: &str, method: &axum::http::Method) -> Kind {
    match path {
        "/o/{token}" => Kind::Open,
        "/c/{token}" => Kind::Click,
        "/s/{code}" => Kind::ShortLink,
        "/u/{token}" if method == axum::http::Method::POST => Kind::Unsubscribe,
        "/u/{token}" => Kind::UnsubscribePage,
        "/webhooks/twilio/status" => Kind::TwilioStatus,
        "/webhooks/twilio/inbound" => Kind::TwilioInbound,
        "/webhooks/email/{provider}" => Kind::EmailWebhook,
        "/events" => Kind::Events,
        "/api/campaigns/{name}/report" => Kind::Report,
        "/healthz" => Kind::Health,
        "/metrics" => Kind::Metrics,
        _ => Kind::Other,
    }
}

/// Counts every request by kind and answered status.
async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let kind = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(Kind::Other, |p| kind_of(p.as_str(), req.method()));
    let resp = next.run(req).await;
    st.inner.metrics.count(kind, resp.status().as_u16());
    resp
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok")
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    let m = &st.inner.metrics;
    let ttl = st.inner.config.gauge_ttl;
    let gauges = match m.cached_gauges(ttl).await {
        Some(g) => Some(g),
        None => match herald_storage::tracking::message_gauges(&st.inner.db, now_ms()).await {
            Ok(g) => {
                m.store_gauges(g.clone()).await;
                Some(g)
            }
            Err(e) => {
                // Counters still help when the database does not answer.
                tracing::warn!(error = %e, "counting messages for /metrics failed");
                None
            }
        },
    };
    let text = metrics::render(m.clone(), gauges, st.inner.extra_metrics.clone());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn campaign_report(
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(source) = &st.inner.report else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            axum::Json(serde_json::json!({
                "error": "the report API is not built into this server yet; use `herald report CAMPAIGN --format json`"
            })),
        )
            .into_response();
    };
    let query: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match source.report(&name, &query).await {
        Ok(Some(v)) => (StatusCode::OK, axum::Json(v)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no campaign named `{name}`") })),
        )
            .into_response(),
        Err(ReportError::BadRequest(m)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": m })),
        )
            .into_response(),
        Err(ReportError::Failed(m)) => internal_error(m),
    }
}

/// The answer to every report API request without the right token: the
/// same for a known and an unknown campaign, so names cannot be probed.
fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({ "error": "unauthorised" })),
    )
        .into_response()
}

/// Refuses API requests without `Authorization: Bearer <[tracking] api_token_env>`.
async fn require_api_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.inner.config.api_token.as_deref() {
        Some(expected) if events::authorised(req.headers(), expected) => next.run(req).await,
        _ => unauthorised(),
    }
}

/// The report API (and any later admin endpoint), behind its bearer token.
fn api_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/api/campaigns/{name}/report", get(campaign_report))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_token,
        ))
}

/// The tracking server's axum app over `state`: what recipients and
/// providers need, and the report API unless it has its own listener.
pub fn router(state: AppState) -> Router {
    let with_api = state.inner.config.admin_listen.is_none();
    public_router(state, with_api)
}

/// The public app, with or without the report API.
fn public_router(state: AppState, with_api: bool) -> Router {
    let mut app = Router::new()
        .route("/o/{token}", get(track::open))
        .route("/c/{token}", get(track::click))
        .route("/s/{code}", get(track::short))
        .route(
            "/u/{token}",
            get(track::unsubscribe_page).post(track::unsubscribe),
        )
        .route("/webhooks/twilio/status", post(twilio::status))
        .route("/webhooks/twilio/inbound", post(twilio::inbound))
        .route(
            "/webhooks/email/{provider}",
            // Signatures are checked in a layer of their own, before any event is read.
            post(email::webhook).route_layer(middleware::from_fn_with_state(
                state.clone(),
                signature::require_signature,
            )),
        )
        .route("/events", post(events::post))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text));
    if with_api {
        app = app.merge(api_routes(&state));
    }
    app.fallback(|| async { not_found() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The admin app (`[tracking] admin_listen`): the report API, the console and `/healthz`.
pub fn admin_router(state: AppState) -> Router {
    api_routes(&state)
        .merge(console::routes(&state))
        .route("/healthz", get(healthz))
        .fallback(|| async { not_found() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Serves HTTP on `http` (and SMTP bounces on `smtp`, if given) until
/// `shutdown` completes; then drains requests in flight and writes every
/// open and click that was answered before returning. The report API is
/// served on `http` unless the state names an admin listener; see [`serve_all`].
pub async fn serve(
    http: TcpListener,
    smtp: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_all(http, None, smtp, state, shutdown).await
}

/// Like [`serve`], with the admin app (the report API) on `admin` when
/// given. With `admin_listen` set in the state and no `admin` listener the
/// API is served nowhere.
pub async fn serve_all(
    http: TcpListener,
    admin: Option<TcpListener>,
    smtp: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = state.config().http.clone();
    serve_limited(http, admin, smtp, state, limits, shutdown).await
}

async fn serve_limited(
    http: TcpListener,
    admin: Option<TcpListener>,
    smtp: Option<TcpListener>,
    state: AppState,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Nobody may be listening any more; that is fine.
        let _ = stop_tx.send(true);
    });
    let smtp_task = smtp.map(|l| tokio::spawn(smtp::serve_smtp(l, state.clone(), stop_rx.clone())));
    let admin_task = admin.map(|l| {
        tokio::spawn(listen::serve_http(
            l,
            admin_router(state.clone()),
            limits.clone(),
            stop_rx.clone(),
        ))
    });
    // The console's figures are refreshed where the console is served.
    let every = state
        .inner
        .config
        .console
        .as_ref()
        .and_then(|c| c.refresh_every)
        .filter(|_| admin_task.is_some());
    let refresher = every.map(|every| {
        let owner = format!(
            "{}-{}",
            std::process::id(),
            now_ms().rem_euclid(1_000_000_000)
        );
        tokio::spawn(console::figures::refresher(
            state.clone(),
            owner,
            every,
            stop_rx.clone(),
        ))
    });
    let served = listen::serve_http(http, router(state.clone()), limits, stop_rx.clone()).await;
    if let Some(r) = refresher {
        // It gives its lease up on the way out, so another process takes over at once.
        if let Err(e) = r.await {
            tracing::error!(error = %e, "the console's refresh job panicked");
        }
    }
    for (name, task) in [("SMTP receiver", smtp_task), ("admin listener", admin_task)] {
        if let Some(t) = task {
            match t.await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "the {name} panicked"),
            }
        }
    }
    if let Err(e) = state.flush().await {
        tracing::error!(error = %e, "opens and clicks may be unwritten at shutdown");
    }
    served
}

/// Serves HTTP on `listener` until `shutdown` completes, the admin app and
/// the SMTP bounce receiver on `state`'s configured addresses if it has them.
/// Raises the file-descriptor soft limit first and keeps the connection cap
/// under it.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let fds = match raise_fd_limit() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file-descriptor limit");
            fd_limit()
        }
    };
    let smtp_fds = state
        .config()
        .smtp
        .as_ref()
        .map_or(0, |s| s.max_sessions as u64);
    let configured = state.config().http.max_connections;
    // The public and the admin listener share what is left.
    let cap = effective_cap(configured, fds, FD_RESERVE + smtp_fds);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            fd_limit = fds,
            "the file-descriptor limit lowers [tracking] max_connections"
        );
    }
    let mut limits = state.config().http.clone();
    limits.max_connections = cap;
    let smtp = match &state.config().smtp {
        Some(s) => Some(TcpListener::bind(s.listen).await?),
        None => None,
    };
    let admin = match state.config().admin_listen {
        Some(a) => {
            let l = TcpListener::bind(a).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on [tracking] admin_listen = {a}: {e}; set another address there"),
                )
            })?;
            tracing::info!(addr = %l.local_addr()?, "the report API is served on the admin listener");
            Some(l)
        }
        None => None,
    };
    serve_limited(listener, admin, smtp, state, limits, shutdown).await
}
