//! Reading bounce and complaint mail: a DSN (RFC 3464, a `multipart/report`
//! with a `message/delivery-status` part) or an ARF report (RFC 5965, with a
//! `message/feedback-report` part). MIME is mail-parser's (folding,
//! multipart boundaries, transfer encodings, charsets); the report part's
//! own fields (RFC 3464 section 2, RFC 5965 section 3) are read here.

use herald_storage::tracking::EmailFeedback;
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde_json::{Value, json};

/// How deep multiparts are followed (a report nested in a forward, at most).
const MAX_DEPTH: usize = 4;

/// What a received message reports.
#[derive(Debug, Clone, PartialEq)]
pub struct MailReport {
    /// The feedback it amounts to; `None` for mail that is no report (an auto-reply).
    pub feedback: Option<EmailFeedback>,
    /// The fields that said so, for the audit log.
    pub detail: Value,
}

/// Header fields, names lower-cased, folded lines joined.
fn parse_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The media types of the parts that carry a report.
const REPORT_TYPES: [&str; 3] = [
    "delivery-status",
    "global-delivery-status",
    "feedback-report",
];

/// A report part found in a message: its media type and decoded text.
/// mail-parser flattens multiparts and keeps enclosed messages (a report
/// forwarded as `message/rfc822`) as messages of their own, followed here
/// down to [`MAX_DEPTH`].
fn find_report(message: &Message<'_>, depth: usize) -> Option<(String, String)> {
    message.parts.iter().find_map(|part| {
        if let PartType::Message(inner) = &part.body {
            return (depth < MAX_DEPTH)
                .then(|| find_report(inner, depth + 1))
                .flatten();
        }
        let ct = part.content_type()?;
        let sub = ct.subtype()?.to_ascii_lowercase();
        (ct.ctype().eq_ignore_ascii_case("message") && REPORT_TYPES.contains(&sub.as_str())).then(
            || {
                (
                    format!("message/{sub}"),
                    String::from_utf8_lossy(part.contents()).into_owned(),
                )
            },
        )
    })
}

/// The groups of a delivery-status body: per-message fields, then one group per recipient.
fn groups(text: &str) -> Vec<Vec<(String, String)>> {
    let normalised = text.replace("\r\n", "\n");
    normalised
        .split("\n\n")
        .map(parse_fields)
        .filter(|g| !g.is_empty())
        .collect()
}

/// Reads a received message: a DSN's first recipient group with an `Action`
/// decides (failed with a 5.x.x status: hard; failed otherwise or delayed:
/// soft; delivered, relayed, expanded: delivered); an ARF report is a complaint.
pub fn read_report(raw: &[u8]) -> MailReport {
    let parsed = MessageParser::new().parse(raw);
    let found = parsed.as_ref().and_then(|m| find_report(m, 0));
    let Some((media, body)) = found else {
        return MailReport {
            feedback: None,
            detail: json!({ "source": "smtp", "subject": parsed.as_ref().and_then(Message::subject) }),
        };
    };
    if media == "message/feedback-report" {
        let fields = parse_fields(&body.replace("\r\n", "\n"));
        return MailReport {
            feedback: Some(EmailFeedback::Complaint),
            detail: json!({
                "source": "smtp",
                "report": "arf",
                "feedback_type": field(&fields, "feedback-type"),
                "user_agent": field(&fields, "user-agent"),
            }),
        };
    }
    let gs = groups(&body);
    let recipient = gs.iter().find(|g| field(g, "action").is_some());
    let Some(g) = recipient else {
        return MailReport {
            feedback: None,
            detail: json!({ "source": "smtp", "report": "dsn", "error": "no recipient with an Action" }),
        };
    };
    let action = field(g, "action").unwrap_or("").to_ascii_lowercase();
    let status = field(g, "status").map(|s| s.split_whitespace().next().unwrap_or("").to_string());
    let feedback = match action.as_str() {
        "failed" if status.as_deref().is_some_and(|s| s.starts_with('4')) => {
            EmailFeedback::SoftBounce
        }
        "failed" => EmailFeedback::HardBounce,
        "delayed" => EmailFeedback::SoftBounce,
        _ => EmailFeedback::Delivered,
    };
    MailReport {
        feedback: Some(feedback),
        detail: json!({
            "source": "smtp",
            "report": "dsn",
            "action": action,
            "status": status,
            "diagnostic": field(g, "diagnostic-code"),
            "final_recipient": field(g, "final-recipient"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DSN shaped like RFC 3464's appendix example, from Postfix.
    const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nTo: bounce+TOKEN@b.example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1/mx.example.net\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--B1/mx.example.net\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n--B1/mx.example.net\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\nArrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nFinal-Recipient: rfc822; ann@example.org\r\nOriginal-Recipient: rfc822;ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: Recipient address\r\n rejected: User unknown\r\n\r\n--B1/mx.example.net\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: 15% off\r\n\r\n--B1/mx.example.net--\r\n";

    #[test]
    fn a_dsn_with_a_5xx_failure_is_a_hard_bounce() {
        let r = read_report(DSN.as_bytes());
        assert_eq!(r.feedback, Some(EmailFeedback::HardBounce));
        assert_eq!(r.detail["status"], "5.1.1");
        assert!(
            r.detail["diagnostic"]
                .as_str()
                .unwrap()
                .contains("User unknown")
        );
    }

    #[test]
    fn a_delayed_or_4xx_dsn_is_soft() {
        let soft = DSN.replace("Status: 5.1.1", "Status: 4.2.2");
        assert_eq!(
            read_report(soft.as_bytes()).feedback,
            Some(EmailFeedback::SoftBounce)
        );
        let delayed = DSN.replace("Action: failed", "Action: delayed");
        assert_eq!(
            read_report(delayed.as_bytes()).feedback,
            Some(EmailFeedback::SoftBounce)
        );
    }

    #[test]
    fn an_arf_report_is_a_complaint() {
        let arf = "From: fbl@isp.example\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=xyz\r\n\r\n--xyz\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n--xyz\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n--xyz\r\nContent-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n--xyz--\r\n";
        let r = read_report(arf.as_bytes());
        assert_eq!(r.feedback, Some(EmailFeedback::Complaint));
        assert_eq!(r.detail["feedback_type"], "abuse");
    }

    #[test]
    fn a_base64_status_part_and_plain_mail() {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::STANDARD
            .encode("Reporting-MTA: dns; x\r\n\r\nAction: failed\r\nStatus: 5.0.0\r\n");
        let dsn = format!(
            "Content-Type: multipart/report; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n{enc}\r\n--q--\r\n"
        );
        assert_eq!(
            read_report(dsn.as_bytes()).feedback,
            Some(EmailFeedback::HardBounce)
        );
        let plain = "Subject: Out of office\r\n\r\nI am away.\r\n";
        assert_eq!(read_report(plain.as_bytes()).feedback, None);
    }

    #[test]
    fn a_quoted_printable_status_part_and_a_forwarded_report() {
        let dsn = "Content-Type: multipart/report; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nReporting-MTA: dns; x\r\n\r\nAction: fail=\r\ned\r\nStatus: 5.1=2E1\r\n--q--\r\n";
        let r = read_report(dsn.as_bytes());
        assert_eq!(r.feedback, Some(EmailFeedback::HardBounce));
        assert_eq!(r.detail["status"], "5.1.1");
        // An ARF report forwarded inside another message is still found.
        let forwarded = String::from(
            "Subject: Fwd: report\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\nFrom: fbl@isp.example\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=xyz\r\n\r\n--xyz\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n--xyz--\r\n\r\n--outer--\r\n",
        );
        assert_eq!(
            read_report(forwarded.as_bytes()).feedback,
            Some(EmailFeedback::Complaint)
        );
    }
}
