//! `paysync up` stopped with SIGTERM: every part stops in order and the log has no ERROR line
//! (lapin used to log two while the channels it closed in the background met the closing
//! connection).

use std::process::{Command, Stdio};
use std::time::Duration;

use paysync_testkit::{TestBroker, TestDb, paysync_env, poll_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_of_paysync_up_logs_no_error() {
    let (broker, db) = (TestBroker::new(), TestDb::new());
    db.store().await.unwrap();
    let dir = std::env::temp_dir().join(format!("paysync-up-{}", paysync_testkit::unique_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("stderr.log");
    let up = Command::new(env!("CARGO_BIN_EXE_paysync"))
        .arg("up")
        .envs(paysync_env(&broker, &db))
        .env("PAYSYNC_HTTP_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_METRICS_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("PAYSYNC_DISPATCHER_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    poll_until(Duration::from_secs(60), "paysync up consuming", || async {
        let text = log();
        (text.contains("consuming role=\"worker\"")
            && text.contains("consuming role=\"dlq-ingester\""))
        .then_some(())
    })
    .await
    .unwrap();

    let sent = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let up = std::sync::Mutex::new(up);
    let status = poll_until(Duration::from_secs(30), "paysync up stopped", || async {
        up.lock().unwrap().try_wait().unwrap()
    })
    .await
    .unwrap();
    let text = log();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "{status}: {text}");
    for part in ["dispatcher stopped", "receiver stopped", "worker stopped"] {
        assert!(text.contains(part), "{part}: {text}");
    }
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
