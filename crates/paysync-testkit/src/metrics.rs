//! Reading an app's Prometheus exposition the way a test needs it: fetch a scrape, then read one
//! sample out of it by metric name and labels.
//!
//! Rule of thumb: tests name the labels they mean; the order the exporter writes them in does
//! not matter here.

use anyhow::Context as _;

/// The text of `http://127.0.0.1:<port>/metrics`.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    response
        .text()
        .await
        .with_context(|| format!("reading the body of {url}"))
}

/// The value of the sample of `metric` whose labels are exactly `labels` (in any order), or 0
/// when the scrape has no such sample (a counter not yet incremented is absent or 0 alike).
pub fn sample(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let found = match series.split_once('{') {
                Some((name, rest)) => {
                    name == metric && same_labels(rest.strip_suffix('}')?, labels)
                }
                None => series == metric && labels.is_empty(),
            };
            found.then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Whether `a="1",b="2"` holds exactly the pairs of `labels`. Label values of ours never
/// contain `",`, so splitting on it is enough here.
fn same_labels(text: &str, labels: &[(&str, &str)]) -> bool {
    let found: Vec<(&str, &str)> = text
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key, value.trim_end_matches('"')))
        })
        .collect();
    found.len() == labels.len() && labels.iter().all(|l| found.contains(l))
}

#[cfg(test)]
mod tests {
    use super::sample;

    const SCRAPE: &str = "# TYPE paysync_x counter\n\
        paysync_x{outcome=\"applied\",provider=\"stripe\"} 3\n\
        paysync_x{outcome=\"duplicate\",provider=\"stripe\"} 1\n\
        paysync_x_count 7\n\
        paysync_in_flight 2\n";

    #[test]
    fn a_sample_is_found_by_name_and_labels_in_any_order() {
        assert_eq!(
            sample(
                SCRAPE,
                "paysync_x",
                &[("provider", "stripe"), ("outcome", "applied")]
            ),
            3.0
        );
        assert_eq!(sample(SCRAPE, "paysync_in_flight", &[]), 2.0);
        assert_eq!(sample(SCRAPE, "paysync_x_count", &[]), 7.0);
    }

    #[test]
    fn a_missing_sample_or_a_partial_label_set_reads_as_zero() {
        assert_eq!(sample(SCRAPE, "paysync_x", &[("outcome", "applied")]), 0.0);
        assert_eq!(sample(SCRAPE, "paysync_y", &[]), 0.0);
        assert_eq!(sample(SCRAPE, "paysync_x", &[]), 0.0);
    }
}
