//! Errors that point into a source file, printed like rustc: file, line,
//! column, the offending line and a caret under the mistake.

use std::fmt;
use std::ops::Range;

/// One problem found in a file, with the byte span it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Path of the file, as the user should see it.
    pub file: String,
    /// The whole text of the file (needed to show line and column).
    pub source: String,
    /// Byte range of the mistake in `source`.
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// What would be valid, if we can tell.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic for `span` of `source` in `file`.
    pub fn new(
        file: impl Into<String>,
        source: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            source: source.into(),
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

    /// 1-based line and column (in characters) of the span's start.
    pub fn line_col(&self) -> (usize, usize) {
        line_col(&self.source, self.span.start)
    }
}

/// 1-based line and character column of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, col) = self.line_col();
        writeln!(f, "error: {}", self.message)?;
        let gutter = line.to_string().len();
        writeln!(f, "{:gutter$}--> {}:{}:{}", "", self.file, line, col)?;
        let start = floor_char_boundary(&self.source, self.span.start.min(self.source.len()));
        let line_start = self.source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.source[start..]
            .find('\n')
            .map_or(self.source.len(), |i| start + i);
        let text = &self.source[line_start..line_end];
        let end = floor_char_boundary(&self.source, self.span.end.clamp(start, line_end));
        let width = self.source[start..end].chars().count().max(1);
        let pad: String = self.source[line_start..start]
            .chars()
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{line} | {text}")?;
        write!(f, "{:gutter$} | {pad}{}", "", "^".repeat(width))?;
        if let Some(help) = &self.help {
            write!(f, " {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_line_and_column_with_a_caret() {
        let src = "name = \"x\"\nwhere = 'attr.region == 1'\n";
        let at = src.find("attr.region").unwrap();
        let d = Diagnostic::new("seg.toml", src, at..at + 11, "unknown field `attr.region`")
            .with_help("did you mean `attrs.region`?");
        assert_eq!(d.line_col(), (2, 10));
        let shown = d.to_string();
        assert!(shown.contains("--> seg.toml:2:10"), "{shown}");
        assert!(shown.contains("2 | where = 'attr.region == 1'"), "{shown}");
        assert!(
            shown.contains("  |          ^^^^^^^^^^^ did you mean `attrs.region`?"),
            "{shown}"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let src = "a = \"退订\" x";
        let at = src.find('x').unwrap();
        assert_eq!(line_col(src, at), (1, 10));
    }
}
