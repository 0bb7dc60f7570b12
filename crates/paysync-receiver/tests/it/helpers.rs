//! Spawning a receiver wired exactly as in production, on random ports.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_amqp::AmqpSettings;
use paysync_domain::Mode;
use paysync_receiver::{App, Settings};
use paysync_testkit::{RunningApp, TestBroker, sample, scrape, signature_now};
use secrecy::SecretString;

pub const SECRET: &str = "whsec_receiver_tests";

/// A running receiver and how to reach and stop it.
pub struct Running {
    pub base: String,
    pub metrics_base: String,
    pub metrics_port: u16,
    pub client: reqwest::Client,
    app: RunningApp,
}

impl Running {
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        self.post_with_header(body, Some(signature_now(SECRET, body)))
            .await
    }

    pub async fn post_with_header(&self, body: &[u8], header: Option<String>) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}/webhooks/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(h) = header {
            req = req.header("Stripe-Signature", h);
        }
        req.send().await.expect("request reaches the receiver")
    }

    pub async fn get(&self, url: String) -> reqwest::Response {
        self.client
            .get(url)
            .send()
            .await
            .expect("request reaches the receiver")
    }

    /// The receiver's Prometheus scrape.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics_port).await.unwrap()
    }

    /// Sends the shutdown signal and waits for a clean exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.app.stop_within(Duration::from_secs(15)).await
    }
}

pub fn settings(amqp: AmqpSettings, mode: Mode) -> Settings {
    let mut s = Settings::local(vec![SecretString::from(SECRET.to_owned())]);
    s.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.stripe.as_mut().expect("Stripe").mode = mode;
    s.amqp = amqp;
    s.amqp.confirm_timeout = Duration::from_secs(5);
    s.amqp.connect_timeout = Duration::from_secs(2);
    s
}

pub async fn spawn(settings: Settings) -> Running {
    let app = App::build(settings).await.expect("receiver builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let metrics_port = app.metrics_port();
    Running {
        base,
        metrics_base: format!("http://127.0.0.1:{metrics_port}"),
        metrics_port,
        client: reqwest::Client::new(),
        app: RunningApp::spawn(|stop| app.run_until_stopped(stop)),
    }
}

pub async fn spawn_for(broker: &TestBroker) -> Running {
    spawn(settings(broker.settings("receiver"), Mode::Test)).await
}

/// The value of `paysync_webhooks_received_total` for Stripe and `outcome` in a scrape.
pub fn received(scrape: &str, outcome: &str) -> f64 {
    sample(
        scrape,
        "paysync_webhooks_received_total",
        &[("outcome", outcome), ("provider", "stripe")],
    )
}

/// Asserts the broker holds nothing in the work queue: the request was not published.
pub async fn assert_nothing_published(broker: &TestBroker) {
    let queued = broker
        .message_count(&broker.topology().work_queue())
        .await
        .unwrap();
    assert_eq!(queued, 0, "nothing may be published");
}
