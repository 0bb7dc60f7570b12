//! Queue depths read from the broker (passive declares), for the `paysync_queue_messages`
//! gauge. One long-lived connection, reopened after failures.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::{AmqpSettings, Topology};

/// Reads how many messages are ready in each of our queues.
pub struct BrokerMonitor {
    settings: AmqpSettings,
    topology: Topology,
    link: Option<(Connection, Channel)>,
}

impl BrokerMonitor {
    /// A monitor for `settings`' topology; connects on first use.
    pub fn new(settings: AmqpSettings) -> Self {
        let topology = Topology::new(settings.prefix.clone(), settings.delivery_limit);
        Self {
            settings,
            topology,
            link: None,
        }
    }

    /// `(label, ready messages)` for every queue; the label is the queue name without the
    /// prefix (`work`, `dead`, `delay.0` … `delay.14`): a closed set.
    pub async fn depths(&mut self) -> lapin::Result<Vec<(String, u32)>> {
        let result = self.read().await;
        if result.is_err() {
            self.link = None;
        }
        result
    }

    async fn read(&mut self) -> lapin::Result<Vec<(String, u32)>> {
        if self
            .link
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let name = format!("{}-monitor", self.settings.connection_name);
            let connection = tokio::time::timeout(
                self.settings.attempt_timeout(),
                crate::connect::connect(&self.settings, &name),
            )
            .await
            .map_err(|_| timeout_error())??
            .connection;
            let channel = connection.create_channel().await?;
            self.link = Some((connection, channel));
        }
        let Some((_, channel)) = &self.link else {
            return Ok(Vec::new());
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let prefix = format!("{}.", self.topology.prefix());
        let mut out = Vec::new();
        for queue in self.topology.queues() {
            let q = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await?;
            let label = queue.strip_prefix(&prefix).unwrap_or(&queue).to_owned();
            out.push((label, q.message_count()));
        }
        Ok(out)
    }
}

fn timeout_error() -> lapin::Error {
    lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "broker monitor connect timed out",
    )))
    .into()
}
