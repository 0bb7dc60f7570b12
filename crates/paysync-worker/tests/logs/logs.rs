//! Logs say what happened to each event once, as JSON when asked, and never contain secrets,
//! signature headers or bodies.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paysync_testkit::poll_until;

use crate::stack::{SECRET, Stack};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn logs_record_each_event_once_and_never_secrets_signatures_or_bodies() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // This binary is this one test: the capture subscriber can be the process-wide one.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let stack = Stack::start().await;
    let marker = "cardholder_marker_4242";
    let body = serde_json::json!({
        "id": "evt_logs_1", "object": "event", "type": "invoice.paid", "created": 1_700_000_000,
        "livemode": false, "api_version": "2020-03-02",
        "data": {"object": {"id": "in_logs", "customer_email": marker}}
    })
    .to_string()
    .into_bytes();
    let header =
        paysync_domain::stripe::signature::sign_header(SECRET, paysync_testkit::now_secs(), &body);
    let signature = header.split("v1=").nth(1).unwrap().to_owned();
    assert_eq!(stack.post(&body, SECRET).await, 200);
    assert_eq!(stack.post(&body, "whsec_not_the_secret").await, 400);
    let customer = serde_json::json!({
        "id": "evt_logs_2", "object": "event", "type": "customer.updated", "created": 1_700_000_000,
        "livemode": false, "data": {"object": {"id": "cus_logs", "object": "customer"}}
    })
    .to_string()
    .into_bytes();
    assert_eq!(stack.post(&customer, SECRET).await, 200);

    poll_until(
        Duration::from_secs(60),
        "the processed-event log lines",
        || async {
            let text = captured.text();
            let done = |id: &str| {
                text.lines()
                    .any(|l| l.contains("event processed") && l.contains(id))
            };
            (done("evt_logs_1") && done("evt_logs_2")).then_some(())
        },
    )
    .await
    .unwrap();
    stack.stop().await;

    let logs = captured.text();
    for forbidden in [
        SECRET,
        "whsec_not_the_secret",
        crate::stack::STRIPE_API_KEY,
        signature.as_str(),
        marker,
        "Stripe-Signature",
    ] {
        assert!(
            !logs.contains(forbidden),
            "logs contain {forbidden:?}:\n{logs}"
        );
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let processed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "event processed" && l["event.id"] == "evt_logs_1")
        .collect();
    assert_eq!(processed.len(), 1, "one line per processed event");
    let line = processed[0];
    for field in [
        "provider",
        "event.type",
        "outcome",
        "attempt",
        "duration_ms",
    ] {
        assert!(!line[field].is_null(), "missing {field}: {line}");
    }
    assert_eq!(line["outcome"], "applied");
    let linked = lines
        .iter()
        .find(|l| l["message"] == "event processed" && l["event.id"] == "evt_logs_2")
        .unwrap();
    assert!(
        linked["account.id"].is_i64(),
        "the account the event was linked to: {linked}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "webhook refused" && l["outcome"] == "bad_signature"),
        "the refusal is logged with its outcome"
    );
}
