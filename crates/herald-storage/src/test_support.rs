//! The one door to the database for tests outside herald-storage (feature
//! `test-support`, enabled only by `[dev-dependencies]`): a test may state the
//! rows it starts from and read back what herald wrote in SQL, since that is
//! what it checks. Product code, the CLI, the server and the benches call
//! named functions of this crate instead (`tests/house_rules.rs`).

use sea_orm::DatabaseConnection;

use crate::Db;

/// `db`'s connection, for a test's fixtures and its reads of the rows.
pub fn conn(db: &Db) -> &DatabaseConnection {
    &db.conn
}
