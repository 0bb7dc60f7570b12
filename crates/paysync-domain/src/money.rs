//! Amounts for people: minor units and a lowercase ISO 4217 code (as the providers send them)
//! into `$12.34`, `€1,234.50`, `¥1,200` or `12.34 CHF`.

/// Currencies without minor units (Stripe's list).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// The few symbols everyone reads the same way; every other currency shows its code.
const SYMBOLS: &[(&str, &str)] = &[("usd", "$"), ("eur", "€"), ("gbp", "£"), ("jpy", "¥")];

/// How many decimals `currency` has (2 when unknown).
pub fn decimals(currency: &str) -> u32 {
    let c = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&c.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// `minor` units of `currency` as people write them.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let code = currency.trim().to_ascii_lowercase();
    let places = decimals(&code);
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
    match SYMBOLS.iter().find(|(c, _)| *c == code) {
        Some((_, symbol)) => format!("{sign}{symbol}{number}"),
        None if code.is_empty() => format!("{sign}{number}"),
        None => format!("{sign}{number} {}", code.to_ascii_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn symbols_codes_and_decimals() {
        assert_eq!(format_amount(1234, "usd"), "$12.34");
        assert_eq!(format_amount(123_450, "eur"), "€1,234.50");
        assert_eq!(format_amount(99, "gbp"), "£0.99");
        assert_eq!(format_amount(1200, "jpy"), "¥1,200");
        assert_eq!(format_amount(1234, "chf"), "12.34 CHF");
        assert_eq!(format_amount(1_000_000, "krw"), "1,000,000 KRW");
        assert_eq!(format_amount(12_345, "kwd"), "12.345 KWD");
        assert_eq!(format_amount(5, "USD"), "$0.05");
        assert_eq!(format_amount(-2500, "usd"), "-$25.00");
        assert_eq!(format_amount(100, ""), "1.00");
        assert_eq!(format_amount(0, "eur"), "€0.00");
        assert_eq!(
            format_amount(i64::MIN, "usd"),
            "-$92,233,720,368,547,758.08"
        );
    }

    proptest! {
        #[test]
        fn the_digits_survive(minor in any::<i64>(), cur in prop_oneof![
            Just("usd"), Just("jpy"), Just("kwd"), Just("chf"), Just("")
        ]) {
            let s = format_amount(minor, cur);
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            let want = minor.unsigned_abs().to_string();
            prop_assert_eq!(digits.trim_start_matches('0'), want.trim_start_matches('0'));
            prop_assert_eq!(s.starts_with('-'), minor < 0);
        }
    }
}
