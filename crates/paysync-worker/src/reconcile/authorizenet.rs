//! Authorize.Net's notification history (`GET /rest/v1/notifications`: `from_date`,
//! `to_date` by day, `offset`, `limit`), HTTP Basic with the API login id and transaction key.
//! The history lists summaries (`notificationId`, `eventType`, `eventDate`, `deliveryStatus`);
//! a missing one is fetched whole from `GET /rest/v1/notifications/{id}`, whose answer is the
//! notification as it was posted (third-party integrations replay it as the webhook body).

use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::timestamp::parse_rfc3339_ms;
use paysync_domain::{Envelope, Mode, Provider};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::macros::format_description;

use crate::provider_api::{ApiClient, ApiError, ApiSettings, Auth};

use super::{EventSource, Listed, Page, Window};

/// Authorize.Net's production REST API.
pub const AUTHORIZENET_REST_BASE: &str = "https://api.authorize.net";

/// Authorize.Net's sandbox REST API.
pub const AUTHORIZENET_SANDBOX_REST_BASE: &str = "https://apitest.authorize.net";

/// How far back the history is read. Authorize.Net publishes no retention; older
/// notifications, if it keeps any, are not listed.
pub const AUTHORIZENET_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Authorize.Net's REST API for one merchant: its notification history.
pub struct AuthorizeNetHistory {
    api: ApiClient,
    login_id: SecretString,
    transaction_key: SecretString,
    mode: Mode,
    page_size: u32,
}

impl AuthorizeNetHistory {
    /// A client of the history at `settings.base` (`settings.token` is not used) with the
    /// merchant's API credentials, in `mode`; `page_size` summaries a page.
    pub fn new(
        settings: ApiSettings,
        login_id: SecretString,
        transaction_key: SecretString,
        mode: Mode,
        page_size: u32,
    ) -> Self {
        Self {
            api: ApiClient::new("authorizenet", settings, error_message),
            login_id,
            transaction_key,
            mode,
            page_size: page_size.max(1),
        }
    }

    async fn get(&self, path_and_query: &str) -> Result<bytes::Bytes, ApiError> {
        let auth = Auth::Basic(
            self.login_id.expose_secret(),
            self.transaction_key.expose_secret(),
        );
        self.api
            .call_as(auth, |c, base| c.get(format!("{base}{path_and_query}")))
            .await
    }
}

/// The REST API's error body: `{"status", "reason", "message", "correlationId"}`.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let reason = v["reason"].as_str().unwrap_or_default();
    let message = v["message"].as_str()?;
    Some(format!("{reason}: {message}"))
}

#[derive(Deserialize)]
struct History {
    #[serde(default)]
    notifications: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Summary<'a> {
    #[serde(rename = "notificationId", borrow)]
    id: &'a str,
    #[serde(rename = "eventType", borrow)]
    event_type: &'a str,
    #[serde(rename = "eventDate", borrow, default)]
    event_date: Option<&'a str>,
}

/// `eventDate` in the history has no zone; it is UTC.
fn history_time_ms(date: &str) -> Option<i64> {
    parse_rfc3339_ms(date).or_else(|| parse_rfc3339_ms(&format!("{date}Z")))
}

impl EventSource for AuthorizeNetHistory {
    fn provider(&self) -> Provider {
        Provider::AuthorizeNet
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn retention(&self) -> Duration {
        AUTHORIZENET_RETENTION
    }

    fn listed(&self, item: &RawValue) -> Listed {
        let summary = serde_json::from_str::<Summary<'_>>(item.get())
            .ok()
            .filter(|s| !s.id.is_empty() && !s.event_type.is_empty() && s.id.len() <= 200);
        Listed::Summary(summary.map(|s| {
            Envelope {
                // The webhook's dedupe key is the id in lowercase (the parser's rule).
                id: s.id.to_ascii_lowercase(),
                event_type: s.event_type.to_owned(),
                created: s
                    .event_date
                    .and_then(history_time_ms)
                    .map_or(0, |ms| ms.div_euclid(1000)),
                livemode: None,
                api_version: None,
            }
        }))
    }

    fn page<'a>(
        &'a self,
        window: &'a Window,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        Box::pin(async move {
            let offset: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
            let day = format_description!("[year]-[month]-[day]");
            let date = |t: time::OffsetDateTime| t.format(&day).unwrap_or_default();
            let path = format!(
                "/rest/v1/notifications?from_date={}&to_date={}&offset={offset}&limit={}",
                date(window.since),
                date(window.until),
                self.page_size
            );
            let body = self.get(&path).await?;
            let history: History =
                serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
                    provider: "authorizenet",
                    detail: format!("not a notification history: {e}"),
                })?;
            let full = history.notifications.len() as u64 >= u64::from(self.page_size);
            // The dates filter by day: keep the window's own instants.
            let (since, until) = (
                window.since.unix_timestamp() * 1000,
                window.until.unix_timestamp() * 1000,
            );
            let events = history
                .notifications
                .into_iter()
                .filter(|n| {
                    serde_json::from_str::<Summary<'_>>(n.get())
                        .ok()
                        .and_then(|s| s.event_date)
                        .and_then(history_time_ms)
                        .is_none_or(|ms| ms >= since && ms < until)
                })
                .collect();
            Ok(Page {
                events,
                next: full.then(|| (offset + u64::from(self.page_size)).to_string()),
            })
        })
    }

    fn event<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Box<RawValue>, ApiError>> {
        Box::pin(async move {
            let safe = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !safe {
                return Err(ApiError::Unreadable {
                    provider: "authorizenet",
                    detail: "a notification id that is not a GUID".into(),
                });
            }
            let body = self.get(&format!("/rest/v1/notifications/{id}")).await?;
            let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::Unreadable {
                provider: "authorizenet",
                detail: "a notification that is not UTF-8".into(),
            })?;
            RawValue::from_string(text).map_err(|e| ApiError::Unreadable {
                provider: "authorizenet",
                detail: format!("a notification that is not JSON: {e}"),
            })
        })
    }
}
