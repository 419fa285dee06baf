//! Content negotiation: which of two kinds of answer a request's `Accept` header ranks
//! higher (RFC 9110, 12.5.1), for the routes that answer in more than one.

use axum::http::HeaderValue;

/// True when `accept` names one of `wanted` (with a quality above zero) at a quality at
/// least that of `other`, which a wildcard (`*/*`, `type/*`) may stand for. A wildcard
/// alone never chooses `wanted`: clients that send `*/*` or nothing keep the default.
pub fn prefers(accept: Option<&HeaderValue>, wanted: &[&str], other: &str) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let other_family = other.split('/').next().unwrap_or_default();
    let (mut named, mut rival) = (None::<f32>, None::<f32>);
    let mut wildcard = 0.0_f32;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()))
            .next()
            .unwrap_or(1.0);
        if wanted.contains(&media.as_str()) {
            named = Some(named.unwrap_or(0.0).max(quality));
        } else if media == other {
            rival = Some(quality);
        } else if media == "*/*" || media.strip_suffix("/*") == Some(other_family) {
            wildcard = wildcard.max(quality);
        }
    }
    match named {
        Some(q) if q > 0.0 => q >= rival.unwrap_or(wildcard),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(accept: &str) -> bool {
        prefers(
            Some(&HeaderValue::from_str(accept).unwrap()),
            &["text/csv"],
            "application/json",
        )
    }

    #[test]
    fn the_named_kind_wins_at_its_quality() {
        assert!(csv("text/csv"));
        assert!(csv("text/csv, application/json;q=0.5"));
        assert!(csv("application/json;q=0.9, text/csv"));
        assert!(csv("text/csv;q=0.5, */*;q=0.1"));
    }

    #[test]
    fn a_refused_or_lower_or_unnamed_kind_does_not() {
        assert!(!csv("text/csv;q=0, application/json"));
        assert!(!csv("application/json, text/csvx"));
        assert!(!csv("text/csv;q=0.5, application/json"));
        assert!(!csv("text/csv;q=0.5, application/*"));
        assert!(!csv("*/*"));
        assert!(!prefers(None, &["text/csv"], "application/json"));
    }
}
