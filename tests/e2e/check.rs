//! `herald check`: a typo points at file, line and column (exit 2); a template
//! with a missing variable fails the check, and `send` then sends nothing; so
//! do templates that include one another in a ring.

use herald_sinks::SmtpSink;
use herald_tests::{Backend, Project, TestDb};

use crate::send::{shop_project, start_sink};
use crate::setup;

fn typo_project(p: &Project) {
    p.write(
        "config/herald.toml",
        "[channels.email]\nprovider = \"outbox\"\nprot = 25\n",
    );
    p.write(
        "config/segments/all.toml",
        "name = \"all\"\nwhere = '''\n  attr.region == \"guangdong\"\n'''\n",
    );
}

async fn typo_points_at_line_and_column(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    typo_project(&p);
    let run = p.herald(&db, &["check"]);
    run.expect_code(2);
    let err = run.stderr();
    assert!(err.contains("unknown field `prot`"), "{err}");
    assert!(err.contains("--> config/herald.toml:3:1"), "{err}");
    assert!(
        err.contains("`port`"),
        "the hint names the valid key: {err}"
    );
    // The segment's mistake is reported too, at its place inside the TOML string.
    assert!(err.contains("--> config/segments/all.toml:3:3"), "{err}");
    assert!(err.contains("attrs.region"), "{err}");
    assert!(
        err.contains("^^^^^^^^^^^"),
        "a caret under the mistake: {err}"
    );
    db.drop_db().await;
}

/// The shop project (its contacts imported) with `templates` written over
/// its own, and the SMTP sink it sends to; `None` when PostgreSQL is skipped.
async fn shop_with_templates(
    backend: Backend,
    templates: &[(&str, &str)],
) -> Option<(Project, TestDb, SmtpSink)> {
    let (p, db) = setup(backend).await?;
    let sink = start_sink().await;
    shop_project(&p, sink.addr().port());
    for (path, text) in templates {
        p.write(path, text);
    }
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    Some((p, db, sink))
}

async fn missing_variable_fails_check_and_sends_nothing(backend: Backend) {
    let Some((p, db, sink)) = shop_with_templates(
        backend,
        &[(
            "templates/shop/hello.email.hbs",
            "<p>Hi {{contact.attrs.nickname}}</p><a href=\"{{unsubscribe_url}}\">unsubscribe</a>",
        )],
    )
    .await
    else {
        return;
    };
    let run = p.herald(&db, &["check"]);
    run.expect_code(2);
    assert!(
        run.stderr()
            .contains("variable `contact.attrs.nickname` is missing"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("shop/hello.email.hbs"),
        "{}",
        run.stderr()
    );
    let run = p.herald(&db, &["send", "hello"]);
    run.expect_code(2);
    assert!(
        run.stderr().contains("nothing was sent"),
        "{}",
        run.stderr()
    );
    assert_eq!(sink.count(), 0);
    db.drop_db().await;
}

/// Handlebars would recurse until the process ran out of stack: a daemon would
/// die on the first such message, and again after every restart.
async fn a_template_that_includes_itself_is_refused_before_any_send(backend: Backend) {
    let Some((p, db, sink)) = shop_with_templates(
        backend,
        &[
            (
                "templates/shop/hello.email.hbs",
                "<p>Hi</p>{{#if contact.email}}{{> shop/footer.email.hbs}}{{/if}}",
            ),
            (
                "templates/shop/footer.email.hbs",
                "<a href=\"{{unsubscribe_url}}\">unsubscribe</a>{{> shop/hello.email.hbs}}",
            ),
        ],
    )
    .await
    else {
        return;
    };
    for args in [&["check"][..], &["send", "hello"]] {
        let run = p.herald(&db, args);
        run.expect_code(2);
        assert!(
            run.stderr().contains(
                "shop/footer.email.hbs: includes itself through partials (shop/footer.email.hbs > shop/hello.email.hbs > shop/footer.email.hbs)"
            ),
            "{args:?}: {}",
            run.stderr()
        );
    }
    assert_eq!(sink.count(), 0);
    db.drop_db().await;
}

on_both_databases!(
    typo_points_at_line_and_column,
    missing_variable_fails_check_and_sends_nothing,
    a_template_that_includes_itself_is_refused_before_any_send
);

async fn changed_weights_or_name_after_a_run_are_warned(backend: Backend) {
    let Some((p, db)) = setup(backend).await else {
        return;
    };
    let sink = start_sink().await;
    shop_project(&p, sink.addr().port());
    p.herald(&db, &["import", "contacts", "contacts.csv"])
        .expect_code(0);
    p.herald(&db, &["send", "hello"]).expect_code(0);
    let quiet = p.herald(&db, &["check"]);
    quiet.expect_code(0);
    assert!(!quiet.stderr().contains("warning"), "{}", quiet.stderr());
    let campaign =
        std::fs::read_to_string(p.path().join("config/campaigns/hello.toml")).expect("read");
    p.write(
        "config/campaigns/hello.toml",
        &campaign.replace("name = \"a\"", "name = \"a\"\nweight = 3"),
    );
    let run = p.herald(&db, &["check"]);
    run.expect_code(0);
    assert!(
        run.stderr()
            .contains("campaign `hello` has 1 run(s), and its holdout or variant weights changed"),
        "{}",
        run.stderr()
    );
    p.write(
        "config/campaigns/hello.toml",
        &campaign.replace("name = \"hello\"", "name = \"hello-2\""),
    );
    let run = p.herald(&db, &["check"]);
    run.expect_code(0);
    assert!(
        run.stderr()
            .contains("campaign `hello-2` looks like `hello` renamed"),
        "{}",
        run.stderr()
    );
    db.drop_db().await;
}

on_both_databases!(changed_weights_or_name_after_a_run_are_warned);
