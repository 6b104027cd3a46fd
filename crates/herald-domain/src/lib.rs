//! herald's domain core: pure types and decisions, no IO and no async.
//!
//! Start with [`config`] (the files a marketer writes, parsed into types that
//! cannot hold an invalid value), then [`segment`] (the filter language),
//! [`assign`] (A/B arm assignment) and [`token`] (signed tracking tokens).
//! Errors that point into a file are [`diagnostic::Diagnostic`]s, printed like rustc.

pub mod address;
pub mod assign;
pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod segment;
pub mod stats;
pub mod token;
pub mod types;
