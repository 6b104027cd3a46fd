//! The HTTP core shared by the Twilio and FCM sinks: a hyper HTTP/1.1 server on loopback,
//! the scripted or seeded answers ([`FaultPlan`]) and the arrival log ([`RequestLog`]).
//!
//! Each sink implements `Handler`; this module accepts connections (with `TCP_NODELAY`),
//! reads each request whole, asks the handler for a `Reply`, then answers, stalls or hangs up.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body a sink reads (providers refuse far smaller ones).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a stalled request is held by default before the sink drops the connection.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

/// What a sink does with one message request (after checking auth and the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Take the message: Twilio `201`, FCM `200`, with a real-looking id.
    Accept,
    /// Throttle: `429` with `Retry-After` (Twilio code 20429, FCM `QUOTA_EXCEEDED`).
    RateLimited {
        /// The `Retry-After` header, whole seconds.
        retry_after_secs: u32,
    },
    /// A server error: Twilio `500` (code 20500), FCM `503 UNAVAILABLE`.
    ServerError,
    /// Record the message, then never answer (the client times out after writing it).
    Stall,
    /// Record the message, then close the connection without answering.
    HangUp,
    /// A refused address: Twilio `400` code 21211, FCM `400 INVALID_ARGUMENT`.
    InvalidAddress,
    /// A dead address: Twilio `400` code 21610 (unsubscribed), FCM `404 UNREGISTERED`.
    DeadAddress,
    /// Record the message and answer `2xx` with a body that is not the promised JSON.
    Malformed,
}

impl Answer {
    /// Whether the provider took (or may have taken) the message, so the sink records it.
    pub fn records(self) -> bool {
        matches!(
            self,
            Answer::Accept | Answer::Stall | Answer::HangUp | Answer::Malformed
        )
    }
}

/// Probabilities of each failure, drawn deterministically from a seed (the rest accept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// Seeds the draw: the same seed gives every message the same answers, whatever the order.
    pub seed: u64,
    /// Share of `429` answers.
    pub rate_limited: f64,
    /// Share of `5xx` answers.
    pub server_error: f64,
    /// Share of requests stalled after they were read.
    pub stall: f64,
    /// Share of `InvalidAddress` refusals.
    pub invalid_address: f64,
    /// Share of `DeadAddress` refusals.
    pub dead_address: f64,
    /// Share of malformed `2xx` answers.
    pub malformed: f64,
    /// The `Retry-After` of the `429` answers, whole seconds.
    pub retry_after_secs: u32,
}

impl FaultMix {
    /// Every request accepted; set the shares you want on top of this.
    pub fn new(seed: u64) -> Self {
        FaultMix {
            seed,
            rate_limited: 0.0,
            server_error: 0.0,
            stall: 0.0,
            invalid_address: 0.0,
            dead_address: 0.0,
            malformed: 0.0,
            retry_after_secs: 1,
        }
    }

    fn pick(&self, draw: f64) -> Answer {
        let shares = [
            (
                self.rate_limited,
                Answer::RateLimited {
                    retry_after_secs: self.retry_after_secs,
                },
            ),
            (self.server_error, Answer::ServerError),
            (self.stall, Answer::Stall),
            (self.invalid_address, Answer::InvalidAddress),
            (self.dead_address, Answer::DeadAddress),
            (self.malformed, Answer::Malformed),
        ];
        let mut edge = 0.0;
        for (share, answer) in shares {
            edge += share;
            if draw < edge {
                return answer;
            }
        }
        Answer::Accept
    }
}

/// How a sink answers message requests: a script for the first ones, then a seeded mix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Answers for the first message requests, in order of arrival.
    pub script: Vec<Answer>,
    /// After the script: answers drawn per message from a seed; `None` accepts everything.
    pub mix: Option<FaultMix>,
}

impl FaultPlan {
    /// Accept every request.
    pub fn accept_all() -> Self {
        FaultPlan::default()
    }

    /// These answers for the next requests, in order, then accept.
    pub fn script(answers: impl IntoIterator<Item = Answer>) -> Self {
        FaultPlan {
            script: answers.into_iter().collect(),
            mix: None,
        }
    }

    /// Answers drawn from `mix` for every request.
    pub fn mix(mix: FaultMix) -> Self {
        FaultPlan {
            script: Vec::new(),
            mix: Some(mix),
        }
    }
}

/// The live state of a [`FaultPlan`]: what is left of the script, and how often each
/// message was seen (so a retried message draws a fresh, but reproducible, answer).
#[derive(Debug, Default)]
pub(crate) struct Planner {
    state: Mutex<PlannerState>,
}

#[derive(Debug, Default)]
struct PlannerState {
    script: VecDeque<Answer>,
    mix: Option<FaultMix>,
    seen: HashMap<u64, u64>,
}

impl Planner {
    pub(crate) fn new(plan: FaultPlan) -> Self {
        let planner = Planner::default();
        planner.set(plan);
        planner
    }

    pub(crate) fn set(&self, plan: FaultPlan) {
        let mut state = lock(&self.state);
        state.script = plan.script.into();
        state.mix = plan.mix;
        state.seen.clear();
    }

    /// The answer for a message identified by `key` (its recipient and content).
    pub(crate) fn answer(&self, key: &[u8]) -> Answer {
        let mut state = lock(&self.state);
        if let Some(answer) = state.script.pop_front() {
            return answer;
        }
        let Some(mix) = state.mix else {
            return Answer::Accept;
        };
        let id = fnv1a(key);
        let seen = state.seen.entry(id).or_insert(0);
        let occurrence = *seen;
        *seen += 1;
        let bits = mix64(mix.seed ^ mix64(id ^ mix64(occurrence)));
        // The top 53 bits as a uniform draw in [0, 1).
        let draw = (bits >> 11) as f64 / (1u64 << 53) as f64;
        mix.pick(draw)
    }
}

/// FNV-1a: a stable hash, so that a seed means the same thing on every machine and release.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads the bits of a counter or a hash.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When each message request arrived, for rate checks made by the receiving side.
#[derive(Debug)]
pub struct RequestLog {
    start: Instant,
    arrivals: Mutex<Vec<Duration>>,
}

impl RequestLog {
    pub(crate) fn new() -> Self {
        RequestLog {
            start: Instant::now(),
            arrivals: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn arrived(&self) {
        let mut arrivals = lock(&self.arrivals);
        // Taken under the lock, so the log is in order.
        arrivals.push(self.start.elapsed());
    }

    /// How many message requests arrived (whatever the answer).
    pub fn count(&self) -> usize {
        lock(&self.arrivals).len()
    }

    /// Arrival times since the sink started, in order.
    pub fn arrivals(&self) -> Vec<Duration> {
        lock(&self.arrivals).clone()
    }

    /// The most requests that arrived within any span of `window` (a sliding window).
    pub fn max_in_window(&self, window: Duration) -> usize {
        max_in_window(&lock(&self.arrivals), window)
    }

    /// Requests per consecutive `window`, counted from the first arrival.
    pub fn per_window(&self, window: Duration) -> Vec<usize> {
        let arrivals = lock(&self.arrivals);
        let Some(first) = arrivals.first().copied() else {
            return Vec::new();
        };
        let width = window.as_nanos().max(1);
        let mut counts = Vec::new();
        for at in arrivals.iter() {
            let slot = ((*at - first).as_nanos() / width) as usize;
            if counts.len() <= slot {
                counts.resize(slot + 1, 0);
            }
            counts[slot] += 1;
        }
        counts
    }

    /// Forgets every arrival so far.
    pub fn clear(&self) {
        lock(&self.arrivals).clear();
    }
}

/// Two pointers over sorted arrivals: the largest count in a half-open span of `window`.
fn max_in_window(arrivals: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (last, at) in arrivals.iter().enumerate() {
        while *at - arrivals[first] >= window {
            first += 1;
        }
        best = best.max(last - first + 1);
    }
    best
}

/// What the handler wants done with one request.
pub(crate) enum Reply {
    /// Answer with this response.
    Respond(Response<Full<Bytes>>),
    /// Hold the request unanswered until the stall time is over, then drop the connection.
    Stall,
    /// Close the connection without answering.
    HangUp,
}

/// A sink's protocol: decides the answer to one whole request.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers `method path` with `headers` and `body`.
    fn handle(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply;
}

/// A running HTTP server; stops on [`Server::shutdown`] or drop.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

/// Why the sink ended a connection instead of answering (a stall or a hang-up).
#[derive(Debug, thiserror::Error)]
#[error("the sink dropped the connection on purpose")]
struct Dropped;

impl Server {
    /// Serves `handler` on `listener` (must run inside a tokio runtime).
    pub(crate) fn serve(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        stall_for: Duration,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler, stall_for));
        Ok(Server {
            addr,
            task: Some(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and waits until they are gone.
    pub(crate) async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The accept task owns the connection tasks: once it is gone, so are they.
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, handler: Arc<dyn Handler>, stall_for: Duration) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = Arc::clone(&handler);
                    connections.spawn(async move {
                        if let Err(error) = serve_connection(stream, handler, stall_for).await {
                            tracing::debug!(%peer, %error, "http sink connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "http sink accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    handler: Arc<dyn Handler>,
    stall_for: Duration,
) -> Result<(), hyper::Error> {
    // Small answers would otherwise wait for the client's delayed ACK.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "http sink could not set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let handler = Arc::clone(&handler);
        async move { respond(request, handler.as_ref(), stall_for).await }
    });
    http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn respond(
    request: Request<Incoming>,
    handler: &dyn Handler,
    stall_for: Duration,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error": "request body too large or cut short"}"#.to_owned(),
            ));
        }
    };
    match handler.handle(&parts.method, parts.uri.path(), &parts.headers, &body) {
        Reply::Respond(response) => Ok(response),
        Reply::Stall => {
            tokio::time::sleep(stall_for).await;
            Err(Dropped)
        }
        Reply::HangUp => Err(Dropped),
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A `429` JSON response with `Retry-After`.
pub(crate) fn throttled(retry_after_secs: u32, body: String) -> Response<Full<Bytes>> {
    let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, body);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A `2xx` answer whose body (`cut`) is cut short: what a proxy in trouble might send.
pub(crate) fn malformed(status: StatusCode, cut: &str) -> Response<Full<Bytes>> {
    json_response(status, cut.to_owned())
}

/// Form fields of an `application/x-www-form-urlencoded` body (the last of a repeated key wins).
pub(crate) fn form_fields(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Locks a mutex, carrying on past a poisoned one (a panicking test must not hide the rest).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn sliding_window_counts_the_densest_second() {
        let a = ms(&[0, 100, 999, 1000, 1001, 1500, 1999, 2998]);
        assert_eq!(max_in_window(&a, Duration::from_secs(1)), 4); // 1000..1999
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
        assert_eq!(max_in_window(&ms(&[5]), Duration::from_secs(1)), 1);
    }

    #[test]
    fn the_mix_is_deterministic_per_message_and_matches_its_shares() {
        let mix = FaultMix {
            rate_limited: 0.3,
            server_error: 0.1,
            stall: 0.05,
            ..FaultMix::new(7)
        };
        let a = Planner::new(FaultPlan::mix(mix));
        let b = Planner::new(FaultPlan::mix(mix));
        let keys: Vec<String> = (0..20_000)
            .map(|i| format!("+15550001{i:04} msg {i}"))
            .collect();
        let first: Vec<Answer> = keys.iter().map(|k| a.answer(k.as_bytes())).collect();
        // The other planner sees the messages in reverse order: same answers per message.
        let mut second: Vec<Answer> = keys.iter().rev().map(|k| b.answer(k.as_bytes())).collect();
        second.reverse();
        assert_eq!(first, second);
        let share =
            |want: Answer| first.iter().filter(|a| **a == want).count() as f64 / first.len() as f64;
        let limited = share(Answer::RateLimited {
            retry_after_secs: 1,
        });
        assert!((limited - 0.3).abs() < 0.015, "{limited}");
        assert!((share(Answer::ServerError) - 0.1).abs() < 0.01);
        assert!((share(Answer::Stall) - 0.05).abs() < 0.01);
        assert!((share(Answer::Accept) - 0.55).abs() < 0.015);
        // A retry of the same message draws again, and not always the same answer.
        let again: Vec<Answer> = keys.iter().map(|k| a.answer(k.as_bytes())).collect();
        assert_ne!(first, again);
    }

    #[test]
    fn the_script_comes_first() {
        let p = Planner::new(FaultPlan {
            script: vec![Answer::ServerError, Answer::Stall],
            mix: Some(FaultMix {
                malformed: 1.0,
                ..FaultMix::new(1)
            }),
        });
        assert_eq!(p.answer(b"x"), Answer::ServerError);
        assert_eq!(p.answer(b"x"), Answer::Stall);
        assert_eq!(p.answer(b"x"), Answer::Malformed);
        p.set(FaultPlan::accept_all());
        assert_eq!(p.answer(b"x"), Answer::Accept);
    }
}
