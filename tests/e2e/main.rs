//! herald's end-to-end suite: one test binary, a module per area. It is the
//! `e2e` test of herald-cli (`cargo test -p herald-cli --test e2e`), so cargo
//! builds the `herald` binary first; support code is the herald-tests crate. Each test
//! runs on SQLite and on PostgreSQL (see `herald_tests` for how PostgreSQL is
//! found, required in CI, and skipped loudly elsewhere).

use herald_tests::{Backend, Project, TestDb};

/// Declares `NAME::sqlite` and `NAME::postgres` tests that run `async fn NAME(Backend)`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(herald_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(herald_tests::Backend::Postgres).await
            }
        }
    )*};
}

/// [`on_both_databases`] for benchmarks: ignored, run by hand (`--ignored`).
macro_rules! ignored_on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "benchmark: run by hand"]
            async fn sqlite() {
                super::$name(herald_tests::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "benchmark: run by hand"]
            async fn postgres() {
                super::$name(herald_tests::Backend::Postgres).await
            }
        }
    )*};
}

mod account_faults;
mod campaign_preview;
mod check;
mod contacts;
mod crash;
mod cuped;
mod daemon;
mod demo;
mod fallback;
mod import;
mod lanes;
mod marketer;
mod pacer;
mod preview;
mod report;
mod reputation;
mod rollout;
mod segments;
mod send;
mod stop;
mod test_to;
mod triggers;

/// An empty project run with the binary cargo built for this test.
pub fn project() -> Project {
    Project::new(env!("CARGO_BIN_EXE_herald"))
}

/// A project plus its database, or `None` when PostgreSQL is skipped.
pub async fn setup(backend: Backend) -> Option<(Project, TestDb)> {
    let project = project();
    let db = TestDb::new(backend, project.path()).await?;
    Some((project, db))
}

/// The first column of the first row of `sql`, as an integer (the counts
/// and sums the tests assert on).
pub async fn scalar(db: &TestDb, sql: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let conn = Database::connect(&db.url).await.expect("connect");
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row");
    row.try_get_by_index::<i64>(0).expect("i64")
}
