//! Versioned CQL migrations from `cassandra-schema/`, applied at node start.
//!
//! Every migration is idempotent on its own (`IF NOT EXISTS`), and applied versions are
//! recorded in `<keyspace>.schema_migrations`, so several nodes starting at once and
//! restarts are both safe. `{keyspace}` and `{replication}` in the files are replaced with
//! the configured values.
//!
//! Not for: data migrations of entity blobs; those are versioned inside the blob.

use anyhow::Context;
use scylla::client::session::Session;
use tracing::info;

use crate::config::CassandraConfig;

/// One migration file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

impl Migration {
    const fn new(version: i32, name: &'static str, cql: &'static str) -> Migration {
        Migration { version, name, cql }
    }
}

/// All migrations, in order. A new file in cassandra-schema/ gets a line here.
#[rustfmt::skip] // a line a migration: the list reads as the folder does
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(1, "keyspace", include_str!("../../../cassandra-schema/0001_keyspace.cql")),
    Migration::new(2, "entities", include_str!("../../../cassandra-schema/0002_entities.cql")),
    Migration::new(3, "channel_log", include_str!("../../../cassandra-schema/0003_channel_log.cql")),
    Migration::new(4, "player_buckets", include_str!("../../../cassandra-schema/0004_player_buckets.cql")),
    Migration::new(5, "dedupe_mark", include_str!("../../../cassandra-schema/0005_dedupe_mark.cql")),
    Migration::new(6, "history", include_str!("../../../cassandra-schema/0006_history.cql")),
];

/// The statements of a migration, placeholders filled, comments dropped.
pub fn statements(migration: &Migration, cfg: &CassandraConfig) -> Vec<String> {
    let text: String = migration
        .cql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{keyspace}", &cfg.keyspace)
                .replace("{replication}", &cfg.replication.to_cql())
        })
        .collect()
}

/// Applies every migration not yet recorded; returns how many were applied now.
pub async fn migrate(session: &Session, cfg: &CassandraConfig) -> anyhow::Result<usize> {
    let ks = &cfg.keyspace;
    // The keyspace must exist before the ledger can; its migration is idempotent.
    for stmt in statements(&MIGRATIONS[0], cfg) {
        session
            .query_unpaged(stmt.as_str(), ())
            .await
            .with_context(|| format!("apply migration 1 ({stmt})"))?;
    }
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations \
                 (version int PRIMARY KEY, name text, applied_at timestamp)"
            ),
            (),
        )
        .await
        .context("create table schema_migrations")?;
    session
        .await_schema_agreement()
        .await
        .context("await schema agreement")?;

    let applied: Vec<i32> = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
        .await
        .context("read schema_migrations")?
        .into_rows_result()
        .context("read schema_migrations rows")?
        .rows::<(i32,)>()
        .context("decode schema_migrations rows")?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .context("decode schema_migrations row")?;

    let mut count = 0;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        for stmt in statements(migration, cfg) {
            session
                .query_unpaged(stmt.as_str(), ())
                .await
                .with_context(|| {
                    format!(
                        "apply migration {} ({}): {stmt}",
                        migration.version, migration.name
                    )
                })?;
        }
        session
            .await_schema_agreement()
            .await
            .context("await schema agreement")?;
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, name, applied_at) \
                     VALUES (?, ?, toTimestamp(now()))"
                ),
                (migration.version, migration.name),
            )
            .await
            .with_context(|| format!("record migration {}", migration.version))?;
        info!(version = migration.version, name = migration.name, keyspace = %ks, "applied migration");
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_placeholders_filled() {
        let cfg = CassandraConfig {
            keyspace: "ks_test".into(),
            ..Default::default()
        };
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            for s in statements(m, &cfg) {
                assert!(
                    !s.contains('{') || s.contains("'class'"),
                    "unfilled placeholder: {s}"
                );
                assert!(!s.contains("--"), "comment left in: {s}");
            }
        }
        let first = statements(&MIGRATIONS[0], &cfg);
        assert_eq!(
            first,
            vec!["CREATE KEYSPACE IF NOT EXISTS ks_test WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"]
        );
    }
}
