//! The console's security over loopback HTTP: nothing but the sign-in page
//! is reachable signed out; every action needs its session's CSRF token; a
//! cookie signed under another secret is nobody's; wrong passwords are
//! slowed down; names from the database are escaped.

use herald_server::ConsoleSettings;
use herald_server::console::{PRE_COOKIE, SESSION_COOKIE};
use herald_tests::Backend;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};

use crate::common::*;

pub const PASSWORD: &str = "console-password-0123";

/// Every page (GET) of the console.
pub const PAGES: [&str; 1] = ["/console/"];
/// Every action (POST) of the console.
pub const ACTIONS: [&str; 1] = ["/console/sign-out"];

/// A server with the console on its admin listener, or `None` when PostgreSQL is skipped.
pub async fn start(backend: Backend) -> Option<App> {
    start_with_secret(backend, SECRET).await
}

async fn start_with_secret(backend: Backend, secret: &'static [u8]) -> Option<App> {
    App::start_full(
        backend,
        move |c| {
            c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            c.console = Some(ConsoleSettings::new(secret, Some(PASSWORD.into())));
        },
        None,
    )
    .await
}

/// The value of cookie `name` set by `r`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k == name).then(|| val.to_string())
        })
}

/// The `value` of the hidden `csrf` field in `html`.
pub fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// A signed-in browser, by hand: its cookie header and a CSRF token.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

/// The admin URL of `path`.
pub fn admin(app: &App, path: &str) -> String {
    format!("{}{path}", app.admin.as_ref().expect("admin listener"))
}

/// Opens the sign-in page and posts `password`; the response and the pre-session cookie.
async fn try_sign_in(app: &App, password: &str) -> reqwest::Response {
    let r = app
        .client
        .get(admin(app, "/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let pre = set_cookie(&r, PRE_COOKIE).expect("a pre-session cookie");
    let csrf = csrf_in(&r.text().await.unwrap());
    app.client
        .post(admin(app, "/console/sign-in"))
        .header(COOKIE, format!("{PRE_COOKIE}={pre}"))
        .form(&[("csrf", csrf.as_str()), ("password", password)])
        .send()
        .await
        .unwrap()
}

/// Signs in with the right password.
pub async fn sign_in(app: &App) -> Browser {
    let r = try_sign_in(app, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let raw = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with(SESSION_COOKIE))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/console"] {
        assert!(raw.contains(attr), "{raw} lacks {attr}");
    }
    assert!(!raw.contains("Secure"), "plain http: no Secure flag");
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        set_cookie(&r, SESSION_COOKIE).unwrap()
    );
    let page = get(app, "/console/", Some(&cookie)).await;
    assert_eq!(page.0, StatusCode::OK);
    Browser {
        cookie,
        csrf: csrf_in(&page.1),
    }
}

/// Status and body (or Location, for a redirect) of `GET path`.
pub async fn get(app: &App, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = app.client.get(admin(app, path));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    if status.is_redirection() {
        let to = r.headers()[LOCATION].to_str().unwrap().to_string();
        return (status, to);
    }
    (status, r.text().await.unwrap())
}

/// Status and body (or Location) of `POST path` with `form`.
pub async fn post(
    app: &App,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = app.client.post(admin(app, path)).form(form);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    if status.is_redirection() {
        let to = r.headers()[LOCATION].to_str().unwrap().to_string();
        return (status, to);
    }
    (status, r.text().await.unwrap())
}

async fn signed_out_everything_is_refused(app: &App) {
    for p in PAGES {
        assert_eq!(
            get(app, p, None).await,
            (StatusCode::SEE_OTHER, "/console/sign-in".into()),
            "{p}"
        );
    }
    for a in ACTIONS {
        assert_eq!(post(app, a, None, &[]).await.0, StatusCode::FORBIDDEN, "{a}");
    }
    // Nor with a session cookie that is not one.
    for bad in ["herald_session=", "herald_session=abc.def", "other=1"] {
        for p in PAGES {
            assert_eq!(get(app, p, Some(bad)).await.0, StatusCode::SEE_OTHER, "{p} {bad}");
        }
    }
    // The console is not on the public listener at all.
    let r = app.client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.int("SELECT COUNT(*) FROM runs WHERE state = 'running'").await, Some(2));
}

async fn an_action_without_its_csrf_token_is_refused(app: &App) {
    let b = sign_in(app).await;
    let other = sign_in(app).await;
    for a in ACTIONS {
        for form in [
            vec![],
            vec![("csrf", "")],
            vec![("csrf", "bm90LWEtdG9rZW4")],
            // Another session's token is not this one's.
            vec![("csrf", other.csrf.as_str())],
        ] {
            assert_eq!(
                post(app, a, Some(&b.cookie), &form).await.0,
                StatusCode::FORBIDDEN,
                "{a} {form:?}"
            );
        }
    }
    // Nothing happened: still signed in, runs untouched.
    assert_eq!(get(app, "/console/", Some(&b.cookie)).await.0, StatusCode::OK);
    assert_eq!(app.int("SELECT COUNT(*) FROM runs WHERE state = 'running'").await, Some(2));
}

async fn sign_out_ends_the_session(app: &App) {
    let b = sign_in(app).await;
    let r = post(app, "/console/sign-out", Some(&b.cookie), &[("csrf", &b.csrf)]).await;
    assert_eq!(r, (StatusCode::SEE_OTHER, "/console/sign-in".into()));
    // A copy of the cookie kept after sign-out opens nothing.
    for p in PAGES {
        assert_eq!(get(app, p, Some(&b.cookie)).await.0, StatusCode::SEE_OTHER, "{p}");
    }
}

/// Runs each named scenario once per database, on a server with the console.
macro_rules! with_console {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use herald_tests::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(app) = super::start(Backend::Sqlite).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = super::start(Backend::Postgres).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }
            }
        )*
    };
}

with_console!(
    signed_out_everything_is_refused,
    an_action_without_its_csrf_token_is_refused,
    sign_out_ends_the_session,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_signed_with_another_secret_is_refused() {
    let theirs = start_with_secret(Backend::Sqlite, b"another-secret-entirely-0123")
        .await
        .unwrap();
    let foreign = sign_in(&theirs).await;
    theirs.stop().await;
    let app = start(Backend::Sqlite).await.unwrap();
    for p in PAGES {
        assert_eq!(
            get(&app, p, Some(&foreign.cookie)).await.0,
            StatusCode::SEE_OTHER,
            "{p}"
        );
    }
    for a in ACTIONS {
        let r = post(&app, a, Some(&foreign.cookie), &[("csrf", &foreign.csrf)]).await;
        assert_eq!(r.0, StatusCode::FORBIDDEN, "{a}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_are_slowed_down() {
    let app = start(Backend::Sqlite).await.unwrap();
    for _ in 0..3 {
        let r = try_sign_in(&app, "guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(set_cookie(&r, SESSION_COOKIE).is_none());
    }
    // From now on each attempt waits, even with the right password.
    for pw in ["guess", PASSWORD] {
        let r = try_sign_in(&app, pw).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{pw}");
        assert!(r.headers().get(RETRY_AFTER).is_some());
        assert!(set_cookie(&r, SESSION_COOKIE).is_none());
    }
    // After the wait the right password gets in.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let r = try_sign_in(&app, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_form_needs_its_own_token() {
    let app = start(Backend::Sqlite).await.unwrap();
    // A cross-site form post has neither the pre-session cookie nor its token.
    let r = post(&app, "/console/sign-in", None, &[("password", PASSWORD)]).await;
    assert_eq!(r.0, StatusCode::FORBIDDEN);
    app.stop().await;
}
