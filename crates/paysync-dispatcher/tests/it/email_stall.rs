//! An SMTP server that takes the message and then never answers: the attempt ends within the
//! email timeout as an ambiguous transient failure (the server may have delivered), and the
//! next attempt goes out on a fresh connection.

use std::time::Duration;

use paysync_dispatcher::destinations::email::{EmailSender, EmailSettings};
use paysync_dispatcher::{FailureKind, Job, Sender, Throttle, Verdict};
use paysync_domain::intent::{Intent, Notice};
use paysync_domain::outbound::Operation;
use paysync_testkit::fakes::smtp::FakeSmtp;
use secrecy::SecretString;

fn job() -> Job {
    Job {
        id: 7,
        operation: Operation::EmailReceipt,
        key: "email.receipt:receipt_email:stripe:pi_stall".into(),
        provider: "stripe".into(),
        intent: Intent::ReceiptEmail,
        source_id: "pi_stall".into(),
        attempt: 1,
        created_at: time::OffsetDateTime::UNIX_EPOCH,
        notice: Notice {
            email: Some("ada@example.com".into()),
            amount: Some(1000),
            currency: Some("eur".into()),
            ..Notice::default()
        },
        account: None,
        due_at: None,
        app_body: None,
    }
}

#[tokio::test]
async fn a_server_that_stalls_after_data_ends_the_attempt_as_ambiguous() {
    let smtp = FakeSmtp::start().await;
    smtp.stall_after_data(1);
    let mut settings = EmailSettings::new(SecretString::from(smtp.url()), "billing@acme.test");
    settings.timeout = Duration::from_secs(1);
    let sender = EmailSender::new(&settings).expect("sender");
    let throttle = Throttle::unlimited();
    // A deadline, not a timing assertion: without the attempt's own timeout this never ends.
    let first = tokio::time::timeout(Duration::from_secs(60), sender.send(&job(), &throttle))
        .await
        .expect("the attempt ended by itself");
    let Verdict::Failed(e) = first else {
        panic!("expected a failure, got {first:?}");
    };
    assert_eq!(e.kind, FailureKind::Transient { ambiguous: true }, "{e:?}");
    let second = tokio::time::timeout(Duration::from_secs(60), sender.send(&job(), &throttle))
        .await
        .expect("the retry ended by itself");
    assert!(matches!(second, Verdict::Sent { .. }), "{second:?}");
    assert_eq!(smtp.messages().len(), 2, "the stalled copy and the retry");
    assert!(
        smtp.connections() >= 2,
        "the stalled connection was not reused"
    );
}
