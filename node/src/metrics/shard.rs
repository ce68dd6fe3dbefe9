//! The series of one shard: records applied, lag, last checkpoint, resident entities.
//!
//! A shard takes its handles once when it starts ([`super::Metrics::shard`]) and bumps
//! them without a lookup; when its partition moves away the node removes the series
//! ([`super::Metrics::forget_shard`]), so a node only exports the shards it holds.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::ShardLabels;

/// The per-shard families, registered once.
pub(super) struct Families {
    applied: Family<ShardLabels, Counter>,
    lag: Family<ShardLabels, Gauge>,
    last_checkpoint: Family<ShardLabels, Gauge<f64, AtomicU64>>,
    resident_entities: Family<ShardLabels, Gauge>,
    resident_bytes: Family<ShardLabels, Gauge>,
}

impl Families {
    pub(super) fn register(registry: &mut Registry) -> Families {
        let applied = Family::default();
        registry.register(
            "tally_shard_records_applied",
            "Kafka records applied to entities, per shard",
            applied.clone(),
        );
        let lag = Family::default();
        registry.register_with_unit(
            "tally_shard_lag",
            "Records in the shard's partition after the last batch it applied: the partition's \
             high watermark at that batch's fetch minus the consumer's position after it",
            Unit::Other("records".into()),
            lag.clone(),
        );
        let last_checkpoint = Family::default();
        registry.register(
            "tally_checkpoint_last_timestamp_seconds",
            "Unix time at which the shard's last checkpoint completed (or found nothing to \
             write); 0 until its first",
            last_checkpoint.clone(),
        );
        let resident_entities = Family::default();
        registry.register(
            "tally_resident_entities",
            "Entities resident in the shard's memory",
            resident_entities.clone(),
        );
        let resident_bytes = Family::default();
        registry.register_with_unit(
            "tally_resident",
            "Bytes of the slab and index holding the shard's resident entities (what entities \
             allocate beyond their slot, such as a channel's viewer set, is not included)",
            Unit::Bytes,
            resident_bytes.clone(),
        );
        Families {
            applied,
            lag,
            last_checkpoint,
            resident_entities,
            resident_bytes,
        }
    }

    /// The series of `labels`' shard; `of_kind` is its kind's `tally_records_applied_total`.
    pub(super) fn of(&self, labels: ShardLabels, of_kind: Counter) -> ShardMetrics {
        ShardMetrics {
            applied: self.applied.get_or_create_owned(&labels),
            applied_of_kind: of_kind,
            lag: self.lag.get_or_create_owned(&labels),
            last_checkpoint: self.last_checkpoint.get_or_create_owned(&labels),
            resident_entities: self.resident_entities.get_or_create_owned(&labels),
            resident_bytes: self.resident_bytes.get_or_create_owned(&labels),
        }
    }

    pub(super) fn remove(&self, labels: &ShardLabels) {
        self.applied.remove(labels);
        self.lag.remove(labels);
        self.last_checkpoint.remove(labels);
        self.resident_entities.remove(labels);
        self.resident_bytes.remove(labels);
    }
}

/// One shard's series.
#[derive(Clone)]
pub struct ShardMetrics {
    applied: Counter,
    /// The kind's total of the same, bumped with it.
    applied_of_kind: Counter,
    lag: Gauge,
    last_checkpoint: Gauge<f64, AtomicU64>,
    resident_entities: Gauge,
    resident_bytes: Gauge,
}

impl ShardMetrics {
    /// Records applied: this shard's series and its kind's total.
    pub fn add_applied(&self, n: u64) {
        self.applied.inc_by(n);
        self.applied_of_kind.inc_by(n);
    }

    /// After a batch: the records of the partition after it (None: not known, the lag
    /// stays as it was).
    pub fn set_lag(&self, records_after: Option<i64>) {
        if let Some(n) = records_after {
            self.lag.set(n);
        }
    }

    /// A checkpoint completed now.
    pub fn checkpointed(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_checkpoint.set(now);
    }

    pub fn set_resident(&self, entities: usize, bytes: usize) {
        self.resident_entities.set(entities as i64);
        self.resident_bytes.set(bytes as i64);
    }
}
