//! Badges: a label and a value, drawn as SVG in the styles people know from shields.io
//! (`flat`, `flat-square`, `plastic`, `for-the-badge`). Each part is as wide as its text
//! in DejaVu Sans (`widths`), and the text is told that width (`textLength`), so a
//! renderer with another font squeezes or stretches it rather than clipping it.

pub mod widths;

use std::fmt::Write;

use serde::Deserialize;

use crate::page::escape;

/// The longest label, in characters.
pub const MAX_LABEL: usize = 64;

/// What a badge request may ask for (the query of `/badge/{name}.svg`).
#[derive(Debug, Default, Deserialize)]
pub struct BadgeQuery {
    pub label: Option<String>,
    pub color: Option<String>,
    #[serde(rename = "labelColor")]
    pub label_color: Option<String>,
    pub style: Option<String>,
    pub show: Option<String>,
    pub abbreviated: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Flat,
    FlatSquare,
    Plastic,
    ForTheBadge,
}

/// Which number the badge shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The counter's total (this visit's number, when it counted one).
    Total,
    /// Today's visits.
    Today,
    /// Today's unique visitors.
    Unique,
}

/// A badge request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub label: String,
    pub color: String,
    pub label_color: String,
    pub style: Style,
    pub show: Show,
    pub abbreviated: bool,
}

impl Badge {
    /// Checks a query; the error says what to change.
    pub fn from_query(query: BadgeQuery) -> Result<Self, String> {
        let show = match query.show.as_deref() {
            None | Some("total") => Show::Total,
            Some("today") => Show::Today,
            Some("unique") => Show::Unique,
            Some(_) => return Err("show is total, today or unique".into()),
        };
        let label = match query.label {
            Some(label) => label,
            None => match show {
                Show::Total => "visits".to_owned(),
                Show::Today => "visits today".to_owned(),
                Show::Unique => "visitors today".to_owned(),
            },
        };
        if label.chars().count() > MAX_LABEL || label.chars().any(unfit_for_label) {
            return Err(format!(
                "the label has at most {MAX_LABEL} characters, none of them control or \
                 direction-changing characters"
            ));
        }
        let style = match query.style.as_deref() {
            None | Some("flat") => Style::Flat,
            Some("flat-square") => Style::FlatSquare,
            Some("plastic") => Style::Plastic,
            Some("for-the-badge") => Style::ForTheBadge,
            Some(_) => return Err("style is flat, flat-square, plastic or for-the-badge".into()),
        };
        let abbreviated = match query.abbreviated.as_deref() {
            None | Some("false" | "0" | "no") => false,
            Some("" | "true" | "1" | "yes") => true,
            Some(_) => return Err("abbreviated is true or false".into()),
        };
        Ok(Self {
            label,
            color: color(query.color.as_deref(), "#4c1", "color")?,
            label_color: color(query.label_color.as_deref(), "#555", "labelColor")?,
            style,
            show,
            abbreviated,
        })
    }

    /// The value as shown: the number, or abbreviated (`1.2k`).
    pub fn value(&self, number: i64) -> String {
        if self.abbreviated {
            abbreviate(number)
        } else {
            number.to_string()
        }
    }

    /// The SVG of this badge with `value`.
    pub fn render(&self, value: &str) -> String {
        let (label, value) = match self.style {
            Style::ForTheBadge => (self.label.to_uppercase(), value.to_uppercase()),
            _ => (self.label.clone(), value.to_owned()),
        };
        let geometry = Geometry::of(self.style);
        let label_text = geometry.text_width(&label, false);
        let value_text = geometry.text_width(&value, geometry.bold_value);
        let label_width = part_width(label_text, &geometry, label.is_empty());
        let value_width = part_width(value_text, &geometry, false);
        let width = label_width + value_width;
        let height = geometry.height;
        let title = escape(&format!(
            "{}{}{value}",
            self.label,
            if self.label.is_empty() { "" } else { ": " }
        ));
        let mut svg = String::with_capacity(1024);
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{title}"><title>{title}</title>"#
        );
        if let Some(gradient) = geometry.gradient {
            svg.push_str(gradient);
        }
        let _ = write!(
            svg,
            r##"<clipPath id="r"><rect width="{width}" height="{height}" rx="{rx}" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{label_width}" height="{height}" fill="{label_color}"/><rect x="{label_width}" width="{value_width}" height="{height}" fill="{color}"/>"##,
            rx = geometry.radius,
            label_color = self.label_color,
            color = self.color,
        );
        if geometry.gradient.is_some() {
            let _ = write!(
                svg,
                r#"<rect width="{width}" height="{height}" fill="url(#s)"/>"#
            );
        }
        let _ = write!(
            svg,
            r##"</g><g fill="#fff" text-anchor="middle" font-family="DejaVu Sans,Verdana,Geneva,sans-serif" text-rendering="geometricPrecision" font-size="{size}"{spacing}>"##,
            size = geometry.font_size * 10.0,
            spacing = if geometry.letter_spacing > 0.0 {
                format!(r#" letter-spacing="{}""#, geometry.letter_spacing * 10.0)
            } else {
                String::new()
            },
        );
        if !label.is_empty() {
            self.text(
                &mut svg,
                &geometry,
                &label,
                label_width / 2.0,
                label_text,
                false,
            );
        }
        self.text(
            &mut svg,
            &geometry,
            &value,
            label_width + value_width / 2.0,
            value_text,
            geometry.bold_value,
        );
        svg.push_str("</g></svg>");
        svg
    }

    /// One part's text (with its shadow, in the styles that have one), centred at `x`,
    /// as wide as `width`; in tenths of a pixel, as the group is scaled.
    fn text(
        &self,
        svg: &mut String,
        geometry: &Geometry,
        text: &str,
        x: f64,
        width: f64,
        bold: bool,
    ) {
        let x = (x * 10.0).round();
        let length = (width * 10.0).round();
        let weight = if bold { r#" font-weight="bold""# } else { "" };
        let text = escape(text);
        if geometry.shadow {
            let _ = write!(
                svg,
                r##"<text aria-hidden="true" x="{x}" y="{y}" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{length}"{weight}>{text}</text>"##,
                y = geometry.baseline * 10.0 + 10.0,
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{y}" transform="scale(.1)" textLength="{length}"{weight}>{text}</text>"#,
            y = geometry.baseline * 10.0,
        );
    }
}

/// The measures of a style.
struct Geometry {
    height: u32,
    radius: u32,
    font_size: f64,
    /// Space on each side of a text.
    padding: f64,
    baseline: f64,
    letter_spacing: f64,
    bold_value: bool,
    shadow: bool,
    gradient: Option<&'static str>,
}

const FLAT_GRADIENT: &str = r##"<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>"##;
const PLASTIC_GRADIENT: &str = r##"<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#fff" stop-opacity=".7"/><stop offset=".1" stop-color="#aaa" stop-opacity=".1"/><stop offset=".9" stop-opacity=".3"/><stop offset="1" stop-opacity=".5"/></linearGradient>"##;

impl Geometry {
    fn of(style: Style) -> Self {
        let flat = Self {
            height: 20,
            radius: 3,
            font_size: 11.0,
            padding: 5.0,
            baseline: 14.0,
            letter_spacing: 0.0,
            bold_value: false,
            shadow: true,
            gradient: Some(FLAT_GRADIENT),
        };
        match style {
            Style::Flat => flat,
            Style::FlatSquare => Self {
                radius: 0,
                shadow: false,
                gradient: None,
                ..flat
            },
            Style::Plastic => Self {
                height: 18,
                radius: 4,
                baseline: 13.0,
                gradient: Some(PLASTIC_GRADIENT),
                ..flat
            },
            Style::ForTheBadge => Self {
                height: 28,
                radius: 0,
                font_size: 10.0,
                padding: 12.0,
                baseline: 17.5,
                letter_spacing: 1.25,
                bold_value: true,
                shadow: false,
                gradient: None,
            },
        }
    }

    fn text_width(&self, text: &str, bold: bool) -> f64 {
        widths::text_width(text, bold, self.font_size)
            + self.letter_spacing * text.chars().count() as f64
    }
}

/// A part's width: its text and the padding on both sides, in whole pixels.
fn part_width(text: f64, geometry: &Geometry, empty: bool) -> f64 {
    if empty {
        return 0.0;
    }
    (text + 2.0 * geometry.padding).round()
}

/// Characters a label may not hold: control characters, those XML does not allow
/// (U+FFFE, U+FFFF: the SVG would not parse), and those that set or turn the direction
/// of the text around them, embeddings, overrides, isolates and marks alike (which could
/// make a badge read as another).
fn unfit_for_label(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{FFFE}'
                | '\u{FFFF}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// A colour: one of shields.io's names, or hex (3 or 6 digits, `#` optional).
fn color(given: Option<&str>, default: &str, setting: &str) -> Result<String, String> {
    let Some(given) = given else {
        return Ok(default.to_owned());
    };
    let named = match given {
        "brightgreen" | "success" => Some("#4c1"),
        "green" => Some("#97ca00"),
        "yellow" => Some("#dfb317"),
        "yellowgreen" => Some("#a4a61d"),
        "orange" | "important" => Some("#fe7d37"),
        "red" | "critical" => Some("#e05d44"),
        "blue" | "informational" => Some("#007ec6"),
        "grey" | "gray" | "inactive" => Some("#555"),
        "lightgrey" | "lightgray" => Some("#9f9f9f"),
        "blueviolet" => Some("#8a2be2"),
        _ => None,
    };
    if let Some(named) = named {
        return Ok(named.to_owned());
    }
    let hex = given.strip_prefix('#').unwrap_or(given);
    if matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(format!("#{}", hex.to_ascii_lowercase()));
    }
    Err(format!(
        "{setting} is a name (brightgreen, green, yellow, orange, red, blue, grey, …) or a \
         hex colour (4c1, 007ec6)"
    ))
}

/// `1234` → `1.2k`, `5600000` → `5.6M`: one decimal below ten, none above, rounded half
/// away from zero in whole numbers (so that `1050` and `1950` round alike, to `1.1k` and
/// `2k`); a number that rounds to a thousand of one unit is one of the next (`999999` →
/// `1M`).
pub fn abbreviate(number: i64) -> String {
    const UNITS: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    let magnitude = u128::from(number.unsigned_abs());
    if magnitude < 1000 {
        return number.to_string();
    }
    // `magnitude / size`, in `per`ths of a unit, rounded half up.
    let rounded = |size: u128, per: u128| (magnitude * per + size / 2) / size;
    let mut unit = 0;
    let mut size: u128 = 1000;
    while unit + 1 < UNITS.len() && magnitude >= size * 1000 {
        unit += 1;
        size *= 1000;
    }
    if rounded(size, 1) >= 1000 && unit + 1 < UNITS.len() {
        unit += 1;
        size *= 1000;
    }
    let sign = if number < 0 { "-" } else { "" };
    let tenths = rounded(size, 10);
    let text = match (tenths < 100, tenths % 10) {
        (true, 0) => format!("{}", tenths / 10),
        (true, tenth) => format!("{}.{tenth}", tenths / 10),
        (false, _) => format!("{}", rounded(size, 1)),
    };
    format!("{sign}{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn badge(query: &[(&str, &str)]) -> Result<Badge, String> {
        let text: String = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let query: BadgeQuery = serde_urlencoded::from_str(&text).unwrap();
        Badge::from_query(query)
    }

    #[test]
    fn a_label_that_turns_the_text_direction_is_refused() {
        for mark in ['\u{200E}', '\u{200F}', '\u{061C}', '\u{202E}', '\u{2067}'] {
            let label = format!("visits{mark}");
            let refused = badge(&[("label", &label)]).unwrap_err();
            assert!(refused.contains("direction"), "{mark:?}: {refused}");
        }
        assert!(
            badge(&[("label", "visites ✓ مرحبا")]).is_ok(),
            "other scripts are fine"
        );
    }

    #[test]
    fn numbers_are_abbreviated_as_shields_does() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1k"),
            (1234, "1.2k"),
            (9_960, "10k"),
            (123_456, "123k"),
            (999_499, "999k"),
            (999_500, "1M"),
            (999_999, "1M"),
            (-999_999, "-1M"),
            (1_000_000, "1M"),
            (999_499_999, "999M"),
            (999_500_000, "1G"),
            (5_600_000, "5.6M"),
            (-1500, "-1.5k"),
            // Halves round alike, whatever their nearest binary fraction.
            (1050, "1.1k"),
            (1150, "1.2k"),
            (1950, "2k"),
            (-1950, "-2k"),
            (9_949, "9.9k"),
            (9_950, "10k"),
            (i64::MAX, "9.2E"),
            (i64::MIN, "-9.2E"),
        ];
        for (number, text) in cases {
            assert_eq!(abbreviate(number), text, "{number}");
        }
    }

    #[test]
    fn each_part_is_as_wide_as_its_text_and_padding() {
        let flat = badge(&[]).unwrap();
        let svg = flat.render("1234");
        let label = widths::text_width("visits", false, 11.0);
        let value = widths::text_width("1234", false, 11.0);
        let (label_width, value_width) = ((label + 10.0).round(), (value + 10.0).round());
        let width = label_width + value_width;

        assert!(
            svg.contains(&format!(r#"width="{width}" height="20""#)),
            "{svg}"
        );
        assert!(svg.contains(&format!(r#"textLength="{}""#, (label * 10.0).round())));
        assert!(svg.contains(&format!(r#"textLength="{}""#, (value * 10.0).round())));
        assert!(svg.contains(r#"aria-label="visits: 1234""#));
    }

    #[test]
    fn styles_colours_and_labels_are_taken_and_bad_ones_refused() {
        let square = badge(&[
            ("style", "flat-square"),
            ("color", "blue"),
            ("labelColor", "ABC"),
        ]);
        let square = square.unwrap();
        assert_eq!(
            (square.color.as_str(), square.label_color.as_str()),
            ("#007ec6", "#abc")
        );
        assert!(!square.render("1").contains("linearGradient"));
        let tall = badge(&[("style", "for-the-badge"), ("label", "hits")]).unwrap();
        assert!(tall.render("12").contains(r#"height="28""#));
        assert!(tall.render("12").contains(">HITS<"));

        for bad in [
            [("style", "round")],
            [("color", "not-a-colour")],
            [("show", "yesterday")],
            [("abbreviated", "maybe")],
        ] {
            assert!(badge(&bad).is_err(), "{bad:?}");
        }
        assert!(badge(&[("label", &"x".repeat(65))]).is_err());
    }

    #[test]
    fn markup_in_a_label_is_text() {
        let svg = badge(&[("label", "<script>%26")]).unwrap().render("1");
        assert!(svg.contains("&lt;script&gt;&amp;"), "{svg}");
        assert!(!svg.contains("<script>"));
    }
}
