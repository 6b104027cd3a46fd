//! The sender's part of `herald check`: what mailbox providers and carriers judge
//! before any template. DKIM keys must be readable; DKIM `d=` and the VERP
//! `bounce_domain` should align with the From domain (DMARC); List-Unsubscribe
//! needs an https `public_url` (RFC 8058); SMTP credentials never cross the
//! network in clear text unless `allow_plaintext_auth` says so.

use herald_channels::dkim::DkimSigner;
use herald_domain::config::{EmailProvider, HeraldConfig, TlsMode};

use crate::app::Secrets;

/// What the sender settings get wrong: errors refuse the config, warnings are printed.
#[derive(Debug, Default, PartialEq)]
pub struct SenderReport {
    /// Settings that would fail or leak at send time.
    pub errors: Vec<String>,
    /// Settings that work but hurt deliverability.
    pub warnings: Vec<String>,
}

/// Second-level labels that are registries rather than owners (`co.uk`, `com.cn`):
/// a domain under one of them is owned one label further down.
const REGISTRY_SECOND_LEVEL: &[&str] = &["co", "com", "net", "org", "gov", "edu", "ac", "ne", "or"];

/// The organizational domain of `domain`, as DMARC's relaxed alignment compares it:
/// the last two labels, or three under a country registry's `co.uk`-style label. An
/// approximation of the public suffix list that errs towards warning.
pub fn organizational_domain(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let n = labels.len();
    let keep =
        if n >= 3 && labels[n - 1].len() == 2 && REGISTRY_SECOND_LEVEL.contains(&labels[n - 2]) {
            3
        } else {
            2
        };
    labels[n.saturating_sub(keep)..].join(".")
}

/// Whether two domains align under DMARC's relaxed mode (same organizational domain).
pub fn aligned(a: &str, b: &str) -> bool {
    organizational_domain(a) == organizational_domain(b)
}

/// The domain of a From mailbox like `Shop <news@example.com>`.
fn from_domain(from: &str) -> Option<String> {
    let address = match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => &from[open + 1..close],
        _ => from,
    };
    address
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

/// Checks `[channels.email]` and `[tracking]` as a sender; `secrets` reads the environment.
pub fn check(config: &HeraldConfig, secrets: Secrets) -> SenderReport {
    let mut report = SenderReport::default();
    let email = &config.channels.email;
    let smtp = email.provider == EmailProvider::Smtp;
    let from = from_domain(&email.from);

    for key in email.dkim_keys() {
        let what = format!(
            "[channels.email] dkim (selector `{}`, d={})",
            key.selector, key.domain
        );
        match secrets(&key.key_env) {
            None => report.errors.push(format!(
                "{what}: the environment variable {} holding the private key is not set",
                key.key_env
            )),
            Some(text) => {
                if let Err(e) = DkimSigner::new(&key.domain, &key.selector, key.algorithm, &text) {
                    report.errors.push(format!(
                        "{what}: the key in {} is unusable: {e}",
                        key.key_env
                    ));
                }
            }
        }
        if let Some(from) = &from
            && !aligned(&key.domain, from)
        {
            report.warnings.push(format!(
                "{what}: d={} does not align with the From domain {from}; DMARC needs a DKIM signature of {from} (or its parent) to pass",
                key.domain
            ));
        }
    }
    if let (Some(bounce), Some(from)) = (&email.bounce_domain, &from)
        && !aligned(bounce, from)
    {
        report.warnings.push(format!(
            "[channels.email] bounce_domain = {bounce:?} does not align with the From domain {from}: SPF then cannot pass DMARC; use a subdomain of {from} such as bounces.{from}"
        ));
    }
    if smtp && !config.tracking.public_url.starts_with("https://") {
        report.warnings.push(format!(
            "[tracking] public_url = {:?} is not https: List-Unsubscribe one-click (RFC 8058) needs an https URL, so mailbox providers ignore herald's unsubscribe header",
            config.tracking.public_url
        ));
    }
    let has_credentials = email.username_env.is_some() || email.password_env.is_some();
    if smtp && has_credentials && email.tls == TlsMode::None && !email.allow_plaintext_auth {
        // The adapter refuses the same settings at start, in the same words.
        report.errors.push(format!(
            "[channels.email] {}",
            herald_channels::smtp::SmtpConfigError::PlaintextAuth
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = include_str!("../../herald-channels/tests/keys/ed25519.pem");

    fn config(src: &str) -> HeraldConfig {
        HeraldConfig::parse("herald.toml", src).unwrap()
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn organizational_domains_align_relaxed() {
        assert!(aligned("example.com", "news.example.com"));
        assert!(aligned("bounces.example.com", "example.com"));
        assert!(aligned("mail.shop.co.uk", "shop.co.uk"));
        assert!(!aligned("shop.co.uk", "other.co.uk"));
        assert!(!aligned("sendgrid.net", "example.com"));
        assert_eq!(
            from_domain("Shop <news@Example.com>").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            from_domain("news@example.com").as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn an_unreadable_dkim_key_is_refused() {
        let src = r#"[channels.email]
from = "Shop <news@example.com>"
dkim = { domain = "example.com", selector = "s1", key_env = "DKIM_KEY", algorithm = "ed25519-sha256" }
"#;
        let c = config(src);
        let missing = check(&c, &env(&[]));
        assert_eq!(missing.errors.len(), 1, "{missing:?}");
        assert!(missing.errors[0].contains("DKIM_KEY"), "{missing:?}");
        let garbage = check(
            &c,
            &env(&[(
                "DKIM_KEY",
                "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
            )]),
        );
        assert_eq!(garbage.errors.len(), 1, "{garbage:?}");
        assert!(garbage.errors[0].contains("unusable"), "{garbage:?}");
        let good = check(&c, &env(&[("DKIM_KEY", ED25519)]));
        assert_eq!(good, SenderReport::default());
    }

    #[test]
    fn misaligned_dkim_and_bounce_domains_are_warned_about() {
        let src = r#"[channels.email]
from = "Shop <news@example.com>"
bounce_domain = "bounces.esp-example.net"
dkim = [
  { domain = "example.com", selector = "s1", key_env = "DKIM_KEY", algorithm = "ed25519-sha256" },
  { domain = "esp-example.net", selector = "s2", key_env = "DKIM_KEY", algorithm = "ed25519-sha256" },
]
"#;
        let r = check(&config(src), &env(&[("DKIM_KEY", ED25519)]));
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.warnings.len(), 2, "{r:?}");
        assert!(r.warnings[0].contains("d=esp-example.net"), "{r:?}");
        assert!(r.warnings[1].contains("bounce_domain"), "{r:?}");
    }

    #[test]
    fn list_unsubscribe_needs_an_https_public_url() {
        let smtp = "[channels.email]\nprovider = \"smtp\"\n";
        let r = check(&config(smtp), &env(&[]));
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(r.warnings[0].contains("RFC 8058"), "{r:?}");
        let https = format!("{smtp}[tracking]\npublic_url = \"https://t.example.com\"\n");
        assert_eq!(check(&config(&https), &env(&[])), SenderReport::default());
    }

    #[test]
    fn plaintext_smtp_credentials_are_refused_unless_allowed() {
        let base = "[tracking]\npublic_url = \"https://t.example.com\"\n[channels.email]\nprovider = \"smtp\"\nusername_env = \"U\"\npassword_env = \"P\"\n";
        let r = check(&config(base), &env(&[]));
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("allow_plaintext_auth"), "{r:?}");
        let allowed = format!("{base}allow_plaintext_auth = true\n");
        assert_eq!(check(&config(&allowed), &env(&[])), SenderReport::default());
        let tls = format!("{base}tls = \"starttls\"\n");
        assert_eq!(check(&config(&tls), &env(&[])), SenderReport::default());
    }
}
