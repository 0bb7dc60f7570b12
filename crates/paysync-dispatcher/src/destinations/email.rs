//! Email over SMTP with lettre: a receipt and thank-you, a payment-failed notice with how to
//! fix it, a refund confirmation. Text and HTML parts from templates (embedded defaults, each
//! overridable by a file of the same name in a directory), and a `Message-ID` built from the
//! delivery id, so every retry of one delivery carries the same one and a receiving system can
//! collapse the copies an ambiguous timeout may cause.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::Error as SmtpError;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use paysync_domain::money::format_amount;
use paysync_domain::outbound::{Destination, Operation};
use secrecy::{ExposeSecret as _, SecretString};

use crate::job::{FailureKind, Job, SendError, Sender, Throttle, Verdict, excerpt};

/// The templates, each `<name>.subject.txt`, `<name>.txt` and `<name>.html`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "receipt.subject.txt",
        include_str!("../../templates/receipt.subject.txt"),
    ),
    ("receipt.txt", include_str!("../../templates/receipt.txt")),
    ("receipt.html", include_str!("../../templates/receipt.html")),
    (
        "payment_failed.subject.txt",
        include_str!("../../templates/payment_failed.subject.txt"),
    ),
    (
        "payment_failed.txt",
        include_str!("../../templates/payment_failed.txt"),
    ),
    (
        "payment_failed.html",
        include_str!("../../templates/payment_failed.html"),
    ),
    (
        "refund.subject.txt",
        include_str!("../../templates/refund.subject.txt"),
    ),
    ("refund.txt", include_str!("../../templates/refund.txt")),
    ("refund.html", include_str!("../../templates/refund.html")),
];

/// Email settings.
#[derive(Clone)]
pub struct EmailSettings {
    /// The relay in lettre's URL form: `smtp://host:port` (plain, local use only),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (implicit TLS);
    /// credentials as `user:password@`. A credential: never logged.
    pub url: SecretString,
    /// The sender, `Name <address>`; its domain is the `Message-ID`'s.
    pub from: String,
    /// A directory whose files override the default templates of the same name.
    pub templates_dir: Option<PathBuf>,
    /// How long one send may take.
    pub timeout: Duration,
}

impl EmailSettings {
    /// Settings for `url` and `from`, with the default timeout (30 s).
    pub fn new(url: SecretString, from: impl Into<String>) -> Self {
        Self {
            url,
            from: from.into(),
            templates_dir: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Checks the settings: the URL, the sender, the templates.
    pub fn validate(&self) -> Result<(), EmailSettingsError> {
        Self::transport(&self.url, self.timeout)?;
        self.sender()?;
        self.templates()?;
        Ok(())
    }

    fn sender(&self) -> Result<Mailbox, EmailSettingsError> {
        self.from
            .parse()
            .map_err(|_| EmailSettingsError::From(self.from.clone()))
    }

    fn transport(
        url: &SecretString,
        timeout: Duration,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, EmailSettingsError> {
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            // lettre's message may quote the URL: say only what kind of problem it is.
            .map_err(|e| EmailSettingsError::Url(redact_url(url.expose_secret()), kind_of(&e)))?;
        Ok(builder.timeout(Some(timeout)).build())
    }

    fn templates(&self) -> Result<minijinja::Environment<'static>, EmailSettingsError> {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        for (name, default) in TEMPLATES {
            let source = match &self.templates_dir {
                Some(dir) => {
                    let path = dir.join(name);
                    if path.is_file() {
                        std::fs::read_to_string(&path).map_err(|e| {
                            EmailSettingsError::Template(path.display().to_string(), e.to_string())
                        })?
                    } else {
                        (*default).to_owned()
                    }
                }
                None => (*default).to_owned(),
            };
            env.add_template_owned(*name, source)
                .map_err(|e| EmailSettingsError::Template((*name).to_owned(), e.to_string()))?;
        }
        if let Some(dir) = &self.templates_dir
            && !dir.is_dir()
        {
            return Err(EmailSettingsError::TemplatesDir(dir.display().to_string()));
        }
        Ok(env)
    }
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("from", &self.from)
            .field("templates_dir", &self.templates_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://host:port` of an SMTP URL: no user, no password, no query.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or("");
    format!("{scheme}://{host}")
}

fn kind_of(e: &SmtpError) -> &'static str {
    if e.is_tls() {
        "TLS settings"
    } else {
        "not a valid smtp://, smtps:// URL"
    }
}

/// Email settings that cannot work. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum EmailSettingsError {
    /// The relay URL.
    #[error("SMTP URL {0}: {1}")]
    Url(String, &'static str),
    /// The sender.
    #[error("sender {0:?} is not an address like `Billing <billing@example.com>`")]
    From(String),
    /// The templates directory.
    #[error("email templates directory {0} does not exist")]
    TemplatesDir(String),
    /// A template.
    #[error("email template {0}: {1}")]
    Template(String, String),
}

/// Sends the three emails.
pub struct EmailSender {
    /// The pooled transport; replaced after an attempt timed out, so a connection left in an
    /// unknown state mid-dialogue is never reused.
    transport: std::sync::Mutex<AsyncSmtpTransport<Tokio1Executor>>,
    url: SecretString,
    timeout: Duration,
    from: Mailbox,
    domain: String,
    templates: minijinja::Environment<'static>,
}

impl fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSender")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl EmailSender {
    /// A sender for `settings` (connects lazily).
    pub fn new(settings: &EmailSettings) -> Result<Self, EmailSettingsError> {
        let from = settings.sender()?;
        let domain = from.email.domain().to_owned();
        Ok(Self {
            transport: std::sync::Mutex::new(EmailSettings::transport(
                &settings.url,
                settings.timeout,
            )?),
            url: settings.url.clone(),
            timeout: settings.timeout,
            from,
            domain,
            templates: settings.templates()?,
        })
    }

    /// The `Message-ID` of delivery `id` with key `key`: the same on every retry.
    pub fn message_id(&self, id: i64, key: &str) -> String {
        message_id(id, key, &self.domain)
    }

    /// The message `job` calls for, or why there is none.
    pub fn compose(&self, job: &Job) -> Result<Message, Verdict> {
        let template = match job.operation {
            Operation::EmailReceipt => "receipt",
            Operation::EmailPaymentFailed => "payment_failed",
            Operation::EmailRefund => "refund",
            other => {
                return Err(Verdict::Failed(SendError::new(
                    FailureKind::Payload,
                    None,
                    "unsupported_operation",
                    format!("email cannot perform {}", other.as_str()),
                )));
            }
        };
        let Some(to) = recipient(job).and_then(|(address, name)| {
            let mut mailbox: Mailbox = address.parse().ok()?;
            mailbox.name = name;
            Some(mailbox)
        }) else {
            return Err(Verdict::Skip {
                reason: "no_recipient",
            });
        };
        let n = &job.notice;
        let amount = match (n.amount, n.currency.as_deref()) {
            (Some(a), Some(c)) => format_amount(a, c),
            (Some(a), None) => format_amount(a, ""),
            _ => "your payment".to_owned(),
        };
        let ctx = minijinja::context! {
            name => to.name.clone(),
            amount => amount,
            description => n.description.clone(),
            link => n.link.clone(),
            provider => job.provider.clone(),
            reference => job.source_id.clone(),
            sender => self.from.name.clone().unwrap_or_else(|| self.from.email.to_string()),
        };
        let render = |part: &str| {
            let name = format!("{template}.{part}");
            self.templates
                .get_template(&name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| {
                    Verdict::Failed(SendError::new(
                        FailureKind::Payload,
                        None,
                        "template",
                        format!("{name}: {e}"),
                    ))
                })
        };
        let subject = render("subject.txt")?;
        let text = render("txt")?;
        let html = render("html")?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.trim())
            .message_id(Some(self.message_id(job.id, &job.key)))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| {
                Verdict::Failed(SendError::new(
                    FailureKind::Payload,
                    None,
                    "message",
                    e.to_string(),
                ))
            })
    }
}

/// `<paysync.<id>.<hash of key>@<domain>>`.
pub fn message_id(id: i64, key: &str, domain: &str) -> String {
    // FNV-1a: a stable, dependency-free fingerprint (not a secret, only a discriminator).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("<paysync.{id}.{:08x}@{domain}>", h as u32)
}

/// Who the email goes to: the address the events carried, else the account's customer's
/// (one not deleted first), with the name beside it.
pub fn recipient(job: &Job) -> Option<(String, Option<String>)> {
    if let Some(e) = &job.notice.email {
        return Some((e.clone(), job.notice.name.clone()));
    }
    let customers = &job.account.as_ref()?.customers;
    customers
        .iter()
        .filter(|c| !c.deleted)
        .chain(customers.iter().filter(|c| c.deleted))
        .find_map(|c| c.email.clone().map(|e| (e, c.name.clone())))
}

/// How an SMTP failure is treated: `code` is the reply code when the server sent one. A 5xx
/// refuses this message (dead); a timeout may have delivered (ambiguous); everything else, 4xx
/// and connection or TLS trouble, is worth another try.
pub fn classify(code: Option<u16>, permanent: bool, timeout: bool, detail: &str) -> SendError {
    let code_text = code.map_or_else(|| "connection".to_owned(), |c| c.to_string());
    if permanent {
        SendError::new(FailureKind::Payload, code, code_text, detail)
    } else if timeout {
        // lettre does not say whether DATA was sent: every timeout may have delivered.
        SendError::new(
            FailureKind::Transient { ambiguous: true },
            code,
            "timeout",
            detail,
        )
    } else {
        SendError::new(
            FailureKind::Transient { ambiguous: false },
            code,
            code_text,
            detail,
        )
    }
}

fn verdict_of(e: &SmtpError) -> SendError {
    let code = e.status().map(|c| {
        let s = c.to_string();
        s.parse::<u16>().unwrap_or(0)
    });
    // lettre's messages carry the server's reply, never our credentials.
    classify(
        code,
        e.is_permanent(),
        e.is_timeout(),
        &excerpt(&e.to_string(), 1024),
    )
}

impl Sender for EmailSender {
    fn destination(&self) -> Destination {
        Destination::Email
    }

    fn send<'a>(&'a self, job: &'a Job, throttle: &'a Throttle) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let message = match self.compose(job) {
                Ok(m) => m,
                Err(v) => return v,
            };
            throttle.ready().await;
            let transport = self
                .transport
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            // lettre's timeout bounds each connect, not a server that takes the message and
            // never answers: the attempt has its own deadline (a little over the connect's,
            // so lettre's own timeout reports first when it applies).
            let deadline = self.timeout + self.timeout / 2;
            let sent = match tokio::time::timeout(deadline, transport.send(message)).await {
                Ok(sent) => sent,
                Err(_) => {
                    if let Ok(fresh) = EmailSettings::transport(&self.url, self.timeout) {
                        *self
                            .transport
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                    }
                    return Verdict::Failed(classify(
                        None,
                        false,
                        true,
                        &format!(
                            "no answer from the SMTP server within {} s; it may have taken the message",
                            deadline.as_secs_f64()
                        ),
                    ));
                }
            };
            match sent {
                Ok(response) => {
                    let text: Vec<&str> = response.message().collect();
                    let queued = text
                        .iter()
                        .find_map(|l| l.split("queued as ").nth(1))
                        .map(|q| q.trim().to_owned());
                    Verdict::Sent {
                        external_ref: queued.or_else(|| Some(self.message_id(job.id, &job.key))),
                    }
                }
                Err(e) => Verdict::Failed(verdict_of(&e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::billing::{AccountFacts, CustomerFact};
    use paysync_domain::intent::{Intent, Notice};

    fn job(notice: Notice, account: Option<AccountFacts>) -> Job {
        Job {
            id: 42,
            operation: Operation::EmailReceipt,
            key: "email.receipt:receipt_email:stripe:pi_1".into(),
            provider: "stripe".into(),
            intent: Intent::ReceiptEmail,
            source_id: "pi_1".into(),
            attempt: 1,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            notice,
            account,
            due_at: None,
            app_body: None,
        }
    }

    fn settings() -> EmailSettings {
        EmailSettings::new(
            SecretString::from("smtp://user:hunter2@127.0.0.1:2525"),
            "Acme Billing <billing@acme.test>",
        )
    }

    #[test]
    fn the_recipient_is_the_events_address_else_the_accounts() {
        let account = AccountFacts {
            customers: vec![
                CustomerFact {
                    email: Some("old@acme.test".into()),
                    deleted: true,
                    ..CustomerFact::default()
                },
                CustomerFact {
                    email: Some("cur@acme.test".into()),
                    name: Some("Cur".into()),
                    ..CustomerFact::default()
                },
            ],
            ..AccountFacts::default()
        };
        let n = Notice {
            email: Some("paid@acme.test".into()),
            ..Notice::default()
        };
        assert_eq!(
            recipient(&job(n, Some(account.clone())))
                .map(|r| r.0)
                .as_deref(),
            Some("paid@acme.test")
        );
        assert_eq!(
            recipient(&job(Notice::default(), Some(account))),
            Some(("cur@acme.test".into(), Some("Cur".into())))
        );
        assert_eq!(recipient(&job(Notice::default(), None)), None);
    }

    // The SMTP pool needs a runtime to exist.
    #[tokio::test]
    async fn no_address_is_a_skip_and_the_message_id_is_stable() {
        let sender = EmailSender::new(&settings()).expect("sender");
        assert_eq!(
            sender.compose(&job(Notice::default(), None)).err(),
            Some(Verdict::Skip {
                reason: "no_recipient"
            })
        );
        let n = Notice {
            email: Some("a@acme.test".into()),
            amount: Some(1234),
            currency: Some("usd".into()),
            description: Some("Pro plan".into()),
            link: Some("https://invoice.example/i/1".into()),
            ..Notice::default()
        };
        let m = sender.compose(&job(n.clone(), None)).expect("message");
        let raw = String::from_utf8(m.formatted()).expect("utf-8");
        let again = String::from_utf8(sender.compose(&job(n, None)).expect("message").formatted())
            .expect("utf-8");
        let id = message_id(42, "email.receipt:receipt_email:stripe:pi_1", "acme.test");
        assert!(raw.contains(&format!("Message-ID: {id}")), "{raw}");
        assert!(again.contains(&format!("Message-ID: {id}")));
        assert_ne!(
            id,
            message_id(43, "email.receipt:receipt_email:stripe:pi_1", "acme.test")
        );
        assert!(
            raw.contains("Subject: Receipt for your payment of $12.34"),
            "{raw}"
        );
        assert!(raw.contains("Pro plan"));
    }

    // The SMTP pool needs a runtime to exist.
    #[tokio::test]
    async fn a_template_is_overridden_from_the_directory_and_html_is_escaped() {
        let dir = std::env::temp_dir().join(format!("paysync-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("receipt.subject.txt"), "Thanks! {{ amount }}").expect("write");
        let s = EmailSettings {
            templates_dir: Some(dir.clone()),
            ..settings()
        };
        let sender = EmailSender::new(&s).expect("sender");
        let n = Notice {
            email: Some("a@acme.test".into()),
            amount: Some(500),
            currency: Some("eur".into()),
            description: Some("<b>Pro</b>".into()),
            ..Notice::default()
        };
        let raw = String::from_utf8(sender.compose(&job(n, None)).expect("message").formatted())
            .expect("utf-8");
        assert!(
            raw.contains("Subject: Thanks! =?utf-8?") || raw.contains("Subject: Thanks!"),
            "{raw}"
        );
        // The HTML part escapes (quoted-printable may break the line after `&g`).
        assert!(raw.contains("for &lt;b&g"), "{raw}");
        assert!(!raw.contains("for <b>Pro</b>.</p>"), "{raw}");
        std::fs::write(dir.join("refund.txt"), "{% if %}").expect("write");
        let e = EmailSender::new(&s).expect_err("a broken template is refused");
        assert!(e.to_string().contains("refund.txt"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    // The SMTP pool needs a runtime to exist.
    #[tokio::test]
    async fn settings_never_show_the_password() {
        let s = settings();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("smtp://127.0.0.1:2525"),
            "{shown}"
        );
        let bad = EmailSettings::new(SecretString::from("smtq://u:hunter2@x"), "b@acme.test");
        let e = bad.validate().expect_err("bad URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let bad = EmailSettings::new(SecretString::from("smtp://x:25"), "not an address");
        assert!(matches!(bad.validate(), Err(EmailSettingsError::From(_))));
    }

    #[test]
    fn failures_are_classified_by_reply_code() {
        assert_eq!(
            classify(Some(550), true, false, "no such user").kind,
            FailureKind::Payload
        );
        assert_eq!(classify(Some(550), true, false, "").code, "550");
        assert_eq!(
            classify(Some(451), false, false, "try later").kind,
            FailureKind::Transient { ambiguous: false }
        );
        assert_eq!(
            classify(None, false, true, "timed out").kind,
            FailureKind::Transient { ambiguous: true }
        );
        assert_eq!(
            classify(None, false, false, "refused").kind,
            FailureKind::Transient { ambiguous: false }
        );
    }
}
