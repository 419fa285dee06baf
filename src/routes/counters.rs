//! Named counters. `/c/{name}` counts a visit and answers as `/` does (text, or the
//! counter's page for a browser). Under `/api/counters/{name}`: `POST` counts a visit,
//! `GET` and `HEAD` read without counting, `/history` gives the counts per day (JSON, or
//! CSV); `PUT` and `DELETE` are the administrator's (`admin`).

use axum::{
    Json,
    body::Body,
    extract::{FromRequestParts, Path, Request, State},
    http::{HeaderMap, HeaderValue, Uri, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{ApiError, client::Client, visit::count_named};
use crate::{
    counters::{CounterName, CounterReading, DayReading, name::history_of},
    delivery::{AnsweredBody, Handover},
    page,
    state::AppState,
    store::ListError,
};

/// The `{*name}` of a counter's route, percent-decoded; 400 in the service's words when
/// it is not text.
pub struct CounterPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CounterPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(path)) => Ok(CounterPath(path)),
            Err(_) => Err(ApiError::BadRequest(
                "a counter's name is text (UTF-8) once percent-decoded".into(),
            )),
        }
    }
}

/// Days the history answers when not asked for a number, and the counter's page draws.
pub const DEFAULT_DAYS: u32 = 30;

/// `GET /c/{name}`: counts a visit (unless the client asked not to be counted).
pub async fn visit(
    State(state): State<AppState>,
    CounterPath(name): CounterPath,
    request: Request,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let html = page::prefers_html(request.headers().get(header::ACCEPT));
    // Checked for every client, so that a link is refused alike wherever it is followed
    // (and a refused one is not counted); only the page draws the days.
    let chart = chart_days(request.uri().query())?;
    // No more days than the history keeps.
    let days = if html {
        chart.min(state.counters.policy.retention_days)
    } else {
        1
    };
    let handover = request.extensions().get::<Handover>().cloned();
    let client = Client::of(&request, &state.counters.trusted_proxies)?;
    if !client.counts {
        let reading = read(&state, &name, days).await?;
        let text = if html {
            page::counter(&name, reading.total, Some(&reading), days, false)
        } else {
            tutorial_text(reading.total)
        };
        return Ok(answer(Body::from(text), html));
    }
    let counted = count_named(&state, name.clone(), &client, request.into_body()).await?;
    let text = if html {
        // Counted: the answer carries its number whatever happens next, so a history that
        // cannot be read leaves the chart out rather than failing the visit.
        let reading = state
            .store
            .counter(&name, days, state.deadlines.stats_read())
            .await
            .ok()
            .flatten();
        page::counter(&name, counted.number(), reading.as_ref(), days, true)
    } else {
        tutorial_text(counted.number())
    };
    Ok(answer(
        Body::new(AnsweredBody::new(text, counted, handover)),
        html,
    ))
}

fn tutorial_text(number: i64) -> String {
    format!("Hello World! I have been seen {number} times.\n")
}

fn answer(body: Body, html: bool) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    if html {
        for (name, value) in &page::HEADERS {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// A counter as `GET /api/counters/{name}` answers it.
#[derive(Debug, Serialize)]
pub struct CounterJson {
    pub name: String,
    pub total: i64,
    pub today: DayReading,
}

/// The methods a counter's history takes (it shares its route with the counter, which
/// takes more): its `Allow`.
pub const HISTORY_METHODS: &str = "GET,HEAD";

/// `GET /api/counters/{name}` (and `HEAD`): the counter, not counting a visit; or, for
/// `{name}/history`, its counts per day.
pub async fn read_or_history(
    State(state): State<AppState>,
    CounterPath(path): CounterPath,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(name) = history_of(&path) {
        return history(&state, &parse_name(name)?, uri.query(), &headers).await;
    }
    let name = parse_name(&path)?;
    let reading = read(&state, &name, 1).await?;
    Ok(Json(CounterJson {
        name: name.to_string(),
        total: reading.total,
        today: reading.today(),
    })
    .into_response())
}

/// `GET /api/counters`: a page of counters with their totals, and the cursor of the next
/// page (`?cursor=`), if there is one. Each store lists in its own order. A counter whose
/// total cannot be read (a key of another type put in its place) is listed with `total`
/// null and the reason, and the others as usual.
pub async fn list(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let cursor = query_value(uri.query(), "cursor")?;
    let (page, next) = state
        .store
        .list(cursor, state.deadlines.stats_read())
        .await
        .map_err(list_failed)?;
    let counters: Vec<_> = page
        .iter()
        .map(|(name, total)| match total {
            Ok(total) => serde_json::json!({ "name": name.as_str(), "total": total }),
            Err(error) => serde_json::json!({
                "name": name.as_str(),
                "total": null,
                "error": error.reason(),
            }),
        })
        .collect();
    Ok(Json(serde_json::json!({ "counters": counters, "next": next })).into_response())
}

/// 400 for a cursor no listing gave, 503 with the reason when the store failed.
pub(super) fn list_failed(error: ListError) -> ApiError {
    match error {
        ListError::BadCursor => {
            ApiError::BadRequest("cursor is the value of next in the page before".into())
        }
        ListError::Store(error) => {
            tracing::warn!(
                reason = error.code(),
                cause = error.detail(),
                "counter list failed"
            );
            ApiError::store_failed(&error)
        }
    }
}

/// `POST /api/counters/{name}`: counts a visit and answers its number as the total.
pub async fn count_visit(
    State(state): State<AppState>,
    CounterPath(path): CounterPath,
    request: Request,
) -> Result<Response, ApiError> {
    if history_of(&path).is_some() {
        return Err(ApiError::MethodNotAllowed);
    }
    let name = parse_name(&path)?;
    let handover = request.extensions().get::<Handover>().cloned();
    let client = Client::of(&request, &state.counters.trusted_proxies)?;
    if !client.counts {
        let reading = read(&state, &name, 1).await?;
        return Ok(json_body(&name, reading.total, None));
    }
    let counted = count_named(&state, name.clone(), &client, request.into_body()).await?;
    let number = counted.number();
    let text = serde_json::json!({ "name": name.as_str(), "total": number }).to_string();
    Ok(json_body(&name, number, Some((text, counted, handover))))
}

/// The answer to a count: the visit's number, carried by a delivery-guarded body when it
/// was counted.
fn json_body(
    name: &CounterName,
    total: i64,
    counted: Option<(String, crate::delivery::Counted, Option<Handover>)>,
) -> Response {
    let body = match counted {
        Some((text, counted, handover)) => Body::new(AnsweredBody::new(text, counted, handover)),
        None => {
            Body::from(serde_json::json!({ "name": name.as_str(), "total": total }).to_string())
        }
    };
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn history(
    state: &AppState,
    name: &CounterName,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let days = match query_value(query, "days")? {
        None => DEFAULT_DAYS.min(state.counters.policy.retention_days),
        Some(days) => days
            .parse::<u32>()
            .ok()
            .filter(|days| (1..=state.counters.policy.retention_days).contains(days))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "days is a number from 1 to {} (the days of history kept)",
                    state.counters.policy.retention_days
                ))
            })?,
    };
    let csv = match query_value(query, "format")?.as_deref() {
        None => crate::accept::prefers(
            headers.get(header::ACCEPT),
            &["text/csv"],
            "application/json",
        ),
        Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(ApiError::BadRequest("format is json or csv".into())),
    };
    let reading = read(state, name, days).await?;
    if csv {
        let mut text = String::from("date,visits,unique\n");
        for day in &reading.days {
            text.push_str(&format!("{},{},{}\n", day.date, day.visits, day.unique));
        }
        let disposition = format!(
            "inline; filename=\"{}-history.csv\"",
            name.as_str().replace('/', "_")
        );
        let mut response =
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response();
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, value);
        }
        return Ok(response);
    }
    Ok(Json(HistoryJson {
        name: name.as_str(),
        total: reading.total,
        days: &reading.days,
    })
    .into_response())
}

/// A counter's history as `GET /api/counters/{name}/history` answers it.
#[derive(Debug, Serialize)]
struct HistoryJson<'a> {
    name: &'a str,
    total: i64,
    /// Oldest first, today last.
    days: &'a [DayReading],
}

/// A counter's reading, or 404 when there is no such counter.
pub(super) async fn read(
    state: &AppState,
    name: &CounterName,
    days: u32,
) -> Result<CounterReading, ApiError> {
    match state
        .store
        .counter(name, days, state.deadlines.stats_read())
        .await
    {
        Ok(Some(reading)) => Ok(reading),
        Ok(None) => Err(ApiError::NotFound("no such counter")),
        Err(error) => {
            tracing::warn!(
                reason = error.code(),
                cause = error.detail(),
                "counter read failed"
            );
            Err(ApiError::store_failed(&error))
        }
    }
}

/// A counter's name from a path, or 400 saying what a name may be.
pub(super) fn parse_name(text: &str) -> Result<CounterName, ApiError> {
    CounterName::parse(text).map_err(|bad| ApiError::BadRequest(bad.to_string()))
}

/// The days a counter's page draws: 30, or 90 with `?days=90`.
fn chart_days(query: Option<&str>) -> Result<u32, ApiError> {
    match query_value(query, "days")?.as_deref() {
        None | Some("30") => Ok(30),
        Some("90") => Ok(90),
        Some(_) => Err(ApiError::BadRequest(
            "the page draws 30 or 90 days (days=30, days=90)".into(),
        )),
    }
}

/// The values in a query string, percent-decoded as a browser encodes them (`%31` is `1`,
/// `+` a space); a key without `=` has the empty value.
pub(super) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `key` in a query string (see `query_pairs`), if given; 400 when it is
/// given more than once, as which one was meant cannot be known.
pub(super) fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    let mut values = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v);
    let value = values.next();
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!(
            "{key}= is given more than once"
        )));
    }
    Ok(value)
}
