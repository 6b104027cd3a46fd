//! Signed tracking tokens (SPEC section 4): HMAC-SHA256 with the tracking
//! secret over what the token names, so a forged or altered token is refused.
//!
//! Layout before base64url (no padding): kind (1 byte), message id (8 bytes,
//! big-endian), link index (2 bytes, clicks only), then the first 16 bytes of
//! the HMAC over everything before it. 128 bits of tag are plenty against
//! forgery and keep an open-pixel URL short.
//!
//! A link token ([`TokenSigner::sign_link`], kind `l`) also carries its
//! destination: kind, message id, link index, the URL's bytes, then the tag.
//! The signature is what keeps `/c/` from being an open redirect, so the
//! URL needs no row of its own: sending a message with a tracked link writes
//! nothing for the link. Click tokens of kind `c` (before link tokens) still
//! verify; their URL is in the `links` table.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC kept in a token.
const TAG_LEN: usize = 16;

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `GET /o/{token}`: an open pixel.
    Open,
    /// `GET /c/{token}`: a click on link number `link` of the message.
    Click,
    /// `/u/{token}`: unsubscribe the message's contact.
    Unsubscribe,
    /// Provider callbacks (Twilio status, email webhooks, VERP bounces).
    Callback,
}

impl TokenKind {
    fn byte(self) -> u8 {
        match self {
            TokenKind::Open => b'o',
            TokenKind::Click => b'c',
            TokenKind::Unsubscribe => b'u',
            TokenKind::Callback => b'b',
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'o' => TokenKind::Open,
            b'c' => TokenKind::Click,
            b'u' => TokenKind::Unsubscribe,
            b'b' => TokenKind::Callback,
            _ => return None,
        })
    }
}

/// What a valid token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    /// What the token is for.
    pub kind: TokenKind,
    /// The message it belongs to.
    pub message_id: i64,
    /// For clicks, the link's index in the rendered message.
    pub link: Option<u16>,
}

/// What a genuine link token names: the message, the link's index in it, and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    /// The message the link was rendered into.
    pub message_id: i64,
    /// The link's index in that message.
    pub link: u16,
    /// The destination, exactly as the template gave it.
    pub url: String,
}

/// The kind byte of a link token.
const LINK: u8 = b'l';

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: HmacSha256,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer for `secret` (any length; HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.key.clone();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: TokenClaims) -> String {
        let mut body = Vec::with_capacity(1 + 8 + 2 + TAG_LEN);
        body.push(claims.kind.byte());
        body.extend_from_slice(&claims.message_id.to_be_bytes());
        if claims.kind == TokenKind::Click {
            body.extend_from_slice(&claims.link.unwrap_or(0).to_be_bytes());
        }
        let tag = self.tag(&body);
        body.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// Shorthand for a token of `kind` naming `message_id`.
    pub fn sign_message(&self, kind: TokenKind, message_id: i64) -> String {
        self.sign(TokenClaims {
            kind,
            message_id,
            link: None,
        })
    }

    /// What `raw` signs, if its last [`TAG_LEN`] bytes are the tag of the
    /// rest under this key (compared in constant time).
    fn signed_body<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        let (body, tag) = raw.split_at(raw.len().checked_sub(TAG_LEN)?);
        let mut mac = self.key.clone();
        mac.update(body);
        mac.verify_truncated_left(tag).ok()?;
        Some(body)
    }

    /// The click token of link `link` of `message_id`, carrying `url`.
    pub fn sign_link(&self, message_id: i64, link: u16, url: &str) -> String {
        let mut body = Vec::with_capacity(1 + 8 + 2 + url.len() + TAG_LEN);
        body.push(LINK);
        body.extend_from_slice(&message_id.to_be_bytes());
        body.extend_from_slice(&link.to_be_bytes());
        body.extend_from_slice(url.as_bytes());
        let tag = self.tag(&body);
        body.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The claims of a genuine link token, or `None` for anything else
    /// (forged, altered, truncated, or a token of another kind).
    pub fn verify_link(&self, token: &str) -> Option<LinkClaims> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let body = self.signed_body(&raw)?;
        if body.first() != Some(&LINK) || body.len() < 11 {
            return None;
        }
        Some(LinkClaims {
            message_id: i64::from_be_bytes(body[1..9].try_into().ok()?),
            link: u16::from_be_bytes([body[9], body[10]]),
            url: String::from_utf8(body[11..].to_vec()).ok()?,
        })
    }

    /// The claims of a genuine token, or `None` for anything forged, altered or truncated.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let body = self.signed_body(&raw)?;
        let kind = TokenKind::from_byte(*body.first()?)?;
        if body.len() != if kind == TokenKind::Click { 11 } else { 9 } {
            return None;
        }
        let message_id = i64::from_be_bytes(body[1..9].try_into().ok()?);
        let link = (kind == TokenKind::Click).then(|| u16::from_be_bytes([body[9], body[10]]));
        Some(TokenClaims {
            kind,
            message_id,
            link,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_and_names_its_message() {
        let s = TokenSigner::new(b"secret");
        let claims = TokenClaims {
            kind: TokenKind::Click,
            message_id: 42,
            link: Some(3),
        };
        let t = s.sign(claims);
        assert_eq!(s.verify(&t), Some(claims));
        let u = s.sign_message(TokenKind::Unsubscribe, 7);
        assert_eq!(s.verify(&u).unwrap().message_id, 7);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn a_link_token_carries_its_url_and_refuses_any_change() {
        let s = TokenSigner::new(b"secret");
        let url = "https://shop.example.com/new?utm_source=herald&q=ä";
        let t = s.sign_link(42, 3, url);
        let claims = s.verify_link(&t).unwrap();
        assert_eq!(
            claims,
            LinkClaims {
                message_id: 42,
                link: 3,
                url: url.into()
            }
        );
        // Not an old-style token, and no other token passes for one.
        assert!(s.verify(&t).is_none());
        assert!(
            s.verify_link(&s.sign_message(TokenKind::Open, 42))
                .is_none()
        );
        assert!(TokenSigner::new(b"other").verify_link(&t).is_none());
        assert!(s.verify_link(&t[..t.len() - 1]).is_none());
        // Another destination under the same tag: refused.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[12] ^= 1;
        assert!(s.verify_link(&URL_SAFE_NO_PAD.encode(&raw)).is_none());
    }

    #[test]
    fn forged_altered_or_truncated_tokens_are_refused() {
        let s = TokenSigner::new(b"secret");
        let t = s.sign_message(TokenKind::Open, 42);
        assert!(TokenSigner::new(b"other").verify(&t).is_none());
        assert!(s.verify(&t[..t.len() - 1]).is_none());
        assert!(s.verify("").is_none());
        // Flip one character of the message id.
        let mut chars: Vec<char> = t.chars().collect();
        chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
        let altered: String = chars.into_iter().collect();
        assert!(s.verify(&altered).is_none());
    }
}
