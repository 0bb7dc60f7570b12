//! A dispatcher lane's own connection: the session advisory lock that makes one process the
//! owner of a destination, and the `LISTEN` that wakes it when the worker records deliveries.
//!
//! The connection lives outside the pool (a session lock must stay on one connection; a
//! transaction-pooling proxy in between would break it). When it dies the lock is gone with
//! it: [`LaneConnection::is_alive`] turns false and the lane must stop sending at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::{Store, StoreError};

/// The notification channel the worker's delivery insert signals on.
pub const CHANNEL: &str = "paysync_outbox";

/// A dedicated connection holding (or trying for) one destination's lane lock.
pub struct LaneConnection {
    client: tokio_postgres::Client,
    alive: Arc<AtomicBool>,
    wakes: mpsc::Receiver<()>,
    key: String,
}

impl Store {
    /// Opens a dedicated connection for the lane of `destination` and listens for its
    /// wake-ups (notifications of this store's schema only).
    pub async fn lane_connection(&self, destination: &str) -> Result<LaneConnection, StoreError> {
        let (client, mut connection) = self
            .pg
            .connect(self.tls.clone())
            .await
            .map_err(StoreError::db("open lane connection"))?;
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, wakes) = mpsc::channel(1);
        let wanted = format!("{}.{destination}", self.schema);
        let flag = alive.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && n.payload() == wanted
                {
                    // A full channel already holds a wake-up: nothing is lost.
                    let _ = tx.try_send(());
                }
            }
            flag.store(false, Ordering::SeqCst);
        });
        client
            .batch_execute(&format!("listen {CHANNEL}"))
            .await
            .map_err(StoreError::db("listen for deliveries"))?;
        Ok(LaneConnection {
            client,
            alive,
            wakes,
            key: format!("paysync.outbox.{}.{destination}", self.schema),
        })
    }
}

impl LaneConnection {
    /// Tries to take the lane's lock (held until this connection closes). Whether it is ours.
    pub async fn try_lock(&self) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one("select pg_try_advisory_lock(hashtext($1))", &[&self.key])
            .await
            .map_err(StoreError::db("take lane lock"))?;
        Ok(row.get(0))
    }

    /// Whether the connection (and so the lock) is still there.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.client.is_closed()
    }

    /// Waits for a wake-up or `timeout`, whichever comes first. Whether it was a wake-up.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.wakes.recv()).await,
            Ok(Some(()))
        )
    }

    /// Checks the connection answers (a lane calls this now and then, so a connection the
    /// network silently dropped is noticed).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .simple_query("select 1")
            .await
            .map_err(StoreError::db("ping lane connection"))?;
        Ok(())
    }

    /// The server process id of the connection (tests terminate it to simulate a failover).
    pub async fn backend_pid(&self) -> Result<i32, StoreError> {
        let row = self
            .client
            .query_one("select pg_backend_pid()", &[])
            .await
            .map_err(StoreError::db("read backend pid"))?;
        Ok(row.get(0))
    }
}
