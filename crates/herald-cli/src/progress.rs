//! Progress of `herald send` while it runs: a bar with the rate and the time
//! left on a terminal, and a plain line every [`LINE_EVERY`] otherwise (a log
//! file, CI), so a rate-limited send of 100,000 emails is never 33 silent
//! minutes. It reads the run's counts from the database, like `herald
//! status`, so it shows what the workers actually settled, on stderr (stdout
//! keeps the summary).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_engine::store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a line is printed when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(2);

/// How often the bar is refreshed on a terminal.
pub const BAR_EVERY: Duration = Duration::from_millis(500);

/// What the run has settled so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Messages settled (sent, delivered, failed, suppressed...): neither due nor later.
    pub done: i64,
    /// Messages of the run to settle now: `done` plus those due or being sent.
    pub total: i64,
    /// Planned for later (quiet hours, best hour, rollout): not part of this send.
    pub later: i64,
}

/// A rate in messages per second and the time left at that rate.
pub fn rate_and_eta(done: i64, total: i64, elapsed: Duration) -> (f64, Option<Duration>) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || done <= 0 {
        return (0.0, None);
    }
    let rate = done as f64 / secs;
    let left = (total - done).max(0) as f64;
    (rate, Some(Duration::from_secs_f64(left / rate)))
}

/// `1h02m`, `3m05s`, `12s`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The line printed when stderr is not a terminal.
pub fn line(s: Snapshot, elapsed: Duration) -> String {
    let (rate, eta) = rate_and_eta(s.done, s.total, elapsed);
    let percent = if s.total > 0 {
        s.done as f64 * 100.0 / s.total as f64
    } else {
        0.0
    };
    format!(
        "progress: {}/{} messages settled ({percent:.1}%), {rate:.1}/s, eta {}{}",
        s.done,
        s.total,
        eta.map_or_else(|| "unknown".to_string(), short_duration),
        if s.later > 0 {
            format!("; {} planned for later", s.later)
        } else {
            String::new()
        }
    )
}

async fn snapshot(store: &dyn Store, run_id: i64) -> Option<Snapshot> {
    let now = chrono::Utc::now().timestamp_millis();
    let counts = store.run_counts(run_id).await.ok()?;
    let (due, later) = store.run_pending(run_id, now).await.ok()?;
    let all: i64 = counts.rows.iter().map(|r| r.3).sum();
    let total = (all - later).max(0);
    Some(Snapshot {
        done: (total - due).max(0),
        total,
        later,
    })
}

/// The progress display of one run; [`Progress::finish`] ends it.
pub struct Progress {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts showing the progress of `run_id` on stderr.
    pub fn start(store: Arc<dyn Store>, run_id: i64) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let bar = terminal.then(|| {
                let pb = ProgressBar::new(0);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta}) {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                pb
            });
            let every = if terminal { BAR_EVERY } else { LINE_EVERY };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
                let Some(s) = snapshot(store.as_ref(), run_id).await else {
                    continue;
                };
                match &bar {
                    Some(pb) => {
                        pb.set_length(u64::try_from(s.total).unwrap_or(0));
                        pb.set_position(u64::try_from(s.done).unwrap_or(0));
                        if s.later > 0 {
                            pb.set_message(format!("{} for later", s.later));
                        }
                    }
                    None => eprintln!("{}", line(s, started.elapsed())),
                }
            }
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
        });
        Self { stop, task }
    }

    /// Stops the display (the summary follows on stdout).
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_the_count_the_rate_and_the_time_left() {
        let s = Snapshot {
            done: 500,
            total: 2_000,
            later: 0,
        };
        assert_eq!(
            line(s, Duration::from_secs(10)),
            "progress: 500/2000 messages settled (25.0%), 50.0/s, eta 30s"
        );
        let s = Snapshot {
            done: 0,
            total: 100_000,
            later: 7,
        };
        assert_eq!(
            line(s, Duration::from_secs(1)),
            "progress: 0/100000 messages settled (0.0%), 0.0/s, eta unknown; 7 planned for later"
        );
        assert_eq!(short_duration(Duration::from_secs(2_000)), "33m20s");
        assert_eq!(short_duration(Duration::from_secs(3_720)), "1h02m");
    }
}
