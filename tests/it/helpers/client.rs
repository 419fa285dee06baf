//! One typed client for the service. Calls that name a status assert it.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Response, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct TestClient {
    pub base: String,
    http: reqwest::Client,
}

impl TestClient {
    pub fn new(address: SocketAddr) -> Self {
        Self::with_base(format!("http://{address}"))
    }

    pub fn with_base(base: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("a client");
        Self { base, http }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the service answers")
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> Response {
        self.http
            .request(method, format!("{}{path}", self.base))
            .send()
            .await
            .expect("the service answers")
    }

    /// `GET /`, asserting 200, returning the number in the body.
    pub async fn visit(&self) -> u64 {
        let response = self.get("/").await;
        assert_eq!(response.status(), StatusCode::OK, "GET / should succeed");
        let body = response.text().await.expect("a body");
        parse_count(&body).unwrap_or_else(|| panic!("unexpected body {body:?}"))
    }

    /// `GET /` returning the status and, on success, the count.
    pub async fn try_visit(&self) -> (StatusCode, Option<u64>, String) {
        let response = self.get("/").await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        (status, parse_count(&body), body)
    }

    /// `GET /api/stats`, asserting 200.
    pub async fn stats(&self) -> Value {
        let response = self.get("/api/stats").await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET /api/stats should succeed"
        );
        response.json().await.expect("JSON")
    }

    /// The total as the service reports it (not a visit).
    pub async fn total(&self) -> u64 {
        self.stats().await["total"].as_u64().expect("a total")
    }

    /// One sample from `/metrics` (`name` as it appears before the value, labels
    /// included); 0 when the series does not exist yet.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("a body");
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map_or(0.0, |value| value.trim().parse().expect("a number"))
    }

    /// Waits until `/readyz` answers 200, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        super::wait_until("readiness", limit, || async {
            self.ready_status().await == StatusCode::OK
        })
        .await;
    }

    pub async fn ready_status(&self) -> StatusCode {
        match self.http.get(format!("{}/readyz", self.base)).send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Sends `request` as it is on a new connection and reads until the service closes it (so
/// the request should say `Connection: close`). Returns the status code and the body. For
/// requests no HTTP client would send; the service may answer before it has read them
/// whole, so a failed write is not an error here.
pub async fn raw_exchange(address: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the service accepts a connection");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        // A reset after the answer (the service closed with part of the request unread)
        // ends the read like a close does.
        while let Ok(n @ 1..) = stream.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the service did not close the connection");
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    (status, body.to_owned())
}

pub fn parse_count(body: &str) -> Option<u64> {
    stackdemo::verify::parse_count(body)
}
