//! Store errors and their classification.

use tokio_postgres::error::SqlState;

/// A database failure, with whether retrying later may succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No pooled connection (pool exhausted, or the database unreachable).
    #[error("no database connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error during {context}")]
    Db {
        /// What we were doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// An applied migration's file changed afterwards.
    #[error(
        "migration {version} ({name}) changed after it was applied; add a new migration instead"
    )]
    MigrationChanged {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
    },
    /// The settings are unusable.
    #[error("invalid database settings: {0}")]
    Config(String),
    /// A setting is refused (see [`crate::StoreSettings::validate`]).
    #[error("invalid database settings")]
    Settings(#[source] crate::StoreSettingsError),
}

impl StoreError {
    /// Wraps a driver error with what we were doing (`map_err(StoreError::db("…"))`).
    pub fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Db { context, source }
    }

    /// Whether retrying later may succeed: connection trouble, timeouts, lock conflicts,
    /// serialization failures, resource exhaustion. Data and constraint errors (other than
    /// a unique-key race) are permanent: the same input fails the same way, and so is a server
    /// certificate that the TLS settings refuse ([`Self::is_certificate_refused`]).
    pub fn is_transient(&self) -> bool {
        if self.is_certificate_refused() {
            return false;
        }
        match self {
            Self::Pool(_) => true,
            Self::Db { source, .. } => match source.code() {
                // No SQLSTATE: the connection broke or timed out.
                None => true,
                Some(code) => is_transient_state(code),
            },
            Self::MigrationChanged { .. } | Self::Config(_) | Self::Settings(_) => false,
        }
    }

    /// Whether a connection failed because the TLS handshake refused the server's certificate
    /// (`sslmode`, `sslrootcert`): not an outage and not the data's fault, but a setting or a
    /// server certificate for an operator to fix.
    pub fn is_certificate_refused(&self) -> bool {
        let driver = match self {
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => e,
            Self::Db { source, .. } => source,
            _ => return false,
        };
        crate::tls::is_certificate_refused(driver)
    }

    /// Whether a concurrent transaction got in the way (deadlock, serialization failure, a
    /// unique-key race): trying the same transaction again right away is likely to succeed.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Db { source, .. } => source.code().is_some_and(is_conflict_state),
            _ => false,
        }
    }

    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Db { source, .. } => source.code().map(SqlState::code),
            _ => None,
        }
    }
}

fn is_transient_state(code: &SqlState) -> bool {
    let c = code.code();
    if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::EXCLUSION_VIOLATION {
        // Two workers raced to create the same row; the retry sees the winner's row.
        return true;
    }
    // 22: data exception, 23: integrity constraint violation: the input is wrong.
    !(c.starts_with("22") || c.starts_with("23"))
}

fn is_conflict_state(code: &SqlState) -> bool {
    [
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::UNIQUE_VIOLATION,
        SqlState::EXCLUSION_VIOLATION,
    ]
    .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_split_into_transient_and_permanent() {
        for transient in [
            SqlState::CONNECTION_FAILURE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::UNIQUE_VIOLATION,
            SqlState::UNDEFINED_TABLE,
        ] {
            assert!(is_transient_state(&transient), "{}", transient.code());
        }
        for permanent in [
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::FOREIGN_KEY_VIOLATION,
            SqlState::CHECK_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
        ] {
            assert!(!is_transient_state(&permanent), "{}", permanent.code());
        }
    }

    #[test]
    fn conflicts_are_transient_and_outages_are_not_conflicts() {
        for conflict in [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::UNIQUE_VIOLATION,
        ] {
            assert!(is_conflict_state(&conflict), "{}", conflict.code());
            assert!(is_transient_state(&conflict), "{}", conflict.code());
        }
        for other in [
            SqlState::CONNECTION_FAILURE,
            SqlState::QUERY_CANCELED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::CHECK_VIOLATION,
        ] {
            assert!(!is_conflict_state(&other), "{}", other.code());
        }
    }
}
