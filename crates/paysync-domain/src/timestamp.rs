//! RFC 3339 timestamps as the providers write them, read leniently into unix milliseconds.
//!
//! Square writes 0, 3 or 9 fractional digits, Authorize.Net up to 7 (and its history API no
//! zone at all), PayPal an offset on some resources and an impossible month in its simulator.
//! Rule of thumb: a timestamp that does not parse is `None`, never an error of the event: no
//! event is refused because of its clock.

/// Unix milliseconds of `s`, an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional fraction
/// of any length (truncated to milliseconds), then `Z`, `±HH:MM` or nothing (UTC). `T` may be
/// a space or lowercase. `None` for anything else, including impossible dates.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b.len() > 40 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &b[start..i.min(start + 3)];
        millis = digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        millis *= 10i64.pow(3 - digits.len() as u32);
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some(secs * 1000 + millis)
}

fn leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_providers_formats_parse() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2022-07-13T20:30:59.037339943Z", Some(1_657_744_259_037)),
            ("2017-04-15T21:13:43.2977159Z", Some(1_492_290_823_297)),
            ("2017-02-09T19:18:42.167", Some(1_486_667_922_167)),
            ("2020-11-22T21:16:51.086Z", Some(1_606_079_811_086)),
            ("2024-03-01T10:00:00-07:00", Some(1_709_312_400_000)),
            ("2024-03-01T17:00:00+00:00", Some(1_709_312_400_000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("2018-19-12T22:20:32.000Z", None),
            ("2023-02-29T00:00:00Z", None),
            ("2024-03-01T24:00:00Z", None),
            ("2024-03-01T10:00:00.Z", None),
            ("2024-03-01T10:00:00Zjunk", None),
            ("2024-03-01", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339_ms(s), want, "{s}");
        }
    }

    proptest! {
        #[test]
        fn any_input_is_total(s in ".{0,45}") {
            let _ = parse_rfc3339_ms(&s);
        }

        #[test]
        fn whole_seconds_round_trip(secs in 0i64..4_102_444_800) {
            let days = secs.div_euclid(86_400);
            // Civil date of `days` by counting back from the algorithm's inverse.
            let (mut y, mut d) = (1970i64, days);
            loop {
                let len = if leap(y) { 366 } else { 365 };
                if d < len { break; }
                d -= len;
                y += 1;
            }
            let mut m = 1;
            while d >= days_in_month(y, m) { d -= days_in_month(y, m); m += 1; }
            let rest = secs.rem_euclid(86_400);
            let s = format!("{y:04}-{m:02}-{:02}T{:02}:{:02}:{:02}Z", d + 1, rest / 3600, rest % 3600 / 60, rest % 60);
            prop_assert_eq!(parse_rfc3339_ms(&s), Some(secs * 1000));
        }
    }
}
