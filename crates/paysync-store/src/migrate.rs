//! A small tracked migration scheme: each file in `migrations/` runs once, in order, inside
//! one transaction holding an advisory lock, and is recorded with its checksum. Two processes
//! migrating at once serialize on the lock; the second finds nothing left to do.

use sha2::{Digest, Sha256};

use crate::{Store, StoreError};

/// One migration, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number (the file's `NNNN_` prefix).
    pub version: i32,
    /// The file name without the prefix and extension.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this list matches `migrations/*.sql`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sql: include_str!("../../../migrations/0001_event_log.sql"),
    },
    Migration {
        version: 2,
        name: "dead_letters",
        sql: include_str!("../../../migrations/0002_dead_letters.sql"),
    },
    Migration {
        version: 3,
        name: "operator_actions",
        sql: include_str!("../../../migrations/0003_operator_actions.sql"),
    },
    Migration {
        version: 4,
        name: "billing",
        sql: include_str!("../../../migrations/0004_billing.sql"),
    },
    Migration {
        version: 5,
        name: "order_key_collation",
        sql: include_str!("../../../migrations/0005_order_key_collation.sql"),
    },
    Migration {
        version: 6,
        name: "event_log_storage",
        sql: include_str!("../../../migrations/0006_event_log_storage.sql"),
    },
    Migration {
        version: 7,
        name: "event_log_body",
        sql: include_str!("../../../migrations/0007_event_log_body.sql"),
    },
    Migration {
        version: 8,
        name: "outbox_deliveries",
        sql: include_str!("../../../migrations/0008_outbox_deliveries.sql"),
    },
    Migration {
        version: 9,
        name: "reconcile_checkpoints",
        sql: include_str!("../../../migrations/0009_reconcile_checkpoints.sql"),
    },
    Migration {
        version: 10,
        name: "console_indexes",
        sql: include_str!("../../../migrations/0010_console_indexes.sql"),
    },
    Migration {
        version: 11,
        name: "event_log_unlinked_index",
        sql: include_str!("../../../migrations/0011_event_log_unlinked_index.sql"),
    },
    Migration {
        version: 12,
        name: "event_replays",
        sql: include_str!("../../../migrations/0012_event_replays.sql"),
    },
    Migration {
        version: 13,
        name: "app_events",
        sql: include_str!("../../../migrations/0013_app_events.sql"),
    },
];

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

impl Store {
    /// Applies the pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .0
            .transaction()
            .await
            .map_err(StoreError::db("begin migration"))?;
        // Lock first (keyed by schema name), so concurrent migrators also serialize on
        // creating the schema itself.
        tx.execute(
            "select pg_advisory_xact_lock(hashtext('paysync-migrate:' || $1::text))",
            &[&self.schema],
        )
        .await
        .map_err(StoreError::db("migration lock"))?;
        if self.schema != "public" {
            // Invariant: the schema name was validated as a plain identifier in settings.
            tx.batch_execute(&format!("create schema if not exists {}", self.schema))
                .await
                .map_err(StoreError::db("create schema"))?;
        }
        tx.batch_execute(
            "create table if not exists paysync_migrations (
                version    integer primary key,
                name       text not null,
                checksum   text not null,
                applied_at timestamptz not null default now()
            )",
        )
        .await
        .map_err(StoreError::db("create migrations table"))?;
        let rows = tx
            .query("select version, checksum from paysync_migrations", &[])
            .await
            .map_err(StoreError::db("read migrations"))?;
        let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut now = Vec::new();
        for m in MIGRATIONS {
            match applied.iter().find(|(v, _)| *v == m.version) {
                Some((_, sum)) if *sum == checksum(m.sql) => continue,
                Some(_) => {
                    return Err(StoreError::MigrationChanged {
                        version: m.version,
                        name: m.name,
                    });
                }
                None => {}
            }
            tx.batch_execute(m.sql)
                .await
                .map_err(StoreError::db("apply migration"))?;
            tx.execute(
                "insert into paysync_migrations (version, name, checksum) values ($1, $2, $3)",
                &[&m.version, &m.name, &checksum(m.sql)],
            )
            .await
            .map_err(StoreError::db("record migration"))?;
            tracing::info!(version = m.version, name = m.name, "migration applied");
            now.push(m.version);
        }
        tx.commit()
            .await
            .map_err(StoreError::db("commit migration"))?;
        if !now.is_empty() {
            self.clear_statement_caches();
        }
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_matches_the_migrations_directory_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, listed);
        assert!(
            MIGRATIONS
                .windows(2)
                .all(|w| w[0].version + 1 == w[1].version)
        );
    }
}
