//! A receiver and a worker wired as in production, sharing one broker prefix and schema, with
//! a few scripted handlers: what the observability and log tests drive traffic through.

use std::time::Duration;

use std::sync::Arc;

use paysync_testkit::fakes::provider_api::FakeStripeApi;
use paysync_testkit::{TestBroker, TestDb};
use paysync_worker::reconcile::stripe::StripeApi;
use paysync_worker::reconcile::{ApiSettings, EventSource};

use crate::helpers::*;

pub const SECRET: &str = "whsec_observability";
/// The key of the fake Stripe API the worker reconciles with.
pub const STRIPE_API_KEY: &str = "sk_test_observability";

pub struct Stack {
    broker: TestBroker,
    db: TestDb,
    _stripe_api: FakeStripeApi,
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
        // A reconciler too, so its metrics are exported as in production (an empty list).
        let stripe_api = FakeStripeApi::start(STRIPE_API_KEY).await;
        let source: Arc<dyn EventSource> = Arc::new(StripeApi::new(
            ApiSettings::new(stripe_api.base(), STRIPE_API_KEY.to_owned().into()),
            paysync_domain::Mode::Test,
            100,
        ));
        let app = paysync_worker::App::build(ws, handlers)
            .await
            .unwrap()
            .with_reconcile_sources(vec![source]);
        let worker = spawn(app).await;
        let receiver = spawn_receiver(receiver_settings(SECRET, broker.settings("receiver"))).await;
        Self {
            broker,
            db,
            _stripe_api: stripe_api,
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
        drop((self.broker, self.db, self._stripe_api));
    }
}
