//! The results table: medians of repeated runs, printed as aligned text and written as
//! Markdown.

/// The figures of one measurement over the runs.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    /// No figures yet.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds one run's figure.
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Whether no run produced a figure.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many runs produced a figure.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the two middle figures for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The smallest figure.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The largest figure.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `min–max` formatted with `unit`, or `–` for fewer than two runs.
    pub fn range(&self, unit: &str) -> String {
        if self.len() < 2 {
            return "–".into();
        }
        format!("{}–{}{unit}", num(self.min()), num(self.max()))
    }
}

impl From<&[f64]> for Samples {
    /// The figures of the runs, in order.
    fn from(values: &[f64]) -> Self {
        Self(values.to_vec())
    }
}

/// A number for the table: thousands separators above 100, two significant decimals below.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x.abs() >= 100.0 {
        let rounded = x.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if rounded < 0 {
            out.insert(0, '-');
        }
        out
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// The median, with its unit.
    pub figure: String,
    /// `min–max` over the runs.
    pub range: String,
    /// The ratio to the ceiling measured in the same runs, if the row has one.
    pub ratio: String,
    /// How it was measured, and the checks that passed.
    pub notes: String,
}

impl Row {
    /// A row.
    pub fn new(
        name: impl Into<String>,
        figure: impl Into<String>,
        range: impl Into<String>,
        ratio: impl Into<String>,
        notes: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            figure: figure.into(),
            range: range.into(),
            ratio: ratio.into(),
            notes: notes.into(),
        }
    }

    /// A row of a figure measured over the runs: the median of `samples` with its `unit`,
    /// their min–max beside it.
    pub fn median(
        name: impl Into<String>,
        samples: &Samples,
        unit: &str,
        ratio: impl Into<String>,
        notes: impl Into<String>,
    ) -> Self {
        let figure = format!("{} {unit}", num(samples.median()));
        Self::new(name, figure, samples.range(""), ratio, notes)
    }

    /// A row whose measurement failed.
    pub fn failed(name: impl Into<String>, error: &anyhow::Error) -> Self {
        let error = format!("{error:#}").replace('\n', " ");
        Self::new(name, "FAILED", "–", "–", error)
    }
}

/// What the table was measured on.
#[derive(Debug, Clone)]
pub struct Header {
    /// UTC date and time of the start.
    pub date: String,
    /// Cores (`nproc`).
    pub nproc: usize,
    /// Total memory.
    pub memory: String,
    /// RabbitMQ version.
    pub rabbitmq: String,
    /// PostgreSQL version.
    pub postgres: String,
    /// The exact command line.
    pub command: String,
    /// `quick` or `full`, and the number of runs.
    pub mode: String,
    /// Wall time of the whole benchmark, once known.
    pub wall: Option<String>,
    /// The machine's CPU over the whole benchmark (busy and stolen shares), once known.
    pub cpu: Option<String>,
    /// What was done before each load to start it on a settled broker and machine.
    pub between_loads: Option<String>,
}

const COLUMNS: [&str; 5] = ["row", "figure (median)", "min–max", "ratio", "notes"];

fn cells(row: &Row) -> [&str; 5] {
    [&row.name, &row.figure, &row.range, &row.ratio, &row.notes]
}

fn header_lines(header: &Header) -> Vec<(String, String)> {
    let mut lines = vec![
        ("date (UTC)".to_owned(), header.date.clone()),
        ("command".to_owned(), header.command.clone()),
        ("mode".to_owned(), header.mode.clone()),
        ("nproc".to_owned(), header.nproc.to_string()),
        ("memory".to_owned(), header.memory.clone()),
        ("RabbitMQ".to_owned(), header.rabbitmq.clone()),
        ("PostgreSQL".to_owned(), header.postgres.clone()),
    ];
    if let Some(wall) = &header.wall {
        lines.push(("wall time".to_owned(), wall.clone()));
    }
    if let Some(cpu) = &header.cpu {
        lines.push(("CPU".to_owned(), cpu.clone()));
    }
    if let Some(rest) = &header.between_loads {
        lines.push(("loads".to_owned(), rest.clone()));
    }
    lines
}

/// The table as aligned plain text (the notes column is last and not padded).
pub fn text(header: &Header, rows: &[Row]) -> String {
    let mut out = String::new();
    for (k, v) in header_lines(header) {
        out.push_str(&format!("{k:<11} {v}\n"));
    }
    out.push('\n');
    let mut widths = COLUMNS.map(|c| c.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(cells(row)) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |values: [&str; 5]| {
        let mut s = String::new();
        for (i, v) in values.iter().enumerate() {
            if i == 4 {
                s.push_str(v);
            } else {
                let pad = widths[i].saturating_sub(v.chars().count());
                s.push_str(v);
                s.push_str(&" ".repeat(pad));
                s.push_str("  ");
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(COLUMNS));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line([&rule[0], &rule[1], &rule[2], &rule[3], &rule[4]]));
    for row in rows {
        out.push_str(&line(cells(row)));
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The table as Markdown.
pub fn markdown(header: &Header, rows: &[Row]) -> String {
    let mut out = String::from("# paysync benchmark\n\n");
    for (k, v) in header_lines(header) {
        if k == "command" {
            out.push_str(&format!("- {k}: `{v}`\n"));
        } else {
            out.push_str(&format!("- {k}: {}\n", md_cell(&v)));
        }
    }
    out.push('\n');
    out.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
    out.push_str("|---|---:|---:|---:|---|\n");
    for row in rows {
        let c = cells(row).map(md_cell);
        out.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_numbers() {
        let mut s = Samples::new();
        for v in [3.0, 1.0, 2.0] {
            s.push(v);
        }
        assert_eq!(s.median(), 2.0);
        s.push(10.0);
        assert_eq!(s.median(), 2.5);
        assert_eq!((s.min(), s.max()), (1.0, 10.0));
        assert_eq!(num(1_234_567.4), "1,234,567");
        assert_eq!(num(123.0), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
    }

    #[test]
    fn a_measured_row_shows_the_median_with_its_unit_and_the_range() {
        let mut s = Samples::new();
        for v in [1200.0, 1000.0, 1100.0] {
            s.push(v);
        }
        let row = Row::median("r", &s, "msg/s", "–", "n");
        assert_eq!(
            (row.figure.as_str(), row.range.as_str()),
            ("1,100 msg/s", "1,000–1,200")
        );
        let one = Row::median("r", &Samples::from(&[5.0][..]), "req/s", "×0.50", "n");
        assert_eq!(
            (one.figure.as_str(), one.range.as_str()),
            ("5.00 req/s", "–")
        );
    }

    #[test]
    fn tables_have_one_line_per_row() {
        let header = Header {
            date: "d".into(),
            nproc: 2,
            memory: "m".into(),
            rabbitmq: "r".into(),
            postgres: "p".into(),
            command: "c".into(),
            mode: "quick".into(),
            wall: None,
            cpu: Some("busy 90.0 %, stolen by the host 2.0 %".into()),
            between_loads: None,
        };
        let rows = vec![Row::new("a", "1 msg/s", "–", "–", "x | y")];
        assert!(text(&header, &rows).contains("a    1 msg/s"));
        assert!(
            text(&header, &rows).contains("CPU         busy 90.0 %, stolen by the host 2.0 %\n")
        );
        assert!(markdown(&header, &rows).contains("| a | 1 msg/s | – | – | x \\| y |"));
    }
}
