//! The segment-entry pass behind `trigger = { enters = "SEGMENT", every = .. }`
//! (issue 9, SPEC section 2): the whole segment is evaluated in SQL into a
//! temporary table, diffed against the membership stored at the campaign's
//! previous pass (`entry_members`), and only the difference is written:
//! leavers deleted, entrants inserted with the pass's run id, which is what
//! `Scope::Entrants` plans from. One transaction a pass; its `entry_passes`
//! row is the idempotency key.

use herald_domain::segment::Expr;
use herald_engine::store::EntryPass;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};

use crate::db::Db;
use crate::segment_sql::{SegmentContext, Unsupported, append, compile};
use crate::sql::Sql;

/// First key of the PostgreSQL advisory lock that serialises a campaign's passes ("hera").
const ENTRY_LOCK_CLASS: i32 = 0x6865_7261;

/// A pass that changes more than one member in this many refreshes PostgreSQL's statistics.
const STALE_SHARE: u64 = 10;

/// Why a pass failed; nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The segment cannot be compiled to SQL.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The run id was already used by a pass of another campaign.
    #[error("run {run_id} is a pass of campaign {recorded}, not of campaign {asked}")]
    OtherCampaign {
        /// The run.
        run_id: i64,
        /// The campaign its recorded pass belongs to.
        recorded: i64,
        /// The campaign asked for.
        asked: i64,
    },
}

impl Db {
    /// Evaluates `filter` at `ctx.now` over the whole contact base (not forgotten contacts),
    /// diffs it against campaign `campaign_id`'s stored membership, stores the new membership,
    /// and marks the entrants with `run_id`. Idempotent per `run_id`: a second call (a crash
    /// and a retry, a second daemon) changes nothing and returns the recorded figures. The
    /// first pass of a campaign is a baseline: members are stored, nobody enters.
    pub async fn entry_pass(
        &self,
        campaign_id: i64,
        run_id: i64,
        filter: &Expr,
        ctx: &SegmentContext<'_>,
    ) -> Result<EntryPass, EntryError> {
        // Compiled before anything is written: an unsupported filter leaves no trace.
        let compiled = compile(filter, ctx)?;
        let b = self.backend();
        let pg = b == DbBackend::Postgres;
        let txn = self.conn.begin().await?;
        if pg {
            // Two passes of one campaign (two daemons, two runs) one after the other: the
            // second then diffs against what the first stored.
            let mut q = Sql::new();
            q.push(&format!(
                "SELECT pg_advisory_xact_lock({ENTRY_LOCK_CLASS}, CAST("
            ))
            .bind(campaign_id)
            .push(" % 2147483647 AS INTEGER))");
            txn.query_all_raw(q.build(b)).await?;
        }
        // The claim comes first: on SQLite a first statement that writes takes the write
        // lock (waiting for another writer) instead of failing to upgrade a read later.
        let mut q = Sql::new();
        q.push("INSERT INTO entry_passes (run_id, campaign_id, members, entrants, leavers, baseline, at) VALUES (")
            .bind(run_id)
            .push(", ")
            .bind(campaign_id)
            .push(", 0, 0, 0, FALSE, ")
            .bind(ctx.now)
            .push(") ON CONFLICT (run_id) DO NOTHING");
        if exec(&txn, b, q).await? == 0 {
            let recorded = recorded(&txn, b, run_id).await?;
            txn.rollback().await?;
            return match recorded {
                Some((recorded, pass)) if recorded == campaign_id => Ok(pass),
                Some((recorded, _)) => Err(EntryError::OtherCampaign {
                    run_id,
                    recorded,
                    asked: campaign_id,
                }),
                None => Err(DbErr::Custom(format!("the pass of run {run_id} vanished")).into()),
            };
        }
        let mut q = Sql::new();
        q.push("SELECT COUNT(*) FROM (SELECT 1 FROM entry_passes WHERE campaign_id = ")
            .bind(campaign_id)
            .push(" AND run_id <> ")
            .bind(run_id)
            .push(" LIMIT 1) p");
        let baseline = scalar(&txn, b, q).await? == 0;

        // The members now, in a table of their own: the diff below is two anti-joins.
        let mut q = Sql::new();
        if pg {
            // CREATE TABLE AS may run the segment query in parallel; INSERT ... SELECT may not.
            q.push("CREATE TEMP TABLE entry_now ON COMMIT DROP AS SELECT c.id AS contact_id FROM contacts c");
        } else {
            exec_text(&txn, b, "DROP TABLE IF EXISTS temp.entry_now").await?;
            exec_text(
                &txn,
                b,
                "CREATE TEMP TABLE entry_now (contact_id INTEGER PRIMARY KEY)",
            )
            .await?;
            q.push("INSERT INTO entry_now (contact_id) SELECT c.id FROM contacts c");
        }
        append(&mut q, compiled.joins);
        q.push(" WHERE c.forgotten_at IS NULL AND ");
        append(&mut q, compiled.cond);
        if !pg {
            // In rowid order, each insert appends to the table's b-tree.
            q.push(" ORDER BY c.id");
        }
        exec(&txn, b, q).await?;
        if pg {
            // Temporary tables get no autovacuum: without statistics the anti-joins are guesses.
            exec_text(&txn, b, "ANALYZE entry_now").await?;
        }
        let members = scalar(&txn, b, {
            let mut q = Sql::new();
            q.push("SELECT COUNT(*) FROM entry_now");
            q
        })
        .await? as u64;

        let mut q = Sql::new();
        q.push("DELETE FROM entry_members WHERE campaign_id = ")
            .bind(campaign_id)
            .push(" AND NOT EXISTS (SELECT 1 FROM entry_now n WHERE n.contact_id = entry_members.contact_id)");
        let leavers = exec(&txn, b, q).await?;

        let inserted = if baseline {
            // Nothing to diff against; rows of a campaign without a recorded pass are stale.
            let mut q = Sql::new();
            q.push("DELETE FROM entry_members WHERE campaign_id = ")
                .bind(campaign_id);
            exec(&txn, b, q).await?;
            let mut q = Sql::new();
            q.push("INSERT INTO entry_members (campaign_id, contact_id, entered_run) SELECT ")
                .bind(campaign_id)
                .push(", n.contact_id, NULL FROM entry_now n");
            exec(&txn, b, q).await?
        } else {
            // The entrants are found before any is inserted: an INSERT whose anti-join
            // scans the table it grows turned quadratic on PostgreSQL when the planner
            // believed entry_members empty (88 s for 57,000 members).
            let mut q = Sql::new();
            q.push(if pg {
                "CREATE TEMP TABLE entry_in ON COMMIT DROP AS "
            } else {
                "CREATE TEMP TABLE entry_in AS "
            });
            q.push("SELECT n.contact_id FROM entry_now n WHERE NOT EXISTS (SELECT 1 FROM entry_members em WHERE em.campaign_id = ")
                .bind(campaign_id)
                .push(" AND em.contact_id = n.contact_id)");
            if !pg {
                exec_text(&txn, b, "DROP TABLE IF EXISTS temp.entry_in").await?;
            }
            exec(&txn, b, q).await?;
            let mut q = Sql::new();
            q.push("INSERT INTO entry_members (campaign_id, contact_id, entered_run) SELECT ")
                .bind(campaign_id)
                .push(", i.contact_id, ")
                .bind(run_id)
                .push(" FROM entry_in i");
            let n = exec(&txn, b, q).await?;
            if !pg {
                exec_text(&txn, b, "DROP TABLE temp.entry_in").await?;
            }
            n
        };
        let pass = EntryPass {
            members,
            entrants: if baseline { 0 } else { inserted },
            leavers,
            baseline,
        };

        if !pg {
            exec_text(&txn, b, "DROP TABLE temp.entry_now").await?;
        } else if pass.baseline || (pass.entrants + pass.leavers) * STALE_SHARE > pass.members {
            // The next pass's anti-joins read entry_members: with statistics from before a
            // big change (an empty table) PostgreSQL picked a nested loop over seq scans,
            // 368 s instead of seconds for 57,000 members. Autovacuum comes too late.
            exec_text(&txn, b, "ANALYZE entry_members").await?;
        }
        let mut q = Sql::new();
        q.push("UPDATE entry_passes SET members = ")
            .bind(pass.members as i64)
            .push(", entrants = ")
            .bind(pass.entrants as i64)
            .push(", leavers = ")
            .bind(pass.leavers as i64)
            .push(", baseline = ")
            .bind(pass.baseline)
            .push(" WHERE run_id = ")
            .bind(run_id);
        exec(&txn, b, q).await?;
        txn.commit().await?;
        Ok(pass)
    }
}

/// The recorded pass of `run_id`, with its campaign.
async fn recorded(
    txn: &DatabaseTransaction,
    b: DbBackend,
    run_id: i64,
) -> Result<Option<(i64, EntryPass)>, DbErr> {
    let mut q = Sql::new();
    q.push("SELECT campaign_id, members, entrants, leavers, baseline FROM entry_passes WHERE run_id = ")
        .bind(run_id);
    let rows = txn.query_all_raw(q.build(b)).await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let count = |i: usize| r.try_get_by_index::<i64>(i).map(|v| v as u64);
    Ok(Some((
        r.try_get_by_index(0)?,
        EntryPass {
            members: count(1)?,
            entrants: count(2)?,
            leavers: count(3)?,
            baseline: r.try_get_by_index(4)?,
        },
    )))
}

async fn exec(txn: &DatabaseTransaction, b: DbBackend, q: Sql) -> Result<u64, DbErr> {
    Ok(txn.execute_raw(q.build(b)).await?.rows_affected())
}

async fn exec_text(txn: &DatabaseTransaction, b: DbBackend, text: &str) -> Result<u64, DbErr> {
    let mut q = Sql::new();
    q.push(text);
    exec(txn, b, q).await
}

/// The first column of the first row, as a BIGINT.
async fn scalar(txn: &DatabaseTransaction, b: DbBackend, q: Sql) -> Result<i64, DbErr> {
    let rows = txn.query_all_raw(q.build(b)).await?;
    match rows.first() {
        Some(r) => r.try_get_by_index(0),
        None => Err(DbErr::Custom("a scalar query returned no row".into())),
    }
}

#[cfg(test)]
mod tests {
    //! Each test runs on SQLite and on PostgreSQL (`NAME::sqlite`, `NAME::postgres`);
    //! PostgreSQL comes from `HERALD_TEST_DATABASE_URL`, and is skipped loudly when
    //! unreachable unless `HERALD_REQUIRE_POSTGRES=1`.

    use super::*;
    use crate::test_db::on_both_databases;

    use herald_domain::segment::parse;
    use herald_engine::store::{Scope, Store};
    use sea_orm::Value;
    use serde_json::{Value as Json, json};

    use crate::segment_sql::DAY_MS;
    use crate::store::SqlStore;

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;
    const CAMPAIGN: i64 = 7;

    on_both_databases!(
        first_pass_is_a_baseline,
        an_attribute_change_enters_and_is_planned,
        entrants_are_paged_by_id_past_those_outside_the_audience,
        time_alone_moves_contacts_in,
        leaving_then_returning_enters_again,
        the_same_run_twice_changes_nothing,
        forgotten_contacts_never_enter,
        campaigns_keep_their_own_membership,
        two_daemons_passing_one_run_write_it_once,
    );

    async fn exec(db: &Db, q: Sql) {
        db.conn
            .execute_raw(q.build(db.backend()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn attrs(db: &Db, q: &mut Sql, v: Json) {
        q.bind_as(db.backend(), Value::Json(Some(Box::new(v))), "jsonb");
    }

    /// Contact `id` (external id `cID`) with these attributes.
    async fn contact(db: &Db, id: i64, a: Json) {
        let mut q = Sql::new();
        q.push(
            "INSERT INTO contacts (id, external_id, email, attrs, created_at, updated_at) VALUES (",
        )
        .bind(id)
        .push(", ")
        .bind(format!("c{id}"))
        .push(", ")
        .bind(format!("c{id}@example.com"))
        .push(", ");
        attrs(db, &mut q, a);
        q.push(&format!(", {t}, {t})", t = NOW - 400 * DAY_MS));
        exec(db, q).await;
    }

    async fn set_attrs(db: &Db, id: i64, a: Json) {
        let mut q = Sql::new();
        q.push("UPDATE contacts SET attrs = ");
        attrs(db, &mut q, a);
        q.push(" WHERE id = ").bind(id);
        exec(db, q).await;
    }

    async fn event(db: &Db, id: i64, name: &str, at: i64) {
        let mut q = Sql::new();
        q.push("INSERT INTO events (contact_id, name, at, received_at) VALUES (")
            .bind(id)
            .push(", ")
            .bind(name.to_string())
            .push(", ")
            .bind(at)
            .push(", ")
            .bind(at)
            .push(")");
        exec(db, q).await;
    }

    async fn forget(db: &Db, id: i64) {
        let mut q = Sql::new();
        q.push("UPDATE contacts SET forgotten_at = ")
            .bind(NOW)
            .push(" WHERE id = ")
            .bind(id);
        exec(db, q).await;
    }

    /// A pass of `campaign` through the engine's `Store`, as the scheduler makes it.
    async fn pass_of(db: &Db, campaign: i64, run: i64, filter: &str, now: i64) -> EntryPass {
        let store = SqlStore::new(db.clone());
        store
            .entry_pass(campaign, run, &parse(filter).unwrap(), now)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn pass(db: &Db, run: i64, filter: &str, now: i64) -> EntryPass {
        pass_of(db, CAMPAIGN, run, filter, now).await
    }

    /// The stored membership of `campaign`: (contact, entered_run), by contact.
    async fn members_of(db: &Db, campaign: i64) -> Vec<(i64, Option<i64>)> {
        let mut q = Sql::new();
        q.push("SELECT contact_id, entered_run FROM entry_members WHERE campaign_id = ")
            .bind(campaign)
            .push(" ORDER BY contact_id");
        db.conn
            .query_all_raw(q.build(db.backend()))
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).unwrap(),
                    r.try_get_by_index(1).unwrap(),
                )
            })
            .collect()
    }

    async fn members(db: &Db) -> Vec<(i64, Option<i64>)> {
        members_of(db, CAMPAIGN).await
    }

    fn figures(members: u64, entrants: u64, leavers: u64, baseline: bool) -> EntryPass {
        EntryPass {
            members,
            entrants,
            leavers,
            baseline,
        }
    }

    const PRO: &str = r#"attrs.plan == "pro""#;

    async fn first_pass_is_a_baseline(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "free"})).await;
        contact(db, 3, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(2, 0, 0, true));
        assert_eq!(members(db).await, vec![(1, None), (3, None)]);
        // Nothing changed: nobody enters or leaves, and nothing is rewritten.
        assert_eq!(
            pass(db, 11, PRO, NOW + DAY_MS).await,
            figures(2, 0, 0, false)
        );
        assert_eq!(members(db).await, vec![(1, None), (3, None)]);
    }

    async fn an_attribute_change_enters_and_is_planned(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "free"})).await;
        contact(db, 3, json!({"plan": "free"})).await;
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(1, 0, 0, true));
        set_attrs(db, 2, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 11, PRO, NOW + 1).await, figures(2, 1, 0, false));
        assert_eq!(members(db).await, vec![(1, None), (2, Some(11))]);

        // The engine plans the entrants through the audience query, restricted to them.
        let store = SqlStore::new(db.clone());
        let scope = Scope::Entrants {
            campaign_id: CAMPAIGN,
            run_id: 11,
        };
        let filter = parse(PRO).unwrap();
        let planned = store
            .audience_in(&filter, NOW + 1, None, &scope, 0, 100, None)
            .await
            .unwrap();
        let ids: Vec<i64> = planned.iter().map(|m| m.contact_id).collect();
        assert_eq!(ids, vec![2]);
        // The baseline pass had no entrants to plan.
        let baseline = Scope::Entrants {
            campaign_id: CAMPAIGN,
            run_id: 10,
        };
        let none = store
            .audience_in(&filter, NOW + 1, None, &baseline, 0, 100, None)
            .await
            .unwrap();
        assert!(none.is_empty(), "{none:?}");
    }

    /// Entrants are read in pages of their ids; a page whose entrants the campaign's
    /// audience does not hold comes back short, and the next page still follows.
    async fn entrants_are_paged_by_id_past_those_outside_the_audience(db: &Db) {
        for id in 1..=7 {
            contact(
                db,
                id,
                json!({"plan": "free", "region": if id % 2 == 0 { "eu" } else { "us" }}),
            )
            .await;
        }
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(0, 0, 0, true));
        for id in 1..=7 {
            set_attrs(
                db,
                id,
                json!({"plan": "pro", "region": if id % 2 == 0 { "eu" } else { "us" }}),
            )
            .await;
        }
        assert_eq!(pass(db, 11, PRO, NOW + 1).await, figures(7, 7, 0, false));
        let store = SqlStore::new(db.clone());
        let scope = Scope::Entrants {
            campaign_id: CAMPAIGN,
            run_id: 11,
        };
        // The campaign's audience: the entrants in the US only (1, 3, 5, 7).
        let audience = parse(r#"attrs.region == "us""#).unwrap();
        let (mut after, mut got) = (0, Vec::new());
        loop {
            let page = store
                .audience_in(&audience, NOW + 1, None, &scope, after, 2, None)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= 2);
            after = last.contact_id;
            got.extend(page.iter().map(|m| m.contact_id));
        }
        assert_eq!(got, vec![1, 3, 5, 7]);
    }

    async fn time_alone_moves_contacts_in(db: &Db) {
        // 1 bought 25 days ago; 2 buys every 10 days and last bought 15 days ago (overdue 1.5);
        // 3 bought yesterday.
        for id in 1..=3 {
            contact(db, id, json!({})).await;
        }
        event(db, 1, "order_placed", NOW - 25 * DAY_MS).await;
        for k in 0..4 {
            event(db, 2, "order_placed", NOW - (15 + 10 * k) * DAY_MS).await;
        }
        event(db, 3, "order_placed", NOW - DAY_MS).await;
        let lapsed = r#"days_since("order_placed") > 30"#;
        let overdue = r#"overdue("order_placed") > 2"#;
        assert_eq!(
            pass_of(db, 1, 10, lapsed, NOW).await,
            figures(0, 0, 0, true)
        );
        assert_eq!(
            pass_of(db, 2, 20, overdue, NOW).await,
            figures(0, 0, 0, true)
        );
        // Nothing in the data changes; six days later 1 is 31 days out and 2 is 2.1 times late.
        let later = NOW + 6 * DAY_MS;
        assert_eq!(
            pass_of(db, 1, 11, lapsed, later).await,
            figures(1, 1, 0, false)
        );
        assert_eq!(members_of(db, 1).await, vec![(1, Some(11))]);
        assert_eq!(
            pass_of(db, 2, 21, overdue, later).await,
            figures(1, 1, 0, false)
        );
        assert_eq!(members_of(db, 2).await, vec![(2, Some(21))]);
        // A purchase brings 1 back (out of the segment); 2 stays a member without entering again.
        event(db, 1, "order_placed", later).await;
        let after = later + DAY_MS;
        assert_eq!(
            pass_of(db, 1, 12, lapsed, after).await,
            figures(0, 0, 1, false)
        );
        assert_eq!(
            pass_of(db, 2, 22, overdue, after).await,
            figures(1, 0, 0, false)
        );
        assert_eq!(members_of(db, 2).await, vec![(2, Some(21))]);
    }

    async fn leaving_then_returning_enters_again(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(2, 0, 0, true));
        set_attrs(db, 1, json!({"plan": "free"})).await;
        assert_eq!(pass(db, 11, PRO, NOW + 1).await, figures(1, 0, 1, false));
        assert_eq!(members(db).await, vec![(2, None)]);
        set_attrs(db, 1, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 12, PRO, NOW + 2).await, figures(2, 1, 0, false));
        assert_eq!(members(db).await, vec![(1, Some(12)), (2, None)]);
        // Out and in again: a new entry, with the new run.
        set_attrs(db, 1, json!({"plan": "free"})).await;
        assert_eq!(pass(db, 13, PRO, NOW + 3).await, figures(1, 0, 1, false));
        set_attrs(db, 1, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 14, PRO, NOW + 4).await, figures(2, 1, 0, false));
        assert_eq!(members(db).await, vec![(1, Some(14)), (2, None)]);
    }

    async fn the_same_run_twice_changes_nothing(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "free"})).await;
        contact(db, 3, json!({"plan": "free"})).await;
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(1, 0, 0, true));
        // The baseline retried is still the baseline.
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(1, 0, 0, true));
        set_attrs(db, 2, json!({"plan": "pro"})).await;
        assert_eq!(pass(db, 11, PRO, NOW + 1).await, figures(2, 1, 0, false));
        // A retry of run 11 after more changes: the recorded figures, nothing written.
        set_attrs(db, 3, json!({"plan": "pro"})).await;
        set_attrs(db, 1, json!({"plan": "free"})).await;
        assert_eq!(pass(db, 11, PRO, NOW + 2).await, figures(2, 1, 0, false));
        assert_eq!(members(db).await, vec![(1, None), (2, Some(11))]);
        // A run id of this campaign is refused for another.
        let err = SqlStore::new(db.clone())
            .entry_pass(CAMPAIGN + 1, 11, &parse(PRO).unwrap(), NOW + 2)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not of campaign"), "{err}");
        // The next run sees the changes.
        assert_eq!(pass(db, 12, PRO, NOW + 3).await, figures(2, 1, 1, false));
        assert_eq!(members(db).await, vec![(2, Some(11)), (3, Some(12))]);
    }

    async fn forgotten_contacts_never_enter(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "pro"})).await;
        contact(db, 3, json!({"plan": "free"})).await;
        forget(db, 2).await;
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(1, 0, 0, true));
        assert_eq!(members(db).await, vec![(1, None)]);
        // A forgotten contact who now matches does not enter; a member who is forgotten leaves.
        set_attrs(db, 3, json!({"plan": "pro"})).await;
        forget(db, 3).await;
        forget(db, 1).await;
        assert_eq!(pass(db, 11, PRO, NOW + 1).await, figures(0, 0, 1, false));
        assert!(members(db).await.is_empty());
    }

    async fn campaigns_keep_their_own_membership(db: &Db) {
        contact(db, 1, json!({"plan": "pro"})).await;
        contact(db, 2, json!({"plan": "free"})).await;
        assert_eq!(pass_of(db, 1, 10, PRO, NOW).await, figures(1, 0, 0, true));
        set_attrs(db, 2, json!({"plan": "pro"})).await;
        // Campaign 2's first pass is its own baseline, whatever campaign 1 saw.
        assert_eq!(
            pass_of(db, 2, 20, PRO, NOW + 1).await,
            figures(2, 0, 0, true)
        );
        assert_eq!(
            pass_of(db, 1, 11, PRO, NOW + 1).await,
            figures(2, 1, 0, false)
        );
        assert_eq!(members_of(db, 1).await, vec![(1, None), (2, Some(11))]);
        assert_eq!(members_of(db, 2).await, vec![(1, None), (2, None)]);
    }

    async fn two_daemons_passing_one_run_write_it_once(db: &Db) {
        for id in 1..=50 {
            contact(
                db,
                id,
                json!({"plan": if id % 2 == 0 { "pro" } else { "free" }}),
            )
            .await;
        }
        assert_eq!(pass(db, 10, PRO, NOW).await, figures(25, 0, 0, true));
        for id in (1..=50).filter(|id| id % 5 == 1) {
            set_attrs(db, id, json!({"plan": "pro"})).await;
        }
        // Two daemons, each with its own connection from the pool, pass run 11 at once.
        let (a, b) = tokio::join!(pass(db, 11, PRO, NOW + 1), pass(db, 11, PRO, NOW + 1));
        assert_eq!(a, figures(30, 5, 0, false));
        assert_eq!(b, a);
        let entered = members(db).await.iter().filter(|m| m.1 == Some(11)).count();
        assert_eq!(entered, 5);
    }
}
