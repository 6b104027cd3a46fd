//! Amazon SNS signatures (SES notifications reach herald through SNS): a
//! message is accepted only when
//!
//! - its `SigningCertURL` is `https` on a host matching
//!   `^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$`,
//! - that certificate chains to a trust root, is valid now, and names that host,
//! - its `Signature` verifies under the certificate's RSA key
//!   (`SignatureVersion` 1: SHA1withRSA, 2: SHA256withRSA) over the fields
//!   SNS signs, and
//! - its `TopicArn` is on the allow-list (`[tracking] sns_topic_arns`).
//!
//! A subscription confirmation passes the same checks before it is
//! confirmed (its `SubscribeURL` fetched). Certificates are fetched through
//! an injected [`CertFetcher`] and checked against injected trust roots, so
//! no test resolves an AWS host; fetched certificates are cached by URL.
//! Everything is ring's (through rustls-webpki for the chain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, ServerName,
    SignatureVerificationAlgorithm, TrustAnchor, UnixTime, alg_id,
};
use serde_json::Value;
use webpki::{EndEntityCert, KeyUsage};

use crate::state::AppState;

/// Fetched certificates kept at most (one per region in practice).
const MAX_CACHED_CERTS: usize = 64;

/// Fetches a signing certificate (PEM) and a subscription's confirm URL.
#[async_trait::async_trait]
pub trait CertFetcher: Send + Sync {
    /// The body at `url`, an https URL on an SNS host (already checked).
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String>;
}

/// How SNS messages are checked.
#[derive(Clone)]
pub struct SnsSettings {
    /// `TopicArn`s accepted; a message from any other topic is refused.
    pub topic_arns: Vec<String>,
    /// Fetches signing certificates and confirms subscriptions.
    pub fetcher: Arc<dyn CertFetcher>,
    /// Trust roots the signing certificate must chain to (in production
    /// the Mozilla roots; in tests a test CA's).
    pub roots: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for SnsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsSettings")
            .field("topic_arns", &self.topic_arns)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Why an SNS message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnsError {
    /// SES webhooks need `[tracking] sns_topic_arns`.
    #[error("SNS messages are refused: no topic is allowed ([tracking] sns_topic_arns)")]
    NotConfigured,
    /// Not an SNS envelope, or a field is missing.
    #[error("not a signed SNS message: {0}")]
    Malformed(&'static str),
    /// The topic is not on the allow-list.
    #[error(
        "SNS topic `{0}` is not allowed: add it to [tracking] sns_topic_arns to accept its messages"
    )]
    Topic(String),
    /// The certificate URL is not https on an SNS host.
    #[error("SNS signing certificate URL `{0}` is not https on an SNS host")]
    CertUrl(String),
    /// The certificate could not be fetched.
    #[error("fetching the SNS signing certificate failed: {0}")]
    Fetch(String),
    /// The certificate does not chain, has expired, or names another host.
    #[error("the SNS signing certificate is not trusted: {0}")]
    Untrusted(String),
    /// The signature does not verify.
    #[error("the SNS signature does not verify")]
    BadSignature,
}

/// Whether `host` is an SNS endpoint: `sns.REGION.amazonaws.com(.cn)`.
pub fn is_sns_host(host: &str) -> bool {
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let Some(region) = rest.and_then(|r| r.strip_prefix("sns.")) else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The host of `url` if it is `https://HOST/...` on an SNS host (no port, no user).
fn sns_url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    is_sns_host(host).then_some(host)
}

/// RSA PKCS#1 v1.5 with SHA-1 for webpki's signature check (SNS
/// `SignatureVersion` 1; webpki itself offers no SHA-1), through ring.
#[derive(Debug)]
struct RsaSha1;

impl SignatureVerificationAlgorithm for RsaSha1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        // Only used to match certificate signatures, which this never checks.
        alg_id::RSA_PKCS1_SHA256
    }
}

/// The text SNS signs: each present field's name and value, one per line, in this order.
fn string_to_sign(msg: &Value, kind: &str) -> Result<String, SnsError> {
    let fields: &[&str] = match kind {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        _ => return Err(SnsError::Malformed("unknown Type")),
    };
    let mut out = String::new();
    for f in fields {
        match msg.get(*f).and_then(Value::as_str) {
            Some(v) => {
                out.push_str(f);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            // Only a notification's subject is optional.
            None if *f == "Subject" => {}
            None => return Err(SnsError::Malformed("a signed field is missing")),
        }
    }
    Ok(out)
}

/// The DER certificates of a PEM text (or one DER certificate).
fn certificates(body: &[u8]) -> Vec<CertificateDer<'static>> {
    let Ok(text) = std::str::from_utf8(body) else {
        return vec![CertificateDer::from(body.to_vec())];
    };
    let mut out = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
            b64.clear();
        } else if line.starts_with("-----END CERTIFICATE") {
            inside = false;
            if let Ok(der) = STANDARD.decode(&b64) {
                out.push(CertificateDer::from(der));
            }
        } else if inside {
            b64.push_str(line);
        }
    }
    out
}

/// Certificates fetched so far, by URL.
#[derive(Default)]
pub(crate) struct CertCache {
    certs: Mutex<HashMap<String, Arc<Vec<CertificateDer<'static>>>>>,
}

impl CertCache {
    fn get(&self, url: &str) -> Option<Arc<Vec<CertificateDer<'static>>>> {
        self.certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(url)
            .cloned()
    }

    fn put(&self, url: &str, certs: Arc<Vec<CertificateDer<'static>>>) {
        let mut m = self
            .certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_CACHED_CERTS {
            m.clear();
        }
        m.insert(url.to_string(), certs);
    }
}

/// Checks an SNS message (see the module docs); a subscription confirmation
/// that passes is confirmed here. `Ok` means the handler may read it.
pub(crate) async fn verify(st: &AppState, body: &[u8]) -> Result<(), SnsError> {
    let Some(settings) = &st.inner.config.sns else {
        return Err(SnsError::NotConfigured);
    };
    let msg: Value = serde_json::from_slice(body).map_err(|_| SnsError::Malformed("not JSON"))?;
    let text = |f: &'static str| {
        msg.get(f)
            .and_then(Value::as_str)
            .ok_or(SnsError::Malformed(f))
    };
    let kind = text("Type")?;
    let topic = text("TopicArn")?;
    if !settings.topic_arns.iter().any(|t| t == topic) {
        return Err(SnsError::Topic(topic.to_string()));
    }
    let url = text("SigningCertURL")?;
    let host = sns_url_host(url).ok_or_else(|| SnsError::CertUrl(url.to_string()))?;
    let alg: &dyn SignatureVerificationAlgorithm = match text("SignatureVersion")? {
        "1" => &RsaSha1,
        "2" => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err(SnsError::Malformed("SignatureVersion")),
    };
    let signature = STANDARD
        .decode(text("Signature")?)
        .map_err(|_| SnsError::Malformed("Signature"))?;
    let signed = string_to_sign(&msg, kind)?;

    let certs = match st.inner.sns_certs.get(url) {
        Some(c) => c,
        None => {
            let body = settings.fetcher.fetch(url).await.map_err(SnsError::Fetch)?;
            let certs = Arc::new(certificates(&body));
            st.inner.sns_certs.put(url, certs.clone());
            certs
        }
    };
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| SnsError::Untrusted("no certificate at the URL".into()))?;
    let ee = EndEntityCert::try_from(leaf).map_err(|e| SnsError::Untrusted(e.to_string()))?;
    // Checked on every message, cached or not: a certificate expires.
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &settings.roots,
        intermediates,
        UnixTime::now(),
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| SnsError::Untrusted(e.to_string()))?;
    let name = ServerName::try_from(host).map_err(|e| SnsError::Untrusted(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| SnsError::Untrusted(e.to_string()))?;
    ee.verify_signature(alg, signed.as_bytes(), &signature)
        .map_err(|_| SnsError::BadSignature)?;

    if kind == "SubscriptionConfirmation" {
        let confirm = text("SubscribeURL")?;
        if sns_url_host(confirm).is_none() {
            return Err(SnsError::CertUrl(confirm.to_string()));
        }
        settings
            .fetcher
            .fetch(confirm)
            .await
            .map_err(SnsError::Fetch)?;
        tracing::info!(topic, "SNS subscription confirmed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_pass() {
        for ok in [
            "sns.us-east-1.amazonaws.com",
            "sns.cn-north-1.amazonaws.com.cn",
        ] {
            assert!(is_sns_host(ok), "{ok}");
        }
        for bad in [
            "sns.amazonaws.com",
            "sns.us-east-1.amazonaws.com.evil.example",
            "evil.example/sns.us-east-1.amazonaws.com",
            "xsns.us-east-1.amazonaws.com",
            "sns.US-EAST-1.amazonaws.com",
            "sns.us_east.amazonaws.com",
            "sns.a.b.amazonaws.com",
        ] {
            assert!(!is_sns_host(bad), "{bad}");
        }
        assert_eq!(
            sns_url_host("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem"),
            Some("sns.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            sns_url_host("http://sns.eu-west-1.amazonaws.com/x.pem"),
            None
        );
        assert_eq!(
            sns_url_host("https://sns.eu-west-1.amazonaws.com:8443/x.pem"),
            None
        );
        assert_eq!(
            sns_url_host("https://user@sns.eu-west-1.amazonaws.com/x.pem"),
            None
        );
    }

    #[test]
    fn the_signed_text_lists_the_fields_in_order() {
        let m = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "x", "Timestamp": "ts"});
        assert_eq!(
            string_to_sign(&m, "Notification").unwrap(),
            "Message\nx\nMessageId\nm\nTimestamp\nts\nTopicArn\nt\nType\nNotification\n"
        );
    }
}
