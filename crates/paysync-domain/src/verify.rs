//! The provider seam of the receiver: one verifier per provider behind one interface.
//!
//! Rule of thumb: verification is a pure function of the request, the configuration and the
//! time. Whatever a provider's check needs from the network (PayPal's certificate) is fetched
//! by the receiver and passed in.

use bytes::Bytes;

use crate::authorizenet::{AuthorizeNetVerifier, AuthorizeNetWebhookError};
use crate::paypal::signature::{CertUrl, Certificate};
use crate::paypal::{PaypalVerifier, PaypalWebhookError};
use crate::square::{SquareVerifier, SquareWebhookError};
use crate::stripe::{StripeVerifier, StripeWebhookError};
use crate::webhook::{Mode, Provider, VerifiedWebhook};

/// Whether `given` equals the MAC `mac` computes under any non-empty key of `keys`. Every key
/// is tried and each comparison takes constant time, so neither the time nor the result says
/// which key matched or how much of a guess was right.
pub(crate) fn any_key_matches<K: AsRef<str>, const N: usize>(
    keys: &[K],
    given: &[u8],
    mac: impl Fn(&str) -> [u8; N],
) -> bool {
    use subtle::ConstantTimeEq as _;
    let mut matched = subtle::Choice::from(0);
    for key in keys.iter().filter(|k| !k.as_ref().is_empty()) {
        matched |= mac(key.as_ref()).ct_eq(given);
    }
    bool::from(matched)
}

/// A request as a verifier sees it.
pub struct Inbound<'a> {
    /// Looks up a request header by name, case-insensitively.
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    /// The body, exactly as received.
    pub body: Bytes,
    /// The current time, unix seconds.
    pub now: i64,
    /// The receive time to stamp on the event, unix milliseconds.
    pub received_at_ms: i64,
}

/// The verifier of one configured provider endpoint.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// Stripe.
    Stripe(StripeVerifier),
    /// Square.
    Square(SquareVerifier),
    /// Authorize.Net.
    AuthorizeNet(AuthorizeNetVerifier),
    /// PayPal.
    Paypal(PaypalVerifier),
}

/// Why a webhook was refused: a 400 with the `Display` text as its one-line body.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A Stripe refusal.
    #[error(transparent)]
    Stripe(#[from] StripeWebhookError),
    /// A Square refusal.
    #[error(transparent)]
    Square(#[from] SquareWebhookError),
    /// An Authorize.Net refusal.
    #[error(transparent)]
    AuthorizeNet(#[from] AuthorizeNetWebhookError),
    /// A PayPal refusal.
    #[error(transparent)]
    Paypal(#[from] PaypalWebhookError),
}

impl WebhookError {
    /// A closed label for metrics (`paysync_webhooks_received_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Stripe(e) => e.outcome(),
            Self::Square(e) => e.outcome(),
            Self::AuthorizeNet(e) => e.outcome(),
            Self::Paypal(e) => e.outcome(),
        }
    }

    /// Whether the refusal is our outage rather than the request's fault (503, not 400).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::Paypal(PaypalWebhookError::CertUnavailable))
    }
}

impl Verifier {
    /// The provider it verifies.
    pub fn provider(&self) -> Provider {
        match self {
            Self::Stripe(_) => Provider::Stripe,
            Self::Square(_) => Provider::Square,
            Self::AuthorizeNet(_) => Provider::AuthorizeNet,
            Self::Paypal(_) => Provider::Paypal,
        }
    }

    /// The mode its endpoint accepts.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Stripe(v) => v.mode(),
            Self::Square(v) => v.mode(),
            Self::AuthorizeNet(v) => v.mode(),
            Self::Paypal(v) => v.mode(),
        }
    }

    /// The certificate the request's signature must be checked with, for providers that
    /// sign with one (PayPal); `None` for the others. The receiver fetches it and hands the
    /// checked [`Certificate`] to [`Verifier::verify`].
    pub fn cert_url(&self, inbound: &Inbound<'_>) -> Option<Result<CertUrl, WebhookError>> {
        match self {
            Self::Paypal(v) => Some(v.cert_url(inbound.header).map_err(WebhookError::from)),
            _ => None,
        }
    }

    /// Checks fetched certificate bytes (PayPal); other providers have none to check.
    pub fn certificate(&self, pem: &[u8], now: i64) -> Result<Certificate, WebhookError> {
        match self {
            Self::Paypal(v) => Ok(v.certificate(pem, now)?),
            _ => Err(PaypalWebhookError::CertUnavailable.into()),
        }
    }

    /// Checks `inbound`: signature first, then the envelope, then the mode. `cert` is the
    /// checked certificate for providers that need one ([`Verifier::cert_url`]).
    pub fn verify(
        &self,
        inbound: Inbound<'_>,
        cert: Option<&Certificate>,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let header = inbound.header;
        Ok(match self {
            Self::Stripe(v) => v.verify(
                header(crate::stripe::SIGNATURE_HEADER),
                inbound.body,
                inbound.now,
                inbound.received_at_ms,
            )?,
            Self::Square(v) => v.verify(
                header(crate::square::SIGNATURE_HEADER),
                inbound.body,
                inbound.received_at_ms,
            )?,
            Self::AuthorizeNet(v) => v.verify(
                header(crate::authorizenet::SIGNATURE_HEADER),
                inbound.body,
                inbound.received_at_ms,
            )?,
            Self::Paypal(v) => v.verify(
                header,
                cert.ok_or(PaypalWebhookError::CertUnavailable)?,
                inbound.body,
                inbound.now,
                inbound.received_at_ms,
            )?,
        })
    }
}
