//! The storage tests' databases: a migrated SQLite file, or a PostgreSQL
//! database of its own created beside `HERALD_TEST_DATABASE_URL` and dropped
//! afterwards. Without PostgreSQL the PostgreSQL half skips loudly, unless
//! `HERALD_REQUIRE_POSTGRES=1` (CI), where it fails.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database, DbBackend};

use crate::Db;

/// A migrated database for one test; a PostgreSQL one is dropped by [`TestDb::finish`].
pub struct TestDb {
    /// The database.
    pub db: Db,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database on `backend`, its PostgreSQL name starting `herald_{tag}_`;
    /// `None` when PostgreSQL is unreachable and not required.
    pub async fn new(backend: DbBackend, tag: &str) -> Option<TestDb> {
        let dir = tempfile::tempdir().unwrap();
        if backend == DbBackend::Sqlite {
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
            let db = Db::connect(&url).await.unwrap();
            return Some(TestDb {
                db,
                _dir: dir,
                pg: None,
            });
        }
        let admin = std::env::var("HERALD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into());
        let conn = match Database::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "PostgreSQL is required (HERALD_REQUIRE_POSTGRES=1) but {admin} is unreachable: {e}"
                );
                eprintln!("\n!!! SKIPPING the PostgreSQL half: {admin} is unreachable ({e})\n");
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "herald_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let cut = base.rfind('/').map_or(base.len(), |i| i + 1);
        let url = if query.is_empty() {
            format!("{}{name}", &base[..cut])
        } else {
            format!("{}{name}?{query}", &base[..cut])
        };
        let db = Db::connect(&url).await.unwrap();
        Some(TestDb {
            db,
            _dir: dir,
            pg: Some((admin, name)),
        })
    }

    /// Drops a PostgreSQL test database.
    pub async fn finish(self) {
        if let Some((admin, name)) = self.pg {
            drop(self.db);
            if let Ok(conn) = Database::connect(&admin).await {
                let _ = conn
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    }
}

/// A test body over a database.
pub type TestFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Runs `test` on a fresh database of `backend` (see [`on_both_databases`]).
pub async fn both(backend: DbBackend, tag: &str, test: impl for<'a> Fn(&'a Db) -> TestFuture<'a>) {
    let Some(t) = TestDb::new(backend, tag).await else {
        return;
    };
    test(&t.db).await;
    t.finish().await;
}

/// Runs each `async fn NAME(&Db)` as `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                $crate::test_db::both(sea_orm::DbBackend::Sqlite, "t", |db| Box::pin(super::$name(db))).await
            }
            #[tokio::test]
            async fn postgres() {
                $crate::test_db::both(sea_orm::DbBackend::Postgres, "t", |db| Box::pin(super::$name(db))).await
            }
        }
    )*};
}
pub(crate) use on_both_databases;

/// Rolls `db` back to the schema just before migration `name` (e.g.
/// `"m20261208_000120_console_figures"`), however many came after it, so a
/// migration's upgrade test keeps working as later migrations land.
pub async fn down_to_before(db: &Db, name: &str) {
    use herald_migrations::{Migrator, MigratorTrait};
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let at = names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no migration {name}"));
    Migrator::down(&db.conn, Some((names.len() - at) as u32))
        .await
        .unwrap();
}
