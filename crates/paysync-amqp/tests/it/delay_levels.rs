//! The binary delay levels expire and deliver by themselves on this broker version, with no
//! consumer anywhere, each message after its own delay and without head-of-line blocking.

use std::time::{Duration, Instant};

use paysync_amqp::delay_routing_key;
use paysync_testkit::{RawProperties, TestBroker};

fn props(id: &str) -> RawProperties {
    RawProperties {
        persistent: true,
        message_id: Some(id.into()),
        ..RawProperties::default()
    }
}

#[tokio::test]
async fn delayed_messages_come_back_after_their_own_delay_with_no_consumer_on_the_levels() {
    let broker = TestBroker::new();
    broker.declare().await.unwrap();
    let t = broker.topology();
    let started = Instant::now();
    // The long one first: a shared-TTL design would block the short one behind it.
    broker
        .publish_raw(
            &t.delay_entry_exchange(),
            &delay_routing_key(5),
            b"five",
            &props("m5"),
        )
        .await
        .unwrap();
    broker
        .publish_raw(
            &t.delay_entry_exchange(),
            &delay_routing_key(2),
            b"two",
            &props("m2"),
        )
        .await
        .unwrap();
    assert_eq!(
        broker.message_count(&t.work_queue()).await.unwrap(),
        0,
        "nothing arrives at once"
    );

    let first = broker
        .take_messages(&t.work_queue(), 1, Duration::from_secs(15))
        .await
        .unwrap();
    let first_at = started.elapsed();
    let second = broker
        .take_messages(&t.work_queue(), 1, Duration::from_secs(15))
        .await
        .unwrap();
    let second_at = started.elapsed();

    assert_eq!(first.len(), 1, "2 s message delivered");
    assert_eq!(first[0].body, b"two");
    assert_eq!(second.len(), 1, "5 s message delivered");
    assert_eq!(second[0].body, b"five");
    // Whole-second TTLs: never early; late only by the broker's expiry sweep and our polling.
    assert!(first_at >= Duration::from_secs(2), "{first_at:?}");
    assert!(first_at < Duration::from_secs(5), "{first_at:?}");
    assert!(second_at >= Duration::from_secs(5), "{second_at:?}");
    assert!(second_at < Duration::from_secs(8), "{second_at:?}");
    // Delivered through the levels, the routing key is still the delay key.
    assert_eq!(first[0].routing_key, delay_routing_key(2));
    for queue in t.queues() {
        assert_eq!(
            broker.message_count(&queue).await.unwrap(),
            0,
            "{queue} drained"
        );
    }
}

#[tokio::test]
async fn a_retry_of_a_message_that_already_passed_the_levels_comes_back_too() {
    use paysync_amqp::{ConsumerConfig, ConsumerLink, Next, Publisher};

    let broker = TestBroker::new();
    broker.declare().await.unwrap();
    let t = broker.topology();
    // First round: 1 s through level 0, so the broker stamps x-death for that queue.
    broker
        .publish_raw(
            &t.delay_entry_exchange(),
            &delay_routing_key(1),
            b"again",
            &props("m"),
        )
        .await
        .unwrap();
    let config = ConsumerConfig {
        prefetch: 4,
        lanes: 1,
        max_batch: 1,
    };
    let mut link = ConsumerLink::open(&broker.settings("c"), "consumer", &t.work_queue(), &config)
        .await
        .unwrap();
    let mut consumer = link.take_lanes().remove(0);
    let Next::Delivery(first) = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .unwrap()
    else {
        panic!("the consumer was lost");
    };
    assert!(
        first.headers_json().get("x-death").is_some(),
        "the broker stamped x-death"
    );

    // Second round through level 1 and level 0 again: without stripping x-death, RabbitMQ
    // takes the second expiry from level 0 for a dead-letter cycle and drops the message.
    let publisher = Publisher::new(broker.settings("p"));
    publisher.publish_retry(&first, 2, 3, 0).await.unwrap();
    first.ack();
    assert_eq!(consumer.flush().await.unwrap(), 1);
    let Next::Delivery(second) = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("the retried message came back")
    else {
        panic!("the consumer was lost");
    };
    assert_eq!(second.body(), b"again");
    assert_eq!(second.attempt_hint(), 2);
    second.ack();
    assert_eq!(consumer.flush().await.unwrap(), 1);
    link.close().await;
    publisher.close().await;
}
