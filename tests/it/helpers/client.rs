//! One typed client for the service. Calls that name a status assert it.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::limits::{allowed, deadlines};

#[derive(Clone)]
pub struct TestClient {
    pub base: String,
    http: reqwest::Client,
}

/// What a client got for one visit.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `None` when no HTTP answer came (connection refused or cut, timeout).
    pub status: Option<StatusCode>,
    /// The number in a 200's body.
    pub count: Option<i64>,
    pub body: String,
    /// The replica that answered (`X-Served-By`).
    pub served_by: Option<String>,
    /// When to try again (`Retry-After`), for a refusal that passes.
    pub retry_after: Option<String>,
}

impl Answer {
    /// A 200 with a number: an acknowledged visit.
    pub fn acknowledged(&self) -> Option<i64> {
        (self.status == Some(StatusCode::OK))
            .then_some(self.count)
            .flatten()
    }

    /// What the client got, in one line: the status and the body, or that nothing came.
    pub fn summary(&self) -> String {
        match self.status {
            Some(status) => format!("{} {}", status.as_u16(), self.body.trim_end()),
            None => "no answer".to_owned(),
        }
    }
}

impl TestClient {
    pub fn new(address: SocketAddr) -> Self {
        Self::with_base(format!("http://{address}"))
    }

    /// A client that waits for an answer as long as the service may take to give one
    /// with its default settings (its request timeout), on a loaded machine.
    pub fn with_base(base: String) -> Self {
        Self::with_timeout(base, allowed(deadlines(&[]).request))
    }

    pub fn with_timeout(base: String, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .expect("a client");
        Self { base, http }
    }

    /// A client that opens a connection per request and keeps none open, so that it
    /// holds none of the service's connection slots between requests.
    pub fn without_keep_alive(base: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(allowed(deadlines(&[]).request))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("a client");
        Self { base, http }
    }

    /// A request to build further (headers, body); sent through this client.
    pub fn request_builder(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(reqwest::Method::GET, path).await
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> Response {
        self.request_builder(method, path)
            .send()
            .await
            .expect("the service answers")
    }

    /// `GET /`, asserting 200, returning the number in the body.
    pub async fn visit(&self) -> i64 {
        let answer = self.try_visit().await;
        assert_eq!(
            answer.status,
            Some(StatusCode::OK),
            "GET / should succeed: {answer:?}"
        );
        answer
            .count
            .unwrap_or_else(|| panic!("unexpected body {:?}", answer.body))
    }

    /// `GET /`, whatever comes back.
    pub async fn try_visit(&self) -> Answer {
        self.try_visit_at("/").await
    }

    /// A visit of whatever counter `path` counts (`/`, `/c/{name}`), whatever the
    /// answer.
    pub async fn try_visit_at(&self, path: &str) -> Answer {
        match self
            .request_builder(reqwest::Method::GET, path)
            .send()
            .await
        {
            Err(_) => Answer {
                status: None,
                count: None,
                body: String::new(),
                served_by: None,
                retry_after: None,
            },
            Ok(response) => {
                let status = response.status();
                let header = |name: reqwest::header::HeaderName| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let served_by = header(reqwest::header::HeaderName::from_static("x-served-by"));
                let retry_after = header(reqwest::header::RETRY_AFTER);
                let body = response.text().await.unwrap_or_default();
                Answer {
                    status: Some(status),
                    count: parse_count(&body),
                    body,
                    served_by,
                    retry_after,
                }
            }
        }
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

    /// One sample from `/metrics` (`name` as it appears before the value, labels
    /// included); 0 when the series does not exist yet.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("a body");
        metric_in(&text, name)
    }

    /// Waits until `/readyz` answers 200, at most `limit`; panics with its last answer.
    pub async fn wait_ready(&self, limit: Duration) {
        super::wait_or_explain(
            "readiness",
            limit,
            || async { self.ready_status().await == StatusCode::OK },
            || async { format!("/readyz answered: {}", self.readiness().await) },
        )
        .await;
    }

    /// `/readyz`'s status and body, in one line.
    pub async fn readiness(&self) -> String {
        match self.http.get(format!("{}/readyz", self.base)).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                format!("{status} {}", response.text().await.unwrap_or_default())
            }
            Err(error) => format!("no answer ({error})"),
        }
    }

    pub async fn ready_status(&self) -> StatusCode {
        match self.http.get(format!("{}/readyz", self.base)).send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether `path` answers 200 promptly (a probe in a wait: it is asked again).
    pub async fn answers_ok(&self, path: &str) -> bool {
        self.http
            .get(format!("{}{path}", self.base))
            .timeout(allowed(Duration::from_millis(200)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// The value of one sample in a Prometheus text page; 0 when absent.
pub fn metric_in(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// An answer read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as it is on a new connection and reads until the service closes it (so
/// the request should say `Connection: close`). For requests no HTTP client would send;
/// the service may answer before it has read them whole, so a failed write is not an
/// error here.
pub async fn raw_exchange(address: SocketAddr, request: &[u8]) -> RawAnswer {
    let answer = raw_bytes(address, request, allowed(deadlines(&[]).request))
        .await
        .expect("the service closed the connection");
    parse_raw(&answer).unwrap_or_else(|| panic!("no complete answer: {answer:?}"))
}

/// Sends `request` and reads until the service closes the connection or `limit` passes
/// (then `None`).
pub async fn raw_bytes(address: SocketAddr, request: &[u8], limit: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the service accepts a connection");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        // A reset after the answer (the service closed with part of the request unread)
        // ends the read like a close does.
        while let Ok(n @ 1..) = stream.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// The first response in `text`, if it holds a complete head.
pub fn parse_raw(text: &str) -> Option<RawAnswer> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawAnswer {
        status,
        headers,
        body: body.to_owned(),
    })
}

pub fn parse_count(body: &str) -> Option<i64> {
    stackdemo::verify::parse_count(body)
}
