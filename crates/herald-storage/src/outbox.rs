//! The outbox with group commit: concurrent `put`s are gathered by one
//! writer task into multi-row INSERTs, so a burst of outbox sends costs a few
//! statements instead of one transaction a message. A `put` returns only once
//! its row is written, exactly as the one-row version did. On PostgreSQL the
//! rows travel as one array a column (`UNNEST`).

use async_trait::async_trait;
use herald_channels::RenderedMessage;
use herald_channels::outbox::OutboxSink;
use sea_orm::{ConnectionTrait, DbBackend};
use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::sql::Sql;

/// Rows per INSERT at most (8 values each).
const MAX_ROWS: usize = 500;

type Job = (RenderedMessage, oneshot::Sender<Result<(), String>>);

/// An [`OutboxSink`] that batches writes; clone-free, share it in an `Arc`.
pub struct BatchedOutbox {
    tx: mpsc::Sender<Job>,
}

impl BatchedOutbox {
    /// Starts the writer task on the current runtime.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(MAX_ROWS * 4);
        tokio::spawn(writer(db, rx));
        Self { tx }
    }
}

#[async_trait]
impl OutboxSink for BatchedOutbox {
    async fn put(&self, message: &RenderedMessage) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((message.clone(), done))
            .await
            .map_err(|_| "the outbox writer stopped".to_string())?;
        wait.await
            .map_err(|_| "the outbox writer stopped".to_string())?
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_ROWS);
    while rx.recv_many(&mut jobs, MAX_ROWS).await > 0 {
        let result = insert(&db, &jobs).await;
        for (_, done) in jobs.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

/// The message's `List-Unsubscribe` header as a JSON object, if it has one.
pub(crate) fn headers(m: &RenderedMessage) -> Option<String> {
    m.unsubscribe_url
        .as_ref()
        .map(|u| serde_json::json!({ "List-Unsubscribe": format!("<{u}>") }).to_string())
}

async fn insert(db: &Db, jobs: &[Job]) -> Result<(), String> {
    let b = db.backend();
    let now = chrono::Utc::now().timestamp_millis();
    if b == DbBackend::Postgres {
        return crate::store::pg_bulk::insert_outbox(db, jobs.iter().map(|(m, _)| m), now)
            .await
            .map_err(|e| e.to_string());
    }
    let mut q = Sql::new();
    q.push("INSERT INTO outbox (message_id, channel, address, subject, body, body_text, headers, created_at) VALUES ");
    for (i, (m, _)) in jobs.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        let headers = headers(m);
        q.push("(")
            .bind(m.message_id)
            .push(",")
            .bind(m.channel.as_str().to_string())
            .push(",")
            .bind(m.to.clone())
            .push(",");
        q.bind_as(b, m.subject.clone(), "text").push(",");
        q.bind(m.body.clone()).push(",");
        q.bind_as(b, m.text.clone(), "text").push(",");
        q.bind_as(b, headers, "text");
        q.push(",").bind(now).push(")");
    }
    q.push(" ON CONFLICT (message_id) DO NOTHING");
    db.conn
        .execute_raw(q.build(b))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;
    use herald_domain::types::Channel;

    fn email(id: i64, body: &str) -> RenderedMessage {
        RenderedMessage {
            message_id: id,
            channel: Channel::Email,
            to: format!("c{id}@example.com"),
            subject: Some("Hello".into()),
            body: body.into(),
            text: Some(body.into()),
            unsubscribe_url: Some(format!("https://t.example.com/u/{id}")),
            return_path: None,
            status_callback: None,
            callback_token: None,
        }
    }

    /// A message put again (a send retried after a write whose answer was
    /// lost) is accepted and keeps its first copy; the others beside it are written.
    async fn a_message_put_twice_keeps_its_first_copy(db: &Db) {
        let outbox = BatchedOutbox::start(db.clone());
        outbox.put(&email(1, "first")).await.unwrap();
        let (second, beside) = (email(1, "second"), email(2, "other"));
        let (again, other) = tokio::join!(outbox.put(&second), outbox.put(&beside));
        again.expect("a repeated put succeeds");
        other.expect("the put beside it succeeds");
        let rows = db
            .conn
            .query_all_raw(sea_orm::Statement::from_string(
                db.backend(),
                "SELECT message_id, body FROM outbox ORDER BY message_id",
            ))
            .await
            .unwrap();
        let got: Vec<(i64, String)> = rows
            .iter()
            .map(|r| r.try_get_many_by_index().unwrap())
            .collect();
        assert_eq!(got, [(1, "first".to_string()), (2, "other".to_string())]);
    }

    on_both_databases!(a_message_put_twice_keeps_its_first_copy);
}
