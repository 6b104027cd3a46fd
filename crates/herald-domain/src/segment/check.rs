//! Type checks run as each condition is parsed: a value must suit its field
//! (`lifecycle` takes a stage name, `rfm.r` a score 1..5, `count(...)` a
//! number, `email` a string; `attrs.*` takes anything).

use std::ops::Range;

use super::ast::{CmpOp, Field, Lifecycle, Literal, Located, ValueType};
use super::names;
use super::parser::FilterError;
use crate::duration::Span;

/// The lowest and highest RFM score.
const SCORES: std::ops::RangeInclusive<f64> = 1.0..=5.0;

const SECS_PER_DAY: i64 = 86_400;

fn stages_help() -> String {
    let stages: Vec<&str> = Lifecycle::ALL.iter().map(|l| l.as_str()).collect();
    format!("stages are: {}", stages.join(", "))
}

fn no_order_on_stages(at: Range<usize>) -> FilterError {
    FilterError::new(at, "lifecycle stages have no order")
        .with_help("use `==`, `!=` or `in`, e.g. `lifecycle in [\"dormant\", \"churned\"]`")
}

/// Checks that `lit` is a value `field` can be compared with.
fn fits(src: &str, field: &Located<Field>, lit: &Located<Literal>) -> Result<(), FilterError> {
    let written = &src[lit.span.clone()];
    let name = &field.value;
    let err = |message: String, help: String| {
        Err(FilterError::new(lit.span.clone(), message).with_help(help))
    };
    match (name.value_type(), &lit.value) {
        (ValueType::Any, _)
        | (ValueType::Text, Literal::Str(_))
        | (ValueType::Number, Literal::Num(_)) => Ok(()),
        (ValueType::Text, other) => err(
            format!(
                "`{name}` is text; compare it with a string, found {}",
                other.type_name()
            ),
            format!("quote it: `\"{written}\"`"),
        ),
        (ValueType::Number | ValueType::Score, Literal::Str(s)) => {
            let help = if let Ok(n) = s.trim().parse::<f64>() {
                format!("write it without quotes: `{n}`")
            } else if let Ok(span) = s.parse::<Span>()
                && name.counts_days()
                && span.secs() % SECS_PER_DAY == 0
            {
                format!(
                    "`{name}` counts whole days: write `{}`",
                    span.secs() / SECS_PER_DAY
                )
            } else {
                "write a number, e.g. `5` or `-2.5`".into()
            };
            err(
                format!("`{name}` is a number; compare it with a number, found a string"),
                help,
            )
        }
        (ValueType::Number | ValueType::Score, Literal::Bool(_)) => err(
            format!("`{name}` is a number; compare it with a number, found a boolean"),
            "write a number, e.g. `5` or `-2.5`".into(),
        ),
        (ValueType::Score, Literal::Num(n)) => {
            if SCORES.contains(n) && n.fract() == 0.0 {
                Ok(())
            } else {
                err(
                    format!("RFM scores are whole numbers from 1 to 5, found `{written}`"),
                    "5 is the best score, 1 the worst".into(),
                )
            }
        }
        (ValueType::Stage, Literal::Str(s)) => {
            if s.parse::<Lifecycle>().is_ok() {
                return Ok(());
            }
            let known = Lifecycle::ALL.map(Lifecycle::as_str);
            let help = match names::closest(s, known) {
                Some(near) => format!("did you mean \"{near}\"? {}", stages_help()),
                None => stages_help(),
            };
            err(format!("unknown lifecycle stage `{s}`"), help)
        }
        (ValueType::Stage, other) => err(
            format!(
                "`lifecycle` is compared with a stage name, found {}",
                other.type_name()
            ),
            stages_help(),
        ),
    }
}

/// `field OP value`.
pub(crate) fn compare(
    src: &str,
    field: &Located<Field>,
    op: &Located<CmpOp>,
    value: &Located<Literal>,
) -> Result<(), FilterError> {
    let equality = matches!(op.value, CmpOp::Eq | CmpOp::Ne);
    if field.value.value_type() == ValueType::Stage && !equality {
        return Err(no_order_on_stages(op.span.clone()));
    }
    fits(src, field, value)?;
    if matches!(value.value, Literal::Bool(_)) && !equality {
        return Err(FilterError::new(
            op.span.clone(),
            "booleans can only be compared with `==` or `!=`",
        ));
    }
    Ok(())
}

/// `field between low and high`.
pub(crate) fn between(
    src: &str,
    field: &Located<Field>,
    keyword: Range<usize>,
    low: &Located<Literal>,
    high: &Located<Literal>,
) -> Result<(), FilterError> {
    if field.value.value_type() == ValueType::Stage {
        return Err(no_order_on_stages(keyword));
    }
    fits(src, field, low)?;
    fits(src, field, high)?;
    let ordered = match (&low.value, &high.value) {
        (Literal::Num(a), Literal::Num(b)) => a <= b,
        (Literal::Str(a), Literal::Str(b)) => a <= b,
        (Literal::Bool(_), _) | (_, Literal::Bool(_)) => {
            let at = if matches!(low.value, Literal::Bool(_)) {
                low
            } else {
                high
            };
            return Err(FilterError::new(
                at.span.clone(),
                "`between` needs numbers or strings, found a boolean",
            ));
        }
        _ => {
            return Err(FilterError::new(
                high.span.clone(),
                format!(
                    "both ends of `between` must be the same type: `{}` is {}, `{}` is {}",
                    &src[low.span.clone()],
                    low.value.type_name(),
                    &src[high.span.clone()],
                    high.value.type_name()
                ),
            ));
        }
    };
    if !ordered {
        let (lo, hi) = (&src[low.span.clone()], &src[high.span.clone()]);
        return Err(FilterError::new(
            low.span.start..high.span.end,
            format!("`between {lo} and {hi}` matches nothing"),
        )
        .with_help(format!(
            "write the smaller bound first: `between {hi} and {lo}`"
        )));
    }
    Ok(())
}

/// `field in [values]`.
pub(crate) fn in_list(
    src: &str,
    field: &Located<Field>,
    values: &[Located<Literal>],
) -> Result<(), FilterError> {
    values.iter().try_for_each(|v| fits(src, field, v))
}

/// `field contains value`: returns the substring looked for.
pub(crate) fn contains(
    src: &str,
    field: &Located<Field>,
    keyword: Range<usize>,
    value: Located<Literal>,
) -> Result<Located<String>, FilterError> {
    let name = &field.value;
    match name.value_type() {
        ValueType::Text | ValueType::Any => {}
        ValueType::Stage => {
            return Err(
                FilterError::new(keyword, "`contains` does not apply to `lifecycle`")
                    .with_help("use `lifecycle in [\"dormant\", \"churned\"]`"),
            );
        }
        ValueType::Number | ValueType::Score => {
            return Err(FilterError::new(
                keyword,
                format!("`contains` works on text; `{name}` is a number"),
            )
            .with_help("compare numbers with `==`, `<`, `>=`, `between` or `in`"));
        }
    }
    match value.value {
        Literal::Str(s) => Ok(Located::new(s, value.span)),
        other => {
            let written = &src[value.span.clone()];
            Err(FilterError::new(
                value.span.clone(),
                format!("`contains` takes a string, found {}", other.type_name()),
            )
            .with_help(format!("quote it: `\"{written}\"`")))
        }
    }
}
