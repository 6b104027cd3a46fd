//! herald's engine: plans a run (audience snapshot, arm and channel per
//! contact) and dispatches its messages through the channel adapters.
//!
//! The engine owns the interfaces it needs from the outside: [`store::Store`]
//! (implemented by `herald-storage`) and [`clock::Clock`]. Start reading at
//! [`run::Engine`]; the per-contact decisions are pure, in [`plan`].

pub mod clock;
pub mod dispatch;
pub mod dry_run;
pub mod fallback;
pub mod handoff;
pub mod health;
pub mod memstore;
pub mod metrics;
pub mod plan;
pub mod platform;
pub mod policy;
pub mod render;
pub mod reputation;
pub mod rollout;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod series;
pub mod store;
pub mod trigger;

pub use clock::{Clock, FixedClock, SystemClock, TokioClock};
pub use run::Engine;
pub use store::{Store, StoreError};
