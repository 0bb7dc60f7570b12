//! Data the providers leave out of their webhooks, fetched from their APIs before the event's
//! transaction: Authorize.Net's transaction details.
//!
//! Rule of thumb: an outage (connection, timeout, 5xx, 429, the gateway's own "try again"
//! codes, an open breaker) is a retryable failure, so the event goes through the broker's
//! delay levels and is applied once the API is back; never a dead letter. Bad credentials and
//! an unknown transaction are permanent. Credentials never appear in errors or logs.

use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::billing::authorizenet::{Transaction, amount_minor};
use paysync_domain::breaker::BreakerPolicy;
use paysync_domain::timestamp::parse_rfc3339_ms;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use crate::Failure;
use crate::billing::TransactionSource;
use crate::provider_api::{ApiClient, ApiError, ApiSettings, Auth};

/// Authorize.Net's production JSON API endpoint.
pub const AUTHORIZENET_API_URL: &str = "https://api.authorize.net/xml/v1/request.api";

/// How to reach Authorize.Net's API.
#[derive(Clone)]
pub struct AuthorizeNetApiSettings {
    /// The JSON API endpoint ([`AUTHORIZENET_API_URL`]; the sandbox is
    /// `https://apitest.authorize.net/xml/v1/request.api`).
    pub url: String,
    /// The API login id.
    pub login_id: SecretString,
    /// The transaction key.
    pub transaction_key: SecretString,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Requests a second at most (Authorize.Net publishes no limit; this keeps a replay of
    /// thousands of events from hammering it).
    pub per_second: u32,
    /// When the breaker opens.
    pub breaker: BreakerPolicy,
}

impl std::fmt::Debug for AuthorizeNetApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeNetApiSettings")
            .field("url", &self.url)
            .field("login_id", &"[redacted]")
            .field("transaction_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("per_second", &self.per_second)
            .finish()
    }
}

impl AuthorizeNetApiSettings {
    /// Production defaults for these credentials: 10 s timeout, 10 requests a second.
    pub fn new(login_id: SecretString, transaction_key: SecretString) -> Self {
        Self {
            url: AUTHORIZENET_API_URL.to_owned(),
            login_id,
            transaction_key,
            timeout: Duration::from_secs(10),
            per_second: 10,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The API could not be reached or answered with an outage.
    #[error("Authorize.Net API unavailable: {0}")]
    Unavailable(String),
    /// The breaker is open after repeated outages.
    #[error("Authorize.Net API breaker open; not calling it")]
    BreakerOpen,
    /// The API refused the credentials (`E00007`) or the request.
    #[error("Authorize.Net API refused the request: {code} {text}")]
    Refused {
        /// Authorize.Net's message code.
        code: String,
        /// Its text.
        text: String,
    },
    /// The answer is not a transaction-details response.
    #[error("Authorize.Net API answered something unreadable: {0}")]
    Unreadable(String),
}

impl EnrichError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::BreakerOpen)
    }
}

/// Authorize.Net message codes that mean "the gateway is busy or down; try again": an
/// unexpected system error and the maintenance window.
const RETRY_CODES: &[&str] = &["E00001", "E00104"];

/// The transaction-details client: one per worker, shared by its lanes. It is the providers'
/// [`ApiClient`] (rate limit, breaker), called once per lookup: an event whose lookup fails
/// waits in the broker's delay levels, not in its lane.
pub struct AuthorizeNetApi {
    api: ApiClient,
    login_id: SecretString,
    transaction_key: SecretString,
}

/// The API's JSON answer, past the byte-order mark it starts with.
fn answer(body: &[u8]) -> Option<Value> {
    let text = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    serde_json::from_slice(text).ok()
}

/// The first message of an answer that is not `Ok`: its code and text.
fn refusal(body: &Value) -> Option<(String, String)> {
    if body["messages"]["resultCode"] == "Ok" {
        return None;
    }
    let first = &body["messages"]["message"][0];
    Some((
        first["code"].as_str().unwrap_or("unknown").to_owned(),
        first["text"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
    ))
}

/// A 200 that says "try again": the gateway's outage codes.
fn outage_in_body(body: &[u8]) -> Option<String> {
    let (code, text) = refusal(&answer(body)?)?;
    RETRY_CODES
        .contains(&code.as_str())
        .then(|| format!("{code} {text}"))
}

impl AuthorizeNetApi {
    /// A client for `settings`.
    pub fn new(settings: AuthorizeNetApiSettings) -> Self {
        let mut api = ApiSettings::new(settings.url, SecretString::from(String::new()));
        api.timeout = settings.timeout;
        api.per_second = settings.per_second;
        api.breaker = settings.breaker;
        api.attempts = 1;
        Self {
            api: ApiClient::new("Authorize.Net", api, |_| None).with_outage_in_body(outage_in_body),
            login_id: settings.login_id,
            transaction_key: settings.transaction_key,
        }
    }

    /// The details of transaction `id`.
    pub async fn transaction_details(&self, id: &str) -> Result<Transaction, EnrichError> {
        let request = json!({"getTransactionDetailsRequest": {
            "merchantAuthentication": {
                "name": self.login_id.expose_secret(),
                "transactionKey": self.transaction_key.expose_secret(),
            },
            "transId": id,
        }});
        let body = self
            .api
            .call_once_as(Auth::InBody, |c, url| c.post(url).json(&request))
            .await
            .map_err(|e| match e {
                ApiError::Unavailable { detail, .. } => EnrichError::Unavailable(detail),
                ApiError::BreakerOpen(_) => EnrichError::BreakerOpen,
                ApiError::Refused {
                    status, message, ..
                } => EnrichError::Refused {
                    code: format!("HTTP {status}"),
                    text: message,
                },
                ApiError::Unreadable { detail, .. } => EnrichError::Unreadable(detail),
            })?;
        let body = answer(&body)
            .ok_or_else(|| EnrichError::Unreadable("the answer is not JSON".into()))?;
        if let Some((code, text)) = refusal(&body) {
            return Err(EnrichError::Refused { code, text });
        }
        transaction(&body["transaction"])
            .ok_or_else(|| EnrichError::Unreadable("no transaction in the answer".into()))
    }
}

/// The mapper's view of `getTransactionDetailsResponse.transaction`.
fn transaction(t: &Value) -> Option<Transaction> {
    let s = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let amount = |v: &Value| {
        let text = v.to_string();
        let parsed: serde_json_borrow::Value<'_> = serde_json::from_str(&text).ok()?;
        amount_minor(&parsed)
    };
    let name = [s(&t["billTo"]["firstName"]), s(&t["billTo"]["lastName"])]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Some(Transaction {
        trans_id: s(&t["transId"])?,
        ref_trans_id: s(&t["refTransId"]),
        status: s(&t["transactionStatus"]).unwrap_or_default(),
        response_code: t["responseCode"].as_i64(),
        amount: amount(&t["settleAmount"])
            .filter(|a| *a > 0)
            .or_else(|| amount(&t["authAmount"]))
            .unwrap_or(0),
        customer_profile_id: s(&t["profile"]["customerProfileId"]),
        merchant_customer_id: s(&t["customer"]["id"]),
        email: s(&t["customer"]["email"]).or_else(|| s(&t["billTo"]["email"])),
        name: Some(name).filter(|n| !n.is_empty()),
        invoice_number: s(&t["order"]["invoiceNumber"]),
        description: s(&t["order"]["description"]),
        subscription_id: s(&t["subscription"]["id"]),
        submitted_at_ms: t["submitTimeUTC"].as_str().and_then(parse_rfc3339_ms),
    })
}

impl TransactionSource for AuthorizeNetApi {
    fn transaction<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Transaction, Failure>> {
        Box::pin(async move {
            self.transaction_details(id).await.map_err(|e| {
                if e.retryable() {
                    Failure::retryable("provider_api_unavailable", e)
                } else {
                    Failure::permanent("provider_api_refused", e)
                }
            })
        })
    }
}
