//! Pushed updates: subscriptions to a player, a channel, the top-N channels or the cluster
//! view, served on any node (docs/API.md, "Push").
//!
//! Push follows ownership. The owner's shard publishes an entity's latest state
//! (`shard::watch`); each node runs one *feed* per target its clients follow, fed by a
//! relay (`relay`) from the local shard or, on any other node, from the owner's stream of
//! the same frames; when the owner changes, the relay finds the new one. A feed is a
//! latest-value channel: every client reads the newest frame at its own pace, so no client
//! can slow a shard or another client. The relay keeps a feed's offsets from going
//! backwards and marks a lost source as a gap (`frame`).
//!
//! - [`protocol`]: the messages clients send;
//! - [`frame`]: frames and the offset rule;
//! - `relay`: the task that fills one feed.
//!
//! Not for: the WebSocket and SSE endpoints (see `api::push`).

pub mod frame;
pub mod protocol;
mod relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub use frame::Frame;
pub use protocol::Target;

use crate::config::PushConfig;
use crate::metrics::PushMetrics;
use crate::state::NodeState;

/// What a client reads: the latest frame of a feed (None until the first arrives). The
/// feed has ended when its sender is gone (a feed of the owner's shard whose shard moved).
pub type Feed = watch::Receiver<Option<Arc<Frame>>>;

type FeedSender = Arc<watch::Sender<Option<Arc<Frame>>>>;

/// Which feed: a target, and whether only this node's own shard may fill it (what a node
/// serves to another node's relay, so relays never chain).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FeedKey {
    pub target: Target,
    pub local_only: bool,
}

/// Why a connection is refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push: at most {0} connections per node")]
    TooManyConnections(usize),
}

/// The node's feeds and its count of push connections.
pub struct Hub {
    feeds: Mutex<HashMap<FeedKey, FeedSender>>,
    connections: Arc<AtomicUsize>,
    cfg: PushConfig,
    metrics: PushMetrics,
}

/// A push connection counted against `push.max_connections`; uncounted when dropped.
pub struct Connection(Arc<AtomicUsize>, PushMetrics);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.connection_closed();
    }
}

impl Hub {
    pub fn new(cfg: PushConfig, metrics: PushMetrics) -> Hub {
        Hub {
            feeds: Mutex::new(HashMap::new()),
            connections: Arc::new(AtomicUsize::new(0)),
            cfg,
            metrics,
        }
    }

    pub fn metrics(&self) -> &PushMetrics {
        &self.metrics
    }

    pub fn cfg(&self) -> &PushConfig {
        &self.cfg
    }

    /// Counts a new connection, or refuses it over the limit.
    pub fn connect(&self) -> Result<Connection, PushError> {
        let max = self.cfg.max_connections;
        let counted = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        counted.map_err(|_| PushError::TooManyConnections(max))?;
        self.metrics.connection_opened();
        Ok(Connection(self.connections.clone(), self.metrics.clone()))
    }

    /// Push connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Feeds running now (one per target followed on this node).
    pub fn feeds(&self) -> usize {
        self.feeds.lock().map_or(0, |f| f.len())
    }

    /// The feed of `key`, started if none runs.
    pub fn subscribe(self: &Arc<Self>, state: &Arc<NodeState>, key: FeedKey) -> Feed {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = feeds.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        feeds.insert(key.clone(), tx.clone());
        self.metrics.set_feeds(feeds.len());
        state
            .runtime
            .spawn(relay::run(state.clone(), self.clone(), key, tx));
        rx
    }

    /// Called by a relay whose readers are gone: removes its feed unless a reader came back
    /// meanwhile (then the relay goes on). Returns whether the feed was removed.
    fn release(&self, key: &FeedKey, tx: &FeedSender, force: bool) -> bool {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if !force && tx.receiver_count() > 0 {
            return false;
        }
        if feeds.get(key).is_some_and(|t| Arc::ptr_eq(t, tx)) {
            feeds.remove(key);
            self.metrics.set_feeds(feeds.len());
        }
        true
    }
}
