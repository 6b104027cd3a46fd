//! Deterministic generated data for the demo and the benchmarks: contacts
//! with addresses, locales and attributes, and a purchase history (each
//! order a `sku`, mostly the contact's favourite one) and app opens, written
//! as CSV so they go through the real import path.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FIRST_NAMES: [&str; 12] = [
    "Ann", "Bo", "Chen", "Dara", "Eli", "Fang", "Gus", "Hui", "Ines", "Jun", "Kai", "Lei",
];
const REGIONS: [&str; 5] = ["guangdong", "zhejiang", "beijing", "shanghai", "sichuan"];
const ZONES: [&str; 4] = [
    "Asia/Shanghai",
    "Asia/Shanghai",
    "Europe/Berlin",
    "America/New_York",
];
const SKUS: [&str; 6] = [
    "tea-oolong",
    "tea-green",
    "mug",
    "kettle",
    "tea-black",
    "gift-box",
];
const DAY_MS: i64 = 86_400_000;
/// How often an order is of the contact's favourite product, so that
/// `top.order_placed.sku` has a clear winner for most repeat buyers.
const FAVOURITE_SHARE: f64 = 0.6;

/// Writes `n` contacts to `path` as CSV.
pub fn contacts_csv(path: &Path, n: usize, seed: u64) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        w,
        "external_id,email,phone,timezone,locale,tags,consent_sms,push_token,push_platform,first_name,region,vip_level"
    )?;
    for i in 0..n {
        let tags = if rng.random_bool(0.03) {
            "wholesale"
        } else if rng.random_bool(0.2) {
            "newsletter;app"
        } else {
            ""
        };
        let locale = if rng.random_bool(0.3) { "zh-CN" } else { "en" };
        // A few contacts have no email: they are suppressed (no_address), not lost.
        let email = if rng.random_bool(0.02) {
            String::new()
        } else {
            format!("user{i}@example.com")
        };
        // About a third installed the app and allowed notifications.
        let (token, platform) = if rng.random_bool(0.35) {
            let os = if rng.random_bool(0.5) {
                "android"
            } else {
                "ios"
            };
            (format!("fcm-token-{i:07}-{:08x}", rng.random::<u32>()), os)
        } else {
            (String::new(), "")
        };
        writeln!(
            w,
            "u{i:07},{email},+86138{:08},{},{locale},{tags},{},{token},{platform},{},{},{}",
            i % 100_000_000,
            ZONES[rng.random_range(0..ZONES.len())],
            rng.random_bool(0.3),
            FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
            REGIONS[rng.random_range(0..REGIONS.len())],
            rng.random_range(0..4),
        )?;
    }
    w.flush()
}

/// Writes a purchase and app-open history for `n` contacts to `path` as CSV; returns the event count.
pub fn events_csv(path: &Path, n: usize, now_ms: i64, seed: u64) -> std::io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(w, "external_id,name,at,value,event_id,sku")?;
    let mut count = 0u64;
    for i in 0..n {
        let orders = rng.random_range(0..7);
        // Each contact has their own rhythm; some stopped buying a while ago.
        let gap_days = rng.random_range(7..60);
        let last = rng.random_range(0..200);
        let favourite = SKUS[rng.random_range(0..SKUS.len())];
        for k in 0..orders {
            let at = now_ms - (last + k * gap_days) as i64 * DAY_MS - rng.random_range(0..DAY_MS);
            let sku = if rng.random_bool(FAVOURITE_SHARE) {
                favourite
            } else {
                SKUS[rng.random_range(0..SKUS.len())]
            };
            let value = rng.random_range(20..400);
            writeln!(
                w,
                "u{i:07},order_placed,{},{value},o-{i}-{k},{sku}",
                iso(at)
            )?;
            count += 1;
        }
        for k in 0..rng.random_range(0..6) {
            let at =
                now_ms - rng.random_range(0..120) as i64 * DAY_MS - rng.random_range(0..DAY_MS);
            writeln!(w, "u{i:07},app_open,{},,a-{i}-{k},", iso(at))?;
            count += 1;
        }
    }
    w.flush()?;
    Ok(count)
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
