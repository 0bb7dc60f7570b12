//! The consumer runtime: keeps a queue consumed until stopped. It opens a [`ConsumerLink`],
//! runs each of its lanes in a task of its own, one batch at a time, and reopens the link with
//! backoff when the broker goes away.
//!
//! Rule of thumb: a batch is the delivery that arrived plus whatever else is already waiting on
//! the lane, up to `max_batch`; the runtime never waits to fill one. The handler settles each
//! delivery of a batch (`ack` or `requeue`), then the lane acknowledges the batch with one
//! `multiple` ack ([`Lane::flush`]). One lane that loses its channel or consumer halts them
//! all, and the whole link is reopened.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder as _;
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::AmqpSettings;
use crate::consumer::{ConsumerLink, Incoming, Lane, Next};

/// How a consumer shares its work out: the one struct that configures [`ConsumeLoop`] and
/// [`ConsumerLink::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Unacked deliveries the broker may push to the whole link at once, shared out between
    /// the lanes ([`ConsumerConfig::lane_prefetch`]).
    pub prefetch: u16,
    /// Lanes: channels with a consumer each, each applying one batch at a time (0 counts as 1).
    pub lanes: usize,
    /// The most deliveries in one batch (0 counts as 1; 1 turns batching off).
    pub max_batch: usize,
}

impl ConsumerConfig {
    /// How many lanes the link opens: at least one.
    pub fn lane_count(&self) -> usize {
        self.lanes.max(1)
    }

    /// The prefetch of each lane: `prefetch` shared out between the lanes, rounded up, at least
    /// one delivery.
    pub fn lane_prefetch(&self) -> u16 {
        let lanes = u16::try_from(self.lane_count()).unwrap_or(u16::MAX);
        self.prefetch.div_ceil(lanes).max(1)
    }

    fn batch_limit(&self) -> usize {
        self.max_batch.max(1)
    }
}

/// Called each time the link is opened again after its first opening (a reconnect).
type OnReopen = Box<dyn Fn() + Send + Sync>;

/// How long a cancel or a connection close may wait for the broker's answer at shutdown.
const BROKER_GOODBYE: Duration = Duration::from_secs(2);

/// A queue consumed until stopped, reconnecting with backoff after broker outages. Built with
/// [`ConsumeLoop::new`], optionally told whom to tell ([`ConsumeLoop::report_consuming`],
/// [`ConsumeLoop::on_reopen`]), then [`ConsumeLoop::run`].
pub struct ConsumeLoop {
    settings: AmqpSettings,
    role: &'static str,
    queue: String,
    config: ConsumerConfig,
    grace: Duration,
    consuming: Option<Arc<AtomicBool>>,
    on_reopen: Option<OnReopen>,
}

impl ConsumeLoop {
    /// Consumes `queue` as `role` (which names the connection and the log lines) with `config`;
    /// at a stop or a lost lane, the lanes get up to `grace` to finish their batches before
    /// the connection is closed (the broker redelivers whatever was not acked).
    pub fn new(
        settings: AmqpSettings,
        role: &'static str,
        queue: String,
        config: ConsumerConfig,
        grace: Duration,
    ) -> Self {
        Self {
            settings,
            role,
            queue,
            config,
            grace,
            consuming: None,
            on_reopen: None,
        }
    }

    /// Keeps `flag` true while the link is open and its lanes run (for readiness).
    pub fn report_consuming(mut self, flag: Arc<AtomicBool>) -> Self {
        self.consuming = Some(flag);
        self
    }

    /// Calls `hook` at each reconnect (not at the first opening), e.g. to count it.
    pub fn on_reopen(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_reopen = Some(Box::new(hook));
        self
    }

    fn set_consuming(&self, v: bool) {
        if let Some(flag) = &self.consuming {
            flag.store(v, Ordering::Relaxed);
        }
    }

    /// Consumes until `stop` resolves, handing each batch to `handle`, which must settle every
    /// delivery in it (`ack` once durable, or `requeue`); the lane then acknowledges the batch.
    /// At the stop, each lane finishes its batch and starts no other (a stop wins over
    /// deliveries already waiting).
    pub async fn run<F, Fut>(self, stop: impl Future<Output = ()> + Send + 'static, handle: F)
    where
        F: Fn(Vec<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = Signal::on(stop);
        let handle = Arc::new(handle);
        let role = self.role;
        let mut backoff = reconnect_backoff();
        let mut opened_before = false;
        loop {
            if stop.fired() {
                break;
            }
            let link = ConsumerLink::open(&self.settings, role, &self.queue, &self.config).await;
            let mut link = match link {
                Ok(link) => {
                    backoff = reconnect_backoff();
                    if opened_before && let Some(hook) = &self.on_reopen {
                        hook();
                    }
                    opened_before = true;
                    tracing::info!(
                        role,
                        queue = %self.queue,
                        prefetch = self.config.prefetch,
                        lanes = self.config.lane_count(),
                        "consuming"
                    );
                    link
                }
                Err(err) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(role, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot consume; will reconnect");
                    tokio::select! {
                        () = stop.wait() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            self.set_consuming(true);
            // One lane that loses its channel or consumer halts the others: the whole link is
            // reopened (their unacked deliveries go back to the queue).
            let (halt_now, halt) = Signal::pair();
            let mut tasks = JoinSet::new();
            for lane in link.take_lanes() {
                tasks.spawn(run_lane(
                    lane,
                    role,
                    self.config.batch_limit(),
                    handle.clone(),
                    stop.clone(),
                    halt.clone(),
                ));
            }
            tokio::select! {
                () = stop.wait() => {}
                Some(_) = tasks.join_next() => {}
            }
            // Whatever ended the wait, the other lanes stop too (a stop ends each by itself).
            let _ = halt_now.send(true);
            self.set_consuming(false);
            let drained = tokio::time::timeout(self.grace, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    role,
                    left = tasks.len(),
                    "grace period over; unfinished deliveries go back to the queue"
                );
                tasks.abort_all();
            }
            // Best effort: the broker returns whatever is unacked when the connection goes.
            if tokio::time::timeout(BROKER_GOODBYE, link.close())
                .await
                .is_err()
            {
                tracing::warn!(
                    role,
                    "the broker did not confirm closing the connection in time"
                );
            }
        }
    }
}

/// One lane until it is stopped, halted, or loses its consumer: take a batch, let `handle`
/// settle each delivery, acknowledge the batch.
async fn run_lane<F, Fut>(
    mut lane: Lane,
    role: &'static str,
    max_batch: usize,
    handle: Arc<F>,
    stop: Signal,
    halt: Signal,
) where
    F: Fn(Vec<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    consume_lane(&mut lane, role, max_batch, &handle, &stop, &halt).await;
    // Closed here, before the link closes the connection (see `Lane::close`).
    let _ = tokio::time::timeout(BROKER_GOODBYE, lane.close()).await;
}

/// The lane's loop, until a stop, a halt or the lane's loss.
async fn consume_lane<F, Fut>(
    lane: &mut Lane,
    role: &'static str,
    max_batch: usize,
    handle: &Arc<F>,
    stop: &Signal,
    halt: &Signal,
) where
    F: Fn(Vec<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let next = tokio::select! {
            // A stop wins over deliveries already waiting: the lane finishes its batch, never
            // starts another.
            biased;
            () = stop.wait() => {
                let _ = tokio::time::timeout(BROKER_GOODBYE, lane.cancel()).await;
                return;
            }
            () = halt.wait() => return,
            next = lane.next() => next,
        };
        let first = match next {
            Next::Delivery(incoming) => incoming,
            Next::Idle => continue,
            lost => return report_lost(role, lost),
        };
        let (batch, lost) = assemble(first, max_batch, || lane.next_ready());
        handle(batch).await;
        if let Err(err) = lane.flush().await {
            tracing::warn!(role, error = %err, "acknowledging a batch failed; the broker redelivers it (deduplicated)");
        }
        if let Some(lost) = lost {
            return report_lost(role, lost);
        }
    }
}

/// A batch: `first`, then whatever `ready` has at once, up to `max_batch` in all. Returns the
/// batch and, when the lane was lost while filling it ([`Next::Cancelled`] or
/// [`Next::Failed`]), how: the batch is still handled and acknowledged, then the lane ends.
fn assemble<D>(
    first: D,
    max_batch: usize,
    mut ready: impl FnMut() -> Next<D>,
) -> (Vec<D>, Option<Next<D>>) {
    let mut batch = vec![first];
    while batch.len() < max_batch {
        match ready() {
            Next::Delivery(more) => batch.push(more),
            Next::Idle => break,
            lost => return (batch, Some(lost)),
        }
    }
    (batch, None)
}

fn report_lost<D>(role: &'static str, lost: Next<D>) {
    match lost {
        Next::Failed(err) => {
            tracing::warn!(role, error = %err, "consumer connection failed; reconnecting");
        }
        _ => tracing::warn!(role, "consumer was cancelled by the broker; reconnecting"),
    }
}

/// The pauses between attempts to reopen a link: 200 ms doubling to 10 s, with jitter,
/// without end (reset after each successful opening).
fn reconnect_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// A one-way signal that any number of tasks can wait for (a stop, or a halt of the lanes).
#[derive(Clone)]
struct Signal(watch::Receiver<bool>);

impl Signal {
    /// Fires once `trigger` resolves (at once if it already has).
    fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (fire, signal) = Self::pair();
        let mut trigger = Box::pin(trigger);
        if trigger.as_mut().now_or_never().is_some() {
            let _ = fire.send(true);
            return signal;
        }
        tokio::spawn(async move {
            trigger.await;
            let _ = fire.send(true);
        });
        signal
    }

    /// A signal that fires when its sender sends `true`; `wait` also resolves once the sender
    /// is gone, so nobody waits for a signal that can no longer fire.
    fn pair() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once fired (at once if it already has).
    async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Whether it has fired.
    fn fired(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prefetch: u16, lanes: usize) -> ConsumerConfig {
        ConsumerConfig {
            prefetch,
            lanes,
            max_batch: 1,
        }
    }

    #[test]
    fn the_prefetch_is_shared_out_between_the_lanes_rounded_up() {
        assert_eq!(config(1024, 2).lane_prefetch(), 512);
        assert_eq!(config(10, 3).lane_prefetch(), 4);
        assert_eq!(config(16, 4).lane_prefetch(), 4);
    }

    #[test]
    fn every_lane_gets_at_least_one_delivery_and_there_is_at_least_one_lane() {
        assert_eq!(config(2, 8).lane_prefetch(), 1);
        assert_eq!(config(0, 2).lane_prefetch(), 1);
        assert_eq!(config(7, 0).lane_count(), 1);
        assert_eq!(config(7, 0).lane_prefetch(), 7);
        assert_eq!(config(u16::MAX, 100_000).lane_prefetch(), 1);
    }

    /// A lane's queue as `ready` sees it: the items in order, then `Idle`.
    fn ready_from(items: Vec<Next<u32>>) -> impl FnMut() -> Next<u32> {
        let mut items = items.into_iter();
        move || items.next().unwrap_or(Next::Idle)
    }

    #[test]
    fn a_batch_takes_what_is_ready_and_never_waits_to_fill_up() {
        let (batch, lost) = assemble(
            1,
            10,
            ready_from(vec![Next::Delivery(2), Next::Delivery(3)]),
        );
        assert_eq!(batch, vec![1, 2, 3]);
        assert!(lost.is_none());
    }

    #[test]
    fn a_batch_stops_at_the_size_limit_and_leaves_the_rest_waiting() {
        let mut left = 0;
        let (batch, lost) = assemble(1, 2, || {
            left += 1;
            Next::Delivery(10 + left)
        });
        assert_eq!(batch, vec![1, 11]);
        assert!(lost.is_none());
        assert_eq!(left, 1, "nothing is taken beyond the limit");
        let (batch, _) = assemble(1, 1, || -> Next<u32> { unreachable!("batching is off") });
        assert_eq!(batch, vec![1]);
    }

    #[test]
    fn a_lane_lost_while_filling_a_batch_keeps_the_batch_and_reports_the_loss() {
        let (batch, lost) = assemble(
            1,
            10,
            ready_from(vec![Next::Delivery(2), Next::Cancelled, Next::Delivery(3)]),
        );
        assert_eq!(batch, vec![1, 2]);
        assert!(matches!(lost, Some(Next::Cancelled)));
    }

    #[tokio::test]
    async fn a_halt_fires_when_its_sender_is_dropped() {
        let (halt_now, halt) = Signal::pair();
        assert!(!halt.fired());
        drop(halt_now);
        tokio::time::timeout(Duration::from_secs(5), halt.wait())
            .await
            .expect("dropping the sender fires the halt");
    }

    #[tokio::test]
    async fn a_stop_whose_trigger_already_resolved_has_fired_from_the_start() {
        assert!(Signal::on(std::future::ready(())).fired());
    }

    #[tokio::test]
    async fn a_stop_fires_once_its_trigger_resolves() {
        let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
        let stop = Signal::on(async move {
            let _ = triggered.await;
        });
        assert!(!stop.fired());
        trigger.send(()).expect("the stop is waiting");
        tokio::time::timeout(Duration::from_secs(5), stop.wait())
            .await
            .expect("the stop fired");
        assert!(stop.fired());
    }
}
