//! HubSpot CRM v3: the account's contact and deal, and follow-up tasks.
//!
//! Every write is an upsert by a paysync-owned unique property, so a retry (even after an
//! ambiguous timeout) converges on the same record and nothing ever searches before creating
//! (HubSpot's search index lags writes). The portal needs three custom properties, each
//! created with `hasUniqueValue: true`: `paysync_account_key` on contacts,
//! `paysync_deal_key` on deals and `paysync_task_key` on tasks. Keys:
//!
//! - contact and deal: `acct-<account id>`, so a contact is never matched on its email alone
//!   (an email change would otherwise create a second contact);
//! - task: `<intent>:<provider>:<source id>` (`dispute_response:stripe:dp_1`).
//!
//! Deal stages are resolved at startup from the portal's pipeline
//! ([`HubspotSender::connect`], [`resolve_stages`]): stage ids keep their default names when
//! admins rename the labels, so `closedwon` is never assumed to mean won.
//!
//! The deal's `amount` is the account's succeeded payments in major units, in the currency of
//! its first succeeded payment; payments in other currencies are left out (one currency per
//! account is assumed, and HubSpot's deal has one amount). The private app token is never
//! logged or put in an error.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::billing::{AccountFacts, AccountView, account_view};
use paysync_domain::intent::Intent;
use paysync_domain::money::{decimals, format_amount};
use paysync_domain::outbound::{Destination, Operation};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::http::{self, DETAIL_MAX, escape_html};
use crate::job::{FailureKind, Job, SendError, Sender, Throttle, Verdict, excerpt};

/// HubSpot's API.
pub const DEFAULT_API_BASE: &str = "https://api.hubapi.com";
/// The pipeline every portal starts with.
pub const DEFAULT_PIPELINE: &str = "default";
/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to pause after a 429 that is not the daily quota and has no `Retry-After`: the
/// burst limit's window.
pub const BURST_WINDOW: Duration = Duration::from_secs(10);

/// How to reach the portal and which deal stages to use.
#[derive(Clone)]
pub struct HubspotSettings {
    /// The private app's access token: a secret.
    pub token: SecretString,
    /// The API's base URL (default [`DEFAULT_API_BASE`]).
    pub api_base: String,
    /// The deal pipeline's id (default [`DEFAULT_PIPELINE`]).
    pub pipeline: String,
    /// The won stage's id, when configured; else resolved from the pipeline.
    pub won_stage: Option<String>,
    /// The lost stage's id, when configured; else resolved from the pipeline.
    pub lost_stage: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for HubspotSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubspotSettings")
            .field("token", &"[redacted]")
            .field("api_base", &self.api_base)
            .field("pipeline", &self.pipeline)
            .field("won_stage", &self.won_stage)
            .field("lost_stage", &self.lost_stage)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HubspotSettings {
    /// Settings for `token` with the defaults.
    pub fn new(token: SecretString) -> Self {
        Self {
            token,
            api_base: DEFAULT_API_BASE.to_owned(),
            pipeline: DEFAULT_PIPELINE.to_owned(),
            won_stage: None,
            lost_stage: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Checks the token is set, the base is an http(s) URL, the ids are not blank and the
    /// timeout is not zero.
    pub fn validate(&self) -> Result<(), HubspotStartError> {
        let bad = |m: &str| Err(HubspotStartError::Settings(m.to_owned()));
        if self.token.expose_secret().trim().is_empty() {
            return bad("the HubSpot token is empty");
        }
        match reqwest::Url::parse(self.api_base.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => return bad("the HubSpot API base must be an http(s) URL"),
        }
        if self.pipeline.trim().is_empty() {
            return bad("the HubSpot pipeline id is empty");
        }
        if self
            .won_stage
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
            || self
                .lost_stage
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
        {
            return bad("a configured HubSpot stage id is empty");
        }
        if self.timeout.is_zero() {
            return bad("the HubSpot timeout must be more than zero");
        }
        Ok(())
    }
}

/// Why the HubSpot destination cannot start. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubspotStartError {
    /// The settings are unusable.
    #[error("invalid HubSpot settings: {0}")]
    Settings(String),
    /// 401 on the pipelines read.
    #[error(
        "HubSpot refused the access token (401 on GET /crm/v3/pipelines/deals): check the private app's token"
    )]
    TokenRefused,
    /// 403 on the pipelines read.
    #[error(
        "HubSpot denied reading the deal pipelines (403): the private app lacks a scope (crm.objects.deals.read): {0}"
    )]
    Forbidden(String),
    /// A transport error.
    #[error("cannot reach HubSpot: {0}")]
    Unreachable(String),
    /// Another status.
    #[error("HubSpot answered {status} to GET /crm/v3/pipelines/deals: {detail}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The body's excerpt.
        detail: String,
    },
    /// The pipelines answer is not what HubSpot documents.
    #[error("HubSpot's deal pipelines answer is not the expected JSON: {0}")]
    BadResponse(String),
    /// The pipeline's stages do not say which is won or lost.
    #[error(transparent)]
    Stages(#[from] StageError),
}

/// Why the won or lost stage cannot be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// No pipeline has the configured id.
    #[error("HubSpot has no deal pipeline with id {pipeline:?} (its pipelines: {available})")]
    NoPipeline {
        /// The configured pipeline.
        pipeline: String,
        /// `id (label)` of each pipeline.
        available: String,
    },
    /// A configured stage is not in the pipeline.
    #[error(
        "the configured {role} stage {stage:?} is not in HubSpot deal pipeline {pipeline:?} (its stages: {available})"
    )]
    UnknownStage {
        /// `won` or `lost`.
        role: &'static str,
        /// The configured stage id.
        stage: String,
        /// The pipeline.
        pipeline: String,
        /// `id (label)` of each stage.
        available: String,
    },
    /// A configured stage is not a closed stage.
    #[error(
        "the configured {role} stage {stage:?} of HubSpot deal pipeline {pipeline:?} is not a closed stage"
    )]
    NotClosed {
        /// `won` or `lost`.
        role: &'static str,
        /// The configured stage id.
        stage: String,
        /// The pipeline.
        pipeline: String,
    },
    /// The won and lost stages are the same.
    #[error("the won and lost stages of HubSpot deal pipeline {pipeline:?} are both {stage:?}")]
    SameStage {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
    },
    /// No closed stage has the role's probability.
    #[error(
        "HubSpot deal pipeline {pipeline:?} has no {role} stage (a closed stage with probability {probability}): set {env} (its stages: {available})"
    )]
    Missing {
        /// `won` or `lost`.
        role: &'static str,
        /// `1.0` or `0.0`.
        probability: &'static str,
        /// The setting that names it.
        env: &'static str,
        /// The pipeline.
        pipeline: String,
        /// `id (label)` of each stage.
        available: String,
    },
    /// Several closed stages have the role's probability.
    #[error(
        "HubSpot deal pipeline {pipeline:?} has several {role} stages ({candidates}): set {env} to one of them"
    )]
    Ambiguous {
        /// `won` or `lost`.
        role: &'static str,
        /// The setting that names it.
        env: &'static str,
        /// The pipeline.
        pipeline: String,
        /// `id (label)` of each candidate.
        candidates: String,
    },
}

/// The deal stages paysync moves deals to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stages {
    /// The pipeline's id.
    pub pipeline: String,
    /// The won stage's id.
    pub won: String,
    /// The lost stage's id.
    pub lost: String,
}

struct Stage<'a> {
    id: &'a str,
    label: &'a str,
    closed: bool,
    probability: Option<f64>,
}

fn meta_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn meta_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn listing<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let v: Vec<String> = items.map(|(id, label)| format!("{id} ({label})")).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// The won and lost stages of `pipeline` in the answer of `GET /crm/v3/pipelines/deals`.
///
/// Resolved: won = the one closed stage (`metadata.isClosed` `"true"`) with
/// `metadata.probability` 1.0, lost = the one closed stage with 0.0 (HubSpot sends both
/// values as strings; numbers and booleans are accepted too). Archived stages are ignored.
/// Configured: the stage must be in the pipeline and closed. Never assumes an id.
pub fn resolve_stages(
    pipelines: &Value,
    pipeline: &str,
    won: Option<&str>,
    lost: Option<&str>,
) -> Result<Stages, StageError> {
    let empty = Vec::new();
    let all = pipelines["results"].as_array().unwrap_or(&empty);
    let Some(p) = all.iter().find(|p| p["id"].as_str() == Some(pipeline)) else {
        return Err(StageError::NoPipeline {
            pipeline: pipeline.to_owned(),
            available: listing(all.iter().map(|p| {
                (
                    p["id"].as_str().unwrap_or("?"),
                    p["label"].as_str().unwrap_or(""),
                )
            })),
        });
    };
    let stages: Vec<Stage<'_>> = p["stages"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|s| !meta_bool(&s["archived"]))
        .filter_map(|s| {
            Some(Stage {
                id: s["id"].as_str()?,
                label: s["label"].as_str().unwrap_or(""),
                closed: meta_bool(&s["metadata"]["isClosed"]),
                probability: meta_f64(&s["metadata"]["probability"]),
            })
        })
        .collect();
    let available = || listing(stages.iter().map(|s| (s.id, s.label)));
    let pick = |role: &'static str,
                configured: Option<&str>,
                probability: f64,
                shown: &'static str,
                env: &'static str|
     -> Result<String, StageError> {
        if let Some(id) = configured {
            let id = id.trim();
            let Some(s) = stages.iter().find(|s| s.id == id) else {
                return Err(StageError::UnknownStage {
                    role,
                    stage: id.to_owned(),
                    pipeline: pipeline.to_owned(),
                    available: available(),
                });
            };
            if !s.closed {
                return Err(StageError::NotClosed {
                    role,
                    stage: id.to_owned(),
                    pipeline: pipeline.to_owned(),
                });
            }
            return Ok(id.to_owned());
        }
        let candidates: Vec<&Stage<'_>> = stages
            .iter()
            .filter(|s| s.closed && s.probability == Some(probability))
            .collect();
        match candidates.as_slice() {
            [one] => Ok(one.id.to_owned()),
            [] => Err(StageError::Missing {
                role,
                probability: shown,
                env,
                pipeline: pipeline.to_owned(),
                available: available(),
            }),
            many => Err(StageError::Ambiguous {
                role,
                env,
                pipeline: pipeline.to_owned(),
                candidates: listing(many.iter().map(|s| (s.id, s.label))),
            }),
        }
    };
    let won = pick("won", won, 1.0, "1.0", "PAYSYNC_HUBSPOT_WON_STAGE")?;
    let lost = pick("lost", lost, 0.0, "0.0", "PAYSYNC_HUBSPOT_LOST_STAGE")?;
    if won == lost {
        return Err(StageError::SameStage {
            pipeline: pipeline.to_owned(),
            stage: won,
        });
    }
    Ok(Stages {
        pipeline: pipeline.to_owned(),
        won,
        lost,
    })
}

/// What a HubSpot answer means; `Ok` for 2xx.
///
/// - 429 with `policyName` `DAILY`: the daily quota, paused until the next midnight UTC. The
///   quota resets at midnight in the portal's time zone, which paysync does not know; a
///   midnight UTC that comes early costs one more 429 and another pause.
/// - other 429 (`TEN_SECONDLY_ROLLING`): rate limited for `Retry-After`, else
///   [`BURST_WINDOW`].
/// - 401: configuration (`INVALID_AUTHENTICATION`); 403: configuration (missing scopes).
/// - 400, 404, 409, 422 and other 4xx: the item is refused, code = the body's `category`
///   (`VALIDATION_ERROR`, `OBJECT_NOT_FOUND`, `CONFLICT`). 408: transient.
/// - 5xx and anything else: transient.
pub fn classify(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    now: OffsetDateTime,
) -> Result<(), SendError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |name: &str| {
        parsed[name]
            .as_str()
            .filter(|s| http::is_code(s))
            .map(str::to_owned)
    };
    let category = field("category");
    let fallback = format!("http_{status}");
    let (kind, code) = match status {
        429 => match field("policyName") {
            Some(p) if p == "DAILY" => (
                FailureKind::Quota {
                    pause: until_next_utc_midnight(now),
                },
                p,
            ),
            p => (
                FailureKind::RateLimited {
                    pause: retry_after.unwrap_or(BURST_WINDOW),
                },
                p.or_else(|| field("errorType"))
                    .unwrap_or_else(|| "RATE_LIMIT".to_owned()),
            ),
        },
        401 => (FailureKind::Config, "INVALID_AUTHENTICATION".to_owned()),
        403 => (
            FailureKind::Config,
            category.unwrap_or_else(|| "MISSING_SCOPES".to_owned()),
        ),
        408 => (
            FailureKind::Transient { ambiguous: false },
            category.unwrap_or(fallback),
        ),
        400..=499 => (FailureKind::Payload, category.unwrap_or(fallback)),
        _ => (
            FailureKind::Transient { ambiguous: false },
            category.unwrap_or(fallback),
        ),
    };
    Err(
        SendError::new(kind, Some(status), code, excerpt(body.trim(), DETAIL_MAX))
            .retry_after(retry_after),
    )
}

/// From `now` to the next midnight UTC (a full day at midnight itself).
fn until_next_utc_midnight(now: OffsetDateTime) -> Duration {
    let now = now.to_offset(time::UtcOffset::UTC);
    let next = now
        .date()
        .next_day()
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(now + time::Duration::DAY);
    (next - now).unsigned_abs()
}

/// `minor` in major units as a plain decimal for HubSpot's `amount` (`1234` usd → `12.34`,
/// `500` jpy → `500`): no grouping, no symbol.
fn major_units(minor: i64, currency: &str) -> String {
    let places = decimals(currency);
    if places == 0 {
        return minor.to_string();
    }
    let scale = 10u64.pow(places);
    let abs = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = places as usize
    )
}

/// The account's key in HubSpot (contact and deal).
fn account_key(id: i64) -> String {
    format!("acct-{id}")
}

/// `2026-12-05T11:10:27.000Z`.
fn iso(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The contact upsert's input for the account.
fn contact_input(view: &AccountView, trace: i64) -> Value {
    let key = account_key(view.id);
    let mut props = serde_json::Map::new();
    props.insert("paysync_account_key".into(), json!(key));
    if let Some(email) = &view.email {
        props.insert("email".into(), json!(email));
    }
    if let Some(name) = view
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        match name.split_once(char::is_whitespace) {
            Some((first, last)) => {
                props.insert("firstname".into(), json!(first));
                props.insert("lastname".into(), json!(last.trim()));
            }
            None => {
                props.insert("firstname".into(), json!(name));
            }
        }
    }
    json!({"inputs": [{
        "idProperty": "paysync_account_key",
        "id": key,
        "objectWriteTraceId": trace.to_string(),
        "properties": props,
    }]})
}

/// The account's succeeded payments in major units, in the currency of the first one.
fn deal_amount(facts: &AccountFacts, view: &AccountView) -> Option<String> {
    let currency = facts
        .payments
        .iter()
        .find(|p| p.status == "succeeded")
        .map(|p| p.currency.as_str())?;
    let total = view.totals.iter().find(|t| t.currency == currency)?;
    Some(major_units(total.paid_minor, currency))
}

/// The deal upsert's input for the account, in `stage`.
fn deal_input(
    facts: &AccountFacts,
    view: &AccountView,
    stages: &Stages,
    stage: &str,
    now: OffsetDateTime,
    trace: i64,
) -> Value {
    let key = account_key(view.id);
    let who = view
        .name
        .clone()
        .or_else(|| view.email.clone())
        .unwrap_or_else(|| format!("account {}", view.id));
    let plan = view.plan.as_deref().unwrap_or("paysync");
    let mut props = serde_json::Map::new();
    props.insert("paysync_deal_key".into(), json!(key));
    props.insert("dealname".into(), json!(format!("{who} — {plan}")));
    props.insert("pipeline".into(), json!(stages.pipeline));
    props.insert("dealstage".into(), json!(stage));
    if let Some(amount) = deal_amount(facts, view) {
        props.insert("amount".into(), json!(amount));
    }
    props.insert("closedate".into(), json!(iso(now)));
    json!({"inputs": [{
        "idProperty": "paysync_deal_key",
        "id": key,
        "objectWriteTraceId": trace.to_string(),
        "properties": props,
    }]})
}

/// What a follow-up task says and when it is due.
#[derive(Debug, Clone, PartialEq)]
struct TaskSpec {
    subject: String,
    priority: &'static str,
    due: OffsetDateTime,
}

fn task_spec(job: &Job, now: OffsetDateTime) -> Option<TaskSpec> {
    let due_at = job
        .due_at
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
    Some(match job.intent {
        Intent::PaymentFailedFollowup => TaskSpec {
            subject: "Payment failed: follow up".to_owned(),
            priority: "HIGH",
            due: job.created_at + time::Duration::DAY,
        },
        Intent::DisputeResponse => TaskSpec {
            subject: format!("Respond to dispute {}", job.source_id),
            priority: "HIGH",
            due: due_at.map_or(now, |d: OffsetDateTime| {
                (d - time::Duration::days(2)).max(now)
            }),
        },
        Intent::TrialEnding => TaskSpec {
            subject: "Trial ending: check in".to_owned(),
            priority: "MEDIUM",
            due: due_at.unwrap_or(job.created_at),
        },
        _ => return None,
    })
}

/// The task's key in HubSpot.
fn task_key(job: &Job) -> String {
    format!("{}:{}:{}", job.intent.as_str(), job.provider, job.source_id)
}

/// The task's body (HubSpot renders it as rich text, so it is escaped).
fn task_body(job: &Job, view: Option<&AccountView>) -> String {
    let mut lines = Vec::new();
    let name = view
        .and_then(|v| v.name.clone())
        .or_else(|| job.notice.name.clone());
    let email = view
        .and_then(|v| v.email.clone())
        .or_else(|| job.notice.email.clone());
    match (name, email) {
        (Some(n), Some(e)) => lines.push(format!("Customer: {n} ({e})")),
        (Some(n), None) => lines.push(format!("Customer: {n}")),
        (None, Some(e)) => lines.push(format!("Customer: {e}")),
        (None, None) => {}
    }
    lines.push(format!("{} {}", job.provider, job.source_id));
    if let (Some(a), Some(c)) = (job.notice.amount, job.notice.currency.as_deref()) {
        lines.push(format!("Amount: {}", format_amount(a, c)));
    }
    if let Some(link) = &job.notice.link {
        lines.push(link.clone());
    }
    lines.push(format!("paysync delivery {}", job.id));
    lines
        .iter()
        .map(|l| escape_html(l))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn task_input(job: &Job, spec: &TaskSpec, view: Option<&AccountView>) -> Value {
    let key = task_key(job);
    json!({"inputs": [{
        "idProperty": "paysync_task_key",
        "id": key,
        "objectWriteTraceId": job.id.to_string(),
        "properties": {
            "paysync_task_key": key,
            "hs_timestamp": iso(spec.due),
            "hs_task_subject": spec.subject,
            "hs_task_body": task_body(job, view),
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": spec.priority,
            "hs_task_type": "TODO",
        },
    }]})
}

/// The id of the record a batch upsert wrote, or why there is none.
fn upserted_id(answer: &Value) -> Result<String, SendError> {
    let first = &answer["results"][0]["id"];
    let id = match first {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(id) = id.filter(|i| http::is_code(i)) {
        return Ok(id);
    }
    // A 207 carries per-input errors.
    let err = &answer["errors"][0];
    if let Some(category) = err["category"].as_str().filter(|c| http::is_code(c)) {
        return Err(SendError::new(
            FailureKind::Payload,
            None,
            category,
            excerpt(err["message"].as_str().unwrap_or(""), DETAIL_MAX),
        ));
    }
    Err(SendError::new(
        FailureKind::Transient { ambiguous: true },
        None,
        "unexpected_response",
        excerpt(&answer.to_string(), DETAIL_MAX),
    ))
}

/// Upserts to HubSpot.
pub struct HubspotSender {
    client: reqwest::Client,
    base: String,
    token: SecretString,
    stages: Stages,
    timeout: Duration,
}

impl fmt::Debug for HubspotSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubspotSender")
            .field("base", &self.base)
            .field("token", &"[redacted]")
            .field("stages", &self.stages)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HubspotSender {
    /// Validates `settings`, reads the deal pipelines and resolves the won and lost stages
    /// ([`resolve_stages`]). Refuses to start when the token is refused, the pipeline or a
    /// configured stage does not exist, or the stages are ambiguous.
    pub async fn connect(settings: &HubspotSettings) -> Result<HubspotSender, HubspotStartError> {
        settings.validate()?;
        let client = http::client(settings.timeout).map_err(HubspotStartError::Settings)?;
        let base = settings.api_base.trim().trim_end_matches('/').to_owned();
        let token = settings.token.expose_secret().trim().to_owned();
        let response = client
            .get(format!("{base}/crm/v3/pipelines/deals"))
            .bearer_auth(&token)
            .timeout(settings.timeout)
            .send()
            .await
            .map_err(|e| HubspotStartError::Unreachable(http::describe(e)))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| HubspotStartError::Unreachable(http::describe(e)))?;
        let detail = || excerpt(&http::redact(body.trim(), &token), DETAIL_MAX);
        match status {
            200 => {}
            401 => return Err(HubspotStartError::TokenRefused),
            403 => return Err(HubspotStartError::Forbidden(detail())),
            _ => {
                return Err(HubspotStartError::Status {
                    status,
                    detail: detail(),
                });
            }
        }
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| HubspotStartError::BadResponse(e.to_string()))?;
        let stages = resolve_stages(
            &json,
            settings.pipeline.trim(),
            settings.won_stage.as_deref(),
            settings.lost_stage.as_deref(),
        )?;
        tracing::info!(
            pipeline = %stages.pipeline,
            won = %stages.won,
            lost = %stages.lost,
            "HubSpot deal stages resolved"
        );
        Ok(HubspotSender {
            client,
            base,
            token: SecretString::from(token),
            stages,
            timeout: settings.timeout,
        })
    }

    /// The resolved deal stages.
    pub fn stages(&self) -> &Stages {
        &self.stages
    }

    /// One request; the answer's JSON (`Null` when empty) or the classified failure.
    async fn call(
        &self,
        throttle: &Throttle,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SendError> {
        throttle.ready().await;
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .timeout(self.timeout);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await.map_err(http::transport_error)?;
        let status = response.status().as_u16();
        let now = OffsetDateTime::now_utc();
        let retry_after = http::retry_after(response.headers(), now);
        let text = match response.text().await {
            Ok(t) => t,
            // It was received: a 2xx may have been written.
            Err(e) if (200..300).contains(&status) => {
                let mut err = http::transport_error(e);
                err.kind = FailureKind::Transient { ambiguous: true };
                err.status = Some(status);
                return Err(err);
            }
            Err(_) => String::new(),
        };
        classify(status, &text, retry_after, now).map_err(|mut e| {
            e.detail = http::redact(&e.detail, self.token.expose_secret());
            tracing::debug!(status, code = %e.code, path, "HubSpot refused a request");
            e
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| {
            SendError::new(
                FailureKind::Transient { ambiguous: true },
                Some(status),
                "unexpected_response",
                excerpt(text.trim(), DETAIL_MAX),
            )
        })
    }

    async fn upsert(
        &self,
        throttle: &Throttle,
        object: &str,
        input: &Value,
    ) -> Result<String, SendError> {
        let path = format!("/crm/v3/objects/{object}/batch/upsert");
        let answer = self
            .call(throttle, Method::POST, &path, Some(input))
            .await?;
        upserted_id(&answer)
    }

    async fn associate(
        &self,
        throttle: &Throttle,
        from: (&str, &str),
        to_contact: &str,
    ) -> Result<(), SendError> {
        let path = format!(
            "/crm/v4/objects/{}/{}/associations/default/contacts/{to_contact}",
            from.0, from.1
        );
        self.call(throttle, Method::PUT, &path, None).await?;
        Ok(())
    }

    async fn deal(&self, job: &Job, throttle: &Throttle) -> Result<Verdict, SendError> {
        let Some(facts) = &job.account else {
            return Ok(Verdict::Skip {
                reason: "no_account",
            });
        };
        let view = account_view(facts);
        let stage = match view.deal_stage {
            "closed_won" => self.stages.won.as_str(),
            "closed_lost" => self.stages.lost.as_str(),
            _ => return Ok(Verdict::Skip { reason: "not_won" }),
        };
        let contact = self
            .upsert(throttle, "contacts", &contact_input(&view, job.id))
            .await?;
        let input = deal_input(
            facts,
            &view,
            &self.stages,
            stage,
            OffsetDateTime::now_utc(),
            job.id,
        );
        let deal = self.upsert(throttle, "deals", &input).await?;
        self.associate(throttle, ("deals", &deal), &contact).await?;
        Ok(Verdict::Sent {
            external_ref: Some(deal),
        })
    }

    async fn task(&self, job: &Job, throttle: &Throttle) -> Result<Verdict, SendError> {
        let now = OffsetDateTime::now_utc();
        let Some(spec) = task_spec(job, now) else {
            return Err(SendError::new(
                FailureKind::Payload,
                None,
                "unsupported_intent",
                format!("no HubSpot task for {}", job.intent.as_str()),
            ));
        };
        let view = job.account.as_ref().map(account_view);
        let contact = match &view {
            Some(v) => Some(
                self.upsert(throttle, "contacts", &contact_input(v, job.id))
                    .await?,
            ),
            None => None,
        };
        let task = self
            .upsert(throttle, "tasks", &task_input(job, &spec, view.as_ref()))
            .await?;
        if let Some(contact) = contact {
            self.associate(throttle, ("tasks", &task), &contact).await?;
        }
        Ok(Verdict::Sent {
            external_ref: Some(task),
        })
    }
}

impl Sender for HubspotSender {
    fn destination(&self) -> Destination {
        Destination::Hubspot
    }

    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let result = match job.operation {
                Operation::CrmDeal => self.deal(job, throttle).await,
                Operation::CrmTask => self.task(job, throttle).await,
                other => Err(SendError::new(
                    FailureKind::Payload,
                    None,
                    "unsupported_operation",
                    format!("HubSpot does not perform {}", other.as_str()),
                )),
            };
            result.unwrap_or_else(Verdict::Failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::billing::{CustomerFact, PaymentFact, SubscriptionFact};
    use paysync_domain::intent::Notice;

    fn stage(id: &str, label: &str, closed: &str, probability: &str) -> Value {
        json!({
            "id": id, "label": label, "displayOrder": 0, "archived": false,
            "metadata": {"isClosed": closed, "probability": probability},
            "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z",
        })
    }

    fn pipelines(stages: Vec<Value>) -> Value {
        json!({"results": [
            {"id": "default", "label": "Sales Pipeline", "displayOrder": 0, "archived": false,
             "stages": stages},
            {"id": "7654321", "label": "Renewals", "displayOrder": 1, "archived": false,
             "stages": [stage("renewwon", "Renewed", "true", "1.0"),
                        stage("renewlost", "Lapsed", "true", "0.0")]},
        ]})
    }

    fn defaults() -> Vec<Value> {
        vec![
            stage(
                "appointmentscheduled",
                "Appointment Scheduled",
                "false",
                "0.2",
            ),
            stage("qualifiedtobuy", "Qualified To Buy", "false", "0.4"),
            stage("contractsent", "Contract Sent", "false", "0.9"),
            stage("closedwon", "Closed Won", "true", "1.0"),
            stage("closedlost", "Closed Lost", "true", "0.0"),
        ]
    }

    #[test]
    fn the_default_pipeline_resolves_by_metadata() {
        let s = resolve_stages(&pipelines(defaults()), "default", None, None).expect("resolves");
        assert_eq!(
            s,
            Stages {
                pipeline: "default".into(),
                won: "closedwon".into(),
                lost: "closedlost".into()
            }
        );
        let r = resolve_stages(&pipelines(defaults()), "7654321", None, None).expect("resolves");
        assert_eq!((r.won.as_str(), r.lost.as_str()), ("renewwon", "renewlost"));
    }

    #[test]
    fn a_renamed_portal_resolves_by_probability_not_by_id() {
        let stages = vec![
            stage("appointmentscheduled", "New", "false", "0.2"),
            stage("closedwon", "Lost", "true", "0.0"),
            stage("12345678", "Won", "true", "1.0"),
            stage("contractsent", "Contract Sent", "false", "0.9"),
        ];
        let s = resolve_stages(&pipelines(stages), "default", None, None).expect("resolves");
        assert_eq!(s.won, "12345678");
        assert_eq!(s.lost, "closedwon");
    }

    #[test]
    fn numbers_and_booleans_in_metadata_are_accepted_and_archived_stages_ignored() {
        let stages = vec![
            json!({"id": "w", "label": "W", "metadata": {"isClosed": true, "probability": 1}}),
            json!({"id": "l", "label": "L", "metadata": {"isClosed": true, "probability": 0.0}}),
            json!({"id": "oldwon", "label": "Old", "archived": true,
                   "metadata": {"isClosed": "true", "probability": "1.0"}}),
        ];
        let s = resolve_stages(&pipelines(stages), "default", None, None).expect("resolves");
        assert_eq!((s.won.as_str(), s.lost.as_str()), ("w", "l"));
    }

    #[test]
    fn two_won_candidates_refuse_and_name_the_setting() {
        let mut stages = defaults();
        stages.push(stage("upsell", "Upsold", "true", "1.0"));
        let e = resolve_stages(&pipelines(stages.clone()), "default", None, None)
            .expect_err("ambiguous");
        assert!(
            matches!(e, StageError::Ambiguous { role: "won", .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("PAYSYNC_HUBSPOT_WON_STAGE"), "{msg}");
        assert!(
            msg.contains("closedwon (Closed Won)") && msg.contains("upsell (Upsold)"),
            "{msg}"
        );
        // Configuring one settles it.
        let s = resolve_stages(&pipelines(stages), "default", Some("upsell"), None)
            .expect("configured");
        assert_eq!(s.won, "upsell");
        assert_eq!(s.lost, "closedlost");
    }

    #[test]
    fn missing_stages_and_pipelines_refuse_clearly() {
        let open_only = vec![stage("a", "A", "false", "0.5")];
        let e = resolve_stages(&pipelines(open_only), "default", None, None).expect_err("none");
        assert!(
            matches!(e, StageError::Missing { role: "won", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("PAYSYNC_HUBSPOT_WON_STAGE"));

        let no_lost = vec![stage("w", "W", "true", "1.0")];
        let e = resolve_stages(&pipelines(no_lost), "default", None, None).expect_err("no lost");
        assert!(
            matches!(e, StageError::Missing { role: "lost", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("PAYSYNC_HUBSPOT_LOST_STAGE"));

        let e = resolve_stages(&pipelines(defaults()), "nope", None, None).expect_err("no pipe");
        let msg = e.to_string();
        assert!(
            msg.contains("\"nope\"") && msg.contains("default (Sales Pipeline)"),
            "{msg}"
        );
        let e = resolve_stages(&json!({}), "default", None, None).expect_err("empty");
        assert!(e.to_string().contains("none"), "{e}");
    }

    #[test]
    fn configured_stages_must_exist_and_be_closed() {
        let e = resolve_stages(&pipelines(defaults()), "default", Some("wonwon"), None)
            .expect_err("unknown");
        assert!(
            matches!(e, StageError::UnknownStage { role: "won", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"wonwon\""), "{e}");
        let e = resolve_stages(
            &pipelines(defaults()),
            "default",
            None,
            Some("contractsent"),
        )
        .expect_err("open");
        assert!(
            matches!(e, StageError::NotClosed { role: "lost", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"contractsent\""), "{e}");
        // A stage of another pipeline is not in this one.
        let e = resolve_stages(&pipelines(defaults()), "default", Some("renewwon"), None)
            .expect_err("other pipeline");
        assert!(matches!(e, StageError::UnknownStage { .. }), "{e:?}");
        let e = resolve_stages(
            &pipelines(defaults()),
            "default",
            Some("closedwon"),
            Some("closedwon"),
        )
        .expect_err("same");
        assert!(matches!(e, StageError::SameStage { .. }), "{e:?}");
        let s = resolve_stages(
            &pipelines(defaults()),
            "default",
            Some("closedlost"),
            Some("closedwon"),
        )
        .expect("an admin may swap them on purpose");
        assert_eq!(
            (s.won.as_str(), s.lost.as_str()),
            ("closedlost", "closedwon")
        );
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("time")
    }

    fn err(r: Result<(), SendError>) -> SendError {
        r.expect_err("a failure")
    }

    #[test]
    fn success_is_ok() {
        for s in [200, 201, 204, 207] {
            assert_eq!(classify(s, "{}", None, at(0)), Ok(()));
        }
    }

    #[test]
    fn the_daily_quota_pauses_until_midnight_utc() {
        let body = r#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c7f5f7bb-4e2a-4f6c-9a52-0c8d2b2a1d11","policyName":"DAILY","groupName":"api-calls-daily"}"#;
        // 2027-01-15T08:00:00Z: 16 h to midnight.
        let e = err(classify(429, body, None, at(1_800_000_000)));
        assert_eq!(
            e.kind,
            FailureKind::Quota {
                pause: Duration::from_secs(16 * 3600)
            }
        );
        assert_eq!(e.code, "DAILY");
        assert_eq!(e.status, Some(429));
        assert!(e.detail.contains("daily limit"));
        // At midnight exactly: a full day.
        let e = err(classify(429, body, None, at(1_799_971_200)));
        assert_eq!(
            e.kind,
            FailureKind::Quota {
                pause: Duration::from_secs(86_400)
            }
        );
        // A non-UTC `now` is the same instant.
        let shifted = at(1_800_000_000).to_offset(time::macros::offset!(-5));
        let e = err(classify(429, body, None, shifted));
        assert_eq!(
            e.kind,
            FailureKind::Quota {
                pause: Duration::from_secs(16 * 3600)
            }
        );
    }

    #[test]
    fn the_burst_limit_pauses_for_retry_after_or_ten_seconds() {
        let body = r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"3b0a3f3e-1c5b-4d1e-b1a5-6f2f0e0c9d22","policyName":"TEN_SECONDLY_ROLLING","groupName":"api-calls-burst"}"#;
        let e = err(classify(429, body, None, at(0)));
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: BURST_WINDOW
            }
        );
        assert_eq!(e.code, "TEN_SECONDLY_ROLLING");
        let e = err(classify(429, body, Some(Duration::from_secs(3)), at(0)));
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: Duration::from_secs(3)
            }
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        let e = err(classify(429, "", None, at(0)));
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: BURST_WINDOW
            }
        );
        assert_eq!(e.code, "RATE_LIMIT");
        let e = err(classify(429, r#"{"policyName":"SECONDLY"}"#, None, at(0)));
        assert_eq!(e.code, "SECONDLY");
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: BURST_WINDOW
            }
        );
    }

    #[test]
    fn auth_and_scopes_are_config() {
        let body = r#"{"status":"error","message":"Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview","correlationId":"0a1b","category":"INVALID_AUTHENTICATION"}"#;
        let e = err(classify(401, body, None, at(0)));
        assert_eq!(e.kind, FailureKind::Config);
        assert_eq!(e.code, "INVALID_AUTHENTICATION");
        assert_eq!(
            err(classify(401, "", None, at(0))).code,
            "INVALID_AUTHENTICATION"
        );
        let body = r#"{"status":"error","message":"This app hasn't been granted all required scopes to make this call.","correlationId":"1c2d","errors":[{"message":"One or more of the following scopes are required.","context":{"requiredGranularScopes":["crm.objects.deals.write"]}}],"category":"MISSING_SCOPES"}"#;
        let e = err(classify(403, body, None, at(0)));
        assert_eq!(e.kind, FailureKind::Config);
        assert_eq!(e.code, "MISSING_SCOPES");
        assert!(e.detail.contains("crm.objects.deals.write"));
        assert_eq!(
            err(classify(403, "<html>", None, at(0))).code,
            "MISSING_SCOPES"
        );
    }

    #[test]
    fn refused_items_carry_the_category() {
        let validation = r#"{"status":"error","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"paysync_deal_key\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"paysync_deal_key\"}]","correlationId":"2e3f","category":"VALIDATION_ERROR"}"#;
        let cases = [
            (400, validation, "VALIDATION_ERROR"),
            (
                404,
                r#"{"status":"error","message":"resource not found","correlationId":"3f","category":"OBJECT_NOT_FOUND"}"#,
                "OBJECT_NOT_FOUND",
            ),
            (
                409,
                r#"{"status":"error","message":"Contact already exists. Existing ID: 551","correlationId":"4a","category":"CONFLICT"}"#,
                "CONFLICT",
            ),
            (422, r#"{"status":"error","message":"x"}"#, "http_422"),
            (413, "", "http_413"),
        ];
        for (status, body, code) in cases {
            let e = err(classify(status, body, None, at(0)));
            assert_eq!(e.kind, FailureKind::Payload, "{status}");
            assert_eq!(e.code, code);
            assert_eq!(e.status, Some(status));
        }
    }

    #[test]
    fn server_errors_are_transient() {
        for (status, body, code) in [
            (
                500,
                r#"{"status":"error","message":"internal error","correlationId":"5b","category":"INTERNAL_ERROR"}"#,
                "INTERNAL_ERROR",
            ),
            (502, "<html><body>Bad Gateway</body></html>", "http_502"),
            (503, "", "http_503"),
            (408, "", "http_408"),
            (302, "", "http_302"),
        ] {
            let e = err(classify(status, body, None, at(0)));
            assert_eq!(
                e.kind,
                FailureKind::Transient { ambiguous: false },
                "{status}"
            );
            assert_eq!(e.code, code);
        }
    }

    #[test]
    fn settings_debug_hides_the_token_and_validation_catches_blanks() {
        let s = HubspotSettings::new(SecretString::from("pat-na1-sekrit".to_owned()));
        assert!(!format!("{s:?}").contains("sekrit"));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.api_base, DEFAULT_API_BASE);
        assert_eq!(s.pipeline, DEFAULT_PIPELINE);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let cases = [
            HubspotSettings {
                token: SecretString::from(" ".to_owned()),
                ..s.clone()
            },
            HubspotSettings {
                api_base: "api.hubapi.com".into(),
                ..s.clone()
            },
            HubspotSettings {
                pipeline: "".into(),
                ..s.clone()
            },
            HubspotSettings {
                won_stage: Some(" ".into()),
                ..s.clone()
            },
            HubspotSettings {
                timeout: Duration::ZERO,
                ..s.clone()
            },
        ];
        for c in cases {
            let e = c.validate().expect_err("invalid");
            assert!(matches!(e, HubspotStartError::Settings(_)), "{e:?}");
            assert!(!e.to_string().contains("sekrit"));
        }
    }

    fn facts() -> AccountFacts {
        AccountFacts {
            id: 7,
            customers: vec![CustomerFact {
                provider: "stripe".into(),
                customer_id: "cus_1".into(),
                email: Some("ada@example.com".into()),
                name: Some("Ada King Lovelace".into()),
                deleted: false,
            }],
            subscriptions: vec![SubscriptionFact {
                id: "sub_1".into(),
                status: "active".into(),
                plan: Some("pro".into()),
            }],
            payments: vec![
                PaymentFact {
                    provider: "stripe".into(),
                    id: "pi_1".into(),
                    status: "succeeded".into(),
                    amount: 4900,
                    currency: "usd".into(),
                    amount_refunded: 0,
                },
                PaymentFact {
                    provider: "stripe".into(),
                    id: "pi_2".into(),
                    status: "succeeded".into(),
                    amount: 4905,
                    currency: "usd".into(),
                    amount_refunded: 0,
                },
                PaymentFact {
                    provider: "stripe".into(),
                    id: "pi_3".into(),
                    status: "succeeded".into(),
                    amount: 100,
                    currency: "eur".into(),
                    amount_refunded: 0,
                },
            ],
            ..AccountFacts::default()
        }
    }

    fn stages() -> Stages {
        Stages {
            pipeline: "default".into(),
            won: "12345678".into(),
            lost: "closedwon".into(),
        }
    }

    #[test]
    fn major_units_follow_the_currency_decimals() {
        assert_eq!(major_units(1234, "usd"), "12.34");
        assert_eq!(major_units(123_456, "EUR"), "1234.56");
        assert_eq!(major_units(5, "eur"), "0.05");
        assert_eq!(major_units(-5, "usd"), "-0.05");
        assert_eq!(major_units(500, "jpy"), "500");
        assert_eq!(major_units(1234, "kwd"), "1.234");
        assert_eq!(major_units(0, "usd"), "0.00");
        assert_eq!(major_units(i64::MIN, "usd"), "-92233720368547758.08");
    }

    #[test]
    fn the_contact_is_keyed_by_account_and_the_name_split() {
        let view = account_view(&facts());
        let c = contact_input(&view, 99);
        let i = &c["inputs"][0];
        assert_eq!(i["idProperty"], "paysync_account_key");
        assert_eq!(i["id"], "acct-7");
        assert_eq!(i["objectWriteTraceId"], "99");
        assert_eq!(i["properties"]["paysync_account_key"], "acct-7");
        assert_eq!(i["properties"]["email"], "ada@example.com");
        assert_eq!(i["properties"]["firstname"], "Ada");
        assert_eq!(i["properties"]["lastname"], "King Lovelace");

        let mut f = facts();
        f.customers[0].name = Some("Cher".into());
        f.customers[0].email = None;
        let c = contact_input(&account_view(&f), 1);
        let p = &c["inputs"][0]["properties"];
        assert_eq!(p["firstname"], "Cher");
        assert!(
            p.get("lastname").is_none() && p.get("email").is_none(),
            "{p}"
        );
    }

    #[test]
    fn the_deal_is_keyed_by_account_in_the_given_stage_with_the_first_currency_total() {
        let f = facts();
        let view = account_view(&f);
        let now = at(1_800_000_000);
        let d = deal_input(&f, &view, &stages(), "12345678", now, 5);
        let i = &d["inputs"][0];
        assert_eq!(i["idProperty"], "paysync_deal_key");
        assert_eq!(i["id"], "acct-7");
        let p = &i["properties"];
        assert_eq!(p["paysync_deal_key"], "acct-7");
        assert_eq!(p["dealname"], "Ada King Lovelace — pro");
        assert_eq!(p["pipeline"], "default");
        assert_eq!(p["dealstage"], "12345678");
        assert_eq!(p["amount"], "98.05");
        assert_eq!(p["closedate"], "2027-01-15T08:00:00.000Z");

        let mut f = facts();
        f.customers[0].name = None;
        f.subscriptions.clear();
        f.payments.clear();
        let d = deal_input(&f, &account_view(&f), &stages(), "closedwon", now, 5);
        let p = &d["inputs"][0]["properties"];
        assert_eq!(p["dealname"], "ada@example.com — paysync");
        assert!(p.get("amount").is_none(), "{p}");
    }

    fn task_job(intent: Intent, due_at: Option<i64>) -> Job {
        Job {
            id: 11,
            operation: Operation::CrmTask,
            key: "k".into(),
            provider: "stripe".into(),
            intent,
            source_id: "dp_1".into(),
            attempt: 1,
            created_at: at(1_800_000_000),
            notice: Notice {
                amount: Some(4900),
                currency: Some("usd".into()),
                link: Some("https://x.example/?a=1&b=<2>".into()),
                ..Notice::default()
            },
            account: Some(facts()),
            due_at,
            app_body: None,
        }
    }

    #[test]
    fn task_subjects_priorities_and_due_times() {
        let now = at(1_800_000_000);
        let day = time::Duration::DAY;
        let s = task_spec(&task_job(Intent::PaymentFailedFollowup, None), now).expect("task");
        assert_eq!(s.subject, "Payment failed: follow up");
        assert_eq!(s.priority, "HIGH");
        assert_eq!(s.due, at(1_800_000_000) + day);

        let deadline = 1_800_000_000 + 10 * 86_400;
        let s = task_spec(&task_job(Intent::DisputeResponse, Some(deadline)), now).expect("task");
        assert_eq!(s.subject, "Respond to dispute dp_1");
        assert_eq!(s.priority, "HIGH");
        assert_eq!(s.due, at(deadline) - 2 * day);
        // A deadline in under two days: due now, not in the past.
        let soon = 1_800_000_000 + 3600;
        let s = task_spec(&task_job(Intent::DisputeResponse, Some(soon)), now).expect("task");
        assert_eq!(s.due, now);

        let trial_end = 1_800_000_000 + 3 * 86_400;
        let s = task_spec(&task_job(Intent::TrialEnding, Some(trial_end)), now).expect("task");
        assert_eq!(s.priority, "MEDIUM");
        assert_eq!(s.due, at(trial_end));

        for i in [Intent::Welcome, Intent::Churn, Intent::ReceiptEmail] {
            assert_eq!(task_spec(&task_job(i, None), now), None);
        }
    }

    #[test]
    fn the_task_is_keyed_by_intent_provider_and_source() {
        let job = task_job(Intent::DisputeResponse, Some(1_800_000_000 + 10 * 86_400));
        let spec = task_spec(&job, at(1_800_000_000)).expect("task");
        let view = account_view(&facts());
        let t = task_input(&job, &spec, Some(&view));
        let i = &t["inputs"][0];
        assert_eq!(i["idProperty"], "paysync_task_key");
        assert_eq!(i["id"], "dispute_response:stripe:dp_1");
        let p = &i["properties"];
        assert_eq!(p["paysync_task_key"], "dispute_response:stripe:dp_1");
        assert_eq!(p["hs_timestamp"], "2027-01-23T08:00:00.000Z");
        assert_eq!(p["hs_task_subject"], "Respond to dispute dp_1");
        assert_eq!(p["hs_task_status"], "NOT_STARTED");
        assert_eq!(p["hs_task_priority"], "HIGH");
        assert_eq!(p["hs_task_type"], "TODO");
        let body = p["hs_task_body"].as_str().expect("body");
        assert!(
            body.contains("Ada King Lovelace (ada@example.com)"),
            "{body}"
        );
        assert!(body.contains("Amount: $49.00"), "{body}");
        assert!(body.contains("a=1&amp;b=&lt;2&gt;"), "{body}");
    }

    #[test]
    fn upsert_answers_give_the_id_or_the_reason() {
        let ok = json!({"status": "COMPLETE", "results": [{"id": "551", "new": true}]});
        assert_eq!(upserted_id(&ok), Ok("551".to_owned()));
        assert_eq!(
            upserted_id(&json!({"results": [{"id": 552}]})),
            Ok("552".to_owned())
        );
        let partial = json!({"status": "COMPLETE", "results": [], "numErrors": 1, "errors": [
            {"status": "error", "category": "VALIDATION_ERROR", "message": "Property \"email\" is invalid"}
        ]});
        let e = upserted_id(&partial).expect_err("refused");
        assert_eq!(e.kind, FailureKind::Payload);
        assert_eq!(e.code, "VALIDATION_ERROR");
        let e = upserted_id(&Value::Null).expect_err("nothing");
        assert_eq!(e.kind, FailureKind::Transient { ambiguous: true });
        assert_eq!(e.code, "unexpected_response");
    }

    #[tokio::test]
    async fn deals_without_an_account_or_not_yet_won_are_skipped_without_a_request() {
        // Nothing listens at this base: any request would fail.
        let sender = HubspotSender {
            client: http::client(Duration::from_secs(1)).expect("client"),
            base: "http://127.0.0.1:9".into(),
            token: SecretString::from("pat-na1-x".to_owned()),
            stages: stages(),
            timeout: Duration::from_secs(1),
        };
        let throttle = Throttle::unlimited();
        let mut job = task_job(Intent::Welcome, None);
        job.operation = Operation::CrmDeal;
        job.account = None;
        assert_eq!(
            sender.send(&job, &throttle).await,
            Verdict::Skip {
                reason: "no_account"
            }
        );
        let mut f = facts();
        f.payments.clear();
        job.account = Some(f);
        assert_eq!(
            sender.send(&job, &throttle).await,
            Verdict::Skip { reason: "not_won" }
        );
        job.operation = Operation::ChatChurn;
        match sender.send(&job, &throttle).await {
            Verdict::Failed(e) => {
                assert_eq!(e.kind, FailureKind::Payload);
                assert_eq!(e.code, "unsupported_operation");
            }
            other => panic!("{other:?}"),
        }
        job.operation = Operation::CrmTask;
        job.intent = Intent::Churn;
        match sender.send(&job, &throttle).await {
            Verdict::Failed(e) => assert_eq!(e.code, "unsupported_intent"),
            other => panic!("{other:?}"),
        }
    }
}
