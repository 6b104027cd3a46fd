//! A tiny SQL builder: text with `$n` placeholders and the values bound to
//! them. User text only ever travels as a bound value; SQLite placeholders
//! are rewritten to `?n`, which SQLite numbers the same way.

use sea_orm::{DbBackend, Statement, Value};

/// SQL text and its bound values.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    /// The text, with `$1`, `$2`... placeholders.
    pub text: String,
    /// Values in placeholder order.
    pub values: Vec<Value>,
}

impl Sql {
    /// An empty statement.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends literal SQL text (never user input).
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds `v` and appends its placeholder.
    pub fn bind(&mut self, v: impl Into<Value>) -> &mut Self {
        self.values.push(v.into());
        let n = self.values.len();
        self.text.push('$');
        self.text.push_str(&n.to_string());
        self
    }

    /// Binds `v`, cast to `ty` on PostgreSQL (where an untyped NULL needs a type).
    pub fn bind_as(&mut self, backend: DbBackend, v: impl Into<Value>, ty: &str) -> &mut Self {
        self.bind(v);
        if backend == DbBackend::Postgres {
            self.text.push_str("::");
            self.text.push_str(ty);
        }
        self
    }

    /// The statement for `backend`.
    pub fn build(self, backend: DbBackend) -> Statement {
        Statement::from_sql_and_values(backend, placeholders(backend, &self.text), self.values)
    }
}

/// Rewrites `$n` to `?n` for SQLite; PostgreSQL keeps `$n`.
pub fn placeholders(backend: DbBackend, text: &str) -> String {
    if backend != DbBackend::Sqlite {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds a statement from fixed SQL text and values.
pub fn stmt(backend: DbBackend, text: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(backend, placeholders(backend, text), values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_bind_order() {
        let mut q = Sql::new();
        q.push("a = ").bind(1i64).push(" and b = ").bind("x");
        assert_eq!(q.text, "a = $1 and b = $2");
        assert_eq!(
            placeholders(DbBackend::Sqlite, &q.text),
            "a = ?1 and b = ?2"
        );
        assert_eq!(placeholders(DbBackend::Postgres, &q.text), q.text);
    }
}
