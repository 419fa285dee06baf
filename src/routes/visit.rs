//! `GET /`: count a visit. Plain text, exactly as the tutorial's app answers, unless the
//! client prefers HTML (a browser), which gets the page.

use axum::{
    extract::{Request, State},
    http::header,
    response::{IntoResponse, Response},
};

use super::ApiError;
use crate::{page, state::AppState};

// Takes the request rather than a `HeaderMap`, which would copy every header.
pub async fn visit(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let html = page::prefers_html(request.headers().get(header::ACCEPT));
    drop(request);
    let number = state
        .counter
        .visit()
        .await
        .map_err(|error| ApiError::Unavailable(error.reason()))?;
    let vary = [(header::VARY, "Accept")];
    if html {
        Ok((vary, page::render(number, &state.replica, &state.version)).into_response())
    } else {
        Ok((
            vary,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("Hello World! I have been seen {number} times.\n"),
        )
            .into_response())
    }
}

/// `HEAD /` answers like `GET /` would, but is not a visit: probes and link checkers
/// must not move the counter.
pub async fn head() -> impl IntoResponse {
    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")]
}
