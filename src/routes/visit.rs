//! `GET /`: count a visit of the tutorial's counter. Plain text, exactly as the
//! tutorial's app answers, unless the client prefers HTML (a browser), which gets the
//! page. And `count`, the one way every route counts a visit.

use std::convert::Infallible;

use axum::{
    body::{Body, HttpBody},
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use http_body_util::LengthLimitError;
use tokio::time::Instant;

use super::{ApiError, MAX_BODY_BYTES, client::Client};
use crate::{
    counters::{CounterName, rate_limit::RateLimiter},
    delivery::{AnsweredBody, Counted, Handover},
    page,
    state::AppState,
};

/// `GET /`. Not under the request timeout layer: a visit whose body has not ended in time
/// to count it within the request timeout is refused before it joins a batch, and one that
/// has joined is answered within the visit bound (`deadlines`).
// Takes the request rather than a `HeaderMap`, which would copy every header.
pub async fn visit(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let html = page::prefers_html(request.headers().get(header::ACCEPT));
    let handover = request.extensions().get::<Handover>().cloned();
    let client = Client::of_tutorial_visit(&request, &state.counters.trusted_proxies);
    let rules = &state.counters;
    let counted = count(
        &state,
        rules.tutorial.clone(),
        &client,
        rules.tutorial_rate_limit.as_ref(),
        request.into_body(),
    )
    .await?;
    let number = counted.number();
    let text = if html {
        page::render(number, &state.replica, &state.version)
    } else {
        format!("Hello World! I have been seen {number} times.\n")
    };
    let mut response = Body::new(AnsweredBody::new(text, counted, handover)).into_response();
    set_kind(response.headers_mut(), html);
    Ok(response)
}

/// The headers that say which kind of answer `/` gave (the page or the tutorial's text),
/// the same for `GET` and `HEAD`.
fn set_kind(headers: &mut HeaderMap, html: bool) {
    const TEXT: [(HeaderName, &str); 1] = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    let kind: &[(HeaderName, &str)] = if html { &page::HEADERS } else { &TEXT };
    for (name, value) in kind {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
}

/// Counts a visit of a named counter, within the counters' rate limit (`count`); the
/// tutorial's counter, named, within the tutorial's limit as well, which no route escapes.
pub(super) async fn count_named(
    state: &AppState,
    counter: CounterName,
    client: &Client,
    body: Body,
) -> Result<Counted, ApiError> {
    if counter == state.counters.tutorial
        && let Some(limit) = &state.counters.tutorial_rate_limit
    {
        limit.check(client.address).map_err(ApiError::RateLimited)?;
    }
    count(
        state,
        counter,
        client,
        state.counters.rate_limit.as_ref(),
        body,
    )
    .await
}

/// Counts a visit of `counter` by `client`, within `limit`, once its body is read: the
/// visit's number, which its answer must carry (`delivery`).
pub(super) async fn count(
    state: &AppState,
    counter: CounterName,
    client: &Client,
    limit: Option<&RateLimiter>,
    body: Body,
) -> Result<Counted, ApiError> {
    let read_by = state.deadlines.body_read_by(Instant::now());
    if let Some(limit) = limit {
        limit.check(client.address).map_err(ApiError::RateLimited)?;
    }
    // No visit needs a body, but one over the limit must be refused with 413 and not
    // counted, also when it comes in chunks: the body limit layer refuses a too long
    // announced length on its own, a chunked body only when it is read.
    if !body.is_end_stream() {
        read_small_body(body, read_by).await?;
    }
    let counted = state.counter.visit(counter, client.visitor).await?;
    // A counted visit shows the store ready as well as a readiness probe does.
    state.was_ready.mark();
    Ok(counted)
}

/// A body of at most `MAX_BODY_BYTES`, announced or in chunks, ended by `read_by`: 413
/// when longer, 400 when it cannot be read, 408 when it has not ended in time.
pub(super) async fn read_small_body(
    body: Body,
    read_by: Instant,
) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout_at(read_by, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if over_the_limit(&error) => Err(ApiError::PayloadTooLarge),
        Ok(Err(_)) => Err(ApiError::BadBody),
        Err(_) => Err(ApiError::BodyTimedOut),
    }
}

/// Whether a body error is the length limit, which may sit under layers of wrapping.
fn over_the_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// `HEAD /` answers like `GET /` would, but is not a visit: probes and link checkers
/// must not move the counter. The length of a visit's answer depends on its number, so
/// none is given (an empty body would say `Content-Length: 0`).
pub async fn head(request: Request) -> Response {
    let html = page::prefers_html(request.headers().get(header::ACCEPT));
    let length_unknown = futures_util::stream::empty::<Result<axum::body::Bytes, Infallible>>();
    let mut response = Body::from_stream(length_unknown).into_response();
    set_kind(response.headers_mut(), html);
    response
}
