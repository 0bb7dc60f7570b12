//! Minor units to major units, for the CRM's `amount` (a plain decimal string).

/// Decimal places of `currency` (ISO 4217, any case): 0 for the zero-decimal currencies, 3
/// for the three-decimal ones, 2 otherwise (Stripe's lists).
pub(crate) fn exponent(currency: &str) -> u32 {
    const ZERO: [&str; 16] = [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];
    let c = currency.to_ascii_lowercase();
    if ZERO.contains(&c.as_str()) {
        0
    } else if THREE.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// `minor` in major units as a plain decimal (`1234` usd → `12.34`, `500` jpy → `500`,
/// `-5` usd → `-0.05`), no grouping, no symbol.
pub(crate) fn major_units(minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    if exp == 0 {
        return minor.to_string();
    }
    let scale = 10u64.pow(exp);
    let abs = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exp as usize
    )
}

/// Stand-in for `paysync_domain::money::format_amount` until that lands (`12.34 USD`).
pub(crate) fn format_amount(minor: i64, currency: &str) -> String {
    format!(
        "{} {}",
        major_units(minor, currency),
        currency.to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_units_follow_the_currency_exponent() {
        assert_eq!(major_units(1234, "usd"), "12.34");
        assert_eq!(major_units(5, "EUR"), "0.05");
        assert_eq!(major_units(-5, "usd"), "-0.05");
        assert_eq!(major_units(500, "jpy"), "500");
        assert_eq!(major_units(1234, "kwd"), "1.234");
        assert_eq!(major_units(0, "usd"), "0.00");
        assert_eq!(major_units(i64::MIN, "usd"), "-92233720368547758.08");
    }
}
