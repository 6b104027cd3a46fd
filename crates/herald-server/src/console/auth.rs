//! The console's sign-in machinery, pure and clock-free: session cookies
//! and CSRF tokens signed with a key derived from the tracking secret, the
//! constant-time password check, and the per-address limiter that slows
//! password guessing down.
//!
//! A session is a signed `(expiry, nonce)`; nothing is stored server-side
//! but the nonces of sessions signed out before they expire, so a copied
//! cookie stops working at sign-out.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;

/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3_600_000;
/// Wrong passwords from one address before answers are delayed.
pub const FREE_ATTEMPTS: u32 = 3;
/// The longest wait between attempts from one address.
pub const MAX_DELAY_MS: i64 = 15 * 60_000;
/// Addresses the limiter remembers; past it the stalest are forgotten.
const MAX_TRACKED: usize = 10_000;
/// What the session key is derived for (domain separation from link tokens).
const KEY_LABEL: &[u8] = b"herald console session key v1";

/// Signs and checks the console's cookies and CSRF tokens.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The key for the tracking secret `secret`: rotating the secret signs everyone out.
    pub fn derive(secret: &[u8]) -> Self {
        let outer = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&outer, KEY_LABEL);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn tag(&self, purpose: &[u8], body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&[purpose.len() as u8]);
        ctx.update(purpose);
        ctx.update(body);
        ctx.sign()
    }

    fn verify(&self, purpose: &[u8], body: &[u8], tag: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(1 + purpose.len() + body.len());
        msg.push(purpose.len() as u8);
        msg.extend_from_slice(purpose);
        msg.extend_from_slice(body);
        hmac::verify(&self.0, &msg, tag).is_ok()
    }

    /// A session cookie's value for `nonce`, expiring at `expires` (ms).
    pub fn session_cookie(&self, nonce: [u8; 16], expires: i64) -> String {
        let mut body = expires.to_be_bytes().to_vec();
        body.extend_from_slice(&nonce);
        let tag = self.tag(b"session", &body);
        format!("{}.{}", B64.encode(&body), B64.encode(tag.as_ref()))
    }

    /// The session a cookie value holds, if this key signed it and it has not expired at `now`.
    pub fn open_session(&self, value: &str, now: i64) -> Option<Session> {
        let (body, tag) = value.split_once('.')?;
        let body = B64.decode(body).ok()?;
        let tag = B64.decode(tag).ok()?;
        if body.len() != 24 || !self.verify(b"session", &body, &tag) {
            return None;
        }
        let expires = i64::from_be_bytes(body[..8].try_into().ok()?);
        let nonce: [u8; 16] = body[8..].try_into().ok()?;
        (expires > now).then_some(Session { nonce, expires })
    }

    /// The CSRF token of forms shown to the holder of `nonce` (a session, or
    /// the sign-in page's pre-session cookie).
    pub fn csrf(&self, nonce: &[u8; 16]) -> String {
        B64.encode(self.tag(b"csrf", nonce).as_ref())
    }

    /// Whether `token` is the CSRF token of `nonce`.
    pub fn csrf_ok(&self, nonce: &[u8; 16], token: &str) -> bool {
        B64.decode(token.trim())
            .is_ok_and(|t| self.verify(b"csrf", nonce, &t))
    }
}

/// A signed-in session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Its random id.
    pub nonce: [u8; 16],
    /// When it ends (ms).
    pub expires: i64,
}

/// The nonce of a pre-session cookie (the sign-in form's CSRF anchor).
pub fn pre_nonce(value: &str) -> Option<[u8; 16]> {
    B64.decode(value).ok()?.try_into().ok()
}

/// The pre-session cookie's value for `nonce`.
pub fn pre_value(nonce: &[u8; 16]) -> String {
    B64.encode(nonce)
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
pub fn password_ok(given: &str, expected: &str) -> bool {
    // Compare digests so the time does not depend on the lengths either.
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    let same = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    same && !expected.is_empty()
}

/// Wrong passwords per client address, and when the next attempt may come.
#[derive(Debug, Default)]
pub struct Limiter {
    seen: HashMap<IpAddr, (u32, i64)>,
}

impl Limiter {
    /// How long `addr` must still wait at `now` before trying again (0: go ahead).
    pub fn wait_ms(&self, addr: IpAddr, now: i64) -> i64 {
        match self.seen.get(&addr) {
            Some(&(fails, last)) => (last + delay_ms(fails) - now).max(0),
            None => 0,
        }
    }

    /// Records a wrong password from `addr` at `now`.
    pub fn failed(&mut self, addr: IpAddr, now: i64) {
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&addr) {
            // Forget those whose wait is long over, then the stalest.
            self.seen.retain(|_, (f, last)| *last + delay_ms(*f) > now);
            if self.seen.len() >= MAX_TRACKED
                && let Some(oldest) = self.seen.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k)
            {
                self.seen.remove(&oldest);
            }
        }
        let e = self.seen.entry(addr).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
    }

    /// Forgets `addr`'s failures (it signed in).
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.seen.remove(&addr);
    }
}

/// The wait after `fails` wrong passwords: none for the first few, then
/// doubling from one second up to [`MAX_DELAY_MS`].
pub fn delay_ms(fails: u32) -> i64 {
    if fails < FREE_ATTEMPTS {
        return 0;
    }
    let doublings = (fails - FREE_ATTEMPTS).min(20);
    (1_000i64 << doublings).min(MAX_DELAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_only_with_its_key_and_before_it_expires() {
        let k = SessionKey::derive(b"secret-one");
        let v = k.session_cookie([7; 16], 1_000);
        assert_eq!(
            k.open_session(&v, 999),
            Some(Session {
                nonce: [7; 16],
                expires: 1_000
            })
        );
        assert_eq!(k.open_session(&v, 1_000), None);
        assert_eq!(SessionKey::derive(b"secret-two").open_session(&v, 0), None);
        // A changed expiry breaks the signature.
        let other = k.session_cookie([7; 16], 9_999);
        let forged = format!(
            "{}.{}",
            other.split_once('.').unwrap().0,
            v.split_once('.').unwrap().1
        );
        assert_eq!(k.open_session(&forged, 0), None);
        assert_eq!(k.open_session("", 0), None);
        assert_eq!(k.open_session("a.b", 0), None);
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let k = SessionKey::derive(b"s");
        let t = k.csrf(&[1; 16]);
        assert!(k.csrf_ok(&[1; 16], &t));
        assert!(!k.csrf_ok(&[2; 16], &t));
        assert!(!k.csrf_ok(&[1; 16], ""));
        assert!(!SessionKey::derive(b"t").csrf_ok(&[1; 16], &t));
    }

    #[test]
    fn an_empty_password_never_matches() {
        assert!(password_ok("pw", "pw"));
        assert!(!password_ok("pw ", "pw"));
        assert!(!password_ok("", ""));
    }

    #[test]
    fn wrong_passwords_wait_longer_and_longer() {
        let mut l = Limiter::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..FREE_ATTEMPTS {
            assert_eq!(l.wait_ms(a, 0), 0);
            l.failed(a, 0);
        }
        assert_eq!(l.wait_ms(a, 0), 1_000);
        assert_eq!(l.wait_ms(b, 0), 0, "another address is not slowed");
        l.failed(a, 1_000);
        assert_eq!(l.wait_ms(a, 1_000), 2_000);
        assert_eq!(delay_ms(60), MAX_DELAY_MS);
        l.succeeded(a);
        assert_eq!(l.wait_ms(a, 1_000), 0);
    }
}
