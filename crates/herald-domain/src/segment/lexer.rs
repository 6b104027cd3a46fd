//! Splits filter text into tokens with byte spans. A dotted name
//! (`attrs.address.city`) is one token so that errors can point at all of it.

use std::ops::Range;

use super::ast::CmpOp;
use super::parser::FilterError;
use crate::duration::Span;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A name, possibly dotted: `email`, `rfm.r`, `attrs.a.b`, `count`.
    Name(String),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A number.
    Num(f64),
    /// A comparison operator.
    Op(CmpOp),
    And,
    Or,
    Not,
    Between,
    In,
    Contains,
    True,
    False,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub span: Range<usize>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Tokenizes `src`.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut i = 0;
    let at = |j: usize| src[j..].chars().next();
    while let Some(c) = at(i) {
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        let next = at(i + c.len_utf8());
        let (tok, end) = match c {
            '(' => (Tok::LParen, i + 1),
            ')' => (Tok::RParen, i + 1),
            '[' => (Tok::LBracket, i + 1),
            ']' => (Tok::RBracket, i + 1),
            ',' => (Tok::Comma, i + 1),
            '=' if next == Some('=') => (Tok::Op(CmpOp::Eq), i + 2),
            '=' => {
                return Err(FilterError::new(i..i + 1, "`=` is not an operator")
                    .with_help("write `==` to compare"));
            }
            '!' if next == Some('=') => (Tok::Op(CmpOp::Ne), i + 2),
            '!' => {
                return Err(FilterError::new(i..i + 1, "`!` is not an operator")
                    .with_help("write `not` before a condition, or `!=` to compare"));
            }
            '<' if next == Some('=') => (Tok::Op(CmpOp::Le), i + 2),
            '<' if next == Some('>') => {
                return Err(
                    FilterError::new(i..i + 2, "`<>` is not an operator").with_help("write `!=`")
                );
            }
            '<' => (Tok::Op(CmpOp::Lt), i + 1),
            '>' if next == Some('=') => (Tok::Op(CmpOp::Ge), i + 2),
            '>' => (Tok::Op(CmpOp::Gt), i + 1),
            '&' | '|' => {
                let len = if next == Some(c) { 2 } else { 1 };
                let word = if c == '&' { "and" } else { "or" };
                return Err(FilterError::new(
                    i..i + len,
                    format!("`{}` is not an operator", &src[i..i + len]),
                )
                .with_help(format!("write `{word}`")));
            }
            '"' | '\'' => lex_string(src, i, c)?,
            '-' | '0'..='9' => lex_number(src, i)?,
            c if is_name_start(c) => lex_name(src, i)?,
            c => {
                return Err(FilterError::new(
                    i..i + c.len_utf8(),
                    format!("unexpected character `{c}`"),
                ));
            }
        };
        out.push(Token {
            tok,
            span: start..end,
        });
        i = end;
    }
    Ok(out)
}

/// A quoted string starting at `start` (the quote); `\"`, `\'` and `\\` are the escapes.
fn lex_string(src: &str, start: usize, quote: char) -> Result<(Tok, usize), FilterError> {
    let mut text = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let pos = start + 1 + off;
        match c {
            c if c == quote => return Ok((Tok::Str(text), pos + 1)),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\'' | '\\'))) => text.push(e),
                Some((_, e)) => {
                    return Err(FilterError::new(
                        pos..pos + 1 + e.len_utf8(),
                        format!("unknown escape `\\{e}`"),
                    )
                    .with_help("the escapes are `\\\"`, `\\'` and `\\\\`"));
                }
                None => break,
            },
            c => text.push(c),
        }
    }
    Err(FilterError::new(start..start + 1, "unterminated string")
        .with_help(format!("close it with `{quote}`")))
}

/// A number such as `5`, `-2`, `0.25`, starting at `start`.
fn lex_number(src: &str, start: usize) -> Result<(Tok, usize), FilterError> {
    let bytes = src.as_bytes();
    let digits = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    let mut j = start;
    if bytes[j] == b'-' {
        j += 1;
        if !bytes.get(j).is_some_and(u8::is_ascii_digit) {
            return Err(
                FilterError::new(start..start + 1, "unexpected character `-`")
                    .with_help("a negative number is written `-5`"),
            );
        }
    }
    j = digits(j);
    if bytes.get(j) == Some(&b'.') && bytes.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j = digits(j + 1);
    }
    if src[j..].chars().next().is_some_and(is_name_continue) {
        let mut k = j;
        while let Some(c) = src[k..].chars().next().filter(|&c| is_name_continue(c)) {
            k += c.len_utf8();
        }
        let text = &src[start..k];
        let err = if text.parse::<Span>().is_ok() {
            FilterError::new(start..k, "a duration must be quoted")
                .with_help(format!("write \"{text}\""))
        } else {
            FilterError::new(start..k, format!("invalid number `{text}`"))
        };
        return Err(err);
    }
    let value: f64 = src[start..j]
        .parse()
        .map_err(|_| FilterError::new(start..j, format!("invalid number `{}`", &src[start..j])))?;
    Ok((Tok::Num(value), j))
}

/// A name and its dotted continuation, or a keyword.
fn lex_name(src: &str, start: usize) -> Result<(Tok, usize), FilterError> {
    let bytes = src.as_bytes();
    let segment = |mut j: usize| {
        while j < bytes.len() && is_name_continue(char::from(bytes[j])) {
            j += 1;
        }
        j
    };
    let mut j = segment(start + 1);
    while bytes.get(j) == Some(&b'.') {
        if !bytes
            .get(j + 1)
            .is_some_and(|&b| is_name_start(char::from(b)))
        {
            return Err(FilterError::new(j..j + 1, "expected a name after `.`")
                .with_help("paths look like `attrs.address.city`"));
        }
        j = segment(j + 2);
    }
    let text = &src[start..j];
    let tok = match text {
        "and" => Tok::And,
        "or" => Tok::Or,
        "not" => Tok::Not,
        "between" => Tok::Between,
        "in" => Tok::In,
        "contains" => Tok::Contains,
        "true" => Tok::True,
        "false" => Tok::False,
        _ => Tok::Name(text.to_string()),
    };
    Ok((tok, j))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn splits_operators_names_and_literals() {
        assert_eq!(
            toks("attrs.a-b.c_d>=-2.5 and'x'!=\"y\""),
            vec![
                Tok::Name("attrs.a-b.c_d".into()),
                Tok::Op(CmpOp::Ge),
                Tok::Num(-2.5),
                Tok::And,
                Tok::Str("x".into()),
                Tok::Op(CmpOp::Ne),
                Tok::Str("y".into()),
            ]
        );
    }

    #[test]
    fn spans_are_byte_ranges() {
        let t = lex("  email ==  \"退订\"").unwrap();
        assert_eq!(t[0].span, 2..7);
        assert_eq!(t[1].span, 8..10);
        assert_eq!(t[2].span, 12..20);
    }

    #[test]
    fn escapes_in_both_quote_styles() {
        assert_eq!(
            toks(r#""a\"b\\c" 'it\'s'"#),
            vec![Tok::Str("a\"b\\c".into()), Tok::Str("it's".into())]
        );
        assert_eq!(toks(r#"'say "hi"'"#), vec![Tok::Str("say \"hi\"".into())]);
    }

    #[test]
    fn bad_characters_and_escapes() {
        let e = lex("email = 1").unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (6..7, "`=` is not an operator")
        );
        let e = lex("a && b").unwrap_err();
        assert_eq!((e.span, e.help.as_deref()), (2..4, Some("write `and`")));
        let e = lex(r#"email == "a\nb""#).unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (11..13, "unknown escape `\\n`")
        );
        let e = lex("email == 5 ; x").unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (11..12, "unexpected character `;`")
        );
        let e = lex("a <> 1").unwrap_err();
        assert_eq!(e.span, 2..4);
        let e = lex("attrs. == 1").unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (5..6, "expected a name after `.`")
        );
        let e = lex("x == - 1").unwrap_err();
        assert_eq!(e.span, 5..6);
    }

    #[test]
    fn unquoted_durations_are_caught() {
        let e = lex("days_since(\"x\") > 90d").unwrap_err();
        assert_eq!(e.span, 18..21);
        assert_eq!(e.message, "a duration must be quoted");
        assert_eq!(e.help.as_deref(), Some("write \"90d\""));
        let e = lex("x > 12abc").unwrap_err();
        assert_eq!(
            (e.span, e.message.as_str()),
            (4..9, "invalid number `12abc`")
        );
    }
}
