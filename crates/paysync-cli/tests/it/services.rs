//! `deploy/local/services.sh` tells a broker that answers the AMQP handshake from one that
//! accepts TCP connections and then says nothing (a wedged broker, which it restarts).

use std::process::Command;

use tokio::net::TcpListener;

fn check_amqp(port: u16) -> (bool, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/local/services.sh"
    );
    let out = Command::new("bash")
        .arg(script)
        .arg("--check-amqp")
        .env("PAYSYNC_SERVICES_AMQP_PORT", port.to_string())
        .env("PAYSYNC_SERVICES_AMQP_HANDSHAKE_SECS", "2")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_script_tells_a_broker_that_accepts_tcp_but_no_handshake() {
    // Accepts every connection and never answers, like the wedged RabbitMQ.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let (ok, out) = tokio::task::spawn_blocking(move || check_amqp(port))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("answers no AMQP handshake in 2s"), "{out}");

    let (ok, out) = tokio::task::spawn_blocking(|| check_amqp(5672))
        .await
        .unwrap();
    assert!(ok, "the local broker answers: {out}");
    assert!(
        out.contains("127.0.0.1:5672 answers the AMQP handshake"),
        "{out}"
    );
    held.abort();
}
