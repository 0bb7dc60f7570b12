//! The operator console in a real headless Chromium (Debian's `chromium` driven through
//! `chromedriver` with `fantoccini`): log in, open the dead-letter group a test made, fix its
//! cause, retry the whole group through the preview, watch it drain; and, over plain HTTP, the
//! console's guards: sessions, CSRF tokens and the login limit.
//!
//! The browser test also takes a screenshot of every page at 1280 and 390 CSS pixels. They go
//! to `$PAYSYNC_CONSOLE_SCREENSHOTS` when set (`just console-screenshots` sets it to
//! `docs/console`), else under the target directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::Provider;
use paysync_store::{Store, Tx};
use paysync_testkit::browser::Browser;
use paysync_testkit::fantoccini::Locator;
use paysync_testkit::{
    TestBroker, TestDb, open_dead_letters, poll_until, stripe_fixture, verified_event,
};
use paysync_worker::{App, Event, Failure, Handler, Handlers};
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::Value;

use crate::helpers::*;

const TOKEN: &str = "console-admin-token-for-tests";
/// The event type whose handler fails until the test fixes its cause.
const BROKEN_TYPE: &str = "customer.tax_id.created";

/// A handler that fails permanently until `fixed`, then applies; counts applications per event.
struct Fixable {
    fixed: Arc<AtomicBool>,
    applied: Arc<Mutex<HashMap<String, u32>>>,
}

impl Handler for Fixable {
    fn handle<'a>(
        &'a self,
        _tx: &'a Tx<'a>,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if !self.fixed.load(Ordering::SeqCst) {
                return Err(Failure::permanent(
                    "test_tax_ids_unsupported",
                    std::io::Error::other(format!(
                        "tax ids are not mapped yet ({})",
                        event.meta.event_id
                    )),
                ));
            }
            *self
                .applied
                .lock()
                .unwrap()
                .entry(event.meta.event_id.clone())
                .or_default() += 1;
            Ok(())
        })
    }
}

struct Console {
    worker: Running,
    fixed: Arc<AtomicBool>,
    applied: Arc<Mutex<HashMap<String, u32>>>,
    store: Store,
    db: TestDb,
    broker: TestBroker,
}

/// A worker with the billing handlers, a fixable handler for [`BROKEN_TYPE`] and the console
/// on, with the three destinations registered so billing events make deliveries.
async fn console_worker() -> Console {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let store = db.store().await.unwrap();
    store
        .register_destinations(&["email", "chat", "hubspot"], "test")
        .await
        .unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(Mutex::new(HashMap::new()));
    let mut handlers: Handlers = paysync_worker::billing::handlers();
    handlers.register(
        Provider::Stripe,
        BROKEN_TYPE,
        Arc::new(Fixable {
            fixed: fixed.clone(),
            applied: applied.clone(),
        }),
    );
    let mut s = settings(&broker, &db, fast_retry(2));
    s.admin_token = Some(secrecy::SecretString::from(TOKEN.to_owned()));
    // The overview's queue depths come from the monitor: read them every second.
    s.monitor_interval = Duration::from_secs(1);
    let worker = spawn(App::build(s, handlers).await.unwrap()).await;
    Console {
        worker,
        fixed,
        applied,
        store,
        db,
        broker,
    }
}

/// Publishes real Stripe payloads, each under the id `<prefix><fixture name>` (the fixtures
/// share ids).
async fn publish_fixtures(publisher: &paysync_amqp::Publisher, prefix: &str, names: &[&str]) {
    for name in names {
        let mut body: Value = serde_json::from_slice(&stripe_fixture(name)).unwrap();
        body["id"] = Value::from(format!("{prefix}{}", name.trim_end_matches(".json")));
        let hook = verified_event(serde_json::to_vec(&body).unwrap());
        publisher.publish(&hook).await.unwrap();
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("PAYSYNC_CONSOLE_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        PathBuf::from,
    )
}

/// Screenshots of the current page at 1280 and 390 px (`<name>-1280.png`, `<name>-390.png`);
/// at each width the page must not be wider than the window (nothing cut off sideways: wide
/// tables scroll inside their own box).
async fn shoot(browser: &Browser, name: &str) {
    for width in [1280, 390] {
        browser.set_width(width).await.unwrap();
        let overflow = browser
            .client()
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{name} at {width} px is {overflow} px wider than the window"
        );
        // Every control can be found by a screen reader and reached from the keyboard: it has
        // a label, and nothing takes itself out of the tab order.
        let unlabelled = browser
            .client()
            .execute(
                "return [...document.querySelectorAll('input:not([type=hidden]), select, button, a')]
                   .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                                && !e.textContent.trim() && !e.placeholder)
                   .map(e => e.outerHTML)
                   .concat([...document.querySelectorAll('[tabindex]')]
                   .filter(e => e.tabIndex < 0).map(e => e.outerHTML));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(unlabelled, serde_json::json!([]), "{name}");
        browser
            .screenshot_full(&screenshot_dir().join(format!("{name}-{width}.png")))
            .await
            .unwrap();
    }
    browser.set_width(1280).await.unwrap();
}

/// The text of the first element matching `css`, waiting for it to appear.
async fn text(browser: &Browser, css: &str) -> String {
    browser
        .client()
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn path(browser: &Browser) -> String {
    let url = browser.client().current_url().await.unwrap();
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Clicks the first element matching `css` and waits until the browser is on a page whose
/// path (and query) starts with `lands_on` and that page has loaded.
async fn click(browser: &Browser, css: &str, lands_on: &str) {
    let before = browser.client().current_url().await.unwrap();
    browser
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    poll_until(
        Duration::from_secs(10),
        &format!("{css} leads to {lands_on}"),
        || async {
            let now = browser.client().current_url().await.ok()?;
            let state = browser
                .client()
                .execute("return document.readyState;", vec![])
                .await
                .ok()?;
            let loaded =
                state == "complete" && browser.client().find(Locator::Css("main")).await.is_ok();
            let moved = path(browser).await.starts_with(lands_on);
            // A form posted to the page it is on lands on the same URL: the new page is loaded
            // when the old one's elements are gone, which `loaded` cannot tell; callers wait
            // for an element of the new page instead.
            (loaded && moved && (now != before || lands_on.is_empty())).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_operator_logs_in_fixes_a_dead_letter_group_retries_it_and_watches_it_drain() {
    let c = console_worker().await;
    let publisher = publisher(&c.broker);
    // Billing state for the accounts, events and outbox pages: real Stripe payloads.
    publish_fixtures(
        &publisher,
        "evt_console_",
        &[
            "customer.updated.json",
            "customer.subscription.created.json",
            "invoice.paid.json",
            "charge.succeeded.json",
            "charge.refunded.json",
            "charge.dispute.created.json",
        ],
    )
    .await;
    let broken: Vec<String> = (0..6).map(|i| format!("evt_taxid_{i}")).collect();
    for id in &broken {
        publish_event(&publisher, id, BROKEN_TYPE).await;
    }
    poll_until(Duration::from_secs(60), "6 open dead letters", || async {
        (open_dead_letters(&c.store, 100).await.unwrap().len() == 6).then_some(())
    })
    .await
    .unwrap();
    let base = &c.worker.metrics_base;
    let browser = Browser::start().await.unwrap();
    let b = browser.client();

    // Without a session the console sends the operator to the login, and back after it.
    b.goto(&format!("{base}/console/dlq")).await.unwrap();
    assert_eq!(path(&browser).await, "/console/login?next=%2Fconsole%2Fdlq");
    shoot(&browser, "login").await;
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    b.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text(&browser, ".error").await,
        "That is not the admin token."
    );
    // Chromium may fill the field in again after a failed login: start from an empty one.
    let field = b.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(TOKEN).await.unwrap();
    click(&browser, "form button[type=submit]", "/console/dlq").await;
    assert_eq!(path(&browser).await, "/console/dlq");
    // The keyboard's first stop is the link that skips the navigation.
    {
        use paysync_testkit::fantoccini::actions::{InputSource, KeyAction, KeyActions};
        use paysync_testkit::fantoccini::key::Key;
        let tab: char = Key::Tab.into();
        let press = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: tab })
            .then(KeyAction::Up { value: tab });
        b.perform_actions(press).await.unwrap();
    }
    let first = b
        .execute(
            "return document.activeElement.getAttribute('href');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(first, "#main");
    shoot(&browser, "dlq").await;

    // The group: its title says why, it holds the six letters.
    let title = text(&browser, "table.groups tbody tr td a").await;
    assert!(
        title.starts_with("test_tax_ids_unsupported: tax ids are not mapped yet (evt_taxid_"),
        "{title}"
    );
    click(
        &browser,
        "table.groups tbody tr td a",
        "/console/dlq/letters?group=",
    )
    .await;
    let rows = b.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 6);
    shoot(&browser, "dlq-group").await;
    let group_url = b.current_url().await.unwrap();
    click(&browser, "tbody tr td.num a", "/console/dlq/letters/").await;
    let chain = text(&browser, "ol.chain").await;
    assert!(chain.contains("tax ids are not mapped yet"), "{chain}");
    let page = b.source().await.unwrap();
    assert!(!page.contains(TOKEN), "the token never appears on a page");
    shoot(&browser, "dlq-letter").await;

    // The cause is fixed; retry the whole group: first the preview, then the confirmation.
    c.fixed.store(true, Ordering::SeqCst);
    b.goto(group_url.as_str()).await.unwrap();
    click(
        &browser,
        "button[name=scope][value=group][formaction='/console/dlq/retry']",
        "/console/dlq/retry",
    )
    .await;
    assert_eq!(text(&browser, "[data-count]").await, "6");
    assert_eq!(
        open_dead_letters(&c.store, 100).await.unwrap().len(),
        6,
        "a preview changes nothing"
    );
    shoot(&browser, "dlq-retry-preview").await;
    click(&browser, "button.primary", "/console/dlq/letters?group=").await;
    assert_eq!(
        text(&browser, ".flash").await,
        format!(
            "Retried 6 of 6 dead letters (group {}).",
            group_url
                .query_pairs()
                .find(|(k, _)| k == "group")
                .unwrap()
                .1
        )
    );

    // The group drains: the dead-letter page shows none left, each event applied once.
    poll_until(Duration::from_secs(60), "the group drained", || async {
        b.goto(&format!("{base}/console/dlq")).await.unwrap();
        let status = text(&browser, "main").await;
        status.contains("No open dead letters").then_some(())
    })
    .await
    .unwrap();
    poll_until(Duration::from_secs(30), "6 events applied", || async {
        let applied = c.applied.lock().unwrap().clone();
        (applied.len() == 6).then_some(applied)
    })
    .await
    .unwrap();
    for id in &broken {
        let row = c.store.event("stripe", id).await.unwrap().unwrap();
        assert_eq!((row.outcome.as_str(), row.attempts), ("applied", 1), "{id}");
    }
    let applied = c.applied.lock().unwrap().clone();
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");

    // The other pages, with data, at both widths.
    let overview = poll_until(Duration::from_secs(30), "queue depths", || async {
        b.goto(&format!("{base}/console")).await.unwrap();
        let main = text(&browser, "main").await;
        main.contains("waiting to retry (delay levels)")
            .then_some(main)
    })
    .await
    .unwrap();
    for line in [
        "Nothing needs attention",
        "Events, last 5 min",
        "stripe applied 12",
        "work 0",
        "dead letters (before storing) 0",
        // The business table, from the billing fixtures: two charges succeeded, one of them
        // refunded, one dispute; no checkout.
        "Business, last 24 h / last 7 d",
        "Checkouts completed 0 0",
        "Checkout completion rate – –",
        "Payments succeeded (stripe) 2 2",
        "Payments failed (stripe) 0 0",
        "Dunning recovery rate (stripe) – –",
        "Refunds (stripe) 1 1",
        "Disputes (stripe) 1 1",
    ] {
        assert!(overview.contains(line), "{line:?} in {overview}");
    }
    shoot(&browser, "overview").await;
    b.goto(&format!("{base}/console/events")).await.unwrap();
    let listed = b.find_all(Locator::Css("tbody tr")).await.unwrap().len();
    assert_eq!(listed, 12, "6 billing events and 6 retried ones");
    shoot(&browser, "events").await;
    b.goto(&format!("{base}/console/events?type={BROKEN_TYPE}"))
        .await
        .unwrap();
    assert_eq!(b.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 6);
    b.goto(&format!(
        "{base}/console/events/stripe/evt_console_invoice.paid"
    ))
    .await
    .unwrap();
    assert!(text(&browser, "pre").await.contains("\"invoice\""));
    shoot(&browser, "event").await;
    b.goto(&format!("{base}/console/accounts")).await.unwrap();
    assert_eq!(b.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 4);
    shoot(&browser, "accounts").await;
    b.goto(&format!(
        "{base}/console/events/stripe/evt_console_invoice.paid"
    ))
    .await
    .unwrap();
    click(
        &browser,
        "dl.facts a[href^='/console/accounts/']",
        "/console/accounts/",
    )
    .await;
    assert!(text(&browser, "ol.timeline").await.contains("invoice.paid"));
    shoot(&browser, "account").await;
    b.goto(&format!("{base}/console/outbox")).await.unwrap();
    shoot(&browser, "outbox").await;
    b.goto(&format!("{base}/console/audit")).await.unwrap();
    let audit = text(&browser, "tbody tr").await;
    assert!(
        audit.contains("console") && audit.contains("dlq.retry"),
        "{audit}"
    );
    shoot(&browser, "audit").await;

    // Logging out ends the session.
    click(&browser, "form.logout button", "/console/login").await;
    b.goto(&format!("{base}/console/audit")).await.unwrap();
    assert!(path(&browser).await.starts_with("/console/login"));
    browser.close().await;
    c.worker.stop().await;
}

/// An HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn login(client: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    client
        .post(format!("{base}/console/login"))
        .form(&[("token", token), ("next", "/console/dlq")])
        .send()
        .await
        .unwrap()
}

/// The session cookie a successful login set (`name=value`).
fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers()[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn every_page_needs_a_session_every_form_its_token_and_failed_logins_are_limited() {
    let c = console_worker().await;
    let publisher = publisher(&c.broker);
    for i in 1..=3 {
        publish_event(&publisher, &format!("evt_guard_{i}"), BROKEN_TYPE).await;
    }
    poll_until(Duration::from_secs(60), "3 open dead letters", || async {
        (open_dead_letters(&c.store, 10).await.unwrap().len() == 3).then_some(())
    })
    .await
    .unwrap();
    let ids: Vec<String> = open_dead_letters(&c.store, 10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    let id = &ids[0];
    let base = &c.worker.metrics_base;
    let client = http();

    // No session: every page redirects to the login, and so does a form post.
    for page in [
        "/console",
        "/console/dlq",
        "/console/dlq/letters",
        &format!("/console/dlq/letters/{id}"),
        "/console/events",
        "/console/events/stripe/evt_guard_1",
        "/console/accounts",
        "/console/accounts/1",
        "/console/outbox",
        "/console/outbox/deliveries/1",
        "/console/audit",
    ] {
        let r = client.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{page}");
        let to = r.headers()[LOCATION].to_str().unwrap();
        assert!(
            to.starts_with("/console/login?next=%2Fconsole"),
            "{page}: {to}"
        );
    }
    let r = client
        .post(format!("{base}/console/dlq/retry"))
        .form(&[("scope", "all"), ("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/console/login?next=%2Fconsole");
    // A cookie that is not a session is no session either.
    let r = client
        .get(format!("{base}/console"))
        .header(COOKIE, "paysync_console=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // A login sets an HttpOnly, SameSite=Strict cookie for /console; Secure behind TLS.
    let ok = login(&client, base, TOKEN).await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()[LOCATION], "/console/dlq");
    let set = ok.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.ends_with("; Path=/console; HttpOnly; SameSite=Strict"),
        "{set}"
    );
    let cookie = session_cookie(&ok);
    let tls = client
        .post(format!("{base}/console/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(
        tls.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );

    // A form post without the CSRF token, or with another, is refused and changes nothing.
    let page = client
        .get(format!("{base}/console/dlq"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let csrf = csrf_of(&page.text().await.unwrap());
    let other = csrf_of(
        &client
            .get(format!("{base}/console/dlq"))
            .header(COOKIE, session_cookie(&tls))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_ne!(csrf, other, "each session has its own token");
    for form in [
        vec![("scope", "all"), ("confirm", "yes")],
        vec![
            ("scope", "all"),
            ("confirm", "yes"),
            ("csrf", other.as_str()),
        ],
    ] {
        for action in ["/console/dlq/retry", "/console/dlq/archive"] {
            let r = client
                .post(format!("{base}{action}"))
                .header(COOKIE, &cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{action} {form:?}");
            assert!(r.text().await.unwrap().contains("nothing was changed"));
        }
    }
    assert_eq!(open_dead_letters(&c.store, 10).await.unwrap().len(), 3);
    assert!(
        c.store.actions(10).await.unwrap().is_empty(),
        "nothing audited"
    );
    // With its token an archive goes through, after a preview, audited as console: first two
    // ticked letters, then every open one (the third).
    let archive = |fields: Vec<(&'static str, String)>| {
        let mut fields = fields;
        fields.push(("csrf", csrf.clone()));
        let request = client
            .post(format!("{base}/console/dlq/archive"))
            .header(COOKIE, &cookie)
            .form(&fields);
        async move { request.send().await.unwrap() }
    };
    let two = vec![
        ("scope", "ids".to_owned()),
        ("id", ids[0].clone()),
        ("id", ids[1].clone()),
    ];
    let preview = archive(two.clone()).await;
    assert_eq!(preview.status(), 200);
    assert!(preview.text().await.unwrap().contains("data-count=\"2\""));
    assert_eq!(open_dead_letters(&c.store, 10).await.unwrap().len(), 3);
    let mut confirmed = two;
    confirmed.push(("confirm", "yes".into()));
    assert_eq!(archive(confirmed).await.status(), 303);
    let open: Vec<String> = open_dead_letters(&c.store, 10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(open, [ids[2].clone()]);
    let preview = archive(vec![("scope", "all".into())]).await;
    assert!(preview.text().await.unwrap().contains("data-count=\"1\""));
    let done = archive(vec![("scope", "all".into()), ("confirm", "yes".into())]).await;
    assert_eq!(done.status(), 303);
    assert!(open_dead_letters(&c.store, 10).await.unwrap().is_empty());
    let actions = c.store.actions(10).await.unwrap();
    assert_eq!(
        actions
            .iter()
            .map(|a| (a.actor.as_str(), a.action.as_str(), a.affected))
            .collect::<Vec<_>>(),
        [("console", "dlq.archive", 1), ("console", "dlq.archive", 2)]
    );

    // Logout needs the token too, and ends the session.
    let r = client
        .post(format!("{base}/console/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = client
        .get(format!("{base}/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the session ended");

    // Wrong tokens: an error each time, then after five the address must wait, right token
    // or not.
    for _ in 0..5 {
        let r = login(&client, base, "console-admin-token-for-testX").await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get(SET_COOKIE).is_none());
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("That is not the admin token.")
        );
    }
    let r = login(&client, base, TOKEN).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("Too many failed attempts"));
    c.worker.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_there_is_no_console() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    let worker = spawn_worker(&broker, &db, fast_retry(2), Handlers::new()).await;
    let r = http()
        .get(format!("{}/console/login", worker.metrics_base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    worker.stop().await;
}

/// A logged-in HTTP session: its cookie and its CSRF token.
async fn session(client: &reqwest::Client, base: &str) -> (String, String) {
    let cookie = session_cookie(&login(client, base, TOKEN).await);
    let page = client
        .get(format!("{base}/console/audit"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let csrf = csrf_of(&page.text().await.unwrap());
    (cookie, csrf)
}

#[tokio::test]
async fn replays_searches_and_outbox_actions_go_through_the_operator_code_as_console() {
    let c = console_worker().await;
    let publisher = publisher(&c.broker);
    publish_fixtures(
        &publisher,
        "evt_ops_",
        &[
            "customer.updated.json",
            "customer.subscription.created.json",
            "invoice.paid.json",
            "charge.refunded.json",
        ],
    )
    .await;
    let invoice = "evt_ops_invoice.paid";
    let row = logged(&c.db, invoice).await;
    let account = row
        .account_id
        .expect("the invoice's customer has an account");
    let base = &c.worker.metrics_base;
    let client = http();
    let (cookie, csrf) = session(&client, base).await;
    let get = |path: String| {
        let request = client.get(format!("{base}{path}")).header(COOKIE, &cookie);
        async move { request.send().await.unwrap() }
    };
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        let mut form = form;
        form.push(("csrf", csrf.clone()));
        let request = client
            .post(format!("{base}{path}"))
            .header(COOKIE, &cookie)
            .form(&form);
        async move { request.send().await.unwrap() }
    };

    // Finding the account: by a customer's email in another case, by customer id; one hit
    // opens it. Its page and the event search by account show the invoice.
    for q in [
        "SIGNIN0.1948655930080856@restmail.net",
        "cus_JsuO3bmrj0QlAw",
    ] {
        let r = get(format!("/console/accounts?q={}", urlencode(q))).await;
        assert_eq!(r.status(), 303, "{q}");
        let to = r.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(to.starts_with("/console/accounts/"), "{q}: {to}");
    }
    let r = get("/console/accounts?q=nobody%40example.com".to_owned()).await;
    assert!(r.text().await.unwrap().contains("No account matches"));
    let page = get(format!("/console/accounts/{account}")).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("invoice.paid"));
    let page = get(format!(
        "/console/events?account={account}&type=invoice.paid"
    ))
    .await
    .text()
    .await
    .unwrap();
    assert!(page.contains(invoice), "the search by account finds it");
    let page = get("/console/events?id=evt_ops_invoice.paid".into())
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(invoice), "an id without a provider is found");
    let r = get("/console/events?since=yesterday".into()).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("since: &quot;yesterday&quot; is not a time")
    );

    // Replay: a preview counts, the confirmation republishes, the handler runs again.
    let form = vec![
        ("provider", "stripe".to_owned()),
        ("event_id", invoice.to_owned()),
    ];
    let preview = post("/console/events/replay", form.clone()).await;
    assert!(preview.text().await.unwrap().contains("data-count=\"1\""));
    let mut confirmed = form;
    confirmed.push(("confirm", "yes".into()));
    let done = post("/console/events/replay", confirmed).await;
    assert_eq!(done.status(), 303);
    poll_until(Duration::from_secs(30), "the replay applied", || async {
        let row = c.store.event("stripe", invoice).await.unwrap()?;
        (row.replays == 1).then_some(())
    })
    .await
    .unwrap();

    // The outbox: a destination paused with a reason, forced open, back to auto and resumed;
    // a pending delivery skipped with a reason (refused without one).
    let paused = post(
        "/console/outbox/destination",
        vec![
            ("name", "chat".into()),
            ("action", "pause".into()),
            ("minutes", "30".into()),
            ("reason", "chat vendor incident".into()),
        ],
    )
    .await;
    assert_eq!(paused.status(), 303);
    let chat = c.store.destination("chat").await.unwrap().unwrap();
    assert_eq!(chat.pause_reason.as_deref(), Some("chat vendor incident"));
    for action in ["open", "auto", "resume"] {
        let r = post(
            "/console/outbox/destination",
            vec![("name", "chat".into()), ("action", action.into())],
        )
        .await;
        assert_eq!(r.status(), 303, "{action}");
    }
    let chat = c.store.destination("chat").await.unwrap().unwrap();
    assert_eq!((chat.forced.as_str(), chat.paused_until), ("auto", None));
    let id = poll_until(Duration::from_secs(30), "a pending delivery", || async {
        let page = get("/console/outbox?state=pending".into())
            .await
            .text()
            .await
            .unwrap();
        let at = page.find("name=\"id\" value=\"")? + "name=\"id\" value=\"".len();
        Some(
            page[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>(),
        )
    })
    .await
    .unwrap();
    let refused = post("/console/outbox/skip", vec![("id", id.clone())]).await;
    assert_eq!(refused.status(), 400);
    let skipped = post(
        "/console/outbox/skip",
        vec![("id", id.clone()), ("reason", "sent by hand".into())],
    )
    .await;
    assert_eq!(skipped.status(), 303);
    let page = get(format!("/console/outbox/deliveries/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("sent by hand"), "the delivery page shows why");
    let r = get("/console/outbox?destination=fax".into()).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("unknown destination &quot;fax&quot;")
    );

    // Every one of these is in the audit trail as the console's.
    let actions: Vec<(String, String)> = c
        .store
        .actions(50)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.actor, a.action))
        .collect();
    for action in ["events.replay", "outbox.skip"] {
        assert!(
            actions.contains(&("console".to_owned(), action.to_owned())),
            "{action}: {actions:?}"
        );
    }
    assert!(
        actions.iter().all(|(actor, _)| actor == "console"),
        "{actions:?}"
    );
    c.worker.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('@', "%40")
}

#[tokio::test]
async fn outages_of_the_database_or_the_broker_show_on_the_page_and_change_nothing() {
    let c = console_worker().await;
    publish_event(&publisher(&c.broker), "evt_outage_1", BROKEN_TYPE).await;
    poll_until(Duration::from_secs(60), "1 open dead letter", || async {
        (open_dead_letters(&c.store, 10).await.unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();
    c.worker.stop().await;
    let client = http();

    // The database unreachable: the overview says which figures it could not read, the other
    // pages and actions answer 503 with the cause.
    let mut s = settings(&c.broker, &c.db, fast_retry(2));
    s.admin_token = Some(secrecy::SecretString::from(TOKEN.to_owned()));
    s.store.url = format!(
        "postgres://postgres@127.0.0.1:{}/paysync",
        paysync_testkit::closed_port()
    );
    let worker = spawn(App::build(s, Handlers::new()).await.unwrap()).await;
    let base = &worker.metrics_base;
    let (cookie, csrf) = session(&client, base).await;
    let overview = client
        .get(format!("{base}/console"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    let page = overview.text().await.unwrap();
    assert!(page.contains("Some figures could not be read"), "{page}");
    assert!(page.contains("event log: "), "{page}");
    let dlq = client
        .get(format!("{base}/console/dlq"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(dlq.status(), 503);
    assert!(dlq.text().await.unwrap().contains("no database connection"));
    let retry = client
        .post(format!("{base}/console/dlq/retry"))
        .header(COOKIE, &cookie)
        .form(&[("scope", "all"), ("confirm", "yes"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 503);
    worker.stop().await;

    // The broker unreachable: a retry says it was not confirmed and how to continue; the
    // letter stays open.
    let mut s = settings(&c.broker, &c.db, fast_retry(2));
    s.admin_token = Some(secrecy::SecretString::from(TOKEN.to_owned()));
    s.amqp.url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        paysync_testkit::closed_port()
    );
    s.amqp.connect_timeout = Duration::from_secs(2);
    let worker = spawn(App::build(s, Handlers::new()).await.unwrap()).await;
    let base = &worker.metrics_base;
    let (cookie, csrf) = session(&client, base).await;
    let retry = client
        .post(format!("{base}/console/dlq/retry"))
        .header(COOKIE, &cookie)
        .form(&[("scope", "all"), ("confirm", "yes"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 503);
    let page = retry.text().await.unwrap();
    assert!(
        page.contains("republish not confirmed after 0 of 1; run the same command again"),
        "{page}"
    );
    assert_eq!(open_dead_letters(&c.store, 10).await.unwrap().len(), 1);
    assert!(
        !page.contains("guest:guest"),
        "no broker credentials on a page"
    );
    worker.stop().await;
}
