//! DKIM signing (RFC 6376, Ed25519 from RFC 8463) with ring, relaxed/relaxed.
//!
//! A [`DkimSigner`] holds one key and signs a formatted message: it hashes the
//! relaxed body, then the relaxed forms of the headers in [`SIGNED_HEADERS`]
//! that the message has, then its own header with an empty `b=`, and returns the
//! `DKIM-Signature` line to put on top. Several signers (dual signing, RSA and
//! Ed25519) each sign the message as it was before any signature was added.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_domain::config::DkimAlgorithm;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The headers herald signs, when the message has them (RFC 6376 section 5.4.1 and
/// RFC 8058 section 4, which asks that both List-Unsubscribe headers be signed).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The smallest RSA key herald signs with: RFC 8301 forbids shorter ones.
const MIN_RSA_BITS: usize = 1024;

/// Why a DKIM key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimKeyError {
    /// The key is neither PEM nor base64 DER.
    #[error("the DKIM key is neither PEM nor base64-encoded DER: {0}")]
    Encoding(String),
    /// The key does not parse as a key of the configured algorithm.
    #[error("the DKIM key is not a valid {algorithm} private key: {reason}")]
    Rejected {
        /// The configured algorithm.
        algorithm: &'static str,
        /// What ring said.
        reason: String,
    },
    /// The RSA key is shorter than RFC 8301 allows.
    #[error(
        "the DKIM RSA key has {bits} bits; at least {MIN_RSA_BITS} are required (2048 advised)"
    )]
    TooShort {
        /// The key's modulus length.
        bits: usize,
    },
    /// The domain or selector cannot go in a DKIM-Signature header.
    #[error("DKIM {what} {value:?} is not a DNS name")]
    BadName {
        /// `domain` or `selector`.
        what: &'static str,
        /// What was configured.
        value: String,
    },
}

/// Why a message could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DKIM signing failed: {0}")]
pub struct DkimSignError(String);

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One DKIM key, ready to sign: `d=`, `s=` and the private key.
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: Key,
    rng: SystemRandom,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm_tag())
            .finish_non_exhaustive()
    }
}

/// Whether `name` can stand as a DNS name in `d=` or `s=`.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The DER bytes of `text`: a PEM block, or base64 of the DER itself.
fn key_der(text: &str) -> Result<PrivateKeyDer<'static>, DkimKeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| DkimKeyError::Encoding(e.to_string()));
    }
    let compact: String = text.split_whitespace().collect();
    let der = STANDARD
        .decode(compact)
        .map_err(|e| DkimKeyError::Encoding(e.to_string()))?;
    // Bare DER is taken as PKCS#8, the form `openssl genpkey` writes.
    Ok(PrivateKeyDer::Pkcs8(der.into()))
}

impl DkimSigner {
    /// A signer for `domain` and `selector` with the private key `key_text` (PEM, PKCS#8
    /// or PKCS#1 for RSA, PKCS#8 for Ed25519; or base64 of the DER).
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        key_text: &str,
    ) -> Result<DkimSigner, DkimKeyError> {
        for (what, value) in [("domain", domain), ("selector", selector)] {
            if !is_dns_name(value) {
                return Err(DkimKeyError::BadName {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        let der = key_der(key_text)?;
        let rejected = |reason: String| DkimKeyError::Rejected {
            algorithm: algorithm.as_str(),
            reason,
        };
        let key = match algorithm {
            DkimAlgorithm::RsaSha256 => {
                let pair = match &der {
                    PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                    PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                    _ => return Err(rejected("not a PKCS#8 or PKCS#1 RSA key".into())),
                }
                .map_err(|e| rejected(e.to_string()))?;
                let bits = pair.public().modulus_len() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(DkimKeyError::TooShort { bits });
                }
                Key::Rsa(pair)
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let PrivateKeyDer::Pkcs8(k) = &der else {
                    return Err(rejected("an Ed25519 key must be PKCS#8".into()));
                };
                // `openssl genpkey -algorithm ed25519` writes PKCS#8 v1 (no public key),
                // which only the unchecked constructor accepts; it still derives the
                // public key from the seed.
                Key::Ed25519(
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                        .map_err(|e| rejected(e.to_string()))?,
                )
            }
        };
        Ok(DkimSigner {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_owned(),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The `p=` value of the DNS record `SELECTOR._domainkey.DOMAIN` that verifies this key.
    pub fn public_key_base64(&self) -> String {
        use ring::signature::KeyPair;
        match &self.key {
            // RSA: the SubjectPublicKeyInfo DER, as `openssl rsa -pubout` gives it.
            Key::Rsa(k) => STANDARD.encode(rsa_spki(k.public().as_ref())),
            // Ed25519: the raw 32 bytes (RFC 8463 section 4.2).
            Key::Ed25519(k) => STANDARD.encode(k.public_key().as_ref()),
        }
    }

    /// The whole DNS TXT record for this key.
    pub fn dns_record(&self) -> String {
        let k = match self.key {
            Key::Rsa(_) => "rsa",
            Key::Ed25519(_) => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_key_base64())
    }

    fn algorithm_tag(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256.as_str(),
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256.as_str(),
        }
    }

    /// The `DKIM-Signature: ...\r\n` line for `message` (headers, blank line, body, as
    /// sent), signed at `unix_time`.
    pub fn sign(&self, message: &[u8], unix_time: u64) -> Result<String, DkimSignError> {
        let (headers, body) = split_message(message);
        let body_hash = STANDARD.encode(digest(&SHA256, &relaxed_body(body)).as_ref());
        let fields = parse_headers(headers);
        // Each listed header the message has, once per occurrence (RFC 6376 section
        // 5.4.2 then takes them bottom-up).
        let names: Vec<&str> = SIGNED_HEADERS
            .iter()
            .flat_map(|name| {
                let n = fields
                    .iter()
                    .filter(|(f, _)| f.eq_ignore_ascii_case(name))
                    .count();
                std::iter::repeat_n(*name, n)
            })
            .collect();
        let value = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={unix_time}; h={};\r\n\tbh={body_hash};\r\n\tb=",
            self.algorithm_tag(),
            self.domain,
            self.selector,
            names.join(":"),
        );
        let data = signed_data(&fields, &names, value.as_bytes());
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut out = vec![0u8; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, &data, &mut out)
                    .map_err(|e| DkimSignError(e.to_string()))?;
                out
            }
            // RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the data.
            Key::Ed25519(k) => k.sign(digest(&SHA256, &data).as_ref()).as_ref().to_vec(),
        };
        Ok(format!(
            "DKIM-Signature: {value}{}\r\n",
            STANDARD.encode(signature)
        ))
    }
}

/// What is signed: the relaxed forms of the `names` headers, each occurrence taken
/// bottom-up, then the signature header's own value (`b=` empty, no final CRLF).
fn signed_data(fields: &[(String, &[u8])], names: &[&str], own_value: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(1024);
    let mut used = vec![false; fields.len()];
    for name in names {
        if let Some(i) = (0..fields.len())
            .rev()
            .find(|&i| !used[i] && fields[i].0.eq_ignore_ascii_case(name))
        {
            used[i] = true;
            data.extend_from_slice(&relaxed_header(name, fields[i].1));
        }
    }
    let own = relaxed_header("DKIM-Signature", own_value);
    data.extend_from_slice(&own[..own.len() - 2]);
    data
}

/// The headers and the body of a formatted message (split at the first empty line).
fn split_message(message: &[u8]) -> (&[u8], &[u8]) {
    if message.starts_with(b"\r\n") {
        return (&[], &message[2..]);
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 4..]),
        None => (message, &[]),
    }
}

/// Each header field as (name, raw value with its folds, without the final CRLF).
fn parse_headers(headers: &[u8]) -> Vec<(String, &[u8])> {
    let mut fields: Vec<(String, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < headers.len() {
        let end = headers[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(headers.len(), |p| i + p);
        let next = (end + 2).min(headers.len());
        // A line that starts with white space continues the field above it.
        let continues = headers.get(next).is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continues {
            let field = &headers[start..end];
            if let Some(colon) = field.iter().position(|b| *b == b':') {
                let name = String::from_utf8_lossy(&field[..colon]).trim().to_owned();
                fields.push((name, &field[colon + 1..]));
            }
            start = next;
        }
        i = next;
    }
    fields
}

/// RFC 6376 section 3.4.2: lower-case name, unfolded value, runs of white space as one
/// space, none around the colon or at the end; then CRLF.
fn relaxed_header(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    out.extend(name.trim().bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b':');
    let mut space = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            _ => {
                if space && out.last() != Some(&b':') {
                    out.push(b' ');
                }
                space = false;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// RFC 6376 section 3.4.4: white space at line ends dropped, runs of it as one space,
/// empty lines at the end dropped; a non-empty body ends with CRLF.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut blank_lines = 0usize;
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    // A body ending in CRLF yields a last empty piece that is not a line.
    let count = if body.ends_with(b"\n") {
        lines.len() - 1
    } else {
        lines.len()
    };
    for line in &lines[..count] {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canon = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    canon.push(b' ');
                }
                space = false;
                canon.push(b);
            }
        }
        if canon.is_empty() {
            blank_lines += 1;
            continue;
        }
        for _ in 0..blank_lines {
            out.extend_from_slice(b"\r\n");
        }
        blank_lines = 0;
        out.extend_from_slice(&canon);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The SubjectPublicKeyInfo DER around an RSAPublicKey (ring gives the inner one).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }.
    const RSA_ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8]; // no unused bits
    bit_string.extend_from_slice(rsa_public_key);
    let mut inner = RSA_ALGORITHM.to_vec();
    inner.extend(der_tlv(0x03, &bit_string));
    der_tlv(0x30, &inner)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_canonical_forms_follow_rfc_6376_examples() {
        // RFC 6376 section 3.4.5.
        assert_eq!(relaxed_header("A", b" X"), b"a:X\r\n");
        assert_eq!(relaxed_header("B ", b" Y\t\r\n\tZ  "), b"b:Y Z\r\n");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"x"), b"x\r\n");
    }

    #[test]
    fn folded_headers_are_one_field() {
        let h = b"From: a@x\r\nSubject: one\r\n two\r\nTo: b@y\r\n";
        let f = parse_headers(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].0, "Subject");
        assert_eq!(f[1].1, b" one\r\n two");
    }

    #[test]
    fn bad_keys_and_names_are_refused() {
        let e = DkimSigner::new("x.com", "s1", DkimAlgorithm::RsaSha256, "not a key").unwrap_err();
        assert!(matches!(e, DkimKeyError::Encoding(_)), "{e}");
        let e = DkimSigner::new("x.com", "s1", DkimAlgorithm::RsaSha256, "AAAA").unwrap_err();
        assert!(matches!(e, DkimKeyError::Rejected { .. }), "{e}");
        let e = DkimSigner::new("x com", "s1", DkimAlgorithm::RsaSha256, "AAAA").unwrap_err();
        assert!(matches!(e, DkimKeyError::BadName { .. }), "{e}");
    }
}
