//! Every metric the node exports, defined in one place, rendered in the Prometheus text
//! format at `GET /metrics`.
//!
//! Counters are plain atomics bumped on the hot path; names, units and meaning live in
//! [`Metrics::render`]. Not for: tracing spans or logs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::kind::ShardKind;

#[derive(Default)]
pub struct Metrics {
    applied_player_records: AtomicU64,
    applied_channel_records: AtomicU64,
    consumed_records: AtomicU64,
    invalid_records: AtomicU64,
    duplicate_records: AtomicU64,
    future_records: AtomicU64,
    dead_letters: AtomicU64,
    dead_letters_dropped: AtomicU64,
    entity_loads: AtomicU64,
    passivations: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_rows: AtomicU64,
    checkpoint_micros: AtomicU64,
    source_wait_kafka_micros: AtomicU64,
    source_wait_shards_micros: AtomicU64,
    ingest_accepted: AtomicU64,
    ingest_rejected: AtomicU64,
    ingest_transactions: AtomicU64,
    ingest_failed_transactions: AtomicU64,
    /// Durable resume offset per (kind, partition).
    durable: Mutex<BTreeMap<(ShardKind, i32), i64>>,
}

impl Metrics {
    pub fn add_applied(&self, kind: ShardKind, n: u64) {
        match kind {
            ShardKind::Players => self.applied_player_records.fetch_add(n, Relaxed),
            ShardKind::Channels => self.applied_channel_records.fetch_add(n, Relaxed),
        };
    }
    pub fn add_consumed(&self, n: u64) {
        self.consumed_records.fetch_add(n, Relaxed);
    }
    pub fn add_invalid_records(&self, n: u64) {
        self.invalid_records.fetch_add(n, Relaxed);
    }
    pub fn add_duplicate_records(&self, n: u64) {
        self.duplicate_records.fetch_add(n, Relaxed);
    }
    pub fn add_future_records(&self, n: u64) {
        self.future_records.fetch_add(n, Relaxed);
    }
    /// Records the consumer sent to the dead-letter topic, and those it could not send.
    pub fn add_dead_letters(&self, sent: u64, dropped: u64) {
        self.dead_letters.fetch_add(sent, Relaxed);
        self.dead_letters_dropped.fetch_add(dropped, Relaxed);
    }
    pub fn add_entity_loads(&self, n: u64) {
        self.entity_loads.fetch_add(n, Relaxed);
    }
    pub fn add_passivations(&self, n: u64) {
        self.passivations.fetch_add(n, Relaxed);
    }
    pub fn record_checkpoint(&self, rows: u64, took: Duration) {
        self.checkpoints.fetch_add(1, Relaxed);
        self.checkpoint_rows.fetch_add(rows, Relaxed);
        self.checkpoint_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }
    /// Time the poll loop waited for Kafka to deliver records, and for a shard permit.
    pub fn add_source_wait(&self, kafka: Duration, shards: Duration) {
        self.source_wait_kafka_micros
            .fetch_add(kafka.as_micros() as u64, Relaxed);
        self.source_wait_shards_micros
            .fetch_add(shards.as_micros() as u64, Relaxed);
    }
    pub fn add_ingest(&self, accepted: u64, rejected: u64) {
        self.ingest_accepted.fetch_add(accepted, Relaxed);
        self.ingest_rejected.fetch_add(rejected, Relaxed);
    }
    pub fn add_ingest_transaction(&self) {
        self.ingest_transactions.fetch_add(1, Relaxed);
    }
    pub fn add_ingest_failed_transaction(&self) {
        self.ingest_failed_transactions.fetch_add(1, Relaxed);
    }
    pub fn set_durable(&self, kind: ShardKind, partition: i32, offset: i64) {
        self.durable
            .lock()
            .expect("metrics lock")
            .insert((kind, partition), offset);
    }

    /// Forgets a shard that moved away from this node.
    pub fn clear_durable(&self, kind: ShardKind, partition: i32) {
        self.durable
            .lock()
            .expect("metrics lock")
            .remove(&(kind, partition));
    }

    /// Durable resume offsets as (kind, partition, offset).
    pub fn durable_offsets(&self) -> Vec<(ShardKind, i32, i64)> {
        self.durable
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|((k, p), o)| (*k, *p, *o))
            .collect()
    }

    /// Records applied to entities (players + channels); tests and benchmarks read it.
    pub fn applied_total(&self) -> u64 {
        self.applied_player_records.load(Relaxed) + self.applied_channel_records.load(Relaxed)
    }
    pub fn checkpoint_rows(&self) -> u64 {
        self.checkpoint_rows.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {v}\n"
            ));
        };
        counter(
            "tally_records_applied_total",
            "Kafka records applied to entities.",
            "{kind=\"players\"}",
            self.applied_player_records.load(Relaxed),
        );
        counter(
            "tally_records_applied_total",
            "Kafka records applied to entities.",
            "{kind=\"channels\"}",
            self.applied_channel_records.load(Relaxed),
        );
        counter(
            "tally_records_consumed_total",
            "Kafka records polled by this node.",
            "",
            self.consumed_records.load(Relaxed),
        );
        counter(
            "tally_records_invalid_total",
            "Kafka records skipped because they did not decode or validate.",
            "",
            self.invalid_records.load(Relaxed),
        );
        counter(
            "tally_records_duplicate_total",
            "Kafka records not applied because their (entity, player, event id) was seen within shard.dedupe_window_secs.",
            "",
            self.duplicate_records.load(Relaxed),
        );
        counter(
            "tally_records_future_total",
            "Kafka records not applied because their ts was more than shard.future_tolerance_secs after their arrival.",
            "",
            self.future_records.load(Relaxed),
        );
        counter(
            "tally_consumer_dead_letters_total",
            "Records the consumer sent to the dead-letter topic (invalid or future-dated records read from Kafka).",
            "",
            self.dead_letters.load(Relaxed),
        );
        counter(
            "tally_consumer_dead_letters_dropped_total",
            "Dead letters the consumer could not queue for Kafka (producer queue full); the record was still skipped and counted.",
            "",
            self.dead_letters_dropped.load(Relaxed),
        );
        counter(
            "tally_entity_loads_total",
            "Entities read back from Cassandra on activation.",
            "",
            self.entity_loads.load(Relaxed),
        );
        counter(
            "tally_entity_passivations_total",
            "Idle entities evicted from memory after being checkpointed.",
            "",
            self.passivations.load(Relaxed),
        );
        counter(
            "tally_checkpoints_total",
            "Completed shard checkpoints.",
            "",
            self.checkpoints.load(Relaxed),
        );
        counter(
            "tally_checkpoint_rows_total",
            "Entity rows written by checkpoints.",
            "",
            self.checkpoint_rows.load(Relaxed),
        );
        counter(
            "tally_checkpoint_micros_total",
            "Time spent writing checkpoints, microseconds.",
            "",
            self.checkpoint_micros.load(Relaxed),
        );
        counter(
            "tally_source_wait_micros_total",
            "Time the Kafka poll loop waited, microseconds: for records to arrive (on=kafka) or for a shard to take a batch (on=shards, backpressure).",
            "{on=\"kafka\"}",
            self.source_wait_kafka_micros.load(Relaxed),
        );
        counter(
            "tally_source_wait_micros_total",
            "Time the Kafka poll loop waited, microseconds: for records to arrive (on=kafka) or for a shard to take a batch (on=shards, backpressure).",
            "{on=\"shards\"}",
            self.source_wait_shards_micros.load(Relaxed),
        );
        counter(
            "tally_ingest_events_accepted_total",
            "Events accepted by HTTP ingest and acknowledged by Kafka.",
            "",
            self.ingest_accepted.load(Relaxed),
        );
        counter(
            "tally_ingest_events_rejected_total",
            "Events rejected by HTTP ingest (sent to the dead-letter topic).",
            "",
            self.ingest_rejected.load(Relaxed),
        );
        counter(
            "tally_ingest_transactions_total",
            "Kafka transactions committed by HTTP ingest.",
            "",
            self.ingest_transactions.load(Relaxed),
        );
        counter(
            "tally_ingest_failed_transactions_total",
            "Kafka transactions of HTTP ingest that failed (aborted, or not confirmed in time); their requests were retried alone or answered an error.",
            "",
            self.ingest_failed_transactions.load(Relaxed),
        );
        out.push_str("# HELP tally_durable_offset Resume offset durable in Cassandra per shard.\n# TYPE tally_durable_offset gauge\n");
        for ((kind, p), off) in self.durable.lock().expect("metrics lock").iter() {
            out.push_str(&format!(
                "tally_durable_offset{{kind=\"{}\",partition=\"{p}\"}} {off}\n",
                kind.label()
            ));
        }
        out
    }
}
