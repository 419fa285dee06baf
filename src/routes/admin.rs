//! The administrator's routes, each needing `Authorization: Bearer <token>` (the token in
//! `--admin-token-file`; without one, administration is off and these are 404):
//!
//! - `PUT /api/counters/{name}` with `{"total": N}`: sets the total (`0` resets it),
//!   making the counter if there is none;
//! - `DELETE /api/counters/{name}`: deletes the counter with its history;
//! - `GET /api/admin/export`: every counter, one JSON line each (`counters::export`);
//! - `POST /api/admin/import`: the same lines back, each counter written as one change.
//!
//! Every change is logged with what it changed; the token never is.

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::timeout;

use super::{
    ApiError,
    counters::{CounterPath, list_failed, parse_name},
    visit::read_small_body,
};
use crate::{
    counters::{
        CounterName, Day,
        export::{CounterExport, MAX_LINE_BYTES},
        name::history_of,
    },
    page::count_of,
    state::AppState,
    store::{AdminError, CounterPage, ListError, Previous, StoreError, StoreErrorKind},
    telemetry::Throttle,
};

/// The body of `PUT /api/counters/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTotal {
    total: i64,
}

/// `PUT /api/counters/{name}`.
pub async fn set_total(
    State(state): State<AppState>,
    CounterPath(path): CounterPath,
    request: Request,
) -> Result<Response, ApiError> {
    let read_by = state.deadlines.body_read_by(tokio::time::Instant::now());
    // The path first (a history is not changed, token or not), then the token before the
    // body: without it, nothing of the body is read.
    let name = counter_path(&path)?;
    authorize(&state, request.headers())?;
    let body = read_small_body(request.into_body(), read_by).await?;
    let bad = || ApiError::BadRequest("the body is {\"total\": N}, N a whole number from 0".into());
    // An object, as documented; serde would also take the fields as an array.
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| bad())?;
    if !value.is_object() {
        return Err(bad());
    }
    // From the text again, not the value: a value keeps one of a repeated `total`.
    let SetTotal { total } = serde_json::from_slice(&body).map_err(|_| bad())?;
    if total < 0 {
        return Err(ApiError::BadRequest(
            "the total is a whole number from 0".into(),
        ));
    }
    let previous = state
        .store
        .set_total(&name, total, state.deadlines.store)
        .await
        .map_err(|error| admin_failed(error, name == state.counters.tutorial))?;
    let (created, previous) = match previous {
        Previous::Absent => (true, None),
        Previous::Total(before) => (false, Some(before)),
        Previous::Unreadable => (false, None),
    };
    tracing::info!(
        action = "set",
        counter = %name,
        created,
        previous,
        total,
        "the administrator set a counter"
    );
    Ok(Json(json!({
        "name": name.as_str(),
        "total": total,
        "previous": previous,
        "created": created,
    }))
    .into_response())
}

/// `DELETE /api/counters/{name}`.
pub async fn delete(
    State(state): State<AppState>,
    CounterPath(path): CounterPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = counter_path(&path)?;
    authorize(&state, &headers)?;
    if name == state.counters.tutorial {
        return Err(ApiError::BadRequest(
            "the tutorial's counter is not deleted; set its total to 0 instead".into(),
        ));
    }
    let previous = match state
        .store
        .delete(&name, state.deadlines.store)
        .await
        .map_err(|error| admin_failed(error, false))?
    {
        Previous::Absent => return Err(ApiError::NotFound("no such counter")),
        Previous::Total(total) => Some(total),
        Previous::Unreadable => None,
    };
    tracing::info!(
        action = "delete",
        counter = %name,
        previous,
        "the administrator deleted a counter"
    );
    Ok(
        Json(json!({ "name": name.as_str(), "deleted": true, "previous": previous }))
            .into_response(),
    )
}

/// How far an export got. Dropped before the end (the client went away, or its
/// connection was closed), it says so in the log: the client has an incomplete file.
#[derive(Debug, Default)]
struct ExportProgress {
    exported: u64,
    /// The last page was handed over, or an error ended the export (and was logged).
    ended: bool,
}

impl ExportProgress {
    /// The last page was handed over.
    fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            tracing::info!(
                action = "export",
                counters = self.exported,
                "the administrator exported every counter"
            );
        }
    }

    /// An error ended the export; `export_failed` said why.
    fn failed(mut self) -> Self {
        self.ended = true;
        self
    }
}

impl Drop for ExportProgress {
    fn drop(&mut self) {
        if !self.ended {
            tracing::warn!(
                action = "export",
                counters = self.exported,
                "the export stopped before its end: the connection closed"
            );
        }
    }
}

/// `GET /api/admin/export`: every counter, a JSON line each, read a page at a time so
/// that memory stays bounded however many there are. The first page is read before the
/// answer starts: a store that cannot list is 503. A counter that cannot be read later
/// cuts the transfer short (the client sees an incomplete body), and the log says which.
pub async fn export(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let first = state
        .store
        .list(None, state.deadlines.stats_read())
        .await
        .map_err(list_failed)?;
    if method == Method::HEAD {
        // The answer's head, as the export's would be; nothing is exported.
        let mut response = ().into_response();
        set_export_headers(response.headers_mut());
        return Ok(response);
    }
    tracing::info!(action = "export", "the administrator began an export");
    // A page at hand (the first), or the cursor of the next; `None` after the last page.
    enum Next {
        Page(CounterPage),
        Cursor(String),
    }
    let start = (Some(Next::Page(first)), ExportProgress::default());
    let pages = futures_util::stream::unfold(start, move |(next, mut progress)| {
        let state = state.clone();
        async move {
            let read = state.deadlines.stats_read();
            let Some(next) = next else {
                progress.finish();
                return None;
            };
            let exported = progress.exported;
            let (counters, cursor) = match next {
                Next::Page(page) => page,
                Next::Cursor(cursor) => match state.store.list(Some(cursor), read).await {
                    Ok(page) => page,
                    Err(ListError::Store(error)) => {
                        return Some((
                            Err(export_failed(None, &error, exported)),
                            (None, progress.failed()),
                        ));
                    }
                    // The store's own cursor, which it always takes.
                    Err(ListError::BadCursor) => {
                        let error = StoreError::new(
                            StoreErrorKind::Failed,
                            "the store refused its own cursor",
                        );
                        return Some((
                            Err(export_failed(None, &error, exported)),
                            (None, progress.failed()),
                        ));
                    }
                },
            };
            let mut lines = Vec::new();
            let mut exported = exported;
            for (name, _) in counters {
                match state.store.export(&name, read).await {
                    Ok(Some(counter)) => {
                        lines.extend(serde_json::to_vec(&counter).unwrap_or_default());
                        lines.push(b'\n');
                        exported += 1;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        let error = export_failed(Some(&name), &error, exported);
                        return Some((Err(error), (None, progress.failed())));
                    }
                }
            }
            progress.exported = exported;
            Some((Ok(Bytes::from(lines)), (cursor.map(Next::Cursor), progress)))
        }
    });
    let mut response = Body::from_stream(pages).into_response();
    set_export_headers(response.headers_mut());
    Ok(response)
}

fn set_export_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"counters.jsonl\""),
    );
}

/// How far an import got. Dropped before the end (its connection closed: the client
/// left while a line was being imported, or the service stopped), it says so in the log
/// with how far it got: no answer will.
#[derive(Debug, Default)]
struct Imported {
    counters: u64,
    /// Days before the history's first, left out.
    days_left_out: u64,
    /// The line whose counter is being written to the store, and its name: cut off
    /// meanwhile, that counter may have been imported.
    importing: Option<(u64, String)>,
    /// The import was answered: done, or stopped with a reason.
    answered: bool,
}

impl Drop for Imported {
    fn drop(&mut self) {
        if !self.answered {
            let (line, counter) = self.importing.take().unzip();
            tracing::warn!(
                action = "import",
                counters = self.counters,
                days_left_out = self.days_left_out,
                may_have_imported_line = line,
                may_have_imported_counter = counter,
                "the import stopped before its end: the connection closed; the counters \
                 before stay imported"
            );
        }
    }
}

/// `POST /api/admin/import`: lines as export writes them, read as they arrive (each at
/// most `MAX_LINE_BYTES`, its newline apart). Each counter is one change; on a bad line
/// the import stops and says which, and the counters before it stay imported. Days older
/// than the history keeps are left out, and counted in the answer.
pub async fn import(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    authorize(&state, request.headers())?;
    let mut imported = Imported::default();
    let read = import_lines(&state, request, &mut imported).await;
    imported.answered = true;
    if let Err(error) = &read {
        let reason = match error {
            ApiError::BadRequest(reason) | ApiError::ImportStopped(_, reason) => reason.clone(),
            ApiError::BadBody => "the body could not be read (the client left, or its \
                                  chunked encoding is broken)"
                .to_owned(),
            other => format!("{other:?}"),
        };
        tracing::warn!(
            action = "import",
            counters = imported.counters,
            days_left_out = imported.days_left_out,
            %reason,
            "the import stopped before its end"
        );
    }
    read?;
    tracing::info!(
        action = "import",
        counters = imported.counters,
        days_left_out = imported.days_left_out,
        "the administrator imported counters"
    );
    Ok(Json(json!({
        "imported": imported.counters,
        "days_left_out": imported.days_left_out,
    }))
    .into_response())
}

/// Imports the body's lines, as they arrive, adding each to `imported`.
async fn import_lines(
    state: &AppState,
    request: Request,
    imported: &mut Imported,
) -> Result<(), ApiError> {
    let wait = state.deadlines.request;
    let mut body = request.into_body().into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    // How much of `pending` is known to hold no newline: each byte is looked at once,
    // however small the chunks the body comes in.
    let mut searched = 0;
    let mut line_number = 0u64;
    let too_long = |imported: &Imported, number: u64| {
        stopped(
            imported,
            &format!("line {number} is longer than {MAX_LINE_BYTES} bytes"),
        )
    };
    loop {
        let chunk = match timeout(wait, body.next()).await {
            Ok(Some(Ok(chunk))) => Some(chunk),
            Ok(None) => None,
            Ok(Some(Err(_))) => return Err(ApiError::BadBody),
            Err(_) => {
                return Err(ApiError::ImportStopped(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body stopped arriving for {}; the import stopped there, after \
                         {} counters",
                        humantime::format_duration(wait),
                        imported.counters
                    ),
                ));
            }
        };
        let ended = chunk.is_none();
        if let Some(chunk) = chunk {
            pending.extend_from_slice(&chunk);
        }
        // The lines this chunk completed, then what is left of the last one moved to the
        // front once.
        let mut start = 0;
        while let Some(at) = pending[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + at;
            line_number += 1;
            if end - start > MAX_LINE_BYTES {
                return Err(too_long(imported, line_number));
            }
            import_line(state, &pending[start..=end], line_number, imported).await?;
            start = end + 1;
            searched = start;
        }
        pending.drain(..start);
        searched = pending.len();
        if pending.len() > MAX_LINE_BYTES {
            return Err(too_long(imported, line_number + 1));
        }
        if ended {
            if !pending.is_empty() {
                line_number += 1;
                let line = std::mem::take(&mut pending);
                import_line(state, &line, line_number, imported).await?;
            }
            return Ok(());
        }
    }
}

/// Imports one line (blank lines are skipped) and adds what it held to `imported`.
async fn import_line(
    state: &AppState,
    line: &[u8],
    number: u64,
    imported: &mut Imported,
) -> Result<(), ApiError> {
    // A file saved by an editor that begins it with a byte order mark is the same file.
    let line = match line.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) if number == 1 => rest,
        _ => line,
    };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut counter = CounterExport::from_line(line).map_err(|error| {
        stopped(
            imported,
            &format!("line {number} is not a counter as export writes it: {error}"),
        )
    })?;
    let name = CounterName::parse(&counter.name)
        .map_err(|bad| stopped(imported, &format!("line {number}: {bad}")))?;
    // What an export of Redis holds, Redis takes back: a total set below zero by hand.
    if counter.total < 0 && !state.store.holds_totals_below_zero() {
        return Err(stopped(
            imported,
            &format!(
                "line {number}: the total is below zero, which only Redis holds (this \
                 store counts from 0)"
            ),
        ));
    }
    let today = Day::today();
    counter
        .check(today)
        .map_err(|bad| stopped(imported, &format!("line {number}: {bad}")))?;
    let first_kept = today.minus(state.counters.policy.retention_days.saturating_sub(1));
    let days_left_out = counter.keep_days_from(first_kept);
    let total = counter.total;
    let done = imported.counters;
    imported.importing = Some((number, name.to_string()));
    state
        .store
        .import(&name, counter, state.deadlines.store)
        .await
        .map_err(|error| {
            let (status, reason) = match admin_failed(error, name == state.counters.tutorial) {
                ApiError::TooManyCounters => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "there are as many counters as allowed (STACKDEMO_MAX_COUNTERS)".to_owned(),
                ),
                ApiError::Unavailable(reason) | ApiError::AwaitsOperator(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, reason.to_owned())
                }
                ApiError::InDoubt { reason, .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reason}, and the line may have been imported"),
                ),
                ApiError::Conflict(reason) => (StatusCode::CONFLICT, reason.to_owned()),
                other => return other,
            };
            ApiError::ImportStopped(
                status,
                format!(
                    "line {number} ({name}): {reason}; the import stopped there, after {}",
                    count_of(done, "counter")
                ),
            )
        })?;
    imported.importing = None;
    tracing::info!(
        action = "import",
        counter = %name,
        total,
        days_left_out,
        "the administrator imported a counter"
    );
    imported.counters += 1;
    imported.days_left_out += days_left_out as u64;
    Ok(())
}

fn stopped(imported: &Imported, reason: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{reason}; the import stopped there, after {}",
        count_of(imported.counters, "counter")
    ))
}

/// 404 when administration is off, 401 without the token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.counters.admin else {
        return Err(ApiError::NotFound(
            "administration is off (no admin token file is set)",
        ));
    };
    if token.allows(headers.get(header::AUTHORIZATION)) {
        return Ok(());
    }
    // Anyone can send these, thousands a second: a line a second says that it happens and
    // how many were left out (the request log has each, with its status).
    static REFUSED: Throttle<()> = Throttle::new();
    if let Some(left_out) = REFUSED.allow((), std::time::Instant::now()) {
        tracing::warn!(
            refusals_not_logged = left_out,
            "an administrator's request without the administrator's token was refused"
        );
    }
    Err(ApiError::Unauthorized)
}

/// The counter a path names; the history is not changed on its own.
fn counter_path(path: &str) -> Result<CounterName, ApiError> {
    if history_of(path).is_some() {
        return Err(ApiError::MethodNotAllowed);
    }
    parse_name(path)
}

/// What an administrator's change that failed is answered; `tutorial` when it was the
/// tutorial's counter (which is not deleted).
fn admin_failed(error: AdminError, tutorial: bool) -> ApiError {
    match error {
        AdminError::TooMany => ApiError::TooManyCounters,
        AdminError::Registry => {
            tracing::warn!(
                "an administrator's change refused: Redis's registry of counters has the \
                 wrong type"
            );
            ApiError::Conflict(
                "Redis's registry of counters holds a value of the wrong type; it is fixed \
                 in Redis itself",
            )
        }
        // Retrying cannot help: someone must clear the key.
        AdminError::Store(error) if error.kind() == StoreErrorKind::WrongType => {
            tracing::warn!(
                cause = error.detail(),
                "an administrator's change refused: a key in Redis has the wrong type"
            );
            ApiError::Conflict(if tutorial {
                "a key in Redis holds a value of the wrong type; the tutorial's keys are \
                 fixed in Redis itself"
            } else {
                "a key in Redis holds a value of the wrong type; deleting the counter \
                 clears its own keys"
            })
        }
        AdminError::Store(error) => {
            tracing::warn!(
                reason = error.code(),
                cause = error.detail(),
                in_doubt = error.in_doubt(),
                "an administrator's change failed"
            );
            ApiError::change_failed(&error, "the change may have been made")
        }
    }
}

/// Logs why an export stopped (at which counter, if one could not be read) and cuts the
/// transfer short.
fn export_failed(
    counter: Option<&CounterName>,
    error: &StoreError,
    exported: u64,
) -> std::io::Error {
    tracing::warn!(
        counter = counter.map(CounterName::as_str),
        exported,
        reason = error.code(),
        cause = error.detail(),
        "export failed; the transfer is cut short"
    );
    std::io::Error::other("export failed")
}
