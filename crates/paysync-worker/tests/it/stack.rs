//! A receiver and a worker wired as in production, sharing one broker prefix and schema, with
//! a few scripted handlers: what the observability and log tests drive traffic through.

use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb};

use crate::helpers::*;

pub const SECRET: &str = "whsec_observability";

pub struct Stack {
    broker: TestBroker,
    db: TestDb,
    pub worker: Running,
    pub receiver: Receiver,
}

impl Stack {
    pub async fn start() -> Self {
        let (broker, db) = (TestBroker::new(), TestDb::new());
        let (handlers, _) = billing_and(vec![
            ("invoice.paid", Script::Succeed),
            ("charge.failed", Script::FailTransiently(1)),
            ("charge.dispute.created", Script::FailPermanently),
        ]);
        db.store().await.unwrap();
        let mut ws = settings(&broker, &db, fast_retry(3));
        ws.monitor_interval = Duration::from_millis(200);
        let worker = spawn(paysync_worker::App::build(ws, handlers).await.unwrap()).await;
        let receiver = spawn_receiver(receiver_settings(SECRET, broker.settings("receiver"))).await;
        Self {
            broker,
            db,
            worker,
            receiver,
        }
    }

    pub async fn post(&self, body: &[u8], secret: &str) -> u16 {
        self.receiver.post(body, secret).await
    }

    pub async fn stop(self) {
        // The receiver is only asked to stop, as before; the worker must exit cleanly.
        drop(self.receiver);
        self.worker.stop().await;
        drop((self.broker, self.db));
    }
}
