//! The player entity: everything Tally counts about one player (who is also a viewer).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::event::{EventBody, KINDS};

/// How many channels a player view lists by watch time.
pub const TOP_CHANNELS: usize = 5;

/// Live counters of one player. Kept compact: a million of these stay resident, so what
/// only buyers and viewers need sits behind one pointer ([`PlayerExtra`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "StoredPlayer")]
pub struct Player {
    /// Events applied, by kind, indexed like [`KINDS`].
    pub events_by_kind: [u32; KINDS.len()],
    /// Completed sessions (a start followed by an end).
    pub sessions: u32,
    /// Finished matches.
    pub matches: u32,
    /// Start time of the open session, if one is open.
    pub session_open_since: Option<i64>,
    /// Sum of the lengths of completed sessions, milliseconds.
    pub playtime_ms: u64,
    pub kills: u64,
    pub deaths: u64,
    /// Sum of survival seconds over finished matches.
    pub survival_secs_total: u64,
    pub best_survival_secs: u32,
    /// Best (lowest) placement so far; 0 = no match yet.
    pub best_placement: u32,
    pub purchases: u32,
    pub level: u32,
    pub achievements: u32,
    pub chat_messages: u32,
    pub follows: u32,
    /// Latest event time seen.
    pub last_seen: i64,
    /// Revenue and viewing; None until the player first buys or watches.
    pub extra: Option<Box<PlayerExtra>>,
}

/// The parts of a player only some players have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlayerExtra {
    /// Revenue in minor units per ISO currency, sorted by currency. 128 bits: no sum of
    /// `amount`s (each at most 2^64-1) can overflow it before 2^64 purchases.
    pub revenue: Vec<([u8; 3], u128)>,
    /// Channel being watched now and the event time watch time was last accrued.
    pub watching: Option<(CompactString, i64)>,
    /// Watch time per channel, milliseconds.
    pub watch_ms: Vec<(CompactString, u64)>,
}

/// The stored form, field by field in the order of the first layout (postcard has no
/// field names: order is the format).
#[derive(Deserialize)]
struct StoredPlayer {
    events_by_kind: [u32; KINDS.len()],
    sessions: u32,
    session_open_since: Option<i64>,
    playtime_ms: u64,
    matches: u32,
    kills: u64,
    deaths: u64,
    survival_secs_total: u64,
    best_survival_secs: u32,
    best_placement: u32,
    purchases: u32,
    revenue: Vec<([u8; 3], u128)>,
    level: u32,
    achievements: u32,
    chat_messages: u32,
    follows: u32,
    last_seen: i64,
    watching: Option<(CompactString, i64)>,
    watch_ms: Vec<(CompactString, u64)>,
}

#[derive(Serialize)]
struct StoredPlayerRef<'a> {
    events_by_kind: &'a [u32; KINDS.len()],
    sessions: u32,
    session_open_since: Option<i64>,
    playtime_ms: u64,
    matches: u32,
    kills: u64,
    deaths: u64,
    survival_secs_total: u64,
    best_survival_secs: u32,
    best_placement: u32,
    purchases: u32,
    revenue: &'a [([u8; 3], u128)],
    level: u32,
    achievements: u32,
    chat_messages: u32,
    follows: u32,
    last_seen: i64,
    watching: Option<(&'a str, i64)>,
    watch_ms: &'a [(CompactString, u64)],
}

impl From<StoredPlayer> for Player {
    fn from(s: StoredPlayer) -> Player {
        let extra = PlayerExtra {
            revenue: s.revenue,
            watching: s.watching,
            watch_ms: s.watch_ms,
        };
        Player {
            events_by_kind: s.events_by_kind,
            sessions: s.sessions,
            matches: s.matches,
            session_open_since: s.session_open_since,
            playtime_ms: s.playtime_ms,
            kills: s.kills,
            deaths: s.deaths,
            survival_secs_total: s.survival_secs_total,
            best_survival_secs: s.best_survival_secs,
            best_placement: s.best_placement,
            purchases: s.purchases,
            level: s.level,
            achievements: s.achievements,
            chat_messages: s.chat_messages,
            follows: s.follows,
            last_seen: s.last_seen,
            extra: (extra != PlayerExtra::default()).then(|| Box::new(extra)),
        }
    }
}

impl Serialize for Player {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let extra = self.extra.as_deref();
        StoredPlayerRef {
            events_by_kind: &self.events_by_kind,
            sessions: self.sessions,
            session_open_since: self.session_open_since,
            playtime_ms: self.playtime_ms,
            matches: self.matches,
            kills: self.kills,
            deaths: self.deaths,
            survival_secs_total: self.survival_secs_total,
            best_survival_secs: self.best_survival_secs,
            best_placement: self.best_placement,
            purchases: self.purchases,
            revenue: extra.map_or(&[], |e| &e.revenue),
            level: self.level,
            achievements: self.achievements,
            chat_messages: self.chat_messages,
            follows: self.follows,
            last_seen: self.last_seen,
            watching: extra.and_then(|e| e.watching.as_ref().map(|(c, t)| (&**c, *t))),
            watch_ms: extra.map_or(&[], |e| &e.watch_ms),
        }
        .serialize(s)
    }
}

/// A player as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerView {
    pub id: String,
    pub events: u64,
    pub events_by_kind: std::collections::BTreeMap<String, u32>,
    pub sessions: u32,
    pub session_open: bool,
    pub playtime_ms: u64,
    pub matches: u32,
    pub kills: u64,
    pub deaths: u64,
    pub avg_kills_per_match: f64,
    pub avg_survival_secs: f64,
    pub best_survival_secs: u32,
    pub best_placement: Option<u32>,
    pub purchases: u32,
    pub revenue: std::collections::BTreeMap<String, u128>,
    pub level: u32,
    pub achievements: u32,
    pub chat_messages: u32,
    pub follows: u32,
    pub last_seen: i64,
    pub current_channel: Option<String>,
    /// Top channels by watch time: (channel, milliseconds), longest first.
    pub top_channels: Vec<(String, u64)>,
}

impl Player {
    /// Applies one event at event time `ts`. Pure and total: every valid event applies.
    pub fn apply(&mut self, ts: i64, body: &EventBody) {
        let by_kind = &mut self.events_by_kind[body.kind_index()];
        *by_kind = by_kind.saturating_add(1);
        self.last_seen = self.last_seen.max(ts);
        match body {
            EventBody::SessionStart {} => self.session_open_since = Some(ts),
            EventBody::SessionEnd {} => {
                if let Some(start) = self.session_open_since.take() {
                    self.sessions = self.sessions.saturating_add(1);
                    self.playtime_ms = self
                        .playtime_ms
                        .saturating_add(ts.saturating_sub(start).max(0) as u64);
                }
            }
            EventBody::MatchStart { .. } => {}
            EventBody::MatchEnd {
                kills,
                deaths,
                survival_secs,
                placement,
                ..
            } => {
                self.matches = self.matches.saturating_add(1);
                self.kills = self.kills.saturating_add(*kills as u64);
                self.deaths = self.deaths.saturating_add(*deaths as u64);
                self.survival_secs_total = self
                    .survival_secs_total
                    .saturating_add(*survival_secs as u64);
                self.best_survival_secs = self.best_survival_secs.max(*survival_secs);
                if self.best_placement == 0 || (*placement > 0 && *placement < self.best_placement)
                {
                    self.best_placement = *placement;
                }
            }
            EventBody::Purchase {
                amount, currency, ..
            } => {
                self.purchases = self.purchases.saturating_add(1);
                let revenue = &mut self.extra_mut().revenue;
                add_revenue(revenue, currency_code(currency), *amount as u128);
            }
            EventBody::LevelUp { level } => self.level = self.level.max(*level),
            EventBody::Achievement { .. } => {
                self.achievements = self.achievements.saturating_add(1)
            }
            EventBody::ChatMessage { .. } => {
                self.chat_messages = self.chat_messages.saturating_add(1)
            }
            EventBody::Follow { .. } => self.follows = self.follows.saturating_add(1),
            EventBody::ViewerJoin { channel } | EventBody::ViewerHeartbeat { channel } => {
                let extra = self.extra_mut();
                extra.accrue(ts);
                if extra.watching.as_ref().map(|(c, _)| &**c) != Some(channel.as_str()) {
                    extra.watching = Some((channel.as_str().into(), ts));
                }
            }
            EventBody::ViewerSwitch { to, .. } => {
                let extra = self.extra_mut();
                extra.accrue(ts);
                extra.watching = Some((to.as_str().into(), ts));
            }
            EventBody::ViewerLeave { .. } => {
                if let Some(extra) = self.extra.as_deref_mut() {
                    extra.accrue(ts);
                    extra.watching = None;
                    // Nothing left to keep: the same state as never having watched.
                    if *extra == PlayerExtra::default() {
                        self.extra = None;
                    }
                }
            }
        }
    }

    fn extra_mut(&mut self) -> &mut PlayerExtra {
        self.extra.get_or_insert_with(Box::default)
    }
}

/// The three bytes of an ISO 4217 code (validated at ingest; `???` if not three bytes).
pub fn currency_code(currency: &str) -> [u8; 3] {
    currency.as_bytes().try_into().unwrap_or(*b"???")
}

/// Adds `amount` to the revenue of `code` in a list sorted by currency.
pub fn add_revenue(revenue: &mut Vec<([u8; 3], u128)>, code: [u8; 3], amount: u128) {
    match revenue.binary_search_by(|(c, _)| c.cmp(&code)) {
        Ok(i) => revenue[i].1 = revenue[i].1.saturating_add(amount),
        Err(i) => {
            // One more place while there are few, not the four a vector's first growth
            // takes: most players and buckets see one currency.
            if revenue.len() < 4 {
                revenue.reserve_exact(1);
            }
            revenue.insert(i, (code, amount))
        }
    }
}

impl PlayerExtra {
    /// Adds the time since the last accrual to the channel being watched.
    fn accrue(&mut self, ts: i64) {
        let Some((channel, since)) = self.watching.as_mut() else {
            return;
        };
        let delta = ts.saturating_sub(*since).max(0) as u64;
        *since = (*since).max(ts);
        if delta == 0 {
            return;
        }
        match self.watch_ms.iter_mut().find(|(c, _)| c == channel) {
            Some((_, ms)) => *ms = ms.saturating_add(delta),
            None => self.watch_ms.push((channel.clone(), delta)),
        }
    }
}

impl Player {
    pub fn view(&self, id: &str) -> PlayerView {
        let no_extra = PlayerExtra::default();
        let extra = self.extra.as_deref().unwrap_or(&no_extra);
        let mut top: Vec<(String, u64)> = extra
            .watch_ms
            .iter()
            .map(|(c, ms)| (c.to_string(), *ms))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_CHANNELS);
        let per_match = |total: u64| {
            if self.matches == 0 {
                0.0
            } else {
                total as f64 / self.matches as f64
            }
        };
        PlayerView {
            id: id.to_string(),
            events: self.events_by_kind.iter().map(|&n| n as u64).sum(),
            events_by_kind: KINDS
                .iter()
                .zip(self.events_by_kind)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            sessions: self.sessions,
            session_open: self.session_open_since.is_some(),
            playtime_ms: self.playtime_ms,
            matches: self.matches,
            kills: self.kills,
            deaths: self.deaths,
            avg_kills_per_match: per_match(self.kills),
            avg_survival_secs: per_match(self.survival_secs_total),
            best_survival_secs: self.best_survival_secs,
            best_placement: (self.best_placement > 0).then_some(self.best_placement),
            purchases: self.purchases,
            revenue: extra
                .revenue
                .iter()
                .map(|(c, a)| (String::from_utf8_lossy(c).into_owned(), *a))
                .collect(),
            level: self.level,
            achievements: self.achievements,
            chat_messages: self.chat_messages,
            follows: self.follows,
            last_seen: self.last_seen,
            current_channel: extra.watching.as_ref().map(|(c, _)| c.to_string()),
            top_channels: top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(c: &str) -> EventBody {
        EventBody::ViewerJoin { channel: c.into() }
    }

    #[test]
    fn sessions_and_matches() {
        let mut p = Player::default();
        p.apply(1_000, &EventBody::SessionStart {});
        p.apply(61_000, &EventBody::SessionEnd {});
        p.apply(70_000, &EventBody::SessionEnd {}); // no open session: counted as event only
        for (kills, survival, place) in [(3, 100, 4), (5, 300, 1)] {
            p.apply(
                80_000,
                &EventBody::MatchEnd {
                    match_id: "m".into(),
                    kills,
                    deaths: 1,
                    survival_secs: survival,
                    placement: place,
                },
            );
        }
        let v = p.view("p");
        assert_eq!(
            (v.sessions, v.playtime_ms, v.session_open),
            (1, 60_000, false)
        );
        assert_eq!((v.matches, v.kills, v.deaths), (2, 8, 2));
        assert_eq!(v.avg_kills_per_match, 4.0);
        assert_eq!(v.avg_survival_secs, 200.0);
        assert_eq!((v.best_survival_secs, v.best_placement), (300, Some(1)));
        assert_eq!(v.events, 5);
        assert_eq!(v.events_by_kind["session_end"], 2);
    }

    #[test]
    fn revenue_per_currency() {
        let mut p = Player::default();
        for (amount, cur) in [(100, "USD"), (250, "EUR"), (50, "USD")] {
            p.apply(
                1,
                &EventBody::Purchase {
                    item: "i".into(),
                    amount,
                    currency: cur.into(),
                },
            );
        }
        let v = p.view("p");
        assert_eq!(v.purchases, 3);
        assert_eq!(v.revenue["USD"], 150);
        assert_eq!(v.revenue["EUR"], 250);
    }

    #[test]
    fn revenue_takes_exactly_its_room_for_a_few_currencies_and_stays_sorted() {
        let mut revenue = Vec::new();
        for (i, code) in [*b"USD", *b"EUR", *b"JPY", *b"USD"].into_iter().enumerate() {
            add_revenue(&mut revenue, code, 10 + i as u128);
        }
        assert_eq!(revenue.len(), 3);
        assert_eq!(revenue.capacity(), 3, "no room beyond the currencies seen");
        assert_eq!(
            revenue,
            vec![(*b"EUR", 11), (*b"JPY", 12), (*b"USD", 10 + 13)]
        );
        // Many currencies: amortized growth again, still sorted, every amount kept.
        for i in 0..200u8 {
            add_revenue(&mut revenue, [b'X', i / 26 + b'A', i % 26 + b'A'], 1);
        }
        assert_eq!(revenue.len(), 203);
        assert!(revenue.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            revenue.iter().map(|(_, a)| a).sum::<u128>(),
            11 + 12 + 23 + 200
        );
    }

    #[test]
    fn revenue_never_wraps_and_counters_saturate() {
        let mut p = Player::default();
        let buy = |amount| EventBody::Purchase {
            item: "i".into(),
            amount,
            currency: "USD".into(),
        };
        // 2^63 + 2^63 is 2^64: exact, where a 64-bit sum wrapped to 0.
        p.apply(1, &buy(1 << 63));
        p.apply(2, &buy(1 << 63));
        assert_eq!(p.view("p").revenue["USD"], 1u128 << 64);
        p.apply(3, &buy(u64::MAX));
        assert_eq!(p.view("p").revenue["USD"], (1u128 << 64) + u64::MAX as u128);
        // A counter at its maximum stays there instead of wrapping to 0.
        p.purchases = u32::MAX;
        p.kills = u64::MAX - 1;
        p.apply(4, &buy(1));
        let end = EventBody::MatchEnd {
            match_id: "m".into(),
            kills: 5,
            deaths: 0,
            survival_secs: 1,
            placement: 1,
        };
        p.apply(5, &end);
        assert_eq!((p.purchases, p.kills), (u32::MAX, u64::MAX));
    }

    #[test]
    fn rows_written_with_64_bit_revenue_still_load() {
        // The layout before revenue widened to 128 bits: postcard writes both as the same
        // varint, so an old row decodes to the same player.
        #[derive(Clone, Serialize)]
        struct OldPlayer {
            events_by_kind: [u32; KINDS.len()],
            sessions: u32,
            session_open_since: Option<i64>,
            playtime_ms: u64,
            matches: u32,
            kills: u64,
            deaths: u64,
            survival_secs_total: u64,
            best_survival_secs: u32,
            best_placement: u32,
            purchases: u32,
            revenue: Vec<([u8; 3], u64)>,
            level: u32,
            achievements: u32,
            chat_messages: u32,
            follows: u32,
            last_seen: i64,
            watching: Option<(String, i64)>,
            watch_ms: Vec<(String, u64)>,
        }
        let old = OldPlayer {
            events_by_kind: [1; KINDS.len()],
            sessions: 2,
            session_open_since: Some(9),
            playtime_ms: 3,
            matches: 4,
            kills: 5,
            deaths: 6,
            survival_secs_total: 7,
            best_survival_secs: 8,
            best_placement: 1,
            purchases: 2,
            revenue: vec![(*b"USD", u64::MAX)],
            level: 10,
            achievements: 11,
            chat_messages: 12,
            follows: 13,
            last_seen: 14,
            watching: Some(("c".into(), 15)),
            watch_ms: vec![("c".into(), 16)],
        };
        let bytes = crate::entity::encode(&old);
        let p: Player = crate::entity::decode(&bytes).unwrap();
        assert_eq!(p.view("p").revenue["USD"], u64::MAX as u128);
        assert_eq!((p.sessions, p.follows, p.last_seen), (2, 13, 14));
        assert_eq!(p.extra.unwrap().watch_ms[0].1, 16);
    }

    #[test]
    fn watch_time_per_channel() {
        let mut p = Player::default();
        p.apply(0, &join("a"));
        p.apply(
            10_000,
            &EventBody::ViewerHeartbeat {
                channel: "a".into(),
            },
        );
        p.apply(
            25_000,
            &EventBody::ViewerSwitch {
                from: "a".into(),
                to: "b".into(),
            },
        );
        p.apply(
            30_000,
            &EventBody::ViewerLeave {
                channel: "b".into(),
            },
        );
        let v = p.view("p");
        assert_eq!(
            v.top_channels,
            vec![("a".into(), 25_000), ("b".into(), 5_000)]
        );
        assert_eq!(v.current_channel, None);
    }

    #[test]
    fn stays_compact_and_reads_the_first_stored_layout() {
        // Rare parts behind one pointer: a million players stay resident.
        assert!(
            std::mem::size_of::<Player>() <= 152,
            "{}",
            std::mem::size_of::<Player>()
        );
        let mut p = Player::default();
        p.apply(1, &EventBody::SessionStart {});
        p.apply(
            2,
            &EventBody::Purchase {
                item: "i".into(),
                amount: 5,
                currency: "EUR".into(),
            },
        );
        p.apply(
            3,
            &EventBody::ViewerJoin {
                channel: "c".into(),
            },
        );
        p.apply(
            9,
            &EventBody::ViewerHeartbeat {
                channel: "c".into(),
            },
        );
        // The first layout: every field flat, in this order.
        // Nested tuples encode like the flat field list (postcard has no framing).
        let bytes = postcard::to_stdvec(&crate::entity::Stored::V1((
            p.events_by_kind,
            (p.sessions, p.session_open_since, p.playtime_ms, p.matches),
            (p.kills, p.deaths, p.survival_secs_total),
            (p.best_survival_secs, p.best_placement, p.purchases),
            vec![(*b"EUR", 5u64)],
            (
                p.level,
                p.achievements,
                p.chat_messages,
                p.follows,
                p.last_seen,
            ),
            Some(("c", 9i64)),
            vec![("c", 6u64)],
        )))
        .unwrap();
        let decoded: Player = crate::entity::decode(&bytes).unwrap();
        assert_eq!(decoded, p);
        assert_eq!(crate::entity::encode(&p), bytes);
    }

    #[test]
    fn a_viewer_who_left_without_watching_has_no_extra() {
        let mut p = Player::default();
        let join = EventBody::ViewerJoin {
            channel: "c".into(),
        };
        let leave = EventBody::ViewerLeave {
            channel: "c".into(),
        };
        p.apply(5, &join);
        p.apply(5, &leave);
        assert!(p.extra.is_none());
        let decoded: Player = crate::entity::decode(&crate::entity::encode(&p)).unwrap();
        assert_eq!(decoded, p);
    }
}
