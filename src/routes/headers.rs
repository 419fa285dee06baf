//! The headers every answer carries, whoever makes it: the router's handlers, and hyper
//! itself for a request it cannot parse (`server::connection` completes those answers).
//! One list, so that the two cannot drift apart.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

#[derive(Clone)]
pub struct ServiceHeaders(Arc<[(HeaderName, HeaderValue)]>);

impl ServiceHeaders {
    /// Who answered, which version, and that no answer may be cached (each visit is a new
    /// number): in the words browsers, caches and image proxies (GitHub's camo, which
    /// fetches a badge again only for `no-cache` or `max-age=0`) each heed.
    pub fn new(replica: &str, version: &str) -> Self {
        Self(Arc::new([
            (HeaderName::from_static("x-served-by"), value(replica)),
            (HeaderName::from_static("x-app-version"), value(version)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=0, no-cache, no-store, must-revalidate"),
            ),
        ]))
    }

    /// Sets every one on `headers`, replacing what a handler set.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.0.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// The header lines, each ending in CRLF, for answers written out by hand.
    pub fn http1_lines(&self) -> Arc<[u8]> {
        let mut lines = Vec::new();
        for (name, value) in self.0.iter() {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        lines.into()
    }
}

fn value(text: &str) -> HeaderValue {
    // Settings are checked to hold no control characters, so this cannot fail in practice.
    HeaderValue::from_bytes(text.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_written_by_hand_are_the_headers_the_router_sets() {
        let headers = ServiceHeaders::new("web.1", "v2");
        let mut map = HeaderMap::new();
        headers.apply(&mut map);

        let lines = String::from_utf8(headers.http1_lines().to_vec()).unwrap();

        let from_lines: Vec<(String, String)> = lines
            .split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let from_map: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(from_lines, from_map);
        assert!(lines.contains("x-served-by: web.1\r\n"));
    }
}
