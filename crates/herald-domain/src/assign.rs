//! assign (todo)
