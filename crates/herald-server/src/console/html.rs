//! HTML for the console: escaping, and the page around every view. No
//! template engine: pages are small, and `esc` on every value written is
//! easy to review.

use std::fmt::Write as _;

/// The stylesheet, served from the binary at [`STYLE_PATH`].
pub const STYLE: &str = include_str!("style.css");
/// Where the stylesheet is served.
pub const STYLE_PATH: &str = "/console/assets/style.css";

/// `s` with every character that means something in HTML text or a quoted
/// attribute replaced by its entity.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title`, the navigation (with the sign-out form when
/// `csrf` is given: only signed-in pages have it) and `body`, already HTML.
pub fn page(title: &str, csrf: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · herald</title><link rel=\"stylesheet\" href=\"{STYLE_PATH}\"></head><body>",
        esc(title)
    );
    if let Some(csrf) = csrf {
        let _ = write!(
            out,
            "<header><nav aria-label=\"console\"><a href=\"/console/\">Campaigns</a> \
             <a href=\"/console/status\">Status</a> <a href=\"/console/segments\">Segments</a> <a href=\"/console/contacts\">Contacts</a></nav>\
             <form method=\"post\" action=\"/console/sign-out\">{}<button type=\"submit\">Sign out</button></form></header>",
            csrf_field(csrf)
        );
    }
    let _ = write!(
        out,
        "<main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A table with `head` and `rows` of cells that are already HTML.
pub fn table(caption: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(esc("退订 ok"), "退订 ok");
    }

    #[test]
    fn a_page_escapes_its_title() {
        let p = page("<script>", None, "");
        assert!(p.contains("&lt;script&gt;"));
        assert!(!p.contains("<script>"));
    }
}
