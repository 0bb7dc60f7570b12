//! `paysync send`: our `stripe trigger`. Signs a file's exact bytes like Stripe (one `v1` per
//! configured secret, as Stripe does during a rotation) and posts them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
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

pub async fn run(
    env: &Env<'_>,
    file: &Path,
    url: Option<String>,
    secret: Option<String>,
    timestamp: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let secrets = match secret {
        Some(s) => vec![s],
        None => config::stripe_secrets(env)?.unwrap_or_else(|| vec![DEV_WEBHOOK_SECRET.to_owned()]),
    };
    let url = match url {
        Some(u) => u,
        None => {
            let receiver = config::receiver(env, config::SecretPolicy::DevFallback)?;
            format!("http://{}/webhooks/stripe", receiver.http_addr)
        }
    };
    let timestamp = timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    });
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header(
            "Stripe-Signature",
            stripe_header(&secrets, timestamp, &body),
        )
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
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
