//! Rate limiting (todo)
