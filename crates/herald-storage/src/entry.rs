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

        let mut q = Sql::new();
        q.push("INSERT INTO entry_members (campaign_id, contact_id, entered_run) SELECT ")
            .bind(campaign_id)
            .push(", n.contact_id, ")
            .bind_as(b, (!baseline).then_some(run_id), "int8")
            .push(" FROM entry_now n WHERE NOT EXISTS (SELECT 1 FROM entry_members em WHERE em.campaign_id = ")
            .bind(campaign_id)
            .push(" AND em.contact_id = n.contact_id)");
        let inserted = exec(&txn, b, q).await?;
        let pass = EntryPass {
            members,
            entrants: if baseline { 0 } else { inserted },
            leavers,
            baseline,
        };

        if !pg {
            exec_text(&txn, b, "DROP TABLE temp.entry_now").await?;
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
