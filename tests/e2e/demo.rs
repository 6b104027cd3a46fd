//! `herald demo` runs the whole loop and runs again without cleanup.

use herald_tests::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_twice_and_prints_the_summary() {
    let p = crate::project();
    // The demo makes its own SQLite database; this URL is ignored by it.
    let db = TestDb::new(herald_tests::Backend::Sqlite, p.path())
        .await
        .expect("sqlite");
    for _ in 0..2 {
        let run = p.herald(&db, &["demo", "--contacts", "600", "--dir", "demo"]);
        run.expect_code(0);
        let out = run.stdout();
        assert!(out.contains("imported 600 contacts"), "{out}");
        // The triggered campaign: lapsed buyers back in the app get their offer on the spot.
        let comeback = out
            .lines()
            .find(|l| l.starts_with("campaign `comeback` (triggered by app_open)"))
            .expect("the triggered campaign's line");
        let sent: usize = comeback
            .split(" sent (")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("a sent count");
        assert!(sent > 0, "{comeback}");
        assert!(
            out.contains("discount") && out.contains("reminder") && out.contains("holdout"),
            "{out}"
        );
        // "the built-in servers received E email(s) over C SMTP connection(s), S SMS and P push notification(s)"
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("the built-in servers received "))
            .expect("the servers' count line");
        let numbers: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 4, "{line}");
        let (emails, sms, push) = (numbers[0], numbers[2], numbers[3]);
        assert!(
            emails > 0 && sms > 0 && push > 0,
            "all three channels are used: {line}"
        );
        let received = emails + sms + push;
        let dispatched: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("dispatched "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("the dispatch line");
        assert!(received > 0);
        assert_eq!(
            received, dispatched,
            "every accepted message reached the server: {out}"
        );
    }
}
