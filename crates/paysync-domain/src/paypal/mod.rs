//! PayPal webhooks: the offline signature check and the event envelope.
//!
//! A delivery is checked in two steps because its certificate lives elsewhere:
//! [`PaypalVerifier::cert_url`] says which certificate to fetch (after the algorithm and URL
//! policy hold), the receiver fetches and caches it, [`PaypalVerifier::certificate`] checks
//! the chain and [`PaypalVerifier::verify`] the delivery against it. Nothing here does IO.

pub mod envelope;
pub mod signature;

use bytes::Bytes;

use crate::timestamp::parse_rfc3339_ms;
use crate::webhook::{Mode, Provider, VerifiedWebhook};
use signature::{
    CertError, CertUrl, CertUrlError, Certificate, PaypalEnv, SignatureError, Transmission,
    TrustStore,
};

/// Header names of a PayPal delivery.
pub mod headers {
    /// The delivery attempt's id.
    pub const TRANSMISSION_ID: &str = "PAYPAL-TRANSMISSION-ID";
    /// When the attempt was sent (signed verbatim).
    pub const TRANSMISSION_TIME: &str = "PAYPAL-TRANSMISSION-TIME";
    /// The base64 RSA signature.
    pub const TRANSMISSION_SIG: &str = "PAYPAL-TRANSMISSION-SIG";
    /// Where the signing certificate is served.
    pub const CERT_URL: &str = "PAYPAL-CERT-URL";
    /// The signature algorithm (pinned to `SHA256withRSA`).
    pub const AUTH_ALGO: &str = "PAYPAL-AUTH-ALGO";
}

/// Why a PayPal webhook was refused. Each maps to a 400 with its `Display` text, except
/// [`PaypalWebhookError::CertUnavailable`] (a 503, so PayPal retries).
#[derive(Debug, thiserror::Error)]
pub enum PaypalWebhookError {
    /// A signature header is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The certificate URL may not be fetched.
    #[error(transparent)]
    CertUrl(#[from] CertUrlError),
    /// The certificate does not chain, has expired or names no PayPal host.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// The certificate could not be fetched (the receiver's verdict, not this module's).
    #[error("the signing certificate could not be fetched; retry later")]
    CertUnavailable,
    /// The algorithm, the signature encoding or the signature itself is wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The transmission time is outside the configured tolerance (or does not parse).
    #[error("PAYPAL-TRANSMISSION-TIME outside the tolerance ({tolerance_secs} s)")]
    StaleTransmission {
        /// The configured tolerance.
        tolerance_secs: i64,
    },
    /// The body is not a PayPal event envelope.
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    /// The certificate is of the other environment than the endpoint's mode.
    #[error(
        "event is signed by PayPal's {got} environment but this endpoint accepts {expected} mode only"
    )]
    WrongMode {
        /// The configured mode.
        expected: Mode,
        /// The certificate's environment.
        got: &'static str,
    },
}

impl PaypalWebhookError {
    /// A closed label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::CertUrl(_) => "bad_cert_url",
            Self::Certificate(CertError::Expired { .. } | CertError::NotYetValid { .. }) => {
                "cert_expired"
            }
            Self::Certificate(_) => "bad_certificate",
            Self::CertUnavailable => "unavailable",
            Self::Signature(SignatureError::BadAlgorithm) => "bad_algorithm",
            Self::Signature(SignatureError::Certificate(_)) => "cert_expired",
            Self::Signature(_) => "bad_signature",
            Self::StaleTransmission { .. } => "stale_timestamp",
            Self::Envelope(_) => "malformed",
            Self::WrongMode { .. } => "wrong_mode",
        }
    }
}

/// Verifies PayPal webhooks for one webhook: our webhook id (never the request's), the hosts
/// certificates may come from, the trusted roots, the mode and the optional tolerance.
#[derive(Debug, Clone)]
pub struct PaypalVerifier {
    webhook_id: String,
    cert_hosts: Vec<String>,
    trust: TrustStore,
    mode: Mode,
    tolerance_secs: i64,
}

impl PaypalVerifier {
    /// A verifier for `webhook_id`. `tolerance_secs` 0 turns the transmission-time check off.
    pub fn new(
        webhook_id: impl Into<String>,
        cert_hosts: Vec<String>,
        trust: TrustStore,
        mode: Mode,
        tolerance_secs: i64,
    ) -> Self {
        Self {
            webhook_id: webhook_id.into(),
            cert_hosts,
            trust,
            mode,
            tolerance_secs,
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The certificate to fetch for a delivery with these headers: every signature header is
    /// present, the algorithm is `SHA256withRSA`, and the URL is allowed.
    pub fn cert_url<'h>(
        &self,
        header: &dyn Fn(&str) -> Option<&'h str>,
    ) -> Result<CertUrl, PaypalWebhookError> {
        let t = transmission(header)?;
        if t.auth_algo != signature::AUTH_ALGO {
            return Err(SignatureError::BadAlgorithm.into());
        }
        let url = header(headers::CERT_URL)
            .ok_or(PaypalWebhookError::MissingHeader(headers::CERT_URL))?;
        Ok(signature::check_cert_url(url, &self.cert_hosts)?)
    }

    /// Checks a fetched certificate: it chains to a trusted root at `now` and names a PayPal
    /// message-verification host.
    pub fn certificate(&self, pem: &[u8], now: i64) -> Result<Certificate, PaypalWebhookError> {
        Ok(Certificate::parse_and_check(pem, &self.trust, now)?)
    }

    /// Checks a delivery against its certificate: the environment, the transmission time
    /// (when a tolerance is set), the signature, then the envelope.
    pub fn verify<'h>(
        &self,
        header: &dyn Fn(&str) -> Option<&'h str>,
        cert: &Certificate,
        body: Bytes,
        now: i64,
        received_at_ms: i64,
    ) -> Result<VerifiedWebhook, PaypalWebhookError> {
        let t = transmission(header)?;
        let expected_env = match self.mode {
            Mode::Live => PaypalEnv::Live,
            Mode::Test => PaypalEnv::Sandbox,
        };
        if cert.env() != expected_env {
            return Err(PaypalWebhookError::WrongMode {
                expected: self.mode,
                got: cert.env().as_str(),
            });
        }
        if self.tolerance_secs > 0 {
            let fresh = parse_rfc3339_ms(t.time)
                .is_some_and(|ms| (now - ms.div_euclid(1000)).abs() <= self.tolerance_secs);
            if !fresh {
                return Err(PaypalWebhookError::StaleTransmission {
                    tolerance_secs: self.tolerance_secs,
                });
            }
        }
        signature::verify(cert, &t, &self.webhook_id, &body, now)?;
        let envelope = envelope::parse_envelope(&body)?;
        Ok(VerifiedWebhook::new(
            envelope.into_meta(Provider::Paypal, self.mode, received_at_ms),
            body,
        ))
    }
}

fn transmission<'h>(
    header: &dyn Fn(&str) -> Option<&'h str>,
) -> Result<Transmission<'h>, PaypalWebhookError> {
    let get = |name: &'static str| header(name).ok_or(PaypalWebhookError::MissingHeader(name));
    Ok(Transmission {
        id: get(headers::TRANSMISSION_ID)?,
        time: get(headers::TRANSMISSION_TIME)?,
        sig_b64: get(headers::TRANSMISSION_SIG)?,
        auth_algo: get(headers::AUTH_ALGO)?,
    })
}
