//! The segment filter language (todo)
