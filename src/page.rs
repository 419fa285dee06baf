//! The page a browser gets from `GET /`: the count, who served it, and a live view of the
//! replicas. One self-contained document from the binary, no external assets, so it works
//! offline; without JavaScript it still shows the count.

use axum::http::{HeaderName, HeaderValue, header};

use crate::{
    chart,
    counters::{CounterName, CounterReading},
};

const TEMPLATE: &str = include_str!("page.html");
const COUNTER_TEMPLATE: &str = include_str!("counter_page.html");

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// True when the `Accept` header ranks HTML above plain text. Clients that send `*/*` or
/// nothing (curl, scripts) keep the tutorial's plain text.
pub fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    crate::accept::prefers(
        accept,
        &["text/html", "application/xhtml+xml"],
        "text/plain",
    )
}

/// The headers the page is sent with.
pub const HEADERS: [(HeaderName, &str); 3] = [
    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
    (header::CONTENT_SECURITY_POLICY, CSP),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// The page for visit number `count`.
pub fn render(count: i64, replica: &str, version: &str) -> String {
    TEMPLATE
        .replace("{{count}}", &count.to_string())
        .replace("{{version}}", &escape(version))
        // Last, so that nothing inside a replica name is taken for a placeholder.
        .replace("{{replica}}", &escape(replica))
}

/// A named counter's page: its count (this visit's number when `counted`), today, and a
/// chart of the last `days` days when the history could be read.
pub fn counter(
    name: &CounterName,
    count: i64,
    reading: Option<&CounterReading>,
    days: u32,
    counted: bool,
) -> String {
    let (today, chart) = match reading {
        Some(reading) => {
            let today = reading.today();
            (
                format!(
                    "Today ({}): {}, about {}.",
                    today.date,
                    count_of(today.visits, "visit"),
                    count_of(today.unique, "unique visitor")
                ),
                chart::render(&reading.days),
            )
        }
        None => (
            "The history cannot be read right now.".to_owned(),
            String::new(),
        ),
    };
    let seen = if counted {
        "This counter has been seen"
    } else {
        "This counter has been seen (your visit not counted)"
    };
    COUNTER_TEMPLATE
        .replace("{{count}}", &count.to_string())
        .replace("{{seen}}", seen)
        .replace("{{today}}", &escape(&today))
        .replace("{{days}}", &days.to_string())
        .replace("{{other_days}}", if days == 90 { "30" } else { "90" })
        .replace("{{chart}}", &chart)
        // Last, so that nothing inside a name is taken for a placeholder.
        .replace("{{name}}", &escape(name.as_str()))
}

/// `n` of `what`: "1 visit", "2 visits".
pub fn count_of(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> bool {
        prefers_html(Some(&HeaderValue::from_str(value).unwrap()))
    }

    #[test]
    fn a_count_of_one_is_singular() {
        assert_eq!(count_of(1, "visit"), "1 visit");
        assert_eq!(count_of(0, "unique visitor"), "0 unique visitors");
        assert_eq!(count_of(21, "visit"), "21 visits");
    }

    #[test]
    fn browsers_get_html() {
        assert!(accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
        ));
        assert!(accept("application/xhtml+xml"));
    }

    #[test]
    fn curl_and_plain_clients_keep_text() {
        assert!(!prefers_html(None));
        assert!(!accept("*/*"));
        assert!(!accept("text/plain"));
        assert!(!accept("text/plain, text/html;q=0.5"));
        assert!(!accept("text/html;q=0"));
        assert!(!accept("application/json"));
    }

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            escape(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }
}
