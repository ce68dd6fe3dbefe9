//! The push path's series: connections, feeds, frames sent and slow clients closed.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles to the push families (cheap clones of the same atomics).
#[derive(Clone, Default)]
pub struct PushMetrics {
    connections: Gauge,
    feeds: Gauge,
    frames: Counter,
    slow_closed: Counter,
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
        m
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
}
