//! The engine's tests on its in-memory store ([`herald_engine::memstore`]):
//! planning, dispatch and triggers without a database, under tokio's paused
//! time. One binary, so it links once.

mod dispatch;
mod plan;
mod support;
mod triggers;
