//! Requests refused before any handler runs, by what their head says:
//! - an HTTP/1.1 request without a `Host`, or with more than one: 400, as HTTP/1.1 asks
//!   of a server (RFC 9112, 3.2; HTTP/1.0 has no such rule);
//! - a body in a transfer coding other than `chunked` (`gzip, chunked`): 501, as a server
//!   that does not understand a coding should answer (RFC 9112, 6.1), rather than take
//!   the coded bytes for the body;
//! - a body chunked more than once (`chunked, chunked`, or the header twice), which no
//!   sender may send (RFC 9112, 6.1): 400, the connection closed, rather than read it as
//!   chunked once where a server on the way may have unchunked it twice and taken the
//!   rest for another request;
//! - a query that is not UTF-8 once percent-decoded (`?label=%FF`): 400, rather than
//!   its bytes replaced and the rest taken as meant (but on the tutorial's `/`, which
//!   reads no query, as the tutorial's app ignores it);
//! - an announced body over the limit: 413 (but imports, read a line at a time); a body
//!   without an announced length is refused by the visit as it reads it
//!   (`visit::read_body`).
//!
//! A plain tower layer, so that every request does not pay for a boxed middleware.

use std::task::{Context, Poll};

use axum::{
    extract::Request,
    http::{Version, header},
    response::{IntoResponse, Response},
};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::{ApiError, IMPORT_PATH, MAX_BODY_BYTES};

#[derive(Clone, Copy, Default)]
pub struct RefuseEarlyLayer;

impl<S> Layer<S> for RefuseEarlyLayer {
    type Service = RefuseEarly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseEarly { inner }
    }
}

#[derive(Clone)]
pub struct RefuseEarly<S> {
    inner: S,
}

impl<S> Service<Request> for RefuseEarly<S>
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
        if request.version() == Version::HTTP_11
            && request.headers().get_all(header::HOST).iter().count() != 1
        {
            let refused =
                ApiError::BadRequest("an HTTP/1.1 request needs one Host header".to_owned());
            return Either::Left(ready(Ok(refused.into_response())));
        }
        if let Some(query) = request.uri().query()
            && request.uri().path() != "/"
            && percent_encoding::percent_decode_str(query)
                .decode_utf8()
                .is_err()
        {
            let refused =
                ApiError::BadRequest("the query is not UTF-8 once percent-decoded".to_owned());
            return Either::Left(ready(Ok(refused.into_response())));
        }
        let codings = request.headers().get_all(header::TRANSFER_ENCODING);
        let mut chunked = 0;
        // Empty list elements (`chunked,,chunked`) are no codings (RFC 9110, 5.6.1).
        for coding in codings
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|coding| !coding.is_empty())
        {
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Either::Left(ready(Ok(ApiError::UnknownCoding.into_response())));
            }
            chunked += 1;
        }
        if chunked > 1 {
            return Either::Left(ready(Ok(ApiError::ChunkedTwice.into_response())));
        }
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
