//! Credentials: bearer, HTTP Basic and `X-LD-Signature` HMAC on the hook; a separate token on
//! read routes. Secrets are kept as SHA-256 digests (HMAC keys excepted) and compared in
//! constant time.

use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a secret; what is kept and compared.
pub type SecretDigest = [u8; 32];

/// Digest of a token or password.
pub fn digest(secret: &[u8]) -> SecretDigest {
    Sha256::digest(secret).into()
}

fn digest_eq(a: &SecretDigest, b: &SecretDigest) -> bool {
    a.ct_eq(b).into()
}

/// What the hook accepts.
pub struct HookAuth {
    pub token: SecretDigest,
    pub basic: Option<SecretDigest>,
    pub hmac_key: Option<SecretBox<Vec<u8>>>,
}

impl std::fmt::Debug for HookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookAuth")
            .field("token", &"[redacted]")
            .field("basic", &self.basic.map(|_| "[redacted]"))
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The outcome of checking the hook's `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderCredential {
    /// A configured bearer token or Basic credential matched.
    Valid,
    /// No `Authorization` header.
    Absent,
    /// An `Authorization` header that matches nothing configured.
    Invalid,
}

impl HookAuth {
    /// Builds the hook's credentials from configuration and the (possibly generated) token.
    pub fn new(
        token: SecretDigest,
        basic: Option<&SecretString>,
        secret: Option<&SecretString>,
    ) -> Self {
        Self {
            token,
            basic: basic.map(|b| digest(b.expose_secret().as_bytes())),
            hmac_key: secret
                .map(|s| SecretBox::new(Box::new(s.expose_secret().as_bytes().to_vec()))),
        }
    }

    /// Checks `Authorization: Bearer <token>` or `Authorization: Basic <user:password>`.
    pub fn check_header(&self, authorization: Option<&[u8]>) -> HeaderCredential {
        let Some(value) = authorization else {
            return HeaderCredential::Absent;
        };
        let value = trim(value);
        if let Some(token) = strip_scheme(value, b"bearer") {
            if digest_eq(&digest(trim(token)), &self.token) {
                return HeaderCredential::Valid;
            }
        } else if let (Some(encoded), Some(expected)) = (strip_scheme(value, b"basic"), &self.basic)
        {
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(trim(encoded)) {
                if digest_eq(&digest(&decoded), expected) {
                    return HeaderCredential::Valid;
                }
            }
        }
        HeaderCredential::Invalid
    }

    /// Whether a signature secret is configured.
    pub fn has_secret(&self) -> bool {
        self.hmac_key.is_some()
    }

    /// Verifies `X-LD-Signature` (hex HMAC-SHA256 of the raw body) in constant time.
    pub fn verify_signature(&self, signature: &[u8], body: &[u8]) -> bool {
        let Some(key) = &self.hmac_key else {
            return false;
        };
        let Ok(expected) = hex::decode(trim(signature)) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose_secret()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }
}

/// What read routes accept: `Authorization: Bearer <token>` or the bare token, as
/// LaunchDarkly's own API takes it.
pub struct ReadAuth {
    pub token: SecretDigest,
}

impl std::fmt::Debug for ReadAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadAuth { token: [redacted] }")
    }
}

impl ReadAuth {
    /// Whether the `Authorization` header carries the read token.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization.map(trim) else {
            return false;
        };
        let token = strip_scheme(value, b"bearer").map(trim).unwrap_or(value);
        digest_eq(&digest(token), &self.token)
    }
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let n = scheme.len();
    (value.len() > n && value[..n].eq_ignore_ascii_case(scheme) && value[n] == b' ')
        .then(|| &value[n + 1..])
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A new random token: `prefix` followed by 64 hex characters (256 bits).
pub fn generate_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> HookAuth {
        HookAuth::new(
            digest(b"tok"),
            Some(&SecretString::from("u:p".to_owned())),
            Some(&SecretString::from("k".to_owned())),
        )
    }

    #[test]
    fn header_credentials() {
        let a = auth();
        assert_eq!(a.check_header(Some(b"Bearer tok")), HeaderCredential::Valid);
        assert_eq!(a.check_header(Some(b"bearer tok")), HeaderCredential::Valid);
        assert_eq!(
            a.check_header(Some(b"Bearer tok2")),
            HeaderCredential::Invalid
        );
        assert_eq!(a.check_header(Some(b"tok")), HeaderCredential::Invalid);
        assert_eq!(a.check_header(Some(b"Basic dTpw")), HeaderCredential::Valid);
        assert_eq!(
            a.check_header(Some(b"Basic dTpx")),
            HeaderCredential::Invalid
        );
        assert_eq!(a.check_header(None), HeaderCredential::Absent);
    }

    #[test]
    fn signature() {
        let a = auth();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"{ }");
        let sig = hex::encode(mac.finalize().into_bytes());
        assert!(a.verify_signature(sig.as_bytes(), b"{ }"));
        assert!(!a.verify_signature(sig.as_bytes(), b"{}"));
        assert!(!a.verify_signature(b"zz", b"{ }"));
    }

    #[test]
    fn read_token_bare_or_bearer() {
        let r = ReadAuth {
            token: digest(b"rt"),
        };
        assert!(r.check(Some(b"rt")));
        assert!(r.check(Some(b"Bearer rt")));
        assert!(!r.check(Some(b"Bearer x")));
        assert!(!r.check(None));
    }
}
