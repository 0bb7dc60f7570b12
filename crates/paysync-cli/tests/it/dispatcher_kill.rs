//! Real `paysync dispatcher` processes: one killed with SIGKILL in the middle of a send after
//! DATA, then a second one on the same backlog; and two at once on one backlog. Every delivery
//! ends sent, the interrupted email is sent again under its own `Message-ID`, and no delivery is
//! sent by two processes.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paysync_testkit::fakes::smtp::FakeSmtp;
use paysync_testkit::{TestDb, database_url, poll_until};

fn dispatcher(db: &TestDb, smtp: &FakeSmtp, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("dispatcher")
        .env("PAYSYNC_DATABASE_URL", database_url())
        .env("PAYSYNC_DATABASE_SCHEMA", db.schema())
        .env("PAYSYNC_METRICS_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_SMTP_URL", smtp.url())
        .env("PAYSYNC_EMAIL_FROM", "Acme Billing <billing@acme.test>")
        .env("PAYSYNC_EMAIL_CONCURRENCY", "1")
        .env("PAYSYNC_DISPATCHER_LEASE_SECS", "2")
        .env("PAYSYNC_DISPATCHER_REAP_SECS", "0.5")
        .env("PAYSYNC_DISPATCHER_POLL_SECS", "0.2")
        .env("PAYSYNC_DISPATCHER_OWNER", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `n` receipts due now, each with the address its event carried.
async fn backlog(db: &TestDb, n: i32) {
    db.store().await.unwrap();
    let c = db.client().await.unwrap();
    c.batch_execute(&format!(
        "insert into outbox_destinations (name, configured) values ('email', true);
         insert into outbox (provider, kind, source_id, notice)
           select 'stripe', 'receipt_email', 'pi_' || g,
                  jsonb_build_object('email', 'c' || g || '@example.com', 'amount', 1000 + g,
                                     'currency', 'usd')
           from generate_series(1, {n}) g;
         insert into outbox_deliveries
           (destination, operation, idempotency_key, provider, intent, source_id)
           select 'email', 'email.receipt', 'email.receipt:receipt_email:stripe:pi_' || g,
                  'stripe', 'receipt_email', 'pi_' || g
           from generate_series(1, {n}) g;"
    ))
    .await
    .unwrap();
}

async fn all_sent(db: &TestDb, n: i64) {
    let c = db.client().await.unwrap();
    poll_until(Duration::from_secs(90), "every delivery sent", || async {
        let sent: i64 = c
            .query_one(
                "select count(*) from outbox_deliveries where state = 'sent'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (sent == n).then_some(())
    })
    .await
    .unwrap();
}

fn message_ids(smtp: &FakeSmtp) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in smtp.messages() {
        *ids.entry(m.message_id().expect("a Message-ID"))
            .or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_after_data_is_replaced_and_the_email_keeps_its_message_id() {
    let db = TestDb::new();
    backlog(&db, 10).await;
    let smtp = FakeSmtp::start().await;
    smtp.stall_after_data(1);
    let mut first = dispatcher(&db, &smtp, "first");
    smtp.wait_for(1, Duration::from_secs(60)).await;
    first.kill().unwrap(); // SIGKILL in the middle of the send: the server has the message
    first.wait().unwrap();
    let mut second = dispatcher(&db, &smtp, "second");
    all_sent(&db, 10).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let ids = message_ids(&smtp);
    assert_eq!(ids.len(), 10, "ten receipts: {ids:?}");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n == 2).collect();
    assert_eq!(twice.len(), 1, "only the interrupted one again: {ids:?}");
    assert_eq!(
        Some(twice[0].0.clone()),
        smtp.messages()[0].message_id(),
        "the resend carries the first attempt's Message-ID"
    );
    assert_eq!(smtp.messages().len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatcher_processes_on_one_backlog_send_each_delivery_once() {
    let db = TestDb::new();
    backlog(&db, 40).await;
    let smtp = FakeSmtp::start().await;
    let mut a = dispatcher(&db, &smtp, "a");
    let mut b = dispatcher(&db, &smtp, "b");
    all_sent(&db, 40).await;
    for p in [&mut a, &mut b] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    let ids = message_ids(&smtp);
    assert_eq!(ids.len(), 40);
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    assert_eq!(smtp.messages().len(), 40);
}
