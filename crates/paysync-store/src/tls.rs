//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it.
//!
//! tokio-postgres reads only `sslmode=disable|prefer|require` and no certificate parameter, so
//! [`connect_config`] takes the TLS parameters out of the database URL (URL or `key=value`
//! form), hands the rest to tokio-postgres, and builds the rustls connector that checks what the
//! mode promises (see [`SslMode`]).
//!
//! Rule of thumb: a refusal names `sslmode` and `sslrootcert`, never the URL (it may hold a
//! password); a server certificate the settings refuse is a setting to fix, not an outage
//! ([`is_certificate_refused`]).

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreSettingsError;

/// libpq's `sslmode`: whether to use TLS and what to check of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else plain text; the certificate is not checked (unless
    /// `sslrootcert` names a file: then its chain is, as libpq does).
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `sslrootcert` names a file:
    /// then its chain is, like `verify-ca`, as libpq does).
    Require,
    /// TLS, and the certificate must chain to a trusted root; the host name is not checked.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host we connect to (a
    /// DNS name, or an IP address SAN for an IP host).
    VerifyFull,
}

impl SslMode {
    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert` unset: the Mozilla roots compiled into the binary (`webpki-roots`), for the
    /// verify modes; the other modes check nothing.
    Unset,
    /// `sslrootcert=system` (libpq 16): the same compiled-in Mozilla roots; only with
    /// `verify-full`, which is also the default mode then.
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

/// The TLS part of a database URL, parsed but not yet loaded from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`; `prefer` when unset (libpq's default), `verify-full` with `sslrootcert=system`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root: RootCert,
    /// `sslcert` and `sslkey`: a client certificate (PEM) and its private key (PEM), given
    /// together, sent when the server asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The connector for a database URL's TLS settings; cheap to clone. Never used with
/// `sslmode=disable`. A refused server certificate comes out as [`CertificateRefused`].
#[derive(Clone)]
pub struct DatabaseTls {
    inner: MakeRustlsConnect,
    /// `sslmode=…, sslrootcert=…`, for errors.
    settings: Arc<str>,
}

impl<S> MakeTlsConnect<S> for DatabaseTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Handshake<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Handshake {
            inner: MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)?,
            settings: self.settings.clone(),
            host: domain.to_owned(),
        })
    }
}

/// One connection's TLS handshake: rustls's, with a refused certificate explained.
pub struct Handshake<T> {
    inner: T,
    settings: Arc<str>,
    host: String,
}

impl<S, T> TlsConnect<S> for Handshake<T>
where
    T: TlsConnect<S, Error = std::io::Error>,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = BoxFuture<'static, Result<T::Stream, Self::Error>>;

    fn connect(self, stream: S) -> Self::Future {
        let Self {
            inner,
            settings,
            host,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| explain_handshake_error(e, settings, host))
        })
    }
}

/// tokio-rustls reports a refused certificate as an `io::Error` around rustls's error: make
/// it a [`CertificateRefused`] that names the settings. Other errors pass unchanged.
fn explain_handshake_error(
    err: std::io::Error,
    settings: Arc<str>,
    host: String,
) -> Box<dyn StdError + Send + Sync> {
    let refused = matches!(
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    );
    if !refused {
        return Box::new(err);
    }
    match err
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(cause)) => Box::new(CertificateRefused {
            settings,
            host,
            cause: *cause,
        }),
        Some(Err(other)) => other,
        // Checked above: the io::Error holds rustls's error.
        None => Box::new(std::io::Error::other("TLS handshake failed")),
    }
}

/// Splits a database URL (`postgres://…?…` or `key=value …`) into tokio-postgres's config,
/// without the TLS parameters it cannot read, and the connector they ask for. Reads the
/// certificate files, so a missing one is refused here, at start.
pub fn connect_config(
    url: &str,
) -> Result<(tokio_postgres::Config, DatabaseTls), StoreSettingsError> {
    let (rest, params) = split(url)?;
    let mut config =
        tokio_postgres::Config::from_str(&rest).map_err(|_| StoreSettingsError::UrlUnparsable)?;
    config.ssl_mode(match params.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = connector(&params)?;
    Ok((config, tls))
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of `url` (the last of each
/// wins, as in libpq) and returns what is left, for tokio-postgres, with their meaning. Reads
/// no file.
pub fn split(url: &str) -> Result<(String, TlsParams), StoreSettingsError> {
    let mut raw = RawParams::default();
    let rest = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(*p))
    {
        Some(prefix) => split_url(url, prefix.len(), &mut raw)?,
        None => split_keywords(url, &mut raw)?,
    };
    Ok((rest, raw.resolve()?))
}

#[derive(Default)]
struct RawParams {
    mode: Option<String>,
    root: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl RawParams {
    /// Keeps `value` if `key` is one of ours; whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        // An empty value means unset, as in libpq.
        *slot = Some(value).filter(|v| !v.is_empty());
        true
    }

    fn resolve(self) -> Result<TlsParams, StoreSettingsError> {
        let root = match self.root.as_deref() {
            None => RootCert::Unset,
            Some("system") => RootCert::System,
            Some(path) => RootCert::File(PathBuf::from(path)),
        };
        let mode = match self.mode.as_deref() {
            None if root == RootCert::System => SslMode::VerifyFull,
            None => SslMode::Prefer,
            Some(value) => SslMode::parse(value).ok_or_else(|| TlsSettingsError::SslMode {
                value: value.to_owned(),
            })?,
        };
        if root == RootCert::System && mode != SslMode::VerifyFull {
            return Err(TlsSettingsError::RootCertSystem {
                mode: mode.as_str(),
            }
            .into());
        }
        let client = match (self.cert, self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => return Err(TlsSettingsError::ClientPair.into()),
        };
        Ok(TlsParams { mode, root, client })
    }
}

/// The URL form: the parameters follow the first `?` after the credentials (as tokio-postgres
/// reads it), `&`-separated and percent-encoded.
fn split_url(url: &str, prefix: usize, raw: &mut RawParams) -> Result<String, StoreSettingsError> {
    let after = &url[prefix..];
    let host_start = after.find('@').map_or(0, |at| at + 1);
    let Some(question) = after[host_start..].find('?') else {
        return Ok(url.to_owned());
    };
    let question = prefix + host_start + question;
    let (head, query) = (&url[..question], &url[question + 1..]);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let taken = match pair.split_once('=') {
            Some((key, value)) => {
                let key = percent_decode(key).ok_or(StoreSettingsError::UrlUnparsable)?;
                match key.as_str() {
                    "sslmode" | "sslrootcert" | "sslcert" | "sslkey" => {
                        let value =
                            percent_decode(value).ok_or(StoreSettingsError::UrlUnparsable)?;
                        raw.take(&key, value)
                    }
                    _ => false,
                }
            }
            None => false,
        };
        if !taken {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    })
}

/// The `key=value` form (libpq's keyword/value string, as tokio-postgres reads it): values may
/// be single-quoted, with `\` escaping the next character. What is kept is written back quoted.
fn split_keywords(s: &str, raw: &mut RawParams) -> Result<String, StoreSettingsError> {
    let mut kept = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err(StoreSettingsError::UrlUnparsable);
            }
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(StoreSettingsError::UrlUnparsable);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(StoreSettingsError::UrlUnparsable),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(StoreSettingsError::UrlUnparsable);
            }
        }
        if !raw.take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

/// Percent-decodes `s` as tokio-postgres does (a `%` not followed by two hex digits stays as
/// it is); `None` if the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            // Two hex digits make at most 0xff.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the verifier checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing but the handshake signatures (prefer and require without a root file).
    Nothing,
    /// The chain to a trusted root.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// Builds the rustls connector for `params`, reading its files.
fn connector(params: &TlsParams) -> Result<DatabaseTls, StoreSettingsError> {
    let check = match (params.mode, &params.root) {
        (SslMode::Disable, _) => Check::Nothing,
        (SslMode::Prefer | SslMode::Require, RootCert::File(_)) => Check::Chain,
        (SslMode::Prefer | SslMode::Require, _) => Check::Nothing,
        (SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::ChainAndName,
    };
    // Disabled TLS reads no file: libpq ignores them too.
    let uses_files = params.mode != SslMode::Disable;
    let roots = match (&params.root, check) {
        (_, Check::Nothing) => RootCertStore::empty(),
        (RootCert::File(path), _) => read_roots(path)?,
        (RootCert::Unset | RootCert::System, _) => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    // rustls 0.23.48 deprecates ring's provider because it has no post-quantum key exchange;
    // that needs aws-lc-rs, a C build this workspace keeps out (docs/dependencies.md).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Verifier {
        check,
        roots: Arc::new(roots),
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &params.client {
        Some((cert, key)) if uses_files => {
            let chain = read_certificates(cert, "sslcert")?;
            let bytes = read_file(key, "sslkey")?;
            let private =
                PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsSettingsError::File {
                    param: "sslkey",
                    path: key.clone(),
                    problem: FileProblem::NoKey,
                })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|_| TlsSettingsError::File {
                    param: "sslkey",
                    path: key.clone(),
                    problem: FileProblem::KeyMismatch,
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    // What libpq 17 offers; PostgreSQL 17 requires it for sslnegotiation=direct.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(DatabaseTls {
        inner: MakeRustlsConnect::new(config),
        settings: describe(params).into(),
    })
}

/// A TLS parameter of the database URL that cannot work; each variant names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSettingsError {
    /// `sslmode` is none of libpq's modes that this build supports.
    #[error("sslmode={value}: use disable, prefer, require, verify-ca or verify-full")]
    SslMode {
        /// The value given.
        value: String,
    },
    /// `sslrootcert=system` with a mode weaker than `verify-full` (refused by libpq 16 too).
    #[error("sslrootcert=system needs sslmode=verify-full (or no sslmode), not sslmode={mode}")]
    RootCertSystem {
        /// The mode given.
        mode: &'static str,
    },
    /// Only one of `sslcert` and `sslkey` is given.
    #[error("sslcert and sslkey go together: give both or neither")]
    ClientPair,
    /// A certificate or key file named by `sslrootcert`, `sslcert` or `sslkey` cannot be used.
    #[error("{param}={}: {problem}", path.display())]
    File {
        /// The parameter that names it.
        param: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        problem: FileProblem,
    },
}

/// Why a certificate file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProblem {
    /// It cannot be read.
    Unreadable(std::io::ErrorKind),
    /// It holds no PEM certificate.
    NoCertificate,
    /// It holds no PEM private key.
    NoKey,
    /// The key does not fit the certificate (or is of a kind rustls cannot use).
    KeyMismatch,
    /// A certificate in it is not a usable CA certificate.
    BadCertificate,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(kind) => write!(f, "cannot be read ({kind})"),
            Self::NoCertificate => f.write_str("holds no PEM certificate"),
            Self::NoKey => f.write_str("holds no PEM private key"),
            Self::KeyMismatch => f.write_str("the key does not fit sslcert's certificate"),
            Self::BadCertificate => f.write_str("holds a certificate that is not a usable CA"),
        }
    }
}

fn read_file(path: &Path, param: &'static str) -> Result<Vec<u8>, StoreSettingsError> {
    std::fs::read(path).map_err(|e| {
        TlsSettingsError::File {
            param,
            path: path.to_owned(),
            problem: FileProblem::Unreadable(e.kind()),
        }
        .into()
    })
}

fn read_certificates(
    path: &Path,
    param: &'static str,
) -> Result<Vec<CertificateDer<'static>>, StoreSettingsError> {
    let bytes = read_file(path, param)?;
    let refused = |problem| TlsSettingsError::File {
        param,
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| refused(FileProblem::NoCertificate))?;
    if certs.is_empty() {
        return Err(refused(FileProblem::NoCertificate).into());
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, StoreSettingsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path, "sslrootcert")? {
        roots.add(cert).map_err(|_| TlsSettingsError::File {
            param: "sslrootcert",
            path: path.to_owned(),
            problem: FileProblem::BadCertificate,
        })?;
    }
    Ok(roots)
}

/// `sslmode=…, sslrootcert=…`, for errors.
fn describe(params: &TlsParams) -> String {
    let root = match &params.root {
        RootCert::Unset => "sslrootcert unset: built-in Mozilla roots".to_owned(),
        RootCert::System => "sslrootcert=system: built-in Mozilla roots".to_owned(),
        RootCert::File(path) => format!("sslrootcert={}", path.display()),
    };
    format!("sslmode={}, {root}", params.mode.as_str())
}

/// Checks what the mode promises; every mode checks the handshake signatures.
#[derive(Debug)]
struct Verifier {
    check: Check,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check == Check::ChainAndName {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's certificate failed what the TLS settings ask for. Names the settings and the
/// host, never the URL; rustls's error is its source.
#[derive(Debug)]
pub struct CertificateRefused {
    settings: Arc<str>,
    host: String,
    cause: rustls::Error,
}

impl fmt::Display for CertificateRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CertificateError as C;
        write!(f, "database TLS ({}): ", self.settings)?;
        match &self.cause {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => f.write_str("certificate not signed by a trusted CA"),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    write!(f, "certificate not valid for host {}", self.host)
                }
                C::Expired | C::ExpiredContext { .. } => f.write_str("certificate expired"),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    f.write_str("certificate not valid yet")
                }
                C::Revoked => f.write_str("certificate revoked"),
                _ => f.write_str("certificate refused"),
            },
            _ => f.write_str("certificate refused"),
        }
    }
}

impl StdError for CertificateRefused {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

/// Whether `err`, or an error in its chain, is a TLS handshake that refused the server's
/// certificate ([`CertificateRefused`], or a rustls certificate error however wrapped).
pub fn is_certificate_refused(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        // tokio-rustls reports a handshake failure as an io::Error around rustls's error, and
        // io::Error's `source` skips that inner error: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if candidate.is::<CertificateRefused>()
                || matches!(
                    candidate.downcast_ref::<rustls::Error>(),
                    Some(rustls::Error::InvalidCertificate(_))
                )
            {
                return true;
            }
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, TlsParams) {
        split(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn the_url_form_loses_only_the_tls_parameters() {
        let (rest, p) = parsed(
            "postgres://u:p%3Fw@db.example:5433/pay?connect_timeout=3&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5433/pay?connect_timeout=3&application_name=x"
        );
        assert_eq!(
            p,
            TlsParams {
                mode: SslMode::VerifyFull,
                root: RootCert::File("/etc/ca.pem".into()),
                client: None,
            }
        );
        assert!(tokio_postgres::Config::from_str(&rest).is_ok());
    }

    #[test]
    fn a_url_with_only_tls_parameters_loses_its_question_mark() {
        let (rest, p) = parsed(
            "postgresql://u@h/db?sslmode=require&sslcert=/c.pem&sslkey=/c.key&sslrootcert=/r",
        );
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(p.mode, SslMode::Require);
        assert_eq!(p.root, RootCert::File("/r".into()));
        assert_eq!(p.client, Some(("/c.pem".into(), "/c.key".into())));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, p) = parsed("postgres://u:a?b@h/db?sslmode=verify-ca");
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(p.mode, SslMode::VerifyCa);
    }

    #[test]
    fn a_url_without_parameters_is_unchanged_and_prefers_tls() {
        for url in ["postgres://postgres@127.0.0.1:5432/paysync", "postgres://h"] {
            let (rest, p) = parsed(url);
            assert_eq!(rest, url);
            assert_eq!(
                p,
                TlsParams {
                    mode: SslMode::Prefer,
                    root: RootCert::Unset,
                    client: None,
                }
            );
        }
    }

    #[test]
    fn the_keyword_form_loses_only_the_tls_parameters() {
        let (rest, p) = parsed(
            "host=localhost user=postgres sslmode = verify-full \
             sslrootcert='/var/x y/ca.pem' password='it\\'s' dbname=postgres",
        );
        assert_eq!(
            rest,
            "host='localhost' user='postgres' password='it\\'s' dbname='postgres'"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root, RootCert::File("/var/x y/ca.pem".into()));
        let config = tokio_postgres::Config::from_str(&rest).expect("parses");
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
        assert_eq!(config.get_dbname(), Some("postgres"));
    }

    #[test]
    fn every_sslmode_is_read_in_both_forms() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            let m = mode.as_str();
            for url in [
                format!("postgres://h/db?sslmode={m}"),
                format!("host=h sslmode={m}"),
            ] {
                let (rest, p) = parsed(&url);
                assert_eq!(p.mode, mode, "{url}");
                assert!(!rest.contains("sslmode"), "{rest}");
            }
        }
    }

    #[test]
    fn the_last_of_a_repeated_parameter_wins_and_empty_means_unset() {
        let (_, p) = parsed("postgres://h/db?sslmode=disable&sslmode=verify-ca&sslrootcert=");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root, RootCert::Unset);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_naming_sslmode() {
        for url in [
            "postgres://h/db?sslmode=allow",
            "postgres://h/db?sslmode=VERIFY-FULL",
            "host=h sslmode=strict",
        ] {
            let err = split(url).expect_err(url);
            assert!(
                matches!(
                    err,
                    StoreSettingsError::Tls(TlsSettingsError::SslMode { .. })
                ),
                "{err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains("sslmode"), "{shown}");
        }
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        let (_, p) = parsed("postgres://h/db?sslrootcert=system");
        assert_eq!((p.mode, p.root), (SslMode::VerifyFull, RootCert::System));
        let err = split("postgres://h/db?sslrootcert=system&sslmode=require").expect_err("weak");
        assert_eq!(
            err,
            StoreSettingsError::Tls(TlsSettingsError::RootCertSystem { mode: "require" })
        );
        assert!(err.to_string().contains("sslrootcert=system"), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        for url in ["postgres://h/db?sslcert=/c", "host=h sslkey=/k"] {
            assert_eq!(
                split(url),
                Err(StoreSettingsError::Tls(TlsSettingsError::ClientPair)),
                "{url}"
            );
        }
    }

    #[test]
    fn broken_strings_are_unparsable() {
        for url in ["host='unterminated", "host", "=x", "host=h sslmode="] {
            assert_eq!(
                split(url).map(|_| ()),
                Err(StoreSettingsError::UrlUnparsable),
                "{url}"
            );
        }
        assert_eq!(
            split("postgres://h/db?sslrootcert=%FF").map(|_| ()),
            Err(StoreSettingsError::UrlUnparsable)
        );
    }

    #[test]
    fn percent_decoding_keeps_stray_percent_signs() {
        assert_eq!(percent_decode("a%2Fb%zz%4").as_deref(), Some("a/b%zz%4"));
    }

    #[test]
    fn a_missing_root_file_is_refused_at_start_naming_sslrootcert_and_the_path() {
        let err =
            connect_config("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .map(|_| ())
                .expect_err("missing file");
        let shown = err.to_string();
        assert!(
            shown.contains("sslrootcert") && shown.contains("/nonexistent/ca.pem"),
            "{shown}"
        );
        // Disabled TLS reads no file.
        assert!(
            connect_config("postgres://h/db?sslmode=disable&sslrootcert=/nonexistent/ca.pem")
                .is_ok()
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("paysync-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("temp file");
        let err = connect_config(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            path.display()
        ))
        .map(|_| ())
        .expect_err("no certificate");
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(
                err,
                StoreSettingsError::Tls(TlsSettingsError::File {
                    param: "sslrootcert",
                    problem: FileProblem::NoCertificate,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_tokio_postgres_mode_follows_the_libpq_mode() {
        use tokio_postgres::config::SslMode as Pg;
        for (mode, expected) in [
            ("disable", Pg::Disable),
            ("prefer", Pg::Prefer),
            ("require", Pg::Require),
            ("verify-ca", Pg::Require),
            ("verify-full", Pg::Require),
        ] {
            let (config, _) =
                connect_config(&format!("postgres://h/db?sslmode={mode}")).expect(mode);
            assert_eq!(config.get_ssl_mode(), expected, "{mode}");
        }
    }
}
