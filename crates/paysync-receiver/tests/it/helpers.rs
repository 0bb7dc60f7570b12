//! Spawning a receiver wired exactly as in production, on random ports.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_amqp::AmqpSettings;
use paysync_domain::Mode;
use paysync_domain::stripe::signature::sign_header;
use paysync_receiver::{App, Settings};
use paysync_testkit::{TestBroker, now_secs};
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "whsec_receiver_tests";

/// A running receiver and how to reach and stop it.
pub struct Running {
    pub base: String,
    pub metrics_base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        self.post_with_header(body, Some(sign_header(SECRET, now_secs(), body)))
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

    /// Sends the shutdown signal and waits for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(15), task).await??,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn settings(amqp: AmqpSettings, mode: Mode) -> Settings {
    let mut s = Settings::local(vec![SecretString::from(SECRET.to_owned())]);
    s.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.stripe.mode = mode;
    s.amqp = amqp;
    s.amqp.confirm_timeout = Duration::from_secs(5);
    s.amqp.connect_timeout = Duration::from_secs(2);
    s
}

pub async fn spawn(settings: Settings) -> Running {
    let app = App::build(settings).await.expect("receiver builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let metrics_base = format!("http://127.0.0.1:{}", app.metrics_port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running {
        base,
        metrics_base,
        client: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
    }
}

pub async fn spawn_for(broker: &TestBroker) -> Running {
    spawn(settings(broker.settings("receiver"), Mode::Test)).await
}

/// The value of a counter sample line `name{labels} value` in a Prometheus scrape.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Asserts the broker holds nothing in the work queue: the request was not published.
pub async fn assert_nothing_published(broker: &TestBroker) {
    let queued = broker
        .message_count(&broker.topology().work_queue())
        .await
        .unwrap();
    assert_eq!(queued, 0, "nothing may be published");
}
