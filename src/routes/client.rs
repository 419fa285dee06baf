//! Who sent a request, as far as counting cares: the client's address (the socket's, or
//! what a trusted proxy forwarded), the visitor it is for unique counts, and whether it
//! asked not to be counted.
//!
//! Not counting yourself: a browser that visited `/ignore-me` carries the cookie
//! `stackdemo_nocount=1`, and any counting request with `?count=0` (or `false`, `no`,
//! `off`) is answered without counting. Either way the answer shows the count as it
//! stands. A `count=` that says neither yes nor no is refused with 400. `HEAD` never
//! counts: it is answered as the `GET` with `?count=0` would be, without a body. The
//! tutorial's `/` reads neither: it counts every visit, as it always has.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, Method, header},
};

use super::error::ApiError;
use crate::counters::visitor::{self, TrustedProxies};

/// The cookie that makes a browser's visits not counted.
pub const NOCOUNT_COOKIE: &str = "stackdemo_nocount";

#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub address: IpAddr,
    /// The visitor's hash before the day's salt (`counters::visitor::raw`).
    pub visitor: u64,
    /// False when the client asked not to be counted.
    pub counts: bool,
}

impl Client {
    /// The client of a request to a named counter or badge; refused when its `count=` is
    /// neither yes nor no.
    pub fn of(request: &Request, trusted: &TrustedProxies) -> Result<Self, ApiError> {
        let asks_not_to_count = asks_not_to_count(request.uri().query(), request.headers())?;
        Ok(Self {
            counts: request.method() != Method::HEAD && !asks_not_to_count,
            ..Self::of_tutorial_visit(request, trusted)
        })
    }

    /// The client of a visit to the tutorial's `/`, which counts every visit, as it always
    /// has: neither the flag nor the cookie is read.
    pub fn of_tutorial_visit(request: &Request, trusted: &TrustedProxies) -> Self {
        // The server puts the peer's address on every request; a router driven without a
        // socket (unit tests) has none.
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |info| info.0.ip());
        let headers = request.headers();
        let forwarded: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let address = trusted.client(peer, &forwarded);
        let user_agent = headers
            .get(header::USER_AGENT)
            .map_or(&b""[..], |value| value.as_bytes());
        Self {
            address,
            visitor: visitor::raw(address, user_agent),
            counts: true,
        }
    }
}

fn asks_not_to_count(query: Option<&str>, headers: &HeaderMap) -> Result<bool, ApiError> {
    let by_query = match super::counters::query_value(query, "count")? {
        None => false,
        Some(value) => match crate::counters::count_flag(&value) {
            Some(counts) => !counts,
            None => {
                return Err(ApiError::BadRequest(
                    "count= takes 0, false, no or off not to count the visit; \
                     1, true, yes or on to count it"
                        .into(),
                ));
            }
        },
    };
    Ok(by_query
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .any(|cookie| cookie.trim() == format!("{NOCOUNT_COOKIE}=1")))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_flag_and_the_cookie_say_not_to_count_and_nothing_else_does() {
        let none = HeaderMap::new();
        let mut cookie = HeaderMap::new();
        cookie.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; stackdemo_nocount=1"),
        );
        let mut other_cookie = HeaderMap::new();
        other_cookie.insert(
            header::COOKIE,
            HeaderValue::from_static("stackdemo_nocount=0"),
        );
        let declines = |query: Option<&str>, headers: &HeaderMap| {
            asks_not_to_count(query, headers).expect("a flag that says yes or no")
        };

        assert!(declines(Some("count=0"), &none));
        assert!(declines(Some("style=flat&count=false"), &none));
        assert!(
            declines(Some("count=%30"), &none),
            "percent-encoded, as a form may send it"
        );
        for written in ["count=FALSE", "count=Off", "count=No", "count=00"] {
            assert!(declines(Some(written), &none), "{written}");
        }
        assert!(declines(None, &cookie));
        assert!(declines(Some("count=1"), &cookie), "the cookie wins");
        assert!(!declines(None, &none));
        for written in [
            "count=1",
            "count=",
            "count",
            "count=10",
            "count=TRUE",
            "count=on",
        ] {
            assert!(!declines(Some(written), &none), "{written}");
        }
        assert!(!declines(Some("discount=0"), &none));
        assert!(!declines(None, &other_cookie));
    }

    #[test]
    fn a_flag_that_says_neither_yes_nor_no_or_is_given_twice_is_refused_not_guessed() {
        let none = HeaderMap::new();
        for written in [
            "count=flase",
            "count=maybe",
            "count=-1",
            "count=0x0",
            "count=1&count=nope",
            // Given twice, whatever the values: which one was meant cannot be known.
            "count=1&count=0",
            "count=0&count=0",
        ] {
            let refused = asks_not_to_count(Some(written), &none);
            assert!(
                matches!(refused, Err(ApiError::BadRequest(_))),
                "{written}: {refused:?}"
            );
        }
    }
}
