//! What one bucket holds, for a player, a channel and a partition (the global partials),
//! and how one applied event changes it.
//!
//! Every counter of a bucket is the change the event made to the live counter of the same
//! name, credited to the bucket of the event's own timestamp: a session that ends in a
//! bucket credits its whole length there, a level-up credits the levels it gained, a
//! viewer event credits the watch time it accrued. So the buckets of one step add up to
//! the lifetime counters, whatever order the events came in.
//!
//! Not for: which buckets are resident or written (see `history`), nor concurrency
//! sampling (see `shard::history`).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::sketch::Sketch;
use super::step::Step;
use crate::entity::{ChannelCounters, Player};
use crate::event::{Event, EventBody, KINDS};

use crate::entity::player::{add_revenue, currency_code};

/// The best value of one kind of match, where it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRecord {
    pub value: u32,
    pub match_id: CompactString,
    /// Event time of the `match_end` that set it.
    pub ts: i64,
}

/// The best matches of a bucket. A later match replaces a record only by beating it, so
/// ties keep the first one applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchRecords {
    pub most_kills: Option<MatchRecord>,
    pub longest_survival: Option<MatchRecord>,
    /// Lowest placement above 0.
    pub best_placement: Option<MatchRecord>,
}

impl MatchRecords {
    fn offer(&mut self, match_id: &str, ts: i64, kills: u32, survival: u32, placement: u32) {
        let record = |value| MatchRecord {
            value,
            match_id: match_id.into(),
            ts,
        };
        if self.most_kills.as_ref().is_none_or(|r| kills > r.value) {
            self.most_kills = Some(record(kills));
        }
        if self
            .longest_survival
            .as_ref()
            .is_none_or(|r| survival > r.value)
        {
            self.longest_survival = Some(record(survival));
        }
        if placement > 0
            && self
                .best_placement
                .as_ref()
                .is_none_or(|r| placement < r.value)
        {
            self.best_placement = Some(record(placement));
        }
    }

    /// Keeps the better of each record (the earlier one on a tie).
    pub fn merge(&mut self, other: &MatchRecords) {
        fn better(
            mine: &mut Option<MatchRecord>,
            theirs: &Option<MatchRecord>,
            wins: fn(u32, u32) -> bool,
        ) {
            if let Some(t) = theirs {
                let replace = match mine {
                    None => true,
                    Some(m) => wins(t.value, m.value) || (t.value == m.value && t.ts < m.ts),
                };
                if replace {
                    *mine = Some(t.clone());
                }
            }
        }
        better(&mut self.most_kills, &other.most_kills, |a, b| a > b);
        better(
            &mut self.longest_survival,
            &other.longest_survival,
            |a, b| a > b,
        );
        better(&mut self.best_placement, &other.best_placement, |a, b| {
            a < b
        });
    }
}

/// What a player's counters were before an event: the parts a bucket credits as changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerMarks {
    pub events: u64,
    pub sessions: u32,
    pub playtime_ms: u64,
    pub level: u32,
    pub watch_ms: u64,
    pub purchases: u32,
}

impl PlayerMarks {
    pub fn of(p: &Player) -> PlayerMarks {
        PlayerMarks {
            events: p.events_by_kind.iter().map(|&n| n as u64).sum(),
            sessions: p.sessions,
            playtime_ms: p.playtime_ms,
            level: p.level,
            watch_ms: p
                .extra
                .as_deref()
                .map_or(0, |e| e.watch_ms.iter().map(|(_, ms)| *ms).sum()),
            purchases: p.purchases,
        }
    }
}

/// What one event changed in a player, as buckets credit it.
#[derive(Debug, Clone, Copy)]
pub struct PlayerChange {
    /// The player's first event ever (in partition order): a new player.
    pub first_event: bool,
    /// The player's first purchase ever.
    pub first_purchase: bool,
    pub sessions: u32,
    pub playtime_ms: u64,
    pub levels: u32,
    pub watch_ms: u64,
}

impl PlayerChange {
    pub fn between(before: &PlayerMarks, after: &Player) -> PlayerChange {
        let now = PlayerMarks::of(after);
        PlayerChange {
            first_event: before.events == 0,
            first_purchase: before.purchases == 0 && now.purchases > 0,
            sessions: now.sessions.saturating_sub(before.sessions),
            playtime_ms: now.playtime_ms.saturating_sub(before.playtime_ms),
            levels: now.level.saturating_sub(before.level),
            watch_ms: now.watch_ms.saturating_sub(before.watch_ms),
        }
    }
}

/// One player's events in one bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayerBucket {
    /// Indexed like [`KINDS`].
    pub events_by_kind: [u32; KINDS.len()],
    pub sessions_started: u32,
    /// Sessions that ended here (a start followed by an end).
    pub sessions: u32,
    /// Length of the sessions that ended here, milliseconds.
    pub playtime_ms: u64,
    pub matches: u32,
    pub kills: u64,
    pub deaths: u64,
    pub survival_secs: u64,
    pub survival_max: u32,
    /// Lowest placement above 0 of the matches here; 0 = none.
    pub best_placement: u32,
    pub purchases: u32,
    pub revenue: Vec<([u8; 3], u128)>,
    pub levels_gained: u32,
    pub achievements: u32,
    pub chat_messages: u32,
    pub follows: u32,
    /// Watch time accrued by the events here, milliseconds.
    pub watch_ms: u64,
    /// Hour and day buckets only: the records endpoint reads no finer step.
    pub records: Option<Box<MatchRecords>>,
}

impl PlayerBucket {
    /// Credits `event` to a bucket of `step` (see [`PlayerBucket::records`]).
    pub fn apply(&mut self, step: Step, event: &Event, change: &PlayerChange) {
        let by_kind = &mut self.events_by_kind[event.body.kind_index()];
        *by_kind = by_kind.saturating_add(1);
        self.sessions = self.sessions.saturating_add(change.sessions);
        self.playtime_ms = self.playtime_ms.saturating_add(change.playtime_ms);
        self.levels_gained = self.levels_gained.saturating_add(change.levels);
        self.watch_ms = self.watch_ms.saturating_add(change.watch_ms);
        match &event.body {
            EventBody::SessionStart {} => {
                self.sessions_started = self.sessions_started.saturating_add(1)
            }
            EventBody::MatchEnd {
                match_id,
                kills,
                deaths,
                survival_secs,
                placement,
            } => {
                self.matches = self.matches.saturating_add(1);
                self.kills = self.kills.saturating_add(*kills as u64);
                self.deaths = self.deaths.saturating_add(*deaths as u64);
                self.survival_secs = self.survival_secs.saturating_add(*survival_secs as u64);
                self.survival_max = self.survival_max.max(*survival_secs);
                if *placement > 0 && (self.best_placement == 0 || *placement < self.best_placement)
                {
                    self.best_placement = *placement;
                }
                if step != Step::Minute {
                    self.records.get_or_insert_with(Box::default).offer(
                        match_id,
                        event.ts,
                        *kills,
                        *survival_secs,
                        *placement,
                    );
                }
            }
            EventBody::Purchase {
                amount, currency, ..
            } => {
                self.purchases = self.purchases.saturating_add(1);
                add_revenue(&mut self.revenue, currency_code(currency), *amount as u128);
            }
            EventBody::Achievement { .. } => {
                self.achievements = self.achievements.saturating_add(1)
            }
            EventBody::ChatMessage { .. } => {
                self.chat_messages = self.chat_messages.saturating_add(1)
            }
            EventBody::Follow { .. } => self.follows = self.follows.saturating_add(1),
            _ => {}
        }
    }

    pub fn events(&self) -> u64 {
        self.events_by_kind.iter().map(|&n| n as u64).sum()
    }
}

/// What one event changed in a channel's counters.
#[derive(Debug, Clone, Copy)]
pub struct ChannelChange {
    pub before: ChannelCounters,
    pub after: ChannelCounters,
}

/// One channel's audience in one bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelBucket {
    /// Views started (a join, or a heartbeat from a viewer not present).
    pub joins: u64,
    /// Explicit leaves (a switch away counts as a leave).
    pub leaves: u64,
    /// Views ended because their heartbeats stopped (found by the events here).
    pub expirations: u64,
    pub follows: u64,
    /// Views ended by the events here, and their watch time in milliseconds.
    pub views_ended: u64,
    pub watch_ms: u64,
    /// Distinct viewers with a viewer event here.
    pub viewers: Option<Box<Sketch>>,
    /// Sum and maximum of the concurrency samples in this bucket.
    pub concurrent_sum: u64,
    pub concurrent_peak: u32,
}

impl ChannelBucket {
    pub fn apply(&mut self, event: &Event, change: &ChannelChange) {
        let (b, a) = (&change.before, &change.after);
        self.joins = self.joins.saturating_add(a.joins.saturating_sub(b.joins));
        self.leaves = self
            .leaves
            .saturating_add(a.leaves.saturating_sub(b.leaves));
        self.expirations = self
            .expirations
            .saturating_add(a.expirations.saturating_sub(b.expirations));
        self.follows = self
            .follows
            .saturating_add(a.follows.saturating_sub(b.follows));
        self.views_ended = self
            .views_ended
            .saturating_add(a.views_ended.saturating_sub(b.views_ended));
        self.watch_ms = self
            .watch_ms
            .saturating_add(a.watch_ms.saturating_sub(b.watch_ms));
        if matches!(
            event.body,
            EventBody::ViewerJoin { .. }
                | EventBody::ViewerHeartbeat { .. }
                | EventBody::ViewerLeave { .. }
        ) {
            self.viewers
                .get_or_insert_with(|| Box::new(Sketch::new()))
                .insert(&event.player);
        }
    }

    pub fn sample(&mut self, concurrent: u32) {
        self.concurrent_sum = self.concurrent_sum.saturating_add(concurrent as u64);
        self.concurrent_peak = self.concurrent_peak.max(concurrent);
    }
}

/// One partition's share of the whole game in one bucket: summed (and sketches merged)
/// over every partition at query time. Players are keyed by id, so each player is in one
/// partition only and per-partition distinct counts add up exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GlobalBucket {
    pub events_by_kind: [u64; KINDS.len()],
    /// Players with an event here.
    pub active: u64,
    /// Players whose first event ever is here.
    pub new_players: u64,
    pub sessions_started: u64,
    pub sessions: u64,
    pub playtime_ms: u64,
    pub matches: u64,
    pub purchases: u64,
    /// Players with a purchase here.
    pub paying: u64,
    pub revenue: Vec<([u8; 3], u128)>,
    /// The players with an event here (day buckets only), for distinct counts over
    /// several days (WAU, MAU).
    pub players: Option<Box<Sketch>>,
    /// Channel partitions: the partition's total concurrent viewers at each sample point
    /// of the bucket, in order (shorter when the bucket is not over).
    pub concurrent: Vec<u64>,
}

/// What an event did to a player's bucket, as the partition's global bucket counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BucketFirsts {
    /// The player had no event in this bucket before.
    pub first_in_bucket: bool,
    /// The player had no purchase in this bucket before, and has one now.
    pub first_purchase_in_bucket: bool,
}

impl GlobalBucket {
    pub fn apply_player(&mut self, event: &Event, change: &PlayerChange, firsts: BucketFirsts) {
        let by_kind = &mut self.events_by_kind[event.body.kind_index()];
        *by_kind = by_kind.saturating_add(1);
        self.active += firsts.first_in_bucket as u64;
        self.paying += firsts.first_purchase_in_bucket as u64;
        self.new_players += change.first_event as u64;
        self.sessions = self.sessions.saturating_add(change.sessions as u64);
        self.playtime_ms = self.playtime_ms.saturating_add(change.playtime_ms);
        // A player's first event in the bucket adds it; later ones would not change it.
        if let Some(players) = self
            .players
            .as_deref_mut()
            .filter(|_| firsts.first_in_bucket)
        {
            players.insert(&event.player);
        }
        match &event.body {
            EventBody::SessionStart {} => self.sessions_started += 1,
            EventBody::MatchEnd { .. } => self.matches += 1,
            EventBody::Purchase {
                amount, currency, ..
            } => {
                self.purchases += 1;
                add_revenue(&mut self.revenue, currency_code(currency), *amount as u128);
            }
            _ => {}
        }
    }

    /// Adds `total` viewers to the sample at `index` (its place in the bucket).
    pub fn sample(&mut self, index: usize, total: u64) {
        if self.concurrent.len() <= index {
            self.concurrent.resize(index + 1, 0);
        }
        self.concurrent[index] = self.concurrent[index].saturating_add(total);
    }

    /// Adds another partition's bucket (same step and start) to this one.
    pub fn merge(&mut self, other: &GlobalBucket) {
        for (a, b) in self.events_by_kind.iter_mut().zip(other.events_by_kind) {
            *a = a.saturating_add(b);
        }
        self.active += other.active;
        self.new_players += other.new_players;
        self.sessions_started += other.sessions_started;
        self.sessions += other.sessions;
        self.playtime_ms = self.playtime_ms.saturating_add(other.playtime_ms);
        self.matches += other.matches;
        self.purchases += other.purchases;
        self.paying += other.paying;
        for (code, amount) in &other.revenue {
            add_revenue(&mut self.revenue, *code, *amount);
        }
        if let Some(theirs) = &other.players {
            match &mut self.players {
                Some(mine) => mine.merge(theirs),
                None => self.players = Some(theirs.clone()),
            }
        }
        for (i, n) in other.concurrent.iter().enumerate() {
            self.sample(i, *n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: i64, body: EventBody) -> Event {
        Event {
            v: 1,
            id: "e".into(),
            ts,
            player: "p".into(),
            body,
        }
    }

    fn match_end(id: &str, kills: u32, survival: u32, placement: u32) -> EventBody {
        EventBody::MatchEnd {
            match_id: id.into(),
            kills,
            deaths: 1,
            survival_secs: survival,
            placement,
        }
    }

    #[test]
    fn a_bucket_credits_what_the_event_changed_in_the_live_counters() {
        let mut p = Player::default();
        let mut bucket = PlayerBucket::default();
        let events = [
            event(1_000, EventBody::SessionStart {}),
            event(2_000, EventBody::LevelUp { level: 4 }),
            event(3_000, EventBody::LevelUp { level: 2 }),
            event(61_000, EventBody::SessionEnd {}),
        ];
        for e in &events {
            let before = PlayerMarks::of(&p);
            p.apply(e.ts, &e.body);
            bucket.apply(Step::Day, e, &PlayerChange::between(&before, &p));
        }
        assert_eq!(bucket.sessions_started, 1);
        assert_eq!(bucket.sessions, 1);
        assert_eq!(bucket.playtime_ms, 60_000);
        assert_eq!(bucket.levels_gained, 4, "a lower level gains nothing");
        assert_eq!(bucket.events(), 4);
        assert_eq!(bucket.playtime_ms, p.playtime_ms);
    }

    #[test]
    fn match_records_keep_the_first_of_equal_values_and_merge_the_same_way() {
        let mut r = MatchRecords::default();
        r.offer("m1", 10, 5, 100, 3);
        r.offer("m2", 20, 5, 200, 0);
        r.offer("m3", 30, 2, 50, 1);
        assert_eq!(r.most_kills.as_ref().unwrap().match_id, "m1");
        assert_eq!(r.longest_survival.as_ref().unwrap().match_id, "m2");
        assert_eq!(r.best_placement.as_ref().unwrap().match_id, "m3");
        let mut later = MatchRecords::default();
        later.offer("m9", 5, 5, 10, 1);
        r.merge(&later);
        assert_eq!(
            r.most_kills.as_ref().unwrap().match_id,
            "m9",
            "a tie goes to the earlier match"
        );
        assert_eq!(r.best_placement.as_ref().unwrap().match_id, "m9");
        assert_eq!(r.longest_survival.as_ref().unwrap().match_id, "m2");
    }

    #[test]
    fn match_records_are_kept_by_hour_and_day_buckets_only() {
        let c = PlayerChange::between(&PlayerMarks::of(&Player::default()), &Player::default());
        let e = event(1, match_end("m", 4, 1, 2));
        let (mut minute, mut hour) = (PlayerBucket::default(), PlayerBucket::default());
        minute.apply(Step::Minute, &e, &c);
        hour.apply(Step::Hour, &e, &c);
        assert_eq!((minute.kills, minute.best_placement), (4, 2));
        assert!(minute.records.is_none());
        let r = hour.records.expect("an hour bucket keeps the match");
        assert_eq!(r.most_kills.unwrap().match_id, "m");
    }

    #[test]
    fn a_placement_of_zero_is_no_placement() {
        let mut b = PlayerBucket::default();
        let c = PlayerChange::between(&PlayerMarks::of(&Player::default()), &Player::default());
        b.apply(Step::Hour, &event(1, match_end("m", 1, 1, 0)), &c);
        assert_eq!(b.best_placement, 0);
        b.apply(Step::Hour, &event(2, match_end("m2", 1, 1, 7)), &c);
        assert_eq!(b.best_placement, 7);
    }

    #[test]
    fn global_partials_add_up_and_sketches_merge() {
        let mut a = GlobalBucket {
            players: Some(Box::new(Sketch::new())),
            ..GlobalBucket::default()
        };
        let mut b = a.clone();
        let change = PlayerChange {
            first_event: true,
            first_purchase: true,
            sessions: 0,
            playtime_ms: 0,
            levels: 0,
            watch_ms: 0,
        };
        let buy = EventBody::Purchase {
            item: "i".into(),
            amount: u64::MAX,
            currency: "USD".into(),
        };
        let firsts = BucketFirsts {
            first_in_bucket: true,
            first_purchase_in_bucket: true,
        };
        a.apply_player(&event(1, buy.clone()), &change, firsts);
        let mut e = event(1, buy);
        e.player = "q".into();
        b.apply_player(&e, &change, firsts);
        a.sample(2, 5);
        b.sample(0, 1);
        a.merge(&b);
        assert_eq!(a.active, 2);
        assert_eq!(a.paying, 2);
        assert_eq!(a.revenue, vec![(*b"USD", 2 * u64::MAX as u128)]);
        assert_eq!(a.concurrent, vec![1, 0, 5]);
        assert_eq!(a.players.as_ref().unwrap().estimate(), 2);
    }
}
