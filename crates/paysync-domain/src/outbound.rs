//! Where intents go: destinations, the operations they perform, and the routing table.
//!
//! A delivery is one operation at one destination, keyed by an idempotency key that is unique
//! per destination. Keys are built from the intent's source object, never from an event id,
//! so every event about one object converges on one delivery; intents about the account as a
//! whole (`account:<id>`) are keyed without the provider, so an account paying through two
//! providers is still welcomed once. The table is in `docs/outbox.md`.

use crate::Provider;
use crate::intent::Intent;

/// A third party deliveries go to (one account of it: an SMTP relay, a chat workspace's
/// webhook, a CRM portal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// Email over SMTP.
    Email,
    /// A Slack-compatible incoming webhook.
    Chat,
    /// HubSpot CRM v3.
    Hubspot,
    /// The business's own application: Standard Webhooks, signed.
    App,
}

impl Destination {
    /// Every destination.
    pub const ALL: [Destination; 4] = [
        Destination::Email,
        Destination::Chat,
        Destination::Hubspot,
        Destination::App,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Email => "email",
            Destination::Chat => "chat",
            Destination::Hubspot => "hubspot",
            Destination::App => "app",
        }
    }

    /// The destination stored as `name`, if any.
    pub fn parse(name: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Whether it is a CRM (takes [`Operation::CrmDeal`] and [`Operation::CrmTask`]).
    pub fn is_crm(self) -> bool {
        matches!(self, Destination::Hubspot)
    }

    /// Whether it keeps an account's order: a delivery is claimed only after the same
    /// account's earlier deliveries to it are done (sent, dead, skipped or expired).
    pub fn keeps_account_order(self) -> bool {
        matches!(self, Destination::App)
    }
}

/// What a delivery does at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Receipt and thank-you email.
    EmailReceipt,
    /// Payment-failed email with how to fix it.
    EmailPaymentFailed,
    /// Refund confirmation email.
    EmailRefund,
    /// Tell the team about a new customer (first successful payment).
    ChatNewCustomer,
    /// Tell the team a won account's payment failed.
    ChatPaymentFailed,
    /// Tell the team a dispute was opened, with its evidence deadline.
    ChatDisputeOpened,
    /// Tell the team a subscription churned.
    ChatChurn,
    /// Upsert the account's contact and deal, the deal in the stage the account is in now.
    CrmDeal,
    /// Create (upsert) a follow-up task.
    CrmTask,
    /// POST one event to the business's application.
    AppWebhook,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 10] = [
        Operation::EmailReceipt,
        Operation::EmailPaymentFailed,
        Operation::EmailRefund,
        Operation::ChatNewCustomer,
        Operation::ChatPaymentFailed,
        Operation::ChatDisputeOpened,
        Operation::ChatChurn,
        Operation::CrmDeal,
        Operation::CrmTask,
        Operation::AppWebhook,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::EmailReceipt => "email.receipt",
            Operation::EmailPaymentFailed => "email.payment_failed",
            Operation::EmailRefund => "email.refund",
            Operation::ChatNewCustomer => "chat.new_customer",
            Operation::ChatPaymentFailed => "chat.payment_failed",
            Operation::ChatDisputeOpened => "chat.dispute_opened",
            Operation::ChatChurn => "chat.churn",
            Operation::CrmDeal => "crm.deal",
            Operation::CrmTask => "crm.task",
            Operation::AppWebhook => "app.webhook",
        }
    }

    /// The operation stored as `name`, if any.
    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// Whether `destination` performs it.
    pub fn goes_to(self, destination: Destination) -> bool {
        match self {
            Operation::EmailReceipt | Operation::EmailPaymentFailed | Operation::EmailRefund => {
                destination == Destination::Email
            }
            Operation::ChatNewCustomer
            | Operation::ChatPaymentFailed
            | Operation::ChatDisputeOpened
            | Operation::ChatChurn => destination == Destination::Chat,
            Operation::CrmDeal | Operation::CrmTask => destination.is_crm(),
            Operation::AppWebhook => destination == Destination::App,
        }
    }
}

/// One delivery an intent calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where.
    pub destination: Destination,
    /// What.
    pub operation: Operation,
    /// Unique per destination: a second intent with the same key is the same delivery.
    pub key: String,
}

/// The operations `intent` calls for, at any destination that performs them.
pub fn operations(intent: Intent) -> &'static [Operation] {
    match intent {
        Intent::ReceiptEmail => &[Operation::EmailReceipt],
        Intent::PaymentFailedEmail => &[Operation::EmailPaymentFailed],
        Intent::RefundConfirmationEmail => &[Operation::EmailRefund],
        Intent::Welcome => &[Operation::ChatNewCustomer, Operation::CrmDeal],
        Intent::PaymentFailedFollowup => &[Operation::ChatPaymentFailed, Operation::CrmTask],
        Intent::TrialEnding => &[Operation::CrmTask],
        Intent::Churn => &[Operation::ChatChurn, Operation::CrmDeal],
        Intent::DisputeResponse => &[Operation::ChatDisputeOpened, Operation::CrmTask],
        Intent::AppEvent => &[Operation::AppWebhook],
    }
}

/// The deliveries of the intent `intent` about `source_id`, recorded from an event of
/// `provider`, one per destination that performs each operation (whether a destination is
/// configured is decided where the rows are written).
pub fn routes(provider: Provider, intent: Intent, source_id: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for &operation in operations(intent) {
        let key = if intent == Intent::AppEvent {
            // The event id is already unique across providers and accounts.
            format!("{}:{source_id}", operation.as_str())
        } else if source_id.starts_with("account:") {
            format!("{}:{}:{source_id}", operation.as_str(), intent.as_str())
        } else {
            format!(
                "{}:{}:{}:{source_id}",
                operation.as_str(),
                intent.as_str(),
                provider.as_str()
            )
        };
        for destination in Destination::ALL {
            if operation.goes_to(destination) {
                out.push(Route {
                    destination,
                    operation,
                    key: key.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Destination::ALL {
            assert_eq!(Destination::parse(d.as_str()), Some(d));
        }
        for o in Operation::ALL {
            assert_eq!(Operation::parse(o.as_str()), Some(o));
        }
        assert_eq!(Destination::parse("smtp"), None);
        assert_eq!(Operation::parse("email"), None);
    }

    #[test]
    fn every_operation_has_exactly_one_destination_today() {
        for o in Operation::ALL {
            let n = Destination::ALL.iter().filter(|d| o.goes_to(**d)).count();
            assert_eq!(n, 1, "{}", o.as_str());
        }
    }

    #[test]
    fn every_intent_is_routed_and_every_operation_is_used() {
        let mut used: Vec<Operation> = Vec::new();
        for i in Intent::ALL {
            let r = routes(Provider::Stripe, i, "obj_1");
            assert!(!r.is_empty(), "{}", i.as_str());
            used.extend(r.iter().map(|r| r.operation));
        }
        for o in Operation::ALL {
            assert!(used.contains(&o), "{} is never routed", o.as_str());
        }
    }

    #[test]
    fn keys_are_per_source_and_account_keys_ignore_the_provider() {
        let r = routes(Provider::Stripe, Intent::ReceiptEmail, "pi_1");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].destination, Destination::Email);
        assert_eq!(r[0].key, "email.receipt:receipt_email:stripe:pi_1");
        let w = routes(Provider::Stripe, Intent::Welcome, "account:7");
        let keys: Vec<_> = w.iter().map(|r| (r.destination, r.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (Destination::Chat, "chat.new_customer:welcome:account:7"),
                (Destination::Hubspot, "crm.deal:welcome:account:7"),
            ]
        );
        // A churn moves the deal too, under its own key: the deal upsert reads the account's
        // stage when it is sent, so both converge whatever their order.
        let c = routes(Provider::Stripe, Intent::Churn, "sub_1");
        assert!(
            c.iter()
                .any(|r| r.key == "crm.deal:churn:stripe:sub_1" && r.destination.is_crm())
        );
    }

    #[test]
    fn one_source_gives_distinct_keys_per_destination() {
        for i in Intent::ALL {
            let r = routes(Provider::Stripe, i, "x_1");
            let mut pairs: Vec<_> = r.iter().map(|r| (r.destination, r.key.clone())).collect();
            pairs.sort();
            pairs.dedup();
            assert_eq!(pairs.len(), r.len());
        }
    }
}
