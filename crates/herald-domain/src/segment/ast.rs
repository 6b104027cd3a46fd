//! The parsed filter: expressions, fields and literals, each carrying the byte
//! range of the filter text it came from. `Display` writes a filter back as
//! source text that parses to the same tree.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::Span;
use crate::types::Channel;

/// A value with the byte range of the filter text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Byte range in the filter text.
    pub span: Range<usize>,
}

impl<T> Located<T> {
    /// `value` found at `span`.
    pub fn new(value: T, span: Range<usize>) -> Self {
        Self { value, span }
    }
}

/// A filter expression. Every node spans its whole text (parentheses included).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Both sides hold.
    And {
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
        /// The whole `lhs and rhs`.
        span: Range<usize>,
    },
    /// Either side holds.
    Or {
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
        /// The whole `lhs or rhs`.
        span: Range<usize>,
    },
    /// The operand does not hold (a comparison with a missing value is false, so `not` of it is true).
    Not {
        /// The negated condition.
        expr: Box<Expr>,
        /// The whole `not expr` (or `field not in [...]`).
        span: Range<usize>,
    },
    /// `field OP value`.
    Compare {
        /// Left side.
        field: Located<Field>,
        /// The operator.
        op: Located<CmpOp>,
        /// Right side.
        value: Located<Literal>,
        /// The whole comparison.
        span: Range<usize>,
    },
    /// `field between low and high`, both ends included.
    Between {
        /// The tested field.
        field: Located<Field>,
        /// Lower bound (inclusive).
        low: Located<Literal>,
        /// Upper bound (inclusive).
        high: Located<Literal>,
        /// The whole condition.
        span: Range<usize>,
    },
    /// `field in [v1, v2, ...]`: equal to one of the values (never empty).
    In {
        /// The tested field.
        field: Located<Field>,
        /// The candidates.
        values: Vec<Located<Literal>>,
        /// The whole condition.
        span: Range<usize>,
    },
    /// `field contains "text"`: a case-sensitive substring test.
    Contains {
        /// The tested (text or attrs) field.
        field: Located<Field>,
        /// The substring looked for.
        needle: Located<String>,
        /// The whole condition.
        span: Range<usize>,
    },
    /// `has_tag("T")`.
    HasTag {
        /// The tag (never empty).
        tag: Located<String>,
        /// The whole call.
        span: Range<usize>,
    },
    /// `channel_ok("sms")`: the contact has an address, consent and no suppression on the channel.
    ChannelOk {
        /// The channel.
        channel: Located<Channel>,
        /// The whole call.
        span: Range<usize>,
    },
    /// A bare `attrs.PATH`: true exactly when that attribute is the JSON boolean `true`.
    IsTrue {
        /// Always a [`Field::Attr`].
        field: Located<Field>,
        /// The field's text.
        span: Range<usize>,
    },
}

impl Expr {
    /// Byte range of the whole expression in the filter text.
    pub fn span(&self) -> Range<usize> {
        match self {
            Expr::And { span, .. }
            | Expr::Or { span, .. }
            | Expr::Not { span, .. }
            | Expr::Compare { span, .. }
            | Expr::Between { span, .. }
            | Expr::In { span, .. }
            | Expr::Contains { span, .. }
            | Expr::HasTag { span, .. }
            | Expr::ChannelOk { span, .. }
            | Expr::IsTrue { span, .. } => span.clone(),
        }
    }

    pub(crate) fn set_span(&mut self, new: Range<usize>) {
        match self {
            Expr::And { span, .. }
            | Expr::Or { span, .. }
            | Expr::Not { span, .. }
            | Expr::Compare { span, .. }
            | Expr::Between { span, .. }
            | Expr::In { span, .. }
            | Expr::Contains { span, .. }
            | Expr::HasTag { span, .. }
            | Expr::ChannelOk { span, .. }
            | Expr::IsTrue { span, .. } => *span = new,
        }
    }

    /// The field a leaf condition tests, if it tests one.
    pub fn field(&self) -> Option<&Located<Field>> {
        match self {
            Expr::Compare { field, .. }
            | Expr::Between { field, .. }
            | Expr::In { field, .. }
            | Expr::Contains { field, .. }
            | Expr::IsTrue { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Every field the expression tests, once each, in order of first appearance.
    pub fn fields(&self) -> Vec<&Field> {
        let mut out: Vec<&Field> = Vec::new();
        self.walk(&mut |e| {
            if let Some(f) = e.field()
                && !out.contains(&&f.value)
            {
                out.push(&f.value);
            }
        });
        out
    }

    /// The event names the expression aggregates over (for query planning).
    pub fn event_names(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.walk(&mut |e| {
            if let Some(event) = e.field().and_then(|f| f.value.event()) {
                out.insert(event);
            }
        });
        out
    }

    /// Calls `visit` on every node, parents before children, left to right.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Expr)) {
        visit(self);
        match self {
            Expr::And { lhs, rhs, .. } | Expr::Or { lhs, rhs, .. } => {
                lhs.walk(visit);
                rhs.walk(visit);
            }
            Expr::Not { expr, .. } => expr.walk(visit),
            _ => {}
        }
    }

    /// Binding strength when printed: or < and < not < a condition.
    fn precedence(&self) -> u8 {
        match self {
            Expr::Or { .. } => 1,
            Expr::And { .. } => 2,
            Expr::Not { .. } => 3,
            _ => 4,
        }
    }
}

/// Writes `e`, in parentheses when it binds looser than `min`.
fn write_operand(f: &mut fmt::Formatter<'_>, e: &Expr, min: u8) -> fmt::Result {
    if e.precedence() < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Left-associative: a right operand of the same strength needs parentheses
            // to come back as the same tree.
            Expr::And { lhs, rhs, .. } => {
                write_operand(f, lhs, 2)?;
                f.write_str(" and ")?;
                write_operand(f, rhs, 3)
            }
            Expr::Or { lhs, rhs, .. } => {
                write_operand(f, lhs, 1)?;
                f.write_str(" or ")?;
                write_operand(f, rhs, 2)
            }
            Expr::Not { expr, .. } => {
                f.write_str("not ")?;
                write_operand(f, expr, 3)
            }
            Expr::Compare {
                field, op, value, ..
            } => write!(f, "{} {} {}", field.value, op.value, value.value),
            Expr::Between {
                field, low, high, ..
            } => write!(
                f,
                "{} between {} and {}",
                field.value, low.value, high.value
            ),
            Expr::In { field, values, .. } => {
                write!(f, "{} in [", field.value)?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", v.value)?;
                }
                f.write_str("]")
            }
            Expr::Contains { field, needle, .. } => {
                write!(f, "{} contains {}", field.value, Quoted(&needle.value))
            }
            Expr::HasTag { tag, .. } => write!(f, "has_tag({})", Quoted(&tag.value)),
            Expr::ChannelOk { channel, .. } => {
                write!(f, "channel_ok({})", Quoted(channel.value.as_str()))
            }
            Expr::IsTrue { field, .. } => write!(f, "{}", field.value),
        }
    }
}

/// A string written as a double-quoted filter literal.
pub(crate) struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

/// What a filter can test about a contact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// `email`.
    Email,
    /// `phone` (E.164).
    Phone,
    /// `timezone` (IANA name).
    Timezone,
    /// `locale`.
    Locale,
    /// `attrs.PATH`: the path below the contact's `attrs` object, one entry per segment.
    Attr(Vec<String>),
    /// `lifecycle`: the contact's [`Lifecycle`] stage.
    Lifecycle,
    /// `rfm.r`: recency score 1..5.
    RfmR,
    /// `rfm.f`: frequency score 1..5.
    RfmF,
    /// `rfm.m`: monetary score 1..5.
    RfmM,
    /// `rfm.r_days`: whole days since the last purchase.
    RfmRDays,
    /// `rfm.f_count`: purchases in the RFM window.
    RfmFCount,
    /// `rfm.m_value`: spend in the RFM window.
    RfmMValue,
    /// `first_seen_days`: whole days since the first event or creation.
    FirstSeenDays,
    /// `count("E", "WINDOW")`: events named E in the window (all history without one).
    Count {
        /// Event name.
        event: String,
        /// Look-back window; `None` means all history.
        window: Option<Span>,
    },
    /// `sum("E", "WINDOW")`: the sum of those events' values.
    Sum {
        /// Event name.
        event: String,
        /// Look-back window; `None` means all history.
        window: Option<Span>,
    },
    /// `days_since("E")`: whole days since the latest E.
    DaysSince(String),
    /// `overdue("E")`: days since the latest E over the median gap between Es.
    Overdue(String),
}

/// The kind of value a field holds, which decides what it may be compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Text, compared by code point.
    Text,
    /// A number.
    Number,
    /// An RFM score: a whole number 1..5.
    Score,
    /// A lifecycle stage name.
    Stage,
    /// Any JSON value (`attrs.*`): a value of another type than the literal is missing.
    Any,
}

impl Field {
    /// The kind of value this field holds.
    pub fn value_type(&self) -> ValueType {
        match self {
            Field::Email | Field::Phone | Field::Timezone | Field::Locale => ValueType::Text,
            Field::Attr(_) => ValueType::Any,
            Field::Lifecycle => ValueType::Stage,
            Field::RfmR | Field::RfmF | Field::RfmM => ValueType::Score,
            Field::RfmRDays
            | Field::RfmFCount
            | Field::RfmMValue
            | Field::FirstSeenDays
            | Field::Count { .. }
            | Field::Sum { .. }
            | Field::DaysSince(_)
            | Field::Overdue(_) => ValueType::Number,
        }
    }

    /// Whether a contact can lack a value (only `count`, `sum` and `first_seen_days` always have one).
    pub fn may_be_missing(&self) -> bool {
        !matches!(
            self,
            Field::Count { .. } | Field::Sum { .. } | Field::FirstSeenDays
        )
    }

    /// The event an aggregate field reads, if it is one.
    pub fn event(&self) -> Option<&str> {
        match self {
            Field::Count { event, .. }
            | Field::Sum { event, .. }
            | Field::DaysSince(event)
            | Field::Overdue(event) => Some(event),
            _ => None,
        }
    }

    /// Whether the field counts whole days (so `"90d"` written for it means `90`).
    pub(crate) fn counts_days(&self) -> bool {
        matches!(
            self,
            Field::DaysSince(_) | Field::RfmRDays | Field::FirstSeenDays
        )
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = match self {
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Timezone => "timezone",
            Field::Locale => "locale",
            Field::Lifecycle => "lifecycle",
            Field::RfmR => "rfm.r",
            Field::RfmF => "rfm.f",
            Field::RfmM => "rfm.m",
            Field::RfmRDays => "rfm.r_days",
            Field::RfmFCount => "rfm.f_count",
            Field::RfmMValue => "rfm.m_value",
            Field::FirstSeenDays => "first_seen_days",
            Field::Attr(path) => return write!(f, "attrs.{}", path.join(".")),
            Field::Count { event, window } | Field::Sum { event, window } => {
                let name = if matches!(self, Field::Count { .. }) {
                    "count"
                } else {
                    "sum"
                };
                write!(f, "{name}({}", Quoted(event))?;
                if let Some(w) = window {
                    write!(f, ", {}", Quoted(&w.to_string()))?;
                }
                return f.write_str(")");
            }
            Field::DaysSince(event) => return write!(f, "days_since({})", Quoted(event)),
            Field::Overdue(event) => return write!(f, "overdue({})", Quoted(event)),
        };
        f.write_str(plain)
    }
}

/// A value written in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `"text"` or `'text'`; durations are strings too.
    Str(String),
    /// `5`, `-2.5`.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl Literal {
    /// "a string", "a number" or "a boolean", for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Literal::Str(_) => "a string",
            Literal::Num(_) => "a number",
            Literal::Bool(_) => "a boolean",
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "{}", Quoted(s)),
            Literal::Num(n) => write!(f, "{n}"),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// Whether `left OP right` holds when `left.cmp(right)` is `ord`.
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a contact is in its life with the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Recently first seen.
    New,
    /// Recent activity.
    Active,
    /// Quiet for a while.
    Silent,
    /// Quiet for long.
    Dormant,
    /// Gone.
    Churned,
}

impl Lifecycle {
    /// Every stage, from the newest to the most lapsed.
    pub const ALL: [Lifecycle; 5] = [
        Lifecycle::New,
        Lifecycle::Active,
        Lifecycle::Silent,
        Lifecycle::Dormant,
        Lifecycle::Churned,
    ];

    /// The name used in filters and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::New => "new",
            Lifecycle::Active => "active",
            Lifecycle::Silent => "silent",
            Lifecycle::Dormant => "dormant",
            Lifecycle::Churned => "churned",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lifecycle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lifecycle::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                format!("unknown lifecycle stage `{s}`; expected one of: new, active, silent, dormant, churned")
            })
    }
}
