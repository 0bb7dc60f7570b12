//! `amqps://` against the local broker's TLS listener (certificate signed by the local test CA,
//! see deploy/local/tls.sh), and a node list whose first node is down.

use std::process::Command;

use std::time::Duration;

use paysync_amqp::{AmqpSettings, AmqpTls, ClientIdentity, PublishError, Publisher};
use paysync_testkit::{
    Fault, FaultProxy, TestBroker, amqp_url, closed_port, stripe_event, tls, verified_event,
};

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run deploy/local/services.sh)", path.display()))
}

fn over_tls(broker: &TestBroker, role: &str, ca: Option<String>) -> AmqpSettings {
    AmqpSettings {
        url: tls::amqps_url(),
        tls: AmqpTls {
            ca_pem: ca,
            client: None,
        },
        ..broker.settings(role)
    }
}

async fn work_queue_depth(broker: &TestBroker) -> u32 {
    broker
        .message_count(&broker.topology().work_queue())
        .await
        .unwrap()
}

/// Whether the broker lists a connection named `name` as TLS (`rabbitmqctl list_connections`).
fn broker_says_tls(name: &str) -> Option<bool> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--silent",
            "name",
            "ssl",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .map(|l| l.split('\t').nth(1) == Some("true"))
}

#[tokio::test]
async fn a_publisher_over_amqps_with_the_test_ca_gets_its_confirms_on_a_tls_connection() {
    let broker = TestBroker::new();
    let settings = over_tls(&broker, "tls-publisher", Some(read(tls::ca_file())));
    let publisher = Publisher::new(settings.clone());
    publisher
        .publish(&verified_event(stripe_event(
            "evt_tls_1",
            "customer.updated",
            false,
        )))
        .await
        .expect("confirmed over TLS");
    assert_eq!(
        broker_says_tls(&settings.connection_name),
        Some(true),
        "the broker sees the publisher's connection as TLS"
    );
    assert_eq!(work_queue_depth(&broker).await, 1);
    publisher.close().await;
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let broker = TestBroker::new();
    let (cert, key) = tls::client_cert_files();
    let mut settings = over_tls(&broker, "tls-client-cert", Some(read(tls::ca_file())));
    settings.tls.client = Some(ClientIdentity {
        cert_pem: read(cert).into_bytes(),
        key_pem: read(key).into_bytes(),
    });
    assert_eq!(settings.validate(), Ok(()));
    paysync_amqp::declare(&settings)
        .await
        .expect("the broker verifies the client certificate against the test CA and accepts it");
    // A client certificate from another CA: the broker verifies it and ends the handshake.
    let (cert, key) = tls::unknown_client_cert_files();
    let mut wrong = settings.clone();
    wrong.tls.client = Some(ClientIdentity {
        cert_pem: read(cert).into_bytes(),
        key_pem: read(key).into_bytes(),
    });
    let err = paysync_amqp::declare(&wrong).await.unwrap_err().to_string();
    println!("unverifiable client certificate: {err}");
    assert!(
        err.contains("TLS with amqps://guest:***@localhost:5671/%2f failed"),
        "{err}"
    );
    assert!(err.contains("PAYSYNC_AMQP_CLIENT_CERT_FILE"), "{err}");
}

#[tokio::test]
async fn a_wrong_ca_or_none_fails_with_an_error_naming_the_ca_setting_and_no_password() {
    let broker = TestBroker::new();
    for ca in [Some(read(tls::other_ca_file())), None] {
        let settings = over_tls(&broker, "tls-wrong-ca", ca.clone());
        let err = paysync_amqp::declare(&settings)
            .await
            .expect_err("an unknown issuer is refused")
            .to_string();
        println!(
            "wrong CA ({}): {err}",
            if ca.is_some() {
                "other CA"
            } else {
                "no CA file"
            }
        );
        assert!(
            err.contains("TLS with amqps://guest:***@localhost:5671/%2f failed"),
            "{err}"
        );
        assert!(err.contains("PAYSYNC_AMQP_CA_FILE"), "{err}");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        assert!(!err.contains("guest:guest"), "{err}");
        let publisher = Publisher::new(settings);
        let refused = publisher
            .publish(&verified_event(stripe_event(
                "evt_tls_2",
                "customer.updated",
                false,
            )))
            .await;
        assert!(
            refused.is_err(),
            "nothing is published without a trusted broker"
        );
        publisher.close().await;
    }
    assert_eq!(work_queue_depth(&broker).await, 0);
}

#[tokio::test]
async fn a_node_list_whose_first_node_is_down_connects_to_the_next_and_stays_there() {
    let broker = TestBroker::new();
    let down = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let settings = AmqpSettings {
        url: format!("{down},{}", amqp_url()),
        ..broker.settings("failover-publisher")
    };
    let publisher = Publisher::new(settings.clone());
    for i in 0..3 {
        publisher
            .publish(&verified_event(stripe_event(
                &format!("evt_failover_{i}"),
                "customer.updated",
                false,
            )))
            .await
            .expect("confirmed by the second node");
    }
    // A clone (another component of the same process) starts where the last connection went.
    paysync_amqp::declare(&settings).await.unwrap();
    assert_eq!(work_queue_depth(&broker).await, 3);
    publisher.close().await;

    let all_down = AmqpSettings {
        url: format!("{down},amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
        ..broker.settings("failover-none")
    };
    let err = paysync_amqp::declare(&all_down)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("127.0.0.1:"),
        "names the last node tried: {err}"
    );
}

#[tokio::test]
async fn a_node_that_confirms_nothing_is_left_for_the_next() {
    let broker = TestBroker::new();
    let upstream = amqp_url();
    let host_port = upstream
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hp, _)| hp.to_owned())
        .unwrap();
    let proxy = FaultProxy::start(&host_port).await.unwrap();
    let settings = AmqpSettings {
        url: format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f,{upstream}",
            proxy.port()
        ),
        confirm_timeout: Duration::from_millis(500),
        ..broker.settings("stalled-node")
    };
    let publisher = Publisher::new(settings);
    let event = |i: usize| {
        verified_event(stripe_event(
            &format!("evt_stall_{i}"),
            "customer.updated",
            false,
        ))
    };
    publisher
        .publish(&event(0))
        .await
        .expect("confirmed through the first node");

    // The first node's connection stays open but nothing comes back, as from a node that
    // forwards to a queue leader that is gone.
    proxy.set(Fault::Stall);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut timeouts = 0;
    for i in 1.. {
        assert!(
            std::time::Instant::now() < deadline,
            "no publish confirmed in 60 s"
        );
        match publisher.publish(&event(i)).await {
            Ok(()) => break,
            Err(PublishError::Timeout(_)) => timeouts += 1,
            Err(_) => {}
        }
    }
    assert!(timeouts >= 1, "the stalled node timed out first");
    assert!(work_queue_depth(&broker).await >= 2);
    publisher.close().await;
}
