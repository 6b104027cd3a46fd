//! Reading a received message back: unfolded headers and decoded MIME leaf parts.
//!
//! Enough of RFC 5322, 2045-2047 and 2046 for what lettre writes: folded headers,
//! RFC 2047 encoded words (UTF-8, `B` and `Q`), nested multiparts, and the
//! `quoted-printable`, `base64`, `7bit` and `8bit` transfer encodings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::smtp::ReceivedMail;

impl ReceivedMail {
    /// Every header as `(name, value)`, unfolded, encoded words decoded, in order.
    pub fn headers(&self) -> Vec<(String, String)> {
        parse_headers(split_head_body(&self.data).0)
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
        let mut parts = Vec::new();
        collect_parts(&self.data, &mut parts);
        parts
    }

    /// The decoded body of the first leaf part of media type `media_type`.
    pub fn part(&self, media_type: &str) -> Option<String> {
        self.mime_parts()
            .into_iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(media_type))
            .map(|(_, body)| body)
    }
}

/// Splits an entity at its first empty line.
fn split_head_body(entity: &[u8]) -> (&[u8], &[u8]) {
    // A part with no headers starts with the empty line itself.
    if let Some(body) = entity
        .strip_prefix(b"\r\n")
        .or_else(|| entity.strip_prefix(b"\n"))
    {
        return (&[], body);
    }
    let crlf = find(entity, b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = find(entity, b"\n\n").map(|i| (i, i + 2));
    let split = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match split {
        Some((head_end, body_start)) => (&entity[..head_end], &entity[body_start..]),
        None => (entity, &[]),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut raw: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            // Unfolding removes the line break and keeps the whitespace (RFC 5322 2.2.3).
            if let Some((_, value)) = raw.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            raw.push((name.trim().to_owned(), value.to_owned()));
        }
    }
    raw.into_iter()
        .map(|(name, value)| (name, decode_encoded_words(value.trim())))
        .collect()
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`), assuming UTF-8 or ASCII.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut pending_space = String::new();
    let mut previous_was_word = false;
    while !rest.is_empty() {
        let word_len = rest.find([' ', '\t']).unwrap_or(rest.len());
        let (token, tail) = rest.split_at(word_len);
        let space_len = tail.len() - tail.trim_start_matches([' ', '\t']).len();
        let (space, tail) = tail.split_at(space_len);
        match decode_encoded_word(token) {
            Some(decoded) => {
                // Whitespace between two encoded words is not part of the text.
                if !previous_was_word {
                    out.push_str(&pending_space);
                }
                out.push_str(&decoded);
                previous_was_word = true;
            }
            None => {
                out.push_str(&pending_space);
                out.push_str(token);
                previous_was_word = false;
            }
        }
        pending_space = space.to_owned();
        rest = tail;
    }
    out.push_str(&pending_space);
    out
}

fn decode_encoded_word(token: &str) -> Option<String> {
    let inner = token.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut fields = inner.splitn(3, '?');
    let _charset = fields.next()?;
    let encoding = fields.next()?;
    let text = fields.next()?;
    let bytes = match encoding {
        "B" | "b" => BASE64.decode(text).ok()?,
        "Q" | "q" => decode_quoted_printable(text.replace('_', " ").as_bytes()),
        _ => return None,
    };
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of a header parameter (`boundary`, `charset`) in a header value.
fn header_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|param| {
        let (key, val) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"').to_owned())
    })
}

fn collect_parts(entity: &[u8], parts: &mut Vec<(String, String)>) {
    let (head, body) = split_head_body(entity);
    let headers = parse_headers(head);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let content_type = get("Content-Type").unwrap_or("text/plain");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type.starts_with("multipart/")
        && let Some(boundary) = header_param(content_type, "boundary")
    {
        for part in split_multipart(body, &boundary) {
            collect_parts(part, parts);
        }
        return;
    }
    let encoding = get("Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let decoded = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            let compact: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            BASE64.decode(compact).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    };
    parts.push((media_type, String::from_utf8_lossy(&decoded).into_owned()));
}

/// The body parts between `--boundary` lines, without the line break that belongs to
/// the delimiter (RFC 2046 5.1.1).
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let line_end = body[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..line_end];
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if let Some(after) = trimmed.strip_prefix(delimiter.as_bytes()) {
            let closing = after.starts_with(b"--");
            if after.iter().all(u8::is_ascii_whitespace) || closing {
                if let Some(s) = start {
                    let mut part = &body[s..pos];
                    part = part.strip_suffix(b"\n").unwrap_or(part);
                    part = part.strip_suffix(b"\r").unwrap_or(part);
                    parts.push(part);
                }
                if closing {
                    return parts;
                }
                start = Some(line_end);
            }
        }
        pos = line_end;
    }
    parts
}

/// Decodes quoted-printable: `=XX` escapes and `=` soft line breaks.
fn decode_quoted_printable(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1..i + 3) {
            Some(b"\r\n") => i += 3,
            Some([b'\n', _]) => i += 2,
            Some([hi, lo]) => match (hex(*hi), hex(*lo)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            },
            _ => {
                // A trailing `=` (soft break at the very end) or `=\n` at the end.
                i = if input.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
            }
        }
    }
    out
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
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
    fn quoted_printable_edge_cases() {
        assert_eq!(decode_quoted_printable(b"a=3Db=3d"), b"a=b=".to_vec());
        assert_eq!(decode_quoted_printable(b"end="), b"end".to_vec());
        assert_eq!(decode_quoted_printable(b"x=ZZ"), b"x=ZZ".to_vec());
    }
}
