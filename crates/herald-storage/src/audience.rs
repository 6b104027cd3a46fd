//! The queries behind `Store::audience_page`: keyset pages of a segment's
//! members in contact id order. A filter over event measures is evaluated in
//! windows of contact ids, so each query aggregates only the events of the
//! contacts it looks at and a full scan reads every event once, however many
//! pages it takes; memory stays one page.

use herald_domain::segment::Expr;
use herald_engine::store::Scope;

use crate::segment_sql::{
    IdRange, SegmentContext, Unsupported, append, compile_ids, compile_range,
};
use crate::sql::Sql;
use crate::tracking::MARKETING_UNSUBSCRIBE;

/// ` AND c.id IN (...)` for a list of contact ids.
fn in_list(q: &mut Sql, list: &[i64]) {
    q.push(" AND c.id IN (");
    for (i, id) in list.iter().enumerate() {
        if i > 0 {
            q.push(",");
        }
        q.bind(*id);
    }
    q.push(if list.is_empty() { "NULL)" } else { ")" });
}

/// The first window, in contact ids, is this many times the page size.
const FIRST_SPAN_PER_ROW: i64 = 1;
/// Windows grow (doubling) up to this many contact ids while they come back short.
const MAX_SPAN: i64 = 1 << 20;

/// The next query an [`AudiencePager`] wants run.
#[derive(Debug)]
pub enum PagerStep {
    /// `SELECT` the highest contact id (one row, one BIGINT); pass it to [`AudiencePager::set_max_id`].
    MaxId(Sql),
    /// A page query: rows as `audience_page` reads them; pass their number to [`AudiencePager::done`].
    Page(Sql),
    /// `SELECT` the next entrants' contact ids (one BIGINT a row); pass them to [`AudiencePager::set_ids`].
    Ids(Sql),
}

/// Plans the queries of one audience page.
#[derive(Debug)]
pub struct AudiencePager<'a> {
    filter: &'a Expr,
    ctx: &'a SegmentContext<'a>,
    topic: Option<&'a str>,
    /// Which contacts may be members at all.
    scope: &'a Scope,
    /// The last contact id covered so far.
    after: i64,
    limit: usize,
    /// Whether the filter reads event measures (and so runs in id windows).
    windowed: bool,
    max_id: Option<i64>,
    span: i64,
    /// The upper end of the window in flight and how many rows it was asked for.
    in_flight: Option<(i64, usize)>,
    finished: bool,
    /// With [`Scope::Entrants`]: the batch of entrants being read, and whether it was the last.
    entrants: Option<(Vec<i64>, bool)>,
}

impl<'a> AudiencePager<'a> {
    /// A pager for members above `after`, at most `limit` of them.
    pub fn new(
        filter: &'a Expr,
        ctx: &'a SegmentContext<'a>,
        topic: Option<&'a str>,
        scope: &'a Scope,
        after: i64,
        limit: u32,
    ) -> Result<Self, Unsupported> {
        // A list of contacts is small: one query, aggregating only their events.
        let windowed = !matches!(scope, Scope::Contacts(_))
            && !compile_range(filter, ctx, None)?.joins.text.is_empty();
        Ok(Self {
            filter,
            ctx,
            topic,
            scope,
            after,
            limit: limit as usize,
            windowed,
            max_id: None,
            span: (i64::from(limit) * FIRST_SPAN_PER_ROW).max(1),
            in_flight: None,
            finished: limit == 0,
            entrants: None,
        })
    }

    /// The next query to run, given `have` members collected; `None` when the page is complete.
    pub fn next_query(&mut self, have: usize) -> Option<PagerStep> {
        if self.finished || have >= self.limit {
            return None;
        }
        let want = self.limit - have;
        if let Scope::Entrants {
            campaign_id,
            run_id,
        } = self.scope
        {
            // Entrants are few and scattered: read them by id, not by windows of the base.
            if self.entrants.is_none() {
                let mut q = Sql::new();
                q.push("SELECT contact_id FROM entry_members WHERE campaign_id = ")
                    .bind(*campaign_id)
                    .push(" AND entered_run = ")
                    .bind(*run_id)
                    .push(" AND contact_id > ")
                    .bind(self.after)
                    .push(" ORDER BY contact_id LIMIT ")
                    .bind(want as i64);
                self.in_flight = Some((0, want));
                return Some(PagerStep::Ids(q));
            }
            return self.page(None, want).ok().map(PagerStep::Page);
        }
        if !self.windowed {
            self.finished = true;
            return self.page(None, want).ok().map(PagerStep::Page);
        }
        let Some(max_id) = self.max_id else {
            let mut q = Sql::new();
            q.push("SELECT COALESCE(MAX(id), 0) FROM contacts");
            return Some(PagerStep::MaxId(q));
        };
        if self.after >= max_id {
            return None;
        }
        let up_to = self.after.saturating_add(self.span).min(max_id);
        self.in_flight = Some((up_to, want));
        match self.page(Some(up_to), want) {
            Ok(q) => Some(PagerStep::Page(q)),
            Err(_) => None,
        }
    }

    /// Records the next entrants' ids (ascending); none left ends the pages.
    pub fn set_ids(&mut self, ids: Vec<i64>) {
        let asked = self.in_flight.take().map_or(0, |(_, want)| want);
        if ids.is_empty() {
            self.finished = true;
        } else {
            let last = ids.len() < asked;
            self.entrants = Some((ids, last));
        }
    }

    /// Records the highest contact id.
    pub fn set_max_id(&mut self, id: i64) {
        self.max_id = Some(id);
    }

    /// Records that the last page query returned `found` rows.
    pub fn done(&mut self, found: usize) {
        if let Some((ids, last)) = self.entrants.take() {
            self.after = ids.last().copied().unwrap_or(self.after);
            // Entrants outside the audience make a short page: read on unless these were the last.
            self.finished = last;
            return;
        }
        match self.in_flight.take() {
            Some((up_to, want)) if found < want => {
                // The window is exhausted; a sparse audience earns a wider next window.
                self.after = up_to;
                self.span = (self.span * 2).min(MAX_SPAN);
            }
            _ => self.finished = true,
        }
    }

    /// One page query over `(after, up_to]` (or above `after`), at most `limit` rows.
    fn page(&self, up_to: Option<i64>, limit: usize) -> Result<Sql, Unsupported> {
        let ids = up_to.map(|up_to| IdRange {
            after: self.after,
            up_to,
        });
        let batch = self.entrants.as_ref().map(|(ids, _)| ids.as_slice());
        let compiled = match (self.scope, batch) {
            (Scope::Contacts(list), _) => compile_ids(self.filter, self.ctx, list)?,
            (Scope::Entrants { .. }, Some(list)) => compile_ids(self.filter, self.ctx, list)?,
            _ => compile_range(self.filter, self.ctx, ids)?,
        };
        let mut q = Sql::new();
        // Per channel: 2 when suppressed for everything (bounce, complaint,
        // opt-out), 1 when unsubscribed from marketing only, else 0.
        let sup = |ch: &str, addr: &str| {
            format!(
                "CAST(COALESCE((SELECT MAX(CASE WHEN s.reason = '{MARKETING_UNSUBSCRIBE}' THEN 1 ELSE 2 END) FROM suppressions s WHERE s.topic IS NULL AND s.channel IN ('{ch}', 'any') AND (s.contact_id = c.id{addr})), 0) AS BIGINT)"
            )
        };
        // The columns are named a0..a12 so that SQLite can fold a page into one JSON value.
        q.push("SELECT c.id AS a0, c.external_id AS a1, c.email AS a2, c.phone AS a3, c.consent_email AS a4, c.consent_sms AS a5, c.consent_push AS a6, ");
        q.push("(SELECT MIN(p.token) FROM push_tokens p WHERE p.contact_id = c.id AND p.invalid_at IS NULL) AS a7, ");
        q.push(&sup("email", " OR s.address = c.email"))
            .push(" AS a8, ");
        q.push(&sup("sms", " OR s.address = c.phone"))
            .push(" AS a9, ");
        q.push(&sup("push", "")).push(" AS a10, ");
        match self.topic {
            Some(t) => {
                q.push("(EXISTS (SELECT 1 FROM topic_subscriptions ts WHERE ts.contact_id = c.id AND ts.subscribed = FALSE AND ts.topic = ")
                    .bind(t.to_string())
                    .push(") OR EXISTS (SELECT 1 FROM suppressions s WHERE s.contact_id = c.id AND s.topic = ")
                    .bind(t.to_string())
                    .push("))");
            }
            None => {
                q.push("FALSE");
            }
        }
        q.push(" AS a11, c.timezone AS a12 FROM contacts c");
        append(&mut q, compiled.joins);
        q.push(" WHERE c.forgotten_at IS NULL AND c.id > ")
            .bind(self.after);
        if let Some(up_to) = up_to {
            q.push(" AND c.id <= ").bind(up_to);
        }
        let listed = match self.scope {
            Scope::Contacts(list) => Some(list.as_slice()),
            _ => batch,
        };
        // Scope::Entrants pages always hold a batch of entrant ids (see `next_query`).
        if let Some(list) = listed {
            in_list(&mut q, list);
        }
        q.push(" AND ");
        append(&mut q, compiled.cond);
        q.push(" ORDER BY c.id LIMIT ").bind(limit as i64);
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    //! Suppression levels on an audience page, on SQLite and on PostgreSQL.

    use herald_domain::segment::parse;
    use herald_domain::types::Channel;
    use herald_engine::store::Store;
    use sea_orm::ConnectionTrait;

    use crate::Db;
    use crate::store::SqlStore;
    use crate::test_db::on_both_databases;

    const NOW: i64 = 1_767_225_600_000;

    on_both_databases!(an_unsubscribe_suppresses_marketing_and_a_bounce_everything);

    /// SPEC section 4: an unsubscribe (reason `unsubscribe`) stops marketing on
    /// its channel only; a hard bounce or a complaint stops everything.
    async fn an_unsubscribe_suppresses_marketing_and_a_bounce_everything(db: &Db) {
        for sql in [
            format!(
                "INSERT INTO contacts (id, external_id, email, phone, attrs, created_at, updated_at) VALUES \
                (1, 'c1', 'a@example.com', NULL, '{{}}', {NOW}, {NOW}), \
                (2, 'c2', 'b@example.com', NULL, '{{}}', {NOW}, {NOW}), \
                (3, 'c3', 'c@example.com', NULL, '{{}}', {NOW}, {NOW}), \
                (4, 'c4', 'd@example.com', NULL, '{{}}', {NOW}, {NOW})"
            ),
            format!(
                "INSERT INTO suppressions (channel, address, contact_id, topic, reason, source, created_at) VALUES \
                ('email', 'a@example.com', 1, NULL, 'unsubscribe', 'list_unsubscribe', {NOW}), \
                ('email', 'b@example.com', 2, NULL, 'hard_bounce', 'smtp', {NOW}), \
                ('email', 'c@example.com', NULL, NULL, 'unsubscribe', 'unsubscribe_page', {NOW}), \
                ('email', 'c@example.com', NULL, NULL, 'complaint', 'ses', {NOW})"
            ),
        ] {
            db.conn.execute_unprepared(&sql).await.unwrap();
        }
        let store = SqlStore::new(db.clone());
        let page = store
            .audience_page(&parse("email != \"\"").unwrap(), NOW, None, 0, 10, None)
            .await
            .unwrap();
        let levels: Vec<(i64, Vec<Channel>, Vec<Channel>)> = page
            .into_iter()
            .map(|m| (m.contact_id, m.suppressed, m.marketing_suppressed))
            .collect();
        assert_eq!(
            levels,
            vec![
                (1, vec![], vec![Channel::Email]),
                (2, vec![Channel::Email], vec![]),
                // An unsubscribe and a complaint: the complaint wins.
                (3, vec![Channel::Email], vec![]),
                (4, vec![], vec![]),
            ]
        );
    }
}
