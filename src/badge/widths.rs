//! Advance widths of the printable ASCII characters (space to `~`) in DejaVu Sans and
//! DejaVu Sans Bold, in font units (2048 to the em), read from the fonts' `hmtx` tables.
//! A test reads the installed fonts and checks every number; a character that takes no
//! room of its own (a combining accent, a zero-width space or joiner, a variation
//! selector: width 0 in Unicode's terms) is taken as 0, any other as wide as `W` (no badge
//! is clipped, at worst a little wide).

/// Font units per em of both fonts.
pub const UNITS_PER_EM: f64 = 2048.0;

/// DejaVu Sans, from `' '` (32) to `'~'` (126).
pub const REGULAR: [u16; 95] = [
    651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, //
    651, 739, 651, 690, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, //
    1303, 1303, 690, 690, 1716, 1716, 1716, 1087, 2048, 1401, 1405, 1430, //
    1577, 1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767, 1532, 1612, //
    1235, 1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799, //
    690, 799, 1716, 1024, 1024, 1255, 1300, 1126, 1300, 1260, 721, 1300, //
    1298, 569, 569, 1186, 569, 1995, 1298, 1253, 1300, 1300, 842, 1067, //
    803, 1298, 1212, 1675, 1212, 1212, 1075, 1303, 690, 1303, 1716,
];

/// DejaVu Sans Bold, from `' '` (32) to `'~'` (126).
pub const BOLD: [u16; 95] = [
    713, 934, 1067, 1716, 1425, 2052, 1786, 627, 936, 936, 1071, 1716, //
    778, 850, 778, 748, 1425, 1425, 1425, 1425, 1425, 1425, 1425, 1425, //
    1425, 1425, 819, 819, 1716, 1716, 1716, 1188, 2048, 1585, 1561, 1503, //
    1700, 1399, 1399, 1681, 1714, 762, 762, 1587, 1305, 2038, 1714, 1741, //
    1501, 1741, 1577, 1475, 1397, 1663, 1585, 2259, 1579, 1483, 1485, 936, //
    748, 936, 1716, 1024, 1024, 1382, 1466, 1214, 1466, 1389, 891, 1466, //
    1458, 702, 702, 1362, 702, 2134, 1458, 1407, 1466, 1466, 1010, 1219, //
    979, 1458, 1335, 1892, 1321, 1335, 1192, 1458, 748, 1458, 1716,
];

/// The width of `text` at `size` pixels, in pixels.
pub fn text_width(text: &str, bold: bool, size: f64) -> f64 {
    let table = if bold { &BOLD } else { &REGULAR };
    let widest = table[usize::from(b'W' - b' ')];
    let units: u64 = text
        .chars()
        .map(|c| match c {
            ' '..='~' => u64::from(table[c as usize - 32]),
            _ if unicode_width::UnicodeWidthChar::width(c) == Some(0) => 0,
            _ => u64::from(widest),
        })
        .sum();
    units as f64 * size / UNITS_PER_EM
}

#[cfg(test)]
mod tests {
    use super::*;

    const FONTS: &str = "/usr/share/fonts/truetype/dejavu";

    fn check(file: &str, table: &[u16; 95]) {
        let path = format!("{FONTS}/{file}");
        let data = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e}; install the DejaVu fonts: apt-get install fonts-dejavu-core")
        });
        let face = ttf_parser::Face::parse(&data, 0).expect("a font");
        assert_eq!(f64::from(face.units_per_em()), UNITS_PER_EM);
        for (at, c) in (' '..='~').enumerate() {
            let glyph = face.glyph_index(c).expect("a glyph");
            assert_eq!(
                face.glyph_hor_advance(glyph),
                Some(table[at]),
                "the width of {c:?} in {file}"
            );
        }
    }

    #[test]
    fn the_tables_are_the_fonts_own_metrics() {
        check("DejaVuSans.ttf", &REGULAR);
        check("DejaVuSans-Bold.ttf", &BOLD);
    }

    #[test]
    fn text_is_as_wide_as_its_characters() {
        // "hits" at 11 px: h 1298 + i 569 + t 803 + s 1067 = 3737 units.
        assert!((text_width("hits", false, 11.0) - 3737.0 * 11.0 / 2048.0).abs() < 1e-9);
        assert!(text_width("WWW", true, 11.0) > text_width("WWW", false, 11.0));
        assert_eq!(text_width("é", false, 11.0), text_width("W", false, 11.0));
    }

    #[test]
    fn characters_that_take_no_room_add_none() {
        // A combining acute accent, a zero-width space, a joiner, an emoji's variation
        // selector.
        for mark in ['\u{301}', '\u{200B}', '\u{200D}', '\u{FE0F}'] {
            assert_eq!(
                text_width(&format!("a{mark}{mark}{mark}b"), false, 11.0),
                text_width("ab", false, 11.0),
                "{:X}",
                mark as u32
            );
        }
    }
}
