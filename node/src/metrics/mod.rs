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
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::kind::{ChangeKind, MemberStatus, ShardId, ShardKind};

mod labels;
mod push;
mod shard;
mod stages;

pub use labels::HistorySource;
pub use labels::RejectReason;
use labels::{
    ChangeLabels, HistorySourceLabel, HttpLabels, KindLabel, ReasonLabel, RouteLabel, ShardLabels,
    StatusLabel, WaitLabel, WaitedOn,
};
pub use push::PushMetrics;
pub use shard::ShardMetrics;
pub use stages::StageMetrics;

/// The `Content-Type` of [`Metrics::render`]'s text, for the HTTP response.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The node's metrics; one per process, shared by every component that counts.
pub struct Metrics {
    /// Every family below, for the encoder; it holds handles to the same atomics.
    registry: Registry,
    /// `tally_records_applied_total`, by kind (players, channels).
    applied: [Counter; 2],
    /// `tally_history_bucket_writes_total`, by kind: bucket rows checkpoints wrote.
    bucket_writes: [Counter; 2],
    /// `tally_history_queries_total`, by [`HistorySource`] (in its order).
    history_queries: [Counter; 3],
    history_cache_bytes: Gauge,
    /// `tally_history_bucket_loads_total`: buckets read back from Cassandra.
    bucket_loads: Counter,
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
    /// `tally_ingest_events_rejected_total`, one series per [`RejectReason`] (in its order).
    ingest_rejected: [Counter; 4],
    ingest_transactions: Counter,
    ingest_failed_transactions: Counter,
    /// `tally_durable_offset`: one series per shard this node holds; a shard that moves
    /// away takes its series with it.
    durable_gauge: Family<ShardLabels, Gauge>,
    /// The same offsets, for the poll loop's commits to Kafka: the family cannot be
    /// listed. Written under this lock together with `durable_gauge`.
    durable: Mutex<BTreeMap<ShardId, i64>>,
    /// The per-shard families (see [`ShardMetrics`]).
    shards: shard::Families,
    /// The push path's series.
    pub push: PushMetrics,
    /// Where an event's time goes, stage by stage.
    pub stages: StageMetrics,
    /// Per-batch apply time and checkpoint time, by kind (players, channels).
    apply_seconds: [Histogram; 2],
    checkpoint_seconds: [Histogram; 2],
    checkpoint_bytes: [Counter; 2],
    forwarded: [Counter; 2],
    ownership_changes: Family<ChangeLabels, Counter>,
    members: Family<StatusLabel, Gauge>,
    members_suspected: Gauge,
    ready: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
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

/// Completed checkpoints, their entity rows, their time in microseconds.
fn checkpoint_counters(registry: &mut Registry) -> [Counter; 3] {
    let checkpoints = counter(
        registry,
        "tally_checkpoints",
        "Completed shard checkpoints",
        None,
    );
    let checkpoint_rows = counter(
        registry,
        "tally_checkpoint_rows",
        "Entity rows written by checkpoints",
        None,
    );
    let checkpoint_micros = counter(
        registry,
        "tally_checkpoint",
        "Time spent writing checkpoints, microseconds",
        Some(micros()),
    );
    [checkpoints, checkpoint_rows, checkpoint_micros]
}

/// Counters of HTTP ingest.
struct IngestCounters {
    accepted: Counter,
    rejected: [Counter; 4],
    transactions: Counter,
    failed_transactions: Counter,
}

fn ingest_counters(registry: &mut Registry) -> IngestCounters {
    let accepted = counter(
        registry,
        "tally_ingest_events_accepted",
        "Events accepted by HTTP ingest and acknowledged by Kafka",
        None,
    );
    let rejected = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "tally_ingest_events_rejected",
        "Events rejected by HTTP ingest (sent to the dead-letter topic), by reason: body (the \
         whole request body, counted once), too_large, future, invalid",
        rejected.clone(),
    );
    let transactions = counter(
        registry,
        "tally_ingest_transactions",
        "Kafka transactions committed by HTTP ingest",
        None,
    );
    let failed_transactions = counter(
        registry,
        "tally_ingest_failed_transactions",
        "Kafka transactions of HTTP ingest that failed (aborted, or not confirmed in time); \
         their requests were retried alone or answered an error",
        None,
    );
    IngestCounters {
        accepted,
        rejected: RejectReason::ALL
            .map(|reason| rejected.get_or_create_owned(&ReasonLabel { reason })),
        transactions,
        failed_transactions,
    }
}

/// Histogram buckets: 16, doubling from 50 µs (to about 1.6 s): one batch's apply.
fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Buckets doubling from 1 ms (to about 33 s): a checkpoint.
fn checkpoint_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Buckets doubling from 0.5 ms (to about 16 s): an HTTP request.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// One series per [`ShardKind`] of a family labelled by kind, in `ShardKind::ALL` order.
fn per_kind<M: Clone, C: prometheus_client::metrics::family::MetricConstructor<M>>(
    family: &Family<KindLabel, M, C>,
) -> [M; 2] {
    ShardKind::ALL.map(|kind| family.get_or_create_owned(&KindLabel { kind }))
}

/// How long shards take: per-batch apply and checkpoint histograms, checkpoint bytes.
struct ShardTimes {
    apply_seconds: [Histogram; 2],
    checkpoint_seconds: [Histogram; 2],
    checkpoint_bytes: [Counter; 2],
}

fn shard_times(registry: &mut Registry) -> ShardTimes {
    let apply =
        Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(apply_histogram);
    registry.register_with_unit(
        "tally_apply_duration",
        "Time a shard took to apply one batch of records, including loading the entities it \
         touched that were not resident",
        Unit::Seconds,
        apply.clone(),
    );
    let checkpoint = Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
        checkpoint_histogram,
    );
    registry.register_with_unit(
        "tally_checkpoint_duration",
        "Time one shard checkpoint took to write its entities and progress to Cassandra",
        Unit::Seconds,
        checkpoint.clone(),
    );
    let bytes = Family::<KindLabel, Counter>::default();
    registry.register_with_unit(
        "tally_checkpoint",
        "Bytes of entity state written by checkpoints (encoded rows, without CQL overhead)",
        Unit::Bytes,
        bytes.clone(),
    );
    ShardTimes {
        apply_seconds: per_kind(&apply),
        checkpoint_seconds: per_kind(&checkpoint),
        checkpoint_bytes: per_kind(&bytes),
    }
}

/// The cluster as this node sees it, and its HTTP traffic.
struct ClusterMetrics {
    forwarded: [Counter; 2],
    ownership_changes: Family<ChangeLabels, Counter>,
    members: Family<StatusLabel, Gauge>,
    members_suspected: Gauge,
    ready: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

fn cluster_metrics(registry: &mut Registry) -> ClusterMetrics {
    let forwarded = Family::<KindLabel, Counter>::default();
    registry.register(
        "tally_queries_forwarded",
        "Queries this node forwarded to the owner of the entity's partition",
        forwarded.clone(),
    );
    let ownership_changes = Family::<ChangeLabels, Counter>::default();
    registry.register(
        "tally_ownership_changes",
        "Partitions this node acquired or released",
        ownership_changes.clone(),
    );
    let members = Family::<StatusLabel, Gauge>::default();
    registry.register(
        "tally_cluster_members",
        "Live cluster members this node sees through gossip, itself included, by the status \
         they advertise",
        members.clone(),
    );
    let members_suspected = Gauge::default();
    registry.register(
        "tally_cluster_members_suspected",
        "Members gossip's failure detector holds dead (not yet forgotten)",
        members_suspected.clone(),
    );
    let ready = Gauge::default();
    registry.register(
        "tally_node_ready",
        "1 while the node reports ready on /readyz, else 0",
        ready.clone(),
    );
    let http_requests = Family::<HttpLabels, Counter>::default();
    registry.register(
        "tally_http_requests",
        "HTTP requests answered, by route pattern and status",
        http_requests.clone(),
    );
    let http_seconds =
        Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(http_histogram);
    registry.register_with_unit(
        "tally_http_request_duration",
        "Time from a request's arrival to its response, by route pattern",
        Unit::Seconds,
        http_seconds.clone(),
    );
    ClusterMetrics {
        forwarded: per_kind(&forwarded),
        ownership_changes,
        members,
        members_suspected,
        ready,
        http_requests,
        http_seconds,
    }
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
        let bucket_writes = Family::<KindLabel, Counter>::default();
        registry.register(
            "tally_history_bucket_writes",
            "History bucket rows written by checkpoints (global partials included)",
            bucket_writes.clone(),
        );
        let history_queries = Family::<HistorySourceLabel, Counter>::default();
        registry.register(
            "tally_history_queries",
            "Entity history and records queries answered here, by where their stored buckets \
             came from: source=hit (the owner's cache), fill (Cassandra, then kept), cassandra \
             (Cassandra only)",
            history_queries.clone(),
        );
        let history_cache_bytes = Gauge::default();
        registry.register_with_unit(
            "tally_history_cache",
            "Bytes of stored buckets the owner's history cache holds (history.cache_mib)",
            Unit::Bytes,
            history_cache_bytes.clone(),
        );
        let bucket_loads = Counter::default();
        registry.register(
            "tally_history_bucket_loads",
            "History buckets read back from Cassandra (late events, takeovers)",
            bucket_loads.clone(),
        );
        let [consumed_records, invalid_records, duplicate_records, future_records, dead_letters, dead_letters_dropped, entity_loads, passivations] =
            record_counters(&mut registry);
        let [checkpoints, checkpoint_rows, checkpoint_micros] = checkpoint_counters(&mut registry);
        let source_wait = Family::<WaitLabel, Counter>::default();
        registry.register_with_unit(
            "tally_source_wait",
            "Time the Kafka poll loop waited, microseconds: for records to arrive (on=kafka) \
             or for a shard to take a batch (on=shards, backpressure)",
            micros(),
            source_wait.clone(),
        );
        let ingest = ingest_counters(&mut registry);
        let durable_gauge = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "tally_durable_offset",
            "Resume offset durable in Cassandra per shard",
            durable_gauge.clone(),
        );
        let shards = shard::Families::register(&mut registry);
        let times = shard_times(&mut registry);
        let cluster = cluster_metrics(&mut registry);
        let push = PushMetrics::register(&mut registry);
        let stages = StageMetrics::register(&mut registry);
        let on = |on| source_wait.get_or_create_owned(&WaitLabel { on });
        Metrics {
            applied: per_kind(&applied),
            bucket_writes: per_kind(&bucket_writes),
            history_queries: HistorySource::ALL
                .map(|source| history_queries.get_or_create_owned(&HistorySourceLabel { source })),
            history_cache_bytes,
            bucket_loads,
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
            ingest_accepted: ingest.accepted,
            ingest_rejected: ingest.rejected,
            ingest_transactions: ingest.transactions,
            ingest_failed_transactions: ingest.failed_transactions,
            durable_gauge,
            durable: Mutex::default(),
            shards,
            push,
            stages,
            apply_seconds: times.apply_seconds,
            checkpoint_seconds: times.checkpoint_seconds,
            checkpoint_bytes: times.checkpoint_bytes,
            forwarded: cluster.forwarded,
            ownership_changes: cluster.ownership_changes,
            members: cluster.members,
            members_suspected: cluster.members_suspected,
            ready: cluster.ready,
            http_requests: cluster.http_requests,
            http_seconds: cluster.http_seconds,
            registry,
        }
    }
}

/// Index of a kind in the per-kind arrays.
fn at(kind: ShardKind) -> usize {
    match kind {
        ShardKind::Players => 0,
        ShardKind::Channels => 1,
    }
}

impl Metrics {
    pub fn add_applied(&self, kind: ShardKind, n: u64) {
        self.applied[at(kind)].inc_by(n);
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
    /// A history query answered with buckets from `source`; the cache then held `bytes`.
    pub fn add_history_query(&self, source: HistorySource, cache_bytes: usize) {
        self.history_queries[source as usize].inc();
        self.history_cache_bytes.set(cache_bytes as i64);
    }
    pub fn add_bucket_writes(&self, kind: ShardKind, n: u64) {
        self.bucket_writes[at(kind)].inc_by(n);
    }
    pub fn add_bucket_loads(&self, n: u64) {
        self.bucket_loads.inc_by(n);
    }
    pub fn add_entity_loads(&self, n: u64) {
        self.entity_loads.inc_by(n);
    }
    pub fn add_passivations(&self, n: u64) {
        self.passivations.inc_by(n);
    }
    /// One batch applied by a shard of `kind`, in `took`.
    pub fn observe_apply(&self, kind: ShardKind, took: Duration) {
        self.apply_seconds[at(kind)].observe(took.as_secs_f64());
    }
    /// One completed checkpoint: its entity rows, their encoded bytes, its time.
    pub fn record_checkpoint(&self, kind: ShardKind, rows: u64, bytes: u64, took: Duration) {
        self.checkpoints.inc();
        self.checkpoint_rows.inc_by(rows);
        self.checkpoint_micros.inc_by(took.as_micros() as u64);
        self.checkpoint_bytes[at(kind)].inc_by(bytes);
        self.checkpoint_seconds[at(kind)].observe(took.as_secs_f64());
    }
    /// Time the poll loop waited for Kafka to deliver records, and for a shard permit.
    pub fn add_source_wait(&self, kafka: Duration, shards: Duration) {
        self.source_wait_kafka_micros
            .inc_by(kafka.as_micros() as u64);
        self.source_wait_shards_micros
            .inc_by(shards.as_micros() as u64);
    }
    pub fn add_ingest_accepted(&self, n: u64) {
        self.ingest_accepted.inc_by(n);
    }
    pub fn add_ingest_rejected(&self, reason: RejectReason, n: u64) {
        self.ingest_rejected[reason as usize].inc_by(n);
    }
    pub fn add_ingest_transaction(&self) {
        self.ingest_transactions.inc();
    }
    pub fn add_ingest_failed_transaction(&self) {
        self.ingest_failed_transactions.inc();
    }
    pub fn add_forwarded(&self, kind: ShardKind) {
        self.forwarded[at(kind)].inc();
    }
    pub fn add_ownership_change(&self, kind: ShardKind, change: ChangeKind) {
        self.ownership_changes
            .get_or_create(&ChangeLabels { kind, change })
            .inc();
    }
    /// The live members by status, and how many the failure detector holds dead.
    pub fn set_members(&self, by_status: &[(MemberStatus, i64)], suspected: i64) {
        for (status, n) in by_status {
            self.members
                .get_or_create(&StatusLabel { status: *status })
                .set(*n);
        }
        self.members_suspected.set(suspected);
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
    /// One HTTP request answered: its route pattern (or `unmatched`), status and time.
    pub fn observe_http(&self, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }
    pub fn set_durable(&self, kind: ShardKind, partition: i32, offset: i64) {
        let mut durable = self.durable.lock().expect("metrics lock");
        durable.insert((kind, partition), offset);
        self.durable_gauge
            .get_or_create(&ShardLabels { kind, partition })
            .set(offset);
    }

    /// The series of one shard, created if they are not there yet.
    pub fn shard(&self, kind: ShardKind, partition: i32) -> ShardMetrics {
        let of_kind = self.applied[at(kind)].clone();
        self.shards.of(ShardLabels { kind, partition }, of_kind)
    }

    /// Forgets a shard that moved away from this node: every per-shard series goes.
    pub fn forget_shard(&self, kind: ShardKind, partition: i32) {
        let mut durable = self.durable.lock().expect("metrics lock");
        durable.remove(&(kind, partition));
        let labels = ShardLabels { kind, partition };
        self.durable_gauge.remove(&labels);
        self.shards.remove(&labels);
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
        self.applied.iter().map(Counter::get).sum()
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
