//! The plain-text alternative of an HTML email: tags dropped, blocks and
//! `<br>` as line breaks, links as `text (url)`, list items as `- item`,
//! entities decoded, `<head>`, `<style>` and `<script>` left out. A small
//! hand-written scanner: email HTML is machine-made, not arbitrary web pages.

use std::borrow::Cow;

/// Elements whose content is never text.
const SKIPPED: &[&str] = &["head", "style", "script", "title", "template"];

/// Elements that end a paragraph: a blank line after them.
const PARAGRAPHS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "table",
    "blockquote",
    "pre",
];

/// Elements that sit on their own line.
const BLOCKS: &[&str] = &[
    "div", "li", "tr", "section", "article", "header", "footer", "nav", "aside", "main", "form",
    "dl", "dt", "dd", "center", "hr", "body", "html", "tbody", "thead", "tfoot",
];

/// Invisible characters email builders pad preheaders with.
const INVISIBLE: &[char] = &[
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{034F}', '\u{00AD}', '\u{FEFF}',
];

/// Longest entity name we look for between `&` and `;`.
const MAX_ENTITY_LEN: usize = 10;

/// The plain-text rendering of `html`.
pub fn html_to_text(html: &str) -> String {
    let mut w = Writer::default();
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |i| &after[i + 3..]);
            continue;
        }
        if rest.starts_with('<') {
            if let Some((tag, after)) = parse_tag(rest) {
                rest = after;
                if !tag.closing && !tag.self_closing && SKIPPED.contains(&tag.name.as_str()) {
                    rest = skip_element(rest, &tag.name);
                } else {
                    w.tag(&tag);
                }
            } else {
                w.text("<");
                rest = &rest[1..];
            }
            continue;
        }
        let end = rest.find('<').unwrap_or(rest.len());
        w.text(&decode_entities(&rest[..end]));
        rest = &rest[end..];
    }
    w.finish()
}

/// A start or end tag.
struct Tag<'a> {
    /// Lower-case element name; `!` for declarations and `?` for processing instructions.
    name: String,
    closing: bool,
    self_closing: bool,
    /// The raw attribute text.
    attrs: &'a str,
}

/// The tag at the start of `s` (which begins with `<`), and what follows it.
fn parse_tag(s: &str) -> Option<(Tag<'_>, &str)> {
    let body = &s[1..];
    if body.starts_with(['!', '?']) {
        let end = body.find('>')?;
        let tag = Tag {
            name: body[..1].to_owned(),
            closing: false,
            self_closing: true,
            attrs: "",
        };
        return Some((tag, &body[end + 1..]));
    }
    let (closing, body) = match body.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let name_len = body
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(body.len());
    if name_len == 0 || !body.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let end = tag_end(&body[name_len..])? + name_len;
    let attrs = &body[name_len..end];
    let tag = Tag {
        name: body[..name_len].to_ascii_lowercase(),
        closing,
        self_closing: attrs.trim_end().ends_with('/'),
        attrs,
    };
    Some((tag, &body[end + 1..]))
}

/// Byte index of the `>` that ends a tag, skipping quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// What follows the end tag of `name` (case-insensitive), or nothing if it never closes.
fn skip_element<'a>(s: &'a str, name: &str) -> &'a str {
    // ASCII lower-casing keeps byte offsets.
    let lower = s.to_ascii_lowercase();
    let needle = format!("</{name}");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let after = from + i + needle.len();
        if lower[after..].starts_with(|c: char| c == '>' || c == '/' || c.is_whitespace()) {
            return lower[after..].find('>').map_or("", |j| &s[after + j + 1..]);
        }
        from = after;
    }
    ""
}

/// The decoded value of attribute `name` in a tag's attribute text.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return None;
        }
        let key_len = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let key = &rest[..key_len];
        rest = rest[key_len..].trim_start();
        let value = match rest.strip_prefix('=') {
            Some(v) => {
                let v = v.trim_start();
                let (value, after) = match v.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let inner = &v[1..];
                        let end = inner.find(q).unwrap_or(inner.len());
                        (&inner[..end], inner.get(end + 1..).unwrap_or(""))
                    }
                    _ => {
                        let end = v.find(char::is_whitespace).unwrap_or(v.len());
                        (&v[..end], &v[end..])
                    }
                };
                rest = after;
                value
            }
            None => "",
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(decode_entities(value.trim()).into_owned());
        }
    }
}

/// Builds the text: collapses spaces, tracks the open link.
#[derive(Default)]
struct Writer {
    out: String,
    pending_space: bool,
    /// The open `<a>`: its href and where its text starts in `out`.
    link: Option<(String, usize)>,
}

impl Writer {
    fn text(&mut self, s: &str) {
        for c in s.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
            } else if !INVISIBLE.contains(&c) {
                if self.pending_space && !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                    self.out.push(' ');
                }
                self.pending_space = false;
                self.out.push(c);
            }
        }
    }

    fn newline(&mut self) {
        self.pending_space = false;
        let trimmed = self.out.trim_end_matches(' ').len();
        self.out.truncate(trimmed);
        self.out.push('\n');
    }

    fn line_start(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.newline();
        }
        self.pending_space = false;
    }

    fn blank_line(&mut self) {
        self.line_start();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.newline();
        }
    }

    fn tag(&mut self, tag: &Tag<'_>) {
        let name = tag.name.as_str();
        match (name, tag.closing) {
            ("br", _) => self.newline(),
            ("li", false) => {
                self.line_start();
                self.out.push_str("- ");
            }
            ("td" | "th", true) => self.pending_space = true,
            ("img", false) => {
                if let Some(alt) = attr(tag.attrs, "alt") {
                    self.text(&alt);
                }
            }
            ("a", false) => {
                let href = attr(tag.attrs, "href").unwrap_or_default();
                self.link = Some((href, self.out.len()));
            }
            ("a", true) => self.close_link(),
            (n, true) if PARAGRAPHS.contains(&n) => self.blank_line(),
            (n, _) if PARAGRAPHS.contains(&n) || BLOCKS.contains(&n) => self.line_start(),
            _ => {}
        }
    }

    fn close_link(&mut self) {
        let Some((href, start)) = self.link.take() else {
            return;
        };
        if href.is_empty() || href.starts_with('#') || href.starts_with("javascript:") {
            return;
        }
        let text = self.out.get(start..).unwrap_or_default().trim();
        let bare = href
            .strip_prefix("mailto:")
            .or_else(|| href.strip_prefix("tel:"))
            .unwrap_or(&href);
        if text.is_empty() {
            self.text(&href);
        } else if text != href && text != bare {
            self.out.push_str(" (");
            self.out.push_str(&href);
            self.out.push(')');
        }
    }

    fn finish(self) -> String {
        let mut lines: Vec<&str> = Vec::new();
        for line in self.out.lines().map(str::trim) {
            let blank_run = line.is_empty() && lines.last().is_none_or(|l| l.is_empty());
            if !blank_run {
                lines.push(line);
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines.join("\n")
    }
}

/// `s` with HTML character references decoded (named ones for common email text, all numeric ones).
pub(crate) fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest[1..]
            .find(';')
            .filter(|&end| end <= MAX_ENTITY_LEN)
            .and_then(|end| entity(&rest[1..=end]).map(|c| (c, end + 2)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The character an entity name (between `&` and `;`) stands for.
fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|&c| c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{A0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "middot" => '·',
        "bull" => '•',
        "deg" => '°',
        "times" => '×',
        "zwnj" => '\u{200C}',
        "zwj" => '\u{200D}',
        "shy" => '\u{AD}',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_breaks_and_headings_become_lines() {
        let html =
            "<h1>Hello Ann</h1><p>Line one<br>line  two\n   wrapped</p><div>a</div><div>b</div>";
        assert_eq!(
            html_to_text(html),
            "Hello Ann\n\nLine one\nline two wrapped\n\na\nb"
        );
    }

    #[test]
    fn links_show_their_url_unless_the_text_is_the_url() {
        let html = r##"<p><a href="https://t.example.com/c/AbC">Shop now</a> or
            <a href='https://x.example/'>https://x.example/</a>
            <a href="mailto:help@example.com">help@example.com</a>
            <a href="https://x.example/?a=1&amp;b=2"><img src="i.png" alt=""></a>
            <a href="#top">top</a></p>"##;
        assert_eq!(
            html_to_text(html),
            "Shop now (https://t.example.com/c/AbC) or https://x.example/ help@example.com https://x.example/?a=1&b=2 top"
        );
        assert_eq!(
            html_to_text(r#"<a href="https://x.example/"><img alt="Buy"></a>"#),
            "Buy (https://x.example/)"
        );
    }

    #[test]
    fn list_items_get_dashes() {
        let html =
            "<p>Picks:</p><ul>\n  <li>Tea</li>\n  <li>Cups &amp; saucers</li>\n</ul><p>Bye</p>";
        assert_eq!(
            html_to_text(html),
            "Picks:\n\n- Tea\n- Cups & saucers\n\nBye"
        );
    }

    #[test]
    fn head_style_script_and_comments_are_dropped() {
        let html = "<!DOCTYPE html><html><HEAD><title>T</title><style>p{color:red}</style></HEAD>\
                    <body><!-- hidden --><script type=\"x\">var a = '<p>';</script><p>Visible</p>\
                    <style>.x{}</style></body></html>";
        assert_eq!(html_to_text(html), "Visible");
        // <header> is not <head>.
        assert_eq!(html_to_text("<header>Top</header><p>x</p>"), "Top\nx");
    }

    #[test]
    fn the_entities_handlebars_produces_are_decoded() {
        let escaped = handlebars::html_escape("Tom & \"Jerry\" <b>'a'=`b`</b>");
        assert_eq!(html_to_text(&escaped), "Tom & \"Jerry\" <b>'a'=`b`</b>");
        assert_eq!(
            html_to_text("&#233;t&#xE9; &euro;5 &hellip; &unknown; a&b"),
            "été €5 … &unknown; a&b"
        );
        assert_eq!(html_to_text("a&nbsp;&nbsp;b&zwnj;c"), "a bc");
    }

    #[test]
    fn blank_lines_and_spaces_collapse_and_tables_flow() {
        let html = "<table><tr><td>Item</td><td>Price</td></tr><tr><td>Tea</td><td>5</td></tr></table>\
                    <p></p><p></p><p>  End  </p>";
        assert_eq!(html_to_text(html), "Item Price\nTea 5\n\nEnd");
    }

    #[test]
    fn stray_angle_brackets_are_text() {
        assert_eq!(html_to_text("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(html_to_text("<p>unclosed <b"), "unclosed <b");
    }
}
