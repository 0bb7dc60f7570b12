//! Square's Events API (`POST /v2/events`, SearchEvents: 28 days, `cursor` pagination). Events
//! must have been enabled for the account (`PUT /v2/events/enable`) and are listed only for a
//! personal access token.

use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::{Mode, Provider};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;

use super::{EventSource, Page, Window};
use crate::provider_api::{ApiClient, ApiError, ApiSettings};

/// Square's production API.
pub const SQUARE_API_BASE: &str = "https://connect.squareup.com";

/// Square's sandbox API.
pub const SQUARE_SANDBOX_API_BASE: &str = "https://connect.squareupsandbox.com";

/// The `Square-Version` this client speaks.
pub const SQUARE_VERSION: &str = "2025-10-16";

/// How long Square keeps events searchable.
pub const SQUARE_RETENTION: Duration = Duration::from_secs(28 * 24 * 3600);

/// Square's Events API for one seller account.
pub struct SquareApi {
    api: ApiClient,
    mode: Mode,
    page_size: u32,
}

impl SquareApi {
    /// A client with `settings` for an account of `mode` (production is live, the sandbox
    /// test); `page_size` events a page (Square allows 1–100).
    pub fn new(settings: ApiSettings, mode: Mode, page_size: u32) -> Self {
        Self {
            api: ApiClient::new("square", settings, error_message),
            mode,
            page_size: page_size.clamp(1, 100),
        }
    }
}

/// Square's error body: `{"errors": [{"category", "code", "detail"}]}`.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = &v["errors"][0];
    let code = e["code"].as_str()?;
    Some(format!(
        "{} {code}: {}",
        e["category"].as_str().unwrap_or_default(),
        e["detail"].as_str().unwrap_or_default()
    ))
}

#[derive(Deserialize)]
struct Found {
    #[serde(default)]
    events: Vec<Box<RawValue>>,
    #[serde(default)]
    cursor: Option<String>,
}

impl EventSource for SquareApi {
    fn provider(&self) -> Provider {
        Provider::Square
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn retention(&self) -> Duration {
        SQUARE_RETENTION
    }

    fn page<'a>(
        &'a self,
        window: &'a Window,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, ApiError>> {
        Box::pin(async move {
            let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
            let mut filter = json!({
                "created_at": {"start_at": time(window.since), "end_at": time(window.until)},
            });
            if !window.types.is_empty() {
                filter["event_types"] = json!(window.types);
            }
            let mut request = json!({
                "limit": self.page_size,
                "query": {"filter": filter, "sort": {"field": "DEFAULT", "order": "ASC"}},
            });
            if let Some(c) = cursor {
                request["cursor"] = json!(c);
            }
            let body = self
                .api
                .call(|c, base| {
                    c.post(format!("{base}/v2/events"))
                        .header("Square-Version", SQUARE_VERSION)
                        .json(&request)
                })
                .await?;
            let found: Found = serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
                provider: "square",
                detail: format!("not a SearchEvents answer: {e}"),
            })?;
            Ok(Page {
                events: found.events,
                next: found.cursor.filter(|c| !c.is_empty()),
            })
        })
    }
}
