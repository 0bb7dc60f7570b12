//! Failure classes as types: every error that reaches the worker loop is either retryable
//! (try again later through the delay levels) or permanent (straight to the dead-letter
//! queue), decided where the error is understood, never by matching message text.

use std::error::Error as StdError;
use std::fmt;
use std::panic::Location;

use paysync_store::StoreError;
use sha2::{Digest, Sha256};

/// Whether trying again later may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Database or broker trouble, lock timeouts, a dependency down: retry with backoff.
    Retryable,
    /// Malformed payload, unsupported shape, a contradiction that needs a person.
    Permanent,
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A classified processing failure with the code site that raised it.
pub struct Failure {
    class: FailureClass,
    kind: &'static str,
    site: &'static Location<'static>,
    source: BoxError,
}

impl Failure {
    /// A failure worth retrying later. `kind` is a stable snake_case name (closed set).
    #[track_caller]
    pub fn retryable(kind: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(FailureClass::Retryable, kind, source.into())
    }

    /// A failure that will not go away by itself.
    #[track_caller]
    pub fn permanent(kind: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(FailureClass::Permanent, kind, source.into())
    }

    /// Classifies a store error: transient ones (connection, timeout, lock, serialization)
    /// are retryable as `database_unavailable`, the rest permanent as `database_rejected`.
    /// A server certificate refused by the TLS settings is not transient, but it is not the
    /// event's fault either: it is retried as `database_unavailable` too, so that the events
    /// wait for the operator's fix instead of all going to the dead letters.
    #[track_caller]
    pub fn from_store(err: StoreError) -> Self {
        if err.is_transient() || err.is_certificate_refused() {
            Self::retryable("database_unavailable", err)
        } else {
            Self::permanent("database_rejected", err)
        }
    }

    #[track_caller]
    fn new(class: FailureClass, kind: &'static str, source: BoxError) -> Self {
        Self {
            class,
            kind,
            site: Location::caller(),
            source,
        }
    }

    /// Whether it is a conflict with a concurrent transaction (deadlock, serialization
    /// failure, a unique-key race) that an immediate new attempt is likely to get past.
    pub fn is_conflict(&self) -> bool {
        self.source
            .downcast_ref::<paysync_store::StoreError>()
            .is_some_and(paysync_store::StoreError::is_conflict)
    }

    /// Its class.
    pub fn class(&self) -> FailureClass {
        self.class
    }

    /// Its kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The error and all its causes, one per line.
    pub fn chain(&self) -> String {
        let mut out = self.source.to_string();
        let mut next = self.source.source();
        while let Some(cause) = next {
            out.push('\n');
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }

    /// The error and all its causes on one line, separated by `: ` (for log lines).
    pub fn chain_line(&self) -> String {
        one_line(&self.chain())
    }

    /// What groups this failure with its kind: a digest of the kind and the code site
    /// (`file:line` where it was raised), never of the variable message text.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            self.kind,
            &format!("{}:{}", self.site.file(), self.site.line()),
        )
    }
}

/// A multi-line error chain (as [`Failure::chain`] writes it) on one line, for log lines.
pub(crate) fn one_line(chain: &str) -> String {
    chain.replace('\n', ": ")
}

/// The fingerprint of `kind` raised at `site`.
pub fn fingerprint(kind: &str, site: &str) -> String {
    let digest = Sha256::digest(format!("{kind}|{site}").as_bytes());
    hex::encode(&digest[..8])
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("class", &self.class)
            .field("kind", &self.kind)
            .field(
                "site",
                &format_args!("{}:{}", self.site.file(), self.site.line()),
            )
            .field("chain", &self.chain())
            .finish()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn raise(msg: &str) -> Failure {
        Failure::permanent("bad_shape", std::io::Error::other(msg.to_owned()))
    }

    #[test]
    fn fingerprint_depends_on_kind_and_site_not_on_message_text() {
        let a = raise("customer cus_1 missing");
        let b = raise("customer cus_2 missing");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let other_site = Failure::permanent("bad_shape", std::io::Error::other("x"));
        assert_ne!(a.fingerprint(), other_site.fingerprint());
        let other_kind = Failure::retryable("timeout", std::io::Error::other("x"));
        assert_ne!(other_kind.fingerprint(), other_site.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn chain_lists_every_cause() {
        let f = Failure::retryable("io", Outer(std::io::Error::other("disk on fire")));
        assert_eq!(f.chain(), "outer\ndisk on fire");
        assert_eq!(f.class(), FailureClass::Retryable);
    }

    #[test]
    fn chain_line_puts_every_cause_on_one_line() {
        let f = Failure::retryable("io", Outer(std::io::Error::other("disk on fire")));
        assert_eq!(f.chain_line(), "outer: disk on fire");
        assert_eq!(one_line("a\nb\nc"), "a: b: c");
    }
}
