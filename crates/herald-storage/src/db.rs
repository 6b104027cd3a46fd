//! Connecting to SQLite or PostgreSQL with the settings herald needs, and
//! applying the migrations.

use std::time::Duration;

use herald_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

use crate::sql::stmt;

/// Which database a connection talks to.
pub type Backend = DbBackend;

/// A connected, migrated database.
#[derive(Clone, Debug)]
pub struct Db {
    /// The sea-orm connection pool: herald-storage's alone, so that SQL is
    /// written here and nowhere else (tests reach it through
    /// [`crate::test_support`]).
    pub(crate) conn: DatabaseConnection,
    /// The keys forgotten identifiers are digested under (from the tracking
    /// secret); `None` where the secret is not known.
    digest_keys: Option<std::sync::Arc<crate::contacts::DigestKeys>>,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not SQLite or PostgreSQL.
    #[error(
        "database url `{0}` is not supported: use sqlite://FILE?mode=rwc or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Adds `sslmode=disable` to a loopback PostgreSQL URL without one: over
/// loopback TLS buys nothing and stalls large inserts (STYLE.md's traps).
pub fn tune_url(url: &str) -> String {
    let is_pg = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let loopback = [
        "@127.0.0.1",
        "@localhost",
        "@[::1]",
        "://127.0.0.1",
        "://localhost",
    ]
    .iter()
    .any(|h| url.contains(h));
    if is_pg && loopback && !url.contains("sslmode=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        return format!("{url}{sep}sslmode=disable");
    }
    url.to_string()
}

/// SQLite's busy handler for herald's connections: a writer waiting for
/// another's transaction polls every 100 µs for its first 10 ms, then every
/// millisecond, and gives up after about 30 s (SQLITE_BUSY). SQLite's own
/// `busy_timeout` sleeps 1, 2, 5, 10 ... 100 ms between polls: with a planner
/// and workers taking turns at the one write lock, a run spent much of its
/// time asleep after the lock was free again.
unsafe extern "C" fn busy_wait(
    _: *mut std::ffi::c_void,
    polls: std::ffi::c_int,
) -> std::ffi::c_int {
    const FAST_POLLS: std::ffi::c_int = 100;
    const MAX_POLLS: std::ffi::c_int = FAST_POLLS + 30_000;
    if polls >= MAX_POLLS {
        return 0;
    }
    std::thread::sleep(if polls < FAST_POLLS {
        Duration::from_micros(100)
    } else {
        Duration::from_millis(1)
    });
    1
}

impl Db {
    /// Connects to `url` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let url = tune_url(url);
        let backend = if url.starts_with("sqlite:") {
            DbBackend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbBackend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(url));
        };
        let mut opts = ConnectOptions::new(url);
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10));
        if backend == DbBackend::Sqlite {
            // One writer at a time is SQLite's nature; WAL lets readers go on
            // meanwhile, and a second writer waits, not fails: busy_timeout
            // while sqlx sets the connection up, then `busy_wait` (after_connect).
            opts.max_connections(4)
                .map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(30))
                        .foreign_keys(true)
                        // A cached statement of a 1,000-row INSERT holds its whole
                        // program; a hundred of them (one per row count) per
                        // connection was most of a run's memory. The hot statements
                        // are fewer than this.
                        .statement_cache_capacity(24)
                })
                .map_sqlx_sqlite_pool_opts(|p| {
                    p.after_connect(|conn, _| {
                        Box::pin(async move {
                            let mut handle = conn.lock_handle().await?;
                            // SAFETY: the handle is locked (sqlx's worker thread makes no
                            // call on it meanwhile) and `busy_wait` is a plain function.
                            unsafe {
                                libsqlite3_sys::sqlite3_busy_handler(
                                    handle.as_raw_handle().as_ptr(),
                                    Some(busy_wait),
                                    std::ptr::null_mut(),
                                );
                            }
                            Ok(())
                        })
                    })
                });
        } else {
            // The same cap as SQLite's, for the same reason: statements whose
            // text grows with a batch (`IN ($1, ... $n)`, one per n) filled a
            // hundred cache slots per connection over the first half minute of
            // a large run: 1M recipients peaked at 1.46x the RSS of 100k.
            opts.max_connections(16)
                .map_sqlx_postgres_opts(|o| o.statement_cache_capacity(24));
        }
        let conn = Database::connect(opts).await?;
        Migrator::up(&conn, None).await?;
        Ok(Self {
            conn,
            digest_keys: None,
        })
    }

    /// This database with the keys forgotten identifiers are digested under.
    pub fn with_digest_keys(mut self, keys: crate::contacts::DigestKeys) -> Self {
        self.digest_keys = Some(std::sync::Arc::new(keys));
        self
    }

    /// The keys forgotten identifiers are digested under, if known.
    pub fn digest_keys(&self) -> Option<&crate::contacts::DigestKeys> {
        self.digest_keys.as_deref()
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.conn.get_database_backend()
    }

    /// Deletes every row of every herald table (tests, the demo and benchmarks start clean).
    pub async fn truncate_all(&self) -> Result<(), DbError> {
        const TABLES: [&str; 19] = [
            "console_figures",
            "console_lease",
            "flights",
            "trigger_cursors",
            "entry_passes",
            "entry_members",
            "rollouts",
            "message_events",
            "outbox",
            "links",
            "attempts",
            "messages",
            "runs",
            "campaigns",
            "suppressions",
            "events",
            "topic_subscriptions",
            "push_tokens",
            "contacts",
        ];
        if self.backend() == DbBackend::Postgres {
            // TRUNCATE leaves no dead tuples behind, which would slow the next
            // unique-index checks on the same keys.
            let sql = format!("TRUNCATE {} RESTART IDENTITY", TABLES.join(", "));
            self.conn
                .execute_raw(stmt(self.backend(), &sql, vec![]))
                .await?;
            return Ok(());
        }
        for t in TABLES {
            self.conn
                .execute_raw(stmt(self.backend(), &format!("DELETE FROM {t}"), vec![]))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_postgres_gets_sslmode_disable() {
        assert_eq!(
            tune_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
        );
        assert_eq!(
            tune_url("postgres://p@127.0.0.1/t?sslmode=require"),
            "postgres://p@127.0.0.1/t?sslmode=require"
        );
        assert_eq!(
            tune_url("postgres://p@db.example.com/t"),
            "postgres://p@db.example.com/t"
        );
        assert_eq!(tune_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }

    #[test]
    fn the_busy_handler_waits_about_thirty_seconds_then_gives_up() {
        // SAFETY: `busy_wait` reads neither argument's memory.
        let poll = |n| unsafe { busy_wait(std::ptr::null_mut(), n) };
        assert_eq!(poll(0), 1);
        assert_eq!(poll(29_999), 1);
        assert_eq!(poll(30_100), 0);
    }

    /// A second SQLite writer waits for the first's transaction (through the
    /// busy handler each connection gets) instead of failing with SQLITE_BUSY.
    #[tokio::test]
    async fn a_second_sqlite_writer_waits_for_the_first() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let db = Db::connect(&url).await.unwrap();
        let first = db.conn.begin().await.unwrap();
        first
            .execute_unprepared(
                "INSERT INTO daemons (owner, started_at, heartbeat_at) VALUES ('a', 1, 1)",
            )
            .await
            .unwrap();
        let second = {
            let db = db.clone();
            tokio::spawn(async move {
                db.conn
                    .execute_unprepared(
                        "INSERT INTO daemons (owner, started_at, heartbeat_at) VALUES ('b', 2, 2)",
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the second writer did not wait");
        first.commit().await.unwrap();
        second
            .await
            .unwrap()
            .expect("the second writer failed instead of waiting");
        let n = db
            .conn
            .query_one_raw(sea_orm::Statement::from_string(
                db.backend(),
                "SELECT COUNT(*) FROM daemons",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(n, 2);
    }

    /// The bundled SQLite is built as `.cargo/config.toml` says: no memory
    /// statistics and a page cache of its own a connection, each of which
    /// otherwise takes a global mutex on SQLite's hottest paths (README, "A whole run").
    #[tokio::test]
    async fn the_bundled_sqlite_takes_no_global_mutex_per_allocation_or_page() {
        use sea_orm::ConnectionTrait;
        let db = Db::connect("sqlite::memory:").await.unwrap();
        let rows = db
            .conn
            .query_all_raw(sea_orm::Statement::from_string(
                db.backend(),
                "PRAGMA compile_options",
            ))
            .await
            .unwrap();
        let options: Vec<String> = rows
            .iter()
            .map(|r| r.try_get_by_index(0).unwrap())
            .collect();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }
}
