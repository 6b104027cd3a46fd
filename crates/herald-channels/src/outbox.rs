//! Outbox adapter (todo)
