//! What a shard answers besides records: an entity's view with its freshness, the shard's
//! statistics, and its part of a top-N view.
//!
//! A query never creates an entity: it loads one that may be stored, and answers None for
//! an entity that has seen no event.
//!
//! Not for: merging top-N views across shards and nodes (see `cluster::routing`).

use serde::Serialize;
use tracing::warn;

use super::{Hosted, QueryError, ShardState, View};
use crate::entity::Channel;
use crate::kind::ShardKind;
use crate::store::ChannelSummary;

/// How fresh an answer is.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// Offset of the last record applied to this entity.
    pub entity_offset: i64,
    /// The partition and the next offset its shard will apply.
    pub partition: i32,
    pub partition_offset: i64,
    /// Milliseconds since the shard's last completed checkpoint (None: none yet).
    pub checkpoint_age_ms: Option<u64>,
}

/// A channel's place in a top-N view.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TopEntry {
    pub id: String,
    pub concurrent: u32,
    pub peak: u32,
    pub follows: u64,
}

impl TopEntry {
    /// The entry of a channel that is not resident, from its stored summary. Peak and
    /// follows are exact; concurrent is what it was at the checkpoint, an upper bound
    /// (expiry only lowers it).
    pub fn from_summary(s: &ChannelSummary) -> TopEntry {
        TopEntry {
            id: s.id.clone(),
            concurrent: s.concurrent.max(0) as u32,
            peak: s.peak.max(0) as u32,
            follows: s.follows.max(0) as u64,
        }
    }
}

/// The ordering of a top-N view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    Concurrent,
    Peak,
    Follows,
}

impl TopBy {
    pub fn value(&self, e: &TopEntry) -> u64 {
        match self {
            TopBy::Concurrent => e.concurrent as u64,
            TopBy::Peak => e.peak as u64,
            TopBy::Follows => e.follows,
        }
    }
}

/// Orders a top-N list: value descending, then id ascending.
pub fn sort_top(entries: &mut [TopEntry], by: TopBy) {
    entries.sort_by(|a, b| by.value(b).cmp(&by.value(a)).then_with(|| a.id.cmp(&b.id)));
}

/// Shard statistics for the cluster view and benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStats {
    pub kind: ShardKind,
    pub partition: i32,
    pub next_offset: i64,
    pub resident_entities: usize,
    pub dirty_entities: usize,
    pub checkpoint_age_ms: Option<u64>,
    pub durable_offset: i64,
}

impl<E: Hosted> ShardState<E> {
    fn freshness(&self, entity_offset: i64) -> Freshness {
        Freshness {
            entity_offset,
            partition: self.args.partition,
            partition_offset: self.next_offset,
            checkpoint_age_ms: self.checkpoint_age_ms(),
        }
    }

    fn checkpoint_age_ms(&self) -> Option<u64> {
        self.last_checkpoint.map(|t| t.elapsed().as_millis() as u64)
    }

    /// The view of entity `id`, loading it first if it may be stored.
    pub(super) async fn query(
        &mut self,
        id: &str,
    ) -> Result<Option<(View, Freshness)>, QueryError> {
        if self.may_be_stored(id) {
            self.activate_stored(vec![id.into()])
                .await
                .map_err(QueryError::Load)?;
        }
        let clock = self.clock();
        Ok(self
            .entities
            .get(id)
            .filter(|s| s.offset >= 0)
            .map(|s| (s.state.view(id, clock), self.freshness(s.offset))))
    }

    pub(super) fn stats(&self) -> ShardStats {
        ShardStats {
            kind: E::KIND,
            partition: self.args.partition,
            next_offset: self.next_offset,
            resident_entities: self.entities.len(),
            dirty_entities: self.dirty.len(),
            checkpoint_age_ms: self.checkpoint_age_ms(),
            durable_offset: self.durable.resume_offset,
        }
    }
}

impl ShardState<Channel> {
    /// This shard's top `limit` channels by `by`: resident channels exactly, the others
    /// from their stored summaries. By concurrent viewers, a summary is only an upper
    /// bound, so the channels whose bound could make the cut are loaded first.
    pub(super) async fn channel_top(&mut self, by: TopBy, limit: usize) -> Vec<TopEntry> {
        let mut exact = self.resident_top();
        let mut bounds: Vec<TopEntry> = self
            .extra
            .summaries
            .values()
            .map(TopEntry::from_summary)
            .collect();
        if by == TopBy::Concurrent {
            bounds.sort_by_key(|e| std::cmp::Reverse(by.value(e)));
            let mut to_load = Vec::new();
            let mut current = exact.clone();
            for b in bounds.drain(..) {
                current.sort_by_key(|e| std::cmp::Reverse(by.value(e)));
                let cut = current
                    .get(limit.saturating_sub(1))
                    .map_or(0, |e| by.value(e));
                if current.len() >= limit && by.value(&b) <= cut {
                    break;
                }
                current.push(b.clone());
                to_load.push(b.id.into());
            }
            if let Err(e) = self.activate_stored(to_load).await {
                warn!(error = %format!("{e:#}"), "top-N: loading channels failed; using stored summaries");
            }
            exact = self.resident_top();
            // What is still not resident could not make the cut by concurrent viewers.
            bounds = self
                .extra
                .summaries
                .values()
                .map(|s| TopEntry {
                    concurrent: 0,
                    ..TopEntry::from_summary(s)
                })
                .collect();
        }
        exact.extend(bounds);
        sort_top(&mut exact, by);
        exact.truncate(limit);
        exact
    }

    fn resident_top(&self) -> Vec<TopEntry> {
        let clock = self.clock();
        self.entities
            .iter()
            .map(|s| TopEntry {
                id: s.key.to_string(),
                concurrent: s.state.concurrent_at(clock.watermark, clock.timeout_ms),
                peak: s.state.counters.peak_concurrent,
                follows: s.state.counters.follows,
            })
            .collect()
    }
}
