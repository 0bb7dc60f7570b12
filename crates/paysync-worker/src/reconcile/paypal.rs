//! PayPal's event notifications (`GET /v1/notifications/webhooks-events`: `start_time`,
//! `end_time`, `event_type`, `page_size`, the next page as a `links[rel=next]`), read with an
//! OAuth access token obtained from the app's client credentials and cached until shortly
//! before it expires.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use paysync_domain::{Mode, Provider};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;

use super::{EventSource, Page, Window};
use crate::provider_api::{ApiClient, ApiError, ApiSettings, Auth};

/// PayPal's live API.
pub const PAYPAL_API_BASE: &str = "https://api-m.paypal.com";

/// PayPal's sandbox API.
pub const PAYPAL_SANDBOX_API_BASE: &str = "https://api-m.sandbox.paypal.com";

/// How far back PayPal lists event notifications (an older `start_time` is a
/// `VALIDATION_ERROR`).
pub const PAYPAL_RETENTION: Duration = Duration::from_secs(45 * 24 * 3600);

/// A token is renewed this long before PayPal says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// PayPal's API for one REST app: its event notifications.
pub struct PaypalApi {
    api: ApiClient,
    client_id: SecretString,
    secret: SecretString,
    mode: Mode,
    page_size: u32,
    token: Mutex<Option<(SecretString, Instant)>>,
}

impl PaypalApi {
    /// A client for the app with `client_id` and `secret` (`settings.token` is not used), in
    /// `mode` (live or sandbox); `page_size` events a page.
    pub fn new(
        settings: ApiSettings,
        client_id: SecretString,
        secret: SecretString,
        mode: Mode,
        page_size: u32,
    ) -> Self {
        Self {
            api: ApiClient::new("paypal", settings, error_message),
            client_id,
            secret,
            mode,
            page_size: page_size.max(1),
            token: Mutex::new(None),
        }
    }

    fn cached(&self) -> Option<SecretString> {
        let t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        t.as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(token, _)| token.clone())
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A valid access token: the cached one, or a new one from the client credentials.
    async fn access_token(&self) -> Result<SecretString, ApiError> {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: u64,
        }
        let body = self
            .api
            .call_as(
                Auth::Basic(self.client_id.expose_secret(), self.secret.expose_secret()),
                |c, base| {
                    c.post(format!("{base}/v1/oauth2/token"))
                        .form(&[("grant_type", "client_credentials")])
                },
            )
            .await?;
        let token: Token = serde_json::from_slice(&body).map_err(|_| ApiError::Unreadable {
            provider: "paypal",
            detail: "not an OAuth token answer".into(),
        })?;
        let lifetime = Duration::from_secs(token.expires_in).saturating_sub(TOKEN_MARGIN);
        let token = SecretString::from(token.access_token);
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// `GET <path_and_query>` with the access token; a 401 (a token revoked or expired early)
    /// gets one new token and one more try.
    async fn get(&self, path_and_query: &str) -> Result<bytes::Bytes, ApiError> {
        let token = self.access_token().await?;
        match self.get_with(&token, path_and_query).await {
            Err(ApiError::Refused { status: 401, .. }) => {
                self.forget_token();
                let token = self.access_token().await?;
                self.get_with(&token, path_and_query).await
            }
            other => other,
        }
    }

    async fn get_with(
        &self,
        token: &SecretString,
        path_and_query: &str,
    ) -> Result<bytes::Bytes, ApiError> {
        self.api
            .call_as(Auth::Bearer(token.expose_secret()), |c, base| {
                c.get(format!("{base}{path_and_query}"))
            })
            .await
    }
}

/// PayPal's error bodies: `{"name", "message", "details"}` for the REST API, `{"error",
/// "error_description"}` for OAuth.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(name) = v["name"].as_str() {
        let issue = v["details"][0]["issue"].as_str().unwrap_or_default();
        return Some(format!(
            "{name}: {} {issue}",
            v["message"].as_str().unwrap_or_default()
        ));
    }
    let error = v["error"].as_str()?;
    Some(format!(
        "{error}: {}",
        v["error_description"].as_str().unwrap_or_default()
    ))
}

#[derive(Deserialize)]
struct Link {
    href: String,
    rel: String,
}

#[derive(Deserialize)]
struct EventList {
    #[serde(default)]
    events: Vec<Box<RawValue>>,
    #[serde(default)]
    links: Vec<Link>,
}

/// The path and query of PayPal's `next` link, if it points at the same API (the token is
/// never sent anywhere else).
fn next_path(href: &str, base: &str) -> Option<String> {
    let rest = href.strip_prefix(base)?;
    rest.starts_with("/v1/notifications/webhooks-events")
        .then(|| rest.to_owned())
}

impl EventSource for PaypalApi {
    fn provider(&self) -> Provider {
        Provider::Paypal
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn retention(&self) -> Duration {
        PAYPAL_RETENTION
    }

    fn page<'a>(
        &'a self,
        window: &'a Window,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        Box::pin(async move {
            let path = match cursor {
                Some(next) => next.to_owned(),
                None => {
                    let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
                    let mut query = vec![
                        ("page_size", self.page_size.to_string()),
                        ("start_time", time(window.since)),
                        ("end_time", time(window.until)),
                    ];
                    // PayPal filters one type at a time; several are filtered here instead.
                    if let [only] = window.types.as_slice() {
                        query.push(("event_type", only.clone()));
                    }
                    let mut url = reqwest::Url::parse(
                        "http://paypal.invalid/v1/notifications/webhooks-events",
                    )
                    .map_err(|e| ApiError::Unreadable {
                        provider: "paypal",
                        detail: e.to_string(),
                    })?;
                    url.query_pairs_mut().extend_pairs(&query);
                    format!("{}?{}", url.path(), url.query().unwrap_or_default())
                }
            };
            let body = self.get(&path).await?;
            let list: EventList =
                serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
                    provider: "paypal",
                    detail: format!("not an event list: {e}"),
                })?;
            // An empty page ends the listing even if it links a next one.
            let next = list
                .links
                .iter()
                .find(|l| l.rel == "next")
                .and_then(|l| next_path(&l.href, self.api.base()))
                .filter(|_| !list.events.is_empty());
            Ok(Page {
                events: list.events,
                next,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_followed_only_on_our_api() {
        let base = "https://api-m.paypal.com";
        assert_eq!(
            next_path(
                "https://api-m.paypal.com/v1/notifications/webhooks-events?page_size=10&next_page_token=x",
                base
            )
            .as_deref(),
            Some("/v1/notifications/webhooks-events?page_size=10&next_page_token=x")
        );
        assert_eq!(
            next_path(
                "https://evil.example/v1/notifications/webhooks-events",
                base
            ),
            None
        );
        assert_eq!(
            next_path(
                "https://api-m.paypal.com.evil.example/v1/notifications/webhooks-events",
                base
            ),
            None
        );
        assert_eq!(
            next_path("https://api-m.paypal.com/v1/oauth2/token", base),
            None
        );
    }
}
