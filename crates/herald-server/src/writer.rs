//! The open and click writer: handlers enqueue a hit and answer at once; one
//! task drains the queue and writes each batch (up to `max_batch` hits, or
//! what arrived within `linger`) in one transaction, so a burst of opens is a
//! handful of transactions. A hit that was enqueued is written exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_storage::Db;
use herald_storage::tracking::{Hit, record_hits};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// How hits are batched.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Hits written in one transaction at most.
    pub max_batch: usize,
    /// After the first hit of a batch, how long to wait for more.
    pub linger: Duration,
    /// Hits queued at most; beyond, requests wait for room.
    pub queue: usize,
    /// A request that cannot enqueue within this long is answered 503 (the database is stuck).
    pub enqueue_timeout: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            max_batch: 5000,
            linger: Duration::from_millis(50),
            queue: 100_000,
            enqueue_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of the writer, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) queued: AtomicU64,
    pub(crate) opens: AtomicU64,
    pub(crate) machine_opens: AtomicU64,
    pub(crate) clicks: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) lost: AtomicU64,
}

/// The writer task has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the open and click writer has stopped")]
pub struct WriterClosed;

/// Why a hit could not be queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnqueueError {
    /// The queue stayed full for the whole enqueue timeout.
    #[error("the open and click queue is full")]
    Full,
    /// The writer is gone.
    #[error(transparent)]
    Closed(#[from] WriterClosed),
}

enum Cmd {
    Hit(Hit),
    Flush(oneshot::Sender<()>),
}

/// The handle requests enqueue through.
#[derive(Clone)]
pub(crate) struct Tracker {
    tx: mpsc::Sender<Cmd>,
    enqueue_timeout: Duration,
    stats: Arc<WriterStats>,
}

/// Retry delays after a failed batch double up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Tries of one batch once the server is shutting down.
const SHUTDOWN_TRIES: u32 = 5;

impl Tracker {
    /// Starts the writer task over `db`.
    pub(crate) fn spawn(
        db: Db,
        settings: WriterSettings,
        machine_window: Duration,
        stats: Arc<WriterStats>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let window = i64::try_from(machine_window.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(writer_loop(db, rx, settings.clone(), window, stats.clone()));
        Self {
            tx,
            enqueue_timeout: settings.enqueue_timeout,
            stats,
        }
    }

    /// Queues `hit` for the next batch.
    pub(crate) async fn record(&self, hit: Hit) -> Result<(), EnqueueError> {
        // Counted before sending: the writer may finish the batch (and
        // subtract) before `send` returns here.
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match timeout(self.enqueue_timeout, self.tx.send(Cmd::Hit(hit))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(WriterClosed.into())
            }
            Err(_) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(EnqueueError::Full)
            }
        }
    }

    /// Waits until everything queued before this call is written.
    pub(crate) async fn flush(&self) -> Result<(), WriterClosed> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| WriterClosed)?;
        rx.await.map_err(|_| WriterClosed)
    }
}

async fn writer_loop(
    db: Db,
    mut rx: mpsc::Receiver<Cmd>,
    settings: WriterSettings,
    machine_window_ms: i64,
    stats: Arc<WriterStats>,
) {
    let max = settings.max_batch.max(1);
    let mut buf: Vec<Cmd> = Vec::with_capacity(max);
    loop {
        if rx.recv_many(&mut buf, max).await == 0 {
            return;
        }
        // Linger for more hits, unless someone is waiting for a flush.
        let deadline = Instant::now() + settings.linger;
        let mut scanned = 0;
        let mut closed = false;
        loop {
            let waiting = buf[scanned..].iter().any(|c| matches!(c, Cmd::Flush(_)));
            scanned = buf.len();
            if waiting || buf.len() >= max {
                break;
            }
            tokio::select! {
                n = rx.recv_many(&mut buf, max - scanned) => if n == 0 { closed = true; break },
                _ = sleep_until(deadline) => break,
            }
        }
        let mut hits = Vec::with_capacity(buf.len());
        let mut waiters = Vec::new();
        for c in buf.drain(..) {
            match c {
                Cmd::Hit(h) => hits.push(h),
                Cmd::Flush(w) => waiters.push(w),
            }
        }
        if !hits.is_empty() {
            write_batch(&db, &rx, &hits, machine_window_ms, &stats).await;
        }
        for w in waiters {
            // The waiter may have given up; nothing to tell then.
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

/// Writes one batch, retrying with backoff: while the server runs, until it
/// succeeds (the queue fills meanwhile and requests wait or get 503, never a
/// silent loss); once every sender is gone, a few times, then counts the loss.
async fn write_batch(
    db: &Db,
    rx: &mpsc::Receiver<Cmd>,
    hits: &[Hit],
    machine_window_ms: i64,
    stats: &WriterStats,
) {
    let mut backoff = Duration::from_millis(50);
    let mut tries = 0u32;
    loop {
        match record_hits(db, hits, machine_window_ms).await {
            Ok(r) => {
                stats.opens.fetch_add(r.opens, Ordering::Relaxed);
                stats
                    .machine_opens
                    .fetch_add(r.machine_opens, Ordering::Relaxed);
                stats.clicks.fetch_add(r.clicks, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.queued.fetch_sub(hits.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tries += 1;
                if rx.is_closed() && tries >= SHUTDOWN_TRIES {
                    tracing::error!(hits = hits.len(), error = %e, "giving up on a batch of opens and clicks at shutdown");
                    stats.lost.fetch_add(hits.len() as u64, Ordering::Relaxed);
                    stats.queued.fetch_sub(hits.len() as u64, Ordering::Relaxed);
                    return;
                }
                tracing::warn!(hits = hits.len(), error = %e, retry_in = ?backoff, "writing opens and clicks failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
