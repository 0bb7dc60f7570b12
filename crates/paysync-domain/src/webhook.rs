//! What a webhook is once it has been proven genuine, and the metadata that travels with it.
//!
//! Rule of thumb: a [`VerifiedWebhook`] can only be made by a provider verifier in this crate,
//! so an unverified body cannot reach the queue by construction.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// A payment provider we take webhooks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Stripe.
    Stripe,
    /// Square.
    Square,
    /// Authorize.Net.
    AuthorizeNet,
    /// PayPal.
    Paypal,
}

impl Provider {
    /// Every provider, in the order they are listed to people.
    pub const ALL: [Provider; 4] = [Self::Stripe, Self::Square, Self::AuthorizeNet, Self::Paypal];

    /// The lowercase name used in URLs, routing keys, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Square => "square",
            Self::AuthorizeNet => "authorizenet",
            Self::Paypal => "paypal",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProvider(s.chars().take(40).collect()))
    }
}

/// A provider name we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}`")]
pub struct UnknownProvider(pub String);

/// Test or live mode. An endpoint takes events of one mode only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Test mode (Stripe `livemode: false`; the providers' sandboxes).
    Test,
    /// Live mode (Stripe `livemode: true`; the providers' production).
    Live,
}

impl Mode {
    /// The mode of an event with this `livemode` flag.
    pub fn from_livemode(livemode: bool) -> Self {
        if livemode { Self::Live } else { Self::Test }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Test => "test",
            Self::Live => "live",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "test" => Ok(Self::Test),
            "live" => Ok(Self::Live),
            other => Err(format!("expected `test` or `live`, got `{other}`")),
        }
    }
}

/// The metadata of an event: what routing, deduplication and the event log need. The
/// receiver's verifier reads it from the envelope; the worker reads it again from the body
/// ([`crate::message::read_message`], message format 2), taking only the event id, the routing
/// key and the receive time from the message's properties and headers. (Format 1, still read,
/// carried every field in headers.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// Who sent it.
    pub provider: Provider,
    /// The provider's event id: the dedupe key together with the provider.
    pub event_id: String,
    /// The provider's event type, e.g. `invoice.paid`.
    pub event_type: String,
    /// The provider's creation time of the event, unix seconds (0 when the provider's
    /// timestamp does not parse: PayPal's simulator sends impossible dates).
    pub created: i64,
    /// Live or test mode: the event's own flag (Stripe), else the mode of the endpoint that
    /// verified it.
    pub livemode: bool,
    /// The provider API version that rendered the payload, when known.
    pub api_version: Option<String>,
    /// When our receiver accepted it, unix milliseconds.
    pub received_at_ms: i64,
}

impl EventMeta {
    /// The routing key for this event: `<provider>.<event type>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.provider, self.event_type)
    }
}

/// The fields of an event envelope that routing, dedupe and the event log need, whatever the
/// provider. Each provider's parser fills it from its own envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The provider's event id, the dedupe key (Stripe `evt_…`, Square `event_id`,
    /// Authorize.Net `notificationId` in lowercase, PayPal `WH-…`).
    pub id: String,
    /// The event type, e.g. `invoice.paid`.
    pub event_type: String,
    /// Unix seconds (0 when the provider's timestamp does not parse).
    pub created: i64,
    /// The event's own mode flag; only Stripe has one.
    pub livemode: Option<bool>,
    /// The API version that rendered the payload, when the envelope names one.
    pub api_version: Option<String>,
}

impl Envelope {
    /// The event's metadata, stamped with the time our receiver accepted it. `mode` is the
    /// mode of the endpoint, which holds for providers whose events carry none.
    pub fn into_meta(self, provider: Provider, mode: Mode, received_at_ms: i64) -> EventMeta {
        EventMeta {
            provider,
            event_id: self.id,
            event_type: self.event_type,
            created: self.created,
            livemode: self.livemode.unwrap_or(mode == Mode::Live),
            api_version: self.api_version,
            received_at_ms,
        }
    }
}

/// A webhook whose signature, timestamp, envelope and mode have been checked. Only the
/// provider verifiers in this crate construct it.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    meta: EventMeta,
    body: Bytes,
}

impl VerifiedWebhook {
    pub(crate) fn new(meta: EventMeta, body: Bytes) -> Self {
        Self { meta, body }
    }

    /// The event's metadata.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The raw body exactly as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_and_mode_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
        }
        assert!("Stripe".parse::<Provider>().is_err());
        assert!("authorize.net".parse::<Provider>().is_err());
        for mode in [Mode::Test, Mode::Live] {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert!("prod".parse::<Mode>().is_err());
    }
}
