//! The one error type of the handlers. It tells the client a short, fixed reason and never
//! the internal cause, which the place that met it has already logged.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{counter::VisitError, store::StoreError};

/// What a 503 says of a visit whose write may have been applied anyway; `verify` and the
/// tests tell such answers from refusals by it.
pub const VISIT_IN_DOUBT: &str = "the visit may have been counted";

#[derive(Debug)]
pub enum ApiError {
    /// The store cannot serve right now; the reason is one of a fixed set of phrases.
    Unavailable(&'static str),
    /// As `Unavailable`, for a failure that lasts until an operator acts: no
    /// `Retry-After`, as trying again in a moment cannot help.
    AwaitsOperator(&'static str),
    /// As `Unavailable`, for a change whose write may have been applied anyway (its
    /// answer did not come back in time): the answer says that `outcome` may have
    /// happened, so that a client can tell it from a change certainly not made.
    InDoubt {
        reason: &'static str,
        outcome: &'static str,
    },
    /// The request body is over the limit, announced or found while reading it.
    PayloadTooLarge,
    /// The request body could not be read: broken chunked encoding, or the client left.
    BadBody,
    /// The request body is in a transfer coding other than `chunked`.
    UnknownCoding,
    /// The request body is chunked more than once, which no sender may do: where it ends
    /// is not certain (another server on the way may unchunk it twice).
    ChunkedTwice,
    /// The request body did not end by the time it had to for an answer in time.
    BodyTimedOut,
    /// The request cannot be served as sent; the reason says what to change.
    BadRequest(String),
    /// No such counter (or, for administration, administration is off).
    NotFound(&'static str),
    /// A new counter, and there are as many as allowed.
    TooManyCounters,
    /// The client has counted its allowance; it may count again after this long.
    RateLimited(Duration),
    /// An administrator's request without the administrator's token.
    Unauthorized,
    /// A counter's history, which is only read (`GET`, `HEAD`).
    MethodNotAllowed,
    /// An administrator's change the counter's current state rules out, so that trying
    /// again cannot help; the reason says what to do instead.
    Conflict(&'static str),
    /// An import that stopped at a line for a reason of the store's (507, 503): the
    /// status, and which line and how many counters came before it.
    ImportStopped(StatusCode, String),
}

impl ApiError {
    /// A store's failure to read, or to make a change that certainly was not made.
    pub fn store_failed(error: &StoreError) -> Self {
        if error.awaits_an_operator() {
            ApiError::AwaitsOperator(error.reason())
        } else {
            ApiError::Unavailable(error.reason())
        }
    }

    /// A store's failure to make a change: in doubt when its write may have been applied.
    pub fn change_failed(error: &StoreError, outcome: &'static str) -> Self {
        if error.in_doubt() {
            ApiError::InDoubt {
                reason: error.reason(),
                outcome,
            }
        } else {
            ApiError::store_failed(error)
        }
    }
}

impl From<VisitError> for ApiError {
    fn from(error: VisitError) -> Self {
        match error {
            VisitError::UnknownCounter => ApiError::NotFound("no such counter"),
            VisitError::TooManyCounters => ApiError::TooManyCounters,
            VisitError::Store(error) => ApiError::change_failed(&error, VISIT_IN_DOUBT),
            other => ApiError::Unavailable(other.reason()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                format!("Service Unavailable: {reason}\n"),
            )
                .into_response(),
            ApiError::AwaitsOperator(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Service Unavailable: {reason}\n"),
            )
                .into_response(),
            ApiError::InDoubt { reason, outcome } => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                format!("Service Unavailable: {reason}; {outcome}\n"),
            )
                .into_response(),
            // The rest of the body is not read, so the connection cannot carry another
            // request: said, so that a client does not send its next one on it.
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONNECTION, "close")],
                "Payload Too Large\n",
            )
                .into_response(),
            ApiError::BadBody => (
                StatusCode::BAD_REQUEST,
                [(header::CONNECTION, "close")],
                "Bad Request: unreadable body\n",
            )
                .into_response(),
            ApiError::ChunkedTwice => (
                StatusCode::BAD_REQUEST,
                [(header::CONNECTION, "close")],
                "Bad Request: a body may be chunked only once\n",
            )
                .into_response(),
            ApiError::UnknownCoding => (
                StatusCode::NOT_IMPLEMENTED,
                [(header::CONNECTION, "close")],
                "Not Implemented: a body's only transfer coding may be chunked\n",
            )
                .into_response(),
            ApiError::BodyTimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "Request Timeout: the body did not arrive in time\n",
            )
                .into_response(),
            ApiError::BadRequest(reason) => {
                (StatusCode::BAD_REQUEST, format!("Bad Request: {reason}\n")).into_response()
            }
            ApiError::NotFound(reason) => {
                (StatusCode::NOT_FOUND, format!("Not Found: {reason}\n")).into_response()
            }
            ApiError::TooManyCounters => (
                StatusCode::INSUFFICIENT_STORAGE,
                "Insufficient Storage: there are as many counters as allowed \
                 (STACKDEMO_MAX_COUNTERS); a new one is not made\n",
            )
                .into_response(),
            ApiError::RateLimited(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))],
                    "Too Many Requests: this client has counted as many visits as allowed \
                     for now; not counted\n",
                )
                    .into_response()
            }
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized: the administrator's token is needed\n",
            )
                .into_response(),
            ApiError::Conflict(reason) => {
                (StatusCode::CONFLICT, format!("Conflict: {reason}\n")).into_response()
            }
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, super::counters::HISTORY_METHODS)],
                "Method Not Allowed: a counter's history is only read\n",
            )
                .into_response(),
            ApiError::ImportStopped(status, reason) => {
                let mut response = (
                    status,
                    format!(
                        "{}: {reason}\n",
                        status.canonical_reason().unwrap_or("Error")
                    ),
                )
                    .into_response();
                // The rest of a body that stopped is not read: the connection cannot
                // take another request.
                if status == StatusCode::REQUEST_TIMEOUT {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        }
    }
}
