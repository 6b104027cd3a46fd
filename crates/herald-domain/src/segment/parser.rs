//! Recursive-descent parser from filter text to a checked [`Expr`].
//!
//! Grammar (precedence `not` > `and` > `or`; a comparison binds tighter than `not`):
//! ```text
//! or        := and ("or" and)*
//! and       := unary ("and" unary)*
//! unary     := "not" unary | "(" or ")" | condition
//! condition := "has_tag" "(" STR ")" | "channel_ok" "(" STR ")"
//!            | field (OP value | "between" value "and" value | "in" "[" values "]"
//!                     | "contains" value | "not" ("in" | "between" | "contains") ...)
//!            | attrs.PATH                      (bare: `attrs.PATH == true`)
//! ```

use std::ops::Range;

use super::ast::{Expr, Field, Literal, Located};
use super::check;
use super::lexer::{Tok, Token, lex};
use super::names::{self, FIELDS, FUNCTIONS, example_call};
use crate::diagnostic::Diagnostic;
use crate::duration::Span;
use crate::types::Channel;

/// Longest token text quoted whole in a message.
const MAX_QUOTED_TOKEN: usize = 40;

/// Why a filter did not parse or check: the byte span in the filter text, what is wrong, and what would do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// Byte range of the offending token in the filter text.
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// What would be valid, if we can tell.
    pub help: Option<String>,
}

impl FilterError {
    /// An error at `span`.
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint saying what would be valid.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// A diagnostic for `file`, the filter text starting at byte `offset` of `file_source`.
    pub fn into_diagnostic(self, file: &str, file_source: &str, offset: usize) -> Diagnostic {
        let span = self.span.start + offset..self.span.end + offset;
        let d = Diagnostic::new(file, file_source, span, self.message);
        match self.help {
            Some(help) => d.with_help(help),
            None => d,
        }
    }
}

/// Parses and type-checks a filter.
pub fn parse(src: &str) -> Result<Expr, FilterError> {
    let tokens = lex(src)?;
    if tokens.is_empty() {
        return Err(FilterError::new(0..0, "the filter is empty")
            .with_help("write a condition, e.g. `lifecycle == \"active\"`"));
    }
    let mut p = Parser {
        src,
        tokens,
        pos: 0,
    };
    let expr = p.or_expr()?;
    if let Some(t) = p.peek() {
        let text = p.text(t);
        let (message, help) = match &t.tok {
            Tok::RParen => (
                "unmatched `)`".to_string(),
                "remove it, or open it with `(` earlier".to_string(),
            ),
            Tok::Name(n) => (
                format!("unexpected `{text}` after a complete condition"),
                names::miscased_keyword(n)
                    .unwrap_or_else(|| "join conditions with `and` or `or`".into()),
            ),
            _ => (
                format!("unexpected `{text}` after a complete condition"),
                "join conditions with `and` or `or`".into(),
            ),
        };
        return Err(FilterError::new(t.span.clone(), message).with_help(help));
    }
    Ok(expr)
}

struct Parser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

/// The argument list of a call: each a quoted string.
type Args = Vec<Located<String>>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += usize::from(t.is_some());
        t
    }

    /// The span of the last token taken (where "expected X after this" points at the end).
    fn prev_span(&self) -> Range<usize> {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .map_or(0..0, |t| t.span.clone())
    }

    /// A token's source text, shortened when long.
    fn text(&self, t: &Token) -> String {
        let s = &self.src[t.span.clone()];
        if s.chars().count() > MAX_QUOTED_TOKEN {
            let head: String = s.chars().take(MAX_QUOTED_TOKEN).collect();
            format!("{head}…")
        } else {
            s.to_string()
        }
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut lhs = self.and_expr()?;
        while self.peek_tok() == Some(&Tok::Or) {
            self.bump();
            let rhs = self.and_expr()?;
            let span = lhs.span().start..rhs.span().end;
            lhs = Expr::Or {
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                span,
            };
        }
        Ok(lhs)
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut lhs = self.unary()?;
        while self.peek_tok() == Some(&Tok::And) {
            self.bump();
            let rhs = self.unary()?;
            let span = lhs.span().start..rhs.span().end;
            lhs = Expr::And {
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                span,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        match self.peek_tok() {
            Some(Tok::Not) => {
                let not = self.bump().map_or(0..0, |t| t.span);
                let inner = self.unary()?;
                let span = not.start..inner.span().end;
                Ok(Expr::Not {
                    expr: Box::new(inner),
                    span,
                })
            }
            Some(Tok::LParen) => {
                let open = self.bump().map_or(0..0, |t| t.span);
                let mut inner = self.or_expr()?;
                match self.bump() {
                    Some(Token {
                        tok: Tok::RParen,
                        span,
                    }) => {
                        inner.set_span(open.start..span.end);
                        Ok(inner)
                    }
                    Some(t) => Err(FilterError::new(
                        t.span.clone(),
                        format!("expected `and`, `or` or `)`, found `{}`", self.text(&t)),
                    )
                    .with_help(
                        "close the parenthesis with `)`, or join conditions with `and` or `or`",
                    )),
                    None => Err(FilterError::new(open, "unclosed parenthesis")
                        .with_help("add a `)` to close it")),
                }
            }
            _ => self.condition(),
        }
    }

    fn condition(&mut self) -> Result<Expr, FilterError> {
        let Some(t) = self.bump() else {
            let prev = self.prev_span();
            let after = &self.src[prev.clone()];
            return Err(
                FilterError::new(prev, format!("expected a condition after `{after}`"))
                    .with_help("e.g. `lifecycle == \"active\"` or `has_tag(\"vip\")`"),
            );
        };
        match &t.tok {
            Tok::Name(name) => {
                if self.peek_tok() == Some(&Tok::LParen) {
                    self.call(name, t.span.clone())
                } else {
                    let field = field_from_name(name, t.span.clone())?;
                    self.after_field(field)
                }
            }
            Tok::Str(_) | Tok::Num(_) | Tok::True | Tok::False => Err(FilterError::new(
                t.span.clone(),
                format!("a condition starts with a field, found `{}`", self.text(&t)),
            )
            .with_help("put the field first, e.g. `attrs.age >= 18`")),
            _ => Err(FilterError::new(
                t.span.clone(),
                format!("expected a condition, found `{}`", self.text(&t)),
            )
            .with_help("e.g. `lifecycle == \"active\"` or `has_tag(\"vip\")`")),
        }
    }

    /// `name(args)`: a predicate or an aggregate field followed by its comparison.
    fn call(&mut self, name: &str, name_span: Range<usize>) -> Result<Expr, FilterError> {
        let (args, span) = self.args(name_span.start)?;
        let arity = |ok: bool, usage: &str| {
            if ok {
                Ok(())
            } else {
                Err(
                    FilterError::new(span.clone(), format!("`{name}` takes {usage}"))
                        .with_help(format!("e.g. `{}`", example_call(name))),
                )
            }
        };
        let field = match name {
            "has_tag" => {
                arity(args.len() == 1, "one tag")?;
                let tag = non_empty(&args[0], "the tag is empty", "has_tag(\"vip\")")?;
                return self.predicate(Expr::HasTag { tag, span }, name);
            }
            "channel_ok" => {
                arity(args.len() == 1, "one channel")?;
                let arg = &args[0];
                let channel: Channel = arg.value.parse().map_err(|_| {
                    let known = Channel::ALL.map(Channel::as_str);
                    let help = match names::closest(&arg.value, known) {
                        Some(near) => {
                            format!("did you mean \"{near}\"? channels are: email, sms, push")
                        }
                        None => "channels are: email, sms, push".into(),
                    };
                    FilterError::new(arg.span.clone(), format!("unknown channel `{}`", arg.value))
                        .with_help(help)
                })?;
                let channel = Located::new(channel, arg.span.clone());
                return self.predicate(Expr::ChannelOk { channel, span }, name);
            }
            "count" | "sum" => {
                arity(
                    (1..=2).contains(&args.len()),
                    "an event name and an optional window",
                )?;
                let event = event_name(&args[0], name)?;
                let window = args.get(1).map(window).transpose()?;
                if name == "count" {
                    Field::Count { event, window }
                } else {
                    Field::Sum { event, window }
                }
            }
            "days_since" => {
                arity(args.len() == 1, "one event name")?;
                Field::DaysSince(event_name(&args[0], name)?)
            }
            "overdue" => {
                arity(args.len() == 1, "one event name")?;
                Field::Overdue(event_name(&args[0], name)?)
            }
            _ if FIELDS.contains(&name) || name.starts_with("attrs.") => {
                return Err(FilterError::new(
                    name_span,
                    format!("`{name}` is a field, not a function"),
                )
                .with_help(format!("compare it, e.g. `{name} == \"...\"`")));
            }
            _ => {
                let help = match names::closest(name, FUNCTIONS.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("functions are: {}", FUNCTIONS.join(", ")),
                };
                return Err(
                    FilterError::new(name_span, format!("unknown function `{name}`"))
                        .with_help(help),
                );
            }
        };
        self.after_field(Located::new(field, span))
    }

    /// The arguments after a name: `(` then quoted strings separated by commas, then `)`.
    fn args(&mut self, start: usize) -> Result<(Args, Range<usize>), FilterError> {
        let open = self.bump().map_or(0..0, |t| t.span);
        let mut args = Vec::new();
        let unclosed = |open: Range<usize>| {
            FilterError::new(open, "unclosed parenthesis").with_help("add a `)` to close it")
        };
        loop {
            let Some(t) = self.bump() else {
                return Err(unclosed(open));
            };
            match t.tok {
                Tok::RParen => return Ok((args, start..t.span.end)),
                Tok::Str(s) => args.push(Located::new(s, t.span.clone())),
                Tok::Name(_) => {
                    let text = self.text(&t);
                    return Err(FilterError::new(
                        t.span,
                        format!("expected a quoted string, found `{text}`"),
                    )
                    .with_help(format!("quote it: `\"{text}\"`")));
                }
                _ => {
                    return Err(FilterError::new(
                        t.span.clone(),
                        format!("expected a quoted string, found `{}`", self.text(&t)),
                    )
                    .with_help(
                        "arguments are strings: an event name like \"order_placed\", a window like \"30d\"",
                    ));
                }
            }
            match self.bump() {
                Some(Token {
                    tok: Tok::Comma, ..
                }) => {}
                Some(Token {
                    tok: Tok::RParen,
                    span,
                }) => return Ok((args, start..span.end)),
                Some(t) => {
                    return Err(FilterError::new(
                        t.span.clone(),
                        format!("expected `,` or `)`, found `{}`", self.text(&t)),
                    ));
                }
                None => return Err(unclosed(open)),
            }
        }
    }

    /// `has_tag(...)` and `channel_ok(...)` are conditions; they cannot be compared.
    fn predicate(&mut self, expr: Expr, name: &str) -> Result<Expr, FilterError> {
        if let Some(t) = self.peek()
            && matches!(t.tok, Tok::Op(_) | Tok::Between | Tok::In | Tok::Contains)
        {
            return Err(FilterError::new(
                t.span.clone(),
                format!("`{name}(...)` is a condition by itself and cannot be compared"),
            )
            .with_help(format!(
                "drop the comparison; write `not {expr}` for the opposite"
            )));
        }
        Ok(expr)
    }

    /// What follows a field: an operator and its values, or nothing for a bare boolean attribute.
    fn after_field(&mut self, field: Located<Field>) -> Result<Expr, FilterError> {
        let start = field.span.start;
        let Some(t) = self.peek().cloned() else {
            return bare(field);
        };
        match t.tok {
            Tok::Op(op) => {
                self.bump();
                let op = Located::new(op, t.span);
                let value = self.value_after(op.value.as_str(), op.span.clone())?;
                check::compare(self.src, &field, &op, &value)?;
                let span = start..value.span.end;
                Ok(Expr::Compare {
                    field,
                    op,
                    value,
                    span,
                })
            }
            Tok::Between => {
                self.bump();
                let low = self.value_after("between", t.span.clone())?;
                match self.peek() {
                    Some(Token { tok: Tok::And, .. }) => {
                        self.bump();
                    }
                    other => {
                        let at = other.map_or_else(|| low.span.clone(), |o| o.span.clone());
                        return Err(FilterError::new(
                            at,
                            "`between` needs `and`: `x between 1 and 5`",
                        ));
                    }
                }
                let high = self.value_after("and", self.prev_span())?;
                check::between(self.src, &field, t.span, &low, &high)?;
                let span = start..high.span.end;
                Ok(Expr::Between {
                    field,
                    low,
                    high,
                    span,
                })
            }
            Tok::In => {
                self.bump();
                let (values, list_span) = self.list(t.span.clone())?;
                check::in_list(self.src, &field, &values)?;
                Ok(Expr::In {
                    field,
                    values,
                    span: start..list_span.end,
                })
            }
            Tok::Contains => {
                self.bump();
                let value = self.value_after("contains", t.span.clone())?;
                let needle = check::contains(self.src, &field, t.span, value)?;
                let span = start..needle.span.end;
                Ok(Expr::Contains {
                    field,
                    needle,
                    span,
                })
            }
            Tok::Not
                if matches!(
                    self.tokens.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::In | Tok::Between | Tok::Contains)
                ) =>
            {
                self.bump();
                let inner = self.after_field(field)?;
                let span = inner.span();
                Ok(Expr::Not {
                    expr: Box::new(inner),
                    span,
                })
            }
            Tok::And | Tok::Or | Tok::RParen => bare(field),
            _ => {
                let name = field.value.to_string();
                let help = match &t.tok {
                    Tok::Name(n) => names::miscased_keyword(n),
                    _ => None,
                }
                .unwrap_or_else(|| {
                    "compare with `==`, `!=`, `<`, `<=`, `>`, `>=`, `between`, `in` or `contains`"
                        .into()
                });
                Err(FilterError::new(
                    t.span.clone(),
                    format!(
                        "expected an operator after `{name}`, found `{}`",
                        self.text(&t)
                    ),
                )
                .with_help(help))
            }
        }
    }

    /// A literal after `after` (an operator or keyword at `after_span`).
    fn value_after(
        &mut self,
        after: &str,
        after_span: Range<usize>,
    ) -> Result<Located<Literal>, FilterError> {
        let message = format!("expected a value after `{after}`");
        let Some(t) = self.peek().cloned() else {
            return Err(FilterError::new(after_span, message)
                .with_help("a value is a quoted string, a number, `true` or `false`"));
        };
        let value = match t.tok {
            Tok::Str(s) => Literal::Str(s),
            Tok::Num(n) => Literal::Num(n),
            Tok::True => Literal::Bool(true),
            Tok::False => Literal::Bool(false),
            Tok::Name(n) => {
                let help = match n.to_lowercase().as_str() {
                    "true" | "false" => format!("booleans are lowercase: `{}`", n.to_lowercase()),
                    _ => format!("text needs quotes: `\"{n}\"`"),
                };
                return Err(FilterError::new(t.span, message).with_help(help));
            }
            _ => {
                return Err(FilterError::new(t.span, message)
                    .with_help("a value is a quoted string, a number, `true` or `false`"));
            }
        };
        self.bump();
        Ok(Located::new(value, t.span))
    }

    /// `[v1, v2, ...]` after `in`; returns the values and the span of the brackets.
    fn list(
        &mut self,
        in_span: Range<usize>,
    ) -> Result<(Vec<Located<Literal>>, Range<usize>), FilterError> {
        let open = match self.peek() {
            Some(Token {
                tok: Tok::LBracket,
                span,
            }) => span.clone(),
            other => {
                let at = other.map_or(in_span, |t| t.span.clone());
                return Err(FilterError::new(at, "`in` needs a list in brackets")
                    .with_help("e.g. `lifecycle in [\"dormant\", \"churned\"]`"));
            }
        };
        self.bump();
        let unclosed = |open: Range<usize>| {
            FilterError::new(open, "unclosed bracket").with_help("add a `]` to close the list")
        };
        let mut values = Vec::new();
        loop {
            match self.peek_tok() {
                None => return Err(unclosed(open)),
                Some(Tok::RBracket) => break,
                _ => {}
            }
            let value = self.value_after("[", open.clone()).map_err(|mut e| {
                e.message = "expected a value in the list".into();
                e
            })?;
            values.push(value);
            match self.peek() {
                Some(Token {
                    tok: Tok::Comma, ..
                }) => {
                    self.bump();
                }
                Some(Token {
                    tok: Tok::RBracket, ..
                }) => break,
                Some(t) => {
                    return Err(FilterError::new(
                        t.span.clone(),
                        format!("expected `,` or `]`, found `{}`", self.text(t)),
                    ));
                }
                None => return Err(unclosed(open)),
            }
        }
        let close = self.bump().map_or(0..0, |t| t.span);
        let list_span = open.start..close.end;
        if values.is_empty() {
            return Err(FilterError::new(list_span, "`in` needs at least one value")
                .with_help("e.g. `lifecycle in [\"dormant\", \"churned\"]`"));
        }
        Ok((values, list_span))
    }
}

/// A field with no operator after it: only a boolean attribute may stand alone.
fn bare(field: Located<Field>) -> Result<Expr, FilterError> {
    if let Field::Attr(_) = field.value {
        let span = field.span.clone();
        return Ok(Expr::IsTrue { field, span });
    }
    let example = match field.value.value_type() {
        super::ast::ValueType::Text => format!("{} contains \"...\"", field.value),
        super::ast::ValueType::Stage => "lifecycle == \"active\"".into(),
        _ => format!("{} >= 1", field.value),
    };
    Err(FilterError::new(
        field.span,
        format!("`{}` is not a condition by itself", field.value),
    )
    .with_help(format!("compare it, e.g. `{example}`")))
}

/// The field a plain (call-less) name stands for.
fn field_from_name(name: &str, span: Range<usize>) -> Result<Located<Field>, FilterError> {
    let field = match name {
        "email" => Field::Email,
        "phone" => Field::Phone,
        "timezone" => Field::Timezone,
        "locale" => Field::Locale,
        "lifecycle" => Field::Lifecycle,
        "first_seen_days" => Field::FirstSeenDays,
        "rfm.r" => Field::RfmR,
        "rfm.f" => Field::RfmF,
        "rfm.m" => Field::RfmM,
        "rfm.r_days" => Field::RfmRDays,
        "rfm.f_count" => Field::RfmFCount,
        "rfm.m_value" => Field::RfmMValue,
        "attrs" => {
            return Err(FilterError::new(span, "`attrs` needs a path")
                .with_help("e.g. `attrs.region` or `attrs.address.city`"));
        }
        _ => {
            if let Some(path) = name.strip_prefix("attrs.") {
                Field::Attr(path.split('.').map(str::to_string).collect())
            } else if FUNCTIONS.contains(&name) {
                return Err(FilterError::new(
                    span,
                    format!("`{name}` is a function and needs arguments"),
                )
                .with_help(format!("e.g. `{}`", example_call(name))));
            } else {
                return Err(FilterError::new(span, format!("unknown field `{name}`"))
                    .with_help(names::unknown_field_help(name)));
            }
        }
    };
    Ok(Located::new(field, span))
}

fn non_empty(
    arg: &Located<String>,
    message: &str,
    example: &str,
) -> Result<Located<String>, FilterError> {
    if arg.value.is_empty() {
        return Err(
            FilterError::new(arg.span.clone(), message).with_help(format!("e.g. `{example}`"))
        );
    }
    Ok(arg.clone())
}

fn event_name(arg: &Located<String>, function: &str) -> Result<String, FilterError> {
    non_empty(arg, "the event name is empty", &example_call(function)).map(|a| a.value)
}

/// A window argument such as `"30d"`: a valid, non-zero duration.
fn window(arg: &Located<String>) -> Result<Span, FilterError> {
    let help = "write a whole number and a unit: \"90d\", \"12h\", \"30m\", \"45s\" or \"2w\"";
    let span: Span = arg.value.parse().map_err(|_| {
        FilterError::new(
            arg.span.clone(),
            format!("`{}` is not a duration", arg.value),
        )
        .with_help(help)
    })?;
    if span.secs() == 0 {
        return Err(
            FilterError::new(arg.span.clone(), "a window must be longer than zero")
                .with_help("leave the window out to count all history"),
        );
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree's shape with spans left out: operators as s-expressions, leaves as written back.
    fn tree(e: &Expr) -> String {
        match e {
            Expr::And { lhs, rhs, .. } => format!("(and {} {})", tree(lhs), tree(rhs)),
            Expr::Or { lhs, rhs, .. } => format!("(or {} {})", tree(lhs), tree(rhs)),
            Expr::Not { expr, .. } => format!("(not {})", tree(expr)),
            leaf => format!("[{leaf}]"),
        }
    }

    fn t(src: &str) -> String {
        match parse(src) {
            Ok(e) => tree(&e),
            Err(e) => panic!("{src}: {e:?}"),
        }
    }

    /// Byte range of the first `needle` in `src`.
    fn at(src: &str, needle: &str) -> Range<usize> {
        let i = src
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {src}"));
        i..i + needle.len()
    }

    fn err(src: &str) -> FilterError {
        match parse(src) {
            Ok(e) => panic!("{src} parsed as {e}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's span (the first occurrence of `token`) and exact message.
    #[track_caller]
    fn assert_err(src: &str, token: &str, message: &str) -> Option<String> {
        let e = err(src);
        assert_eq!(e.message, message, "{src}");
        assert_eq!(e.span, at(src, token), "{src}: {e:?}");
        e.help
    }

    #[test]
    fn every_field_parses_and_prints_back() {
        for src in [
            "email == \"a@b.c\"",
            "phone != \"+8613800000000\"",
            "timezone == \"Asia/Shanghai\"",
            "locale >= \"zh\"",
            "attrs.address.city == \"广州\"",
            "attrs.a-b_c.d9 < 5",
            "lifecycle == \"dormant\"",
            "rfm.r == 5",
            "rfm.f > 1",
            "rfm.m <= 3",
            "rfm.r_days > 30",
            "rfm.f_count >= 2",
            "rfm.m_value > 99.5",
            "first_seen_days < 7",
            "count(\"order_placed\", \"365d\") >= 2",
            "count(\"order_placed\") == 0",
            "sum(\"order_placed\", \"12h\") > 100",
            "sum(\"order_placed\") > -1",
            "days_since(\"login\") >= 3",
            "overdue(\"order_placed\") > 1.5",
            "has_tag(\"vip\")",
            "channel_ok(\"sms\")",
            "attrs.vip",
            "attrs.vip == false",
            "attrs.region in [\"gd\", \"gx\", 3, true]",
            "email contains \"@gmail.\"",
            "attrs.note contains \"say \\\"hi\\\" \\\\o/\"",
            "rfm.r between 1 and 5",
            "locale between \"a\" and \"b\"",
        ] {
            let e = parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert_eq!(e.to_string(), src, "display of {src}");
            assert_eq!(e.span(), 0..src.len(), "span of {src}");
        }
    }

    #[test]
    fn literals_in_every_spelling() {
        assert_eq!(t("attrs.x == 'it\\'s'"), "[attrs.x == \"it's\"]");
        assert_eq!(
            t("attrs.x == 'say \"hi\"'"),
            "[attrs.x == \"say \\\"hi\\\"\"]"
        );
        assert_eq!(t("attrs.x == -2.50"), "[attrs.x == -2.5]");
        assert_eq!(t("attrs.x == 007"), "[attrs.x == 7]");
        assert_eq!(t("attrs.x != true"), "[attrs.x != true]");
        assert_eq!(t("count('a', '2w') > 0"), "[count(\"a\", \"2w\") > 0]");
        assert_eq!(t("count(\"a\", \"14d\") > 0"), "[count(\"a\", \"2w\") > 0]");
        assert_eq!(t("attrs.x in [1, 2,]"), "[attrs.x in [1, 2]]");
        assert_eq!(t("count(\"a\",) > 0"), "[count(\"a\") > 0]");
        assert_eq!(t("\n\tattrs.x\n==\n1\n"), "[attrs.x == 1]");
    }

    #[test]
    fn precedence_not_over_and_over_or() {
        let (a, b, c) = ("[attrs.a]", "[attrs.b]", "[attrs.c]");
        assert_eq!(
            t("attrs.a or attrs.b and attrs.c"),
            format!("(or {a} (and {b} {c}))")
        );
        assert_eq!(
            t("attrs.a and attrs.b or attrs.c"),
            format!("(or (and {a} {b}) {c})")
        );
        assert_eq!(t("not attrs.a and attrs.b"), format!("(and (not {a}) {b})"));
        assert_eq!(t("not attrs.a or attrs.b"), format!("(or (not {a}) {b})"));
        assert_eq!(
            t("(attrs.a or attrs.b) and attrs.c"),
            format!("(and (or {a} {b}) {c})")
        );
        assert_eq!(t("not (attrs.a or attrs.b)"), format!("(not (or {a} {b}))"));
        assert_eq!(t("not not attrs.a"), format!("(not (not {a}))"));
        assert_eq!(
            t("attrs.a and attrs.b and attrs.c"),
            format!("(and (and {a} {b}) {c})")
        );
        assert_eq!(
            t("attrs.a or attrs.b or attrs.c"),
            format!("(or (or {a} {b}) {c})")
        );
        assert_eq!(t("((attrs.a))"), a);
    }

    #[test]
    fn comparisons_bind_tighter_than_not() {
        assert_eq!(t("not rfm.r == 5"), "(not [rfm.r == 5])");
        assert_eq!(
            t("not days_since(\"x\") between 1 and 5 and has_tag(\"t\")"),
            "(and (not [days_since(\"x\") between 1 and 5]) [has_tag(\"t\")])"
        );
        assert_eq!(
            t("rfm.r between 1 and 2 or rfm.f between 3 and 4"),
            "(or [rfm.r between 1 and 2] [rfm.f between 3 and 4])"
        );
    }

    #[test]
    fn postfix_not_is_sugar_for_not() {
        assert_eq!(
            t("lifecycle not in [\"dormant\", \"churned\"]"),
            "(not [lifecycle in [\"dormant\", \"churned\"]])"
        );
        assert_eq!(
            t("email not contains \"@qq.\""),
            "(not [email contains \"@qq.\"])"
        );
        assert_eq!(
            t("rfm.r not between 2 and 4"),
            "(not [rfm.r between 2 and 4])"
        );
    }

    #[test]
    fn display_round_trips_to_the_same_tree() {
        for src in [
            "attrs.a or attrs.b and attrs.c",
            "(attrs.a or attrs.b) and attrs.c",
            "attrs.a and (attrs.b and attrs.c)",
            "attrs.a or (attrs.b or attrs.c)",
            "not (attrs.a and not attrs.b) or not not has_tag(\"x\")",
            "lifecycle not in [\"new\"] and email not contains 'x'",
            "count(\"order_placed\", \"365d\") >= 2 and not (rfm.r == 1 or overdue(\"x\") > 2)",
        ] {
            let first = parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            let printed = first.to_string();
            let second = parse(&printed).unwrap_or_else(|e| panic!("{printed}: {e:?}"));
            assert_eq!(tree(&first), tree(&second), "{src} printed as {printed}");
        }
        let e = parse("attrs.a and (attrs.b or attrs.c)").unwrap();
        assert_eq!(e.to_string(), "attrs.a and (attrs.b or attrs.c)");
        let e = parse("not (attrs.a)").unwrap();
        assert_eq!(e.to_string(), "not attrs.a");
    }

    #[test]
    fn nodes_and_operands_carry_their_spans() {
        let src = "not (attrs.x >= 'a' and has_tag(\"t\"))";
        let Expr::Not { expr, span } = parse(src).unwrap() else {
            panic!("not a Not");
        };
        assert_eq!(span, 0..src.len());
        assert_eq!(expr.span(), at(src, "(attrs.x >= 'a' and has_tag(\"t\"))"));
        let Expr::And { lhs, rhs, .. } = *expr else {
            panic!("not an And");
        };
        let Expr::Compare {
            field,
            op,
            value,
            span,
        } = *lhs
        else {
            panic!("not a Compare");
        };
        assert_eq!(field.span, at(src, "attrs.x"));
        assert_eq!(
            op,
            Located::new(super::super::ast::CmpOp::Ge, at(src, ">="))
        );
        assert_eq!(
            value,
            Located::new(Literal::Str("a".into()), at(src, "'a'"))
        );
        assert_eq!(span, at(src, "attrs.x >= 'a'"));
        let Expr::HasTag { tag, span } = *rhs else {
            panic!("not a HasTag");
        };
        assert_eq!(tag, Located::new("t".to_string(), at(src, "\"t\"")));
        assert_eq!(span, at(src, "has_tag(\"t\")"));

        let src = "count(\"a\", \"1d\") between 10 and 20";
        let Expr::Between {
            field, low, high, ..
        } = parse(src).unwrap()
        else {
            panic!("not a Between");
        };
        assert_eq!(field.span, at(src, "count(\"a\", \"1d\")"));
        assert_eq!(low.span, at(src, "10"));
        assert_eq!(high.span, at(src, "20"));
        let src = "lifecycle not in ['new']";
        let Expr::Not { expr, span } = parse(src).unwrap() else {
            panic!("not a Not");
        };
        assert_eq!(span, 0..src.len());
        let Expr::In { values, .. } = *expr else {
            panic!("not an In");
        };
        assert_eq!(values[0].span, at(src, "'new'"));
    }

    #[test]
    fn event_names_and_fields_for_query_planning() {
        let e = parse(
            "count(\"b\", \"1d\") > 1 or (days_since(\"a\") > 2 and not overdue(\"b\") > 1) \
             or sum(\"c\") > 0 and attrs.x and attrs.x == 1 and rfm.r == 1",
        )
        .unwrap();
        assert_eq!(
            e.event_names().into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let fields: Vec<String> = e.fields().iter().map(|f| f.to_string()).collect();
        assert_eq!(
            fields,
            [
                "count(\"b\", \"1d\")",
                "days_since(\"a\")",
                "overdue(\"b\")",
                "sum(\"c\")",
                "attrs.x",
                "rfm.r"
            ]
        );
        assert!(parse("has_tag(\"x\")").unwrap().event_names().is_empty());
    }

    #[test]
    fn spec_example_parses() {
        let src = "\n  attrs.region == \"guangdong\"\n  and days_since(\"order_placed\") between 90 and 150\n  and count(\"order_placed\", \"365d\") >= 2\n  and not has_tag(\"wholesale\")\n";
        assert_eq!(
            t(src),
            "(and (and (and [attrs.region == \"guangdong\"] [days_since(\"order_placed\") between 90 and 150]) \
             [count(\"order_placed\", \"365d\") >= 2]) (not [has_tag(\"wholesale\")]))"
        );
        assert_eq!(
            t("lifecycle in [\"dormant\", \"churned\"]"),
            "[lifecycle in [\"dormant\", \"churned\"]]"
        );
    }

    // ---- errors: exact span and message ----

    #[test]
    fn unknown_field_suggests_the_near_name() {
        let help = assert_err(
            "attr.region == \"gd\"",
            "attr.region",
            "unknown field `attr.region`",
        );
        assert_eq!(help.as_deref(), Some("did you mean `attrs.region`?"));
        let help = assert_err(
            "lifecycle == \"new\" and Email == \"x\"",
            "Email",
            "unknown field `Email`",
        );
        assert_eq!(help.as_deref(), Some("did you mean `email`?"));
        let help = assert_err("rfm.x == 1", "rfm.x", "unknown field `rfm.x`");
        assert_eq!(help.as_deref(), Some("did you mean `rfm.r`?"));
        let help = assert_err(
            "attributes.city == 'x'",
            "attributes.city",
            "unknown field `attributes.city`",
        );
        assert_eq!(help.as_deref(), Some("did you mean `attrs.city`?"));
        let help = assert_err("tags contains 'x'", "tags", "unknown field `tags`");
        assert_eq!(help.as_deref(), Some("test tags with `has_tag(\"vip\")`"));
        let help = assert_err("dayssince > 3", "dayssince", "unknown field `dayssince`");
        assert_eq!(
            help.as_deref(),
            Some("did you mean `days_since(\"order_placed\") > 90`?")
        );
        let help = assert_err("zzzzzz == 1", "zzzzzz", "unknown field `zzzzzz`").unwrap();
        assert!(help.starts_with("fields are: email, phone"), "{help}");
        let help = assert_err("NOT has_tag('x')", "NOT", "unknown field `NOT`");
        assert_eq!(help.as_deref(), Some("keywords are lowercase: write `not`"));
    }

    #[test]
    fn unknown_function_suggests_the_near_name() {
        let help = assert_err("cnt(\"order_placed\") > 1", "cnt", "unknown function `cnt`");
        assert_eq!(help.as_deref(), Some("did you mean `count`?"));
        let help = assert_err(
            "frobnicate(\"x\") > 1",
            "frobnicate",
            "unknown function `frobnicate`",
        );
        assert_eq!(
            help.as_deref(),
            Some("functions are: has_tag, channel_ok, count, sum, days_since, overdue")
        );
        assert_err(
            "email(\"x\")",
            "email",
            "`email` is a field, not a function",
        );
        let help = assert_err(
            "count > 1",
            "count",
            "`count` is a function and needs arguments",
        );
        assert_eq!(
            help.as_deref(),
            Some("e.g. `count(\"order_placed\", \"30d\") >= 2`")
        );
    }

    #[test]
    fn missing_values_and_operators() {
        let help = assert_err("email ==", "==", "expected a value after `==`");
        assert_eq!(
            help.as_deref(),
            Some("a value is a quoted string, a number, `true` or `false`")
        );
        let help = assert_err(
            "lifecycle == dormant",
            "dormant",
            "expected a value after `==`",
        );
        assert_eq!(help.as_deref(), Some("text needs quotes: `\"dormant\"`"));
        let help = assert_err("attrs.vip == True", "True", "expected a value after `==`");
        assert_eq!(help.as_deref(), Some("booleans are lowercase: `true`"));
        assert_err("(email <= )", ")", "expected a value after `<=`");
        assert_err(
            "email contains",
            "contains",
            "expected a value after `contains`",
        );
        assert_err(
            "attrs.x 5",
            "5",
            "expected an operator after `attrs.x`, found `5`",
        );
        let help = assert_err(
            "attrs.x IN [1]",
            "IN",
            "expected an operator after `attrs.x`, found `IN`",
        );
        assert_eq!(help.as_deref(), Some("keywords are lowercase: write `in`"));
        let help = assert_err("email", "email", "`email` is not a condition by itself");
        assert_eq!(
            help.as_deref(),
            Some("compare it, e.g. `email contains \"...\"`")
        );
        assert_err(
            "count(\"x\") and has_tag(\"y\")",
            "count(\"x\")",
            "`count(\"x\")` is not a condition by itself",
        );
        assert_err("attrs == 1", "attrs", "`attrs` needs a path");
        assert_err(
            "5 == attrs.x",
            "5",
            "a condition starts with a field, found `5`",
        );
    }

    #[test]
    fn between_needs_and() {
        let msg = "`between` needs `and`: `x between 1 and 5`";
        assert_err("attrs.x between 1, 5", ",", msg);
        assert_err("attrs.x between 1 or 5", "or", msg);
        assert_err("attrs.x between 10", "10", msg);
        assert_err(
            "attrs.x between 1 and",
            "and",
            "expected a value after `and`",
        );
        assert_err(
            "attrs.x between and 5",
            "and",
            "expected a value after `between`",
        );
    }

    #[test]
    fn parentheses_and_brackets() {
        let help = assert_err("(lifecycle == \"new\"", "(", "unclosed parenthesis");
        assert_eq!(help.as_deref(), Some("add a `)` to close it"));
        assert_err(
            "has_tag(\"x\" or email == 'a'",
            "or",
            "expected `,` or `)`, found `or`",
        );
        let src = "attrs.a and (attrs.b or (attrs.c)";
        assert_eq!(err(src).span, 12..13);
        assert_err("count(\"x\"", "(", "unclosed parenthesis");
        assert_err(
            "(attrs.a attrs.b)",
            "attrs.b",
            "expected an operator after `attrs.a`, found `attrs.b`",
        );
        assert_err(
            "(attrs.a == 1 attrs.b)",
            "attrs.b",
            "expected `and`, `or` or `)`, found `attrs.b`",
        );
        assert_err("email == 'a')", ")", "unmatched `)`");
        assert_err("()", ")", "expected a condition, found `)`");
        assert_err("lifecycle in [\"new\"", "[", "unclosed bracket");
        assert_err(
            "lifecycle in \"new\"",
            "\"new\"",
            "`in` needs a list in brackets",
        );
        assert_err("lifecycle in []", "[]", "`in` needs at least one value");
        assert_err(
            "lifecycle in [\"new\" \"active\"]",
            "\"active\"",
            "expected `,` or `]`, found `\"active\"`",
        );
        let help = assert_err("lifecycle in [new]", "new", "expected a value in the list");
        assert_eq!(help.as_deref(), Some("text needs quotes: `\"new\"`"));
    }

    #[test]
    fn strings_and_trailing_input() {
        let help = assert_err("email == \"abc", "\"", "unterminated string");
        assert_eq!(help.as_deref(), Some("close it with `\"`"));
        let help = assert_err("email == 'abc", "'", "unterminated string");
        assert_eq!(help.as_deref(), Some("close it with `'`"));
        let help = assert_err(
            "email == \"a\" lifecycle == \"new\"",
            "lifecycle",
            "unexpected `lifecycle` after a complete condition",
        );
        assert_eq!(help.as_deref(), Some("join conditions with `and` or `or`"));
        let help = assert_err(
            "email == \"a\" AND phone == \"b\"",
            "AND",
            "unexpected `AND` after a complete condition",
        );
        assert_eq!(help.as_deref(), Some("keywords are lowercase: write `and`"));
        assert_err("rfm.r == 1 and", "and", "expected a condition after `and`");
        assert_err(
            "rfm.r == 1 and or rfm.f == 1",
            "or",
            "expected a condition, found `or`",
        );
        assert_err("not", "not", "expected a condition after `not`");
        let e = err("  \n ");
        assert_eq!((e.span, e.message.as_str()), (0..0, "the filter is empty"));
    }

    #[test]
    fn type_errors() {
        let help = assert_err(
            "lifecycle == \"dormat\"",
            "\"dormat\"",
            "unknown lifecycle stage `dormat`",
        );
        assert_eq!(
            help.as_deref(),
            Some("did you mean \"dormant\"? stages are: new, active, silent, dormant, churned")
        );
        let help = assert_err(
            "lifecycle == 3",
            "3",
            "`lifecycle` is compared with a stage name, found a number",
        );
        assert_eq!(
            help.as_deref(),
            Some("stages are: new, active, silent, dormant, churned")
        );
        assert_err(
            "lifecycle in [\"new\", \"zombie\"]",
            "\"zombie\"",
            "unknown lifecycle stage `zombie`",
        );
        assert_err("lifecycle > \"new\"", ">", "lifecycle stages have no order");
        assert_err(
            "lifecycle between 'new' and 'silent'",
            "between",
            "lifecycle stages have no order",
        );
        assert_err(
            "lifecycle contains 'n'",
            "contains",
            "`contains` does not apply to `lifecycle`",
        );
        assert_err(
            "rfm.r == 7",
            "7",
            "RFM scores are whole numbers from 1 to 5, found `7`",
        );
        assert_err(
            "rfm.m >= 0",
            "0",
            "RFM scores are whole numbers from 1 to 5, found `0`",
        );
        assert_err(
            "rfm.f < 2.5",
            "2.5",
            "RFM scores are whole numbers from 1 to 5, found `2.5`",
        );
        assert_err(
            "rfm.r in [1, 6]",
            "6",
            "RFM scores are whole numbers from 1 to 5, found `6`",
        );
        let help = assert_err(
            "count(\"x\") >= \"2\"",
            "\"2\"",
            "`count(\"x\")` is a number; compare it with a number, found a string",
        );
        assert_eq!(help.as_deref(), Some("write it without quotes: `2`"));
        let help = assert_err(
            "days_since(\"x\") > \"90d\"",
            "\"90d\"",
            "`days_since(\"x\")` is a number; compare it with a number, found a string",
        );
        assert_eq!(
            help.as_deref(),
            Some("`days_since(\"x\")` counts whole days: write `90`")
        );
        assert_err(
            "rfm.r_days == true",
            "true",
            "`rfm.r_days` is a number; compare it with a number, found a boolean",
        );
        let help = assert_err(
            "email == 5",
            "5",
            "`email` is text; compare it with a string, found a number",
        );
        assert_eq!(help.as_deref(), Some("quote it: `\"5\"`"));
        let help = assert_err(
            "attrs.x contains 5",
            "5",
            "`contains` takes a string, found a number",
        );
        assert_eq!(help.as_deref(), Some("quote it: `\"5\"`"));
        assert_err(
            "count(\"x\") contains \"1\"",
            "contains",
            "`contains` works on text; `count(\"x\")` is a number",
        );
        assert_err(
            "attrs.vip < true",
            "<",
            "booleans can only be compared with `==` or `!=`",
        );
        assert_err(
            "attrs.x between true and false",
            "true",
            "`between` needs numbers or strings, found a boolean",
        );
        assert_err(
            "attrs.x between 1 and \"z\"",
            "\"z\"",
            "both ends of `between` must be the same type: `1` is a number, `\"z\"` is a string",
        );
        let help = assert_err(
            "days_since(\"x\") between 150 and 90",
            "150 and 90",
            "`between 150 and 90` matches nothing",
        );
        assert_eq!(
            help.as_deref(),
            Some("write the smaller bound first: `between 90 and 150`")
        );
    }

    #[test]
    fn function_argument_errors() {
        let help = assert_err("channel_ok(\"fax\")", "\"fax\"", "unknown channel `fax`");
        assert_eq!(help.as_deref(), Some("channels are: email, sms, push"));
        let help = assert_err("channel_ok('smss')", "'smss'", "unknown channel `smss`");
        assert_eq!(
            help.as_deref(),
            Some("did you mean \"sms\"? channels are: email, sms, push")
        );
        let help = assert_err(
            "count(\"x\", \"90days\") > 1",
            "\"90days\"",
            "`90days` is not a duration",
        );
        assert_eq!(
            help.as_deref(),
            Some("write a whole number and a unit: \"90d\", \"12h\", \"30m\", \"45s\" or \"2w\"")
        );
        assert_err(
            "sum(\"x\", \"0d\") > 1",
            "\"0d\"",
            "a window must be longer than zero",
        );
        assert_err("count(\"\") > 1", "\"\"", "the event name is empty");
        assert_err("days_since('') > 1", "''", "the event name is empty");
        assert_err("has_tag(\"\")", "\"\"", "the tag is empty");
        assert_err(
            "days_since(\"a\", \"1d\") > 1",
            "days_since(\"a\", \"1d\")",
            "`days_since` takes one event name",
        );
        assert_err(
            "count() > 1",
            "count()",
            "`count` takes an event name and an optional window",
        );
        assert_err(
            "count(\"a\", \"1d\", \"2d\") > 1",
            "count(\"a\", \"1d\", \"2d\")",
            "`count` takes an event name and an optional window",
        );
        let help = assert_err(
            "count(order_placed) > 1",
            "order_placed",
            "expected a quoted string, found `order_placed`",
        );
        assert_eq!(help.as_deref(), Some("quote it: `\"order_placed\"`"));
        assert_err(
            "count(\"a\", 30) > 1",
            "30",
            "expected a quoted string, found `30`",
        );
        let help = assert_err(
            "has_tag(\"x\") == true",
            "==",
            "`has_tag(...)` is a condition by itself and cannot be compared",
        );
        assert_eq!(
            help.as_deref(),
            Some("drop the comparison; write `not has_tag(\"x\")` for the opposite")
        );
    }

    #[test]
    fn lexer_errors_surface_from_parse() {
        assert_err("email = 'a'", "=", "`=` is not an operator");
        assert_err("days_since('x') > 90d", "90d", "a duration must be quoted");
    }

    #[test]
    fn diagnostic_points_into_the_file() {
        let file =
            "name = \"x\"\nwhere = '''\n  lifecycle == \"new\"\n  and attr.region == 1\n'''\n";
        let filter = "  lifecycle == \"new\"\n  and attr.region == 1\n";
        let offset = file.find(filter).unwrap();
        let d = parse(filter)
            .unwrap_err()
            .into_diagnostic("segments/x.toml", file, offset);
        assert_eq!(d.span, at(file, "attr.region"));
        assert_eq!(d.line_col(), (4, 7));
        assert_eq!(d.file, "segments/x.toml");
        assert_eq!(d.message, "unknown field `attr.region`");
        assert_eq!(d.help.as_deref(), Some("did you mean `attrs.region`?"));
        let shown = d.to_string();
        assert!(shown.contains("--> segments/x.toml:4:7"), "{shown}");
    }
}
