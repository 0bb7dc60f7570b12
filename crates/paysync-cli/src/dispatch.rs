//! The dispatcher's settings from the environment: `PAYSYNC_DISPATCHER_*` and one block per
//! destination (`PAYSYNC_SMTP_*`/`PAYSYNC_EMAIL_*`, `PAYSYNC_CHAT_*`, `PAYSYNC_HUBSPOT_*`,
//! `PAYSYNC_APP_*`). A destination is on when its credential variable is set, off otherwise.

use std::net::SocketAddr;
use std::time::Duration;

use paysync_dispatcher::destinations::app::AppSettings;
use paysync_dispatcher::destinations::chat::ChatSettings;
use paysync_dispatcher::destinations::email::EmailSettings;
use paysync_dispatcher::destinations::hubspot::HubspotSettings;
use paysync_dispatcher::{LaneConfig, Lanes, Settings};
use paysync_domain::standard_webhooks::Secret;
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
        app: app(env)?,
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
            app: lane(env, "PAYSYNC_APP", lanes.app)?,
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

const APP_URL: &str = "PAYSYNC_APP_WEBHOOK_URL";
const APP_SECRET: &str = "PAYSYNC_APP_WEBHOOK_SECRET";
const APP_SECRET_FILE: &str = "PAYSYNC_APP_WEBHOOK_SECRET_FILE";

/// The application's webhooks: `PAYSYNC_APP_WEBHOOK_URL` (also `_FILE`) turns them on, and
/// then needs `PAYSYNC_APP_WEBHOOK_SECRET` or `PAYSYNC_APP_WEBHOOK_SECRET_FILE` (not both):
/// whitespace-separated `whsec_…` secrets, each of which signs every request (two during a
/// rotation). A secret without the URL is refused too: the destination would silently be off.
fn app(env: &Env<'_>) -> anyhow::Result<Option<AppSettings>> {
    if env.raw(APP_SECRET).is_some() && env.raw(APP_SECRET_FILE).is_some() {
        return Err(refused(
            APP_SECRET,
            format!("set it or {APP_SECRET_FILE}, not both"),
        ));
    }
    let secret_var = if env.raw(APP_SECRET_FILE).is_some() {
        APP_SECRET_FILE
    } else {
        APP_SECRET
    };
    let secrets = env.secret(APP_SECRET)?;
    let Some(url) = env.secret(APP_URL)? else {
        if secrets.is_some() {
            return Err(refused(
                secret_var,
                format!("set {APP_URL} too (the application's endpoint), or unset it"),
            ));
        }
        return Ok(None);
    };
    let Some(secrets) = secrets else {
        return Err(refused(
            APP_SECRET,
            format!(
                "required with {APP_URL} (whsec_… secrets, separated by spaces; or {APP_SECRET_FILE})"
            ),
        ));
    };
    let secrets = secrets
        .split_whitespace()
        .map(Secret::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(secret_var, e))?;
    let s = AppSettings::new(SecretString::from(url), secrets);
    s.validate().map_err(|e| {
        use paysync_dispatcher::destinations::app::AppSettingsError as E;
        match e {
            E::NoSecret | E::TooManySecrets => refused(secret_var, e),
            E::InvalidUrl | E::NotHttp | E::ZeroTimeout | E::Client(_) => refused(APP_URL, e),
        }
    })?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const URL: &str = "https://app.example.com/hooks/paysync?token=sekrit-token";

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = Env::from_fn(move |k| map.get(k).cloned());
        settings(
            &env,
            "PAYSYNC_METRICS_ADDR",
            "127.0.0.1:9466".parse().expect("addr"),
            None,
        )
    }

    fn refusal(vars: &[(&str, &str)]) -> String {
        let e = read(vars).expect_err("refused");
        let shown = format!("{e:#}");
        for secret in ["sekrit", "MfKQ", "app.example.com"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        shown
    }

    #[test]
    fn the_app_is_off_without_its_url_and_its_lane_has_the_defaults() {
        let s = read(&[]).expect("settings");
        assert!(s.app.is_none());
        assert_eq!(s.lanes.app, Lanes::default().app);
    }

    #[test]
    fn the_app_takes_its_url_and_every_rotation_secret() {
        let new = Secret::serialize(&[7u8; 32]);
        let both = format!(" {OLD}\n\t{new} ");
        let s = read(&[
            (APP_URL, URL),
            (APP_SECRET, &both),
            ("PAYSYNC_APP_RATE", "2.5"),
            ("PAYSYNC_APP_CONCURRENCY", "8"),
        ])
        .expect("settings");
        let app = s.app.expect("app on");
        assert_eq!(app.secrets.len(), 2);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&app.url),
            URL,
            "the URL is kept as given"
        );
        assert_eq!(s.lanes.app.rate_per_second, 2.5);
        assert_eq!(s.lanes.app.concurrency, 8);
        assert_eq!(s.lanes.app.retry, Lanes::default().app.retry);
        let shown = format!("{app:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("MfKQ"),
            "{shown}"
        );
    }

    #[test]
    fn the_app_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("paysync-dispatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("app-secret");
        std::fs::write(&path, format!("{OLD}\n")).expect("write");
        let file = path.to_str().expect("utf-8 path");
        let s = read(&[(APP_URL, URL), (APP_SECRET_FILE, file)]).expect("settings");
        assert_eq!(s.app.expect("app on").secrets.len(), 1);
        // Both: which one is meant is unclear.
        let e = refusal(&[(APP_URL, URL), (APP_SECRET, OLD), (APP_SECRET_FILE, file)]);
        assert!(e.contains(APP_SECRET) && e.contains("not both"), "{e}");
        // A file holding something else than secrets names the file's variable.
        std::fs::write(&path, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").expect("write");
        let e = refusal(&[(APP_URL, URL), (APP_SECRET_FILE, file)]);
        assert!(e.starts_with(APP_SECRET_FILE), "{e}");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    #[test]
    fn app_refusals_name_their_variable_and_never_the_value() {
        let e = refusal(&[(APP_URL, URL)]);
        assert!(e.starts_with(APP_SECRET) && e.contains("required"), "{e}");
        let e = refusal(&[(APP_SECRET, OLD)]);
        assert!(e.starts_with(APP_SECRET) && e.contains(APP_URL), "{e}");
        let e = refusal(&[(APP_URL, URL), (APP_SECRET, &format!("{OLD} sekrit"))]);
        assert!(e.starts_with(APP_SECRET) && e.contains("whsec_"), "{e}");
        let e = refusal(&[(APP_URL, "ftp://app.example.com/sekrit"), (APP_SECRET, OLD)]);
        assert!(e.starts_with(APP_URL), "{e}");
        let e = refusal(&[(APP_URL, "sekrit"), (APP_SECRET, OLD)]);
        assert!(e.starts_with(APP_URL), "{e}");
        let many = [OLD; 9].join(" ");
        let e = refusal(&[(APP_URL, URL), (APP_SECRET, &many)]);
        assert!(e.starts_with(APP_SECRET), "{e}");
        let e = refusal(&[(APP_URL, URL), (APP_SECRET, OLD), ("PAYSYNC_APP_RATE", "0")]);
        assert!(e.starts_with("PAYSYNC_APP_RATE"), "{e}");
        let e = refusal(&[
            (APP_URL, URL),
            (APP_SECRET, OLD),
            ("PAYSYNC_APP_CONCURRENCY", "0"),
        ]);
        assert!(e.starts_with("PAYSYNC_APP_CONCURRENCY"), "{e}");
    }
}
