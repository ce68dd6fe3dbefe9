//! The channel entity: who is watching now, and the channel's audience counters.
//!
//! A viewer whose last heartbeat is older than the viewer timeout is expired. "Older" is
//! judged against the partition's event-time watermark passed in by the shard, never the
//! wall clock, and expiry is applied lazily before each event of the channel, so the
//! result is a pure function of the partition's records.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::event::EventBody;

/// Presence of one viewer in a channel, event times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub joined: i64,
    pub last_seen: i64,
}

/// Live counters of one channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// Viewers present now (not left, not expired as of the last applied event).
    pub viewers: HashMap<Box<str>, Presence>,
    /// Every viewer who ever joined.
    pub unique_viewers: HashSet<Box<str>>,
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
        self.last_event = self.last_event.max(ts);
        match body {
            EventBody::ViewerJoin { .. } | EventBody::ViewerHeartbeat { .. } => {
                if let Some(p) = self.viewers.get_mut(player) {
                    p.last_seen = p.last_seen.max(ts);
                    return;
                }
                self.viewers.insert(
                    player.into(),
                    Presence {
                        joined: ts,
                        last_seen: ts,
                    },
                );
                self.joins += 1;
                if !self.unique_viewers.contains(player) {
                    self.unique_viewers.insert(player.into());
                }
                self.peak_concurrent = self.peak_concurrent.max(self.viewers.len() as u32);
            }
            EventBody::ViewerLeave { .. } => {
                if let Some(p) = self.viewers.remove(player) {
                    self.leaves += 1;
                    self.end_view(p.joined, ts.max(p.last_seen));
                }
            }
            EventBody::Follow { .. } => self.follows += 1,
            // Other kinds never reach the channel topic; ignoring keeps apply total.
            _ => {}
        }
    }

    fn end_view(&mut self, joined: i64, ended: i64) {
        self.views_ended += 1;
        self.watch_ms += (ended - joined).max(0) as u64;
    }

    /// Removes viewers whose last sign of life is more than `timeout_ms` before `watermark`.
    fn expire(&mut self, watermark: i64, timeout_ms: i64) {
        let cutoff = watermark.saturating_sub(timeout_ms);
        if !self.viewers.values().any(|p| p.last_seen < cutoff) {
            return;
        }
        let mut gone: Vec<(Box<str>, Presence)> = Vec::new();
        self.viewers.retain(|id, p| {
            let keep = p.last_seen >= cutoff;
            if !keep {
                gone.push((id.clone(), *p));
            }
            keep
        });
        for (_, p) in gone {
            self.expirations += 1;
            self.end_view(p.joined, p.last_seen);
        }
    }

    /// Viewers still present as of `watermark` (read-only: expiry is applied for the
    /// answer, not to the state).
    pub fn concurrent_at(&self, watermark: i64, timeout_ms: i64) -> u32 {
        let cutoff = watermark.saturating_sub(timeout_ms);
        self.viewers
            .values()
            .filter(|p| p.last_seen >= cutoff)
            .count() as u32
    }

    pub fn view(&self, id: &str, watermark: i64, timeout_ms: i64) -> ChannelView {
        ChannelView {
            id: id.to_string(),
            concurrent_viewers: self.concurrent_at(watermark, timeout_ms),
            peak_concurrent: self.peak_concurrent,
            joins: self.joins,
            leaves: self.leaves,
            expirations: self.expirations,
            unique_viewers: self.unique_viewers.len() as u64,
            watch_ms: self.watch_ms,
            avg_watch_ms: if self.views_ended == 0 {
                0.0
            } else {
                self.watch_ms as f64 / self.views_ended as f64
            },
            follows: self.follows,
            last_event: self.last_event,
        }
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
}
