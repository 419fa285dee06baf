//! Requests whose announced body is over the limit are refused before any handler runs
//! (but imports, read a line at a time);
//! a body without an announced length is refused by the visit as it reads it
//! (`visit::read_body`). A plain tower layer, so that every request does not pay for a
//! boxed middleware.

use std::task::{Context, Poll};

use axum::{
    extract::Request,
    http::header,
    response::{IntoResponse, Response},
};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::{ApiError, IMPORT_PATH, MAX_BODY_BYTES};

#[derive(Clone, Copy, Default)]
pub struct RefuseLargeBodiesLayer;

impl<S> Layer<S> for RefuseLargeBodiesLayer {
    type Service = RefuseLargeBodies<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseLargeBodies { inner }
    }
}

#[derive(Clone)]
pub struct RefuseLargeBodies<S> {
    inner: S,
}

impl<S> Service<Request> for RefuseLargeBodies<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64)
            && request.uri().path() != IMPORT_PATH
        {
            let mut refused = ApiError::PayloadTooLarge.into_response();
            // Refused before the routes' CORS layers: a page's script that sent it may
            // read why, as it may read the counter API's answers (the refusal says
            // nothing else).
            if request.headers().contains_key(header::ORIGIN) {
                refused.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    header::HeaderValue::from_static("*"),
                );
            }
            return Either::Left(ready(Ok(refused)));
        }
        Either::Right(self.inner.call(request))
    }
}
