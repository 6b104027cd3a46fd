//! The tracking server over HTTP (and SMTP) on loopback, on SQLite and on
//! PostgreSQL: every endpoint, forged tokens, Twilio signatures, opt-out
//! keywords, bounces, events and attribution. One binary, so it links once.

mod api;
mod browser;
mod common;
mod console;
mod correlation;
mod events;
mod signed;
mod tokens;
mod tracking;
mod webdriver;
mod webhooks;

/// Runs each named scenario `async fn NAME(app: &App)` once per database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use herald_tests::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(app) = $crate::common::App::start(Backend::Sqlite).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = $crate::common::App::start(Backend::Postgres).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }
            }
        )*
    };
}
