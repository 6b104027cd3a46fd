//! What the engine's memstore tests share: a clock on tokio's (paused)
//! time, campaigns from TOML, a renderer, and a fake adapter that fails on
//! command.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_channels::pacer::Pacer;
use herald_channels::{Channel as Adapter, DeliveryError, ProviderReceipt, RenderedMessage};
use herald_domain::config::{Campaign, ConfigSet, HeraldConfig};
use herald_domain::types::Channel;
use herald_engine::TokioClock;
use herald_engine::dispatch::{Dispatcher, Route};
use herald_engine::memstore::{MemContact, MemStore};
use herald_engine::render::{MessageRenderer, RenderOutput};
use herald_engine::store::{ClaimedMessage, ContactView, PersonalisationRequest};

/// 2026-12-01 12:00 UTC: every test's start, in ms.
pub const T0: i64 = 1_796_126_400_000;

/// A clock at [`T0`] that moves with tokio's (paused) time.
pub fn clock() -> Arc<TokioClock> {
    Arc::new(TokioClock::new(
        chrono::DateTime::from_timestamp_millis(T0).expect("T0"),
    ))
}

/// The config holding `campaign` (its TOML), and the campaign.
pub fn config(toml: &str) -> (Arc<ConfigSet>, Campaign) {
    let campaign = Campaign::parse("c.toml", toml).expect("campaign");
    let config = Arc::new(ConfigSet {
        herald: HeraldConfig::parse("herald.toml", "").expect("herald.toml"),
        segments: Default::default(),
        campaigns: [(campaign.name.clone(), campaign.clone())].into(),
    });
    (config, campaign)
}

/// Contacts `c1..=cn` with an email each; their ids.
pub fn contacts(store: &MemStore, n: usize) -> Vec<i64> {
    (1..=n)
        .map(|i| {
            store.add_contact(MemContact::email(
                &format!("c{i}"),
                &format!("c{i}@example.com"),
            ))
        })
        .collect()
}

/// Renders every message as a one-line message on its channel.
pub struct Plain;

impl MessageRenderer for Plain {
    fn render(&self, msg: &ClaimedMessage, c: &ContactView) -> Result<RenderOutput, String> {
        Ok(RenderOutput {
            message: RenderedMessage {
                message_id: msg.id,
                channel: msg.channel,
                to: msg.address.clone(),
                subject: Some(format!("hello {}", c.external_id)),
                body: "hello".into(),
                text: None,
                unsubscribe_url: None,
                return_path: None,
                status_callback: None,
                callback_token: None,
            },
            links: vec![],
        })
    }

    fn personalisation(&self, now: i64) -> PersonalisationRequest {
        PersonalisationRequest::new(now, &HeraldConfig::default(), vec![])
    }
}

/// An adapter that accepts everything unless told to fail: the next `n`
/// sends to an address, or every send until [`Fake::heal`].
#[derive(Default)]
pub struct Fake {
    script: Mutex<HashMap<String, VecDeque<DeliveryError>>>,
    always: Mutex<Option<DeliveryError>>,
    /// Every call: (address, tokio instant, accepted).
    pub calls: Mutex<Vec<(String, tokio::time::Instant, bool)>>,
}

impl Fake {
    /// A new adapter, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next `n` sends to `address` fail with `error`.
    pub fn fail(&self, address: &str, n: usize, error: DeliveryError) {
        let mut s = self.script.lock().unwrap();
        let q = s.entry(address.into()).or_default();
        q.extend(std::iter::repeat_n(error, n));
    }

    /// Every send fails with `error` until [`Fake::heal`].
    pub fn fail_all(&self, error: DeliveryError) {
        *self.always.lock().unwrap() = Some(error);
    }

    /// Sends are accepted again.
    pub fn heal(&self) {
        *self.always.lock().unwrap() = None;
    }

    /// Calls so far to `address` (None: any).
    pub fn calls_to(&self, address: Option<&str>) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| address.is_none_or(|a| a == c.0))
            .count()
    }

    /// Accepted sends so far.
    pub fn accepted(&self) -> usize {
        self.calls.lock().unwrap().iter().filter(|c| c.2).count()
    }
}

#[async_trait]
impl Adapter for Fake {
    async fn send(&self, m: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError> {
        let scripted = self
            .script
            .lock()
            .unwrap()
            .get_mut(&m.to)
            .and_then(|q| q.pop_front());
        let result = match scripted.or_else(|| self.always.lock().unwrap().clone()) {
            Some(e) => Err(e),
            None => Ok(ProviderReceipt {
                provider_id: Some(format!("p{}", m.message_id)),
                detail: "accepted".into(),
            }),
        };
        self.calls.lock().unwrap().push((
            m.to.clone(),
            tokio::time::Instant::now(),
            result.is_ok(),
        ));
        result
    }

    fn delivered_on_accept(&self) -> bool {
        true
    }
}

/// A temporary failure (SMTP 421).
pub fn transient() -> DeliveryError {
    DeliveryError::Transient {
        code: "421".into(),
        detail: "try again later".into(),
        retry_after: None,
    }
}

/// The sender's account refused (Twilio 20003).
pub fn account_fault() -> DeliveryError {
    DeliveryError::AccountFault {
        code: "20003".into(),
        detail: "Twilio 20003: Authenticate (HTTP 401)".into(),
    }
}

/// A route of `fake`, unlimited, `concurrency` in flight.
pub fn route(fake: &Arc<Fake>, concurrency: usize) -> Route {
    Route::new(fake.clone(), Arc::new(Pacer::new(None)), concurrency)
}

/// A dispatcher `owner` over `routes`, polling every 50 ms of (paused) time.
pub fn dispatcher(
    store: &Arc<MemStore>,
    clock: &Arc<TokioClock>,
    routes: Vec<(Channel, Route)>,
    owner: &str,
) -> Dispatcher {
    let mut d = Dispatcher::new(
        store.clone(),
        clock.clone(),
        routes.into_iter().collect(),
        owner.into(),
    );
    d.poll = Duration::from_millis(50);
    d
}
