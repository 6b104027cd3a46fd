//! Text encodings of imported files. Import reads UTF-8; a file that starts
//! with a UTF-16 byte-order mark is read as UTF-16 and a UTF-8 BOM is
//! dropped, whatever `--encoding` says; `--encoding LABEL` (gbk, gb18030,
//! big5, shift_jis, euc-kr, utf-16...) decodes anything else, streamed,
//! through `encoding_rs` (the WHATWG Encoding Standard, as browsers decode).
//! When a file is not UTF-8 and no encoding was given, [`guess`] names the
//! likely one for the error message: Excel on a Chinese Windows machine
//! saves CSV as GBK.

use std::io::{self, BufRead, BufReader, Read};

pub use encoding_rs::Encoding;
use encoding_rs::{
    BIG5, CoderResult, Decoder, EUC_KR, GB18030, SHIFT_JIS, UTF_8, UTF_16BE, UTF_16LE,
};

/// Bytes of the file read and decoded at a time.
const CHUNK: usize = 1 << 16;

/// Bytes of the file's start [`guess`] looks at.
pub const SNIFF_BYTES: usize = 1 << 16;

/// Labels shown when an `--encoding` label is unknown.
pub const KNOWN_LABELS: &str = "utf-8, utf-16 (little-endian), utf-16be, gbk, gb18030, big5, shift_jis, euc-jp, euc-kr, windows-1252, iso-8859-1 (any WHATWG label)";

/// The encoding named by `label` (WHATWG labels, case-insensitive; `utf-16`
/// is little-endian, as Windows writes it).
pub fn encoding_for_label(label: &str) -> Result<&'static Encoding, String> {
    let l = label.trim().to_ascii_lowercase();
    let l = match l.as_str() {
        // Common spellings the WHATWG list does not have.
        "shift-jis" | "sjis" | "cp932" => "shift_jis",
        "cp936" => "gbk",
        "utf16" => "utf-16",
        "utf8" => "utf-8",
        other => other,
    };
    Encoding::for_label(l.as_bytes()).ok_or_else(|| {
        format!("unknown encoding `{label}`; known encodings include {KNOWN_LABELS}")
    })
}

/// A reader that decodes `inner` from an encoding to UTF-8 as it goes;
/// bytes that are not valid in the encoding become U+FFFD (a row holding one
/// is rejected by import, see [`REPLACEMENT`]).
pub struct DecodingReader<R> {
    inner: R,
    decoder: Decoder,
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    output: Vec<u8>,
    out_start: usize,
    out_end: usize,
    eof: bool,
    done: bool,
}

/// What a byte that is invalid in the file's encoding decodes to.
pub const REPLACEMENT: char = '\u{FFFD}';

impl<R: Read> DecodingReader<R> {
    /// Decodes `inner` with `decoder`.
    pub fn new(inner: R, decoder: Decoder) -> Self {
        Self {
            inner,
            decoder,
            input: vec![0; CHUNK],
            in_start: 0,
            in_end: 0,
            output: vec![0; CHUNK * 3 + 16],
            out_start: 0,
            out_end: 0,
            eof: false,
            done: false,
        }
    }
}

impl<R: Read> Read for DecodingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_start == self.out_end && !self.done {
            if self.in_start == self.in_end && !self.eof {
                let n = self.inner.read(&mut self.input)?;
                self.in_start = 0;
                self.in_end = n;
                self.eof = n == 0;
            }
            let (result, read, written, _) = self.decoder.decode_to_utf8(
                &self.input[self.in_start..self.in_end],
                &mut self.output,
                self.eof,
            );
            self.in_start += read;
            self.out_start = 0;
            self.out_end = written;
            if self.eof && result == CoderResult::InputEmpty {
                self.done = true;
            }
        }
        let n = buf.len().min(self.out_end - self.out_start);
        buf[..n].copy_from_slice(&self.output[self.out_start..self.out_start + n]);
        self.out_start += n;
        Ok(n)
    }
}

/// `file` as UTF-8 text: a UTF-16 BOM switches to UTF-16, a UTF-8 BOM is
/// dropped, otherwise `encoding` (if any and not UTF-8) decodes it; plain
/// UTF-8 is passed through untouched, so invalid bytes are still reported.
pub fn utf8_reader<R: Read + Send + 'static>(
    file: R,
    encoding: Option<&'static Encoding>,
) -> io::Result<Box<dyn Read + Send>> {
    let mut r = BufReader::with_capacity(CHUNK, file);
    let head = r.fill_buf()?;
    let bom = Encoding::for_bom(head);
    match (bom, encoding) {
        (Some((enc, _)), _) if enc == UTF_16LE || enc == UTF_16BE => {
            Ok(Box::new(DecodingReader::new(r, enc.new_decoder())))
        }
        (Some((_, len)), _) => {
            // A UTF-8 BOM: dropped, the rest read as UTF-8.
            r.consume(len);
            Ok(Box::new(r))
        }
        (None, Some(enc)) if enc != UTF_8 => {
            Ok(Box::new(DecodingReader::new(r, enc.new_decoder())))
        }
        (None, _) => Ok(Box::new(r)),
    }
}

/// Share (in thousandths) of the non-ASCII characters of `text` that `script` holds.
fn share(text: &str, script: impl Fn(char) -> bool) -> usize {
    let wide: Vec<char> = text.chars().filter(|c| !c.is_ascii()).collect();
    if wide.is_empty() {
        return 0;
    }
    wide.iter().filter(|c| script(**c)).count() * 1000 / wide.len()
}

/// Hiragana: in every Japanese sentence, and what GBK bytes never decode to as Shift_JIS.
fn hiragana(c: char) -> bool {
    ('\u{3041}'..='\u{309F}').contains(&c)
}

fn hangul(c: char) -> bool {
    ('\u{AC00}'..='\u{D7AF}').contains(&c)
}

/// Share of hiragana (in thousandths of the non-ASCII characters) that marks Japanese.
const JAPANESE_HIRAGANA: usize = 50;

/// Share of Hangul syllables that marks Korean.
const KOREAN_HANGUL: usize = 500;

/// The likely encoding of `bytes` (the start of a file that is not UTF-8), as
/// the `--encoding` label to suggest; `None` when it is UTF-8 or nothing fits.
/// Chinese, Japanese and Korean bytes often decode without error in each
/// other's encodings, so the script decides: Japanese has hiragana, Korean
/// Hangul; otherwise GBK (Big5 bytes decode as GBK too; GBK is by far the
/// more common).
pub fn guess(bytes: &[u8]) -> Option<&'static str> {
    if std::str::from_utf8(bytes).is_ok() {
        return None;
    }
    // A sample may end inside a character: leave the last few bytes out.
    let cut = bytes
        .len()
        .saturating_sub(if bytes.len() >= SNIFF_BYTES { 4 } else { 0 });
    let sample = &bytes[..cut];
    let clean =
        |enc: &'static Encoding| enc.decode_without_bom_handling_and_without_replacement(sample);
    if let Some(text) = clean(SHIFT_JIS)
        && share(&text, hiragana) >= JAPANESE_HIRAGANA
    {
        return Some("shift_jis");
    }
    if let Some(text) = clean(EUC_KR)
        && share(&text, hangul) >= KOREAN_HANGUL
    {
        return Some("euc-kr");
    }
    if clean(GB18030).is_some() {
        return Some("gbk");
    }
    if clean(BIG5).is_some() {
        return Some("big5");
    }
    None
}

/// The sentence that explains a file that is not UTF-8, naming the likely
/// encoding and the flag.
pub fn not_utf8_hint(start_of_file: &[u8]) -> String {
    match guess(start_of_file) {
        Some("gbk") => "the file is not UTF-8; it looks like GBK/GB18030 (what Excel saves on a Chinese Windows machine): import it with `--encoding gbk`".into(),
        Some(label) => format!(
            "the file is not UTF-8; it looks like {label}: import it with `--encoding {label}`"
        ),
        None => format!(
            "the file is not UTF-8: give its encoding with `--encoding LABEL` ({KNOWN_LABELS})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut dyn Read) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn gbk_decodes_with_the_flag_and_is_guessed_without_it() {
        let text = "external_id,city\nc1,广州\nc2,深圳市南山区\n";
        let (gbk, _, _) = encoding_rs::GBK.encode(text);
        let gbk = gbk.into_owned();
        assert!(std::str::from_utf8(&gbk).is_err());
        let enc = encoding_for_label("GBK").unwrap();
        let mut r = utf8_reader(io::Cursor::new(gbk.clone()), Some(enc)).unwrap();
        assert_eq!(read_all(&mut r), text);
        assert_eq!(guess(&gbk), Some("gbk"));
        assert!(not_utf8_hint(&gbk).contains("--encoding gbk"));
    }

    #[test]
    fn shift_jis_is_guessed() {
        let (sjis, _, _) = SHIFT_JIS.encode("external_id,name\nc1,こんにちは東京\n");
        assert_eq!(guess(&sjis), Some("shift_jis"));
    }

    #[test]
    fn boms_are_honoured_whatever_the_flag() {
        let mut utf16 = vec![0xFF, 0xFE];
        for u in "a,b\n1,广\n".encode_utf16() {
            utf16.extend(u.to_le_bytes());
        }
        let mut r = utf8_reader(io::Cursor::new(utf16), None).unwrap();
        assert_eq!(read_all(&mut r), "a,b\n1,广\n");
        let mut bom8 = vec![0xEF, 0xBB, 0xBF];
        bom8.extend("a,b\n".as_bytes());
        let mut r = utf8_reader(io::Cursor::new(bom8), Some(encoding_rs::GBK)).unwrap();
        assert_eq!(read_all(&mut r), "a,b\n");
    }

    #[test]
    fn a_long_input_decodes_across_chunks() {
        let line = "c1,深圳市南山区科技园\n";
        let text: String = std::iter::repeat_n(line, 20_000).collect();
        let (gbk, _, _) = encoding_rs::GBK.encode(&text);
        let mut r = utf8_reader(io::Cursor::new(gbk.into_owned()), Some(encoding_rs::GBK)).unwrap();
        assert_eq!(read_all(&mut r), text);
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(encoding_for_label("shift-jis").unwrap(), SHIFT_JIS);
        assert_eq!(encoding_for_label("utf-16").unwrap(), UTF_16LE);
        let e = encoding_for_label("klingon").unwrap_err();
        assert!(
            e.contains("unknown encoding `klingon`") && e.contains("gbk"),
            "{e}"
        );
    }
}
