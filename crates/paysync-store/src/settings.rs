//! Database settings, and the rules they must meet.
//!
//! Rule of thumb: whoever builds a [`StoreSettings`] (the CLI from the environment, a test, the
//! bench) gets the same verdict from [`StoreSettings::validate`]; errors name the field, never
//! the variable that set it.

use std::fmt;
use std::time::Duration;

use crate::StoreError;
use crate::tls::{DatabaseTls, TlsSettingsError};

/// How to reach PostgreSQL and size the pool.
#[derive(Clone)]
pub struct StoreSettings {
    /// `postgres://user[:password]@host:port/db` (or `postgresql://`), with libpq's TLS
    /// parameters `sslmode`, `sslrootcert`, `sslcert` and `sslkey` ([`crate::tls`]). May hold a
    /// password: never logged.
    pub url: String,
    /// Schema every statement runs in (`search_path`); tests use one each. A plain identifier
    /// (see [`valid_schema`]).
    pub schema: String,
    /// Pool size. Each connection is one PostgreSQL backend; on a small box a handful of
    /// backends saturate it (fsync and CPU), more only queue inside the server.
    pub max_connections: usize,
    /// Longest wait for a free pooled connection.
    pub wait_timeout: Duration,
    /// Longest time to open a new connection.
    pub create_timeout: Duration,
    /// Longest time to check a returned connection.
    pub recycle_timeout: Duration,
    /// Shown in `pg_stat_activity`, so an operator can tell our connections apart.
    pub application_name: String,
    /// Server-side `statement_timeout`: a stuck statement fails (transiently) instead of
    /// holding a delivery forever.
    pub statement_timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/paysync".into(),
            schema: "public".into(),
            max_connections: 8,
            wait_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(2),
            application_name: "paysync".into(),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

/// A [`StoreSettings`] field holding a value the services refuse; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreSettingsError {
    /// `url` starts with neither `postgres://` nor `postgresql://`.
    #[error("database url: must start with postgres:// or postgresql://")]
    UrlScheme,
    /// `url` does not parse as a PostgreSQL connection URL.
    #[error("database url: cannot be parsed")]
    UrlUnparsable,
    /// A TLS parameter of `url` (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) cannot work;
    /// a certificate file named there is read here, so a missing one is refused at start.
    #[error("database url: {0}")]
    Tls(#[from] TlsSettingsError),
    /// `schema` is not a plain identifier ([`valid_schema`]).
    #[error("database schema: use 1-63 characters of [a-z0-9_], not starting with a digit")]
    Schema,
    /// `max_connections` is zero.
    #[error("database max_connections: must be greater than zero")]
    MaxConnections,
    /// `statement_timeout` is zero.
    #[error("database statement_timeout: must be greater than zero")]
    StatementTimeout,
}

impl StoreSettings {
    /// Checks the fields an operator sets, in declaration order; the first refused one is the
    /// error. Reads the certificate files the URL names. The pool's fixed timeouts are not
    /// checked.
    pub fn validate(&self) -> Result<(), StoreSettingsError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(StoreSettingsError::UrlScheme);
        }
        crate::tls::connect_config(&self.url)?;
        if !valid_schema(&self.schema) {
            return Err(StoreSettingsError::Schema);
        }
        if self.max_connections == 0 {
            return Err(StoreSettingsError::MaxConnections);
        }
        if self.statement_timeout.is_zero() {
            return Err(StoreSettingsError::StatementTimeout);
        }
        Ok(())
    }
}

/// Whether `name` is a plain identifier we can put into `search_path` unquoted.
pub fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl StoreSettings {
    /// tokio-postgres's config for these settings, and the TLS connector the URL asks for.
    pub(crate) fn pg_config(&self) -> Result<(tokio_postgres::Config, DatabaseTls), StoreError> {
        let (mut pg, tls) = crate::tls::connect_config(&self.url).map_err(StoreError::Settings)?;
        if !valid_schema(&self.schema) {
            return Err(StoreError::Config(
                "schema must be 1-63 characters of [a-z0-9_], not starting with a digit".into(),
            ));
        }
        pg.options(format!(
            "-c search_path={} -c statement_timeout={}",
            self.schema,
            self.statement_timeout.as_millis()
        ));
        pg.application_name(&self.application_name);
        pg.connect_timeout(self.create_timeout);
        Ok((pg, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("public"));
        assert!(valid_schema("paysync_test_1a2b"));
        for bad in ["", "1abc", "a-b", "A", "a;drop", &"a".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_the_url() {
        let s = StoreSettings {
            url: "postgres://u:pw@h/db".into(),
            ..StoreSettings::default()
        };
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn default_settings_are_valid() {
        assert_eq!(StoreSettings::default().validate(), Ok(()));
        let s = StoreSettings {
            url: "postgresql://u:pw@h:5433/db?connect_timeout=3".into(),
            ..StoreSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let ok = StoreSettings::default;
        let cases: [(StoreSettings, StoreSettingsError); 6] = [
            (
                StoreSettings {
                    url: "mysql://x".into(),
                    ..ok()
                },
                StoreSettingsError::UrlScheme,
            ),
            (
                StoreSettings {
                    url: "postgres://h:notaport/db".into(),
                    ..ok()
                },
                StoreSettingsError::UrlUnparsable,
            ),
            (
                StoreSettings {
                    schema: "Bad-Schema".into(),
                    ..ok()
                },
                StoreSettingsError::Schema,
            ),
            (
                StoreSettings {
                    schema: String::new(),
                    ..ok()
                },
                StoreSettingsError::Schema,
            ),
            (
                StoreSettings {
                    max_connections: 0,
                    ..ok()
                },
                StoreSettingsError::MaxConnections,
            ),
            (
                StoreSettings {
                    statement_timeout: Duration::ZERO,
                    ..ok()
                },
                StoreSettingsError::StatementTimeout,
            ),
        ];
        for (settings, expected) in cases {
            assert_eq!(settings.validate(), Err(expected.clone()), "{settings:?}");
            let shown = expected.to_string();
            assert!(!shown.contains("PAYSYNC_"), "{shown}");
        }
    }
}
