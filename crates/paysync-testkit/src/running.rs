//! An app (receiver, worker) running on a task of the test's runtime until the test stops it:
//! the one guard every test suite uses instead of its own spawn/stop/drop code.
//!
//! Rule of thumb: a test that cares how the app ends calls [`RunningApp::stop`] and checks the
//! result; dropping the guard only asks the app to stop.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`RunningApp::stop`] waits for the app to exit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The shutdown future handed to an app's `run_until_stopped`: completes when the guard stops
/// the app or is dropped.
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A sent signal and a dropped sender both mean "stop".
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// An app running on a spawned task, and the trigger that stops it. Dropping the guard sends
/// the stop signal without waiting.
pub struct RunningApp {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningApp {
    /// Spawns `run(shutdown)` — typically `|stop| app.run_until_stopped(stop)` — on a task.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(Shutdown(stopped)));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Whether the app's task has ended (on its own or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Sends the stop signal and waits up to [`STOP_DEADLINE`] for the app's own result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_within(STOP_DEADLINE).await
    }

    /// Sends the stop signal and waits up to `deadline` for the app's own result.
    pub async fn stop_within(mut self, deadline: Duration) -> anyhow::Result<()> {
        self.signal();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        tokio::time::timeout(deadline, task)
            .await
            .with_context(|| format!("the app did not stop within {deadline:?}"))?
            .context("the app's task panicked or was cancelled")?
    }

    /// Aborts the app's task mid-flight, as a crash would (no shutdown, nothing acked), and
    /// waits until it is gone.
    pub async fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The app may have exited already; then there is nobody to tell.
            let _ = stop.send(());
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.signal();
    }
}
