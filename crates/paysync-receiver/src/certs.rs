//! PayPal's signing certificates: fetched from the allowed certificate URL, checked, cached.
//!
//! Rule of thumb: a certificate that cannot be fetched is our outage (503, PayPal retries);
//! one that was fetched but does not check out is the request's fault (400), and is not
//! cached. The cache is bounded and its entries are re-checked for validity on every use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paysync_domain::paypal::signature::{CertUrl, Certificate, MAX_CERT_BYTES};
use paysync_domain::verify::{Verifier, WebhookError};

/// Most certificates kept (PayPal rotates rarely; one or two are live at a time).
const MAX_ENTRIES: usize = 16;
/// How long a fetched certificate is used before it is fetched again.
const TTL: Duration = Duration::from_secs(6 * 3600);

/// Why no certificate could be had.
pub(crate) enum CertFailure {
    /// Not fetched (network, status, size): a 503.
    Unavailable(String),
    /// Fetched but refused: a 400 with the reason.
    Refused(WebhookError),
}

/// The certificate cache and the client that fills it.
pub(crate) struct CertCache {
    client: reqwest::Client,
    entries: Mutex<HashMap<String, (Arc<Certificate>, Instant)>>,
}

impl CertCache {
    pub(crate) fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            client,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The checked certificate at `url`, from the cache or fetched.
    pub(crate) async fn get(
        &self,
        verifier: &Verifier,
        url: &CertUrl,
        now: i64,
    ) -> Result<Arc<Certificate>, CertFailure> {
        if let Some(cert) = self.cached(url.as_str()) {
            return Ok(cert);
        }
        let pem = self
            .fetch(url.as_str())
            .await
            .map_err(CertFailure::Unavailable)?;
        let cert = Arc::new(
            verifier
                .certificate(&pem, now)
                .map_err(CertFailure::Refused)?,
        );
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            // Evict the oldest: bounded whatever URLs an attacker makes us try (only allowed
            // hosts get here, and only certificates that checked out are kept).
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(url.as_str().to_owned(), (cert.clone(), Instant::now()));
        Ok(cert)
    }

    fn cached(&self, url: &str) -> Option<Arc<Certificate>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(url)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(c, _)| c.clone())
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("certificate server answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_CERT_BYTES {
                return Err(format!("certificate larger than {MAX_CERT_BYTES} bytes"));
            }
        }
        Ok(body)
    }
}
