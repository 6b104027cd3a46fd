//! Signatures of email provider webhooks, checked before any event in them
//! is read (a layer in front of `crate::email`'s handler):
//!
//! - SendGrid's Signed Event Webhook: ECDSA P-256 with SHA-256 over the
//!   timestamp header followed by the raw body, verified with the public key
//!   from SendGrid's settings (`[tracking] sendgrid_verification_key_env`,
//!   base64 DER as SendGrid shows it). Without a key, events are accepted
//!   and `herald check` warns.
//! - Amazon SNS (SES notifications): see [`crate::sns`].
//!
//! A request whose signature is required and missing or wrong is answered
//! 403 and changes nothing. All cryptography is ring's.

use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

use crate::state::AppState;
use crate::{now_ms, plain};

/// SendGrid's signature header (base64 of an ASN.1 DER ECDSA signature).
pub const SENDGRID_SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
/// SendGrid's timestamp header (seconds since the epoch, as text).
pub const SENDGRID_TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";
/// A signed SendGrid request older (or newer) than this is a replay: refused.
pub const SENDGRID_MAX_SKEW_SECS: i64 = 600;
/// Webhook bodies larger than this are refused before any check (SendGrid
/// batches up to a few MB; SNS messages are at most 256 KB).
pub const MAX_WEBHOOK_BODY: usize = 8 << 20;

/// The DER prefix of a P-256 SubjectPublicKeyInfo before its 65-byte point:
/// SEQUENCE, SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (no unused bits).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed P-256 point: 0x04, then x and y.
const P256_POINT_LEN: usize = 65;

/// A SendGrid verification key that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the SendGrid verification key is not a base64 P-256 public key (copy it from SendGrid's Mail Settings, Signed Event Webhook)"
)]
pub struct BadSendgridKey;

/// The public point of a SendGrid verification key: base64 of a DER
/// SubjectPublicKeyInfo (as SendGrid shows it), or of the bare point.
pub fn sendgrid_key(base64_key: &str) -> Result<Vec<u8>, BadSendgridKey> {
    let der: String = base64_key.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(der).map_err(|_| BadSendgridKey)?;
    let point = match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(p) => p.to_vec(),
        None => der,
    };
    if point.len() != P256_POINT_LEN || point[0] != 0x04 {
        return Err(BadSendgridKey);
    }
    Ok(point)
}

/// Whether `signature` (base64 DER) is SendGrid's over `timestamp` and `body` under `key`.
pub fn verify_sendgrid(key: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(sig) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(&signed, &sig)
        .is_ok()
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn forbidden(why: &str) -> Response {
    tracing::warn!(why, "a webhook was refused for its signature");
    plain(StatusCode::FORBIDDEN, "forbidden")
}

/// Checks the signature of `POST /webhooks/email/{provider}` before the
/// handler sees the request; 403 when a required signature fails.
pub(crate) async fn require_signature(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    req: Request,
    next: Next,
) -> Response {
    let check_sendgrid = provider == "sendgrid" && st.inner.config.sendgrid_key.is_some();
    let check_sns = provider == "ses";
    if !check_sendgrid && !check_sns {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let req_head = Request::from_parts(parts, Body::empty());
    let body = match to_bytes(body, MAX_WEBHOOK_BODY).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large or too slow"),
    };
    if check_sendgrid {
        let key = st.inner.config.sendgrid_key.as_deref().unwrap_or_default();
        let (Some(sig), Some(ts)) = (
            header(&req_head, SENDGRID_SIGNATURE_HEADER),
            header(&req_head, SENDGRID_TIMESTAMP_HEADER),
        ) else {
            return forbidden("a SendGrid webhook without its signature headers");
        };
        let fresh = ts
            .trim()
            .parse::<i64>()
            .is_ok_and(|t| (now_ms() / 1000 - t).abs() <= SENDGRID_MAX_SKEW_SECS);
        if !fresh {
            return forbidden("a SendGrid webhook with a stale or unreadable timestamp");
        }
        if !verify_sendgrid(key, ts, &body, sig) {
            return forbidden("a SendGrid webhook with a wrong signature");
        }
    }
    if check_sns && let Err(why) = crate::sns::verify(&st, &body).await {
        return forbidden(&why.to_string());
    }
    let (parts, _) = req_head.into_parts();
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn sendgrid_signatures_verify_only_over_their_timestamp_and_body() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let spki = [&P256_SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
        let key = sendgrid_key(&STANDARD.encode(&spki)).unwrap();
        let body = br#"[{"event":"bounce"}]"#;
        let sig = pair
            .sign(&rng, &[b"1700000000".as_slice(), body].concat())
            .unwrap();
        let sig = STANDARD.encode(sig.as_ref());
        assert!(verify_sendgrid(&key, "1700000000", body, &sig));
        assert!(!verify_sendgrid(&key, "1700000001", body, &sig));
        assert!(!verify_sendgrid(&key, "1700000000", b"[]", &sig));
        assert!(!verify_sendgrid(&key, "1700000000", body, "AAAA"));
        assert!(sendgrid_key("not base64!").is_err());
        assert!(sendgrid_key(&STANDARD.encode([4u8; 10])).is_err());
    }
}
