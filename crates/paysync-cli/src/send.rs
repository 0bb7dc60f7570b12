//! `paysync send`: our `stripe trigger`, for every provider. Signs a file's exact bytes the way
//! the provider does (Stripe: one `v1` per configured secret, as during a rotation; Square and
//! Authorize.Net: their HMACs; PayPal: RSA with the local test key, the certificate served by
//! `send` itself on a loopback port) and posts them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use paysync_domain::Provider;
use paysync_domain::stripe::signature::compute_v1;

use crate::config::{self, DEV_WEBHOOK_SECRET, Env};

/// Builds `t=<ts>,v1=<sig>[,v1=<sig>…]` over `body` with every secret.
pub fn stripe_header(secrets: &[String], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&compute_v1(secret, timestamp, body));
    }
    header
}

/// Where `send` serves its PayPal test certificate.
const CERT_PATH: &str = "/v1/notifications/certs/CERT-paysync-local";
/// The local test leaf and its key (fixtures/paypal-local: public test material, never trusted
/// outside a receiver told to trust the local test CA).
const LOCAL_LEAF: &[u8] = include_bytes!("../../../fixtures/paypal-local/leaf.pem");
const LOCAL_LEAF_KEY: &[u8] = include_bytes!("../../../fixtures/paypal-local/leaf.key.pem");

/// What `paysync send` was asked to do.
pub struct SendArgs {
    /// Which provider to sign as.
    pub provider: Provider,
    /// The event file.
    pub file: std::path::PathBuf,
    /// Where to post.
    pub url: Option<String>,
    /// The signing secret or key (HMAC providers).
    pub secret: Option<String>,
    /// Stripe's signature timestamp.
    pub timestamp: Option<i64>,
    /// Extra CA certificates (PEM) to trust for an https URL.
    pub ca_file: Option<std::path::PathBuf>,
}

pub async fn run(env: &Env<'_>, args: SendArgs) -> anyhow::Result<ExitCode> {
    let file: &Path = &args.file;
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let provider = args.provider;
    let url = match args.url {
        Some(u) => u,
        None => {
            let receiver = config::receiver(env, config::SecretPolicy::DevFallback)?;
            format!("http://{}/webhooks/{provider}", receiver.http_addr)
        }
    };
    let first_key = |var: &str, dev: &str| -> anyhow::Result<String> {
        Ok(match &args.secret {
            Some(s) => s.clone(),
            None => env
                .secret(var)?
                .and_then(|v| {
                    v.split([',', '\n'])
                        .map(str::trim)
                        .find(|k| !k.is_empty())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| dev.to_owned()),
        })
    };
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ca-file: cannot read {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|r| !r.is_empty())
            .with_context(|| format!("--ca-file: no PEM certificate in {}", path.display()))?;
        for root in roots {
            client = client.add_root_certificate(root);
        }
    }
    let client = client.build().context("building the HTTP client")?;
    let mut request = client.post(&url).header("content-type", "application/json");
    let mut cert_server = None;
    match provider {
        Provider::Stripe => {
            let secrets = match &args.secret {
                Some(s) => vec![s.clone()],
                None => config::stripe_secrets(env)?
                    .unwrap_or_else(|| vec![DEV_WEBHOOK_SECRET.to_owned()]),
            };
            let timestamp = args.timestamp.unwrap_or_else(|| now().unix_timestamp());
            request = request.header(
                "Stripe-Signature",
                stripe_header(&secrets, timestamp, &body),
            );
        }
        Provider::Square => {
            let key = first_key("PAYSYNC_SQUARE_SIGNATURE_KEY", config::dev::SQUARE_KEY)?;
            // Square signs the URL registered on the subscription, which is not always the
            // one posted to (a proxy in front).
            let signed_url = env
                .raw("PAYSYNC_SQUARE_NOTIFICATION_URL")
                .map_or_else(|| url.clone(), |u| u.trim().to_owned());
            request = request.header(
                paysync_domain::square::SIGNATURE_HEADER,
                paysync_domain::square::sign(&key, &signed_url, &body),
            );
        }
        Provider::AuthorizeNet => {
            let key = first_key(
                "PAYSYNC_AUTHORIZENET_SIGNATURE_KEY",
                config::dev::AUTHORIZENET_KEY,
            )?;
            request = request.header(
                paysync_domain::authorizenet::SIGNATURE_HEADER,
                paysync_domain::authorizenet::sign(&key, &body),
            );
        }
        Provider::Paypal => {
            use paysync_domain::paypal::headers;
            let webhook_id = env.raw("PAYSYNC_PAYPAL_WEBHOOK_ID").map_or_else(
                || config::dev::PAYPAL_WEBHOOK_ID.to_owned(),
                |v| v.trim().to_owned(),
            );
            let addr = config::dev::PAYPAL_CERT_HOST;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve the test certificate on {addr} (is another `paysync send` running?)")
            })?;
            let app =
                axum::Router::new().route(CERT_PATH, axum::routing::get(|| async { LOCAL_LEAF }));
            cert_server = Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ));
            let id = uuid::Uuid::new_v4().to_string();
            let time = now()
                .replace_nanosecond(0)
                .unwrap_or_else(|_| now())
                .format(&time::format_description::well_known::Rfc3339)?;
            let sig = paysync_domain::paypal::signature::sign_local(
                LOCAL_LEAF_KEY,
                &ring::rand::SystemRandom::new(),
                &id,
                &time,
                &webhook_id,
                &body,
            )?;
            request = request
                .header(headers::TRANSMISSION_ID, id)
                .header(headers::TRANSMISSION_TIME, time)
                .header(headers::TRANSMISSION_SIG, sig)
                .header(
                    headers::AUTH_ALGO,
                    paysync_domain::paypal::signature::AUTH_ALGO,
                )
                .header(headers::CERT_URL, format!("http://{addr}{CERT_PATH}"));
        }
    }
    let response = request.body(body).send().await.map_err(|e| {
        let chain = format!("{:#}", anyhow::Error::new(e));
        let hint = if chain.contains("UnknownIssuer") || chain.contains("certificate") {
            " (TLS: the server's certificate is not trusted; a private CA needs --ca-file)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot reach {url}{hint}: {chain}")
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if let Some(server) = cert_server {
        server.abort();
    }
    println!("{}", status.as_u16());
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use paysync_domain::stripe::signature::verify;

    #[test]
    fn header_carries_one_v1_per_secret_and_each_verifies() {
        let secrets = vec!["whsec_a".to_owned(), "whsec_b".to_owned()];
        let header = stripe_header(&secrets, 100, b"{}");
        assert_eq!(header.matches(",v1=").count(), 2);
        assert_eq!(verify(&["whsec_a"], &header, b"{}", 100, 300), Ok(100));
        assert_eq!(verify(&["whsec_b"], &header, b"{}", 100, 300), Ok(100));
    }
}
