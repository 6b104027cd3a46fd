//! `herald-bench run`: a whole run, end to end, to an unlimited outbox, as
//! a marketer runs it: generated contacts, then the real `herald send` as a
//! child process, with the product's defaults (no `[dispatch]` or
//! concurrency setting unless `--batch` or `--workers` asks for one). Timed
//! as a whole process, start included; its CPU (user + system) and peak
//! memory come from the kernel's accounting of the child, and where its
//! time went from the stage line `herald send` prints. Each size runs in a
//! `run-one` process of its own, which generates the data and then waits
//! for `herald send`, its only child.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use herald_storage::Db;

use crate::peak_rss;

/// Writes the bench project: the outbox for email, nothing else set but
/// what is asked for; one campaign to everyone with an email, with a goal
/// (so each page written looks for goal events already stored, as a real
/// campaign's does).
fn write_project(
    dir: &Path,
    url: &str,
    batch: Option<u32>,
    workers: Option<usize>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("config/campaigns"))?;
    std::fs::create_dir_all(dir.join("templates/bench"))?;
    let mut dispatch = String::new();
    if let Some(b) = batch {
        dispatch.push_str(&format!("batch = {b}\n"));
    }
    if let Some(w) = workers {
        dispatch.push_str(&format!("workers = {w}\n"));
    }
    if !dispatch.is_empty() {
        dispatch.insert_str(0, "\n[dispatch]\n");
    }
    std::fs::write(
        dir.join("config/herald.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n\n[tracking]\npublic_url = \"https://t.example.com\"\n\n[channels.email]\nprovider = \"outbox\"\n{dispatch}"
        ),
    )?;
    std::fs::write(
        dir.join("config/campaigns/everyone.toml"),
        "name = \"everyone\"\nwhere = 'email contains \"@\"'\nchannels = [\"email\"]\nholdout = 0.1\ngoal = { event = \"order_placed\", within = \"3d\" }\nsecondary_goals = [\"app_open\"]\n\n[[variants]]\nname = \"a\"\nemail = { subject = \"Hello {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }\n\n[[variants]]\nname = \"b\"\nemail = { subject = \"Hi {{contact.external_id}}\", template = \"bench/hello.email.hbs\" }\n",
    )?;
    std::fs::write(
        dir.join("templates/bench/hello.email.hbs"),
        "<p>Hello {{contact.external_id}},</p>\n<p>See <a href=\"{{track \"https://shop.example.com/new\"}}\">what is new</a>.</p>\n<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p>\n",
    )?;
    Ok(())
}

/// The user and system seconds and the peak resident memory (bytes) of
/// this process's children that ended (here: the one `herald send`).
pub(crate) fn children_usage() -> (f64, f64, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(u.ru_utime),
        secs(u.ru_stime),
        u.ru_maxrss.max(0) as u64 * 1024,
    )
}

/// The number after `prefix` in `text` (`dispatched 82735 message(s)`).
pub(crate) fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let at = text.find(prefix)? + prefix.len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .parse()
        .ok()
}

/// One measured run: generates the data, runs `herald send` on it, prints one JSON line.
pub async fn run_one(
    recipients: usize,
    database: &str,
    batch: Option<u32>,
    workers: Option<usize>,
    events_per_contact: usize,
) -> anyhow::Result<()> {
    let herald = crate::herald_exe()?;
    let t = Instant::now();
    {
        let db = Db::connect(database).await?;
        let options = crate::segments::BenchOptions {
            contacts: recipients,
            events: recipients * events_per_contact,
            seed: 3,
        };
        crate::segments::load(&db, &options).await?;
        crate::segments::analyze(&db).await?;
    }
    let load_s = t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    write_project(dir.path(), database, batch, workers)?;
    let started = Instant::now();
    let out = Command::new(herald)
        .current_dir(dir.path())
        .args(["send", "everyone"])
        .env("HERALD_SECRET", "bench-secret-0123456789abcdef")
        .env_remove("HERALD_DATABASE_URL")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_TEMPLATES")
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    let (user_s, sys_s, peak) = children_usage();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "herald send failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stages = stdout
        .lines()
        .find(|l| l.starts_with("time: "))
        .unwrap_or_default();
    let line = serde_json::json!({
        "recipients": recipients,
        "audience": number_after(&stdout, "audience "),
        "accepted": number_after(&stdout, "dispatched "),
        "load_s": load_s,
        "seconds": seconds,
        "user_s": user_s,
        "sys_s": sys_s,
        "peak_rss": peak,
        "load_peak_rss": peak_rss(),
        "stages": stages,
    });
    println!("{line}");
    Ok(())
}

/// Runs `bench run-one` for each size and database in child processes and prints the figures.
pub fn run(
    sizes: &[usize],
    postgres: Option<&str>,
    batch: Option<u32>,
    workers: Option<usize>,
    events_per_contact: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut targets: Vec<(&str, String)> = vec![("SQLite", String::new())];
    if let Some(pg) = postgres {
        targets.push(("PostgreSQL", pg.to_string()));
    }
    let exe = std::env::current_exe()?;
    for (name, url) in &targets {
        let mut peaks = Vec::new();
        for &n in sizes {
            let url = if url.is_empty() {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(format!("run-{n}.db")).display()
                )
            } else {
                url.clone()
            };
            let out = Command::new(&exe)
                .args([
                    "run-one",
                    "--recipients",
                    &n.to_string(),
                    "--database",
                    &url,
                    "--events-per-contact",
                    &events_per_contact.to_string(),
                ])
                .args(
                    batch
                        .iter()
                        .flat_map(|b| ["--batch".to_string(), b.to_string()]),
                )
                .args(
                    workers
                        .iter()
                        .flat_map(|w| ["--workers".to_string(), w.to_string()]),
                )
                .output()?;
            if !out.status.success() {
                anyhow::bail!(
                    "{name} run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            let sent = f("accepted");
            let total = f("seconds");
            let cpu = f("user_s") + f("sys_s");
            println!(
                "{name:<10} {n:>9} contacts{}: `herald send` planned {:.0} and sent {sent:.0} in {total:.2}s = {:.0} sent/s as a whole process; CPU {cpu:.2}s (user {:.2}, system {:.2}) = {:.1} µs a message; peak RSS {:.1} MB (data load {:.1}s, not counted)",
                if events_per_contact > 0 {
                    format!(" ({events_per_contact} events each)")
                } else {
                    String::new()
                },
                f("audience"),
                sent / total,
                f("user_s"),
                f("sys_s"),
                1e6 * cpu / sent.max(1.0),
                f("peak_rss") / 1e6,
                f("load_s"),
            );
            println!("           {}", v["stages"].as_str().unwrap_or_default());
            peaks.push((n, f("peak_rss")));
        }
        if let [first, .., last] = peaks.as_slice() {
            println!(
                "{name:<10} peak memory at {} vs {} contacts: {:.2}x",
                last.0,
                first.0,
                last.1 / first.1.max(1.0)
            );
        }
    }
    Ok(())
}
