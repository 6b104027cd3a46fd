//! Compiles a segment filter into a parameterised SQL condition over
//! `contacts c`, for SQLite and PostgreSQL. Values the user wrote are always
//! bound parameters; field names come from a fixed list. Every condition is
//! two-valued (`COALESCE(.., FALSE)`), so `not` of a comparison with a
//! missing value is true, as SPEC's counting rules say, whatever SQL does with NULL.

use herald_domain::segment::{CmpOp, Expr, Field, Literal};
use herald_domain::types::Channel;
use sea_orm::DbBackend;

use crate::sql::Sql;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A filter the SQL compiler cannot express yet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not supported in segment queries yet")]
pub struct Unsupported(pub String);

/// Appends the condition for `expr` at snapshot instant `now` (ms) to `q`.
pub fn compile(expr: &Expr, backend: DbBackend, now: i64, q: &mut Sql) -> Result<(), Unsupported> {
    Compiler { b: backend, now }.expr(expr, q)
}

struct Compiler {
    b: DbBackend,
    now: i64,
}

/// How a field's value is read, and which SQL type it has.
enum Operand {
    /// A text expression (NULL when missing).
    Text(String),
    /// A numeric expression (NULL when missing).
    Num(String),
    /// An `attrs` path: typed per literal.
    Attr(Vec<String>),
}

impl Compiler {
    fn pg(&self) -> bool {
        self.b == DbBackend::Postgres
    }

    fn expr(&self, e: &Expr, q: &mut Sql) -> Result<(), Unsupported> {
        match e {
            Expr::And { lhs, rhs, .. } | Expr::Or { lhs, rhs, .. } => {
                let op = if matches!(e, Expr::And { .. }) {
                    " AND "
                } else {
                    " OR "
                };
                q.push("(");
                self.expr(lhs, q)?;
                q.push(op);
                self.expr(rhs, q)?;
                q.push(")");
            }
            Expr::Not { expr, .. } => {
                q.push("(NOT ");
                self.expr(expr, q)?;
                q.push(")");
            }
            Expr::Compare {
                field, op, value, ..
            } => {
                self.leaf(q, |q| self.compare(&field.value, op.value, &value.value, q))?;
            }
            Expr::Between {
                field, low, high, ..
            } => {
                self.leaf(q, |q| {
                    self.compare(&field.value, CmpOp::Ge, &low.value, q)?;
                    q.push(" AND ");
                    self.compare(&field.value, CmpOp::Le, &high.value, q)
                })?;
            }
            Expr::In { field, values, .. } => {
                self.leaf(q, |q| {
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            q.push(" OR ");
                        }
                        q.push("(");
                        self.compare(&field.value, CmpOp::Eq, &v.value, q)?;
                        q.push(")");
                    }
                    Ok(())
                })?;
            }
            Expr::Contains { field, needle, .. } => {
                self.leaf(q, |q| {
                    q.push(if self.pg() { "strpos(" } else { "instr(" });
                    match self.operand(&field.value)? {
                        Operand::Text(col) => {
                            q.push(&col);
                        }
                        Operand::Attr(path) => {
                            self.attr_typed(&path, &Literal::Str(String::new()), q)
                        }
                        Operand::Num(_) => {
                            return Err(Unsupported(format!("{} contains", field.value)));
                        }
                    }
                    q.push(", ").bind(needle.value.clone()).push(") > 0");
                    Ok(())
                })?;
            }
            Expr::HasTag { tag, .. } => {
                self.leaf(q, |q| {
                    if self.pg() {
                        q.push("COALESCE(c.tags, '[]'::jsonb) @> jsonb_build_array(").bind(tag.value.clone()).push("::text)");
                    } else {
                        q.push("EXISTS (SELECT 1 FROM json_each(COALESCE(c.tags, '[]')) WHERE value = ").bind(tag.value.clone()).push(")");
                    }
                    Ok(())
                })?;
            }
            Expr::ChannelOk { channel, .. } => {
                self.leaf(q, |q| {
                    q.push(&channel_ok_sql(channel.value, self.b));
                    Ok(())
                })?;
            }
            Expr::IsTrue { field, .. } => {
                self.leaf(q, |q| {
                    self.compare(&field.value, CmpOp::Eq, &Literal::Bool(true), q)
                })?;
            }
        }
        Ok(())
    }

    /// Wraps a leaf so that NULL (a missing value) reads as false.
    fn leaf(
        &self,
        q: &mut Sql,
        body: impl FnOnce(&mut Sql) -> Result<(), Unsupported>,
    ) -> Result<(), Unsupported> {
        q.push("COALESCE((");
        body(q)?;
        q.push("), FALSE)");
        Ok(())
    }

    fn operand(&self, f: &Field) -> Result<Operand, Unsupported> {
        let now = self.now;
        Ok(match f {
            Field::Email => Operand::Text("c.email".into()),
            Field::Phone => Operand::Text("c.phone".into()),
            Field::Timezone => Operand::Text("c.timezone".into()),
            Field::Locale => Operand::Text("c.locale".into()),
            Field::Attr(path) => Operand::Attr(path.clone()),
            // `now` is a number herald computed, not user text: safe to inline.
            Field::FirstSeenDays => Operand::Num(format!(
                "(({now} - CASE WHEN c.first_seen_at IS NOT NULL AND c.first_seen_at <= {now} AND c.first_seen_at < c.created_at THEN c.first_seen_at ELSE c.created_at END) / {DAY_MS})"
            )),
            Field::Count { .. } | Field::Sum { .. } | Field::DaysSince(_) => {
                Operand::Num(String::new())
            }
            other => return Err(Unsupported(other.to_string())),
        })
    }

    /// Emits `<field> OP <value>`; NULL when the field is missing or of another type.
    fn compare(&self, f: &Field, op: CmpOp, v: &Literal, q: &mut Sql) -> Result<(), Unsupported> {
        let sql_op = match op {
            CmpOp::Eq => " = ",
            CmpOp::Ne => " <> ",
            CmpOp::Lt => " < ",
            CmpOp::Le => " <= ",
            CmpOp::Gt => " > ",
            CmpOp::Ge => " >= ",
        };
        match f {
            Field::Count { event, window } | Field::Sum { event, window } => {
                let agg = if matches!(f, Field::Count { .. }) {
                    "COUNT(*)"
                } else {
                    "COALESCE(SUM(e.value), 0)"
                };
                q.push(&format!(
                    "(SELECT {agg} FROM events e WHERE e.contact_id = c.id AND e.name = "
                ));
                q.bind(event.clone())
                    .push(&format!(" AND e.at <= {}", self.now));
                if let Some(w) = window {
                    q.push(&format!(" AND e.at > {}", self.now - w.millis()));
                }
                q.push(")");
                return self.rhs_number(sql_op, v, q);
            }
            Field::DaysSince(event) => {
                q.push(&format!("(({} - (SELECT MAX(e.at) FROM events e WHERE e.contact_id = c.id AND e.name = ", self.now));
                q.bind(event.clone())
                    .push(&format!(" AND e.at <= {})) / {DAY_MS})", self.now));
                return self.rhs_number(sql_op, v, q);
            }
            _ => {}
        }
        match self.operand(f)? {
            Operand::Text(col) => {
                let Literal::Str(s) = v else {
                    return Err(Unsupported(format!("{f} compared with {}", v.type_name())));
                };
                q.push(&col);
                if self.pg() {
                    q.push(" COLLATE \"C\"");
                }
                q.push(sql_op).bind(s.clone());
            }
            Operand::Num(expr) => {
                q.push(&expr);
                self.rhs_number(sql_op, v, q)?;
            }
            Operand::Attr(path) => {
                self.attr_typed(&path, v, q);
                if self.pg() && matches!(v, Literal::Str(_)) {
                    q.push(" COLLATE \"C\"");
                }
                q.push(sql_op);
                match v {
                    Literal::Str(s) => q.bind(s.clone()),
                    Literal::Num(n) => q.bind(*n),
                    Literal::Bool(b) if self.pg() => q.bind(*b),
                    Literal::Bool(b) => q.bind(i64::from(*b)),
                };
            }
        }
        Ok(())
    }

    fn rhs_number(&self, sql_op: &str, v: &Literal, q: &mut Sql) -> Result<(), Unsupported> {
        let Literal::Num(n) = v else {
            return Err(Unsupported(format!(
                "a number compared with {}",
                v.type_name()
            )));
        };
        q.push(sql_op).bind(*n);
        Ok(())
    }

    /// The attribute at `path` as the SQL type of `like`, or NULL when it has another JSON type.
    fn attr_typed(&self, path: &[String], like: &Literal, q: &mut Sql) {
        if self.pg() {
            let (json_type, cast) = match like {
                Literal::Str(_) => ("string", "text"),
                Literal::Num(_) => ("number", "float8"),
                Literal::Bool(_) => ("boolean", "boolean"),
            };
            let mut args = Sql::new();
            std::mem::swap(&mut args.values, &mut q.values);
            for seg in path {
                args.push(", ").bind(seg.clone()).push("::text");
            }
            std::mem::swap(&mut args.values, &mut q.values);
            q.push(&format!(
                "(CASE WHEN jsonb_typeof(jsonb_extract_path(c.attrs{a})) = '{json_type}' THEN (jsonb_extract_path_text(c.attrs{a}))::{cast} END)",
                a = args.text
            ));
        } else {
            let json_path = format!(
                "$.{}",
                path.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(".")
            );
            let types = match like {
                Literal::Str(_) => "('text')",
                Literal::Num(_) => "('integer', 'real')",
                Literal::Bool(_) => "('true', 'false')",
            };
            q.push("(CASE WHEN json_type(c.attrs, ")
                .bind(json_path.clone())
                .push(&format!(") IN {types} THEN json_extract(c.attrs, "));
            q.bind(json_path).push(") END)");
        }
    }
}

/// `channel_ok(ch)`: an address, consent, and no suppression on the channel.
pub fn channel_ok_sql(channel: Channel, b: DbBackend) -> String {
    let t = if b == DbBackend::Postgres {
        "TRUE"
    } else {
        "1"
    };
    let sup = |addr: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.topic IS NULL AND s.channel IN ('{ch}', 'any') AND (s.contact_id = c.id{addr}))",
            ch = channel.as_str()
        )
    };
    match channel {
        Channel::Email => format!(
            "c.email IS NOT NULL AND COALESCE(c.consent_email, {t}) = {t} AND {}",
            sup(" OR s.address = c.email")
        ),
        Channel::Sms => format!(
            "c.phone IS NOT NULL AND COALESCE(c.consent_sms, NOT {t}) = {t} AND {}",
            sup(" OR s.address = c.phone")
        ),
        Channel::Push => format!(
            "EXISTS (SELECT 1 FROM push_tokens p WHERE p.contact_id = c.id AND p.invalid_at IS NULL) AND COALESCE(c.consent_push, {t}) = {t} AND {}",
            sup("")
        ),
    }
}
