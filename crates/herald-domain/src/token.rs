//! Signed tracking tokens (SPEC section 4): HMAC-SHA256 with the tracking
//! secret over what the token names, so a forged or altered token is refused.
//!
//! Layout before base64url (no padding): kind (1 byte), message id (8 bytes,
//! big-endian), link index (2 bytes, clicks only), then the first 16 bytes of
//! the HMAC over everything before it. 128 bits of tag are plenty against
//! forgery and keep an open-pixel URL short (34 characters).
//!
//! Tokens are opaque: the message id is carried through a keyed permutation
//! (a four-round Feistel network over its 64 bits, rounds keyed by a key
//! derived from the secret), so consecutive messages' tokens share nothing
//! and a token tells nothing of sending volume or order. Opaque tokens have
//! an upper-case kind byte; tokens issued before them (lower-case kind, the
//! plain id) still verify, so links already in inboxes keep working. Either
//! way one HMAC check decides.
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
    /// The kind byte of an opaque token (the id permuted).
    fn opaque_byte(self) -> u8 {
        self.byte().to_ascii_uppercase()
    }
    /// The kind byte of a token with the plain id (issued before opaque tokens).
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

/// The kind byte of a link token with the plain id.
const LINK: u8 = b'l';
/// The kind byte of an opaque link token.
const OPAQUE_LINK: u8 = b'L';
/// Feistel rounds of the id permutation; four make a strong pseudorandom permutation.
const ROUNDS: u8 = 4;
/// What the permutation key is derived for (domain separation from tags).
const PERMUTATION_LABEL: &[u8] = b"herald token id permutation v1";

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: HmacSha256,
    /// Keys the rounds of the id permutation.
    perm: HmacSha256,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer for `secret` (any length; HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        let key = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        let mut derive = key.clone();
        derive.update(PERMUTATION_LABEL);
        let perm = HmacSha256::new_from_slice(&derive.finalize().into_bytes())
            .expect("HMAC accepts keys of any length");
        Self { key, perm }
    }

    /// Round `round` of the Feistel network on half `half`.
    fn round(&self, round: u8, half: u32) -> u32 {
        let mut mac = self.perm.clone();
        mac.update(&[round]);
        mac.update(&half.to_be_bytes());
        let out = mac.finalize().into_bytes();
        u32::from_be_bytes([out[0], out[1], out[2], out[3]])
    }

    /// The id as an opaque token carries it: a keyed permutation of its 64 bits.
    fn permute(&self, id: i64) -> [u8; 8] {
        let v = id as u64;
        let (mut l, mut r) = ((v >> 32) as u32, v as u32);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        ((u64::from(l) << 32) | u64::from(r)).to_be_bytes()
    }

    /// The id an opaque token carries.
    fn unpermute(&self, bytes: [u8; 8]) -> i64 {
        let v = u64::from_be_bytes(bytes);
        let (mut l, mut r) = ((v >> 32) as u32, v as u32);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        ((u64::from(l) << 32) | u64::from(r)) as i64
    }

    /// The message id in a token body's bytes 1..9, as its kind byte says it is carried.
    fn id_of(&self, body: &[u8], opaque: bool) -> Option<i64> {
        let bytes: [u8; 8] = body.get(1..9)?.try_into().ok()?;
        Some(if opaque {
            self.unpermute(bytes)
        } else {
            i64::from_be_bytes(bytes)
        })
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
        body.push(claims.kind.opaque_byte());
        body.extend_from_slice(&self.permute(claims.message_id));
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
        body.push(OPAQUE_LINK);
        body.extend_from_slice(&self.permute(message_id));
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
        let opaque = match body.first() {
            Some(&OPAQUE_LINK) => true,
            Some(&LINK) => false,
            _ => return None,
        };
        if body.len() < 11 {
            return None;
        }
        Some(LinkClaims {
            message_id: self.id_of(body, opaque)?,
            link: u16::from_be_bytes([body[9], body[10]]),
            url: String::from_utf8(body[11..].to_vec()).ok()?,
        })
    }

    /// The claims of a genuine token, or `None` for anything forged, altered or truncated.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let body = self.signed_body(&raw)?;
        let first = *body.first()?;
        let opaque = first.is_ascii_uppercase();
        let kind = TokenKind::from_byte(first.to_ascii_lowercase())?;
        if body.len() != if kind == TokenKind::Click { 11 } else { 9 } {
            return None;
        }
        let message_id = self.id_of(body, opaque)?;
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

    /// A token of the format issued before opaque tokens: kind, plain id, (link,) tag.
    fn old_format(s: &TokenSigner, kind: u8, id: i64, link: Option<u16>, url: &str) -> String {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        if let Some(l) = link {
            body.extend_from_slice(&l.to_be_bytes());
        }
        body.extend_from_slice(url.as_bytes());
        let tag = s.tag(&body);
        body.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(body)
    }

    #[test]
    fn tokens_issued_before_opaque_ones_still_verify() {
        let s = TokenSigner::new(b"secret");
        // `bwAAAAAAAAAG...`: message 6's open token as issued until now.
        let open = old_format(&s, b'o', 6, None, "");
        assert!(open.starts_with("bwAAAAAAAAAG"), "{open}");
        assert_eq!(
            s.verify(&open),
            Some(TokenClaims {
                kind: TokenKind::Open,
                message_id: 6,
                link: None
            })
        );
        let click = old_format(&s, b'c', 9, Some(2), "");
        assert_eq!(s.verify(&click).unwrap().link, Some(2));
        let unsub = old_format(&s, b'u', 1 << 40, None, "");
        assert_eq!(s.verify(&unsub).unwrap().message_id, 1 << 40);
        let link = old_format(&s, b'l', 7, Some(1), "https://a.example/x");
        assert_eq!(s.verify_link(&link).unwrap().message_id, 7);
        assert_eq!(s.verify_link(&link).unwrap().url, "https://a.example/x");
    }

    #[test]
    fn tokens_reveal_nothing_of_order_or_volume() {
        let s = TokenSigner::new(b"secret");
        let bits = |a: &str, b: &str| -> (u32, usize) {
            let (a, b) = (
                URL_SAFE_NO_PAD.decode(a).unwrap(),
                URL_SAFE_NO_PAD.decode(b).unwrap(),
            );
            assert_eq!(a.len(), b.len());
            let differ = a.iter().zip(&b).map(|(x, y)| (x ^ y).count_ones()).sum();
            (differ, a.len() * 8)
        };
        // Over consecutive messages, the id bytes alone and the whole token.
        let (mut id_differ, mut id_total, mut all_differ, mut all_total) = (0, 0, 0, 0);
        for id in 1..2000i64 {
            let (a, b) = (
                s.sign_message(TokenKind::Open, id),
                s.sign_message(TokenKind::Open, id + 1),
            );
            let (d, t) = bits(&a, &b);
            all_differ += d;
            all_total += t;
            let (pa, pb) = (s.permute(id), s.permute(id + 1));
            id_differ += pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| (x ^ y).count_ones())
                .sum::<u32>();
            id_total += 64;
            assert_eq!(s.verify(&a).unwrap().message_id, id);
        }
        let id_share = f64::from(id_differ) / f64::from(id_total);
        let all_share = f64::from(all_differ) / all_total as f64;
        assert!((0.45..0.55).contains(&id_share), "{id_share}");
        // The kind byte is the same in both: 8 of 200 bits.
        assert!((0.43..0.55).contains(&all_share), "{all_share}");
        // Still short: 34 characters for an open pixel.
        assert_eq!(s.sign_message(TokenKind::Open, 6).len(), 34);
        // And the permutation is one: every id comes back.
        for id in [0, 1, -1, i64::MAX, i64::MIN, 1 << 33] {
            assert_eq!(s.unpermute(s.permute(id)), id);
        }
        // Under another secret, the same id is carried differently.
        assert_ne!(TokenSigner::new(b"other").permute(6), s.permute(6));
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
