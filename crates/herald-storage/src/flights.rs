//! How readers see a flight (a batch the planner handed straight to a
//! worker, its rows written already carrying the outcome the send is expected
//! to have): until it lands, its untouched rows are in the air, not sent or
//! delivered, and once its lease has lapsed (its worker died) they are
//! `unknown`, as `expire_leases` will make them. The report and `herald
//! status` read the rows through this, so neither is ever ahead of the
//! provider, even right after a crash and with no daemon running.
//!
//! A row is untouched while its `updated_at` is still the flight's
//! `written_at` and its status the written `sent`/`delivered`: a receipt, an
//! open, a click or a refusal written since says what really happened.

use sea_orm::{ConnectionTrait, DbBackend, QueryResult};

use crate::sql::Sql;

/// The status a flight's untouched rows are counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InTheAir {
    /// The lease holds: the worker is sending them (`sending`).
    Sending,
    /// The lease lapsed: the worker died; they may or may not have gone out (`unknown`).
    Unknown,
}

impl InTheAir {
    /// Of a flight whose lease ends at `lease_until`, read at `now`.
    pub fn at(lease_until: i64, now: i64) -> Self {
        if lease_until < now {
            InTheAir::Unknown
        } else {
            InTheAir::Sending
        }
    }

    /// The status the rows are counted as.
    pub fn status(self) -> &'static str {
        match self {
            InTheAir::Sending => "sending",
            InTheAir::Unknown => "unknown",
        }
    }
}

/// A flight as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// Its id.
    pub id: i64,
    /// Its run.
    pub run_id: i64,
    /// When its lease ends (ms).
    pub lease_until: i64,
    /// When its rows were written (ms): their `updated_at` while untouched.
    pub written_at: i64,
    /// Its message ids, comma-separated.
    pub ids: String,
}

/// The flights of runs `lo..=hi` in the air, read on `conn`.
pub async fn flights_of_runs(
    conn: &impl ConnectionTrait,
    lo: i64,
    hi: i64,
) -> Result<Vec<Flight>, sea_orm::DbErr> {
    let b = conn.get_database_backend();
    let mut q = Sql::new();
    q.push("SELECT id, run_id, lease_until, written_at, ids FROM flights WHERE run_id BETWEEN ")
        .bind(lo)
        .push(" AND ")
        .bind(hi)
        .push(" ORDER BY id");
    let rows = conn.query_all_raw(q.build(b)).await?;
    rows.iter().map(flight).collect()
}

fn flight(r: &QueryResult) -> Result<Flight, sea_orm::DbErr> {
    Ok(Flight {
        id: r.try_get_by_index(0)?,
        run_id: r.try_get_by_index(1)?,
        lease_until: r.try_get_by_index(2)?,
        written_at: r.try_get_by_index(3)?,
        ids: r.try_get_by_index(4)?,
    })
}

/// Appends ` AND` the condition that message `m` is one of `flight`'s
/// untouched rows and the flight is still in the air (not landed since it
/// was read).
pub fn push_untouched(q: &mut Sql, b: DbBackend, flight: &Flight) {
    q.push(" AND m.status IN ('sent', 'delivered') AND m.updated_at = ")
        .bind(flight.written_at)
        .push(" AND m.id IN ");
    crate::store::id_list_set(q, b, &flight.ids);
    q.push(" AND EXISTS (SELECT 1 FROM flights f WHERE f.id = ")
        .bind(flight.id)
        .push(")");
}

/// The untouched rows of every flight in the air, joined to their flight:
/// `FROM` this, the message is `m` and the flight `f`.
pub fn untouched_join(b: DbBackend) -> &'static str {
    if b == DbBackend::Postgres {
        "flights f CROSS JOIN LATERAL unnest(string_to_array(f.ids, ',')::int8[]) AS j(id) JOIN messages m ON m.id = j.id AND m.status IN ('sent', 'delivered') AND m.updated_at = f.written_at"
    } else {
        "flights f, json_each('[' || f.ids || ']') j JOIN messages m ON m.id = j.value AND m.status IN ('sent', 'delivered') AND m.updated_at = f.written_at"
    }
}

/// A read-only snapshot on `db`: on PostgreSQL a repeatable read, so the
/// counts of `messages` and of the flights in the air are taken at the same
/// instant; SQLite's deferred transaction reads one snapshot already.
pub async fn snapshot(
    db: &sea_orm::DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    use sea_orm::{AccessMode, IsolationLevel, TransactionTrait};
    if db.get_database_backend() == DbBackend::Postgres {
        db.begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
    } else {
        db.begin().await
    }
}

/// Untouched rows of flights in the air with the same run, channel, arm and
/// written status, and how they read at the instant asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTheAirCount {
    /// Their run.
    pub run_id: i64,
    /// Their channel.
    pub channel: Option<String>,
    /// Their arm.
    pub arm: String,
    /// The status written in advance (`sent` or `delivered`).
    pub written: String,
    /// How they read: `sending`, or `unknown` once the lease lapsed.
    pub air: InTheAir,
    /// How many.
    pub n: i64,
}

/// The untouched rows of every flight in the air at `now` (of run `run`
/// only, if given), counted: what a reader takes out of the counts of their
/// written status and adds to `sending` or `unknown`.
pub async fn in_the_air(
    conn: &impl ConnectionTrait,
    now: i64,
    run: Option<i64>,
) -> Result<Vec<InTheAirCount>, sea_orm::DbErr> {
    let b = conn.get_database_backend();
    let mut q = Sql::new();
    q.push("SELECT m.run_id, m.channel, m.arm, m.status, CASE WHEN f.lease_until < ")
        .bind(now)
        .push(" THEN 1 ELSE 0 END, COUNT(*) FROM ")
        .push(untouched_join(b));
    if let Some(run) = run {
        q.push(" WHERE f.run_id = ").bind(run);
    }
    q.push(" GROUP BY 1, 2, 3, 4, 5");
    let rows = conn.query_all_raw(q.build(b)).await?;
    rows.iter()
        .map(|r| {
            let lapsed: i32 = r.try_get_by_index(4)?;
            Ok(InTheAirCount {
                run_id: r.try_get_by_index(0)?,
                channel: r.try_get_by_index(1)?,
                arm: r.try_get_by_index(2)?,
                written: r.try_get_by_index(3)?,
                air: if lapsed == 1 {
                    InTheAir::Unknown
                } else {
                    InTheAir::Sending
                },
                n: r.try_get_by_index(5)?,
            })
        })
        .collect()
}
