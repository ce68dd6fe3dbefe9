//! The push path's series: connections, feeds, frames sent, slow clients closed, and where
//! a frame's time goes (docs/ARCHITECTURE.md, "Push").

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `stage` label of a frame's stages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushStage {
    stage: &'static str,
}

/// 0.05 ms to about 6.6 s, doubling (a client that reads slowly holds its session back
/// for seconds, and the tail is what these are for).
fn push_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Handles to the push families (cheap clones of the same atomics).
#[derive(Clone)]
pub struct PushMetrics {
    connections: Gauge,
    feeds: Gauge,
    frames: Counter,
    slow_closed: Counter,
    /// shard_to_frame, frame_to_socket.
    stages: [Histogram; 2],
}

impl Default for PushMetrics {
    fn default() -> PushMetrics {
        PushMetrics {
            connections: Gauge::default(),
            feeds: Gauge::default(),
            frames: Counter::default(),
            slow_closed: Counter::default(),
            stages: [push_histogram(), push_histogram()],
        }
    }
}

impl PushMetrics {
    pub(super) fn register(registry: &mut Registry) -> PushMetrics {
        let m = PushMetrics::default();
        registry.register(
            "tally_push_connections",
            "WebSocket and SSE connections open on this node",
            m.connections.clone(),
        );
        registry.register(
            "tally_push_feeds",
            "Push feeds this node runs: one per player, channel, top-N or cluster view its \
             clients follow, however many clients follow it",
            m.feeds.clone(),
        );
        registry.register(
            "tally_push_frames_sent",
            "Frames (snapshots, updates, errors) sent to WebSocket and SSE clients",
            m.frames.clone(),
        );
        registry.register(
            "tally_push_slow_clients_closed",
            "WebSocket clients closed because their socket stayed blocked past \
             push.blocked_timeout_ms",
            m.slow_closed.clone(),
        );
        let stages =
            Family::<PushStage, Histogram, fn() -> Histogram>::new_with_constructor(push_histogram);
        registry.register_with_unit(
            "tally_push_stage_duration",
            "Time a pushed update spent in each stage on this node: shard_to_frame (the \
             owner's shard published the entity's state until its feed rendered the frame; \
             local feeds only) and frame_to_socket (an update frame rendered until a \
             client's session queued it for the client's socket, per client; the socket \
             write follows; snapshots are not timed)",
            Unit::Seconds,
            stages.clone(),
        );
        let stage = |stage| stages.get_or_create_owned(&PushStage { stage });
        PushMetrics {
            stages: ["shard_to_frame", "frame_to_socket"].map(stage),
            ..m
        }
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }
    pub fn connection_closed(&self) {
        self.connections.dec();
    }
    pub fn set_feeds(&self, n: usize) {
        self.feeds.set(n as i64);
    }
    pub fn frame_sent(&self) {
        self.frames.inc();
    }
    pub fn slow_client_closed(&self) {
        self.slow_closed.inc();
    }
    /// A feed rendered a frame of a state its local shard published `waited` before.
    pub fn observe_shard_to_frame(&self, waited: Duration) {
        self.stages[0].observe(waited.as_secs_f64());
    }
    /// A session queued for its socket an update frame rendered `waited` before.
    pub fn observe_frame_to_socket(&self, waited: Duration) {
        self.stages[1].observe(waited.as_secs_f64());
    }
}
