//! `config/segments/NAME.toml`: a named filter over contacts.

use serde::Deserialize;
use toml::Spanned;

use super::values::{Name, string_content_offset};
use crate::diagnostic::Diagnostic;
use crate::segment::Expr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    name: Name,
    #[serde(default)]
    description: String,
    #[serde(rename = "where")]
    filter: Spanned<String>,
}

/// A segment, its filter parsed and checked.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its name, as campaigns refer to it.
    pub name: String,
    /// What it is for, in words.
    pub description: String,
    /// The filter as written.
    pub source: String,
    /// The parsed filter.
    pub filter: Expr,
    /// The file it came from.
    pub file: String,
    /// Byte offset of the filter text in the file, for diagnostics found later.
    pub filter_offset: usize,
}

impl Segment {
    /// Parses the text of a segment file.
    pub fn parse(file: &str, source: &str) -> Result<Self, Diagnostic> {
        let raw: SegmentFile = super::parse_toml(file, source)?;
        let filter = parse_filter(file, source, &raw.filter)?;
        Ok(Segment {
            name: raw.name.as_str().to_string(),
            description: raw.description,
            source: raw.filter.get_ref().clone(),
            filter,
            file: file.to_string(),
            filter_offset: string_content_offset(source, &raw.filter.span()),
        })
    }
}

/// Parses a filter embedded in a TOML string, reporting errors at their place in the file.
pub(crate) fn parse_filter(
    file: &str,
    source: &str,
    text: &Spanned<String>,
) -> Result<Expr, Diagnostic> {
    crate::segment::parse(text.get_ref()).map_err(|e| {
        let offset = string_content_offset(source, &text.span());
        e.into_diagnostic(file, source, offset)
    })
}
