//! The application destination end to end: events recorded by the store's `Tx::record_app`
//! (as the worker does), delivered by the real `AppSender` built from `Settings` to the
//! testkit's fake application, which records every request as it came. Signatures are checked
//! with the domain's `verify` under each secret of a rotation, bodies byte for byte against the
//! stored ones, and an account's events arrive in order whatever fails in between.

use std::collections::BTreeMap;
use std::time::Duration;

use paysync_dispatcher::destinations::app::AppSettings;
use paysync_dispatcher::{App, LaneConfig, Lanes, Settings};
use paysync_domain::Provider;
use paysync_domain::breaker::BreakerPolicy;
use paysync_domain::outbound::Destination;
use paysync_domain::standard_webhooks::{Secret, verify};
use paysync_store::{NewAppEvent, Store};
use paysync_testkit::fakes::Reply;
use paysync_testkit::fakes::app::{AppRequest, FakeApp, too_many, unavailable};
use paysync_testkit::{RunningApp, TestDb, poll_until, sample, scrape};
use secrecy::SecretString;

use crate::helpers::{fast_lane, settings, states};

const DEADLINE: Duration = Duration::from_secs(30);
const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn new_secret() -> String {
    Secret::serialize(&[0x5a; 32])
}

/// Both secrets of a rotation, old first.
fn rotation() -> Vec<Secret> {
    vec![
        Secret::parse(OLD).expect("secret"),
        Secret::parse(&new_secret()).expect("secret"),
    ]
}

fn app_settings(db: &TestDb, fake: &FakeApp, lane: LaneConfig) -> Settings {
    Settings {
        app: Some(AppSettings {
            timeout: Duration::from_secs(5),
            ..AppSettings::new(SecretString::from(fake.url()), rotation())
        }),
        lanes: Lanes {
            app: lane,
            ..Lanes::default()
        },
        ..settings(db, "app-test")
    }
}

async fn start(settings: Settings) -> (RunningApp, u16) {
    let app = App::build(settings).await.expect("dispatcher builds");
    let port = app.metrics_port();
    (RunningApp::spawn(|stop| app.run_until_stopped(stop)), port)
}

async fn account(db: &TestDb) -> i64 {
    db.client()
        .await
        .expect("client")
        .query_one("insert into accounts default values returning id", &[])
        .await
        .expect("account")
        .get(0)
}

/// A body as the application gets it: not canonical JSON on purpose (spacing, key order, an
/// escape and a raw non-ASCII character), so any re-serialisation would show.
fn body_of(id: &str, account: i64, seq: i64) -> String {
    format!(
        "{{\"type\":\"payment.succeeded\", \"id\":\"{id}\",\"data\":{{\"account\":{account},\
         \"seq\":{seq},\"plan\":\"Pro \\u00e9 — é\",\"amount\":4900}}}}"
    )
}

/// Records the event `seq` of `account` with its delivery, in a transaction of its own (as
/// the worker does for one change); its id and body.
async fn record(store: &Store, account: i64, seq: i64) -> (String, String) {
    let id = format!("evt_ps_{account}_{seq}");
    let body = body_of(&id, account, seq);
    let event = NewAppEvent {
        id: id.clone(),
        account_id: account,
        seq,
        kind: "payment.succeeded",
        body: body.clone(),
        provider: Provider::Stripe,
    };
    let mut conn = store.conn().await.expect("conn");
    let tx = conn.transaction().await.expect("begin");
    tx.record_app(&[], &[event]).await.expect("record");
    tx.commit().await.expect("commit");
    (id, body)
}

/// A store with the app destination configured (so recording writes deliveries).
async fn store(db: &TestDb) -> Store {
    let store = db.store().await.expect("store");
    store
        .register_destinations(&["app"], "test")
        .await
        .expect("configure app");
    store
}

/// Checks one request as a Standard Webhooks receiver would, under each rotation secret; the
/// body must be the stored one byte for byte.
fn assert_signed(r: &AppRequest, stored: &BTreeMap<String, String>) {
    assert_eq!(r.method, "POST");
    let id = r.webhook_id().expect("webhook-id");
    let body = stored
        .get(id)
        .unwrap_or_else(|| panic!("{id} is not a recorded event"));
    assert_eq!(r.body, body.as_bytes(), "{id}: the stored body, unchanged");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("user-agent"), Some("paysync"));
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let sig = r.header("webhook-signature").expect("webhook-signature");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for one in [OLD.to_owned(), new_secret()] {
        let secret = [Secret::parse(&one).expect("secret")];
        assert_eq!(
            verify(&secret, id, ts, sig, &r.body, now, 300),
            Ok(()),
            "{id} verifies with each secret of the rotation"
        );
    }
    let stranger = [Secret::parse(&Secret::serialize(&[1; 32])).expect("secret")];
    assert!(verify(&stranger, id, ts, sig, &r.body, now, 300).is_err());
}

/// The position in `requests` of each request for `id`.
fn positions(requests: &[AppRequest], id: &str) -> Vec<usize> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.webhook_id() == Some(id))
        .map(|(i, _)| i)
        .collect()
}

async fn until_all_sent(db: &TestDb, n: i64) {
    poll_until(DEADLINE, &format!("{n} deliveries sent"), || async {
        (states(db).await == [("sent".to_owned(), n)]).then_some(())
    })
    .await
    .expect("all sent");
}

#[tokio::test]
async fn two_accounts_events_arrive_signed_with_their_stored_bodies_in_order() {
    let db = TestDb::new();
    let store = store(&db).await;
    let fake = FakeApp::start().await;
    let (a, b) = (account(&db).await, account(&db).await);
    let mut stored = BTreeMap::new();
    let mut order = Vec::new();
    for (acc, seq) in [(a, 1), (b, 1), (a, 2), (b, 2)] {
        let (id, body) = record(&store, acc, seq).await;
        stored.insert(id.clone(), body);
        order.push(id);
    }
    let (app, _) = start(app_settings(&db, &fake, fast_lane(Destination::App))).await;
    let got = fake.wait_for_delivered(4, DEADLINE).await;
    until_all_sent(&db, 4).await;
    app.stop().await.expect("stops");

    let requests = fake.requests();
    assert_eq!(requests.len(), 4, "each event once, nothing refused");
    for r in &got {
        assert_signed(r, &stored);
        assert_eq!(r.target, format!("/hooks/{}", fake.token()));
    }
    let mut ids: Vec<&str> = got.iter().filter_map(AppRequest::webhook_id).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = order.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    for acc in [a, b] {
        let first = positions(&requests, &format!("evt_ps_{acc}_1"));
        let second = positions(&requests, &format!("evt_ps_{acc}_2"));
        assert!(first[0] < second[0], "account {acc}: 1 before 2");
    }
    // The deliveries name the event, and the attempts record no URL or token.
    let c = db.client().await.expect("client");
    let rows = c
        .query(
            "select d.source_id, d.account_id, d.attempts from outbox_deliveries d \
             where d.destination = 'app' order by d.id",
            &[],
        )
        .await
        .expect("rows");
    let seen: Vec<(String, i64, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        [
            (order[0].clone(), a, 1),
            (order[1].clone(), b, 1),
            (order[2].clone(), a, 1),
            (order[3].clone(), b, 1),
        ]
    );
}

#[tokio::test]
async fn an_accounts_next_event_waits_until_its_failing_first_one_is_delivered() {
    let db = TestDb::new();
    let store = store(&db).await;
    let fake = FakeApp::start().await;
    let (a, b) = (account(&db).await, account(&db).await);
    let mut stored = BTreeMap::new();
    for (acc, seq) in [(a, 1), (a, 2), (b, 1), (b, 2)] {
        let (id, body) = record(&store, acc, seq).await;
        stored.insert(id, body);
    }
    let (a1, a2) = (format!("evt_ps_{a}_1"), format!("evt_ps_{a}_2"));
    let (b1, b2) = (format!("evt_ps_{b}_1"), format!("evt_ps_{b}_2"));
    // a's first event meets a down application twice, then gets through.
    fake.for_event(&a1, unavailable(), 2);
    // Retries half a second apart: b's events have all the time to go meanwhile.
    let mut lane = fast_lane(Destination::App);
    lane.retry.base = Duration::from_millis(500);
    lane.retry.max_delay = Duration::from_millis(500);
    let (app, _) = start(app_settings(&db, &fake, lane)).await;
    fake.wait_for_delivered(4, DEADLINE).await;
    until_all_sent(&db, 4).await;
    app.stop().await.expect("stops");

    let requests = fake.requests();
    assert_eq!(requests.len(), 6, "a1 three times, the others once");
    let statuses: Vec<u16> = positions(&requests, &a1)
        .iter()
        .map(|&i| requests[i].status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    let a1_sent = *positions(&requests, &a1).last().expect("a1");
    let a2_first = positions(&requests, &a2)[0];
    assert!(
        a2_first > a1_sent,
        "a2 went only after a1 was delivered: {:?}",
        requests
            .iter()
            .map(|r| (r.webhook_id(), r.status))
            .collect::<Vec<_>>()
    );
    // Another account does not wait for a: b's both went while a1 was failing.
    let b2_at = positions(&requests, &b2)[0];
    assert!(positions(&requests, &b1)[0] < b2_at);
    assert!(b2_at < a1_sent, "b is not held back by a");
    // Each attempt was signed anew (its own timestamp), and every one verifies.
    for r in &requests {
        assert_signed(r, &stored);
    }
    let c = db.client().await.expect("client");
    let outcomes: Vec<String> = c
        .query(
            "select t.outcome from outbox_attempts t join outbox_deliveries d \
               on d.id = t.delivery_id where d.source_id = $1 order by t.attempt",
            &[&a1],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "sent"]);
}

#[tokio::test]
async fn a_429_pauses_the_destination_for_its_retry_after() {
    let db = TestDb::new();
    let store = store(&db).await;
    let fake = FakeApp::start().await;
    let a = account(&db).await;
    let (id, body) = record(&store, a, 1).await;
    fake.script.next(too_many(2), 1);
    let (app, port) = start(app_settings(&db, &fake, fast_lane(Destination::App))).await;
    fake.wait_for_delivered(1, DEADLINE).await;
    until_all_sent(&db, 1).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].status, requests[1].status), (429, 200));
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "nothing reached it during the Retry-After ({gap:?})"
    );
    assert_signed(&requests[1], &BTreeMap::from([(id.clone(), body)]));
    let row = store.destination("app").await.expect("read").expect("row");
    assert!(
        row.pause_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("rate_limited")),
        "{:?}",
        row.pause_reason
    );
    let c = db.client().await.expect("client");
    let attempts: i32 = c
        .query_one(
            "select attempts from outbox_deliveries where source_id = $1",
            &[&id],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(attempts, 1, "the throttled attempt was not counted");
    let text = scrape(port).await.expect("scrape");
    assert_eq!(
        sample(
            &text,
            "paysync_outbox_rate_limit_pauses_total",
            &[("destination", "app")]
        ),
        1.0
    );
    app.stop().await.expect("stops");
}

#[tokio::test]
async fn a_410_disables_the_destination_until_an_operator_resumes_it() {
    let db = TestDb::new();
    let store = store(&db).await;
    let fake = FakeApp::start().await;
    let a = account(&db).await;
    let mut stored = BTreeMap::new();
    for seq in [1, 2] {
        let (id, body) = record(&store, a, seq).await;
        stored.insert(id, body);
    }
    // The application answers 410 once, echoing its own URL (with its token) in the body.
    fake.script.next(
        Reply::Status {
            status: 410,
            body: format!("endpoint {} removed", fake.url()),
            retry_after: None,
        },
        1,
    );
    let (app, _) = start(app_settings(&db, &fake, fast_lane(Destination::App))).await;
    let disabled = poll_until(DEADLINE, "the app destination disabled", || async {
        store
            .destination("app")
            .await
            .expect("read")?
            .disabled_reason
    })
    .await
    .expect("disabled");
    assert!(disabled.starts_with("gone"), "{disabled}");
    assert!(!disabled.contains(fake.token()), "{disabled}");
    // Back to pending, the attempt not counted; the account's next event did not go.
    poll_until(DEADLINE, "both pending", || async {
        (states(&db).await == [("pending".to_owned(), 2)]).then_some(())
    })
    .await
    .expect("pending");
    let c = db.client().await.expect("client");
    let attempts: i64 = c
        .query_one("select sum(attempts) from outbox_deliveries", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(attempts, 0);
    let (outcome, status, error): (String, Option<i32>, Option<String>) = {
        let r = c
            .query_one("select outcome, status, error from outbox_attempts", &[])
            .await
            .expect("one attempt recorded");
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((outcome.as_str(), status), ("disabled", Some(410)));
    let error = error.expect("error");
    assert!(
        error.starts_with("gone") && !error.contains(fake.token()),
        "{error}"
    );
    let before = fake.requests().len();

    store
        .resume_destination("app", "test")
        .await
        .expect("resume");
    fake.wait_for_delivered(2, DEADLINE).await;
    until_all_sent(&db, 2).await;
    app.stop().await.expect("stops");
    assert_eq!(before, 1, "nothing was sent while disabled");
    let requests = fake.requests();
    let ids: Vec<(Option<&str>, u16)> = requests
        .iter()
        .map(|r| (r.webhook_id(), r.status))
        .collect();
    let (a1, a2) = (format!("evt_ps_{a}_1"), format!("evt_ps_{a}_2"));
    assert_eq!(
        ids,
        [
            (Some(a1.as_str()), 410),
            (Some(a1.as_str()), 200),
            (Some(a2.as_str()), 200)
        ]
    );
    for r in &requests {
        assert_signed(r, &stored);
    }
}

#[tokio::test]
async fn an_application_that_hangs_while_down_gets_the_event_again_under_its_id_then_the_next() {
    let db = TestDb::new();
    let store = store(&db).await;
    let fake = FakeApp::start().await;
    let a = account(&db).await;
    let mut stored = BTreeMap::new();
    for seq in [1, 2] {
        let (id, body) = record(&store, a, seq).await;
        stored.insert(id, body);
    }
    let (a1, a2) = (format!("evt_ps_{a}_1"), format!("evt_ps_{a}_2"));
    // Down for a while: requests hang past the sender's timeout.
    fake.stall_for(Duration::from_secs(3));
    // Enough attempts to outlast the outage, and a breaker that opens only briefly (its
    // default 30 s would outlast the test).
    let mut lane = fast_lane(Destination::App);
    lane.retry.max_attempts = 100;
    lane.breaker = BreakerPolicy {
        base_open: Duration::from_millis(300),
        max_open: Duration::from_millis(300),
        jitter: 0.0,
        ..BreakerPolicy::default()
    };
    let mut settings = app_settings(&db, &fake, lane);
    if let Some(app) = settings.app.as_mut() {
        app.timeout = Duration::from_millis(300);
    }
    let (app, _) = start(settings).await;
    fake.wait_for_delivered(2, DEADLINE).await;
    until_all_sent(&db, 2).await;
    app.stop().await.expect("stops");

    let requests = fake.requests();
    let a1_at = positions(&requests, &a1);
    assert!(a1_at.len() >= 2, "a1 timed out at least once: {a1_at:?}");
    assert_eq!(
        positions(&requests, &a2),
        [requests.len() - 1],
        "a2 once, after every attempt at a1"
    );
    for r in &requests {
        assert_signed(r, &stored);
    }
    let c = db.client().await.expect("client");
    let errors: Vec<Option<String>> = c
        .query(
            "select t.error from outbox_attempts t join outbox_deliveries d \
               on d.id = t.delivery_id where d.source_id = $1 and t.outcome = 'retry' \
             order by t.attempt",
            &[&a1],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Hung past the timeout (the attempt may have reached it: ambiguous), or, near the end of
    // the stall, answered 503 before the timeout.
    let errors: Vec<String> = errors.into_iter().map(|e| e.expect("an error")).collect();
    assert!(errors[0].starts_with("timeout"), "{errors:?}");
    for e in &errors {
        assert!(e.starts_with("timeout") || e.starts_with("http_503"), "{e}");
        assert!(!e.contains(fake.token()), "{e}");
    }
}
