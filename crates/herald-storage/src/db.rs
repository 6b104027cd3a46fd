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
    /// The sea-orm connection pool.
    pub conn: DatabaseConnection,
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
            // meanwhile, and busy_timeout makes a second writer wait, not fail.
            opts.max_connections(4).map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    // A cached statement of a 1,000-row INSERT holds its whole
                    // program; a hundred of them (one per row count) per
                    // connection was most of a run's memory. The hot statements
                    // are fewer than this.
                    .statement_cache_capacity(24)
            });
        } else {
            opts.max_connections(16);
        }
        let conn = Database::connect(opts).await?;
        Migrator::up(&conn, None).await?;
        Ok(Self { conn })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.conn.get_database_backend()
    }

    /// Deletes every row of every herald table (tests, the demo and benchmarks start clean).
    pub async fn truncate_all(&self) -> Result<(), DbError> {
        const TABLES: [&str; 16] = [
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
}
