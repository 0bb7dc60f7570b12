//! PayPal's webhook signature, checked offline as PayPal's Java, Python and Ruby SDKs do it, but
//! with the holes they leave closed: the algorithm is pinned and the certificate URL is policed.
//!
//! A delivery carries `PAYPAL-TRANSMISSION-ID`, `PAYPAL-TRANSMISSION-TIME`,
//! `PAYPAL-TRANSMISSION-SIG`, `PAYPAL-AUTH-ALGO` and `PAYPAL-CERT-URL`. The signed string is
//! `transmission_id|transmission_time|webhook_id|crc32`, where `webhook_id` is ours (from the
//! configuration, never from the request) and `crc32` is the zlib CRC-32 of the raw body bytes
//! as an unsigned decimal. The signature is base64 RSASSA-PKCS1-v1_5 with SHA-256 under the key
//! of the leaf certificate served at the cert URL. That URL serves only the leaf, so the leaf is
//! chained here through the bundled intermediate "DigiCert SHA2 Extended Validation Server CA"
//! to the bundled root "DigiCert High Assurance EV Root CA" (the pair PayPal's SDKs bundle), and
//! it must name `messageverificationcerts.paypal.com` (live) or
//! `messageverificationcerts.sandbox.paypal.com` (sandbox).
//!
//! Rule of thumb: pure functions of (certificate bytes, headers, webhook id, raw body, `now`).
//! Fetching and caching the certificate, and any tolerance on the transmission time, belong to
//! the caller; [`check_cert_url`] says which URL may be fetched at all.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_cert::der::{Decode as _, Tag, Tagged as _};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::spki::ObjectIdentifier;

/// The only `PAYPAL-AUTH-ALGO` accepted, compared exactly. PayPal's Java SDK hands the header to
/// `Signature.getInstance`, which lets a sender pick a weaker algorithm; we do not.
pub const AUTH_ALGO: &str = "SHA256withRSA";

/// The certificate name of PayPal's live message-verification certificate.
pub const LIVE_CERT_NAME: &str = "messageverificationcerts.paypal.com";

/// The certificate name of PayPal's sandbox message-verification certificate.
pub const SANDBOX_CERT_NAME: &str = "messageverificationcerts.sandbox.paypal.com";

/// The hosts a `PAYPAL-CERT-URL` may point at unless configured otherwise.
pub const DEFAULT_CERT_URL_HOSTS: [&str; 2] = ["api.paypal.com", "api.sandbox.paypal.com"];

/// The path every accepted `PAYPAL-CERT-URL` starts with; the certificate id follows.
pub const CERT_URL_PATH_PREFIX: &str = "/v1/notifications/certs/";

/// Longest `PAYPAL-CERT-URL` accepted. PayPal's are about 90 characters.
pub const MAX_CERT_URL_LEN: usize = 512;

/// Longest certificate id (the last path segment of the cert URL) accepted. PayPal's are 31
/// characters (`CERT-360caa42-fca2a594-1a5f47cb`).
const MAX_CERT_ID_LEN: usize = 128;

/// Largest certificate document (PEM or DER) parsed. PayPal's leaf is about 2.6 KB of PEM; a
/// fetcher should cap the download at this size too.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// Most certificates read from one served PEM document (the leaf plus any chain PayPal might
/// start to send along).
const MAX_SERVED_CERTS: usize = 4;

/// Longest base64 signature accepted: an 8192-bit RSA signature (1024 bytes) in base64.
const MAX_SIGNATURE_B64_LEN: usize = 1368;

/// DigiCert High Assurance EV Root CA (2006-11-10..2031-11-10), as bundled by PayPal-Python-SDK;
/// SHA-256 fingerprint 74:31:E5:F4:…:B1:18:CF.
const DIGICERT_ROOT_PEM: &str = include_str!("digicert-high-assurance-ev-root-ca.pem");

/// DigiCert SHA2 Extended Validation Server CA (2013-10-22..2028-10-22), the issuer of every
/// recorded PayPal message-verification leaf; SHA-256 fingerprint 40:3E:06:2A:…:7F:EF:1A.
const DIGICERT_INTERMEDIATE_PEM: &str =
    include_str!("digicert-sha2-extended-validation-server-ca.pem");

/// `id-at-commonName`.
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// `rsaEncryption`: the only leaf key type PayPal signs with.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Signature algorithms accepted on the certificates of the chain (not on the webhook, which is
/// pinned to RSA PKCS#1 v1.5 SHA-256).
static CHAIN_SIG_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

/// Which PayPal environment a message-verification certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaypalEnv {
    /// `messageverificationcerts.paypal.com`.
    Live,
    /// `messageverificationcerts.sandbox.paypal.com`.
    Sandbox,
}

impl PaypalEnv {
    /// A short stable name: `live` or `sandbox`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaypalEnv::Live => "live",
            PaypalEnv::Sandbox => "sandbox",
        }
    }

    fn from_cert_name(name: &str) -> Option<Self> {
        match name {
            LIVE_CERT_NAME => Some(PaypalEnv::Live),
            SANDBOX_CERT_NAME => Some(PaypalEnv::Sandbox),
            _ => None,
        }
    }
}

/// Why a certificate (or a trust root) was refused. The messages are one line and never carry
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Not a PEM or DER X.509 certificate, too large, or a trust root webpki cannot use.
    #[error("the certificate is not a well-formed X.509 certificate")]
    Malformed,
    /// The leaf's key is not an RSA key.
    #[error("the certificate's key is not an RSA key")]
    KeyType,
    /// `now` is after the certificate's `notAfter`.
    #[error("the certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// The certificate's `notAfter`, unix seconds.
        not_after: i64,
    },
    /// `now` is before the certificate's `notBefore`.
    #[error("the certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// The certificate's `notBefore`, unix seconds.
        not_before: i64,
    },
    /// No path from the leaf to a trusted root at `now`.
    #[error("the certificate does not chain to a trusted root")]
    Untrusted(#[source] webpki::Error),
    /// Neither the CN nor a SAN is a PayPal message-verification name, or both environments are
    /// named.
    #[error("the certificate does not name a PayPal message-verification host")]
    Host,
}

impl CertError {
    /// A short stable label for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CertError::Malformed => "cert_malformed",
            CertError::KeyType => "cert_key_type",
            CertError::Expired { .. } => "cert_expired",
            CertError::NotYetValid { .. } => "cert_not_yet_valid",
            CertError::Untrusted(_) => "cert_untrusted",
            CertError::Host => "cert_host",
        }
    }
}

/// Why a delivery's signature was refused. The messages are one line and never carry the body,
/// the signature or key material.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// `PAYPAL-AUTH-ALGO` is not exactly [`AUTH_ALGO`].
    #[error("unsupported PAYPAL-AUTH-ALGO (only SHA256withRSA is accepted)")]
    BadAlgorithm,
    /// `PAYPAL-TRANSMISSION-SIG` is not padded standard base64 of a plausible length.
    #[error("PAYPAL-TRANSMISSION-SIG is not base64")]
    MalformedSignature,
    /// The signature does not match the signed string under the certificate's key.
    #[error("the signature does not match the transmission")]
    BadSignature,
    /// The certificate is no longer (or not yet) valid at `now`.
    #[error(transparent)]
    Certificate(#[from] CertError),
}

impl SignatureError {
    /// A short stable label for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            SignatureError::BadAlgorithm => "bad_algorithm",
            SignatureError::MalformedSignature => "malformed_signature",
            SignatureError::BadSignature => "bad_signature",
            SignatureError::Certificate(e) => e.outcome(),
        }
    }
}

/// The roots and intermediates a PayPal leaf may chain through.
#[derive(Debug, Clone)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
}

impl TrustStore {
    /// The bundled PayPal chain: "DigiCert High Assurance EV Root CA" as the only root and
    /// "DigiCert SHA2 Extended Validation Server CA" as an intermediate.
    pub fn paypal() -> Self {
        let mut store = TrustStore::empty();
        // Both PEMs are compiled in and parsed by this crate's tests, so they cannot fail here.
        store
            .add_root_pem(DIGICERT_ROOT_PEM.as_bytes())
            .expect("the bundled DigiCert root parses (tested)");
        store
            .add_intermediate_pem(DIGICERT_INTERMEDIATE_PEM.as_bytes())
            .expect("the bundled DigiCert intermediate parses (tested)");
        store
    }

    /// A store that trusts nothing; add roots with [`TrustStore::add_root_pem`].
    pub fn empty() -> Self {
        TrustStore {
            anchors: Vec::new(),
            intermediates: Vec::new(),
        }
    }

    /// Trusts every certificate in `pem` as a root (a local test CA, or PayPal's next root).
    /// Fails, adding nothing, if `pem` holds no certificate or one that cannot be a trust anchor.
    /// As in webpki and RFC 5280, a root's own validity period is not checked; the bundled
    /// intermediate's (until 2028-10-22) still bounds PayPal's paths.
    pub fn add_root_pem(&mut self, pem: &[u8]) -> Result<(), CertError> {
        let mut anchors = Vec::new();
        for der in pem_certs(pem, usize::MAX)? {
            let anchor =
                webpki::anchor_from_trusted_cert(&der).map_err(|_| CertError::Malformed)?;
            anchors.push(anchor.to_owned());
        }
        self.anchors.extend(anchors);
        Ok(())
    }

    /// Offers every certificate in `pem` as an intermediate. An intermediate grants no trust by
    /// itself: a path must still end at a root. Fails, adding nothing, if `pem` holds no
    /// certificate.
    pub fn add_intermediate_pem(&mut self, pem: &[u8]) -> Result<(), CertError> {
        let certs = pem_certs(pem, usize::MAX)?;
        self.intermediates.extend(certs);
        Ok(())
    }
}

/// Every certificate of a PEM document (at least one, at most `max`).
fn pem_certs(pem: &[u8], max: usize) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut certs = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem) {
        if certs.len() == max {
            break;
        }
        certs.push(der.map_err(|_| CertError::Malformed)?);
    }
    if certs.is_empty() {
        return Err(CertError::Malformed);
    }
    Ok(certs)
}

/// A PayPal message-verification leaf that chained to a trusted root and named a PayPal host
/// when it was parsed. Safe to cache by cert URL; [`verify`] checks its validity period again.
#[derive(Debug, Clone)]
pub struct Certificate {
    der: CertificateDer<'static>,
    env: PaypalEnv,
    not_before: i64,
    not_after: i64,
}

impl Certificate {
    /// Parses a PEM (or DER) leaf and checks that it is valid at `now` (unix seconds), that it
    /// chains to `trust` at `now`, that its key is RSA and that its CN or a SAN names a PayPal
    /// message-verification host. Further certificates after the leaf in a PEM document are
    /// offered as intermediates (they grant no trust by themselves).
    pub fn parse_and_check(
        pem_or_der: &[u8],
        trust: &TrustStore,
        now: i64,
    ) -> Result<Self, CertError> {
        if pem_or_der.len() > MAX_CERT_BYTES {
            return Err(CertError::Malformed);
        }
        let mut served = if pem_or_der.trim_ascii_start().starts_with(b"-----BEGIN") {
            pem_certs(pem_or_der, MAX_SERVED_CERTS)?
        } else {
            vec![CertificateDer::from(pem_or_der.to_vec())]
        };
        let der = served.remove(0);

        let parsed = x509_cert::Certificate::from_der(&der).map_err(|_| CertError::Malformed)?;
        let tbs = &parsed.tbs_certificate;
        let not_before = unix_seconds(tbs.validity.not_before)?;
        let not_after = unix_seconds(tbs.validity.not_after)?;
        check_validity(not_before, not_after, now)?;
        if tbs.subject_public_key_info.algorithm.oid != OID_RSA_ENCRYPTION {
            return Err(CertError::KeyType);
        }

        let end_entity = EndEntityCert::try_from(&der).map_err(|_| CertError::Malformed)?;
        let mut intermediates = trust.intermediates.clone();
        intermediates.extend(served);
        end_entity
            .verify_for_usage(
                CHAIN_SIG_ALGS,
                &trust.anchors,
                &intermediates,
                unix_time(now),
                // PayPal's leaves carry EKU serverAuth + clientAuth; there is no "message
                // signing" purpose to require, so this is the TLS server check, which also
                // passes a leaf without an EKU extension (RFC 5280 4.2.1.12).
                KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(CertError::Untrusted)?;

        let env = env_of(tbs)?;
        Ok(Certificate {
            der,
            env,
            not_before,
            not_after,
        })
    }

    /// The environment the certificate names.
    pub fn env(&self) -> PaypalEnv {
        self.env
    }

    /// The certificate's `notBefore`, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// The certificate's `notAfter`, unix seconds (a cache may evict the certificate then).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether the certificate is within its validity period at `now`.
    pub fn check_validity(&self, now: i64) -> Result<(), CertError> {
        check_validity(self.not_before, self.not_after, now)
    }
}

fn check_validity(not_before: i64, not_after: i64, now: i64) -> Result<(), CertError> {
    if now < not_before {
        return Err(CertError::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(CertError::Expired { not_after });
    }
    Ok(())
}

fn unix_seconds(time: x509_cert::time::Time) -> Result<i64, CertError> {
    i64::try_from(time.to_unix_duration().as_secs()).map_err(|_| CertError::Malformed)
}

fn unix_time(now: i64) -> UnixTime {
    // A negative `now` has already failed the validity check; 0 keeps the conversion total.
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)))
}

/// The environment named by the subject CN or the SAN dNSNames: exactly one of the two PayPal
/// names must appear (other names are ignored, as a CA may add some).
fn env_of(tbs: &x509_cert::TbsCertificate) -> Result<PaypalEnv, CertError> {
    let mut found: Option<PaypalEnv> = None;
    let mut note = |name: &str| -> Result<(), CertError> {
        if let Some(env) = PaypalEnv::from_cert_name(name) {
            if found.is_some_and(|seen| seen != env) {
                return Err(CertError::Host);
            }
            found = Some(env);
        }
        Ok(())
    };
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != OID_COMMON_NAME {
                continue;
            }
            let text_tags = [Tag::Utf8String, Tag::PrintableString, Tag::Ia5String];
            if !text_tags.contains(&atv.value.tag()) {
                continue;
            }
            if let Ok(name) = std::str::from_utf8(atv.value.value()) {
                note(name)?;
            }
        }
    }
    let san = tbs
        .get::<SubjectAltName>()
        .map_err(|_| CertError::Malformed)?;
    if let Some((_, SubjectAltName(names))) = san {
        for name in names {
            if let GeneralName::DnsName(dns) = name {
                note(dns.as_str())?;
            }
        }
    }
    found.ok_or(CertError::Host)
}

/// The signature headers of one delivery, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct Transmission<'a> {
    /// `PAYPAL-TRANSMISSION-ID`.
    pub id: &'a str,
    /// `PAYPAL-TRANSMISSION-TIME`, as sent (it is signed verbatim).
    pub time: &'a str,
    /// `PAYPAL-TRANSMISSION-SIG`: base64 of the RSA signature.
    pub sig_b64: &'a str,
    /// `PAYPAL-AUTH-ALGO`: must be exactly [`AUTH_ALGO`].
    pub auth_algo: &'a str,
}

/// The zlib CRC-32 of `body` as an unsigned decimal, as it appears in the signed string.
pub fn crc32_decimal(body: &[u8]) -> String {
    crc32fast::hash(body).to_string()
}

/// The string PayPal signs: `transmission_id|transmission_time|webhook_id|crc32(body)`.
pub fn signed_string(t: &Transmission<'_>, webhook_id: &str, body: &[u8]) -> String {
    format!("{}|{}|{}|{}", t.id, t.time, webhook_id, crc32_decimal(body))
}

/// Checks one delivery: the pinned algorithm, the certificate's validity at `now` (a cached
/// certificate can expire), then the RSA PKCS#1 v1.5 SHA-256 signature over
/// [`signed_string`] with our `webhook_id`. The transmission time is not checked against `now`.
pub fn verify(
    cert: &Certificate,
    t: &Transmission<'_>,
    webhook_id: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    if t.auth_algo != AUTH_ALGO {
        return Err(SignatureError::BadAlgorithm);
    }
    cert.check_validity(now)?;
    if t.sig_b64.len() > MAX_SIGNATURE_B64_LEN {
        return Err(SignatureError::MalformedSignature);
    }
    let signature = STANDARD
        .decode(t.sig_b64)
        .map_err(|_| SignatureError::MalformedSignature)?;
    if signature.is_empty() {
        return Err(SignatureError::MalformedSignature);
    }
    let message = signed_string(t, webhook_id, body);
    let end_entity = EndEntityCert::try_from(&cert.der).map_err(|_| CertError::Malformed)?;
    end_entity
        .verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            message.as_bytes(),
            &signature,
        )
        .map_err(|_| SignatureError::BadSignature)
}

/// Why a `PAYPAL-CERT-URL` may not be fetched. The messages never repeat the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertUrlError {
    /// Longer than [`MAX_CERT_URL_LEN`].
    #[error("PAYPAL-CERT-URL is too long")]
    TooLong,
    /// Not an absolute URL.
    #[error("PAYPAL-CERT-URL is not a URL")]
    Malformed(#[source] url::ParseError),
    /// The URL is not written in its canonical form (case, escapes, default port, dot segments,
    /// backslashes, whitespace): what is fetched must be exactly what was sent.
    #[error("PAYPAL-CERT-URL is not in canonical form")]
    NotCanonical,
    /// The URL carries a user name or password.
    #[error("PAYPAL-CERT-URL carries user information")]
    Userinfo,
    /// The URL carries a query or a fragment.
    #[error("PAYPAL-CERT-URL carries a query or fragment")]
    QueryOrFragment,
    /// Not `https` (plain `http` is allowed only for a listed loopback `host:port`).
    #[error("PAYPAL-CERT-URL does not use https")]
    Scheme,
    /// The host (and port) is not exactly one of the allowed hosts.
    #[error("PAYPAL-CERT-URL host is not an allowed PayPal host")]
    Host,
    /// The path is not `/v1/notifications/certs/<id>` with a plain id.
    #[error("PAYPAL-CERT-URL path is not a PayPal certificate path")]
    Path,
}

impl CertUrlError {
    /// A short stable label for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CertUrlError::TooLong => "cert_url_too_long",
            CertUrlError::Malformed(_) => "cert_url_malformed",
            CertUrlError::NotCanonical => "cert_url_not_canonical",
            CertUrlError::Userinfo => "cert_url_userinfo",
            CertUrlError::QueryOrFragment => "cert_url_query",
            CertUrlError::Scheme => "cert_url_scheme",
            CertUrlError::Host => "cert_url_host",
            CertUrlError::Path => "cert_url_path",
        }
    }
}

/// A `PAYPAL-CERT-URL` that passed [`check_cert_url`]: the exact URL to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertUrl {
    url: String,
    host: String,
}

impl CertUrl {
    /// The URL to fetch (identical to the header value; a cache key).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The allowed-hosts entry it matched (`api.paypal.com`, or `127.0.0.1:<port>` in tests).
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Decides whether `url` may be fetched as a PayPal certificate: `https://<host>/v1/notifications/certs/<id>`
/// with `<host>` exactly one of `allowed_hosts` (see [`DEFAULT_CERT_URL_HOSTS`]), in canonical
/// form, without user information, query or fragment. An allowed entry `127.0.0.1:<port>` or
/// `localhost:<port>` matches only that host and port, and may then be fetched over plain
/// `http` too (for tests).
pub fn check_cert_url(url: &str, allowed_hosts: &[String]) -> Result<CertUrl, CertUrlError> {
    if url.len() > MAX_CERT_URL_LEN {
        return Err(CertUrlError::TooLong);
    }
    let parsed = url::Url::parse(url).map_err(CertUrlError::Malformed)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(CertUrlError::Userinfo);
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(CertUrlError::QueryOrFragment);
    }
    if parsed.as_str() != url {
        return Err(CertUrlError::NotCanonical);
    }
    let is_https = match parsed.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(CertUrlError::Scheme),
    };
    let host = parsed.host_str().ok_or(CertUrlError::Host)?;
    let authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let entry = allowed_hosts
        .iter()
        .find(|entry| **entry == authority)
        .ok_or(CertUrlError::Host)?;
    if !is_https && !is_loopback_entry(entry) {
        return Err(CertUrlError::Scheme);
    }
    let id = parsed
        .path()
        .strip_prefix(CERT_URL_PATH_PREFIX)
        .ok_or(CertUrlError::Path)?;
    let plain_id = !id.is_empty()
        && id.len() <= MAX_CERT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain_id {
        return Err(CertUrlError::Path);
    }
    Ok(CertUrl {
        url: url.to_owned(),
        host: entry.clone(),
    })
}

/// `127.0.0.1:<port>` or `localhost:<port>` with a numeric port.
fn is_loopback_entry(entry: &str) -> bool {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return false;
    };
    matches!(host, "127.0.0.1" | "localhost") && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_chain_parses_into_one_root_and_one_intermediate() {
        let store = TrustStore::paypal();
        assert_eq!(store.anchors.len(), 1);
        assert_eq!(store.intermediates.len(), 1);
    }

    #[test]
    fn crc32_is_unsigned_decimal() {
        assert_eq!(crc32_decimal(b""), "0");
        assert_eq!(crc32_decimal(b"123456789"), "3421780262");
    }

    #[test]
    fn loopback_entries_need_a_numeric_port() {
        assert!(is_loopback_entry("127.0.0.1:8080"));
        assert!(is_loopback_entry("localhost:1"));
        assert!(!is_loopback_entry("127.0.0.1"));
        assert!(!is_loopback_entry("localhost:http"));
        assert!(!is_loopback_entry("api.paypal.com:443"));
        assert!(!is_loopback_entry("127.0.0.2:80"));
    }

    #[test]
    fn no_pem_is_malformed() {
        let mut store = TrustStore::empty();
        assert!(matches!(
            store.add_root_pem(b"not a pem"),
            Err(CertError::Malformed)
        ));
        assert!(matches!(
            Certificate::parse_and_check(b"\x30\x03\x02\x01\x00", &store, 0),
            Err(CertError::Malformed)
        ));
    }

    proptest::proptest! {
        #[test]
        fn cert_url_check_never_panics(url in ".{0,600}") {
            let _ = check_cert_url(&url, &["api.paypal.com".to_owned()]);
        }

        #[test]
        fn certificate_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Certificate::parse_and_check(&bytes, &TrustStore::paypal(), 1_700_000_000);
        }
    }
}

/// Why a local signing key could not sign.
#[derive(Debug, thiserror::Error)]
#[error("the signing key is not an RSA PKCS#8 private key (PEM or DER), or signing failed")]
pub struct SignError;

/// Signs a delivery as PayPal would, with a local RSA key (PKCS#8, PEM or DER): for `paysync
/// send` and tests, whose certificates chain to a local root. `rng` is the caller's (ring
/// blinds RSA with it; the signature itself is deterministic).
pub fn sign_local(
    key: &[u8],
    rng: &dyn ring::rand::SecureRandom,
    transmission_id: &str,
    transmission_time: &str,
    webhook_id: &str,
    body: &[u8],
) -> Result<String, SignError> {
    let der = match std::str::from_utf8(key) {
        Ok(text) if text.contains("-----BEGIN") => {
            let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            STANDARD.decode(b64.trim()).map_err(|_| SignError)?
        }
        _ => key.to_vec(),
    };
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|_| SignError)?;
    let t = Transmission {
        id: transmission_id,
        time: transmission_time,
        sig_b64: "",
        auth_algo: AUTH_ALGO,
    };
    let message = signed_string(&t, webhook_id, body);
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        rng,
        message.as_bytes(),
        &mut sig,
    )
    .map_err(|_| SignError)?;
    Ok(STANDARD.encode(sig))
}
