//! The administrator's token (`--admin-token-file`), sent as `Authorization: Bearer
//! <token>`. Compared in constant time, so the time an answer takes tells nothing of how
//! much of a guess was right; never logged, never shown.

use axum::http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

pub struct AdminToken(SecretString);

impl AdminToken {
    pub fn new(token: SecretString) -> Self {
        Self(token)
    }

    /// Whether an `Authorization` header carries the token.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        // The scheme's name in any case (RFC 9110, 11.1), then the token.
        let Some(given) = authorization
            .map(HeaderValue::as_bytes)
            .and_then(|value| value.split_at_checked(7))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"Bearer "))
            .map(|(_, token)| token)
        else {
            return false;
        };
        let expected = self.0.expose_secret().as_bytes();
        // The length is not secret: the comparison of equal lengths is what must not leak.
        given.len() == expected.len() && bool::from(given.ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_allowed() {
        let token = AdminToken::new(SecretString::from("correct horse battery staple"));
        let header = |text: &str| HeaderValue::from_str(text).unwrap();

        assert!(token.allows(Some(&header("Bearer correct horse battery staple"))));
        assert!(token.allows(Some(&header("bearer correct horse battery staple"))));
        assert!(!token.allows(Some(&header("Bearer"))));
        assert!(!token.allows(Some(&header("Bearer correct horse battery stapl"))));
        assert!(!token.allows(Some(&header("Bearer correct horse battery staple "))));
        assert!(!token.allows(Some(&header("Basic correct horse battery staple"))));
        assert!(!token.allows(Some(&header("correct horse battery staple"))));
        assert!(!token.allows(None));
    }
}
