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
        }
    }
}
