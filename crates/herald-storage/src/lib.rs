//! herald's database layer, the same behaviour on SQLite and PostgreSQL.
//!
//! [`Db`] connects and migrates; [`import`] streams contacts and events in;
//! [`entry`] runs segment-entry passes;
//! [`segment_sql`] compiles a segment filter into one parameterised query;
//! [`segment_preview`] counts a segment's members, R x F grid and stages;
//! [`console_figures`] keeps the console's expensive figures, counted ahead;
//! [`store`] implements the engine's `Store` (planning, claiming, outcomes).
//! Instants are BIGINT milliseconds since the epoch, so SQL time arithmetic
//! is one dialect.

pub mod attribute;
pub mod audience;
pub mod bench;
pub mod bench_data;
pub mod console_figures;
pub mod contacts;
pub mod conversions;
pub mod db;
pub mod decode;
pub mod entry;
pub mod exits;
pub mod flights;
pub mod import;
#[cfg(test)]
mod ledger_tests;
pub mod observed;
pub mod outbox;
pub mod personalise;
pub mod report;
pub mod reputation;
pub mod rollout;
pub mod routes;
pub mod runs;
pub mod segment_preview;
pub mod segment_sql;
pub mod sql;
pub mod store;
#[cfg(test)]
mod store_contract;
pub mod synthetic;
#[cfg(test)]
pub(crate) mod test_db;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tracking;

pub use db::{Backend, Db};
