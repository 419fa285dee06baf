//! `GET /badge/{name}.svg`: counts a visit of the counter and answers its badge; with
//! `?count=0` (or the not-counting cookie, see `client`) it shows the count without
//! counting. The headers make image proxies (GitHub's camo) fetch it every time.

use axum::{
    body::Body,
    extract::{Query, Request, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    ApiError,
    client::Client,
    counters::{CounterPath, parse_name, read},
    visit::count_named,
};
use crate::{
    badge::{Badge, BadgeQuery, Show},
    delivery::{AnsweredBody, Handover},
    state::AppState,
};

/// A badge is an image with no script: its text is escaped, and nothing it holds may run.
const BADGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'";

pub async fn badge(
    State(state): State<AppState>,
    CounterPath(path): CounterPath,
    query: Result<Query<BadgeQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::BadRequest(
            "the query takes label, color, labelColor, style, show, abbreviated and count, \
             each at most once"
                .into(),
        ));
    };
    let Some(name) = path.strip_suffix(".svg") else {
        return Err(ApiError::NotFound("a badge is /badge/{name}.svg"));
    };
    let name = parse_name(name)?;
    let badge = Badge::from_query(query).map_err(ApiError::BadRequest)?;
    let handover = request.extensions().get::<Handover>().cloned();
    let client = Client::of(&request, &state.counters.trusted_proxies)?;
    if !client.counts {
        let reading = read(&state, &name, 1).await?;
        let number = match badge.show {
            Show::Total => reading.total,
            Show::Today => saturating(reading.today().visits),
            Show::Unique => saturating(reading.today().unique),
        };
        let svg = badge.render(&badge.value(number));
        let tag = etag(&svg);
        let unchanged = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|given| given.as_bytes() == tag.as_bytes());
        if unchanged {
            return Ok(with_headers(StatusCode::NOT_MODIFIED.into_response(), &tag));
        }
        return Ok(with_headers(Body::from(svg).into_response(), &tag));
    }
    let counted = count_named(&state, name.clone(), &client, request.into_body()).await?;
    let value = match badge.show {
        Show::Total => badge.value(counted.number()),
        // Counted: the answer carries the badge whatever happens next, so a day that
        // cannot be read shows as unknown rather than failing the visit.
        Show::Today | Show::Unique => match state
            .store
            .counter(&name, 1, state.deadlines.stats_read())
            .await
        {
            Ok(Some(reading)) => {
                let today = reading.today();
                let number = if badge.show == Show::Today {
                    today.visits
                } else {
                    today.unique
                };
                badge.value(saturating(number))
            }
            _ => "?".to_owned(),
        },
    };
    let svg = badge.render(&value);
    let tag = etag(&svg);
    Ok(with_headers(
        Body::new(AnsweredBody::new(svg, counted, handover)).into_response(),
        &tag,
    ))
}

/// A day's count as a badge shows it (a day holds at most what a total can).
fn saturating(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An entity tag of the badge's bytes.
fn etag(svg: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    svg.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

fn with_headers(mut response: Response, tag: &str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(BADGE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(tag) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, tag);
    }
    response
}
