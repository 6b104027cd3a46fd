//! The compliance suite (STYLE.md habit 2): one test function, [`compliance`], run over every
//! adapter against a real loopback server that speaks its protocol. Each case starts a fresh
//! sink scripted to answer one way and checks the taxonomy the adapter decides, and how
//! many messages the server took (an ambiguous answer is one the server did take).

mod common;

use std::sync::Arc;
use std::time::Duration;

use herald_channels::fcm::FcmChannel;
use herald_channels::smtp::SmtpChannel;
use herald_channels::twilio::TwilioChannel;
use herald_channels::{Channel, DeliveryError, ProviderReceipt, RenderedMessage};
use herald_sinks::{
    Answer, DataReply, FaultPlan, FcmSink, FcmSinkConfig, SmtpSink, SmtpSinkConfig, TwilioSink,
    TwilioSinkConfig,
};

/// The `Retry-After` the sinks send with a 429.
const RETRY_AFTER_SECS: u32 = 7;
/// The adapters' answer timeout: the stall cases wait this long.
const TIMEOUT: Duration = Duration::from_millis(400);
/// How long a sink holds a stalled request (well past the timeout).
const STALL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Smtp,
    Twilio,
    Fcm,
}

/// What the server does with the one message of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Success,
    /// 429 with Retry-After (SMTP: a 4xx that says "rate limit").
    Throttled,
    /// 5xx (SMTP: a 4xx, its temporary failure).
    ServerError,
    /// The request arrives; no answer ever comes.
    StallAfterRequest,
    /// The request arrives; the connection is closed without an answer.
    ResetAfterRequest,
    ConnectionRefused,
    /// A permanent refusal that is not the address's death (Twilio 21211, FCM
    /// INVALID_ARGUMENT, SMTP 554 5.7.1 policy).
    Refused,
    /// A permanent refusal that kills the address (Twilio 21610, FCM UNREGISTERED, SMTP 550 5.1.1).
    DeadAddress,
    /// A success status with a body that cannot be read.
    Malformed,
}

const CASES: [Case; 9] = [
    Case::Success,
    Case::Throttled,
    Case::ServerError,
    Case::StallAfterRequest,
    Case::ResetAfterRequest,
    Case::ConnectionRefused,
    Case::Refused,
    Case::DeadAddress,
    Case::Malformed,
];

/// The adapter's answer the case calls for.
#[derive(Debug, PartialEq)]
enum Expect {
    Accepted { delivered_on_accept: bool },
    RateLimited { retry_after: Option<Duration> },
    Transient,
    Ambiguous,
    Permanent { suppress_address: bool },
}

impl Expect {
    fn met_by(&self, channel: &dyn Channel, got: &Result<ProviderReceipt, DeliveryError>) -> bool {
        match (self, got) {
            (
                Expect::Accepted {
                    delivered_on_accept,
                },
                Ok(receipt),
            ) => {
                channel.delivered_on_accept() == *delivered_on_accept
                    && receipt
                        .provider_id
                        .as_deref()
                        .is_some_and(|id| !id.is_empty())
            }
            (
                Expect::RateLimited { retry_after },
                Err(DeliveryError::RateLimited {
                    retry_after: got, ..
                }),
            ) => got == retry_after,
            (Expect::Transient, Err(DeliveryError::Transient { .. })) => true,
            (Expect::Ambiguous, Err(DeliveryError::Ambiguous { .. })) => true,
            (
                Expect::Permanent { suppress_address },
                Err(DeliveryError::Permanent {
                    suppress_address: got,
                    ..
                }),
            ) => got == suppress_address,
            _ => false,
        }
    }
}

/// What each adapter must answer in each case, and how many messages its server took.
fn expectation(adapter: Adapter, case: Case) -> (Expect, usize) {
    let retry_after = match adapter {
        Adapter::Smtp => None, // SMTP has no Retry-After
        Adapter::Twilio | Adapter::Fcm => Some(Duration::from_secs(u64::from(RETRY_AFTER_SECS))),
    };
    match case {
        Case::Success => (
            Expect::Accepted {
                // Twilio's 201 means queued; delivery comes on the status callback.
                delivered_on_accept: adapter != Adapter::Twilio,
            },
            1,
        ),
        Case::Throttled => (Expect::RateLimited { retry_after }, 0),
        Case::ServerError => (Expect::Transient, 0),
        Case::StallAfterRequest | Case::ResetAfterRequest | Case::Malformed => {
            (Expect::Ambiguous, 1)
        }
        Case::ConnectionRefused => (Expect::Transient, 0),
        Case::Refused => (
            Expect::Permanent {
                suppress_address: false,
            },
            0,
        ),
        Case::DeadAddress => (
            Expect::Permanent {
                suppress_address: true,
            },
            0,
        ),
    }
}

/// A channel wired to a server that answers `case`, the message to send, and a count of
/// the messages the server took.
struct Rig {
    channel: Box<dyn Channel>,
    message: RenderedMessage,
    taken: Box<dyn Fn() -> usize + Send + Sync>,
}

async fn rig(adapter: Adapter, case: Case) -> Rig {
    match adapter {
        Adapter::Smtp => smtp_rig(case).await,
        Adapter::Twilio => twilio_rig(case).await,
        Adapter::Fcm => fcm_rig(case).await,
    }
}

async fn smtp_rig(case: Case) -> Rig {
    let message = common::email(1, "ann@example.org");
    if case == Case::ConnectionRefused {
        let port = common::closed_port().await;
        let channel = SmtpChannel::new(common::smtp_settings(port, TIMEOUT)).expect("settings");
        return Rig {
            channel: Box::new(channel),
            message,
            taken: Box::new(|| 0),
        };
    }
    let mut config = SmtpSinkConfig::default();
    match case {
        Case::Success | Case::ConnectionRefused => {}
        Case::Throttled => {
            config.after_data = DataReply::Reply(451, "4.7.0 Rate limit exceeded, slow down".into())
        }
        Case::ServerError => {
            config.after_data = DataReply::Reply(451, "4.3.0 Local error in processing".into())
        }
        Case::StallAfterRequest => config.after_data = DataReply::Stall,
        Case::ResetAfterRequest => config.after_data = DataReply::HangUp,
        Case::Refused => {
            config.reject_rcpt = vec![("ann".into(), 554, "5.7.1 Rejected by policy".into())]
        }
        Case::DeadAddress => {
            config.reject_rcpt = vec![("ann".into(), 550, "5.1.1 No such user".into())]
        }
        Case::Malformed => config.after_data = DataReply::Raw("hello, this is not SMTP".into()),
    }
    let sink = Arc::new(SmtpSink::start(config).await.expect("smtp sink"));
    let channel =
        SmtpChannel::new(common::smtp_settings(sink.addr().port(), TIMEOUT)).expect("settings");
    Rig {
        channel: Box::new(channel),
        message,
        taken: Box::new(move || sink.count()),
    }
}

/// The scripted answer of an HTTP sink for a case (`None`: no request reaches it).
fn http_answer(case: Case) -> Option<Answer> {
    Some(match case {
        Case::Success => Answer::Accept,
        Case::Throttled => Answer::RateLimited {
            retry_after_secs: RETRY_AFTER_SECS,
        },
        Case::ServerError => Answer::ServerError,
        Case::StallAfterRequest => Answer::Stall,
        Case::ResetAfterRequest => Answer::HangUp,
        Case::ConnectionRefused => return None,
        Case::Refused => Answer::InvalidAddress,
        Case::DeadAddress => Answer::DeadAddress,
        Case::Malformed => Answer::Malformed,
    })
}

async fn twilio_rig(case: Case) -> Rig {
    let sink = Arc::new(
        TwilioSink::start(TwilioSinkConfig {
            plan: FaultPlan::script(http_answer(case)),
            stall_for: STALL,
            ..TwilioSinkConfig::default()
        })
        .await
        .expect("twilio sink"),
    );
    let mut settings = common::twilio_settings(&sink, TIMEOUT);
    if case == Case::ConnectionRefused {
        settings.base_url = format!("http://127.0.0.1:{}", common::closed_port().await);
    }
    Rig {
        channel: Box::new(TwilioChannel::new(settings).expect("settings")),
        message: common::sms(1, "+14155550100"),
        taken: Box::new(move || sink.count()),
    }
}

async fn fcm_rig(case: Case) -> Rig {
    let sink = Arc::new(
        FcmSink::start(FcmSinkConfig {
            plan: FaultPlan::script(http_answer(case)),
            stall_for: STALL,
            ..FcmSinkConfig::default()
        })
        .await
        .expect("fcm sink"),
    );
    // Connection refused on the send, after a token from the (working) token endpoint.
    let mut settings = common::fcm_settings(&sink, TIMEOUT);
    if case == Case::ConnectionRefused {
        settings.base_url = format!("http://127.0.0.1:{}", common::closed_port().await);
    }
    Rig {
        channel: Box::new(FcmChannel::new(settings).expect("settings")),
        message: common::push(1, "fcm-token-ann-0001"),
        taken: Box::new(move || sink.count()),
    }
}

/// The one compliance test, for any adapter.
async fn compliance(adapter: Adapter) {
    let mut failures = Vec::new();
    for case in CASES {
        let rig = rig(adapter, case).await;
        let got = rig.channel.send(&rig.message).await;
        let (want, taken) = expectation(adapter, case);
        let got_taken = (rig.taken)();
        println!("{adapter:?} {case:?}: {got:?} (server took {got_taken})");
        if !want.met_by(rig.channel.as_ref(), &got) || got_taken != taken {
            failures.push(format!(
                "{case:?}: want {want:?} and {taken} taken, got {got:?} and {got_taken} taken"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{adapter:?} fails compliance:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn smtp_is_compliant() {
    compliance(Adapter::Smtp).await;
}

#[tokio::test]
async fn twilio_is_compliant() {
    compliance(Adapter::Twilio).await;
}

#[tokio::test]
async fn fcm_is_compliant() {
    compliance(Adapter::Fcm).await;
}
