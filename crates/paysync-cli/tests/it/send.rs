//! `paysync send --url https://…`: a real receiver behind a TLS-terminating proxy with a
//! certificate from a private CA (the local test CA), trusted with `--ca-file`.

use std::process::{Command, Stdio};
use std::time::Duration;

use paysync_testkit::tls::{self, TlsProxy};
use paysync_testkit::{TestBroker, closed_port, poll_until, stripe_event};

const SECRET: &str = "whsec_send_https";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_over_https_to_a_receiver_behind_a_private_ca() {
    let broker = TestBroker::new();
    let port = closed_port();
    let mut receiver = Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("receiver")
        .env("PAYSYNC_AMQP_URL", broker.url())
        .env("PAYSYNC_AMQP_PREFIX", broker.prefix())
        .env("PAYSYNC_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("PAYSYNC_METRICS_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_STRIPE_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = TlsProxy::start(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let url = format!("https://localhost:{}/webhooks/stripe", proxy.port());
    let event = std::env::temp_dir().join(format!("paysync-send-{}.json", broker.prefix()));
    std::fs::write(
        &event,
        stripe_event("evt_send_https", "customer.updated", false),
    )
    .unwrap();
    let send = |ca: Option<std::path::PathBuf>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paysync"));
        cmd.args(["send", "--url", &url])
            .arg(&event)
            .env("PAYSYNC_STRIPE_WEBHOOK_SECRET", SECRET);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.output().unwrap()
    };

    // Without the CA: refused by the client, with the reason and the way out.
    let untrusted = send(None);
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success());
    assert!(
        err.contains("not trusted") && err.contains("--ca-file"),
        "{err}"
    );

    // With it: 200 once the receiver is up, and the event is on the work queue.
    let answered = poll_until(Duration::from_secs(30), "send answered 200", || async {
        let out = send(Some(tls::ca_file()));
        out.status.success().then_some(out)
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&answered.stdout).starts_with("200"));
    assert_eq!(
        broker
            .message_count(&broker.topology().work_queue())
            .await
            .unwrap(),
        1
    );
    receiver.kill().unwrap();
    receiver.wait().unwrap();
    std::fs::remove_file(&event).unwrap();
}
