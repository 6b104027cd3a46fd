//! Local loopback servers that record what herald sends: for the demo and the tests.
//!
//! [`SmtpSink`] is a real (if small) RFC 5321 server: start it on port 0, point
//! herald's SMTP channel at [`SmtpSink::addr`], then read [`SmtpSink::received`].
//! [`ReceivedMail`] has helpers to read headers and MIME parts back; they live in
//! `mime.rs`, the server in `smtp.rs`.

mod mime;
mod smtp;

pub use smtp::{DataReply, ReceivedMail, SmtpSink, SmtpSinkConfig};
