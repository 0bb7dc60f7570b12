//! The dispatcher's settings: the shared ones here, each destination's in its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paysync_store::{StoreSettings, StoreSettingsError};

use crate::{LaneConfig, Sender};

/// Everything the dispatcher needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database.
    pub store: StoreSettings,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub metrics_addr: SocketAddr,
    /// This process's name in leases and attempts (default: host name and process id).
    pub owner: String,
    /// How long a claim holds a delivery; keep it at least twice the slowest send's timeout.
    pub lease: Duration,
    /// The poll backstop when no wake-up comes.
    pub poll: Duration,
    /// How often expired leases are taken back.
    pub reap_every: Duration,
    /// How often the queue gauges are read.
    pub monitor_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            store: StoreSettings::default(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9466)),
            owner: default_owner(),
            lease: Duration::from_secs(120),
            poll: Duration::from_secs(5),
            reap_every: Duration::from_secs(30),
            monitor_interval: Duration::from_secs(5),
        }
    }
}

/// `<host>:<pid>`.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "dispatcher".into());
    format!("{host}:{}", std::process::id())
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The database settings.
    #[error(transparent)]
    Store(#[from] StoreSettingsError),
    /// A duration is zero.
    #[error("dispatcher {0} must be positive")]
    Zero(&'static str),
    /// The owner name is empty.
    #[error("dispatcher owner name must not be empty")]
    Owner,
}

impl Settings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.store.validate()?;
        for (name, d) in [
            ("lease", self.lease),
            ("poll interval", self.poll),
            ("reap interval", self.reap_every),
            ("monitor interval", self.monitor_interval),
        ] {
            if d.is_zero() {
                return Err(SettingsError::Zero(name));
            }
        }
        if self.owner.trim().is_empty() {
            return Err(SettingsError::Owner);
        }
        Ok(())
    }
}

/// The senders of the destinations `settings` configures.
pub(crate) async fn senders(
    _settings: &Settings,
) -> anyhow::Result<Vec<(Arc<dyn Sender>, LaneConfig)>> {
    Ok(Vec::new())
}
