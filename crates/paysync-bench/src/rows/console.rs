//! The `console` group: how fast the operator console's pages answer on a busy installation's
//! data (100,000 events, 10,000 open dead letters, 10,000 accounts), served by a real
//! `paysync worker` with `PAYSYNC_ADMIN_TOKEN` set, one logged-in operator clicking through
//! them one request at a time.
//!
//! Rule of thumb: the data is written straight in SQL (`sql/console-seed.sql`), in seconds;
//! the pages are the worker's own, read through its own queries, and each answer is checked
//! (200 and HTML, a full page of rows and a next link for the lists, the search's redirect to
//! the account).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, COOKIE, HOST, LOCATION, SET_COOKIE};
use hyper::{Request, StatusCode};
use tokio_postgres::Client;

use super::common::{Checks, STOP_GRACE, database_env, ready, spawn_paysync};
use crate::pg;
use crate::procs::free_addr;
use crate::report::{Row, Samples, num};
use crate::run::Bench;

/// The data set: every count of the acceptance point, and the rest of a busy installation.
const ACCOUNTS: u64 = 10_000;
const EVENTS: u64 = 100_000;
const LETTERS: u64 = 10_000;
const DELIVERIES: u64 = 3_000;
const ACTIONS: u64 = 1_000;

/// The seed, with `{accounts}` … `{actions}` for the counts.
const SEED: &str = include_str!("../../sql/console-seed.sql");

/// Requests of each page per run, after one warm-up request; the pages are visited in turn,
/// one request each, this many times.
const ROUNDS: usize = 21;

/// Rows of every console list (`paysync_worker`'s `console::PAGE`).
const LIST_ROWS: usize = 50;

/// The admin token of the worker under test (the console's password).
const TOKEN: &str = "paysync-bench-console-token";

/// How long one answer may take before the row fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The summary row: the slowest answer of every page.
const SLOWEST: &str = "console, slowest answer of any page";

/// What a page must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200 and HTML.
    Page,
    /// 200 and HTML with a full page of rows and a link to the next page.
    List,
    /// 303 to the account found (a search with one hit).
    ToAccount,
}

/// The pages, in the order they are visited: what the row calls it, and what it must answer.
const PAGES: [(&str, Expect); 18] = [
    ("overview", Expect::Page),
    ("dead-letter groups", Expect::Page),
    (
        "dead letters of the largest group, first page",
        Expect::List,
    ),
    (
        "dead letters of the largest group, after its 5,000th",
        Expect::List,
    ),
    ("one dead letter", Expect::Page),
    ("events, first page", Expect::List),
    ("events of a common type (invoice.paid)", Expect::List),
    (
        "events of a rare type (charge.dispute.created)",
        Expect::List,
    ),
    ("events of the busiest account", Expect::List),
    ("event search by id, no provider", Expect::Page),
    ("events, a page in the middle of the log", Expect::List),
    ("one event", Expect::Page),
    ("accounts, first page", Expect::List),
    ("account search by email (redirect)", Expect::ToAccount),
    (
        "account search by customer id (redirect)",
        Expect::ToAccount,
    ),
    ("the busiest account, with its timeline", Expect::Page),
    ("outbox deliveries", Expect::List),
    ("audit trail", Expect::List),
];

fn row_name(label: &str) -> String {
    format!("console: {label}")
}

/// The rows this group fills, for a failure.
pub(super) fn names() -> Vec<String> {
    PAGES
        .iter()
        .map(|(label, _)| row_name(label))
        .chain([SLOWEST.to_owned()])
        .collect()
}

/// The seeded rows the pages look at.
struct Targets {
    /// The largest dead-letter group.
    group: String,
    /// The id of its 5,000th letter.
    deep_letter: i64,
    /// The account with the most events.
    busy_account: i64,
    /// A Stripe event in the middle of the log: its id and its provider event id.
    middle: (i64, String),
    /// An ordinary account, its customer's email and customer id.
    searched: (i64, String, String),
}

impl Targets {
    async fn read(client: &Client) -> anyhow::Result<Self> {
        let group: String = client
            .query_one(
                "select fingerprint from dead_letters where state = 'open' \
                 group by fingerprint order by count(*) desc limit 1",
                &[],
            )
            .await?
            .get(0);
        let deep_letter: i64 = client
            .query_one(
                "select id from dead_letters where state = 'open' and fingerprint = $1 \
                 order by id offset 4999 limit 1",
                &[&group],
            )
            .await
            .context("the largest group has fewer than 5,000 letters")?
            .get(0);
        let busy_account: i64 = client
            .query_one(
                "select account_id from event_log where account_id is not null \
                 group by account_id order by count(*) desc limit 1",
                &[],
            )
            .await?
            .get(0);
        let middle = client
            .query_one(
                "select id, event_id from event_log where provider = 'stripe' \
                   and id >= (select (min(id) + max(id)) / 2 from event_log) \
                 order by id limit 1",
                &[],
            )
            .await?;
        let searched = client
            .query_one(
                "select a.id, pc.email, pc.customer_id from accounts a \
                 join provider_customers pc on pc.account_id = a.id \
                 where a.external_ref = 'acct_4242'",
                &[],
            )
            .await?;
        Ok(Self {
            group,
            deep_letter,
            busy_account,
            middle: (middle.get(0), middle.get(1)),
            searched: (searched.get(0), searched.get(1), searched.get(2)),
        })
    }

    /// The path of each page of [`PAGES`], in order.
    fn paths(&self) -> Vec<String> {
        let (middle_id, middle_event) = &self.middle;
        let (_, email, customer) = &self.searched;
        let group = &self.group;
        vec![
            "/console".into(),
            "/console/dlq".into(),
            format!("/console/dlq/letters?group={group}"),
            format!(
                "/console/dlq/letters?group={group}&after={}",
                self.deep_letter
            ),
            format!("/console/dlq/letters/{}", self.deep_letter),
            "/console/events".into(),
            "/console/events?type=invoice.paid".into(),
            "/console/events?type=charge.dispute.created".into(),
            format!("/console/events?account={}", self.busy_account),
            format!("/console/events?id={middle_event}"),
            format!("/console/events?before={middle_id}"),
            format!("/console/events/stripe/{middle_event}"),
            "/console/accounts".into(),
            format!("/console/accounts?q={}", email.replace('@', "%40")),
            format!("/console/accounts?q={customer}"),
            format!("/console/accounts/{}", self.busy_account),
            "/console/outbox".into(),
            "/console/audit".into(),
        ]
    }
}

/// Every page's rows and the summary row, `bench.runs` runs on one seeded schema and one
/// worker.
pub(super) async fn measure(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let schema = bench.schema_for("console").await?;
    let client = pg::connect(&bench.db_url, Some(&schema)).await?;
    let seeded = seed(&client).await?;
    bench.progress(format!(
        "console: seeded {} events, {} dead letters, {} accounts in {} s",
        num(EVENTS as f64),
        num(LETTERS as f64),
        num(ACCOUNTS as f64),
        num(seeded.as_secs_f64())
    ));
    let mut seed_checks = Checks::default();
    check_counts(&client, &mut seed_checks).await?;
    let targets = Targets::read(&client).await?;
    let paths = targets.paths();

    let prefix = bench.prefix_for("console");
    let metrics = free_addr()?;
    let mut env = database_env(bench, &schema);
    env.push(("PAYSYNC_METRICS_ADDR", metrics.to_string()));
    env.push(("PAYSYNC_ADMIN_TOKEN", TOKEN.to_owned()));
    let mut worker = spawn_paysync(bench, "console-worker", "worker", &prefix, env)?;
    ready(&mut worker, metrics).await?;

    let mut browser = Browser::open(metrics).await?;
    browser.login(TOKEN).await?;
    let account_path = format!("/console/accounts/{}", targets.searched.0);
    let mut times: Vec<PageTimes> = PAGES.iter().map(|_| PageTimes::default()).collect();
    let mut checks: Vec<Checks> = PAGES.iter().map(|_| Checks::default()).collect();
    for run in 0..bench.runs {
        bench.quiesce(&format!("console-{run}")).await;
        // One warm-up request each: the worker's pooled connections open and the pages' rows
        // in PostgreSQL's buffers, as for an operator who has the console open.
        for path in &paths {
            browser.get(path).await?;
        }
        let mut run_ms: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); PAGES.len()];
        for _ in 0..ROUNDS {
            for (i, path) in paths.iter().enumerate() {
                let answer = browser.get(path).await?;
                check(&mut checks[i], run, PAGES[i].1, &answer, &account_path);
                run_ms[i].push(answer.secs * 1000.0);
                times[i].bytes = answer.body.len();
            }
        }
        for (t, ms) in times.iter_mut().zip(&run_ms) {
            t.add_run(ms);
        }
        let (slowest, t) = slowest_page(&times);
        bench.progress(format!(
            "console, run {}/{}: slowest median {} ({} ms), slowest answer {} ms",
            run + 1,
            bench.runs,
            PAGES[slowest].0,
            num(t.p50.max()),
            num(times.iter().map(|t| t.max.max()).fold(0.0, f64::max)),
        ));
    }
    worker.ensure_running()?;
    worker.terminate(STOP_GRACE).await?;

    let mut rows: Vec<Row> = PAGES
        .iter()
        .zip(&paths)
        .zip(times.iter().zip(&checks))
        .map(|(((label, expect), path), (t, c))| page_row(label, *expect, path, t, c))
        .collect();
    let failed = checks.iter().filter(|c| !c.is_ok()).count();
    seed_checks.expect(failed == 0, || {
        format!("{failed} pages answered otherwise (see their rows)")
    });
    rows.push(slowest_row(
        &times,
        &seed_checks.note("the seeded counts, and every answer of every page as its row says"),
    ));
    Ok(rows)
}

/// Fills the fresh schema and analyzes it; returns how long that took.
async fn seed(client: &Client) -> anyhow::Result<Duration> {
    let sql = SEED
        .replace("{accounts}", &ACCOUNTS.to_string())
        .replace("{events}", &EVENTS.to_string())
        .replace("{letters}", &LETTERS.to_string())
        .replace("{deliveries}", &DELIVERIES.to_string())
        .replace("{actions}", &ACTIONS.to_string());
    let start = Instant::now();
    // One implicit transaction (the seed's temporary tables live until its end).
    client
        .batch_execute(&sql)
        .await
        .context("seeding the console's data")?;
    client
        .batch_execute("analyze")
        .await
        .context("analyzing the seeded schema")?;
    Ok(start.elapsed())
}

/// Checks that the seed wrote what the acceptance point names.
async fn check_counts(client: &Client, checks: &mut Checks) -> anyhow::Result<()> {
    for (table, expected) in [
        ("event_log", EVENTS),
        ("dead_letters", LETTERS),
        ("accounts", ACCOUNTS),
        ("provider_customers", ACCOUNTS),
        ("outbox_deliveries", DELIVERIES),
        ("operator_actions", ACTIONS),
    ] {
        let n: i64 = client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await?
            .get(0);
        checks.expect(u64::try_from(n) == Ok(expected), || {
            format!("{table} holds {n} rows, not {expected}")
        });
    }
    Ok(())
}

/// One page's figures over the runs.
#[derive(Debug, Default)]
struct PageTimes {
    /// Each run's median, ms.
    p50: Samples,
    /// Each run's slowest answer, ms.
    max: Samples,
    /// The size of its last answer's body.
    bytes: usize,
}

impl PageTimes {
    fn add_run(&mut self, ms: &[f64]) {
        let run = Samples::from(ms);
        self.p50.push(run.median());
        self.max.push(run.max());
    }
}

/// The page with the largest median (in any run), and its figures.
fn slowest_page(times: &[PageTimes]) -> (usize, &PageTimes) {
    times
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.p50.max().total_cmp(&b.1.p50.max()))
        .unwrap_or((0, &times[0]))
}

fn page_row(label: &str, expect: Expect, path: &str, t: &PageTimes, checks: &Checks) -> Row {
    let (size, expected) = match expect {
        Expect::Page => (
            format!("{} KB of HTML", num(t.bytes as f64 / 1000.0)),
            "200, HTML".to_owned(),
        ),
        Expect::List => (
            format!("{} KB of HTML", num(t.bytes as f64 / 1000.0)),
            format!("200, HTML, {LIST_ROWS} rows and a next link"),
        ),
        Expect::ToAccount => (
            "the search's 303 alone".to_owned(),
            "303 to the account".to_owned(),
        ),
    };
    Row::new(
        row_name(label),
        format!("p50 {} / max {} ms", num(t.p50.median()), num(t.max.max())),
        if t.p50.len() < 2 {
            "–".to_owned()
        } else {
            format!("p50 {}", t.p50.range(" ms"))
        },
        "–",
        format!("GET {path}, {size}; {}", checks.note(&expected)),
    )
}

fn slowest_row(times: &[PageTimes], note: &str) -> Row {
    let (max_i, max_t) = times
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.max.max().total_cmp(&b.1.max.max()))
        .unwrap_or((0, &times[0]));
    let (p50_i, p50_t) = slowest_page(times);
    let worst = max_t.max.max();
    Row::new(
        SLOWEST,
        format!("{} ms", num(worst)),
        "–",
        format!("×{:.2} of 1 s", worst / 1000.0),
        format!(
            "the slowest of all {} answers: {}; the largest median: {} ({} ms); {} events, {} open dead letters in 5 groups, {} accounts (one customer and 1–4 payments each), {} deliveries, {} audit rows, seeded in SQL and analyzed; paysync worker with PAYSYNC_ADMIN_TOKEN, one logged-in session on one keep-alive connection, the pages in turn, one request at a time, {ROUNDS} rounds per run after a warm-up; {note}",
            num((ROUNDS * PAGES.len() * times[0].p50.len()) as f64),
            PAGES[max_i].0,
            PAGES[p50_i].0,
            num(p50_t.p50.median()),
            num(EVENTS as f64),
            num(LETTERS as f64),
            num(ACCOUNTS as f64),
            num(DELIVERIES as f64),
            num(ACTIONS as f64),
        ),
    )
}

/// Checks one answer against what its page must answer.
fn check(checks: &mut Checks, run: usize, expect: Expect, answer: &Answer, account_path: &str) {
    let ok = match expect {
        Expect::Page | Expect::List => {
            answer.status == StatusCode::OK && answer.content_type.starts_with("text/html")
        }
        Expect::ToAccount => {
            answer.status == StatusCode::SEE_OTHER
                && answer.location.as_deref() == Some(account_path)
        }
    };
    let rows = list_rows(&answer.body);
    let full =
        expect != Expect::List || (rows == LIST_ROWS && contains(&answer.body, b"rel=\"next\""));
    checks.expect(ok && full, || {
        format!(
            "run {run}: {} {:?}, location {:?}, {rows} rows",
            answer.status, answer.content_type, answer.location
        )
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The rows of a page's last table (`<tr` within its last `<tbody>`).
fn list_rows(html: &[u8]) -> usize {
    let text = String::from_utf8_lossy(html);
    let Some(start) = text.rfind("<tbody>") else {
        return 0;
    };
    let body = &text[start..];
    let body = body.find("</tbody>").map_or(body, |end| &body[..end]);
    body.matches("<tr").count()
}

/// One answer, timed from the request's send to its body's last byte.
struct Answer {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    set_cookie: Option<String>,
    body: Bytes,
    secs: f64,
}

/// A logged-in operator's browser: one keep-alive connection and the session cookie.
struct Browser {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    cookie: Option<String>,
}

impl Browser {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            sender: crate::http::connect(addr).await?,
            cookie: None,
        })
    }

    /// Logs in with `token`: the console answers 303 with the session cookie.
    async fn login(&mut self, token: &str) -> anyhow::Result<()> {
        let request = Request::post("/console/login")
            .header(HOST, self.addr.to_string())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "token={token}&next=%2Fconsole"
            ))))
            .context("building the login")?;
        let answer = self.send(request).await?;
        anyhow::ensure!(
            answer.status == StatusCode::SEE_OTHER,
            "the console's login answered {} (expected 303)",
            answer.status
        );
        let cookie = answer
            .set_cookie
            .as_deref()
            .and_then(|c| c.split(';').next())
            .filter(|c| c.starts_with("paysync_console=") && c.len() > "paysync_console=".len())
            .context("the console's login set no session cookie")?;
        self.cookie = Some(cookie.to_owned());
        Ok(())
    }

    /// `GET path` with the session cookie. A redirect to the login page means the session is
    /// gone: an error, not an answer.
    async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        let mut request = Request::get(path).header(HOST, self.addr.to_string());
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie.as_str());
        }
        let answer = self
            .send(request.body(Full::default()).context("building a GET")?)
            .await
            .with_context(|| format!("GET {path}"))?;
        if let Some(to) = &answer.location {
            anyhow::ensure!(
                !to.starts_with("/console/login"),
                "GET {path}: sent to the login page, the session is gone"
            );
        }
        Ok(answer)
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.sender.ready().await.context("connection not ready")?;
            let start = Instant::now();
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            let secs = start.elapsed().as_secs_f64();
            let header = |name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            anyhow::Ok(Answer {
                status: parts.status,
                content_type: header(CONTENT_TYPE).unwrap_or_default(),
                location: header(LOCATION),
                set_cookie: header(SET_COOKIE),
                body,
                secs,
            })
        })
        .await
        .with_context(|| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_counts_the_rows_of_its_last_table() {
        let html = b"<table><tbody><tr><td>a</td></tr></tbody></table>\
                     <table><thead><tr><th>x</th></tr></thead><tbody>\
                     <tr><td>1</td></tr>\n<tr class=\"x\"><td>2</td></tr></tbody></table>";
        assert_eq!(list_rows(html), 2);
        assert_eq!(list_rows(b"<p>none</p>"), 0);
    }

    #[test]
    fn every_page_has_a_row_and_the_seed_every_count() {
        assert_eq!(names().len(), PAGES.len() + 1);
        for placeholder in [
            "{accounts}",
            "{events}",
            "{letters}",
            "{deliveries}",
            "{actions}",
        ] {
            assert!(SEED.contains(placeholder), "{placeholder}");
        }
    }
}
