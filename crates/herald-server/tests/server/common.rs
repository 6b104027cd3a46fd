//! One server per test: a fresh database with a small campaign fixture
//! (inserted with SQL), the server on loopback port 0 (HTTP and SMTP), and
//! a client that does not follow redirects.

use std::net::SocketAddr;

use herald_domain::token::{TokenClaims, TokenKind, TokenSigner};
use std::sync::Arc;

use herald_server::{AppState, GoalSpec, ReportSource, ServerConfig, SmtpSettings};
use herald_storage::Db;
use herald_tests::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &[u8] = b"server-test-secret-0123456789";
pub const EVENTS_TOKEN: &str = "events-token-0123";
pub const API_TOKEN: &str = "api-token-0123456789";
pub const TWILIO_TOKEN: &str = "twilio-auth-token-0123";
pub const BOUNCE_DOMAIN: &str = "b.example.com";
pub const EXTRA_KEYWORDS: [&str; 3] = ["TD", "T", "退订"];
pub const DAY: i64 = 86_400_000;

/// Email to ann@example.com (contact c1), delivered an hour ago; links 0 and 1.
pub const M_EMAIL: i64 = 1;
/// SMS to +15005550002 (c2), sent; short link `Ab3dE6gH`.
pub const M_SMS: i64 = 2;
/// Held out (c3): never sent.
pub const M_HELD: i64 = 3;
/// Suppressed (c4): never sent.
pub const M_SUPP: i64 = 4;
/// Email to bob@example.com (c5), delivered just now.
pub const M_FRESH: i64 = 5;
/// Email to cat@example.com (c6), sent an hour ago.
pub const M_CAT: i64 = 6;
/// Email of another campaign (`newsletter`, no topic, no goal) to ann (c1).
pub const M_NEWS: i64 = 7;

pub const SHORT_CODE: &str = "Ab3dE6gH";
pub const SMS_PHONE: &str = "+15005550002";

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A running server and what a test needs to talk to it.
pub struct App {
    pub base: String,
    /// The admin listener's base URL, when the config names one.
    pub admin: Option<String>,
    pub smtp: SocketAddr,
    pub state: AppState,
    pub signer: TokenSigner,
    pub client: reqwest::Client,
    pub db: Db,
    /// The planned send time of the `winback` messages (two days ago).
    pub send_at: i64,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
    test_db: TestDb,
    _dir: tempfile::TempDir,
}

async fn fixture(db: &Db, now: i64, send_at: i64) {
    let hour_ago = now - 3_600_000;
    let sql = [
        format!(
            "INSERT INTO contacts (id, external_id, email, phone, attrs, consent_sms, created_at, updated_at) VALUES \
            (1, 'c1', 'ann@example.com', NULL, '{{}}', NULL, {now}, {now}), \
            (2, 'c2', NULL, '{SMS_PHONE}', '{{}}', TRUE, {now}, {now}), \
            (3, 'c3', 'cy@example.com', NULL, '{{}}', NULL, {now}, {now}), \
            (4, 'c4', 'dee@example.com', NULL, '{{}}', NULL, {now}, {now}), \
            (5, 'c5', 'bob@example.com', NULL, '{{}}', NULL, {now}, {now}), \
            (6, 'c6', 'cat@example.com', NULL, '{{}}', NULL, {now}, {now})"
        ),
        format!(
            "INSERT INTO campaigns (id, name, kind, topic, fingerprint, created_at, updated_at) VALUES \
            (1, 'winback', 'marketing', 'promotions', 'f', {now}, {now}), \
            (2, 'newsletter', 'marketing', NULL, 'f', {now}, {now})"
        ),
        format!(
            "INSERT INTO runs (id, campaign_id, scheduled_at, now_at, state, origin, fingerprint, created_at) VALUES \
            (1, 1, {send_at}, {send_at}, 'running', 'manual', 'f', {send_at}), \
            (2, 2, {send_at}, {send_at}, 'running', 'manual', 'f', {send_at})"
        ),
        format!(
            "INSERT INTO messages (id, run_id, campaign_id, contact_id, step, arm, channel, address, send_at, status, reason, attempts, sent_at, delivered_at, open_count, click_count, revenue, created_at, updated_at) VALUES \
            (1, 1, 1, 1, 0, 'discount', 'email', 'ann@example.com', {send_at}, 'delivered', NULL, 1, {hour_ago}, {hour_ago}, 0, 0, 0, {now}, {now}), \
            (2, 1, 1, 2, 0, 'discount', 'sms', '{SMS_PHONE}', {send_at}, 'sent', NULL, 1, {hour_ago}, NULL, 0, 0, 0, {now}, {now}), \
            (3, 1, 1, 3, 0, 'holdout', NULL, NULL, {send_at}, 'held_out', NULL, 0, NULL, NULL, 0, 0, 0, {now}, {now}), \
            (4, 1, 1, 4, 0, 'reminder', NULL, NULL, {send_at}, 'suppressed', 'no_consent', 0, NULL, NULL, 0, 0, 0, {now}, {now}), \
            (5, 1, 1, 5, 0, 'reminder', 'email', 'bob@example.com', {send_at}, 'delivered', NULL, 1, {now}, {now}, 0, 0, 0, {now}, {now}), \
            (6, 1, 1, 6, 0, 'reminder', 'email', 'cat@example.com', {send_at}, 'sent', NULL, 1, {hour_ago}, NULL, 0, 0, 0, {now}, {now}), \
            (7, 2, 2, 1, 0, 'a', 'email', 'ann@example.com', {send_at}, 'delivered', NULL, 1, {hour_ago}, {hour_ago}, 0, 0, 0, {now}, {now})"
        ),
        format!(
            "INSERT INTO links (message_id, idx, url, short_code) VALUES \
            (1, 0, 'https://shop.example.com/a', NULL), \
            (1, 1, 'https://shop.example.com/b?x=1', NULL), \
            (2, 0, 'https://shop.example.com/s', '{SHORT_CODE}')"
        ),
    ];
    for s in sql {
        herald_storage::test_support::conn(db)
            .execute_unprepared(&s)
            .await
            .expect("fixture");
    }
    if db.backend() == DbBackend::Postgres {
        // Explicit ids leave the sequences behind; later inserts need fresh ones.
        for t in ["contacts", "campaigns", "runs", "messages"] {
            herald_storage::test_support::conn(db)
                .execute_unprepared(&format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', 'id'), 1000)"
                ))
                .await
                .expect("setval");
        }
    }
}

impl App {
    /// A server on a fresh database of `backend`, or `None` when PostgreSQL is skipped.
    pub async fn start(backend: Backend) -> Option<App> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`App::start`], with the config adjusted by `adjust`.
    pub async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Option<App> {
        Self::start_full(backend, adjust, None).await
    }

    /// Like [`App::start_with`], with a report source; an admin listener is
    /// bound on loopback when the adjusted config has `admin_listen`.
    pub async fn start_full(
        backend: Backend,
        adjust: impl FnOnce(&mut ServerConfig),
        report: Option<Arc<dyn ReportSource>>,
    ) -> Option<App> {
        let dir = tempfile::tempdir().expect("temp dir");
        let test_db = TestDb::new(backend, dir.path()).await?;
        // With the digest keys, as `herald serve` connects (forgetting needs them).
        let db = Db::connect(&test_db.url)
            .await
            .expect("connect")
            .with_digest_keys(herald_storage::contacts::DigestKeys::from_secrets(
                SECRET,
                &[],
            ));
        let now = now_ms();
        let send_at = now - 2 * DAY;
        fixture(&db, now, send_at).await;
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let smtp = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let base = format!("http://{}", http.local_addr().expect("addr"));
        let smtp_addr = smtp.local_addr().expect("addr");
        let mut cfg = ServerConfig::new(&base);
        cfg.events_token = Some(EVENTS_TOKEN.into());
        cfg.api_token = Some(API_TOKEN.into());
        cfg.twilio_auth_token = Some(TWILIO_TOKEN.into());
        cfg.opt_out_keywords = EXTRA_KEYWORDS.iter().map(|k| k.to_string()).collect();
        cfg.smtp = Some(SmtpSettings {
            listen: smtp_addr,
            bounce_domain: Some(BOUNCE_DOMAIN.into()),
            ..SmtpSettings::default()
        });
        cfg.goals = vec![
            GoalSpec {
                campaign_name: "winback".into(),
                event: "order_placed".into(),
                within_ms: 3 * DAY,
                secondary: false,
            },
            GoalSpec {
                campaign_name: "winback".into(),
                event: "app_open".into(),
                within_ms: 3 * DAY,
                secondary: true,
            },
        ];
        adjust(&mut cfg);
        let signer = TokenSigner::new(SECRET);
        let admin_listener = match cfg.admin_listen {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin")),
            None => None,
        };
        let admin = admin_listener
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("addr")));
        let state = AppState::with_hooks(db.clone(), signer.clone(), cfg, report, None);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(herald_server::serve_all(
            http,
            admin_listener,
            Some(smtp),
            state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = herald_channels::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Some(App {
            base,
            admin,
            smtp: smtp_addr,
            state,
            signer,
            client,
            db,
            send_at,
            stop,
            handle,
            test_db,
            _dir: dir,
        })
    }

    /// Stops the server (it must shut down cleanly) and drops the database.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.handle
            .await
            .expect("server task")
            .expect("server shut down cleanly");
        drop(self.state);
        self.test_db.drop_db().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn token(&self, kind: TokenKind, message_id: i64) -> String {
        self.signer.sign_message(kind, message_id)
    }

    pub fn click_token(&self, message_id: i64, link: u16) -> String {
        self.signer.sign(TokenClaims {
            kind: TokenKind::Click,
            message_id,
            link: Some(link),
        })
    }

    pub fn link_token(&self, message_id: i64, link: u16, url: &str) -> String {
        self.signer.sign_link(message_id, link, url)
    }

    pub async fn flush(&self) {
        self.state.flush().await.expect("flush");
    }

    /// The first column of the first row of `sql`, as an optional integer.
    pub async fn int(&self, sql: &str) -> Option<i64> {
        let row = herald_storage::test_support::conn(&self.db)
            .query_one_raw(Statement::from_string(self.db.backend(), sql.to_string()))
            .await
            .expect(sql)?;
        row.try_get_by_index::<Option<i64>>(0).expect(sql)
    }

    /// The first column of the first row of `sql`, as a number.
    pub async fn float(&self, sql: &str) -> f64 {
        let row = herald_storage::test_support::conn(&self.db)
            .query_one_raw(Statement::from_string(self.db.backend(), sql.to_string()))
            .await
            .expect(sql)
            .expect("a row");
        row.try_get_by_index::<f64>(0).expect(sql)
    }

    /// The first column of the first row of `sql`, as text.
    pub async fn text(&self, sql: &str) -> Option<String> {
        let row = herald_storage::test_support::conn(&self.db)
            .query_one_raw(Statement::from_string(self.db.backend(), sql.to_string()))
            .await
            .expect(sql)?;
        row.try_get_by_index::<Option<String>>(0).expect(sql)
    }

    /// `COUNT(*)` of `from_where` (the text after `SELECT COUNT(*) FROM`).
    pub async fn count(&self, from_where: &str) -> i64 {
        self.int(&format!("SELECT COUNT(*) FROM {from_where}"))
            .await
            .unwrap_or(0)
    }

    /// A column of message `id`, as an optional integer.
    pub async fn msg_int(&self, id: i64, column: &str) -> Option<i64> {
        self.int(&format!(
            "SELECT CAST({column} AS BIGINT) FROM messages WHERE id = {id}"
        ))
        .await
    }

    /// The status of message `id`.
    pub async fn status(&self, id: i64) -> String {
        self.text(&format!("SELECT status FROM messages WHERE id = {id}"))
            .await
            .expect("status")
    }

    /// Everything a tracking request may change, to check that a refused one changed nothing.
    pub async fn footprint(&self) -> Vec<i64> {
        let mut out = vec![
            self.count("suppressions").await,
            self.count("message_events").await,
            self.count("topic_subscriptions").await,
            self.count("events").await,
        ];
        for c in [
            "SUM(open_count)",
            "SUM(click_count)",
            "COUNT(opened_at)",
            "COUNT(machine_opened_at)",
            "COUNT(clicked_at)",
            "COUNT(unsubscribed_at)",
            "COUNT(bounced_at)",
            "COUNT(complained_at)",
            "COUNT(delivered_at)",
        ] {
            out.push(
                self.int(&format!("SELECT {c} FROM messages"))
                    .await
                    .unwrap_or(0),
            );
        }
        out
    }
}
