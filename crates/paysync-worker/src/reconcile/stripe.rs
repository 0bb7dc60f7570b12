//! Stripe's event list (`GET /v1/events`: 30 days, newest first, `starting_after` cursor) and
//! the objects thin events refer to.

use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::billing::stripe::ThinObject;
use paysync_domain::{Mode, Provider};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{EventSource, Page, Window};
use crate::provider_api::{ApiClient, ApiError, ApiSettings};

/// Stripe's production API.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com";

/// How long Stripe keeps events listable.
pub const STRIPE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most `types[]` Stripe takes in one listing.
const MAX_TYPES: usize = 20;

/// Stripe's API for one account: its events and its objects.
pub struct StripeApi {
    api: ApiClient,
    mode: Mode,
    page_size: u32,
}

impl StripeApi {
    /// A client with `settings`, whose key belongs to `mode` (`sk_test_…`/`rk_test_…` or
    /// live); `page_size` events a page (Stripe allows 1–100).
    pub fn new(settings: ApiSettings, mode: Mode, page_size: u32) -> Self {
        Self {
            api: ApiClient::new("stripe", settings, error_message),
            mode,
            page_size: page_size.clamp(1, 100),
        }
    }

    /// The current JSON of the object a thin event names (a checked `/v1/…` path, in the
    /// event's account context), in one attempt: the thin event's retries go through the
    /// broker, not through a lane waiting here.
    pub async fn object(&self, thin: &ThinObject) -> Result<String, ApiError> {
        let body = self
            .api
            .call_once(|c, base| {
                let request = c.get(format!("{base}{}", thin.path));
                match &thin.context {
                    Some(context) => request.header("Stripe-Context", context),
                    None => request,
                }
            })
            .await?;
        String::from_utf8(body.to_vec()).map_err(|_| ApiError::Unreadable {
            provider: "stripe",
            detail: "object is not UTF-8".into(),
        })
    }
}

/// Stripe's error body: `{"error": {"type": …, "message": …}}`.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = &v["error"];
    let message = e["message"].as_str()?;
    Some(match e["type"].as_str() {
        Some(t) => format!("{t}: {message}"),
        None => message.to_owned(),
    })
}

#[derive(Deserialize)]
struct List {
    data: Vec<Box<RawValue>>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl EventSource for StripeApi {
    fn provider(&self) -> Provider {
        Provider::Stripe
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn retention(&self) -> Duration {
        STRIPE_RETENTION
    }

    fn page<'a>(
        &'a self,
        window: &'a Window,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        Box::pin(async move {
            let mut query: Vec<(String, String)> = vec![
                ("limit".into(), self.page_size.to_string()),
                (
                    "created[gte]".into(),
                    window.since.unix_timestamp().to_string(),
                ),
                (
                    "created[lt]".into(),
                    window.until.unix_timestamp().to_string(),
                ),
            ];
            // Stripe filters up to 20 types; more are filtered by the reconciler instead.
            if window.types.len() <= MAX_TYPES {
                for t in &window.types {
                    query.push(("types[]".into(), t.clone()));
                }
            }
            if let Some(after) = cursor {
                query.push(("starting_after".into(), after.to_owned()));
            }
            let body = self
                .api
                .call(|c, base| c.get(format!("{base}/v1/events")).query(&query))
                .await?;
            let list: List = serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
                provider: "stripe",
                detail: format!("not an event list: {e}"),
            })?;
            let next = match (list.has_more, list.data.last()) {
                (true, Some(last)) => Some(
                    serde_json::from_str::<IdOnly>(last.get())
                        .map_err(|_| ApiError::Unreadable {
                            provider: "stripe",
                            detail: "an event without an id".into(),
                        })?
                        .id,
                ),
                _ => None,
            };
            Ok(Page {
                events: list.data,
                next,
            })
        })
    }
}

impl crate::billing::ObjectSource for StripeApi {
    fn object<'a>(&'a self, thin: &'a ThinObject) -> BoxFuture<'a, Result<String, crate::Failure>> {
        Box::pin(async move {
            StripeApi::object(self, thin).await.map_err(|e| {
                if e.retryable() {
                    crate::Failure::retryable("provider_api_unavailable", e)
                } else {
                    crate::Failure::permanent("provider_api_refused", e)
                }
            })
        })
    }
}
