//! The HTTP listener that faces the internet, with the limits that keep it
//! answering under idle and slow ("slowloris") connections: a header-read
//! timeout, an idle keep-alive timeout, a body-read timeout and a cap on open
//! connections. Past the cap the connection waiting longest without a request
//! in progress is closed, so a newcomer (a recipient opening an email) still
//! gets in while thousands of idle sockets wait.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, so it cannot tell "idle" from "slow headers";
//! this module watches bytes as they arrive instead: a connection with no
//! request in progress is idle until the first byte of a request arrives, and
//! from then on has [`HttpLimits::header_timeout`] to finish the request head.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Sleep, timeout};
use tower::ServiceExt;

/// A request head must arrive whole within this long of its first byte.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no request this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request body must arrive whole within this long of its head.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open HTTP connections at most, before the file-descriptor limit lowers it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept back from the connection cap for everything else
/// the process opens: database pool, SQLite files, SMTP sessions, logs.
pub const FD_RESERVE: u64 = 256;
/// The smallest cap the file-descriptor limit may lower the configured one to.
const MIN_CONNECTIONS: usize = 16;
/// How long the accept loop waits after an accept error (out of file
/// descriptors) before trying again, having freed a connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long connections may finish their requests after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The sweeper looks at every connection this many times per shortest timeout...
const SWEEPS_PER_TIMEOUT: u32 = 8;
/// ...but never more often than this...
const MIN_SWEEP: Duration = Duration::from_millis(5);
/// ...nor less often than this.
const MAX_SWEEP: Duration = Duration::from_millis(500);

/// The limits of the HTTP listener (`[tracking]` in `herald.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// From the first byte of a request to the end of its head.
    pub header_timeout: Duration,
    /// A connection with no request in progress and no byte of one is closed after this.
    pub idle_timeout: Duration,
    /// From the end of a request's head to the end of its body; a late body
    /// fails the request (400) and closes the connection.
    pub body_timeout: Duration,
    /// Open connections at most; the oldest idle one is closed for a newcomer.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The connection cap for `configured` under a file-descriptor soft limit of
/// `fd_limit` of which `reserve` are kept for everything else: a cap above
/// what the process can open would let accept fail before any connection is shed.
pub fn effective_cap(configured: usize, fd_limit: Option<u64>, reserve: u64) -> usize {
    let Some(limit) = fd_limit else {
        return configured.max(1);
    };
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room.max(MIN_CONNECTIONS)).max(1)
}

/// The process's file-descriptor soft limit, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some(r.rlim_cur)
}

/// Raises the process's file-descriptor soft limit to its hard limit (a
/// server holds one per connection; the soft limit is often 1,024) and
/// returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
    }
    Ok(r.rlim_cur)
}

/// What the listener knows of one connection; shared with its task.
struct Conn {
    id: u64,
    /// Requests in the router (0 or 1 on HTTP/1.1 without pipelining).
    busy: AtomicU32,
    /// When the connection last had no request: accepted, or last answered (listener clock).
    free_since: AtomicU64,
    /// When the first byte of a request not yet in the router arrived; 0 for none.
    head_started: AtomicU64,
    /// Asks the connection's task to close it if it is not busy.
    close: Notify,
    /// Set while a close asked for is pending, so that the next newcomer
    /// sheds another connection rather than asking the same one again.
    closing: AtomicBool,
}

/// Every open connection, and the listener's clock (milliseconds since start, never 0).
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    start: Instant,
}

impl Table {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // A panic while holding the lock leaves only counters behind: go on.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, id: u64) -> (Arc<Conn>, usize) {
        let c = Arc::new(Conn {
            id,
            busy: AtomicU32::new(0),
            free_since: AtomicU64::new(self.now()),
            head_started: AtomicU64::new(0),
            close: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let mut m = self.lock();
        m.insert(id, c.clone());
        (c, m.len())
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Makes room for a newcomer: asks one connection with no request in the
    /// router (other than `except`) to close. Connections that have sent no
    /// byte of a request go first, longest idle first; then those in the
    /// middle of a request head, the oldest head first, so that a newcomer
    /// whose request has just arrived outlives a flood of idle and slowloris
    /// connections. A connection already asked is not asked again; when every
    /// candidate has been asked, room is on its way and the newcomer stays.
    /// False only when every other connection is in the router.
    fn shed_oldest_idle(&self, except: u64) -> bool {
        let m = self.lock();
        let mut closing = false;
        let victim = m
            .values()
            .filter(|c| c.id != except && c.busy.load(Ordering::Acquire) == 0)
            .filter(|c| {
                let asked = c.closing.load(Ordering::Acquire);
                closing |= asked;
                !asked
            })
            .min_by_key(|c| match c.head_started.load(Ordering::Acquire) {
                0 => (0, c.free_since.load(Ordering::Acquire)),
                head => (1, head),
            });
        match victim {
            Some(c) => {
                c.closing.store(true, Ordering::Release);
                c.close.notify_one();
                true
            }
            None => closing,
        }
    }

    /// Asks every connection past its idle or header timeout to close.
    fn sweep(&self, limits: &HttpLimits) {
        let now = self.now();
        let header = u64::try_from(limits.header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        for c in self.lock().values() {
            if c.busy.load(Ordering::Acquire) > 0 {
                continue;
            }
            let head = c.head_started.load(Ordering::Acquire);
            let expired = if head != 0 {
                now.saturating_sub(head) > header
            } else {
                now.saturating_sub(c.free_since.load(Ordering::Acquire)) > idle
            };
            if expired {
                c.close.notify_one();
            }
        }
    }
}

/// A socket that notes when the first byte of a request head arrives.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.conn.busy.load(Ordering::Acquire) == 0
            && this.conn.head_started.load(Ordering::Acquire) == 0
        {
            this.conn
                .head_started
                .store(this.table.now(), Ordering::Release);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Marks a connection busy while a request is in the router.
struct Busy {
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl Busy {
    fn start(conn: &Arc<Conn>, table: &Arc<Table>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        conn.head_started.store(0, Ordering::Release);
        Self {
            conn: conn.clone(),
            table: table.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .free_since
            .store(self.table.now(), Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request body failed to arrive within [`HttpLimits::body_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once `rx` holds true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Serves `router` on `listener` under `limits` until `stop` turns true;
/// then lets requests in progress finish (for a while) and returns.
pub(crate) async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let table = Arc::new(Table {
        conns: Mutex::new(HashMap::new()),
        start: Instant::now(),
    });
    let sweeper = tokio::spawn(sweep(table.clone(), limits.clone()));
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    let mut accept_errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Small responses should leave at once, not wait for a delayed ACK.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                next_id += 1;
                let (conn, open) = table.insert(next_id);
                if open > limits.max_connections && !table.shed_oldest_idle(next_id) {
                    // Every other connection is mid-request: this one waits its turn elsewhere.
                    table.remove(next_id);
                    continue;
                }
                conns.spawn(serve_conn(
                    tcp,
                    peer,
                    conn,
                    table.clone(),
                    router.clone(),
                    limits.body_timeout,
                    stop.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: free one, then go on.
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors, "accepting an HTTP connection failed");
                }
                table.shed_oldest_idle(0);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    sweeper.abort();
    Ok(())
}

/// Closes connections past their timeouts, until aborted.
async fn sweep(table: Arc<Table>, limits: HttpLimits) {
    let every = (limits.header_timeout.min(limits.idle_timeout) / SWEEPS_PER_TIMEOUT)
        .clamp(MIN_SWEEP, MAX_SWEEP);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        table.sweep(&limits);
    }
}

/// Serves one connection until it ends, is closed for being idle, slow or
/// the oldest idle one over the cap, or shutdown has let it finish.
async fn serve_conn(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    conn: Arc<Conn>,
    table: Arc<Table>,
    router: Router,
    body_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        inner: tcp,
        conn: conn.clone(),
        table: table.clone(),
    });
    let (svc_conn, svc_table) = (conn.clone(), table.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::start(&svc_conn, &svc_table);
        let mut req = req.map(|b| {
            Body::new(TimedBody {
                inner: b,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
            })
        });
        // The console's sign-in limiter counts per client address.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await;
            drop(busy);
            resp
        }
    });
    let http = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(http);
    let mut draining = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "an HTTP connection ended with an error");
                }
                break;
            }
            () = conn.close.notified() => {
                // Never cut a request short; an idle one is simply dropped.
                if conn.busy.load(Ordering::Acquire) == 0 {
                    break;
                }
                // Busy after all: it may be asked again once it is idle.
                conn.closing.store(false, Ordering::Release);
            }
            () = stopped(&mut stop), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
    table.remove(conn.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_under_the_fd_limit() {
        assert_eq!(effective_cap(4096, None, FD_RESERVE), 4096);
        assert_eq!(effective_cap(4096, Some(1024), FD_RESERVE), 768);
        assert_eq!(effective_cap(100, Some(1024), FD_RESERVE), 100);
        assert_eq!(effective_cap(4096, Some(100), FD_RESERVE), MIN_CONNECTIONS);
    }

    fn table() -> Table {
        Table {
            conns: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }

    /// Which connection the next shed asks to close.
    fn shed(t: &Table) -> Option<u64> {
        let before: Vec<u64> = t
            .lock()
            .values()
            .filter(|c| c.closing.load(Ordering::Acquire))
            .map(|c| c.id)
            .collect();
        if !t.shed_oldest_idle(0) {
            return None;
        }
        t.lock()
            .values()
            .find(|c| c.closing.load(Ordering::Acquire) && !before.contains(&c.id))
            .map(|c| c.id)
    }

    #[test]
    fn a_flood_is_shed_before_a_request_that_has_begun() {
        let t = table();
        // 1: a newcomer whose request head has just begun arriving (a real
        // client); 2 and 3: idle flood connections accepted after it;
        // 4: a slowloris whose head began long before 1's; 5: busy.
        let (c1, _) = t.insert(1);
        let (c2, _) = t.insert(2);
        let (c3, _) = t.insert(3);
        let (c4, _) = t.insert(4);
        let (c5, _) = t.insert(5);
        c1.free_since.store(10, Ordering::Release);
        c2.free_since.store(20, Ordering::Release);
        c3.free_since.store(30, Ordering::Release);
        c4.head_started.store(5, Ordering::Release);
        c1.head_started.store(40, Ordering::Release);
        c5.busy.store(1, Ordering::Release);
        assert_eq!(
            shed(&t),
            Some(2),
            "the longest idle without a byte goes first"
        );
        assert_eq!(shed(&t), Some(3), "never the same one twice");
        assert_eq!(shed(&t), Some(4), "then the oldest unfinished head");
        assert_eq!(shed(&t), Some(1));
        // Every candidate asked already: room is on its way, the newcomer stays.
        assert!(t.shed_oldest_idle(0), "the newcomer must not be dropped");
        assert_eq!(shed(&t), None, "a connection in the router is never shed");
        for c in [&c1, &c2, &c3, &c4] {
            t.remove(c.id);
        }
        assert!(!t.shed_oldest_idle(0), "only busy connections: no room");
        drop((c1, c2, c3, c4, c5));
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let soft = raise_fd_limit().unwrap();
        assert_eq!(fd_limit(), Some(soft));
    }
}
