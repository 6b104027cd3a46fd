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

/// Rewrites `$n` placeholders for SQLite; PostgreSQL keeps `$n`.
///
/// When the placeholders appear in order `$1, $2, ...` (always so for [`Sql`])
/// they become anonymous `?`: SQLite looks up the name of a numbered
/// parameter by walking a list, so binding 10,000 `?NNN` costs O(n²) and made
/// a 1,000-row upsert 30 times slower. Otherwise they become `?n`.
pub fn placeholders(backend: DbBackend, text: &str) -> String {
    if backend != DbBackend::Sqlite {
        return text.to_string();
    }
    let numbered = |anonymous: bool| {
        let mut out = String::with_capacity(text.len());
        let mut expected = 1usize;
        let mut in_order = true;
        let mut chars = text.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
                let mut n = 0usize;
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                    n = n * 10 + (d as usize - '0' as usize);
                    chars.next();
                }
                in_order &= n == expected;
                expected += 1;
                out.push('?');
                if !anonymous {
                    out.push_str(&n.to_string());
                }
            } else {
                out.push(c);
            }
        }
        (out, in_order)
    };
    match numbered(true) {
        (out, true) => out,
        _ => numbered(false).0,
    }
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
        assert_eq!(placeholders(DbBackend::Sqlite, &q.text), "a = ? and b = ?");
        assert_eq!(
            placeholders(DbBackend::Sqlite, "a = $2 and b = $1 or c = $12"),
            "a = ?2 and b = ?1 or c = ?12"
        );
        assert_eq!(placeholders(DbBackend::Postgres, &q.text), q.text);
    }
}
