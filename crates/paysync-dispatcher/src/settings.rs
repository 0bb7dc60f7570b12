//! The dispatcher's settings: the shared ones here, each destination's in its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paysync_domain::outbound::Destination;
use paysync_store::{StoreSettings, StoreSettingsError};

use crate::destinations::app::{AppSender, AppSettings};
use crate::destinations::chat::{ChatSender, ChatSettings};
use crate::destinations::email::{EmailSender, EmailSettings};
use crate::destinations::hubspot::{HubspotSender, HubspotSettings};
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
    /// Email, when configured.
    pub email: Option<EmailSettings>,
    /// Team chat, when configured.
    pub chat: Option<ChatSettings>,
    /// HubSpot, when configured.
    pub hubspot: Option<HubspotSettings>,
    /// The business's application (signed webhooks), when configured.
    pub app: Option<AppSettings>,
    /// How each destination's lane runs.
    pub lanes: Lanes,
}

/// Each destination's lane settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Lanes {
    /// Email.
    pub email: LaneConfig,
    /// Team chat.
    pub chat: LaneConfig,
    /// HubSpot.
    pub hubspot: LaneConfig,
    /// The business's application.
    pub app: LaneConfig,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            email: LaneConfig::default_for(Destination::Email),
            chat: LaneConfig::default_for(Destination::Chat),
            hubspot: LaneConfig::default_for(Destination::Hubspot),
            app: LaneConfig::default_for(Destination::App),
        }
    }
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
            email: None,
            chat: None,
            hubspot: None,
            app: None,
            lanes: Lanes::default(),
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
    /// A lane's settings.
    #[error("{destination} lane: {what}")]
    Lane {
        /// Its destination.
        destination: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The email settings.
    #[error(transparent)]
    Email(#[from] crate::destinations::email::EmailSettingsError),
    /// The chat settings.
    #[error(transparent)]
    Chat(#[from] crate::destinations::chat::ChatSettingsError),
    /// The HubSpot settings.
    #[error(transparent)]
    Hubspot(#[from] crate::destinations::hubspot::HubspotStartError),
    /// The application's settings.
    #[error(transparent)]
    App(#[from] crate::destinations::app::AppSettingsError),
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
        for (destination, lane) in [
            ("email", &self.lanes.email),
            ("chat", &self.lanes.chat),
            ("hubspot", &self.lanes.hubspot),
            ("app", &self.lanes.app),
        ] {
            lane.validate()
                .map_err(|what| SettingsError::Lane { destination, what })?;
        }
        if let Some(e) = &self.email {
            e.validate()?;
        }
        if let Some(c) = &self.chat {
            c.validate()?;
        }
        if let Some(h) = &self.hubspot {
            h.validate()?;
        }
        if let Some(a) = &self.app {
            a.validate()?;
        }
        Ok(())
    }
}

/// The senders of the destinations `settings` configures, each checked (HubSpot's stages
/// resolved against the portal).
pub(crate) async fn senders(
    settings: &Settings,
) -> anyhow::Result<Vec<(Arc<dyn Sender>, LaneConfig)>> {
    let mut out: Vec<(Arc<dyn Sender>, LaneConfig)> = Vec::new();
    if let Some(e) = &settings.email {
        out.push((Arc::new(EmailSender::new(e)?), settings.lanes.email.clone()));
    }
    if let Some(c) = &settings.chat {
        out.push((Arc::new(ChatSender::new(c)?), settings.lanes.chat.clone()));
    }
    if let Some(h) = &settings.hubspot {
        let sender = HubspotSender::connect(h).await?;
        tracing::info!(
            pipeline = %sender.stages().pipeline,
            won = %sender.stages().won,
            lost = %sender.stages().lost,
            "HubSpot deal stages resolved"
        );
        out.push((Arc::new(sender), settings.lanes.hubspot.clone()));
    }
    if let Some(a) = &settings.app {
        out.push((Arc::new(AppSender::new(a)?), settings.lanes.app.clone()));
    }
    Ok(out)
}
