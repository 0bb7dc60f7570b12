//! Hostile clients: slow bodies, oversized headers, replays of a captured request after the
//! tolerance window. Each gets a defined answer and nothing is published.

use std::time::Duration;

use paysync_domain::Mode;
use paysync_domain::stripe::signature::sign_header;
use paysync_testkit::{TestBroker, now_secs, stripe_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Running, SECRET, assert_nothing_published, settings, spawn};

/// A bare TCP connection to the receiver's public port, for clients no HTTP library imitates.
async fn raw_connection(app: &Running) -> TcpStream {
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_by_the_request_timeout() {
    let broker = TestBroker::new();
    let mut s = settings(broker.settings("receiver"), Mode::Test);
    s.request_timeout = Duration::from_secs(1);
    let app = spawn(s).await;
    let mut stream = raw_connection(&app).await;
    let head = "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nStripe-Signature: t=1,v1=00\r\n\r\n{\"id\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Never send the rest: the receiver must answer on its own, within its deadline.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the receiver answered a stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_nothing_published(&broker).await;
    // Counted like every other answer (it was not, while a layer outside the handler cut it).
    let scrape = app.scrape().await;
    let timeouts = paysync_testkit::sample(
        &scrape,
        "paysync_webhooks_received_total",
        &[("provider", "stripe"), ("outcome", "timeout")],
    );
    assert_eq!(timeouts, 1.0, "{scrape}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_headers_are_refused_before_anything_is_read() {
    let broker = TestBroker::new();
    let app = spawn(settings(broker.settings("receiver"), Mode::Test)).await;
    let body = stripe_event("evt_hdrs", "invoice.paid", false);
    let mut req = app
        .client
        .post(format!("{}/webhooks/stripe", app.base))
        .header("Stripe-Signature", sign_header(SECRET, now_secs(), &body))
        .body(body);
    for i in 0..150 {
        req = req.header(format!("x-filler-{i}"), "a");
    }
    let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
    assert_eq!(status, 431, "too many headers");
    let huge = "a".repeat(1024 * 1024);
    let status = app
        .client
        .post(format!("{}/webhooks/stripe", app.base))
        .header("x-huge", huge)
        .body("{}")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert!(
        status == 431 || status == 0,
        "a 1 MiB header is refused or the connection closed: {status}"
    );
    assert_nothing_published(&broker).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_captured_valid_request_replayed_after_the_tolerance_window_is_refused() {
    let broker = TestBroker::new();
    let app = spawn(settings(broker.settings("receiver"), Mode::Test)).await;
    let body = stripe_event("evt_replay_attack", "invoice.paid", false);
    // Captured 301 s ago, byte for byte, signature and all.
    let captured = sign_header(SECRET, now_secs() - 301, &body);
    let response = app.post_with_header(&body, Some(captured)).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("tolerance"));
    assert_nothing_published(&broker).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let broker = TestBroker::new();
    let mut s = settings(broker.settings("receiver"), Mode::Test);
    s.header_timeout = Duration::from_secs(1);
    let app = spawn(s).await;
    let mut stream = raw_connection(&app).await;
    stream
        .write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signa")
        .await
        .unwrap();
    // Slowloris: the rest of the head never comes. The receiver must close the connection.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed by the receiver");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // The receiver still serves others.
    assert_eq!(app.get(format!("{}/healthz", app.base)).await.status(), 200);
    app.stop().await.unwrap();
}

/// A client that sends a body over the limit without `Expect: 100-continue` writes all of it
/// before it reads: it must find the 413 when it does, not a reset connection.
#[tokio::test]
async fn a_client_that_sends_a_large_body_without_asking_first_reads_the_413() {
    let broker = TestBroker::new();
    let app = spawn(settings(broker.settings("receiver"), Mode::Test)).await;
    for size in [2 * 1024 * 1024, 12 * 1024 * 1024] {
        let mut stream = raw_connection(&app).await;
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {size}\r\nStripe-Signature: t=1,v1=00\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            // The receiver reads the refused body (up to 16 MiB) before it answers and closes,
            // so no write fails.
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(matches!(read, Ok(Ok(_))), "{size}: {read:?}, sent {sent}");
        assert_eq!(sent, size, "every byte of the body was taken");
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "{size}: {text:?}, sent {sent}"
        );
    }
    assert_nothing_published(&broker).await;
    app.stop().await.unwrap();
}
