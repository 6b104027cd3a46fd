//! The types the stored contacts' attributes actually hold, for `herald
//! check`: an attribute no `[contacts.attrs]` declares is typed by its
//! cells at import (`true` becomes a boolean), so a filter literal of
//! another type (`attrs.vip == "true"`) silently matches nobody. One scan of
//! the contacts answers for every attribute path asked about.

use std::collections::BTreeMap;

use herald_domain::config::{AttrType, AttrTypes, check_filter_types};
use herald_domain::segment::{Expr, Field, FilterError};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::db::Db;
use crate::sql::Sql;

/// What the stored contacts hold at one attribute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The path below `attrs` (`["vip"]`, `["geo", "city"]`).
    pub path: Vec<String>,
    /// The scalar types held there (a null, list or object matches no
    /// literal, so none is counted).
    pub types: AttrTypes,
    /// Contacts holding a scalar there.
    pub contacts: i64,
}

/// The JSON types, as each database names them, that map to `AttrType`s.
fn json_types(backend: DbBackend) -> [(AttrType, &'static str); 3] {
    if backend == DbBackend::Postgres {
        [
            (AttrType::Bool, "('boolean')"),
            (AttrType::Number, "('number')"),
            (AttrType::String, "('string')"),
        ]
    } else {
        [
            (AttrType::Bool, "('true', 'false')"),
            (AttrType::Number, "('integer', 'real')"),
            (AttrType::String, "('text')"),
        ]
    }
}

/// The types the contacts (not forgotten ones) hold at each of `paths`, in
/// the same order; a path no contact holds a scalar at has empty `types`.
/// On SQLite a path segment with a quote or backslash cannot be written as
/// a JSON path and is reported empty (the segment compiler refuses it too).
pub async fn observed_types(db: &Db, paths: &[Vec<String>]) -> Result<Vec<Observed>, DbErr> {
    let b = db.backend();
    let usable = |path: &Vec<String>| {
        b == DbBackend::Postgres || !path.iter().any(|s| s.contains(['"', '\\']))
    };
    let asked: Vec<&Vec<String>> = paths.iter().filter(|p| usable(p)).collect();
    let mut counts = vec![[0i64; 3]; asked.len()];
    if !asked.is_empty() {
        let kinds = json_types(b);
        let mut q = Sql::new();
        q.push("SELECT ");
        for i in 0..asked.len() {
            for (k, (_, names)) in kinds.iter().enumerate() {
                if i > 0 || k > 0 {
                    q.push(", ");
                }
                q.push(&format!("SUM(CASE WHEN t{i} IN {names} THEN 1 ELSE 0 END)"));
            }
        }
        q.push(" FROM (SELECT ");
        for (i, path) in asked.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            if b == DbBackend::Postgres {
                q.push("jsonb_typeof(jsonb_extract_path(attrs");
                for seg in path.iter() {
                    q.push(", ").bind(seg.clone()).push("::text");
                }
                q.push(&format!(")) AS t{i}"));
            } else {
                let json_path = format!(
                    "$.{}",
                    path.iter()
                        .map(|s| format!("\"{s}\""))
                        .collect::<Vec<_>>()
                        .join(".")
                );
                q.push("json_type(attrs, ")
                    .bind(json_path)
                    .push(&format!(") AS t{i}"));
            }
        }
        q.push(" FROM contacts WHERE forgotten_at IS NULL) x");
        if let Some(row) = db.conn.query_one_raw(q.build(b)).await? {
            for (i, c) in counts.iter_mut().enumerate() {
                for (k, n) in c.iter_mut().enumerate() {
                    *n = row
                        .try_get_by_index::<Option<i64>>(i * kinds.len() + k)?
                        .unwrap_or(0);
                }
            }
        }
    }
    let kinds = json_types(b);
    let mut found = asked.iter().zip(counts);
    Ok(paths
        .iter()
        .map(|path| {
            let mut out = Observed {
                path: path.clone(),
                types: AttrTypes::default(),
                contacts: 0,
            };
            if !usable(path) {
                return out;
            }
            if let Some((_, c)) = found.next() {
                for ((ty, _), n) in kinds.iter().zip(c) {
                    if n > 0 {
                        out.types = out.types.with(*ty);
                        out.contacts += n;
                    }
                }
            }
            out
        })
        .collect())
}

/// The stored types of the undeclared attributes some filters read: what
/// `herald check` (and the console's filter box) checks their literals
/// against. One scan of the contacts for every filter.
pub struct FilterTypes(Vec<Observed>);

impl FilterTypes {
    /// Reads the types of the attributes of `filters` that `declared`
    /// (`[contacts.attrs]`) does not type: those are checked when the config
    /// loads.
    pub async fn of<'a>(
        db: &Db,
        declared: &BTreeMap<String, AttrType>,
        filters: impl IntoIterator<Item = &'a Expr>,
    ) -> Result<FilterTypes, DbErr> {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for expr in filters {
            for f in expr.fields() {
                if let Field::Attr(path) = f
                    && !declared.contains_key(&path[0])
                    && !paths.contains(path)
                {
                    paths.push(path.clone());
                }
            }
        }
        if paths.is_empty() {
            return Ok(FilterTypes(Vec::new()));
        }
        Ok(FilterTypes(observed_types(db, &paths).await?))
    }

    /// A literal of `expr` (whose spans index `text`) that cannot match the
    /// types stored at its attribute: such a filter silently matches nobody.
    pub fn check(&self, expr: &Expr, text: &str) -> Result<(), FilterError> {
        let find = |path: &[String]| self.0.iter().find(|o| o.path == path);
        let types_of = |path: &[String]| -> Option<AttrTypes> {
            find(path).map(|o| o.types).filter(|t| !t.is_empty())
        };
        let origin_of = |path: &[String]| match find(path).map_or(0, |o| o.contacts) {
            1 => "in the 1 stored contact that has it".to_string(),
            n => format!("in all {n} stored contacts that have it"),
        };
        check_filter_types(expr, text, &types_of, &origin_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db::on_both_databases;

    async fn contact(db: &Db, id: i64, attrs: &str) {
        let sql = format!(
            "INSERT INTO contacts (id, external_id, attrs, created_at, updated_at) VALUES ({id}, 'x{id}', '{attrs}', 0, 0)"
        );
        db.conn
            .execute_raw(sea_orm::Statement::from_string(db.backend(), sql))
            .await
            .unwrap();
    }

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    /// Each path's scalar types, counted over the contacts that hold one.
    async fn the_types_contacts_hold_are_read_per_path(db: &Db) {
        contact(
            db,
            1,
            r#"{"vip": true, "score": 3, "geo": {"city": "Hangzhou"}}"#,
        )
        .await;
        contact(db, 2, r#"{"vip": false, "score": "high", "tags": ["a"]}"#).await;
        contact(db, 3, r#"{"vip": true, "score": 2.5, "note": null}"#).await;
        contact(db, 4, r#"{}"#).await;
        let asked: Vec<Vec<String>> = ["vip", "score", "geo.city", "tags", "note", "none"]
            .into_iter()
            .map(path)
            .collect();
        let found = observed_types(db, &asked).await.unwrap();
        let got: Vec<(String, Vec<AttrType>, i64)> = found
            .iter()
            .map(|o| (o.path.join("."), o.types.iter().collect(), o.contacts))
            .collect();
        assert_eq!(
            got,
            vec![
                ("vip".into(), vec![AttrType::Bool], 3),
                ("score".into(), vec![AttrType::Number, AttrType::String], 3),
                ("geo.city".into(), vec![AttrType::String], 1),
                ("tags".into(), vec![], 0),
                ("note".into(), vec![], 0),
                ("none".into(), vec![], 0),
            ]
        );
        assert_eq!(observed_types(db, &[]).await.unwrap(), vec![]);
    }

    on_both_databases!(the_types_contacts_hold_are_read_per_path);
}
