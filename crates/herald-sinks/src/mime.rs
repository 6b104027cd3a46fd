//! Reading a received message back: unfolded headers and decoded MIME leaf parts.
//!
//! The MIME is mail-parser's (RFC 5322, 2045-2047 and 2046: folded headers,
//! encoded words, nested multiparts, transfer encodings and charsets); this
//! module only shapes it for the tests' questions: headers as text, in order,
//! and leaf parts as `(media type, decoded text)`.

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};

use crate::smtp::ReceivedMail;

impl ReceivedMail {
    /// Every header as `(name, value)`, unfolded, encoded words decoded, in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        let Some(message) = parse(&self.data) else {
            return Vec::new();
        };
        let raw = message.raw_message();
        message
            .root_part()
            .headers
            .iter()
            .map(|h| {
                let value = match &h.value {
                    HeaderValue::Text(t) => t.trim().to_owned(),
                    // MIME headers are parsed into structures: give their text.
                    _ => unfold(&raw[h.offset_start as usize..h.offset_end as usize]),
                };
                (h.name.as_str().to_owned(), value)
            })
            .collect()
    }

    /// The first header called `name` (case-insensitive), unfolded and decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The leaf parts as `(media type, decoded body)`, depth first; a single-part
    /// message gives one entry. The media type is lower case, without parameters.
    pub fn mime_parts(&self) -> Vec<(String, String)> {
        let Some(message) = parse(&self.data) else {
            return Vec::new();
        };
        message
            .parts
            .iter()
            .filter(|p| !matches!(p.body, PartType::Multipart(_)))
            .map(|p| {
                let media = p.content_type().map_or_else(
                    || "text/plain".to_owned(),
                    |ct| match ct.subtype() {
                        Some(sub) => format!("{}/{sub}", ct.ctype()).to_ascii_lowercase(),
                        None => ct.ctype().to_ascii_lowercase(),
                    },
                );
                let text = match &p.body {
                    PartType::Text(t) | PartType::Html(t) => t.to_string(),
                    _ => String::from_utf8_lossy(p.contents()).into_owned(),
                };
                (media, text)
            })
            .collect()
    }

    /// The decoded body of the first leaf part of media type `media_type`.
    pub fn part(&self, media_type: &str) -> Option<String> {
        self.mime_parts()
            .into_iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(media_type))
            .map(|(_, body)| body)
    }
}

/// Parses with MIME headers typed (to find the parts) and every other header
/// as unstructured text (unfolded, encoded words decoded), addresses included.
fn parse(data: &[u8]) -> Option<Message<'_>> {
    MessageParser::new()
        .with_mime_headers()
        .default_header_text()
        .parse(data)
}

/// A raw header value on one line: folds joined, ends trimmed.
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(data: &str) -> ReceivedMail {
        ReceivedMail {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn headers_are_unfolded_case_insensitive_and_decoded() {
        let m = mail(
            "Subject: =?utf-8?b?SGVsbG8g?=\r\n =?utf-8?q?w=C3=B6rld?= again\r\n\
             list-unsubscribe:\r\n <https://x.test/u>\r\nX-Plain: a  b\r\n\r\nbody\r\n",
        );
        assert_eq!(m.header("subject").as_deref(), Some("Hello wörld again"));
        assert_eq!(
            m.header("List-Unsubscribe").as_deref(),
            Some("<https://x.test/u>")
        );
        assert_eq!(m.header("X-Plain").as_deref(), Some("a  b"));
        assert_eq!(m.header("Missing"), None);
    }

    #[test]
    fn multipart_alternative_with_qp_and_base64() {
        let m = mail(concat!(
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/alternative;\r\n boundary=\"BOUND\"\r\n",
            "\r\n",
            "preamble\r\n",
            "--BOUND\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n",
            "\r\n",
            "caf=C3=A9 and a very long line that was soft=\r\n broken\r\n",
            "--BOUND\r\n",
            "Content-Type: text/html; charset=utf-8\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "PHA+aGk8\r\nL3A+\r\n",
            "--BOUND--\r\n",
            "epilogue\r\n",
        ));
        assert_eq!(
            m.mime_parts(),
            vec![
                (
                    "text/plain".to_owned(),
                    "café and a very long line that was soft broken".to_owned()
                ),
                ("text/html".to_owned(), "<p>hi</p>".to_owned()),
            ]
        );
        assert_eq!(m.part("TEXT/HTML").as_deref(), Some("<p>hi</p>"));
    }

    #[test]
    fn nested_multipart_and_single_part() {
        let m = mail(concat!(
            "Content-Type: multipart/mixed; boundary=outer\r\n\r\n",
            "--outer\r\n",
            "Content-Type: multipart/alternative; boundary=inner\r\n\r\n",
            "--inner\r\n\r\nplain\r\n--inner\r\n",
            "Content-Type: text/html\r\n\r\n<b>x</b>\r\n--inner--\r\n",
            "--outer--\r\n",
        ));
        assert_eq!(
            m.mime_parts(),
            vec![
                ("text/plain".to_owned(), "plain".to_owned()),
                ("text/html".to_owned(), "<b>x</b>".to_owned()),
            ]
        );
        let single = mail("Subject: s\r\n\r\njust text\r\n");
        assert_eq!(
            single.mime_parts(),
            vec![("text/plain".to_owned(), "just text\r\n".to_owned())]
        );
    }

    #[test]
    fn a_latin1_part_and_a_content_type_header_read_as_text() {
        let m = mail(concat!(
            "Content-Type: text/plain;\r\n charset=iso-8859-1\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            "caf=E9\r\n",
        ));
        assert_eq!(m.part("text/plain").as_deref(), Some("café\r\n"));
        assert_eq!(
            m.header("content-type").as_deref(),
            Some("text/plain; charset=iso-8859-1")
        );
    }
}
