//! address (todo)
