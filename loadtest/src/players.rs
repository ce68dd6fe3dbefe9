//! The `players` scenario: P players emitting sessions, matches, purchases, chat and
//! follows, generated deterministically from a seed, with the exact expected state of
//! every player and channel kept alongside.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_node::entity::{Channel, Player};
use tally_node::event::{Event, EventBody};

/// What to generate.
#[derive(Debug, Clone)]
pub struct PlayersSpec {
    pub players: u64,
    pub channels: u64,
    pub events: u64,
    pub seed: u64,
    /// Prefix of every id, so that runs against the same cluster never share entities.
    pub id_prefix: String,
    /// Event time of the first event, milliseconds since the epoch.
    pub start_ts: i64,
}

/// A deterministic stream of player events.
pub struct PlayersGen {
    spec: PlayersSpec,
    rng: StdRng,
    next: u64,
    ts: i64,
    /// Players with an open session.
    in_session: Vec<bool>,
}

impl PlayersGen {
    /// Event time advances by 0 to this many milliseconds per event.
    pub const MAX_STEP_MS: i64 = 2;

    pub fn new(spec: PlayersSpec) -> Self {
        PlayersGen {
            rng: StdRng::seed_from_u64(spec.seed),
            next: 0,
            ts: spec.start_ts,
            in_session: vec![false; spec.players as usize],
            spec,
        }
    }

    pub fn player_id(&self, n: u64) -> String {
        player_id(&self.spec.id_prefix, n)
    }

    pub fn channel_id(&self, n: u64) -> String {
        channel_id(&self.spec.id_prefix, n)
    }
}

/// Player `n` of the run whose ids start with `prefix`.
pub fn player_id(prefix: &str, n: u64) -> String {
    format!("{prefix}p{n}")
}

/// Channel `n` of the run whose ids start with `prefix` (both scenarios name them so).
pub fn channel_id(prefix: &str, n: u64) -> String {
    format!("{prefix}c{n}")
}

impl Iterator for PlayersGen {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.next >= self.spec.events {
            return None;
        }
        let i = self.next;
        self.next += 1;
        self.ts += self.rng.random_range(0..=Self::MAX_STEP_MS);
        let p = self.rng.random_range(0..self.spec.players);
        let roll = self.rng.random_range(0..100);
        let c = self.rng.random_range(0..self.spec.channels);
        let channel = self.channel_id(c);
        let open = &mut self.in_session[p as usize];
        let body = if !*open && roll < 60 {
            *open = true;
            EventBody::SessionStart {}
        } else {
            match roll {
                0..=9 => {
                    *open = false;
                    EventBody::SessionEnd {}
                }
                10..=29 => EventBody::MatchStart {
                    match_id: format!("m{i}").into(),
                },
                30..=59 => EventBody::MatchEnd {
                    match_id: format!("m{i}").into(),
                    kills: self.rng.random_range(0..15),
                    deaths: self.rng.random_range(0..5),
                    survival_secs: self.rng.random_range(5..1800),
                    placement: self.rng.random_range(1..100),
                },
                60..=69 => EventBody::Purchase {
                    item: format!("item-{}", self.rng.random_range(0..50)).into(),
                    amount: self.rng.random_range(99..9999),
                    currency: ["USD", "EUR", "GBP", "JPY"][self.rng.random_range(0..4)].into(),
                },
                70..=74 => EventBody::LevelUp {
                    level: self.rng.random_range(1..200),
                },
                75..=79 => EventBody::Achievement {
                    achievement: format!("ach-{}", self.rng.random_range(0..100)).into(),
                },
                80..=94 => EventBody::ChatMessage {
                    channel: channel.into(),
                    text: "gg wp".into(),
                },
                _ => EventBody::Follow {
                    channel: channel.into(),
                },
            }
        };
        Some(Event {
            v: 1,
            id: format!("{}e{i}", self.spec.id_prefix).into(),
            ts: self.ts,
            player: self.player_id(p).into(),
            body,
        })
    }
}

/// The exact state every entity must reach, built with the node's own transitions from
/// exactly the events sent.
#[derive(Default)]
pub struct Expected {
    pub players: HashMap<String, Player>,
    pub channels: HashMap<String, Channel>,
    /// Latest event time per channel partition: the channel watermark after the run.
    pub channel_watermarks: HashMap<i32, i64>,
    pub channel_partitions: i32,
    pub viewer_timeout_ms: i64,
}

impl Expected {
    pub fn new(channel_partitions: i32, viewer_timeout_ms: i64) -> Self {
        Expected {
            channel_partitions,
            viewer_timeout_ms,
            ..Default::default()
        }
    }

    /// Records one event that Kafka acknowledged.
    pub fn apply(&mut self, e: &Event) {
        self.players
            .entry(e.player.to_string())
            .or_default()
            .apply(e.ts, &e.body);
        for (channel, ce) in e.channel_records() {
            let part = tally_node::partitioner::partition_for(&channel, self.channel_partitions);
            let wm = self.channel_watermarks.entry(part).or_insert(i64::MIN);
            *wm = (*wm).max(ce.ts);
            let wm = *wm;
            self.channels.entry(channel.to_string()).or_default().apply(
                ce.ts,
                &ce.player,
                &ce.body,
                wm,
                self.viewer_timeout_ms,
            );
        }
    }

    pub fn channel_watermark(&self, channel: &str) -> i64 {
        let part = tally_node::partitioner::partition_for(channel, self.channel_partitions);
        self.channel_watermarks.get(&part).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> PlayersSpec {
        PlayersSpec {
            players: 50,
            channels: 5,
            events: 5_000,
            seed,
            id_prefix: "t-".into(),
            start_ts: 1_000,
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<Event> = PlayersGen::new(spec(4)).collect();
        let b: Vec<Event> = PlayersGen::new(spec(4)).collect();
        let c: Vec<Event> = PlayersGen::new(spec(5)).collect();
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(a.iter().all(|e| e.validate().is_ok()));
    }

    /// The expected state agrees with a recomputation written independently here.
    #[test]
    fn expected_state_matches_an_independent_recomputation() {
        let events: Vec<Event> = PlayersGen::new(spec(9)).collect();
        let mut expected = Expected::new(4, 60_000);
        for e in &events {
            expected.apply(e);
        }
        for (id, p) in &expected.players {
            let mine: Vec<&Event> = events.iter().filter(|e| e.player == id).collect();
            let v = p.view(id);
            assert_eq!(v.events, mine.len() as u64);
            let kills: u64 = mine
                .iter()
                .map(|e| match e.body {
                    EventBody::MatchEnd { kills, .. } => kills as u64,
                    _ => 0,
                })
                .sum();
            assert_eq!(v.kills, kills, "{id}");
            let revenue: u128 = mine
                .iter()
                .map(|e| match &e.body {
                    EventBody::Purchase { amount, .. } => *amount as u128,
                    _ => 0,
                })
                .sum();
            assert_eq!(v.revenue.values().sum::<u128>(), revenue, "{id}");
            let matches = mine
                .iter()
                .filter(|e| matches!(e.body, EventBody::MatchEnd { .. }))
                .count();
            assert_eq!(v.matches as usize, matches, "{id}");
        }
        let follows: usize = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::Follow { .. }))
            .count();
        assert_eq!(
            expected
                .channels
                .values()
                .map(|c| c.counters.follows as usize)
                .sum::<usize>(),
            follows
        );
    }
}
