//! The web console on the admin listener (`[console]`): sign-in with a
//! password from the environment, then pages over the same storage queries
//! the CLI uses. Server-rendered HTML that works with JavaScript off; the
//! stylesheet ships in the binary.
//!
//! Every route but the sign-in page and the stylesheet passes
//! [`require_session`]: signed out, a page redirects to sign-in and an
//! action is refused (403); every POST must carry the CSRF token of the
//! session (or, for sign-in, of the pre-session cookie).

pub mod auth;
mod chart;
mod contact;
pub mod figures;
pub mod html;
mod pages;
pub mod report;
mod segments;
mod why;

pub use pages::CampaignEntry;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::AppState;
use auth::{Limiter, Session, SessionKey};
use html::{esc, page};

/// The session cookie.
pub const SESSION_COOKIE: &str = "herald_session";
/// The sign-in form's pre-session cookie (its CSRF anchor).
pub const PRE_COOKIE: &str = "herald_pre";
/// The largest form body the console reads.
const MAX_FORM: usize = 16 * 1024;

/// The console's settings (`[console]` and the tracking secret).
#[derive(Clone)]
pub struct ConsoleSettings {
    /// The sign-in password; `None` lets nobody in.
    pub password: Option<String>,
    /// Signs session cookies and CSRF tokens.
    pub key: SessionKey,
    /// Times are shown in this zone.
    pub timezone: chrono_tz::Tz,
    /// Mark the session cookie `Secure` (the console's URL is https).
    pub secure_cookie: bool,
    /// Where to say the password comes from when it is not set.
    pub password_env: String,
    /// The configured campaigns with what `herald check` says of each.
    pub campaigns: std::sync::Arc<Vec<CampaignEntry>>,
    /// `herald check`'s problems that belong to no one campaign.
    pub problems: std::sync::Arc<Vec<String>>,
    /// Each channel's configured rate (messages per second; `None`: unlimited).
    pub rates: Vec<(String, Option<u32>)>,
    /// The whole config (segments, `[rfm]`, `[lifecycle]`, `[contacts.attrs]`,
    /// the campaigns' rules): the segments page and a contact's "why nothing"
    /// read it; `None` shows neither.
    pub config: Option<std::sync::Arc<herald_domain::config::ConfigSet>>,
    /// Run the refresh job of the stored figures ([`figures::refresher`])
    /// this often while the admin listener serves; `None` runs none (the
    /// pages then count live once and read what they stored).
    pub refresh_every: Option<std::time::Duration>,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("timezone", &self.timezone)
            .field("secure_cookie", &self.secure_cookie)
            .finish_non_exhaustive()
    }
}

impl ConsoleSettings {
    /// Settings with the key derived from the tracking `secret`, times in UTC.
    pub fn new(secret: &[u8], password: Option<String>) -> Self {
        Self {
            password: password.filter(|p| !p.is_empty()),
            key: SessionKey::derive(secret),
            timezone: chrono_tz::Tz::UTC,
            secure_cookie: false,
            password_env: "HERALD_CONSOLE_PASSWORD".into(),
            campaigns: std::sync::Arc::default(),
            problems: std::sync::Arc::default(),
            rates: Vec::new(),
            config: None,
            refresh_every: None,
        }
    }
}

/// What the console keeps between requests.
#[derive(Debug, Default)]
pub(crate) struct ConsoleMemory {
    limiter: Mutex<Limiter>,
    /// Sessions signed out before they expired: nonce -> expiry.
    revoked: Mutex<HashMap<[u8; 16], i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The signed-in session of a request, put there by [`require_session`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signed(pub Session);

fn settings(st: &AppState) -> Option<&ConsoleSettings> {
    st.inner.config.console.as_ref()
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session of `headers`, if its cookie is good and not signed out.
fn session_of(st: &AppState, headers: &HeaderMap) -> Option<Session> {
    let s = settings(st)?;
    let now = crate::now_ms();
    let session = s.key.open_session(cookie(headers, SESSION_COOKIE)?, now)?;
    let revoked = lock(&st.inner.console.revoked);
    (!revoked.contains_key(&session.nonce)).then_some(session)
}

fn set_cookie(s: &ConsoleSettings, name: &str, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if s.secure_cookie { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An HTML answer with the console's headers: never cached, never framed,
/// nothing loaded from elsewhere.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A redirect (303, so a POST is followed by a GET).
pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r.headers_mut());
    r
}

/// A refusal page.
pub(crate) fn refused(status: StatusCode, why: &str) -> Response {
    html(
        status,
        page(
            "Refused",
            None,
            &format!(
                "<p class=\"error\">{}</p><p><a href=\"/console/sign-in\">Sign in</a></p>",
                esc(why)
            ),
        ),
    )
}

/// A form body's fields.
pub(crate) type Form = Vec<(String, String)>;

/// The field `name` of `form`.
pub(crate) fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a form body (at most [`MAX_FORM`] bytes).
async fn read_form(body: Body) -> Option<Form> {
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.ok()?;
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// Lets signed-in requests through; a POST also needs its CSRF token, and
/// reaches the handler with the form parsed (as an extension).
async fn require_session(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(session) = session_of(&st, req.headers()) else {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return see_other("/console/sign-in");
        }
        return refused(
            StatusCode::FORBIDDEN,
            "You are signed out: sign in, then try again.",
        );
    };
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(Signed(session));
    if parts.method == Method::POST {
        let Some(form) = read_form(body).await else {
            return refused(StatusCode::BAD_REQUEST, "That form could not be read.");
        };
        let key = &settings(&st).expect("a session implies settings").key;
        if !field(&form, "csrf").is_some_and(|t| key.csrf_ok(&session.nonce, t)) {
            return refused(
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from the console: open the page again and repeat.",
            );
        }
        parts.extensions.insert(form);
        return next.run(Request::from_parts(parts, Body::empty())).await;
    }
    next.run(Request::from_parts(parts, body)).await
}

fn random_nonce() -> [u8; 16] {
    use ring::rand::SecureRandom as _;
    let mut n = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .expect("the system random source works");
    n
}

fn client_ip(req_ext: &axum::http::Extensions) -> IpAddr {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn sign_in_page(s: &ConsoleSettings, csrf: &str, message: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)));
    }
    if s.password.is_none() {
        body.push_str(&format!(
            "<p class=\"error\">Nobody can sign in: set the password in the environment variable <code>{}</code> ([console] password_env) and restart herald.</p>",
            esc(&s.password_env)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/console/sign-in\">{}<label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus> \
         <button type=\"submit\">Sign in</button></form>",
        html::csrf_field(csrf)
    ));
    page("Sign in", None, &body)
}

/// `GET /console/sign-in`: the form, with a fresh pre-session cookie.
async fn sign_in_form(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    if session_of(&st, &headers).is_some() {
        return see_other("/console/");
    }
    let nonce = random_nonce();
    let mut r = html(StatusCode::OK, sign_in_page(s, &s.key.csrf(&nonce), None));
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(s, PRE_COOKIE, &auth::pre_value(&nonce), 3600),
    );
    r
}

/// `POST /console/sign-in`.
async fn sign_in(State(st): State<AppState>, req: Request) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    let ip = client_ip(req.extensions());
    let (parts, body) = req.into_parts();
    let Some(pre) = cookie(&parts.headers, PRE_COOKIE).and_then(auth::pre_nonce) else {
        return refused(
            StatusCode::FORBIDDEN,
            "The sign-in form is out of date (or cookies are off): open the sign-in page again.",
        );
    };
    let Some(form) = read_form(body).await else {
        return refused(StatusCode::BAD_REQUEST, "That form could not be read.");
    };
    if !field(&form, "csrf").is_some_and(|t| s.key.csrf_ok(&pre, t)) {
        return refused(
            StatusCode::FORBIDDEN,
            "The sign-in form is out of date: open the sign-in page again.",
        );
    }
    let now = crate::now_ms();
    let wait = lock(&st.inner.console.limiter).wait_ms(ip, now);
    if wait > 0 {
        let secs = (wait + 999) / 1000;
        let mut r = html(
            StatusCode::TOO_MANY_REQUESTS,
            sign_in_page(
                s,
                &s.key.csrf(&pre),
                Some(&format!(
                    "Too many wrong passwords from your address: wait {secs} s before trying again."
                )),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let given = field(&form, "password").unwrap_or("");
    let good = s
        .password
        .as_deref()
        .is_some_and(|p| auth::password_ok(given, p));
    if !good {
        lock(&st.inner.console.limiter).failed(ip, now);
        tracing::warn!(client = %ip, "a console sign-in failed");
        return html(
            StatusCode::UNAUTHORIZED,
            sign_in_page(s, &s.key.csrf(&pre), Some("Wrong password.")),
        );
    }
    lock(&st.inner.console.limiter).succeeded(ip);
    let expires = now + auth::SESSION_MS;
    let value = s.key.session_cookie(random_nonce(), expires);
    let mut r = see_other("/console/");
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(s, SESSION_COOKIE, &value, auth::SESSION_MS / 1000),
    );
    h.append(header::SET_COOKIE, set_cookie(s, PRE_COOKIE, "", 0));
    r
}

/// `POST /console/sign-out`: the session stops working, here and in any copy of its cookie.
async fn sign_out(State(st): State<AppState>, req: Request) -> Response {
    let Some(s) = settings(&st) else {
        return crate::not_found();
    };
    if let Some(Signed(session)) = req.extensions().get::<Signed>().copied() {
        let now = crate::now_ms();
        let mut revoked = lock(&st.inner.console.revoked);
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(session.nonce, session.expires);
    }
    let mut r = see_other("/console/sign-in");
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(s, SESSION_COOKIE, "", 0));
    r
}

async fn style() -> Response {
    let mut r = html::STYLE.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    r
}

/// The CSRF token for forms on a page of `session`.
pub(crate) fn csrf_of(st: &AppState, session: &Session) -> String {
    settings(st).map_or_else(String::new, |s| s.key.csrf(&session.nonce))
}

/// The console's routes, for the admin app; none when `[console]` is off.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    if state.inner.config.console.is_none() {
        return Router::new();
    }
    let guarded = Router::new()
        .route("/console/", get(pages::campaigns))
        .route("/console/status", get(pages::status_page))
        .route("/console/runs/{id}", get(pages::run_page))
        .route(
            "/console/runs/{id}/{action}",
            get(pages::confirm).post(pages::act),
        )
        .route("/console/campaigns/{name}/report", get(report::report_page))
        .route(
            "/console/campaigns/{name}/report.json",
            get(report::report_json),
        )
        .route(
            "/console/campaigns/{name}/report.csv",
            get(report::report_csv),
        )
        .route("/console/segments", get(segments::segments_page))
        .route("/console/segments/{name}", get(segments::segment_page))
        .route("/console/contacts", get(contact::lookup))
        .route("/console/contacts/{id}", get(contact::contact_page))
        .route(
            "/console/contacts/{id}/export.json",
            get(contact::export_json),
        )
        .route(
            "/console/contacts/{id}/forget",
            get(contact::confirm_forget).post(contact::forget),
        )
        .route("/console/sign-out", post(sign_out))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/console/sign-in", get(sign_in_form).post(sign_in))
        .route(html::STYLE_PATH, get(style))
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/", get(|| async { see_other("/console/") }))
        .merge(guarded)
}
