//! The administrator's side: the token's file the service is given, and requests that
//! carry the token.

use reqwest::{Method, StatusCode, header};

use super::TestClient;

/// The administrator's token in every test that administers.
pub const TOKEN: &str = "an-administrator-token-of-some-length";

/// A file holding the administrator's token (as a Docker secret holds it, with a line
/// end); it must live as long as the service given its path.
pub fn token_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{TOKEN}\n")).unwrap();
    file
}

/// A request of the administrator's: with the token.
pub fn as_admin(client: &TestClient, method: Method, path: &str) -> reqwest::RequestBuilder {
    client
        .request_builder(method, path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

/// Sends an administrator's change: its status and what it said. The request is made at
/// once; the future borrows neither the client nor the path.
pub fn admin_change<B: Into<reqwest::Body>>(
    client: &TestClient,
    method: Method,
    path: &str,
    body: B,
) -> impl Future<Output = (StatusCode, String)> + use<B> {
    let request = as_admin(client, method, path).body(body);
    async move {
        let answer = request.send().await.unwrap();
        (answer.status(), answer.text().await.unwrap())
    }
}
