//! The worker's settings and the rules they must meet.
//!
//! Rule of thumb: plain data that checks itself. Whoever builds a [`Settings`] (the CLI from the
//! environment, a test, the bench) gets the same verdict from [`Settings::validate`], and
//! [`App::build`](crate::App::build) refuses what it refuses. Errors name the field, never the
//! variable that set it: mapping a field to its variable is the CLI's job.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_amqp::{AmqpSettings, AmqpSettingsError, MAX_DELAY_SECS};
use paysync_domain::retry::{RetryPolicy, RetryPolicyError};
use paysync_store::{StoreSettings, StoreSettingsError};
use secrecy::ExposeSecret as _;

/// The shortest accepted admin API token, in bytes.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Everything the worker needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Metrics and health listener.
    pub metrics_addr: SocketAddr,
    /// Unacked deliveries the broker may push to us at once, shared out between the lanes.
    /// Each lane should be able to hold two full batches: the one it applies and the next one
    /// arriving meanwhile (so the default is concurrency × batch size × 2). Each unacked
    /// message is held in memory and redelivered on a crash.
    pub prefetch: u16,
    /// Lanes: channels each applying one batch at a time (a lone delivery is a batch of one),
    /// so at most this many transactions at once. A few large transactions beat many small
    /// ones: the statements of a batch cost about the same for 10 events or 100. A lane's
    /// batch is what arrived for it while it applied the previous one, so every extra lane
    /// splits the arrivals into smaller batches; hence a small default (the measurements are in
    /// docs/decisions.md).
    pub concurrency: usize,
    /// The most deliveries applied in one transaction. A batch takes whatever has arrived
    /// when its lane is free, so under light load batches are single deliveries (no added
    /// latency) and under heavy load they fill up. 1 turns batching off.
    pub batch_size: usize,
    /// The retry schedule. Its longest delay must fit the broker's delay levels
    /// ([`MAX_DELAY_SECS`]).
    pub retry: RetryPolicy,
    /// How long shutdown waits for in-flight deliveries before closing (the broker
    /// redelivers whatever was not acked).
    pub shutdown_grace: Duration,
    /// How often queue depths, dead-letter counts and pool usage are refreshed for metrics.
    pub monitor_interval: Duration,
    /// The least time between two refreshes of the business KPI gauges
    /// (`paysync_business_*`): the monitor refreshes them on its first pass and then on the
    /// first pass at least this long after the last refresh, so a short `monitor_interval`
    /// does not run their counts every pass.
    pub kpi_interval: Duration,
    /// Broker settings.
    pub amqp: AmqpSettings,
    /// Database settings.
    pub store: StoreSettings,
    /// Bearer token of the admin API on the metrics listener; `None` keeps the API off. At
    /// least [`MIN_ADMIN_TOKEN_LEN`] bytes.
    pub admin_token: Option<secrecy::SecretString>,
    /// When the scheduled reconciler runs (only for providers given API credentials, see
    /// [`App::with_reconcile_sources`](crate::App::with_reconcile_sources)).
    pub reconcile: crate::reconcile::ReconcileSchedule,
}

impl Default for Settings {
    fn default() -> Self {
        let store = StoreSettings::default();
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            prefetch: 1024,
            concurrency: 2,
            batch_size: 256,
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(20),
            monitor_interval: Duration::from_secs(15),
            kpi_interval: Duration::from_secs(30),
            amqp: AmqpSettings::default(),
            store,
            admin_token: None,
            reconcile: crate::reconcile::ReconcileSchedule::default(),
        }
    }
}

/// A [`Settings`] field holding a value the worker refuses; each variant names the field.
/// Messages never show the admin token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    /// `prefetch` is zero.
    #[error("prefetch: must be greater than zero")]
    Prefetch,
    /// `concurrency` is zero.
    #[error("concurrency: must be greater than zero")]
    Concurrency,
    /// `batch_size` is zero.
    #[error("batch_size: must be greater than zero")]
    BatchSize,
    /// `retry` breaks one of the schedule's own rules.
    #[error("retry policy")]
    Retry(#[from] RetryPolicyError),
    /// `retry` can produce a delay longer than the broker's delay levels express.
    #[error(
        "retry.max_delay: with the jitter the longest delay must stay within {MAX_DELAY_SECS} s \
         (what the broker delay levels express)"
    )]
    RetryBeyondDelayLevels,
    /// `shutdown_grace` is zero.
    #[error("shutdown_grace: must be greater than zero")]
    ShutdownGrace,
    /// `monitor_interval` is zero.
    #[error("monitor_interval: must be greater than zero")]
    MonitorInterval,
    /// `kpi_interval` is zero.
    #[error("kpi_interval: must be greater than zero")]
    KpiInterval,
    /// A field of `amqp`.
    #[error(transparent)]
    Amqp(#[from] AmqpSettingsError),
    /// A field of `store`.
    #[error(transparent)]
    Store(#[from] StoreSettingsError),
    /// `reconcile.interval` is zero.
    #[error("reconcile.interval: must be greater than zero")]
    ReconcileInterval,
    /// `admin_token` is shorter than [`MIN_ADMIN_TOKEN_LEN`] bytes.
    #[error("admin_token: use at least {MIN_ADMIN_TOKEN_LEN} characters")]
    AdminToken,
}

impl Settings {
    /// Checks every field, the nested broker and database settings included; the first
    /// refused one is the error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.prefetch == 0 {
            return Err(SettingsError::Prefetch);
        }
        if self.concurrency == 0 {
            return Err(SettingsError::Concurrency);
        }
        if self.batch_size == 0 {
            return Err(SettingsError::BatchSize);
        }
        self.retry.validate()?;
        if self.retry.longest_delay_secs() > f64::from(MAX_DELAY_SECS) {
            return Err(SettingsError::RetryBeyondDelayLevels);
        }
        if self.shutdown_grace.is_zero() {
            return Err(SettingsError::ShutdownGrace);
        }
        if self.monitor_interval.is_zero() {
            return Err(SettingsError::MonitorInterval);
        }
        if self.kpi_interval.is_zero() {
            return Err(SettingsError::KpiInterval);
        }
        if self.reconcile.interval.is_zero() {
            return Err(SettingsError::ReconcileInterval);
        }
        self.amqp.validate()?;
        self.store.validate()?;
        if let Some(token) = &self.admin_token
            && token.expose_secret().len() < MIN_ADMIN_TOKEN_LEN
        {
            return Err(SettingsError::AdminToken);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn default_settings_are_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
        let s = Settings {
            admin_token: Some(SecretString::from("a".repeat(MIN_ADMIN_TOKEN_LEN))),
            monitor_interval: Duration::from_millis(200),
            ..Settings::default()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    /// Spoils one field of valid settings.
    type Spoil = fn(&mut Settings);

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let cases: [(Spoil, SettingsError); 14] = [
            (|s| s.prefetch = 0, SettingsError::Prefetch),
            (|s| s.concurrency = 0, SettingsError::Concurrency),
            (|s| s.batch_size = 0, SettingsError::BatchSize),
            (
                |s| s.retry.max_attempts = 0,
                SettingsError::Retry(RetryPolicyError::MaxAttempts),
            ),
            (
                |s| s.retry.factor = 0.5,
                SettingsError::Retry(RetryPolicyError::Factor),
            ),
            (
                |s| s.retry.max_delay = Duration::from_secs(40_000),
                SettingsError::RetryBeyondDelayLevels,
            ),
            (
                |s| s.retry.max_delay = Duration::from_secs(30_000),
                SettingsError::RetryBeyondDelayLevels,
            ),
            (
                |s| s.shutdown_grace = Duration::ZERO,
                SettingsError::ShutdownGrace,
            ),
            (
                |s| s.monitor_interval = Duration::ZERO,
                SettingsError::MonitorInterval,
            ),
            (
                |s| s.kpi_interval = Duration::ZERO,
                SettingsError::KpiInterval,
            ),
            (
                |s| s.amqp.prefix = "bad prefix".into(),
                SettingsError::Amqp(AmqpSettingsError::Prefix),
            ),
            (
                |s| s.store.url = "mysql://x".into(),
                SettingsError::Store(StoreSettingsError::UrlScheme),
            ),
            (
                |s| s.store.schema = "Bad-Schema".into(),
                SettingsError::Store(StoreSettingsError::Schema),
            ),
            (
                |s| s.admin_token = Some(SecretString::from("short-secret".to_owned())),
                SettingsError::AdminToken,
            ),
        ];
        for (break_it, expected) in cases {
            let mut s = Settings::default();
            break_it(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err, expected);
            let shown = err.to_string();
            assert!(
                !shown.contains("PAYSYNC_") && !shown.contains("short-secret"),
                "{shown}"
            );
        }
    }

    #[tokio::test]
    async fn build_refuses_settings_the_binary_would_refuse() {
        let mut s = Settings {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Settings::default()
        };
        s.amqp.prefix = "bad prefix".into();
        let err = crate::App::build(s.clone(), crate::Handlers::new())
            .await
            .err()
            .expect("a bad prefix is refused");
        assert_eq!(
            err.downcast_ref::<SettingsError>(),
            Some(&SettingsError::Amqp(AmqpSettingsError::Prefix))
        );
        s.amqp.prefix = "paysync".into();
        s.admin_token = Some(SecretString::from("too-short".to_owned()));
        let err = crate::App::build(s, crate::Handlers::new())
            .await
            .err()
            .expect("a short admin token is refused");
        assert_eq!(
            err.downcast_ref::<SettingsError>(),
            Some(&SettingsError::AdminToken)
        );
    }

    #[test]
    fn the_longest_retry_delay_may_fill_the_delay_levels_exactly() {
        let mut s = Settings::default();
        s.retry.jitter = 0.0;
        s.retry.max_delay = Duration::from_secs(u64::from(MAX_DELAY_SECS));
        assert_eq!(s.validate(), Ok(()));
        s.retry.max_delay += Duration::from_secs(1);
        assert_eq!(s.validate(), Err(SettingsError::RetryBeyondDelayLevels));
    }
}
