//! herald's templates: handlebars compiled once per run, rendered strictly
//! (a missing variable is an error, never an empty hole), with locale
//! variants, signed click links and SMS segment counting.
//!
//! Strictness: printing a missing or null value is an error naming the
//! template, the variable and its position; `if`, `unless` and the comparison
//! helpers treat a missing value as false; `{{default x "fallback"}}` is the
//! one way to print something that may be absent.
//!
//! Start with [`TemplateSet`] (load, resolve, render), then [`helpers`]
//! (`default`, `track`, comparisons), [`html_to_text`] and [`sms`].

mod error;
pub mod helpers;
mod html_text;
mod locale;
mod paths;
mod set;
pub mod sms;

pub use error::{Position, RenderError, TemplateError};
pub use helpers::{LinkContext, TrackedLink};
pub use html_text::html_to_text;
pub use paths::TemplateReads;
pub use set::{RenderData, Rendered, TemplateSet, is_html_template};
pub use sms::{SmsCount, SmsEncoding, check_sms_template_length, compose_sms, sms_segments};
