//! Inbound SMS keywords: what a reply means (opt out, opt back in, help)
//! and the TwiML answer. A keyword counts only as the whole message, so
//! "Stop!" opts out but "don't stop" does not (Twilio's own rule).

use crate::state::{HELP_KEYWORDS, OPT_IN_KEYWORDS};

/// What an inbound SMS asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Stop SMS to this number; the matched keyword.
    OptOut(String),
    /// Lift an earlier opt-out.
    OptIn,
    /// Explain how to opt out.
    Help,
    /// Anything else.
    Other,
}

/// The message folded for matching: trimmed of white space and of
/// punctuation around it, upper-cased (Unicode-aware, so `退订` is itself).
pub fn normalise(body: &str) -> String {
    body.trim_matches(|c: char| {
        c.is_whitespace() || c.is_ascii_punctuation() || "。！？，".contains(c)
    })
    .to_uppercase()
}

/// What `body` asks for, given the normalised opt-out words.
pub fn intent(body: &str, opt_out: &[String]) -> Intent {
    let word = normalise(body);
    if word.is_empty() {
        return Intent::Other;
    }
    if opt_out.contains(&word) {
        return Intent::OptOut(word);
    }
    if OPT_IN_KEYWORDS.contains(&word.as_str()) {
        return Intent::OptIn;
    }
    if HELP_KEYWORDS.contains(&word.as_str()) {
        return Intent::Help;
    }
    Intent::Other
}

/// A TwiML response that answers `reply`, or says nothing.
pub fn twiml(reply: Option<&str>) -> String {
    match reply {
        Some(text) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            xml_escape(text)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".into(),
    }
}

/// Escapes the five XML special characters.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::STANDARD_OPT_OUT_KEYWORDS;

    fn words() -> Vec<String> {
        STANDARD_OPT_OUT_KEYWORDS
            .iter()
            .map(|k| normalise(k))
            .chain(["TD", "T", "退订"].iter().map(|k| normalise(k)))
            .collect()
    }

    #[test]
    fn keywords_match_the_whole_message_in_any_case() {
        let w = words();
        assert_eq!(intent(" stop! ", &w), Intent::OptOut("STOP".into()));
        assert_eq!(intent("Td", &w), Intent::OptOut("TD".into()));
        assert_eq!(intent("退订", &w), Intent::OptOut("退订".into()));
        assert_eq!(intent("退订。", &w), Intent::OptOut("退订".into()));
        assert_eq!(intent("don't stop", &w), Intent::Other);
        assert_eq!(intent("unstop", &w), Intent::OptIn);
        assert_eq!(intent("Yes", &w), Intent::OptIn);
        assert_eq!(intent("help?", &w), Intent::Help);
        assert_eq!(intent("", &w), Intent::Other);
    }

    #[test]
    fn twiml_escapes_the_reply() {
        assert_eq!(
            twiml(Some("a<b & \"c\"")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>a&lt;b &amp; &quot;c&quot;</Message></Response>"
        );
        assert!(twiml(None).ends_with("<Response></Response>"));
    }
}
