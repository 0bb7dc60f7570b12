//! Authorize.Net's payment events name no customer: the worker completes them from the
//! transaction-details API (a local fake speaking its JSON, byte-order mark included) before
//! the event's transaction. An outage retries through the broker and ends applied; nothing is
//! dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use paysync_domain::Mode;
use paysync_domain::authorizenet::{AuthorizeNetVerifier, sign};
use paysync_domain::breaker::BreakerPolicy;
use paysync_testkit::fakes::Reply;
use paysync_testkit::fakes::authorizenet::{
    FakeAuthorizeNet, LOGIN_ID, TRANSACTION_KEY, TransactionSeed,
};
use paysync_testkit::{TestBroker, TestDb, poll_until};
use paysync_worker::billing::TransactionSource;
use paysync_worker::enrich::{AuthorizeNetApi, AuthorizeNetApiSettings, EnrichError};
use secrecy::SecretString;

use crate::helpers::{fast_retry, publisher, spawn_worker};

fn api(fake: &FakeAuthorizeNet, key: &str, open: Duration) -> AuthorizeNetApi {
    let mut s = AuthorizeNetApiSettings::new(
        SecretString::from(LOGIN_ID.to_owned()),
        SecretString::from(key.to_owned()),
    );
    s.url = fake.url();
    s.timeout = Duration::from_secs(2);
    s.breaker = BreakerPolicy {
        consecutive_failures: 3,
        base_open: open,
        jitter: 0.0,
        ..BreakerPolicy::default()
    };
    AuthorizeNetApi::new(s)
}

fn seed(id: &str) -> TransactionSeed {
    TransactionSeed {
        trans_id: id.into(),
        status: "capturedPendingSettlement".into(),
        response_code: 1,
        amount: 7.25,
        profile_id: Some("1811525852".into()),
        customer_id: Some("ref-anet".into()),
        email: Some("payer@example.com".into()),
        ..TransactionSeed::default()
    }
}

#[tokio::test]
async fn the_client_reads_details_and_classifies_failures() {
    let fake = FakeAuthorizeNet::start().await;
    fake.put_transaction(seed("60022194830"));
    let client = api(&fake, TRANSACTION_KEY, Duration::from_secs(60));
    let tx = client.transaction_details("60022194830").await.unwrap();
    assert_eq!(
        (
            tx.amount,
            tx.customer_profile_id.as_deref(),
            tx.merchant_customer_id.as_deref()
        ),
        (725, Some("1811525852"), Some("ref-anet")),
        "7.25 read exactly, past the byte-order mark"
    );
    let missing = client.transaction_details("1").await.unwrap_err();
    assert!(matches!(&missing, EnrichError::Refused { code, .. } if code == "E00040"));
    assert!(!missing.retryable());

    let wrong = api(
        &fake,
        "a-wrong-transaction-key-xyz",
        Duration::from_secs(60),
    );
    let err = wrong.transaction_details("60022194830").await.unwrap_err();
    assert!(
        !err.retryable(),
        "bad credentials are configuration, not an outage"
    );
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("E00007")
            && !shown.contains("a-wrong-transaction-key-xyz")
            && !shown.contains(LOGIN_ID),
        "{shown}"
    );

    fake.script.next(
        Reply::Status {
            status: 503,
            body: "down".into(),
            retry_after: None,
        },
        1,
    );
    assert!(
        client
            .transaction_details("60022194830")
            .await
            .unwrap_err()
            .retryable()
    );
    assert_eq!(
        client
            .transaction_details("60022194830")
            .await
            .unwrap()
            .amount,
        725,
        "recovered"
    );
}

#[tokio::test]
async fn an_open_breaker_fails_fast_without_calling() {
    let fake = FakeAuthorizeNet::start().await;
    let client = api(&fake, TRANSACTION_KEY, Duration::from_secs(60));
    fake.script.always(Reply::Status {
        status: 502,
        body: String::new(),
        retry_after: None,
    });
    for _ in 0..3 {
        assert!(
            client
                .transaction_details("x")
                .await
                .unwrap_err()
                .retryable()
        );
    }
    let calls = fake.requests();
    let err = client.transaction_details("x").await.unwrap_err();
    assert!(matches!(err, EnrichError::BreakerOpen) && err.retryable());
    assert_eq!(
        fake.requests(),
        calls,
        "the open breaker did not call the API"
    );
}

#[tokio::test]
async fn an_api_outage_retries_and_ends_applied_with_nothing_dead_lettered() {
    let broker = TestBroker::new();
    let db = TestDb::new();
    let fake = FakeAuthorizeNet::start().await;
    fake.put_transaction(seed("60022194830"));
    // The first three lookups meet an outage; the fourth succeeds.
    fake.script.next(
        Reply::Status {
            status: 503,
            body: "maintenance".into(),
            retry_after: None,
        },
        3,
    );
    // The breaker opens after the third failure, for a second: the retry that meets it open
    // is one more retryable failure, never a dead letter.
    let source: Arc<dyn TransactionSource> =
        Arc::new(api(&fake, TRANSACTION_KEY, Duration::from_secs(1)));
    let worker = spawn_worker(
        &broker,
        &db,
        fast_retry(8),
        paysync_worker::billing::handlers_with(Some(source)),
    )
    .await;
    let key = "A".repeat(128);
    let body = std::fs::read(
        paysync_testkit::fixtures_dir()
            .join("authorizenet/net.authorize.payment.authcapture.created.json"),
    )
    .unwrap();
    let hook = AuthorizeNetVerifier::new(vec![key.clone()], Mode::Test)
        .verify(Some(&sign(&key, &body)), body.into(), 1)
        .unwrap();
    let event_id = hook.meta().event_id.clone();
    publisher(&broker).publish(&hook).await.unwrap();

    let store = db.store().await.unwrap();
    let row = poll_until(Duration::from_secs(60), "the payment applied", || {
        let store = store.clone();
        let id = event_id.clone();
        async move { store.event("authorizenet", &id).await.unwrap() }
    })
    .await
    .unwrap();
    assert_eq!(row.outcome, "applied");
    assert!(row.attempts >= 4, "applied on attempt {}", row.attempts);
    assert!(fake.requests() >= 4);
    let account = store
        .find_account(Some("ref-anet"), None)
        .await
        .unwrap()
        .expect("the transaction's customer reference made the account");
    let view = paysync_domain::billing::account_view(
        &store.account_facts(account).await.unwrap().unwrap(),
    );
    assert_eq!(view.totals[0].paid_minor, 725);
    let dead = paysync_testkit::open_dead_letters(&store, 10)
        .await
        .unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    worker.stop().await;
}
