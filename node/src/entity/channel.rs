//! The channel entity: who is watching now, and the channel's audience counters.
//!
//! A viewer whose last heartbeat is older than the viewer timeout is expired. "Older" is
//! judged against the partition's event-time watermark passed in by the shard, never the
//! wall clock, and expiry is applied lazily before each event of the channel, so the
//! result is a pure function of the partition's records.
//!
//! Expiry is O(log n) per expired viewer, not a scan: an index ordered by last sign of life
//! holds one entry per view, refreshed lazily (a heartbeat only updates the presence; an
//! index entry found out of date when it comes due is pushed again with the newer time).
//!
//! A channel records which viewers changed since the last [`Channel::take_delta`], so a
//! checkpoint can write a [`ChannelDelta`] (the changed viewers and the counters) instead
//! of the whole audience (see `channel_log`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use compact_str::CompactString;
use foldhash::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::event::EventBody;

/// Presence of one viewer in a channel, event times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub joined: i64,
    pub last_seen: i64,
}

/// The scalar counters of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelCounters {
    pub peak_concurrent: u32,
    pub joins: u64,
    /// Explicit leaves (a switch away counts as a leave).
    pub leaves: u64,
    /// Viewers removed because their heartbeats stopped.
    pub expirations: u64,
    /// Watch time of ended views (leave or expiry), milliseconds.
    pub watch_ms: u64,
    /// Number of ended views.
    pub views_ended: u64,
    pub follows: u64,
    pub last_event: i64,
}

/// An index entry: (last sign of life, start of the view, viewer). `joined` tells a view
/// from a later view of the same viewer.
type Due = Reverse<(i64, i64, CompactString)>;

/// Live state of one channel. Stored form: viewers, unique viewers, counters (in that
/// order; the expiry index and the change set are rebuilt, not stored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "StoredChannel")]
pub struct Channel {
    /// Viewers present now (not left, not expired as of the last applied event).
    pub viewers: HashMap<CompactString, Presence>,
    /// Every viewer who ever joined.
    pub unique_viewers: HashSet<CompactString>,
    pub counters: ChannelCounters,
    /// Expiry index, at least one entry per present viewer, none later than its presence.
    expiry: BinaryHeap<Due>,
    /// Viewers whose presence changed since the last delta was taken.
    changed: HashSet<CompactString>,
}

#[derive(Deserialize)]
struct StoredChannel {
    viewers: HashMap<CompactString, Presence>,
    unique_viewers: HashSet<CompactString>,
    counters: ChannelCounters,
}

#[derive(Serialize)]
struct StoredChannelRef<'a> {
    viewers: &'a HashMap<CompactString, Presence>,
    unique_viewers: &'a HashSet<CompactString>,
    counters: &'a ChannelCounters,
}

impl From<StoredChannel> for Channel {
    fn from(s: StoredChannel) -> Channel {
        let mut c = Channel {
            viewers: s.viewers,
            unique_viewers: s.unique_viewers,
            counters: s.counters,
            ..Channel::default()
        };
        c.rebuild_expiry();
        c
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredChannelRef {
            viewers: &self.viewers,
            unique_viewers: &self.unique_viewers,
            counters: &self.counters,
        }
        .serialize(s)
    }
}

/// Equal when the state is equal; the expiry index and the change set are bookkeeping.
impl PartialEq for Channel {
    fn eq(&self, other: &Channel) -> bool {
        self.viewers == other.viewers
            && self.unique_viewers == other.unique_viewers
            && self.counters == other.counters
    }
}

/// What changed in a channel between two checkpoints: the counters as they are now, the
/// viewers present now whose presence changed, and the viewers no longer present. Every
/// viewer named in either list has joined at some time, so it is a unique viewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelDelta {
    pub counters: ChannelCounters,
    pub present: Vec<(CompactString, Presence)>,
    pub gone: Vec<CompactString>,
}

/// A channel as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    pub id: String,
    pub concurrent_viewers: u32,
    pub peak_concurrent: u32,
    pub joins: u64,
    pub leaves: u64,
    pub expirations: u64,
    pub unique_viewers: u64,
    pub watch_ms: u64,
    pub avg_watch_ms: f64,
    pub follows: u64,
    pub last_event: i64,
}

impl Channel {
    /// Applies one channel-topic event at event time `ts`, after expiring viewers that
    /// were silent for longer than `timeout_ms` as of `watermark`.
    pub fn apply(
        &mut self,
        ts: i64,
        player: &str,
        body: &EventBody,
        watermark: i64,
        timeout_ms: i64,
    ) {
        self.expire(watermark, timeout_ms);
        let c = &mut self.counters;
        c.last_event = c.last_event.max(ts);
        match body {
            EventBody::ViewerJoin { .. } | EventBody::ViewerHeartbeat { .. } => {
                if let Some(p) = self.viewers.get_mut(player) {
                    p.last_seen = p.last_seen.max(ts);
                    self.mark_changed(player);
                    return;
                }
                let id = CompactString::from(player);
                self.viewers.insert(
                    id.clone(),
                    Presence {
                        joined: ts,
                        last_seen: ts,
                    },
                );
                self.expiry.push(Reverse((ts, ts, id.clone())));
                c.joins += 1;
                c.peak_concurrent = c.peak_concurrent.max(self.viewers.len() as u32);
                if !self.unique_viewers.contains(player) {
                    self.unique_viewers.insert(id.clone());
                }
                self.changed.insert(id);
            }
            EventBody::ViewerLeave { .. } => {
                if let Some(p) = self.viewers.remove(player) {
                    c.leaves += 1;
                    c.end_view(p.joined, ts.max(p.last_seen));
                    self.mark_changed(player);
                }
            }
            EventBody::Follow { .. } => c.follows += 1,
            // Other kinds never reach the channel topic; ignoring keeps apply total.
            _ => {}
        }
    }

    fn mark_changed(&mut self, viewer: &str) {
        if !self.changed.contains(viewer) {
            self.changed.insert(viewer.into());
        }
    }

    /// Removes viewers whose last sign of life is more than `timeout_ms` before `watermark`.
    fn expire(&mut self, watermark: i64, timeout_ms: i64) {
        let cutoff = watermark.saturating_sub(timeout_ms);
        while self
            .expiry
            .peek()
            .is_some_and(|Reverse((seen, _, _))| *seen < cutoff)
        {
            let Some(Reverse((_, joined, id))) = self.expiry.pop() else {
                break;
            };
            let Some(p) = self.viewers.get(&id).copied() else {
                continue; // left since
            };
            if p.joined != joined {
                continue; // an entry of an earlier view
            }
            if p.last_seen >= cutoff {
                self.expiry.push(Reverse((p.last_seen, joined, id)));
                continue;
            }
            self.viewers.remove(&id);
            self.counters.expirations += 1;
            self.counters.end_view(p.joined, p.last_seen);
            self.changed.insert(id);
        }
    }

    /// Viewers still present as of `watermark` (read-only: expiry is applied for the
    /// answer, not to the state).
    pub fn concurrent_at(&self, watermark: i64, timeout_ms: i64) -> u32 {
        let cutoff = watermark.saturating_sub(timeout_ms);
        // No index entry is later than its viewer's presence, so an index with nothing
        // due means nobody is.
        if self
            .expiry
            .peek()
            .is_none_or(|Reverse((seen, _, _))| *seen >= cutoff)
        {
            return self.viewers.len() as u32;
        }
        self.viewers
            .values()
            .filter(|p| p.last_seen >= cutoff)
            .count() as u32
    }

    /// The changes since the previous call (or since the channel was loaded or created).
    pub fn take_delta(&mut self) -> ChannelDelta {
        let mut present = Vec::new();
        let mut gone = Vec::new();
        for id in self.changed.drain() {
            match self.viewers.get(&id) {
                Some(p) => present.push((id, *p)),
                None => gone.push(id),
            }
        }
        ChannelDelta {
            counters: self.counters,
            present,
            gone,
        }
    }

    /// Forgets the changes since the last delta (a full snapshot covers them).
    pub fn clear_changes(&mut self) {
        self.changed.clear();
    }

    /// Applies a delta taken from a channel that was equal to this one. The expiry index
    /// is left stale; call [`Channel::rebuild_expiry`] after the last delta.
    pub fn apply_delta(&mut self, delta: ChannelDelta) {
        self.counters = delta.counters;
        for (id, p) in delta.present {
            if !self.unique_viewers.contains(&id) {
                self.unique_viewers.insert(id.clone());
            }
            self.viewers.insert(id, p);
        }
        for id in delta.gone {
            self.viewers.remove(&id);
            if !self.unique_viewers.contains(&id) {
                self.unique_viewers.insert(id);
            }
        }
    }

    /// Rebuilds the expiry index from the present viewers.
    pub fn rebuild_expiry(&mut self) {
        self.expiry = self
            .viewers
            .iter()
            .map(|(id, p)| Reverse((p.last_seen, p.joined, id.clone())))
            .collect();
    }

    pub fn view(&self, id: &str, watermark: i64, timeout_ms: i64) -> ChannelView {
        let c = &self.counters;
        ChannelView {
            id: id.to_string(),
            concurrent_viewers: self.concurrent_at(watermark, timeout_ms),
            peak_concurrent: c.peak_concurrent,
            joins: c.joins,
            leaves: c.leaves,
            expirations: c.expirations,
            unique_viewers: self.unique_viewers.len() as u64,
            watch_ms: c.watch_ms,
            avg_watch_ms: if c.views_ended == 0 {
                0.0
            } else {
                c.watch_ms as f64 / c.views_ended as f64
            },
            follows: c.follows,
            last_event: c.last_event,
        }
    }
}

impl ChannelCounters {
    fn end_view(&mut self, joined: i64, ended: i64) {
        self.views_ended += 1;
        self.watch_ms = self
            .watch_ms
            .saturating_add(ended.saturating_sub(joined).max(0) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 60_000;

    fn join() -> EventBody {
        EventBody::ViewerJoin {
            channel: "c".into(),
        }
    }
    fn hb() -> EventBody {
        EventBody::ViewerHeartbeat {
            channel: "c".into(),
        }
    }
    fn leave() -> EventBody {
        EventBody::ViewerLeave {
            channel: "c".into(),
        }
    }

    #[test]
    fn joins_leaves_peak_unique() {
        let mut c = Channel::default();
        c.apply(0, "a", &join(), 0, T);
        c.apply(1_000, "b", &join(), 1_000, T);
        c.apply(2_000, "a", &join(), 2_000, T); // already present: a heartbeat
        c.apply(5_000, "a", &leave(), 5_000, T);
        c.apply(6_000, "a", &join(), 6_000, T);
        c.apply(7_000, "x", &leave(), 7_000, T); // never joined: ignored
        let v = c.view("c", 7_000, T);
        assert_eq!(v.concurrent_viewers, 2);
        assert_eq!(v.peak_concurrent, 2);
        assert_eq!((v.joins, v.leaves, v.unique_viewers), (3, 1, 2));
        assert_eq!(v.watch_ms, 5_000);
    }

    #[test]
    fn silent_viewers_expire_by_watermark() {
        let mut c = Channel::default();
        c.apply(0, "a", &join(), 0, T);
        c.apply(0, "b", &join(), 0, T);
        c.apply(50_000, "b", &hb(), 50_000, T);
        // Read-only view at a later watermark already leaves `a` out...
        assert_eq!(c.concurrent_at(70_000, T), 1);
        // ...and the next event of the channel expires it for good.
        c.apply(70_000, "b", &hb(), 70_000, T);
        let v = c.view("c", 70_000, T);
        assert_eq!((v.concurrent_viewers, v.expirations, v.watch_ms), (1, 1, 0));
        // A heartbeat from an expired viewer is a new view.
        c.apply(71_000, "a", &hb(), 71_000, T);
        assert_eq!(c.view("c", 71_000, T).joins, 3);
    }

    #[test]
    fn follows_count() {
        let mut c = Channel::default();
        c.apply(
            1,
            "a",
            &EventBody::Follow {
                channel: "c".into(),
            },
            1,
            T,
        );
        assert_eq!(c.view("c", 1, T).follows, 1);
    }

    #[test]
    fn expiry_keeps_up_with_heartbeats_and_rejoins() {
        let mut c = Channel::default();
        for v in 0..100 {
            c.apply(0, &format!("v{v}"), &join(), 0, T);
        }
        // Half keep sending heartbeats for ten minutes; one leaves and rejoins each step.
        for step in 1..=20 {
            let t = step * 30_000;
            for v in 0..50 {
                c.apply(t, &format!("v{v}"), &hb(), t, T);
            }
            c.apply(t, "v0", &leave(), t, T);
            c.apply(t, "v0", &join(), t, T);
        }
        let v = c.view("c", 600_000, T);
        assert_eq!(v.concurrent_viewers, 50);
        assert_eq!(v.expirations, 50);
        // Each silent viewer watched until its last sign of life: 0 ms.
        assert_eq!(c.counters.views_ended, 50 + 20);
        // The index holds one entry per view, not one per heartbeat.
        assert!(
            c.expiry.len() <= 2 * c.viewers.len(),
            "{} entries",
            c.expiry.len()
        );
    }

    #[test]
    fn deltas_rebuild_the_same_state() {
        let mut live = Channel::default();
        let mut copy = Channel::default();
        let mut ts = 0i64;
        for i in 0..5_000u64 {
            ts += (i * 7_919 % 13) as i64 * 100;
            let who = format!("v{}", i * 31 % 97);
            let body = match i % 5 {
                0 | 1 => join(),
                2 => hb(),
                3 => leave(),
                _ => EventBody::Follow {
                    channel: "c".into(),
                },
            };
            live.apply(ts, &who, &body, ts, T);
            if i % 37 == 0 {
                copy.apply_delta(live.take_delta());
                copy.rebuild_expiry();
                assert_eq!(copy, live, "after event {i}");
            }
        }
        assert!(live.counters.expirations > 0 && live.counters.leaves > 0);
    }

    #[test]
    fn reads_the_first_stored_layout() {
        // The layout before counters were grouped: the same fields, flat, in this order.
        #[derive(Serialize)]
        struct Flat {
            viewers: std::collections::HashMap<Box<str>, Presence>,
            unique_viewers: std::collections::HashSet<Box<str>>,
            peak_concurrent: u32,
            joins: u64,
            leaves: u64,
            expirations: u64,
            watch_ms: u64,
            views_ended: u64,
            follows: u64,
            last_event: i64,
        }
        let flat = Flat {
            viewers: [(
                "a".into(),
                Presence {
                    joined: 1,
                    last_seen: 2,
                },
            )]
            .into(),
            unique_viewers: ["a".into(), "b".into()].into(),
            peak_concurrent: 2,
            joins: 3,
            leaves: 1,
            expirations: 0,
            watch_ms: 40,
            views_ended: 1,
            follows: 7,
            last_event: 9,
        };
        let bytes = postcard::to_stdvec(&crate::entity::Stored::V1(&flat)).unwrap();
        let c: Channel = crate::entity::decode(&bytes).unwrap();
        assert_eq!(c.counters.follows, 7);
        assert_eq!(c.counters.last_event, 9);
        assert_eq!(c.unique_viewers.len(), 2);
        assert_eq!(c.concurrent_at(2, T), 1);
    }
}
