//! Who sent a request, as far as counting cares: the client's address (the socket's, or
//! what a trusted proxy forwarded), the visitor it is for unique counts, and whether it
//! asked not to be counted.
//!
//! Not counting yourself: a browser that visited `/ignore-me` carries the cookie
//! `stackdemo_nocount=1`, and any counting request with `?count=0` (or `false`, `no`) is
//! answered without counting. Either way the answer shows the count as it stands. `HEAD`
//! never counts: it is answered as the `GET` with `?count=0` would be, without a body.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, Method, header},
};

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
    pub fn of(request: &Request, trusted: &TrustedProxies) -> Self {
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
            counts: request.method() != Method::HEAD
                && !asks_not_to_count(request.uri().query(), headers),
        }
    }
}

fn asks_not_to_count(query: Option<&str>, headers: &HeaderMap) -> bool {
    let by_query = query.is_some()
        && super::counters::query_pairs(query)
            .iter()
            .any(|(key, value)| crate::counters::declines_counting(key, value));
    by_query
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .any(|cookie| cookie.trim() == format!("{NOCOUNT_COOKIE}=1"))
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

        assert!(asks_not_to_count(Some("count=0"), &none));
        assert!(asks_not_to_count(Some("style=flat&count=false"), &none));
        assert!(
            asks_not_to_count(Some("count=%30"), &none),
            "percent-encoded, as a form may send it"
        );
        for written in ["count=FALSE", "count=Off", "count=No", "count=00"] {
            assert!(asks_not_to_count(Some(written), &none), "{written}");
        }
        assert!(asks_not_to_count(None, &cookie));
        assert!(!asks_not_to_count(None, &none));
        assert!(!asks_not_to_count(Some("count=1"), &none));
        assert!(!asks_not_to_count(Some("count="), &none));
        assert!(!asks_not_to_count(Some("count=10"), &none));
        assert!(!asks_not_to_count(Some("discount=0"), &none));
        assert!(!asks_not_to_count(None, &other_cookie));
    }
}
