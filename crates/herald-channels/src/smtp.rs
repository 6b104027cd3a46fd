//! SMTP adapter (todo)
