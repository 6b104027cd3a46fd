//! The files a marketer writes (SPEC section 2), parsed into types that cannot
//! hold an invalid value. [`load`] reads `herald.toml`, `segments/*.toml` and
//! `campaigns/*.toml` below a config directory and returns every problem it
//! finds as a [`Diagnostic`] pointing at file, line and column, not just the first.

mod attrs;
mod campaign;
mod herald;
mod segment;
mod values;

pub use attrs::*;
pub use campaign::*;
pub use herald::*;
pub use segment::*;
pub use values::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;

/// Everything under a config directory, checked and cross-referenced.
#[derive(Debug, Clone)]
pub struct ConfigSet {
    /// `herald.toml` (defaults when the file is absent).
    pub herald: HeraldConfig,
    /// Segments by name.
    pub segments: BTreeMap<String, Segment>,
    /// Campaigns by name.
    pub campaigns: BTreeMap<String, Campaign>,
}

impl ConfigSet {
    /// The segment filter a campaign targets: its named segment or its inline `where`.
    pub fn audience_of<'a>(&'a self, campaign: &'a Campaign) -> &'a crate::segment::Expr {
        match &campaign.audience {
            Audience::Segment(name) => &self.segments[name].filter,
            Audience::Inline(expr) => expr,
        }
    }
}

/// Parses one TOML document into `T`, turning serde/toml errors into a diagnostic.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    source: &str,
) -> Result<T, Diagnostic> {
    toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (message, help) = split_help(e.message());
        let d = Diagnostic::new(file, source, span, message);
        match help {
            Some(h) => d.with_help(h),
            None => d,
        }
    })
}

/// serde's "unknown field `x`, expected one of `a`, `b`" reads better as a message and a hint.
fn split_help(message: &str) -> (String, Option<String>) {
    let message = message.trim();
    if let Some((what, expected)) = message.split_once(", expected ") {
        return (what.to_string(), Some(format!("expected {expected}")));
    }
    (message.to_string(), None)
}

fn read(path: &Path) -> Result<String, Diagnostic> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::new(
            path.display().to_string(),
            "",
            0..0,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Loads and checks the config directory `dir` (usually `config/`).
///
/// A missing `herald.toml` means the embedded defaults (SQLite, outbox
/// channels). Errors are collected across all files.
pub fn load(dir: &Path) -> Result<ConfigSet, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let herald_path = dir.join("herald.toml");
    let herald = if herald_path.exists() {
        match read(&herald_path)
            .and_then(|src| HeraldConfig::parse(&herald_path.display().to_string(), &src))
        {
            Ok(h) => h,
            Err(e) => {
                errors.push(e);
                HeraldConfig::default()
            }
        }
    } else {
        HeraldConfig::default()
    };

    let mut segments = BTreeMap::new();
    // Segments whose file has an error: a campaign naming one is not also
    // told the segment is unknown (the segment's own error says what is wrong).
    let mut broken = std::collections::BTreeSet::new();
    for path in toml_files(&dir.join("segments")) {
        let file = path.display().to_string();
        let types = &herald.contacts.attrs;
        let parsed = read(&path).and_then(|src| {
            let seg = Segment::parse(&file, &src)?;
            declared_types_fit(&seg.filter, &seg.source, types)
                .map_err(|e| e.into_diagnostic(&file, &src, seg.filter_offset))?;
            Ok(seg)
        });
        match parsed {
            Ok(seg) => {
                if let Some(prev) = segments.insert(seg.name.clone(), seg) {
                    errors.push(Diagnostic::new(
                        &file,
                        "",
                        0..0,
                        format!(
                            "segment `{}` is defined twice (also in {})",
                            prev.name, prev.file
                        ),
                    ));
                }
            }
            Err(e) => {
                broken.insert(segment_name(&path));
                errors.push(e);
            }
        }
    }

    let mut campaigns = BTreeMap::new();
    for path in toml_files(&dir.join("campaigns")) {
        let file = path.display().to_string();
        let parsed = read(&path).and_then(|src| {
            let c = Campaign::parse(&file, &src)?;
            if c.segments_named().iter().any(|n| broken.contains(*n)) {
                return Ok(c);
            }
            c.check_references(&segments, &herald)
                .map_err(|(span, msg, help)| {
                    let d = Diagnostic::new(&file, &src, span, msg);
                    match help {
                        Some(h) => d.with_help(h),
                        None => d,
                    }
                })?;
            if let Audience::Inline(expr) = &c.audience {
                let offset = c.filter_offset();
                let text = src.get(offset..).unwrap_or("");
                declared_types_fit(expr, text, &herald.contacts.attrs)
                    .map_err(|e| e.into_diagnostic(&file, &src, offset))?;
            }
            Ok(c)
        });
        match parsed {
            Ok(c) => {
                if let Some(prev) = campaigns.insert(c.name.clone(), c) {
                    errors.push(Diagnostic::new(
                        &file,
                        "",
                        0..0,
                        format!(
                            "campaign `{}` is defined twice (also in {})",
                            prev.name, prev.file
                        ),
                    ));
                }
            }
            Err(e) => errors.push(e),
        }
    }

    if errors.is_empty() {
        Ok(ConfigSet {
            herald,
            segments,
            campaigns,
        })
    } else {
        Err(errors)
    }
}

/// The name a segment file gives itself (its `name`, else its file stem),
/// read leniently for a file that failed to parse.
fn segment_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_to_string(path)
        .ok()
        .and_then(|src| src.parse::<toml::Table>().ok())
        .and_then(|t| t.get("name").and_then(|n| n.as_str().map(str::to_string)))
        .unwrap_or(stem)
}

/// Parses and checks a filter typed outside any file (the console's box)
/// as [`load`] checks a segment's `where`: the grammar and names, then each
/// literal against the type `[contacts.attrs]` declares for its attribute.
/// The error's span is in `text`.
pub fn check_filter_text(
    text: &str,
    herald: &HeraldConfig,
) -> Result<crate::segment::Expr, crate::segment::FilterError> {
    let expr = crate::segment::parse(text)?;
    declared_types_fit(&expr, text, &herald.contacts.attrs)?;
    Ok(expr)
}

/// Checks a filter's literals against the types `[contacts.attrs]` declares.
fn declared_types_fit(
    expr: &crate::segment::Expr,
    src: &str,
    types: &BTreeMap<String, AttrType>,
) -> Result<(), crate::segment::FilterError> {
    if types.is_empty() {
        return Ok(());
    }
    check_filter(
        expr,
        src,
        &|name| types.get(name).copied(),
        "declared in [contacts.attrs]",
    )
}

/// Edit distance, for "did you mean" hints.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_filter_is_checked_like_a_segments_where() {
        let herald =
            HeraldConfig::parse("herald.toml", "[contacts.attrs]\nvip = \"bool\"\n").unwrap();
        assert!(check_filter_text("attrs.vip == true", &herald).is_ok());
        // A misspelt field: the span is the word, in the filter's own text.
        let e = check_filter_text("lifecyle == \"active\"", &herald).unwrap_err();
        assert_eq!(e.span, 0..8, "{e:?}");
        // A literal of the wrong declared type, as `herald check` refuses it.
        let text = "attrs.vip == \"yes\"";
        let e = check_filter_text(text, &herald).unwrap_err();
        assert_eq!(&text[e.span.clone()], "\"yes\"", "{e:?}");
    }
}
