//! The label sets of the node's metric families, and how their values are written.
//!
//! Every label value comes from a closed set (a kind, a reason, a route pattern, a status
//! code), never from an id a client sent, so no family's series can grow without bound.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::kind::{ChangeKind, MemberStatus, ShardKind};

/// The `kind` label: which entities a shard hosts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub kind: ShardKind,
}

/// The labels of a per-shard series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ShardLabels {
    pub kind: ShardKind,
    pub partition: i32,
}

/// The `on` label of `tally_source_wait_micros_total`: what the poll loop waited for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WaitLabel {
    pub on: WaitedOn,
}

/// The `source` label of `tally_history_queries_total`: where an answer's buckets came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HistorySourceLabel {
    pub source: HistorySource,
}

/// Where a history answer's stored buckets came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HistorySource {
    /// The owner's cache (`hit`).
    Cache,
    /// Cassandra, keeping them in the owner's cache (`fill`).
    Fill,
    /// Cassandra only: not the owner, the range too long to keep, or another query filling
    /// the same entry (`cassandra`).
    Cassandra,
}

impl HistorySource {
    pub const ALL: [HistorySource; 3] = [
        HistorySource::Cache,
        HistorySource::Fill,
        HistorySource::Cassandra,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HistorySource::Cache => "hit",
            HistorySource::Fill => "fill",
            HistorySource::Cassandra => "cassandra",
        }
    }
}

impl EncodeLabelValue for HistorySource {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum WaitedOn {
    /// Records to arrive.
    Kafka,
    /// A shard to take a batch (backpressure).
    Shards,
}

/// The `reason` label of `tally_ingest_events_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub reason: RejectReason,
}

/// Why HTTP ingest rejected an event (its `reason` label). Its discriminant is its place
/// in [`RejectReason::ALL`].
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// The whole request body: over `ingest.max_body_bytes`, more events than
    /// `ingest.max_batch_events`, or neither a JSON array nor NDJSON. Counted once.
    Body,
    /// An event over `ingest.max_event_bytes`.
    TooLarge,
    /// An event whose `ts` is more than `shard.future_tolerance_secs` ahead of the node's
    /// clock.
    Future,
    /// An event that does not decode or validate (a field missing, of the wrong type, out
    /// of range).
    Invalid,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Body,
        RejectReason::TooLarge,
        RejectReason::Future,
        RejectReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Body => "body",
            RejectReason::TooLarge => "too_large",
            RejectReason::Future => "future",
            RejectReason::Invalid => "invalid",
        }
    }
}

/// The labels of `tally_ownership_changes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ChangeLabels {
    pub kind: ShardKind,
    pub change: ChangeKind,
}

/// The `status` label of `tally_cluster_members`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabel {
    pub status: MemberStatus,
}

/// The labels of `tally_http_requests_total`: the matched route pattern (`unmatched` for a
/// path no route matches) and the response status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpLabels {
    pub route: String,
    pub status: u16,
}

/// The `route` label of `tally_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabel {
    pub route: String,
}

impl EncodeLabelValue for ShardKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

impl EncodeLabelValue for WaitedOn {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                WaitedOn::Kafka => "kafka",
                WaitedOn::Shards => "shards",
            },
        )
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for ChangeKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                ChangeKind::Acquired => "acquired",
                ChangeKind::Released => "released",
            },
        )
    }
}

impl EncodeLabelValue for MemberStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_indexes_its_place_in_all() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.as_str());
        }
    }
}
