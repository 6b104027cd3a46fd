//! Load benchmark of the open pixel with wrk on loopback: `cargo bench -p
//! herald-server --bench opens` (needs `wrk` on PATH: `apt-get install wrk`).
//! For each database it prints requests/s, latency percentiles, the ratio to
//! `/healthz` (HTTP alone), and checks that every open answered 200 was
//! recorded exactly once. Settings: HERALD_BENCH_SECONDS (10),
//! HERALD_BENCH_CONNECTIONS (64), HERALD_BENCH_MESSAGES (10000),
//! HERALD_BENCH_BACKENDS (`sqlite,postgres`).

use std::process::Command;
use std::time::Duration;

use herald_domain::token::{TokenKind, TokenSigner};
use herald_server::{AppState, ServerConfig};
use herald_storage::Db;
use herald_tests::{Backend, TestDb};

const BROWSER: &str =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko)";
const TARGET_RPS: f64 = 20_000.0;
const TARGET_P99_MS: f64 = 20.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What wrk's `done` hook printed.
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    seconds: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl WrkResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

const LUA_DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HERALD_WRK %d %d %d %f %f %f %f %f\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"#;

fn wrk(url: &str, script: &std::path::Path, seconds: u64, connections: u64) -> WrkResult {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("HERALD_WRK "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    WrkResult {
        requests: f[0] as u64,
        non_2xx: f[1] as u64,
        socket_errors: f[2] as u64,
        seconds: f[3],
        p50_us: f[4],
        p90_us: f[5],
        p99_us: f[6],
        max_us: f[7],
    }
}

async fn fixture(db: &Db, n: i64) {
    let now = chrono::Utc::now().timestamp_millis();
    herald_storage::bench::delivered_messages(db, n, now)
        .await
        .expect("fixture");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Runs the benchmark on `backend`; false when recorded opens differ from answered ones.
async fn bench(backend: Backend, seconds: u64, connections: u64, messages: i64) -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(test_db) = TestDb::new(backend, dir.path()).await else {
        return true;
    };
    let db = Db::connect(&test_db.url).await.expect("connect");
    fixture(&db, messages).await;
    let signer = TokenSigner::new(b"bench-secret-0123456789abcdef");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let state = AppState::new(db.clone(), signer.clone(), ServerConfig::new(&base));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(herald_server::serve(
        listener,
        None,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let paths: Vec<String> = (1..=messages)
        .map(|i| format!("\"/o/{}\"", signer.sign_message(TokenKind::Open, i)))
        .collect();
    let opens = dir.path().join("opens.lua");
    std::fs::write(
        &opens,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nwrk.headers[\"User-Agent\"] = \"{BROWSER}\"\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n{LUA_DONE}",
            paths.join(",")
        ),
    )
    .expect("write lua");
    let plain = dir.path().join("plain.lua");
    std::fs::write(&plain, LUA_DONE).expect("write lua");

    let base_wrk = base.clone();
    let health = tokio::task::spawn_blocking({
        let plain = plain.clone();
        move || {
            wrk(
                &format!("{base_wrk}/healthz"),
                &plain,
                seconds.min(5),
                connections,
            )
        }
    })
    .await
    .expect("wrk");
    let base_wrk = base.clone();
    let r = tokio::task::spawn_blocking(move || {
        wrk(&format!("{base_wrk}/o/x"), &opens, seconds, connections)
    })
    .await
    .expect("wrk");
    let flush_started = std::time::Instant::now();
    state.flush().await.expect("flush");
    let flush_ms = flush_started.elapsed().as_secs_f64() * 1000.0;
    let metrics = herald_channels::http_client_builder()
        .build()
        .expect("an HTTP client")
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let answered = metric(
        &metrics,
        "herald_tracking_requests_total{kind=\"open\",status=\"200\"}",
    );
    let batches = metric(&metrics, "herald_tracking_batches_total");
    let recorded = herald_storage::bench::total_opens(&db)
        .await
        .expect("opens recorded") as u64;
    let _ = stop.send(());
    server.await.expect("server").expect("serve");
    test_db.drop_db().await;

    let ok_wrk = r.requests - r.non_2xx;
    let name = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    println!(
        "open pixel, {name}, {messages} messages, wrk -t1 -c{connections} -d{seconds}s on loopback, 2 cores shared:"
    );
    println!(
        "  {:.0} requests/s ({:.2}x of /healthz at {:.0}/s); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.rps(),
        r.rps() / health.rps(),
        health.rps(),
        r.p50_us / 1000.0,
        r.p90_us / 1000.0,
        r.p99_us / 1000.0,
        r.max_us / 1000.0
    );
    println!(
        "  answered 200: {answered} (wrk read {ok_wrk} 2xx, {} non-2xx, {} socket errors; the rest were in flight at its deadline); opens recorded: {recorded}; {batches} transactions; final flush {flush_ms:.0} ms",
        r.non_2xx, r.socket_errors
    );
    // wrk stops at its deadline without reading the responses still in
    // flight (at most one a connection): the server answered them, wrk did not count them.
    let exact = recorded == answered && (ok_wrk..=ok_wrk + connections).contains(&answered);
    println!(
        "  targets: >= {TARGET_RPS:.0} req/s {}; p99 < {TARGET_P99_MS} ms {}; recorded == answered {}",
        if r.rps() >= TARGET_RPS {
            "met"
        } else {
            "MISSED"
        },
        if r.p99_us / 1000.0 < TARGET_P99_MS {
            "met"
        } else {
            "MISSED"
        },
        if exact { "yes" } else { "NO" },
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    exact
}

fn main() {
    let seconds = env_or("HERALD_BENCH_SECONDS", 10u64);
    let connections = env_or("HERALD_BENCH_CONNECTIONS", 64u64);
    let messages = env_or("HERALD_BENCH_MESSAGES", 10_000i64);
    let backends =
        std::env::var("HERALD_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut exact = true;
    for b in backends.split(',') {
        let backend = match b.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres,
            other => panic!("unknown backend `{other}`: use sqlite, postgres"),
        };
        exact &= rt.block_on(bench(backend, seconds, connections, messages));
    }
    if !exact {
        std::process::exit(1);
    }
}
