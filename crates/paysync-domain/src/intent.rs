//! What an event asks of the world after its state is written: a closed set of intents.
//!
//! An intent is recorded in the event's transaction, once per provider, kind and source object
//! (so a redelivery or a second event about the same object cannot duplicate it). Two
//! channels: **messages** (the `outbox` table: emails about a payment) and **follow-ups** (the
//! `tasks` table: what the CRM and the team should act on). Where each intent is delivered is
//! [`crate::outbound::routes`].

use serde::{Deserialize, Serialize};

/// Where an intent is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// A follow-up (`tasks`).
    Task,
    /// A message about a payment (`outbox`).
    Outbox,
    /// An event for the business's own application (`app_events`), made from the account's
    /// projection after the writes, never by a mapper ([`crate::app`]).
    App,
}

/// Every intent an event can record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Intent {
    /// A payment succeeded: receipt and thank-you email. Source: the payment.
    ReceiptEmail,
    /// A payment failed: an email on how to fix it. Source: the invoice, else the payment.
    PaymentFailedEmail,
    /// A refund succeeded: confirmation email. Source: the refund.
    RefundConfirmationEmail,
    /// The account's first successful payment. Source: `account:<id>`.
    Welcome,
    /// A payment failed: follow up. Source: the invoice, payment or subscription.
    PaymentFailedFollowup,
    /// A trial ends soon. Source: the subscription; due: the trial end.
    TrialEnding,
    /// A subscription was cancelled. Source: the subscription.
    Churn,
    /// A dispute was opened: respond before the evidence deadline. Source: the dispute.
    DisputeResponse,
    /// Tell the business's application about a change of the account. Source: the event's id
    /// (`evt_ps_<account>_<sequence>`).
    AppEvent,
}

impl Intent {
    /// Every intent, in a fixed order.
    pub const ALL: [Intent; 9] = [
        Intent::ReceiptEmail,
        Intent::PaymentFailedEmail,
        Intent::RefundConfirmationEmail,
        Intent::Welcome,
        Intent::PaymentFailedFollowup,
        Intent::TrialEnding,
        Intent::Churn,
        Intent::DisputeResponse,
        Intent::AppEvent,
    ];

    /// The stored name (the `kind` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::ReceiptEmail => "receipt_email",
            Intent::PaymentFailedEmail => "payment_failed_email",
            Intent::RefundConfirmationEmail => "refund_confirmation_email",
            Intent::Welcome => "welcome",
            Intent::PaymentFailedFollowup => "payment_failed_followup",
            Intent::TrialEnding => "trial_ending",
            Intent::Churn => "churn",
            Intent::DisputeResponse => "dispute_response",
            Intent::AppEvent => "app_event",
        }
    }

    /// The intent stored as `name`, if any.
    pub fn parse(name: &str) -> Option<Intent> {
        Intent::ALL.into_iter().find(|i| i.as_str() == name)
    }

    /// Where it is recorded.
    pub fn channel(self) -> Channel {
        match self {
            Intent::ReceiptEmail | Intent::PaymentFailedEmail | Intent::RefundConfirmationEmail => {
                Channel::Outbox
            }
            Intent::AppEvent => Channel::App,
            _ => Channel::Task,
        }
    }
}

/// What a message needs that the state tables do not keep: the event's own view of the
/// payment, taken when the intent is recorded (a receipt shows what was paid then). Empty
/// fields are left out of the stored JSON, so a later event about the same object can fill
/// them in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The address the event carried (invoice `customer_email`, checkout
    /// `customer_details.email`, payment `receipt_email`, charge `billing_details.email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The customer's name as the event carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Amount in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Lowercase ISO 4217 currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// What was bought (invoice line or payment description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The provider's hosted invoice, receipt or payment-update page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Notice {
    /// Fills every field `self` lacks from `other`.
    pub fn fill(&mut self, other: &Notice) {
        fn take<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
            if a.is_none() {
                a.clone_from(b);
            }
        }
        take(&mut self.email, &other.email);
        take(&mut self.name, &other.name);
        take(&mut self.amount, &other.amount);
        take(&mut self.currency, &other.currency);
        take(&mut self.description, &other.description);
        take(&mut self.link, &other.link);
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        *self == Notice::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for i in Intent::ALL {
            assert_eq!(Intent::parse(i.as_str()), Some(i));
        }
        let mut names: Vec<_> = Intent::ALL.iter().map(|i| i.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Intent::ALL.len());
        assert_eq!(Intent::parse("new_customer_notification"), None);
    }

    #[test]
    fn emails_are_messages_and_the_rest_follow_ups() {
        let outbox: Vec<_> = Intent::ALL
            .into_iter()
            .filter(|i| i.channel() == Channel::Outbox)
            .collect();
        assert_eq!(
            outbox,
            [
                Intent::ReceiptEmail,
                Intent::PaymentFailedEmail,
                Intent::RefundConfirmationEmail
            ]
        );
    }

    #[test]
    fn fill_keeps_what_is_known_and_adds_what_is_not() {
        let mut a = Notice {
            email: Some("a@example.com".into()),
            amount: Some(500),
            ..Notice::default()
        };
        let b = Notice {
            email: Some("b@example.com".into()),
            link: Some("https://invoice.example/1".into()),
            ..Notice::default()
        };
        a.fill(&b);
        assert_eq!(a.email.as_deref(), Some("a@example.com"));
        assert_eq!(a.link.as_deref(), Some("https://invoice.example/1"));
        assert_eq!(a.amount, Some(500));
        assert!(!a.is_empty());
        assert!(Notice::default().is_empty());
        assert_eq!(
            serde_json::to_string(&Notice::default()).expect("encode"),
            "{}"
        );
    }
}
