//! Local loopback servers that record what herald sends: for the demo and the tests.
//!
//! [`SmtpSink`] is a real (if small) RFC 5321 server; [`TwilioSink`] speaks Twilio's
//! Messages API and [`FcmSink`] FCM HTTP v1 with its OAuth2 token endpoint. Start one on
//! port 0, point a channel at its address, read back what it received. The HTTP sinks share
//! `http.rs` (server, [`FaultPlan`], [`RequestLog`]); `mime.rs` reads mail back.

mod fcm;
mod http;
mod mime;
mod smtp;
mod twilio;

pub use fcm::{
    DEMO_SERVICE_ACCOUNT_KEY, FCM_SCOPE, FcmSink, FcmSinkConfig, FcmSinkError, ReceivedPush,
    SECOND_SERVICE_ACCOUNT_KEY,
};
pub use http::{Answer, DEFAULT_STALL, FaultMix, FaultPlan, RequestLog};
pub use smtp::{DataReply, ReceivedMail, SmtpSink, SmtpSinkConfig};
pub use twilio::{DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, ReceivedSms, TwilioSink, TwilioSinkConfig};
