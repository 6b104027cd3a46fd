//! The segment filter language (SPEC section 2): `attrs.region == "guangdong"
//! and days_since("order_placed") between 90 and 150 and not has_tag("x")`.
//!
//! Start at [`parse`], which turns text into a type-checked [`Expr`] (see
//! `ast.rs`) or a [`FilterError`] with a span and a hint; [`evaluate`] is the
//! in-memory reference semantics that the SQL compiler must agree with.

mod ast;
mod check;
mod eval;
mod lexer;
mod names;
mod parser;

pub use ast::{CmpOp, Expr, Field, Lifecycle, Literal, Located, ValueType};
pub use eval::{EventFact, Facts, MS_PER_DAY, Rfm, Value, evaluate, field_value};
pub use parser::{FilterError, parse};
