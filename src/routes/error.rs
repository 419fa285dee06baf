//! The one error type of the handlers. It tells the client a short, fixed reason and never
//! the internal cause, which the place that met it has already logged.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

#[derive(Debug)]
pub enum ApiError {
    /// The store cannot serve right now; the reason is one of a fixed set of phrases.
    Unavailable(&'static str),
    /// The request body is over the limit, announced or found while reading it.
    PayloadTooLarge,
    /// The request body could not be read: broken chunked encoding, or the client left.
    BadBody,
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
            ApiError::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n").into_response()
            }
            ApiError::BadBody => {
                (StatusCode::BAD_REQUEST, "Bad Request: unreadable body\n").into_response()
            }
        }
    }
}
