//! The UI's session: a cookie a person gets by giving the read token once. It is stateless
//! (several instances behind a load balancer all accept it): `EXPIRY.NONCE.MAC`, the MAC an
//! HMAC-SHA256 under a key derived from the read token's digest, so changing
//! `AUDITHOOK_API_TOKEN` ends every session. The CSRF token of a session is another MAC
//! over its nonce.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::SecretDigest;

pub const COOKIE: &str = "audithook_session";
/// How long a session lasts.
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// A valid session.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
}

fn mac(key: &SecretDigest, purpose: &str, text: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"audithook-ui\0");
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(text.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// A new session cookie value, valid from `now` (epoch seconds).
pub fn issue(key: &SecretDigest, now: i64) -> String {
    let body = format!("{}.{:032x}", now + LIFETIME_SECS, rand::random::<u128>());
    format!("{body}.{}", mac(key, "session", &body))
}

/// The session a cookie value carries, if it is valid and not expired at `now`.
pub fn check(key: &SecretDigest, value: &str, now: i64) -> Option<Session> {
    let (body, given) = value.rsplit_once('.')?;
    let (expiry, nonce) = body.split_once('.')?;
    let expiry: i64 = expiry.parse().ok()?;
    let want = mac(key, "session", body);
    let equal: bool = subtle::ConstantTimeEq::ct_eq(want.as_bytes(), given.as_bytes()).into();
    (equal && expiry > now).then(|| Session {
        csrf: mac(key, "csrf", nonce),
    })
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then_some(v)
        })
}

/// Whether `given` is the session's CSRF token.
pub fn csrf_ok(session: &Session, given: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(session.csrf.as_bytes(), given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_cannot_be_forged() {
        let key = crate::auth::digest(b"read-token");
        let v = issue(&key, 1000);
        let s = check(&key, &v, 1001).unwrap();
        assert_eq!(s.csrf.len(), 64);
        assert!(check(&key, &v, 1000 + LIFETIME_SECS).is_none());
        let other = crate::auth::digest(b"another-token");
        assert!(check(&other, &v, 1001).is_none());
        let tampered = v.replacen(&(1000 + LIFETIME_SECS).to_string(), "99999999999", 1);
        assert!(check(&key, &tampered, 1001).is_none());
        assert!(check(&key, "garbage", 1001).is_none());
        // Each session has its own CSRF token.
        let s2 = check(&key, &issue(&key, 1000), 1001).unwrap();
        assert_ne!(s.csrf, s2.csrf);
    }
}
