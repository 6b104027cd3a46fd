//! `[contacts.attrs]`: the declared types of imported contact attributes
//! (`vip = "bool"`, `ltv = "number"`, `signup = "date"`, `tier = "string"`).
//!
//! A CSV cell is text; without a declaration it is typed on its own
//! ([`infer_cell`]: `true`/`false` in any case become booleans, canonical
//! numerals numbers, everything else stays text), and with one it is
//! converted by the declared type ([`AttrType::convert`]) or the row is
//! rejected. The same declarations let `herald check` flag a filter literal
//! that can never equal the attribute, such as `attrs.vip == "true"` once
//! `vip` is a boolean ([`check_filter`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::segment::{Expr, Field, FilterError, Literal, Located};

/// The type a contact attribute is declared to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrType {
    /// `true`/`false`/`yes`/`no`/`1`/`0`, any case; stored as a JSON boolean.
    Bool,
    /// Any decimal number; stored as a JSON number.
    Number,
    /// `2026-11-23` (also `2026/11/23`) or an RFC 3339 instant; stored as
    /// the text `2026-11-23` (an instant as UTC RFC 3339), so string order is time order.
    Date,
    /// Kept as written.
    String,
}

impl AttrType {
    /// The name used in `herald.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::Bool => "bool",
            AttrType::Number => "number",
            AttrType::Date => "date",
            AttrType::String => "string",
        }
    }

    /// Converts a non-empty, trimmed CSV cell; the error says what was expected.
    pub fn convert(self, cell: &str) -> Result<Json, String> {
        match self {
            AttrType::String => Ok(Json::String(cell.to_string())),
            AttrType::Bool => match cell.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Json::Bool(true)),
                "false" | "no" | "0" => Ok(Json::Bool(false)),
                _ => Err(format!(
                    "`{cell}` is not a boolean (declared bool: true/false, yes/no or 1/0)"
                )),
            },
            AttrType::Number => cell
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(number)
                .ok_or_else(|| format!("`{cell}` is not a number (declared number)")),
            AttrType::Date => parse_date(cell).ok_or_else(|| {
                format!(
                    "`{cell}` is not a date (declared date: 2026-11-23, 2026/11/23 or an RFC 3339 instant like 2026-11-23T10:00:00Z)"
                )
            }),
        }
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number as JSON: whole numbers stay integers, so `3` prints as `3`.
fn number(f: f64) -> Json {
    // 2^53: beyond it an f64 no longer holds every integer exactly.
    const EXACT_INT: f64 = 9_007_199_254_740_992.0;
    if f.fract() == 0.0 && f.abs() < EXACT_INT {
        Json::from(f as i64)
    } else {
        Json::from(f)
    }
}

fn parse_date(cell: &str) -> Option<Json> {
    for format in ["%Y-%m-%d", "%Y/%m/%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(cell, format) {
            return Some(Json::String(d.format("%Y-%m-%d").to_string()));
        }
    }
    DateTime::parse_from_rfc3339(cell).ok().map(|t| {
        Json::String(
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )
    })
}

/// An undeclared CSV cell as JSON: `true`/`false` (any case) become booleans,
/// canonical numerals numbers ("02134" stays text: a leading zero is an
/// identifier, not a quantity), everything else text. `1`/`0`/`yes`/`no` are
/// booleans only when declared.
pub fn infer_cell(cell: &str) -> Json {
    if cell.eq_ignore_ascii_case("true") {
        return Json::Bool(true);
    }
    if cell.eq_ignore_ascii_case("false") {
        return Json::Bool(false);
    }
    canonical_number(cell).unwrap_or_else(|| Json::String(cell.to_string()))
}

/// A canonical numeral (`-12`, `3.25`; not `02134`, `1e3` or `+5`) as a JSON number.
pub fn canonical_number(cell: &str) -> Option<Json> {
    let canonical_int = |s: &str| {
        let d = s.strip_prefix('-').unwrap_or(s);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && (d == "0" || !d.starts_with('0'))
    };
    if canonical_int(cell)
        && let Ok(i) = cell.parse::<i64>()
    {
        return Some(Json::from(i));
    }
    if let Some((int, frac)) = cell.split_once('.')
        && canonical_int(int)
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
        && let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
    {
        return Some(Json::from(f));
    }
    None
}

/// `[contacts]` in herald.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactsConfig {
    /// Declared attribute types by top-level attribute name.
    pub attrs: BTreeMap<String, AttrType>,
}

/// A set of attribute types: those the stored contacts were seen to hold
/// for one attribute (`herald check` reads them from the database), or the
/// one a declaration gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrTypes(u8);

impl AttrTypes {
    const ALL: [AttrType; 4] = [
        AttrType::Bool,
        AttrType::Number,
        AttrType::Date,
        AttrType::String,
    ];

    fn bit(ty: AttrType) -> u8 {
        match ty {
            AttrType::Bool => 1,
            AttrType::Number => 2,
            AttrType::Date => 4,
            AttrType::String => 8,
        }
    }

    /// The set of `ty` alone.
    pub fn one(ty: AttrType) -> Self {
        Self(Self::bit(ty))
    }

    /// This set and `ty`.
    pub fn with(self, ty: AttrType) -> Self {
        Self(self.0 | Self::bit(ty))
    }

    /// Whether `ty` is in the set.
    pub fn contains(self, ty: AttrType) -> bool {
        self.0 & Self::bit(ty) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The types in the set, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = AttrType> {
        Self::ALL.into_iter().filter(move |t| self.contains(*t))
    }

    /// The one type of a set of one.
    fn single(self) -> Option<AttrType> {
        let mut it = self.iter();
        match (it.next(), it.next()) {
            (Some(t), None) => Some(t),
            _ => None,
        }
    }

    /// Whether a literal can ever equal a value of one of these types.
    fn fits(self, lit: &Literal) -> bool {
        self.iter().any(|ty| literal_fits(ty, lit))
    }

    /// "a boolean", or "a boolean or a number".
    fn words(self) -> String {
        self.iter().map(type_word).collect::<Vec<_>>().join(" or ")
    }
}

/// Whether a literal can ever equal a value of type `ty`.
fn literal_fits(ty: AttrType, lit: &Literal) -> bool {
    matches!(
        (ty, lit),
        (AttrType::Bool, Literal::Bool(_))
            | (AttrType::Number, Literal::Num(_))
            | (AttrType::Date | AttrType::String, Literal::Str(_))
    )
}

fn suggestion(ty: AttrType, src: &str, lit: &Located<Literal>) -> String {
    let written = &src[lit.span.clone()];
    match (ty, &lit.value) {
        (AttrType::Bool, Literal::Str(s)) if AttrType::Bool.convert(s).is_ok() => {
            let b = AttrType::Bool
                .convert(s)
                .map_or(true, |v| v == Json::Bool(true));
            format!("write `{b}` without quotes")
        }
        (AttrType::Bool, Literal::Num(n)) if *n == 0.0 || *n == 1.0 => {
            format!("write `{}`", *n == 1.0)
        }
        (AttrType::Number, Literal::Str(s)) if s.trim().parse::<f64>().is_ok() => {
            format!("write it without quotes: `{}`", s.trim())
        }
        (AttrType::Bool, _) => "compare it with `true` or `false`".into(),
        (AttrType::Number, _) => "compare it with a number, e.g. `5` or `-2.5`".into(),
        (AttrType::Date, _) => "compare it with a date string, e.g. `\"2026-11-23\"`".into(),
        (AttrType::String, _) => format!("quote it: `\"{written}\"`"),
    }
}

fn type_word(ty: AttrType) -> &'static str {
    match ty {
        AttrType::Bool => "a boolean",
        AttrType::Number => "a number",
        AttrType::Date => "a date (stored as text like \"2026-11-23\")",
        AttrType::String => "a string",
    }
}

/// Checks that every literal compared with an `attrs.NAME` whose type `type_of`
/// knows can match it; the error spans the literal (filter-text offsets).
/// `origin` says where the type came from, e.g. "declared in [contacts.attrs]".
pub fn check_filter(
    expr: &Expr,
    src: &str,
    type_of: &dyn Fn(&str) -> Option<AttrType>,
    origin: &str,
) -> Result<(), FilterError> {
    check_filter_types(
        expr,
        src,
        &|path: &[String]| match path {
            [name] => type_of(name).map(AttrTypes::one),
            _ => None,
        },
        &|_: &[String]| origin.to_string(),
    )
}

/// [`check_filter`] over sets of types, for any `attrs.PATH`: `types_of`
/// gives the types the attribute at a path can have (`None`: unknown, all
/// fit), `origin_of` where they come from for the message (e.g. "in all 33
/// stored contacts that have it"). A literal that fits none of them is an
/// error; with one type the help says how to write it.
pub fn check_filter_types(
    expr: &Expr,
    src: &str,
    types_of: &dyn Fn(&[String]) -> Option<AttrTypes>,
    origin_of: &dyn Fn(&[String]) -> String,
) -> Result<(), FilterError> {
    fn typed<'a>(
        field: &'a Located<Field>,
        types_of: &dyn Fn(&[String]) -> Option<AttrTypes>,
    ) -> Option<(&'a [String], AttrTypes)> {
        match &field.value {
            Field::Attr(path) => types_of(path.as_slice())
                .filter(|t| !t.is_empty())
                .map(|t| (path.as_slice(), t)),
            _ => None,
        }
    }
    let check = |field: &Located<Field>, lit: &Located<Literal>| -> Result<(), FilterError> {
        let Some((path, types)) = typed(field, types_of) else {
            return Ok(());
        };
        if types.fits(&lit.value) {
            return Ok(());
        }
        let e = FilterError::new(
            lit.span.clone(),
            format!(
                "`attrs.{}` is {} ({}), so {} never matches it",
                path.join("."),
                types.words(),
                origin_of(path),
                lit.value.type_name()
            ),
        );
        Err(match types.single() {
            Some(ty) => e.with_help(suggestion(ty, src, lit)),
            None => e,
        })
    };
    match expr {
        Expr::And { lhs, rhs, .. } | Expr::Or { lhs, rhs, .. } => {
            check_filter_types(lhs, src, types_of, origin_of)?;
            check_filter_types(rhs, src, types_of, origin_of)
        }
        Expr::Not { expr, .. } => check_filter_types(expr, src, types_of, origin_of),
        Expr::Compare { field, value, .. } => check(field, value),
        Expr::Between {
            field, low, high, ..
        } => {
            check(field, low)?;
            check(field, high)
        }
        Expr::In { field, values, .. } => values.iter().try_for_each(|v| check(field, v)),
        Expr::Contains { field, needle, .. } => match typed(field, types_of) {
            Some((path, types))
                if !types.contains(AttrType::String) && !types.contains(AttrType::Date) =>
            {
                Err(FilterError::new(
                    needle.span.clone(),
                    format!(
                        "`attrs.{}` is {} ({}); `contains` only matches text",
                        path.join("."),
                        types.words(),
                        origin_of(path)
                    ),
                ))
            }
            _ => Ok(()),
        },
        Expr::IsTrue { field, span } => match typed(field, types_of) {
            Some((path, types)) if !types.contains(AttrType::Bool) => {
                let name = path.join(".");
                Err(FilterError::new(
                    span.clone(),
                    format!(
                        "a bare `attrs.{name}` is true only for the boolean true, but `attrs.{name}` is {} ({})",
                        types.words(),
                        origin_of(path)
                    ),
                )
                .with_help(format!("compare it, e.g. `attrs.{name} == ...`")))
            }
            _ => Ok(()),
        },
        Expr::HasTag { .. } | Expr::ChannelOk { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_bools_accept_the_usual_spellings() {
        for (cell, want) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("1", true),
            ("false", false),
            ("No", false),
            ("0", false),
        ] {
            assert_eq!(AttrType::Bool.convert(cell), Ok(Json::Bool(want)), "{cell}");
        }
        let e = AttrType::Bool.convert("maybe").unwrap_err();
        assert!(e.contains("`maybe` is not a boolean"), "{e}");
    }

    #[test]
    fn declared_numbers_dates_and_strings_convert() {
        assert_eq!(AttrType::Number.convert("3"), Ok(Json::from(3)));
        assert_eq!(AttrType::Number.convert("0.5"), Ok(Json::from(0.5)));
        assert_eq!(AttrType::Number.convert("007"), Ok(Json::from(7)));
        assert!(AttrType::Number.convert("lots").is_err());
        assert_eq!(
            AttrType::Date.convert("2026/11/03"),
            Ok(Json::String("2026-11-03".into()))
        );
        assert_eq!(
            AttrType::Date.convert("2026-11-03T18:00:00+08:00"),
            Ok(Json::String("2026-11-03T10:00:00Z".into()))
        );
        assert!(AttrType::Date.convert("03.11.2026").is_err());
        assert_eq!(
            AttrType::String.convert("02134"),
            Ok(Json::String("02134".into()))
        );
    }

    #[test]
    fn undeclared_cells_type_themselves() {
        assert_eq!(infer_cell("TRUE"), Json::Bool(true));
        assert_eq!(infer_cell("False"), Json::Bool(false));
        assert_eq!(infer_cell("yes"), Json::String("yes".into()));
        assert_eq!(infer_cell("1"), Json::from(1));
        assert_eq!(infer_cell("02134"), Json::String("02134".into()));
        assert_eq!(infer_cell("2.5"), Json::from(2.5));
    }

    #[test]
    fn a_literal_of_the_wrong_type_is_pointed_at() {
        let src = r#"attrs.vip == "true" and attrs.ltv > 10"#;
        let expr = crate::segment::parse(src).unwrap();
        let types = |n: &str| match n {
            "vip" => Some(AttrType::Bool),
            "ltv" => Some(AttrType::Number),
            _ => None,
        };
        let e = check_filter(&expr, src, &types, "declared in [contacts.attrs]").unwrap_err();
        assert_eq!(&src[e.span.clone()], r#""true""#);
        assert!(
            e.message.contains("`attrs.vip` is a boolean"),
            "{}",
            e.message
        );
        assert_eq!(e.help.as_deref(), Some("write `true` without quotes"));
        let fine = r#"attrs.vip and attrs.ltv between 1 and 5 and attrs.other == "x""#;
        let expr = crate::segment::parse(fine).unwrap();
        check_filter(&expr, fine, &types, "declared").unwrap();
    }

    #[test]
    fn a_literal_that_fits_none_of_the_observed_types_is_pointed_at() {
        let observed = |path: &[String]| match path.join(".").as_str() {
            "vip" => Some(AttrTypes::one(AttrType::Bool)),
            "score" => Some(AttrTypes::one(AttrType::Number).with(AttrType::String)),
            "geo.city" => Some(AttrTypes::one(AttrType::String)),
            _ => None,
        };
        let origin = |_: &[String]| "in all 3 stored contacts that have it".to_string();
        let check = |src: &str| {
            let expr = crate::segment::parse(src).unwrap();
            check_filter_types(&expr, src, &observed, &origin)
                .map_err(|e| (src[e.span.clone()].to_string(), e.message, e.help))
        };
        let (at, message, help) = check(r#"attrs.x == 1 or attrs.vip == "true""#).unwrap_err();
        assert_eq!(at, r#""true""#);
        assert_eq!(
            message,
            "`attrs.vip` is a boolean (in all 3 stored contacts that have it), so a string never matches it"
        );
        assert_eq!(help.as_deref(), Some("write `true` without quotes"));
        // Either of several types fits; none of them does not.
        check(r#"attrs.score == 5 and attrs.score == "high""#).unwrap();
        let (at, message, help) = check("attrs.score in [1, true]").unwrap_err();
        assert_eq!(at, "true");
        assert!(message.contains("is a number or a string"), "{message}");
        assert_eq!(help, None);
        // Nested paths, `contains` and a bare attribute.
        let (at, message, _) = check("attrs.geo.city == 3").unwrap_err();
        assert_eq!(at, "3");
        assert!(
            message.starts_with("`attrs.geo.city` is a string"),
            "{message}"
        );
        let (at, _, _) = check(r#"attrs.vip contains "t""#).unwrap_err();
        assert_eq!(at, r#""t""#);
        let (at, message, _) = check("attrs.geo.city").unwrap_err();
        assert_eq!(at, "attrs.geo.city");
        assert!(
            message.contains("true only for the boolean true"),
            "{message}"
        );
        check(r#"attrs.vip and attrs.unknown == "x" and attrs.geo.city contains "a""#).unwrap();
    }
}
