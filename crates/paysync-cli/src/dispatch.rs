//! The dispatcher's settings from the environment: `PAYSYNC_DISPATCHER_*` and one block per
//! destination (`PAYSYNC_SMTP_*`/`PAYSYNC_EMAIL_*`, `PAYSYNC_CHAT_*`, `PAYSYNC_HUBSPOT_*`). A
//! destination is on when its credential variable is set, off otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_dispatcher::destinations::chat::ChatSettings;
use paysync_dispatcher::destinations::email::EmailSettings;
use paysync_dispatcher::destinations::hubspot::HubspotSettings;
use paysync_dispatcher::{LaneConfig, Lanes, Settings};
use secrecy::SecretString;

use crate::config::{Env, database, refused};

/// The dispatcher's settings; `metrics_var` names the listener's variable
/// (`PAYSYNC_METRICS_ADDR` for `paysync dispatcher`, `PAYSYNC_DISPATCHER_METRICS_ADDR` in
/// `paysync up`). `local_smtp`: the relay to use when `PAYSYNC_SMTP_URL` is unset (`paysync up`
/// sends to the local catcher; production processes send no email then).
pub fn settings(
    env: &Env<'_>,
    metrics_var: &str,
    metrics_default: SocketAddr,
    local_smtp: Option<&str>,
) -> anyhow::Result<Settings> {
    let d = Settings::default();
    let lanes = Lanes::default();
    let s = Settings {
        store: database(env)?,
        metrics_addr: env.parse(metrics_var, metrics_default)?,
        owner: env
            .raw("PAYSYNC_DISPATCHER_OWNER")
            .map(|o| o.trim().to_owned())
            .unwrap_or(d.owner),
        lease: env.seconds("PAYSYNC_DISPATCHER_LEASE_SECS", d.lease)?,
        poll: env.seconds("PAYSYNC_DISPATCHER_POLL_SECS", d.poll)?,
        reap_every: env.seconds("PAYSYNC_DISPATCHER_REAP_SECS", d.reap_every)?,
        monitor_interval: d.monitor_interval,
        email: email(env, local_smtp)?,
        chat: chat(env)?,
        hubspot: hubspot(env)?,
        lanes: Lanes {
            email: lane(env, "PAYSYNC_EMAIL", lanes.email)?,
            chat: LaneConfig {
                max_age: Some(env.seconds(
                    "PAYSYNC_CHAT_MAX_AGE_SECS",
                    lanes.chat.max_age.unwrap_or(Duration::from_secs(6 * 3600)),
                )?),
                ..lane(env, "PAYSYNC_CHAT", lanes.chat)?
            },
            hubspot: lane(env, "PAYSYNC_HUBSPOT", lanes.hubspot)?,
        },
    };
    s.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(s)
}

/// `<prefix>_RATE` (requests per second) and `<prefix>_CONCURRENCY` over `default`.
fn lane(env: &Env<'_>, prefix: &str, default: LaneConfig) -> anyhow::Result<LaneConfig> {
    let rate_var = format!("{prefix}_RATE");
    let rate: f64 = env.parse(&rate_var, default.rate_per_second)?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(refused(
            &rate_var,
            "must be a positive number of requests per second",
        ));
    }
    let conc_var = format!("{prefix}_CONCURRENCY");
    let concurrency: usize = env.parse(&conc_var, default.concurrency)?;
    if concurrency == 0 {
        return Err(refused(&conc_var, "must be at least 1"));
    }
    Ok(LaneConfig {
        rate_per_second: rate,
        concurrency,
        ..default
    })
}

/// The sender when `PAYSYNC_EMAIL_FROM` is unset with the local catcher.
const LOCAL_FROM: &str = "paysync local <billing@paysync.localhost>";

fn email(env: &Env<'_>, local_smtp: Option<&str>) -> anyhow::Result<Option<EmailSettings>> {
    let (url, local) = match (env.secret("PAYSYNC_SMTP_URL")?, local_smtp) {
        (Some(url), _) => (url, false),
        (None, Some(local)) => (local.to_owned(), true),
        (None, None) => return Ok(None),
    };
    let from = match env.raw("PAYSYNC_EMAIL_FROM") {
        Some(f) => f.trim().to_owned(),
        None if local => LOCAL_FROM.to_owned(),
        None => {
            return Err(refused(
                "PAYSYNC_EMAIL_FROM",
                "required with PAYSYNC_SMTP_URL (the sender, e.g. `Billing <billing@example.com>`)",
            ));
        }
    };
    let mut s = EmailSettings::new(SecretString::from(url), from);
    s.templates_dir = env
        .raw("PAYSYNC_EMAIL_TEMPLATES_DIR")
        .map(|d| d.trim().into());
    s.validate().map_err(|e| {
        use paysync_dispatcher::destinations::email::EmailSettingsError as E;
        match e {
            E::Url(..) => refused("PAYSYNC_SMTP_URL", e),
            E::From(_) => refused("PAYSYNC_EMAIL_FROM", e),
            E::TemplatesDir(_) | E::Template(..) => refused("PAYSYNC_EMAIL_TEMPLATES_DIR", e),
        }
    })?;
    Ok(Some(s))
}

fn chat(env: &Env<'_>) -> anyhow::Result<Option<ChatSettings>> {
    let Some(url) = env.secret("PAYSYNC_CHAT_WEBHOOK_URL")? else {
        return Ok(None);
    };
    let s = ChatSettings::new(SecretString::from(url));
    s.validate()
        .map_err(|e| refused("PAYSYNC_CHAT_WEBHOOK_URL", e))?;
    Ok(Some(s))
}

fn hubspot(env: &Env<'_>) -> anyhow::Result<Option<HubspotSettings>> {
    let Some(token) = env.secret("PAYSYNC_HUBSPOT_TOKEN")? else {
        return Ok(None);
    };
    let mut s = HubspotSettings::new(SecretString::from(token));
    if let Some(base) = env.raw("PAYSYNC_HUBSPOT_API_BASE") {
        s.api_base = base.trim().trim_end_matches('/').to_owned();
    }
    if let Some(p) = env.raw("PAYSYNC_HUBSPOT_PIPELINE") {
        s.pipeline = p.trim().to_owned();
    }
    s.won_stage = env
        .raw("PAYSYNC_HUBSPOT_WON_STAGE")
        .map(|v| v.trim().to_owned());
    s.lost_stage = env
        .raw("PAYSYNC_HUBSPOT_LOST_STAGE")
        .map(|v| v.trim().to_owned());
    s.validate()
        .map_err(|e| refused("PAYSYNC_HUBSPOT_API_BASE", e))?;
    Ok(Some(s))
}
