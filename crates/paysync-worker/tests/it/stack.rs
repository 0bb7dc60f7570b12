//! A receiver and a worker wired as in production, sharing one broker prefix and schema, with
//! a few scripted handlers: what the observability and log tests drive traffic through.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_domain::stripe::signature::sign_header;
use paysync_testkit::{TestBroker, TestDb, now_secs};
use secrecy::SecretString;

use crate::helpers::*;

pub const SECRET: &str = "whsec_observability";

pub struct Stack {
    broker: TestBroker,
    db: TestDb,
    pub worker: Running,
    url: String,
    pub receiver_metrics: String,
    stop_receiver: Option<tokio::sync::oneshot::Sender<()>>,
    client: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Self {
        let (broker, db) = (TestBroker::new(), TestDb::new());
        let mut handlers = paysync_worker::Handlers::new();
        let (h, _) = crate::helpers::handlers("invoice.paid", Script::Succeed);
        handlers = merge(handlers, h);
        let (h, _) = crate::helpers::handlers("charge.failed", Script::FailTransiently(1));
        handlers = merge(handlers, h);
        let (h, _) = crate::helpers::handlers("charge.dispute.created", Script::FailPermanently);
        handlers = merge(handlers, h);
        handlers.register(
            "customer.updated",
            std::sync::Arc::new(paysync_worker::billing::Billing),
        );
        db.store().await.unwrap();
        let mut ws = settings(&broker, &db, fast_retry(3));
        ws.monitor_interval = Duration::from_millis(200);
        let worker = spawn(paysync_worker::App::build(ws, handlers).await.unwrap()).await;

        let mut rs = paysync_receiver::Settings::local(vec![SecretString::from(SECRET.to_owned())]);
        rs.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        rs.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        rs.amqp = broker.settings("receiver");
        let receiver = paysync_receiver::App::build(rs).await.unwrap();
        let url = format!("http://127.0.0.1:{}/webhooks/stripe", receiver.port());
        let receiver_metrics = format!("http://127.0.0.1:{}", receiver.metrics_port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(receiver.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            broker,
            db,
            worker,
            url,
            receiver_metrics,
            stop_receiver: Some(stop),
            client: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, body: &[u8], secret: &str) -> u16 {
        let header = sign_header(secret, now_secs(), body);
        self.client
            .post(&self.url)
            .header("Stripe-Signature", header)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn receiver_scrape(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.receiver_metrics))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop_receiver.take() {
            let _ = stop.send(());
        }
        self.worker.stop().await;
        drop((self.broker, self.db));
    }
}

fn merge(
    mut into: paysync_worker::Handlers,
    from: paysync_worker::Handlers,
) -> paysync_worker::Handlers {
    for t in ["invoice.paid", "charge.failed", "charge.dispute.created"] {
        if let Some(h) = from.get(t) {
            into.register(t, h.clone());
        }
    }
    into
}
