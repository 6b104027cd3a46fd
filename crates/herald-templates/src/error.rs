//! The two ways templates fail: at load (a file that does not compile) and at
//! render (a missing variable, a bad link). Both name the template file and,
//! where handlebars knows it, the line and column.

use std::fmt;
use std::path::PathBuf;

use herald_domain::diagnostic::Diagnostic;

/// A 1-based line and column in a template's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

impl Position {
    /// The position from handlebars' optional line and column.
    pub(crate) fn from_parts(line: Option<usize>, col: Option<usize>) -> Option<Self> {
        Some(Self {
            line: line?,
            col: col?,
        })
    }
}

/// Renders " (line L, col C)" for a known position, nothing otherwise.
struct At<'a>(&'a Option<Position>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " (line {}, col {})", p.line, p.col),
            None => Ok(()),
        }
    }
}

/// Renders ":L:C" for a known position, nothing otherwise (rustc style).
struct Colon<'a>(&'a Option<Position>);

impl fmt::Display for Colon<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, ":{}:{}", p.line, p.col),
            None => Ok(()),
        }
    }
}

/// A template set that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A template path that is not valid UTF-8 (names must be strings).
    #[error("{}: template paths must be valid UTF-8", path.display())]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },
    /// A template that does not compile.
    #[error("{file}{}: {reason}", Colon(.at))]
    Syntax {
        /// The file (or inline name) as the user should see it.
        file: String,
        /// Where handlebars found the mistake, when it knows.
        at: Option<Position>,
        /// What handlebars says is wrong.
        reason: String,
        /// The template's text, to show the offending line.
        source_text: String,
    },
    /// Two files are the same locale variant once case and `_`/`-` are ignored.
    #[error("{second}: same locale variant as {first}")]
    DuplicateVariant {
        /// The file kept.
        first: String,
        /// The file refused.
        second: String,
    },
    /// Templates that include each other in a ring: rendering one would never
    /// end (handlebars recurses until the process runs out of stack).
    #[error("{}: includes itself through partials ({}); a template must not include itself, directly or through others", .0[0], .0.join(" > "))]
    PartialCycle(
        /// The ring, starting and ending with the same template.
        Vec<String>,
    ),
    /// Several of the above, in file order (a load reports every broken file).
    #[error("{}", join_lines(.0))]
    Many(Vec<TemplateError>),
}

fn join_lines(errors: &[TemplateError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl TemplateError {
    /// The errors this one stands for: itself, or each of `Many`.
    pub fn flatten(&self) -> Vec<&TemplateError> {
        match self {
            TemplateError::Many(all) => all.iter().flat_map(TemplateError::flatten).collect(),
            other => vec![other],
        }
    }

    /// A rustc-style diagnostic (line, caret) for a syntax error with a known position.
    pub fn diagnostic(&self) -> Option<Diagnostic> {
        let TemplateError::Syntax {
            file,
            at: Some(at),
            reason,
            source_text,
        } = self
        else {
            return None;
        };
        let start = byte_offset(source_text, *at);
        let end = source_text[start..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8());
        Some(Diagnostic::new(
            file.clone(),
            source_text.clone(),
            start..end,
            first_line(reason),
        ))
    }
}

/// The first line of a (possibly multi-line) handlebars reason.
fn first_line(reason: &str) -> String {
    reason.lines().next().unwrap_or_default().trim().to_owned()
}

/// Byte offset of a 1-based line and character column in `text` (clamped to its end).
fn byte_offset(text: &str, at: Position) -> usize {
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i + 1 == at.line {
            let col = at.col.saturating_sub(1);
            return offset
                + line
                    .char_indices()
                    .nth(col)
                    .map_or(line.trim_end_matches('\n').len(), |(b, _)| b);
        }
        offset += line.len();
    }
    text.len()
}

/// A message that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No template of that name (nor a locale variant of it) is loaded.
    #[error("template {template}: not found")]
    NotFound {
        /// The name asked for.
        template: String,
    },
    /// A variable used in output (or given to a helper) has no value; null counts as missing.
    #[error("template {template}: variable `{variable}` is missing{}", At(.at))]
    MissingVariable {
        /// The template file (a partial's own name when the hole is in a partial).
        template: String,
        /// The path as written in the template, e.g. `contact.attrs.first_name`.
        variable: String,
        /// Where the expression is.
        at: Option<Position>,
    },
    /// `track` was given something other than an http(s) URL.
    #[error("template {template}: `track` accepts only http and https URLs, not `{url}`{}", At(.at))]
    InvalidLink {
        /// The template file.
        template: String,
        /// What it was given.
        url: String,
        /// Where the expression is.
        at: Option<Position>,
    },
    /// Any other failure: wrong helper arguments, an unknown helper, a missing partial.
    #[error("template {template}: {message}{}", At(.at))]
    Failed {
        /// The template file.
        template: String,
        /// What went wrong.
        message: String,
        /// Where the expression is.
        at: Option<Position>,
    },
}

impl RenderError {
    /// The template the error names.
    pub fn template(&self) -> &str {
        match self {
            RenderError::NotFound { template }
            | RenderError::MissingVariable { template, .. }
            | RenderError::InvalidLink { template, .. }
            | RenderError::Failed { template, .. } => template,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_offset_finds_line_and_char_column() {
        let text = "ab\n回cd\n";
        assert_eq!(byte_offset(text, Position { line: 1, col: 1 }), 0);
        assert_eq!(byte_offset(text, Position { line: 2, col: 2 }), 3 + 3);
        assert_eq!(byte_offset(text, Position { line: 2, col: 99 }), 3 + 5);
        assert_eq!(byte_offset(text, Position { line: 9, col: 1 }), text.len());
    }

    #[test]
    fn render_errors_name_template_variable_and_position() {
        let e = RenderError::MissingVariable {
            template: "winback/discount.email.hbs".into(),
            variable: "contact.attrs.first_name".into(),
            at: Some(Position { line: 3, col: 5 }),
        };
        assert_eq!(
            e.to_string(),
            "template winback/discount.email.hbs: variable `contact.attrs.first_name` is missing (line 3, col 5)"
        );
    }
}
