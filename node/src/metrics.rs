//! Every metric the node exports, defined in one place: each family's name, help, unit and
//! labels are registered once in a prometheus-client [`Registry`], and the library's
//! encoder writes them in the Prometheus text format (version 0.0.4) at `GET /metrics`.
//!
//! The text used to be written by hand, and repeated a family's HELP and TYPE lines for
//! each of its label values, which Prometheus's own parser rejects; `tests/metrics.rs`
//! now feeds the output to that parser. The 0.0.4 format (not OpenMetrics) is kept
//! because every Prometheus scrapes it and the project's scripts and tests read its sample
//! lines, which are the same as before.
//!
//! Counters are the library's atomics: the hot path bumps them from many threads without
//! a lock. Series whose label values are fixed (one per [`ShardKind`], one per kind of
//! wait) are created here once and kept as handles, so a bump never looks up a label set.
//!
//! Not for: tracing spans or logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::kind::{ShardId, ShardKind};

/// The `Content-Type` of [`Metrics::render`]'s text, for the HTTP response.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The node's metrics; one per process, shared by every component that counts.
pub struct Metrics {
    /// Every family below, for the encoder; it holds handles to the same atomics.
    registry: Registry,
    applied_players: Counter,
    applied_channels: Counter,
    consumed_records: Counter,
    invalid_records: Counter,
    duplicate_records: Counter,
    future_records: Counter,
    dead_letters: Counter,
    dead_letters_dropped: Counter,
    entity_loads: Counter,
    passivations: Counter,
    checkpoints: Counter,
    checkpoint_rows: Counter,
    checkpoint_micros: Counter,
    source_wait_kafka_micros: Counter,
    source_wait_shards_micros: Counter,
    ingest_accepted: Counter,
    ingest_rejected: Counter,
    ingest_transactions: Counter,
    ingest_failed_transactions: Counter,
    /// `tally_durable_offset`: one series per shard this node holds; a shard that moves
    /// away takes its series with it.
    durable_gauge: Family<ShardLabels, Gauge>,
    /// The same offsets, for the poll loop's commits to Kafka: the family cannot be
    /// listed. Written under this lock together with `durable_gauge`.
    durable: Mutex<BTreeMap<ShardId, i64>>,
}

/// The `kind` label: which entities a shard hosts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: ShardKind,
}

/// The labels of a per-shard series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    kind: ShardKind,
    partition: i32,
}

/// The `on` label of `tally_source_wait_micros_total`: what the poll loop waited for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabel {
    on: WaitedOn,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum WaitedOn {
    /// Records to arrive.
    Kafka,
    /// A shard to take a batch (backpressure).
    Shards,
}

impl EncodeLabelValue for ShardKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

impl EncodeLabelValue for WaitedOn {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            WaitedOn::Kafka => "kafka",
            WaitedOn::Shards => "shards",
        })
    }
}

/// Registers a counter without labels. Names leave out `_total` (and the unit): the
/// encoder appends them.
fn counter(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Counter {
    let counter = Counter::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, counter.clone()),
        None => registry.register(name, help, counter.clone()),
    }
    counter
}

/// The unit of the time counters. Prometheus prefers seconds; microseconds are what the
/// counters always counted, and dashboards read their names.
fn micros() -> Unit {
    Unit::Other("micros".into())
}

/// The counters of records and entities, in the order of their fields.
fn record_counters(registry: &mut Registry) -> [Counter; 8] {
    let consumed_records = counter(
        registry,
        "tally_records_consumed",
        "Kafka records polled by this node",
        None,
    );
    let invalid_records = counter(
        registry,
        "tally_records_invalid",
        "Kafka records skipped because they did not decode or validate",
        None,
    );
    let duplicate_records = counter(
        registry,
        "tally_records_duplicate",
        "Kafka records not applied because their (entity, player, event id) was seen within \
         shard.dedupe_window_secs",
        None,
    );
    let future_records = counter(
        registry,
        "tally_records_future",
        "Kafka records not applied because their ts was more than \
         shard.future_tolerance_secs after their arrival",
        None,
    );
    let dead_letters = counter(
        registry,
        "tally_consumer_dead_letters",
        "Records the consumer sent to the dead-letter topic (invalid or future-dated \
         records read from Kafka)",
        None,
    );
    let dead_letters_dropped = counter(
        registry,
        "tally_consumer_dead_letters_dropped",
        "Dead letters the consumer could not queue for Kafka (producer queue full); the \
         record was still skipped and counted",
        None,
    );
    let entity_loads = counter(
        registry,
        "tally_entity_loads",
        "Entities read back from Cassandra on activation",
        None,
    );
    let passivations = counter(
        registry,
        "tally_entity_passivations",
        "Idle entities evicted from memory after being checkpointed",
        None,
    );
    [
        consumed_records,
        invalid_records,
        duplicate_records,
        future_records,
        dead_letters,
        dead_letters_dropped,
        entity_loads,
        passivations,
    ]
}

/// The counters of HTTP ingest: accepted, rejected, transactions, failed transactions.
fn ingest_counters(registry: &mut Registry) -> (Counter, Counter, Counter, Counter) {
    let ingest_accepted = counter(
        registry,
        "tally_ingest_events_accepted",
        "Events accepted by HTTP ingest and acknowledged by Kafka",
        None,
    );
    let ingest_rejected = counter(
        registry,
        "tally_ingest_events_rejected",
        "Events rejected by HTTP ingest (sent to the dead-letter topic)",
        None,
    );
    let ingest_transactions = counter(
        registry,
        "tally_ingest_transactions",
        "Kafka transactions committed by HTTP ingest",
        None,
    );
    let ingest_failed_transactions = counter(
        registry,
        "tally_ingest_failed_transactions",
        "Kafka transactions of HTTP ingest that failed (aborted, or not confirmed in time); \
         their requests were retried alone or answered an error",
        None,
    );
    (
        ingest_accepted,
        ingest_rejected,
        ingest_transactions,
        ingest_failed_transactions,
    )
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // Help texts end without a period: the library adds one.
        let applied = Family::<KindLabel, Counter>::default();
        registry.register(
            "tally_records_applied",
            "Kafka records applied to entities",
            applied.clone(),
        );
        let [consumed_records, invalid_records, duplicate_records, future_records, dead_letters, dead_letters_dropped, entity_loads, passivations] =
            record_counters(&mut registry);
        let checkpoints = counter(
            &mut registry,
            "tally_checkpoints",
            "Completed shard checkpoints",
            None,
        );
        let checkpoint_rows = counter(
            &mut registry,
            "tally_checkpoint_rows",
            "Entity rows written by checkpoints",
            None,
        );
        let checkpoint_micros = counter(
            &mut registry,
            "tally_checkpoint",
            "Time spent writing checkpoints, microseconds",
            Some(micros()),
        );
        let source_wait = Family::<WaitLabel, Counter>::default();
        registry.register_with_unit(
            "tally_source_wait",
            "Time the Kafka poll loop waited, microseconds: for records to arrive (on=kafka) \
             or for a shard to take a batch (on=shards, backpressure)",
            micros(),
            source_wait.clone(),
        );
        let (ingest_accepted, ingest_rejected, ingest_transactions, ingest_failed_transactions) =
            ingest_counters(&mut registry);
        let durable_gauge = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "tally_durable_offset",
            "Resume offset durable in Cassandra per shard",
            durable_gauge.clone(),
        );
        let kind = |kind| applied.get_or_create_owned(&KindLabel { kind });
        let on = |on| source_wait.get_or_create_owned(&WaitLabel { on });
        Metrics {
            applied_players: kind(ShardKind::Players),
            applied_channels: kind(ShardKind::Channels),
            consumed_records,
            invalid_records,
            duplicate_records,
            future_records,
            dead_letters,
            dead_letters_dropped,
            entity_loads,
            passivations,
            checkpoints,
            checkpoint_rows,
            checkpoint_micros,
            source_wait_kafka_micros: on(WaitedOn::Kafka),
            source_wait_shards_micros: on(WaitedOn::Shards),
            ingest_accepted,
            ingest_rejected,
            ingest_transactions,
            ingest_failed_transactions,
            durable_gauge,
            durable: Mutex::default(),
            registry,
        }
    }
}

impl Metrics {
    pub fn add_applied(&self, kind: ShardKind, n: u64) {
        match kind {
            ShardKind::Players => self.applied_players.inc_by(n),
            ShardKind::Channels => self.applied_channels.inc_by(n),
        };
    }
    pub fn add_consumed(&self, n: u64) {
        self.consumed_records.inc_by(n);
    }
    pub fn add_invalid_records(&self, n: u64) {
        self.invalid_records.inc_by(n);
    }
    pub fn add_duplicate_records(&self, n: u64) {
        self.duplicate_records.inc_by(n);
    }
    pub fn add_future_records(&self, n: u64) {
        self.future_records.inc_by(n);
    }
    /// Records the consumer sent to the dead-letter topic, and those it could not send.
    pub fn add_dead_letters(&self, sent: u64, dropped: u64) {
        self.dead_letters.inc_by(sent);
        self.dead_letters_dropped.inc_by(dropped);
    }
    pub fn add_entity_loads(&self, n: u64) {
        self.entity_loads.inc_by(n);
    }
    pub fn add_passivations(&self, n: u64) {
        self.passivations.inc_by(n);
    }
    pub fn record_checkpoint(&self, rows: u64, took: Duration) {
        self.checkpoints.inc();
        self.checkpoint_rows.inc_by(rows);
        self.checkpoint_micros.inc_by(took.as_micros() as u64);
    }
    /// Time the poll loop waited for Kafka to deliver records, and for a shard permit.
    pub fn add_source_wait(&self, kafka: Duration, shards: Duration) {
        self.source_wait_kafka_micros
            .inc_by(kafka.as_micros() as u64);
        self.source_wait_shards_micros
            .inc_by(shards.as_micros() as u64);
    }
    pub fn add_ingest(&self, accepted: u64, rejected: u64) {
        self.ingest_accepted.inc_by(accepted);
        self.ingest_rejected.inc_by(rejected);
    }
    pub fn add_ingest_transaction(&self) {
        self.ingest_transactions.inc();
    }
    pub fn add_ingest_failed_transaction(&self) {
        self.ingest_failed_transactions.inc();
    }
    pub fn set_durable(&self, kind: ShardKind, partition: i32, offset: i64) {
        let mut durable = self.durable.lock().expect("metrics lock");
        durable.insert((kind, partition), offset);
        self.durable_gauge
            .get_or_create(&ShardLabels { kind, partition })
            .set(offset);
    }

    /// Forgets a shard that moved away from this node.
    pub fn clear_durable(&self, kind: ShardKind, partition: i32) {
        let mut durable = self.durable.lock().expect("metrics lock");
        durable.remove(&(kind, partition));
        self.durable_gauge.remove(&ShardLabels { kind, partition });
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
        self.applied_players.get() + self.applied_channels.get()
    }
    pub fn checkpoint_rows(&self) -> u64 {
        self.checkpoint_rows.get()
    }

    /// The Prometheus text exposition (version 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and no label value here refuses to encode.
        prometheus_text::encode(&mut text, &self.registry).expect("metrics encode to a string");
        text
    }
}
