//! Team chat through a Slack-compatible incoming webhook.
//!
//! One `POST` of `{"text": …, "blocks": […]}` per job; the webhook answers `200 ok` or a
//! plain-text error code. The webhook URL is the credential: it is never logged, never put in
//! an error, and [`ChatSettings`]'s `Debug` hides it. There is no idempotency key, so a timeout
//! followed by a retry can post twice (rare, and harmless); each block's `block_id` carries the
//! delivery id so a human can tell.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use paysync_domain::billing::{AccountFacts, account_view};
use paysync_domain::outbound::{Destination, Operation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::http::{self, DETAIL_MAX, escape_html};
use crate::job::{FailureKind, Job, SendError, Sender, Throttle, Verdict, excerpt};

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Slack's limit on a section's text.
const SECTION_MAX: usize = 3000;

/// Where and how to post.
#[derive(Clone)]
pub struct ChatSettings {
    /// The incoming webhook's URL (`https://hooks.slack.com/services/T…/B…/…`): a secret.
    pub webhook_url: SecretString,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl fmt::Debug for ChatSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatSettings")
            .field("webhook_url", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why chat settings are unusable. Never contains the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatSettingsError {
    /// The webhook URL does not parse.
    #[error("the chat webhook URL is not a valid URL")]
    InvalidUrl,
    /// The webhook URL is not `http` or `https`, or has no host.
    #[error("the chat webhook URL must be an http(s) URL with a host")]
    NotHttp,
    /// The timeout is zero.
    #[error("the chat timeout must be more than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built.
    #[error("cannot build the chat HTTP client: {0}")]
    Client(String),
}

impl ChatSettings {
    /// Settings for `webhook_url` with the default timeout.
    pub fn new(webhook_url: SecretString) -> Self {
        Self {
            webhook_url,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Checks that the URL is an http(s) URL and the timeout is not zero.
    pub fn validate(&self) -> Result<(), ChatSettingsError> {
        self.url().map(|_| ())
    }

    fn url(&self) -> Result<reqwest::Url, ChatSettingsError> {
        if self.timeout.is_zero() {
            return Err(ChatSettingsError::ZeroTimeout);
        }
        http::web_url(self.webhook_url.expose_secret()).map_err(|p| match p {
            http::UrlProblem::Invalid => ChatSettingsError::InvalidUrl,
            http::UrlProblem::NotHttp => ChatSettingsError::NotHttp,
        })
    }
}

/// Posts chat jobs to one webhook.
pub struct ChatSender {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl fmt::Debug for ChatSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatSender")
            .field("webhook_url", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ChatSender {
    /// A sender for `settings` (validated here).
    pub fn new(settings: &ChatSettings) -> Result<Self, ChatSettingsError> {
        let url = settings.url()?;
        let client = http::client(settings.timeout).map_err(ChatSettingsError::Client)?;
        Ok(Self {
            client,
            url,
            timeout: settings.timeout,
        })
    }

    async fn post(&self, job: &Job, throttle: &Throttle) -> Verdict {
        let Some(body) = message(job) else {
            return Verdict::Failed(SendError::new(
                FailureKind::Payload,
                None,
                "unsupported_operation",
                format!("chat does not perform {}", job.operation.as_str()),
            ));
        };
        throttle.ready().await;
        let response = match self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Verdict::Failed(http::transport_error(e)),
        };
        let status = response.status().as_u16();
        let retry_after = http::retry_after(response.headers(), OffsetDateTime::now_utc());
        // A body that breaks off still leaves the status to judge by.
        let text = response.text().await.unwrap_or_default();
        let verdict = classify(status, &text, retry_after);
        if let Verdict::Failed(e) = &verdict {
            tracing::debug!(
                delivery = job.id,
                status,
                code = %e.code,
                "chat webhook refused a message"
            );
        }
        verdict
    }
}

impl Sender for ChatSender {
    fn destination(&self) -> Destination {
        Destination::Chat
    }

    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict> {
        Box::pin(self.post(job, throttle))
    }
}

/// Codes that mean the webhook itself is unusable (revoked, its channel gone, the workspace
/// disabled): the destination is disabled until an operator fixes it. A webhook posts to one
/// channel, so `posting_to_general_channel_denied` refuses every message alike and is here
/// too.
const CONFIG_CODES: [&str; 10] = [
    "invalid_token",
    "action_prohibited",
    "no_service",
    "no_service_id",
    "channel_not_found",
    "channel_is_archived",
    "team_disabled",
    "no_team",
    "no_active_hooks",
    "posting_to_general_channel_denied",
];

/// What a webhook's answer means.
///
/// - 2xx: sent (Slack answers `ok`; a Slack-compatible service may answer something else).
/// - 429: rate limited, pause for `retry_after` (1 s when absent).
/// - a configuration code (`no_service`, `invalid_token`, `channel_is_archived`, … in
///   `CONFIG_CODES`) with any 4xx, and any 401, 403, 404 or 410: the destination's
///   configuration is wrong.
/// - any other 400 (`invalid_payload`, `no_text`, `too_many_attachments`): this message is
///   refused.
/// - 5xx (`rollup_error`) and anything else: transient.
///
/// The error's code is the body when it is a short code, else `http_<status>`.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Sent { external_ref: None };
    }
    let body = body.trim();
    let code = if status == 429 {
        "rate_limited".to_owned()
    } else if http::is_code(body) {
        body.to_owned()
    } else {
        format!("http_{status}")
    };
    let kind = match status {
        429 => FailureKind::RateLimited {
            pause: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        400..=499 if CONFIG_CODES.contains(&code.as_str()) => FailureKind::Config,
        401 | 403 | 404 | 410 => FailureKind::Config,
        400 => FailureKind::Payload,
        _ => FailureKind::Transient { ambiguous: false },
    };
    Verdict::Failed(
        SendError::new(kind, Some(status), code, excerpt(body, DETAIL_MAX))
            .retry_after(retry_after),
    )
}

/// The message for `job` (`{"text", "blocks"}`), or `None` when `job` is not a chat
/// operation. The text is mrkdwn with `&`, `<` and `>` escaped; `text` is the notification
/// fallback.
pub fn message(job: &Job) -> Option<Value> {
    let who = Who::of(job);
    let (fallback, lines) = match job.operation {
        Operation::ChatNewCustomer => {
            let mut lines = vec![format!(":tada: *New customer:* {}", who.mrkdwn())];
            if let Some(a) = first_payment(job) {
                lines.push(format!("First payment: {}", escape_html(&a)));
            }
            if let Some(plan) = job.account.as_ref().and_then(|f| account_view(f).plan) {
                lines.push(format!("Plan: {}", escape_html(&plan)));
            }
            (format!("New customer: {}", who.plain()), lines)
        }
        Operation::ChatPaymentFailed => {
            let mut lines = vec![format!(":warning: *Payment failed:* {}", who.mrkdwn())];
            if let Some(a) = failed_amount(job) {
                lines.push(format!("Amount: {}", escape_html(&a)));
            }
            if let Some(link) = job.notice.link.as_deref().filter(|l| is_web_link(l)) {
                lines.push(format!("<{}|Open the invoice>", escape_html(link)));
            }
            (format!("Payment failed: {}", who.plain()), lines)
        }
        Operation::ChatDisputeOpened => {
            let mut lines = vec![format!(
                ":rotating_light: *Dispute opened:* {}",
                who.mrkdwn()
            )];
            if let Some(a) = dispute_amount(job) {
                lines.push(format!("Amount: {}", escape_html(&a)));
            }
            let due = job.due_at.and_then(utc_date);
            match &due {
                Some(d) => lines.push(format!("Evidence due by *{d}* (UTC)")),
                None => lines.push("Evidence deadline unknown: check the dispute".to_owned()),
            }
            let mut fallback = format!("Dispute opened: {}", who.plain());
            if let Some(d) = due {
                fallback.push_str(&format!(", evidence due by {d} (UTC)"));
            }
            (fallback, lines)
        }
        Operation::ChatChurn => {
            let plan = job
                .account
                .as_ref()
                .and_then(|f| f.subscriptions.iter().find(|s| s.id == job.source_id))
                .and_then(|s| s.plan.clone());
            let lines = vec![
                format!(":wave: *Churned:* {}", who.mrkdwn()),
                format!(
                    "Plan: {}",
                    escape_html(plan.as_deref().unwrap_or("unknown plan"))
                ),
            ];
            (format!("Churned: {}", who.plain()), lines)
        }
        _ => return None,
    };
    let context = format!(
        "paysync · {} · `{}` · delivery {}",
        escape_html(&job.provider),
        escape_html(&job.source_id),
        job.id
    );
    Some(json!({
        "text": escape_html(&fallback),
        "blocks": [
            {
                "type": "section",
                "block_id": format!("paysync-{}-main", job.id),
                "text": {"type": "mrkdwn", "text": excerpt(&lines.join("\n"), SECTION_MAX)},
            },
            {
                "type": "context",
                "block_id": format!("paysync-{}-context", job.id),
                "elements": [{"type": "mrkdwn", "text": context}],
            },
        ],
    }))
}

/// Who a message is about: the account's contact, else what the event carried.
struct Who {
    name: Option<String>,
    email: Option<String>,
    account: Option<i64>,
}

impl Who {
    fn of(job: &Job) -> Self {
        let view = job.account.as_ref().map(account_view);
        let name = view
            .as_ref()
            .and_then(|v| v.name.clone())
            .or_else(|| job.notice.name.clone());
        let email = view
            .as_ref()
            .and_then(|v| v.email.clone())
            .or_else(|| job.notice.email.clone());
        Self {
            name,
            email,
            account: job.account.as_ref().map(|f| f.id),
        }
    }

    fn plain(&self) -> String {
        match (&self.name, &self.email, self.account) {
            (Some(n), Some(e), _) => format!("{n} ({e})"),
            (Some(n), None, _) => n.clone(),
            (None, Some(e), _) => e.clone(),
            (None, None, Some(id)) => format!("account {id}"),
            (None, None, None) => "unknown customer".to_owned(),
        }
    }

    fn mrkdwn(&self) -> String {
        match (&self.name, &self.email) {
            (Some(n), Some(e)) => format!("*{}* ({})", escape_html(n), escape_html(e)),
            (Some(n), None) => format!("*{}*", escape_html(n)),
            (None, Some(e)) => format!("*{}*", escape_html(e)),
            (None, None) => escape_html(&self.plain()),
        }
    }
}

fn money(minor: i64, currency: &str) -> String {
    paysync_domain::money::format_amount(minor, currency)
}

fn notice_amount(job: &Job) -> Option<String> {
    let amount = job.notice.amount?;
    let currency = job.notice.currency.as_deref()?;
    Some(money(amount, currency))
}

/// The account's first successful payment, else what the event carried.
fn first_payment(job: &Job) -> Option<String> {
    job.account
        .as_ref()
        .and_then(|f: &AccountFacts| {
            f.payments
                .iter()
                .find(|p| p.status == "succeeded" && p.amount > 0)
        })
        .map(|p| money(p.amount, &p.currency))
        .or_else(|| notice_amount(job))
}

/// What failed to be paid: the event's amount, else the payment the job is about.
fn failed_amount(job: &Job) -> Option<String> {
    notice_amount(job).or_else(|| {
        job.account
            .as_ref()
            .and_then(|f| f.payments.iter().find(|p| p.id == job.source_id))
            .map(|p| money(p.amount, &p.currency))
    })
}

/// The disputed amount: the dispute the job is about, else what the event carried.
fn dispute_amount(job: &Job) -> Option<String> {
    job.account
        .as_ref()
        .and_then(|f| f.disputes.iter().find(|d| d.id == job.source_id))
        .map(|d| money(d.amount, &d.currency))
        .or_else(|| notice_amount(job))
}

/// `unix` seconds as a UTC date (`2026-12-24`).
fn utc_date(unix: i64) -> Option<String> {
    let at = OffsetDateTime::from_unix_timestamp(unix).ok()?;
    at.format(time::macros::format_description!("[year]-[month]-[day]"))
        .ok()
}

fn is_web_link(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && !s.contains('|')
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::billing::{CustomerFact, DisputeFact, PaymentFact, SubscriptionFact};
    use paysync_domain::intent::{Intent, Notice};

    fn failed(v: &Verdict) -> &SendError {
        match v {
            Verdict::Failed(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn success_is_sent_without_a_ref() {
        assert_eq!(
            classify(200, "ok", None),
            Verdict::Sent { external_ref: None }
        );
        assert_eq!(
            classify(200, "ok\n", None),
            Verdict::Sent { external_ref: None }
        );
        assert_eq!(
            classify(204, "", None),
            Verdict::Sent { external_ref: None }
        );
    }

    #[test]
    fn a_429_pauses_for_retry_after_or_a_second() {
        let body = r#"{"ok":false,"error":"rate_limited"}"#;
        let v = classify(429, body, Some(Duration::from_secs(30)));
        let e = failed(&v);
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: Duration::from_secs(30)
            }
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.status, Some(429));
        let v = classify(429, "", None);
        let e = failed(&v);
        assert_eq!(
            e.kind,
            FailureKind::RateLimited {
                pause: Duration::from_secs(1)
            }
        );
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn bad_payloads_are_refused_items_with_their_code() {
        for code in [
            "invalid_payload",
            "no_text",
            "too_many_attachments",
            "invalid_blocks",
        ] {
            let v = classify(400, code, None);
            let e = failed(&v);
            assert_eq!(e.kind, FailureKind::Payload, "{code}");
            assert_eq!(e.code, code);
            assert_eq!(e.status, Some(400));
            assert_eq!(e.detail, code);
        }
        let v = classify(400, "<html>Bad Request</html>", None);
        let e = failed(&v);
        assert_eq!(e.kind, FailureKind::Payload);
        assert_eq!(e.code, "http_400");
        assert_eq!(e.detail, "<html>Bad Request</html>");
    }

    #[test]
    fn a_broken_webhook_is_a_config_error() {
        let cases = [
            (403, "invalid_token"),
            (403, "action_prohibited"),
            (404, "no_service"),
            (404, "no_service_id"),
            (404, "channel_not_found"),
            (410, "channel_is_archived"),
            (400, "team_disabled"),
            (404, "no_team"),
            (403, "no_active_hooks"),
            (400, "posting_to_general_channel_denied"),
            (403, "some_new_code"),
            (404, "<html>Not Found</html>"),
            (401, ""),
        ];
        for (status, body) in cases {
            let v = classify(status, body, None);
            let e = failed(&v);
            assert_eq!(e.kind, FailureKind::Config, "{status} {body}");
            assert_eq!(e.status, Some(status));
        }
        assert_eq!(
            failed(&classify(404, "no_service", None)).code,
            "no_service"
        );
        assert_eq!(failed(&classify(404, "<html>", None)).code, "http_404");
    }

    #[test]
    fn server_errors_and_the_unexpected_are_transient() {
        for (status, body, code) in [
            (500, "rollup_error", "rollup_error"),
            (502, "<html>Bad Gateway</html>", "http_502"),
            (503, "", "http_503"),
            (504, "upstream timed out", "http_504"),
            (302, "", "http_302"),
            (418, "teapot", "teapot"),
            (100, "", "http_100"),
        ] {
            let v = classify(status, body, None);
            let e = failed(&v);
            assert_eq!(
                e.kind,
                FailureKind::Transient { ambiguous: false },
                "{status} {body}"
            );
            assert_eq!(e.code, code);
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(10_000);
        let e = failed(&classify(502, &body, None)).clone();
        assert!(e.detail.len() <= DETAIL_MAX + '…'.len_utf8());
        assert_eq!(e.code, "http_502");
    }

    #[test]
    fn settings_debug_hides_the_url_and_validation_names_no_secret() {
        let s = ChatSettings::new(SecretString::from(
            "https://hooks.slack.com/services/T1/B2/sekrit".to_owned(),
        ));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert!(!dbg.contains("hooks.slack.com"), "{dbg}");
        assert_eq!(s.validate(), Ok(()));
        let sender = ChatSender::new(&s).expect("sender");
        assert!(!format!("{sender:?}").contains("sekrit"));

        let bad = ChatSettings::new(SecretString::from("not a url sekrit".to_owned()));
        let e = bad.validate().expect_err("invalid");
        assert_eq!(e, ChatSettingsError::InvalidUrl);
        assert!(!e.to_string().contains("sekrit"));
        let ftp = ChatSettings::new(SecretString::from("ftp://example.com/sekrit".to_owned()));
        assert_eq!(ftp.validate(), Err(ChatSettingsError::NotHttp));
        let zero = ChatSettings {
            timeout: Duration::ZERO,
            ..s.clone()
        };
        assert_eq!(zero.validate(), Err(ChatSettingsError::ZeroTimeout));
        assert!(ChatSender::new(&zero).is_err());
    }

    fn job(operation: Operation, intent: Intent, source_id: &str) -> Job {
        Job {
            id: 42,
            operation,
            key: format!(
                "{}:{}:stripe:{source_id}",
                operation.as_str(),
                intent.as_str()
            ),
            provider: "stripe".into(),
            intent,
            source_id: source_id.into(),
            attempt: 1,
            created_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
            notice: Notice::default(),
            account: Some(AccountFacts {
                id: 7,
                customers: vec![CustomerFact {
                    provider: "stripe".into(),
                    customer_id: "cus_1".into(),
                    email: Some("ada@example.com".into()),
                    name: Some("Ada <Lovelace> & Co".into()),
                    deleted: false,
                }],
                subscriptions: vec![SubscriptionFact {
                    id: "sub_1".into(),
                    status: "canceled".into(),
                    plan: Some("pro_monthly".into()),
                }],
                payments: vec![
                    PaymentFact {
                        provider: "stripe".into(),
                        id: "pi_0".into(),
                        status: "requires_payment_method".into(),
                        amount: 999,
                        currency: "usd".into(),
                        amount_refunded: 0,
                    },
                    PaymentFact {
                        provider: "stripe".into(),
                        id: "pi_1".into(),
                        status: "succeeded".into(),
                        amount: 4900,
                        currency: "usd".into(),
                        amount_refunded: 0,
                    },
                ],
                disputes: vec![DisputeFact {
                    provider: "stripe".into(),
                    id: "dp_1".into(),
                    payment_id: Some("pi_1".into()),
                    status: "needs_response".into(),
                    amount: 4900,
                    currency: "usd".into(),
                }],
                ..AccountFacts::default()
            }),
            due_at: None,
            app_body: None,
        }
    }

    fn section(m: &Value) -> &str {
        m["blocks"][0]["text"]["text"]
            .as_str()
            .expect("section text")
    }

    #[test]
    fn new_customer_names_the_contact_and_the_first_succeeded_payment() {
        let j = job(Operation::ChatNewCustomer, Intent::Welcome, "account:7");
        let m = message(&j).expect("a chat operation");
        let text = section(&m);
        assert!(
            text.contains("*Ada &lt;Lovelace&gt; &amp; Co* (ada@example.com)"),
            "{text}"
        );
        assert!(text.contains("$49.00"), "{text}");
        assert!(!text.contains("$9.99"), "{text}");
        assert_eq!(
            m["text"],
            "New customer: Ada &lt;Lovelace&gt; &amp; Co (ada@example.com)"
        );
        assert_eq!(m["blocks"][0]["type"], "section");
        assert_eq!(m["blocks"][0]["text"]["type"], "mrkdwn");
        assert_eq!(m["blocks"][0]["block_id"], "paysync-42-main");
        assert_eq!(m["blocks"][1]["type"], "context");
        assert_eq!(m["blocks"][1]["block_id"], "paysync-42-context");
        let ctx = m["blocks"][1]["elements"][0]["text"]
            .as_str()
            .expect("context");
        assert!(
            ctx.contains("account:7") && ctx.contains("delivery 42"),
            "{ctx}"
        );
    }

    #[test]
    fn without_an_account_the_event_notice_is_used() {
        let mut j = job(
            Operation::ChatPaymentFailed,
            Intent::PaymentFailedFollowup,
            "in_1",
        );
        j.account = None;
        j.notice = Notice {
            email: Some("bob@example.com".into()),
            amount: Some(1500),
            currency: Some("eur".into()),
            link: Some("https://invoice.example/i?a=1&b=2".into()),
            ..Notice::default()
        };
        let m = message(&j).expect("a chat operation");
        let text = section(&m);
        assert!(text.contains("*bob@example.com*"), "{text}");
        assert!(text.contains("€15.00"), "{text}");
        assert!(
            text.contains("<https://invoice.example/i?a=1&amp;b=2|Open the invoice>"),
            "{text}"
        );
        assert_eq!(m["text"], "Payment failed: bob@example.com");

        j.notice = Notice::default();
        let m = message(&j).expect("a chat operation");
        assert_eq!(m["text"], "Payment failed: unknown customer");
    }

    #[test]
    fn a_dispute_shows_its_amount_and_the_evidence_date_in_utc() {
        let mut j = job(
            Operation::ChatDisputeOpened,
            Intent::DisputeResponse,
            "dp_1",
        );
        // 2027-01-15T23:30:00Z: late in the day, still the 15th in UTC.
        j.due_at = Some(1_800_055_800);
        let due = "2027-01-15";
        let m = message(&j).expect("a chat operation");
        let text = section(&m);
        assert!(
            text.contains(&format!("Evidence due by *{due}* (UTC)")),
            "{text}"
        );
        assert!(text.contains("$49.00"), "{text}");
        assert!(m["text"].as_str().expect("text").contains(due));
        assert_eq!(utc_date(1_800_000_000).as_deref(), Some("2027-01-15"));
        j.due_at = None;
        assert!(section(&message(&j).expect("chat")).contains("deadline unknown"));
    }

    #[test]
    fn churn_names_the_plan_of_the_cancelled_subscription() {
        let j = job(Operation::ChatChurn, Intent::Churn, "sub_1");
        let m = message(&j).expect("a chat operation");
        assert!(section(&m).contains("Plan: pro_monthly"), "{}", section(&m));
        let j = job(Operation::ChatChurn, Intent::Churn, "sub_other");
        assert!(section(&message(&j).expect("chat")).contains("Plan: unknown plan"));
    }

    #[test]
    fn other_operations_are_not_chat() {
        for op in Operation::ALL {
            let j = job(op, Intent::Welcome, "account:7");
            assert_eq!(
                message(&j).is_some(),
                op.goes_to(Destination::Chat),
                "{}",
                op.as_str()
            );
        }
    }
}
