//! SMS length: GSM 03.38 (7-bit) or UCS-2 encoding and segment counting as
//! carriers bill it, the opt-out line a marketing SMS ends with, and the
//! length check `herald check` runs on SMS templates.

use herald_domain::token::TokenSigner;
use serde_json::Value;

use crate::error::RenderError;
use crate::helpers::LinkContext;
use crate::set::TemplateSet;

/// GSM-7 septets in a single-segment SMS.
pub const GSM7_SINGLE: usize = 160;
/// GSM-7 septets in each part of a multipart SMS (7 go to the UDH).
pub const GSM7_PART: usize = 153;
/// UTF-16 code units in a single-segment UCS-2 SMS.
pub const UCS2_SINGLE: usize = 70;
/// UTF-16 code units in each part of a multipart UCS-2 SMS.
pub const UCS2_PART: usize = 67;

/// The GSM 03.38 basic character set, less ESC: one septet each.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: ESC plus one septet each.
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Secret of the throwaway signer used for length checks (its tokens are never sent).
const CHECK_SECRET: &[u8] = b"herald-check";

/// How an SMS is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsEncoding {
    /// GSM 03.38 7-bit default alphabet.
    Gsm7,
    /// UCS-2 (UTF-16 as carriers count it): any character outside GSM-7 forces it.
    Ucs2,
}

/// The size of an SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SmsCount {
    /// The encoding the whole message needs.
    pub encoding: SmsEncoding,
    /// Septets (GSM-7, extension characters count 2) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Segments billed; 0 for an empty text.
    pub segments: usize,
}

/// Septets a character takes in GSM-7, or `None` if GSM-7 cannot carry it.
pub fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Encoding, units and segments of `text`.
///
/// Parts are packed as phones do: an extension character's escape pair or a
/// UTF-16 surrogate pair is never split, so a part may hold one unit less.
pub fn sms_segments(text: &str) -> SmsCount {
    let gsm_units: Option<usize> = text.chars().map(gsm7_septets).sum();
    match gsm_units {
        Some(units) => SmsCount {
            encoding: SmsEncoding::Gsm7,
            units,
            segments: segments(
                text.chars().filter_map(gsm7_septets),
                units,
                GSM7_SINGLE,
                GSM7_PART,
            ),
        },
        None => {
            let units = text.chars().map(char::len_utf16).sum();
            SmsCount {
                encoding: SmsEncoding::Ucs2,
                units,
                segments: segments(
                    text.chars().map(char::len_utf16),
                    units,
                    UCS2_SINGLE,
                    UCS2_PART,
                ),
            }
        }
    }
}

/// Segments for characters of the given unit costs, never splitting one character.
fn segments(costs: impl Iterator<Item = usize>, total: usize, single: usize, part: usize) -> usize {
    if total == 0 {
        return 0;
    }
    if total <= single {
        return 1;
    }
    let mut count = 1;
    let mut used = 0;
    for cost in costs {
        if used + cost > part {
            count += 1;
            used = 0;
        }
        used += cost;
    }
    count
}

/// The SMS as sent: `body` without trailing whitespace, then the opt-out line on a line of its own.
///
/// A newline costs the same one unit as a space and reads better on a phone.
/// A body that already ends with the opt-out line does not get it twice.
pub fn compose_sms(body: &str, opt_out_line: Option<&str>) -> String {
    let body = body.trim_end();
    match opt_out_line.map(str::trim).filter(|l| !l.is_empty()) {
        None => body.to_owned(),
        Some(line) if body.ends_with(line) => body.to_owned(),
        Some(line) if body.is_empty() => line.to_owned(),
        Some(line) => format!("{body}\n{line}"),
    }
}

/// The length `herald check` judges an SMS template by: rendered against
/// `sample`, with the opt-out line, and every `track` link at the full length
/// of a short link (`public_url` + `/s/` + 8 characters).
///
/// Compare `segments` with the channel's `max_segments`. The estimate is as
/// long as the sample's values: pick a sample with realistic lengths.
pub fn check_sms_template_length(
    set: &TemplateSet,
    name: &str,
    locale: Option<&str>,
    sample: &Value,
    opt_out_line: Option<&str>,
    public_url: &str,
) -> Result<SmsCount, RenderError> {
    // A real short link is exactly as long as the one a render makes.
    let links = LinkContext {
        message_id: 0,
        public_url: public_url.to_owned(),
        signer: TokenSigner::new(CHECK_SECRET),
        short_links: true,
    };
    let rendered = set.render(name, locale, sample, Some(&links))?;
    Ok(sms_segments(&compose_sms(&rendered.text, opt_out_line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(text: &str) -> (SmsEncoding, usize, usize) {
        let c = sms_segments(text);
        (c.encoding, c.units, c.segments)
    }

    #[test]
    fn the_gsm7_basic_table_has_127_characters() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
    }

    #[test]
    fn gsm7_limits_are_160_then_153() {
        use SmsEncoding::Gsm7;
        assert_eq!(count(""), (Gsm7, 0, 0));
        assert_eq!(count("Hi Ann"), (Gsm7, 6, 1));
        assert_eq!(count(&"a".repeat(160)), (Gsm7, 160, 1));
        assert_eq!(count(&"a".repeat(161)), (Gsm7, 161, 2));
        assert_eq!(count(&"a".repeat(306)), (Gsm7, 306, 2));
        assert_eq!(count(&"a".repeat(307)), (Gsm7, 307, 3));
        assert_eq!(count("Café £5 @ 10:00, ÄÖÜ ¿¡ ΔΩ"), (Gsm7, 26, 1));
    }

    #[test]
    fn extension_characters_count_two_and_stay_whole() {
        use SmsEncoding::Gsm7;
        assert_eq!(count("€5"), (Gsm7, 3, 1));
        assert_eq!(count("{[~]}|\\^\u{0C}"), (Gsm7, 18, 1));
        assert_eq!(count(&"€".repeat(80)), (Gsm7, 160, 1));
        assert_eq!(count(&format!("{}€", "a".repeat(159))), (Gsm7, 161, 2));
        // 152 septets then a euro: the escape pair may not straddle the parts.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(count(&text), (Gsm7, 306, 3));
    }

    #[test]
    fn one_non_gsm_character_makes_the_whole_sms_ucs2() {
        use SmsEncoding::Ucs2;
        assert_eq!(count("回TD退订"), (Ucs2, 5, 1));
        assert_eq!(count(&format!("{}回TD退订", "a".repeat(65))), (Ucs2, 70, 1));
        assert_eq!(count(&format!("{}回TD退订", "a".repeat(66))), (Ucs2, 71, 2));
        assert_eq!(count(&"回".repeat(70)), (Ucs2, 70, 1));
        assert_eq!(count(&"回".repeat(71)), (Ucs2, 71, 2));
        assert_eq!(count(&"回".repeat(134)), (Ucs2, 134, 2));
        assert_eq!(count(&"回".repeat(135)), (Ucs2, 135, 3));
        assert_eq!(count("ç"), (Ucs2, 1, 1));
    }

    #[test]
    fn emoji_take_two_code_units_and_are_not_split() {
        use SmsEncoding::Ucs2;
        assert_eq!(count("Hi 👋"), (Ucs2, 5, 1));
        assert_eq!(count(&"👋".repeat(35)), (Ucs2, 70, 1));
        assert_eq!(count(&"👋".repeat(36)), (Ucs2, 72, 2));
        // 66 units then an emoji: the pair moves whole to the second part.
        assert_eq!(
            count(&format!("{}👋{}", "a".repeat(66), "a".repeat(66))),
            (Ucs2, 134, 3)
        );
    }

    #[test]
    fn the_opt_out_line_goes_on_its_own_line_once() {
        assert_eq!(
            compose_sms("Hi Ann\n", Some("Reply STOP to opt out")),
            "Hi Ann\nReply STOP to opt out"
        );
        assert_eq!(compose_sms("Hi Ann", None), "Hi Ann");
        assert_eq!(compose_sms("Hi Ann ", Some("  ")), "Hi Ann");
        assert_eq!(
            compose_sms("Hi\n回TD退订", Some("回TD退订")),
            "Hi\n回TD退订"
        );
        assert_eq!(compose_sms("", Some("STOP")), "STOP");
        let sms = compose_sms("Sale today", Some("回TD退订"));
        assert_eq!(count(&sms), (SmsEncoding::Ucs2, 16, 1));
    }

    #[test]
    fn the_template_check_counts_opt_out_line_and_full_short_links() {
        let set = TemplateSet::from_strings(&[(
            "d.sms.hbs",
            "{{contact.attrs.first_name}}, 15% off: {{track \"https://shop.example.com/very/long/path?utm_source=sms\"}}\n",
        )])
        .unwrap();
        let sample = json!({"contact": {"attrs": {"first_name": "Ann"}}});
        let c = check_sms_template_length(
            &set,
            "d.sms.hbs",
            None,
            &sample,
            Some("Reply STOP to opt out"),
            "https://t.example.com",
        )
        .unwrap();
        let expected = "Ann, 15% off: https://t.example.com/s/12345678\nReply STOP to opt out";
        assert_eq!(c, sms_segments(expected));
        assert_eq!(c.encoding, SmsEncoding::Gsm7);

        let c = check_sms_template_length(
            &set,
            "d.sms.hbs",
            None,
            &sample,
            Some("回TD退订"),
            "https://t.example.com",
        )
        .unwrap();
        assert_eq!(c.encoding, SmsEncoding::Ucs2);
        assert_eq!(c.segments, 1);
        assert!(
            check_sms_template_length(
                &set,
                "d.sms.hbs",
                None,
                &json!({}),
                None,
                "https://t.example.com"
            )
            .is_err()
        );
    }
}
