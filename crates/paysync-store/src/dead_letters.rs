//! Dead letters: the operators' working set, fed from the broker dead-letter queue.

use time::OffsetDateTime;

use crate::operators::{LETTER_COLUMNS, letter};
use crate::{Store, StoreError};

/// A dead letter about to be ingested.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// Unique per dead-lettering (ingest is idempotent on it).
    pub message_key: String,
    /// Provider, when the message said.
    pub provider: Option<String>,
    /// Provider event id (the AMQP message id).
    pub event_id: Option<String>,
    /// Event type, when the message said.
    pub event_type: Option<String>,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// All AMQP headers, as JSON.
    pub headers: serde_json::Value,
    /// The raw body.
    pub body: Vec<u8>,
    /// Error kind (closed set, e.g. `malformed_message`, `database_unavailable`; an exhausted
    /// retry keeps its cause's kind and says so in the chain).
    pub error_kind: String,
    /// The error and its causes, one per line.
    pub error_chain: String,
    /// Kind + code site digest: what groups failures.
    pub fingerprint: String,
    /// Attempts made.
    pub attempts: i32,
    /// First failure, unix milliseconds.
    pub first_failed_at_ms: i64,
    /// Last failure, unix milliseconds.
    pub last_failed_at_ms: i64,
    /// How often an operator had already retried it.
    pub redrives: i32,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// Row id (what operators refer to).
    pub id: i64,
    /// Provider event id.
    pub event_id: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Error kind.
    pub error_kind: String,
    /// Error chain.
    pub error_chain: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Attempts.
    pub attempts: i32,
    /// First failure.
    pub first_failed_at: OffsetDateTime,
    /// Last failure.
    pub last_failed_at: OffsetDateTime,
    /// `open`, `retried` or `archived`.
    pub state: String,
    /// Operator retries so far.
    pub redrives: i32,
    /// Routing key.
    pub routing_key: String,
    /// Headers.
    pub headers: serde_json::Value,
    /// Body.
    pub body: Vec<u8>,
}

const INSERT: &str = "insert into dead_letters \
    (message_key, provider, event_id, event_type, routing_key, headers, body, error_kind, error_chain, \
     fingerprint, attempts, first_failed_at, last_failed_at, redrives) \
    values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
            to_timestamp($12::bigint / 1000.0), to_timestamp($13::bigint / 1000.0), $14) \
    on conflict (message_key) do nothing";

impl Store {
    /// Dead letters per state (`open`, `retried`, `archived`); absent states have none.
    pub async fn dead_letter_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .0
            .query(
                "select state, count(*) from dead_letters group by state",
                &[],
            )
            .await
            .map_err(StoreError::db("count dead letters"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Stores a dead letter; `false` if this message was ingested before.
    pub async fn insert_dead_letter(&self, d: &NewDeadLetter) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .0
            .prepare_cached(INSERT)
            .await
            .map_err(StoreError::db("prepare dead letter"))?;
        let n = conn
            .0
            .execute(
                &stmt,
                &[
                    &d.message_key,
                    &d.provider,
                    &d.event_id,
                    &d.event_type,
                    &d.routing_key,
                    &d.headers,
                    &d.body,
                    &d.error_kind,
                    &d.error_chain,
                    &d.fingerprint,
                    &d.attempts,
                    &d.first_failed_at_ms,
                    &d.last_failed_at_ms,
                    &d.redrives,
                ],
            )
            .await
            .map_err(StoreError::db("insert dead letter"))?;
        Ok(n == 1)
    }

    /// Dead letters in `state`, oldest first (all states when `None`).
    pub async fn dead_letters(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "select {LETTER_COLUMNS} from dead_letters \
             where ($1::text is null or state = $1) order by id limit $2"
        );
        let rows = conn
            .0
            .query(&sql, &[&state, &limit.max(0)])
            .await
            .map_err(StoreError::db("list dead letters"))?;
        Ok(rows.iter().map(letter).collect())
    }
}
