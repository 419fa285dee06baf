//! The history chart of a counter's page: a bar per day, drawn on the server as SVG, so
//! the page needs no script and no outside resource.

use std::fmt::Write;

use crate::{
    counters::DayReading,
    page::{count_of, escape},
};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
/// Room for the axis labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

/// An SVG bar chart of `days` (oldest first): visits as bars, unique visitors as a
/// darker inner bar; every bar has a title with its date and figures.
pub fn render(days: &[DayReading]) -> String {
    let most = days.iter().map(|d| d.visits).max().unwrap_or(0).max(1);
    let plot_width = WIDTH - LEFT;
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = plot_width / days.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let mut svg = String::with_capacity(256 + days.len() * 256);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Visits per day, last {} days; most in a day: {most}</title>"#,
        days.len()
    );
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{y}" x2="{WIDTH}" y2="{y}" class="axis"/><text x="{x}" y="{t}" class="label" text-anchor="end">{top}</text><text x="{x}" y="{y}" class="label" text-anchor="end">0</text>"#,
        // Abbreviated (1.2M), so that any count fits the room left of the axis; the
        // title has it whole.
        top = crate::badge::abbreviate(i64::try_from(most).unwrap_or(i64::MAX)),
        y = HEIGHT - BOTTOM,
        x = LEFT - 6.0,
        t = TOP + 10.0,
    );
    for (i, day) in days.iter().enumerate() {
        let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
        let height = plot_height * day.visits as f64 / most as f64;
        let unique = plot_height * day.unique.min(day.visits) as f64 / most as f64;
        let _ = write!(
            svg,
            r#"<g><title>{date}: {visits}, about {unique_count}</title><rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{height:.1}" class="visits"/><rect x="{x:.1}" y="{uy:.1}" width="{bar:.1}" height="{unique:.1}" class="unique"/></g>"#,
            date = escape(&day.date),
            visits = count_of(day.visits, "visit"),
            unique_count = count_of(day.unique, "unique visitor"),
            y = HEIGHT - BOTTOM - height,
            uy = HEIGHT - BOTTOM - unique,
        );
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="{y}" class="label">{}</text><text x="{WIDTH}" y="{y}" class="label" text-anchor="end">{}</text>"#,
            escape(&first.date),
            escape(&last.date),
            y = HEIGHT - 6.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(date: &str, visits: u64, unique: u64) -> DayReading {
        DayReading {
            date: date.into(),
            visits,
            unique,
        }
    }

    #[test]
    fn the_busiest_days_count_fits_left_of_the_axis_and_is_whole_in_the_title() {
        let svg = render(&[day("2026-11-29", 1_234_567, 10), day("2026-11-30", 5, 1)]);

        assert!(svg.contains(r#"text-anchor="end">1.2M</text>"#), "{svg}");
        assert!(svg.contains("most in a day: 1234567"), "{svg}");
    }

    #[test]
    fn each_day_is_a_bar_as_tall_as_its_share_of_the_busiest_day() {
        let svg = render(&[
            day("2026-11-28", 0, 0),
            day("2026-11-29", 84, 10),
            day("2026-11-30", 168, 20),
        ]);

        assert_eq!(svg.matches(r#"class="visits""#).count(), 3);
        assert!(svg.contains(r#"height="168.0" class="visits""#), "{svg}");
        assert!(svg.contains(r#"height="84.0" class="visits""#), "{svg}");
        assert!(svg.contains("2026-11-29: 84 visits, about 10 unique visitors"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
