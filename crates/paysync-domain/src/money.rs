//! Amounts for people: minor units and a lowercase ISO 4217 code (as the providers send them)
//! into `$12.34`, `€1,234.50`, `¥1,200` or `12.34 CHF`.
//!
//! - Decimals: none for Stripe's zero-decimal currencies, three for the three-decimal ones,
//!   two otherwise.
//! - usd, eur, gbp and jpy show their symbol before the number; any other code shows after
//!   it, upper-cased.
//! - A code that is not three ASCII letters (empty included) is unknown: two decimals, no
//!   code.
//! - Commas group thousands; a negative amount starts with `-`.

/// Currencies without minor units (Stripe's list).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// The few symbols everyone reads the same way; every other currency shows its code.
const SYMBOLS: &[(&str, &str)] = &[("usd", "$"), ("eur", "€"), ("gbp", "£"), ("jpy", "¥")];

/// The lowercase code if `currency` looks like one (three ASCII letters, surrounding blanks
/// ignored, any case).
fn code(currency: &str) -> Option<String> {
    let c = currency.trim();
    (c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic())).then(|| c.to_ascii_lowercase())
}

/// How many decimals `currency` has (any case; 2 when unknown).
pub fn decimals(currency: &str) -> u32 {
    match code(currency) {
        Some(c) if ZERO_DECIMAL.contains(&c.as_str()) => 0,
        Some(c) if THREE_DECIMAL.contains(&c.as_str()) => 3,
        _ => 2,
    }
}

/// `minor` units of `currency` as people write them (see the module docs). Never panics.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let code = code(currency);
    let places = decimals(currency);
    let abs = minor.unsigned_abs();
    let scale = 10u64.pow(places);
    let (whole, frac) = (abs / scale, abs % scale);
    let digits = whole.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let number = if places == 0 {
        grouped
    } else {
        format!("{grouped}.{frac:0width$}", width = places as usize)
    };
    let sign = if minor < 0 { "-" } else { "" };
    let Some(code) = code else {
        return format!("{sign}{number}");
    };
    match SYMBOLS.iter().find(|(c, _)| *c == code) {
        Some((_, symbol)) => format!("{sign}{symbol}{number}"),
        None => format!("{sign}{number} {}", code.to_ascii_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_four_symbols_go_before_the_number() {
        assert_eq!(format_amount(1234, "usd"), "$12.34");
        assert_eq!(format_amount(123_450, "eur"), "€1,234.50");
        assert_eq!(format_amount(99, "gbp"), "£0.99");
        assert_eq!(format_amount(1200, "jpy"), "¥1,200");
    }

    #[test]
    fn other_codes_go_after_the_number_in_capitals() {
        assert_eq!(format_amount(1234, "chf"), "12.34 CHF");
        assert_eq!(format_amount(123_456_789, "cad"), "1,234,567.89 CAD");
        assert_eq!(format_amount(1_000_000, "krw"), "1,000,000 KRW");
        assert_eq!(format_amount(12_345, "kwd"), "12.345 KWD");
        assert_eq!(format_amount(1, "xyz"), "0.01 XYZ", "a code we do not know");
    }

    #[test]
    fn every_zero_decimal_currency_has_no_decimals() {
        for c in ZERO_DECIMAL {
            assert_eq!(decimals(c), 0, "{c}");
            let (big, small) = if *c == "jpy" {
                ("¥1,234,567".to_owned(), "-¥7".to_owned())
            } else {
                let upper = c.to_ascii_uppercase();
                (format!("1,234,567 {upper}"), format!("-7 {upper}"))
            };
            assert_eq!(format_amount(1_234_567, c), big);
            assert_eq!(format_amount(-7, c), small);
        }
        assert_eq!(ZERO_DECIMAL.len(), 16, "Stripe's list");
    }

    #[test]
    fn every_three_decimal_currency_has_three() {
        for c in THREE_DECIMAL {
            assert_eq!(decimals(c), 3, "{c}");
            let upper = c.to_ascii_uppercase();
            assert_eq!(format_amount(1_234_567, c), format!("1,234.567 {upper}"));
            assert_eq!(format_amount(5, c), format!("0.005 {upper}"));
            assert_eq!(format_amount(-1000, c), format!("-1.000 {upper}"));
        }
        assert_eq!(THREE_DECIMAL.len(), 5);
    }

    #[test]
    fn two_decimals_otherwise() {
        for c in [
            "usd", "eur", "gbp", "chf", "cad", "aud", "sek", "xyz", "", "??",
        ] {
            assert_eq!(decimals(c), 2, "{c:?}");
        }
    }

    #[test]
    fn small_amounts_keep_their_leading_zeros() {
        assert_eq!(format_amount(0, "eur"), "€0.00");
        assert_eq!(format_amount(5, "usd"), "$0.05");
        assert_eq!(format_amount(10, "usd"), "$0.10");
        assert_eq!(format_amount(0, "jpy"), "¥0");
        assert_eq!(format_amount(0, "bhd"), "0.000 BHD");
    }

    #[test]
    fn thousands_are_grouped_with_commas() {
        let cases = [
            (99_999, "$999.99"),
            (100_000, "$1,000.00"),
            (99_999_999, "$999,999.99"),
            (100_000_000, "$1,000,000.00"),
            (1_234_567_890_123, "$12,345,678,901.23"),
        ];
        for (minor, want) in cases {
            assert_eq!(format_amount(minor, "usd"), want);
        }
        assert_eq!(format_amount(999, "jpy"), "¥999");
        assert_eq!(format_amount(1000, "jpy"), "¥1,000");
    }

    #[test]
    fn negatives_start_with_a_minus() {
        assert_eq!(format_amount(-2500, "usd"), "-$25.00");
        assert_eq!(format_amount(-1, "eur"), "-€0.01");
        assert_eq!(format_amount(-1_200, "jpy"), "-¥1,200");
        assert_eq!(format_amount(-123_456, "chf"), "-1,234.56 CHF");
        assert_eq!(format_amount(-5, ""), "-0.05");
    }

    #[test]
    fn the_extremes_fit() {
        assert_eq!(
            format_amount(i64::MIN, "usd"),
            "-$92,233,720,368,547,758.08"
        );
        assert_eq!(format_amount(i64::MAX, "usd"), "$92,233,720,368,547,758.07");
        assert_eq!(
            format_amount(i64::MIN, "jpy"),
            "-¥9,223,372,036,854,775,808"
        );
        assert_eq!(
            format_amount(i64::MAX, "kwd"),
            "9,223,372,036,854,775.807 KWD"
        );
    }

    #[test]
    fn the_code_may_come_in_any_case_and_with_blanks() {
        assert_eq!(format_amount(5, "USD"), "$0.05");
        assert_eq!(format_amount(1200, "JpY"), "¥1,200");
        assert_eq!(format_amount(1234, " chf\n"), "12.34 CHF");
        assert_eq!(decimals("KWD"), 3);
        assert_eq!(decimals(" jpy "), 0);
    }

    #[test]
    fn an_unknown_or_empty_code_gives_two_decimals_and_no_code() {
        for c in [
            "",
            "   ",
            "us",
            "usdx",
            "u$d",
            "12a",
            "€€€",
            "ÿen",
            "us d",
            "jpy!",
            "<b>",
        ] {
            assert_eq!(format_amount(123_456, c), "1,234.56", "{c:?}");
        }
    }

    /// The digits of `|minor|` with the leading zeros dropped.
    fn plain_digits(minor: i64) -> String {
        minor.unsigned_abs().to_string()
    }

    proptest! {
        #[test]
        fn it_never_panics_whatever_the_currency(minor in any::<i64>(), cur in any::<String>()) {
            let s = format_amount(minor, &cur);
            prop_assert!(!s.is_empty());
            prop_assert_eq!(s.starts_with('-'), minor < 0);
        }

        #[test]
        fn taking_the_decoration_off_gives_back_the_digits(
            minor in any::<i64>(),
            cur in prop_oneof![
                Just("usd"), Just("eur"), Just("gbp"), Just("jpy"), Just("krw"), Just("kwd"),
                Just("chf"), Just("CAD"), Just(""), Just("nope"),
            ],
        ) {
            let s = format_amount(minor, cur);
            let upper = cur.to_ascii_uppercase();
            let mut rest = s.strip_prefix('-').unwrap_or(&s);
            for symbol in ["$", "€", "£", "¥"] {
                rest = rest.strip_prefix(symbol).unwrap_or(rest);
            }
            if upper.len() == 3 {
                rest = rest.strip_suffix(&format!(" {upper}")).unwrap_or(rest);
            }
            let digits: String = rest.chars().filter(|c| *c != ',' && *c != '.').collect();
            prop_assert!(digits.chars().all(|c| c.is_ascii_digit()), "{s}");
            let want = plain_digits(minor);
            prop_assert_eq!(digits.trim_start_matches('0'), want.trim_start_matches('0'), "{}", s);
        }

        #[test]
        fn the_number_is_well_formed(
            minor in any::<i64>(),
            cur in prop_oneof![Just("usd"), Just("jpy"), Just("bhd"), Just("chf")],
        ) {
            let s = format_amount(minor, cur);
            let number: String = s
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
                .collect();
            let (whole, frac) = match number.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (number.as_str(), None),
            };
            prop_assert_eq!(frac.map_or(0, str::len) as u32, decimals(cur), "{}", s);
            let groups: Vec<&str> = whole.split(',').collect();
            prop_assert!((1..=3).contains(&groups[0].len()), "{}", s);
            prop_assert!(groups[0] == "0" || !groups[0].starts_with('0'), "{}", s);
            prop_assert!(groups[1..].iter().all(|g| g.len() == 3), "{}", s);
            // Read back, it is the same amount.
            let scale = 10u128.pow(decimals(cur));
            let whole: u128 = whole.replace(',', "").parse().expect("digits");
            let frac: u128 = frac.map_or(Ok(0), str::parse).expect("digits");
            prop_assert_eq!(whole * scale + frac, u128::from(minor.unsigned_abs()));
        }
    }
}

/// Minor units of a decimal amount written as text (`"30.00"`, `"-0.01"`, `"23"`,
/// `"50000.0"`) in a currency with `places` decimals: exact, no floating point. `None` for
/// anything that is not a plain decimal, has more significant decimals than the currency, or
/// overflows.
pub fn parse_minor(text: &str, places: u32) -> Option<i64> {
    let (negative, digits) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !plain(whole)
        || !plain(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > places as usize {
        return None;
    }
    let mut minor: i64 = 0;
    for b in whole.bytes() {
        minor = minor.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    for i in 0..places as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        minor = minor.checked_mul(10)?.checked_add(d)?;
    }
    Some(if negative { -minor } else { minor })
}

#[cfg(test)]
mod parse_tests {
    use super::parse_minor;

    #[test]
    fn decimal_text_is_exact_minor_units() {
        for (text, places, want) in [
            ("30.00", 2, Some(3000)),
            ("-0.01", 2, Some(-1)),
            ("23", 2, Some(2300)),
            ("50000.0", 2, Some(5_000_000)),
            ("0.1", 2, Some(10)),
            ("100", 0, Some(100)),
            ("1.005", 2, None),
            ("1.", 2, None),
            (".5", 2, None),
            ("1e3", 2, None),
            ("", 2, None),
            ("99999999999999999999", 2, None),
            ("12.345", 3, Some(12_345)),
        ] {
            assert_eq!(parse_minor(text, places), want, "{text}");
        }
    }
}
