//! Where an event's time goes, stage by stage (docs/ARCHITECTURE.md, "Latency, stage by
//! stage"): in the ingest (queued for a transaction, produced until the broker appended
//! it, committed) and in the shard (appended until the source read it, read until it was
//! applied). The load tester adds the last stage, applied until a query saw it.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::kind::ShardKind;

/// The `stage` label of the ingest's stages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestStage {
    stage: &'static str,
}

/// The labels of the shard's stages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordStage {
    kind: ShardKind,
    stage: &'static str,
}

/// 0.25 ms to about 8 s, doubling.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Handles to the stage histograms.
#[derive(Clone)]
pub struct StageMetrics {
    /// queued, produce, commit.
    ingest: [Histogram; 3],
    /// By kind (players, channels): appended to read, read to applied.
    record: [[Histogram; 2]; 2],
}

impl StageMetrics {
    pub(super) fn register(registry: &mut Registry) -> StageMetrics {
        let ingest = Family::<IngestStage, Histogram, fn() -> Histogram>::new_with_constructor(
            stage_histogram,
        );
        registry.register_with_unit(
            "tally_ingest_stage_duration",
            "Time an ingested request spent in each stage, per request: queued (arrival to \
             its transaction's start: linger, the transaction before), produce (until the \
             broker acknowledged every record), commit (until the commit returned)",
            Unit::Seconds,
            ingest.clone(),
        );
        let record = Family::<RecordStage, Histogram, fn() -> Histogram>::new_with_constructor(
            stage_histogram,
        );
        registry.register_with_unit(
            "tally_record_stage_duration",
            "Time a record spent in each stage after Kafka, per batch for its oldest record: \
             appended_to_read (from the broker's append time, the commit and the fetch \
             included, to the source reading it) and read_to_applied (queued for its shard \
             and applied)",
            Unit::Seconds,
            record.clone(),
        );
        let stage = |stage| ingest.get_or_create_owned(&IngestStage { stage });
        let of = |kind| {
            ["appended_to_read", "read_to_applied"]
                .map(|stage| record.get_or_create_owned(&RecordStage { kind, stage }))
        };
        StageMetrics {
            ingest: ["queued", "produce", "commit"].map(stage),
            record: ShardKind::ALL.map(of),
        }
    }

    /// One committed request's stages.
    pub fn observe_ingest(&self, queued: Duration, produce: Duration, commit: Duration) {
        for (h, d) in self.ingest.iter().zip([queued, produce, commit]) {
            h.observe(d.as_secs_f64());
        }
    }

    /// One applied batch: its oldest record's append time, when it was read and applied
    /// (milliseconds since the epoch). A record without an append time (-1) or from a
    /// clock ahead of ours counts nothing.
    pub fn observe_record(&self, kind: ShardKind, appended_ms: i64, read_ms: i64, applied_ms: i64) {
        let [to_read, to_applied] = &self.record[super::at(kind)];
        if appended_ms >= 0 && read_ms >= appended_ms {
            to_read.observe((read_ms - appended_ms) as f64 / 1000.0);
        }
        if applied_ms >= read_ms && read_ms > 0 {
            to_applied.observe((applied_ms - read_ms) as f64 / 1000.0);
        }
    }
}
