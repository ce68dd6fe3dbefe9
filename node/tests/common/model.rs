//! A seeded event stream and an independent reference model of what every player and
//! channel must show after it, written separately from the node's entity code so that a
//! shared bug does not hide.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tally_node::entity_path::entity_path;
use tally_node::event::{Event, EventBody};
use tally_node::kind::ShardKind;

/// Stream shape.
pub struct StreamSpec {
    pub seed: u64,
    pub events: usize,
    pub players: usize,
    pub channels: usize,
    pub start_ts: i64,
}

/// A seeded stream of mixed player and viewer events with non-decreasing timestamps.
pub fn generate(spec: &StreamSpec) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut ts = spec.start_ts;
    let mut watching: HashMap<usize, usize> = HashMap::new();
    let mut out = Vec::with_capacity(spec.events);
    for i in 0..spec.events {
        ts += rng.random_range(0..40);
        let p = rng.random_range(0..spec.players);
        let ch = |r: &mut StdRng| format!("ch-{}", r.random_range(0..spec.channels));
        let roll = rng.random_range(0..100);
        let body = match roll {
            0..=5 => EventBody::SessionStart {},
            6..=10 => EventBody::SessionEnd {},
            11..=14 => EventBody::MatchStart {
                match_id: format!("m{i}").into(),
            },
            15..=24 => EventBody::MatchEnd {
                match_id: format!("m{i}").into(),
                kills: rng.random_range(0..12),
                deaths: rng.random_range(0..4),
                survival_secs: rng.random_range(10..1800),
                placement: rng.random_range(1..100),
            },
            25..=29 => EventBody::Purchase {
                item: format!("item-{}", rng.random_range(0..20)).into(),
                amount: rng.random_range(1..5000),
                currency: ["USD", "EUR", "JPY"][rng.random_range(0..3)].into(),
            },
            30..=32 => EventBody::LevelUp {
                level: rng.random_range(1..100),
            },
            33..=35 => EventBody::Achievement {
                achievement: format!("a{}", rng.random_range(0..30)).into(),
            },
            36..=39 => EventBody::ChatMessage {
                channel: ch(&mut rng).into(),
                text: "gg".into(),
            },
            40..=43 => EventBody::Follow {
                channel: ch(&mut rng).into(),
            },
            _ => {
                // Viewing: join, heartbeat, switch or leave, following the player's state,
                // with a little noise (heartbeats for other channels, stray leaves).
                let c = rng.random_range(0..spec.channels);
                match (watching.get(&p).copied(), rng.random_range(0..10)) {
                    (None, 0) => EventBody::ViewerLeave {
                        channel: format!("ch-{c}").into(),
                    },
                    (None, _) => {
                        watching.insert(p, c);
                        EventBody::ViewerJoin {
                            channel: format!("ch-{c}").into(),
                        }
                    }
                    (Some(cur), 0..=5) => EventBody::ViewerHeartbeat {
                        channel: format!("ch-{cur}").into(),
                    },
                    (Some(cur), 6..=7) if c != cur => {
                        watching.insert(p, c);
                        EventBody::ViewerSwitch {
                            from: format!("ch-{cur}").into(),
                            to: format!("ch-{c}").into(),
                        }
                    }
                    (Some(cur), 8) => {
                        watching.remove(&p);
                        EventBody::ViewerLeave {
                            channel: format!("ch-{cur}").into(),
                        }
                    }
                    (Some(_), _) => EventBody::ViewerHeartbeat {
                        channel: format!("ch-{c}").into(),
                    },
                }
            }
        };
        if let EventBody::ViewerHeartbeat { channel } = &body {
            // A heartbeat for another channel moves the viewer there (as the node does).
            watching.insert(p, channel[3..].parse().unwrap());
        }
        out.push(Event {
            v: 1,
            id: format!("ev-{}-{i}", spec.seed).into(),
            ts,
            player: format!("player-{p}").into(),
            body,
        });
    }
    out
}

/// Expected player counters.
#[derive(Default, Debug, Clone)]
pub struct PlayerModel {
    pub events: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub open_since: Option<i64>,
    pub sessions: u64,
    pub playtime_ms: i64,
    pub matches: u64,
    pub kills: u64,
    pub deaths: u64,
    pub best_survival: u64,
    pub best_placement: Option<u64>,
    pub purchases: u64,
    pub revenue: BTreeMap<String, u128>,
    pub level: u64,
    pub achievements: u64,
    pub chats: u64,
    pub follows: u64,
    pub last_seen: i64,
    pub current: Option<(String, i64)>,
    pub watch: BTreeMap<String, i64>,
}

/// Expected channel counters.
#[derive(Default, Debug, Clone)]
pub struct ChannelModel {
    pub present: BTreeMap<String, (i64, i64)>,
    pub ever: HashSet<String>,
    pub peak: u64,
    pub joins: u64,
    pub leaves: u64,
    pub expirations: u64,
    pub watch_ms: i64,
    pub follows: u64,
}

/// The reference model over a whole stream.
#[derive(Default)]
pub struct Model {
    pub players: BTreeMap<String, PlayerModel>,
    pub channels: BTreeMap<String, ChannelModel>,
    /// Max event time per channel partition (the node's watermark at the end).
    pub channel_watermarks: HashMap<i32, i64>,
    pub partitions: i32,
    pub timeout_ms: i64,
}

fn kind_name(b: &EventBody) -> String {
    serde_json::to_value(b).unwrap()["kind"]
        .as_str()
        .unwrap()
        .to_string()
}

impl Model {
    pub fn new(partitions: i32, timeout_ms: i64) -> Model {
        Model {
            partitions,
            timeout_ms,
            ..Default::default()
        }
    }

    pub fn apply_all(&mut self, events: &[Event]) {
        for e in events {
            self.apply(e);
        }
    }

    pub fn apply(&mut self, e: &Event) {
        let p = self.players.entry(e.player.to_string()).or_default();
        p.events += 1;
        *p.by_kind.entry(kind_name(&e.body)).or_default() += 1;
        p.last_seen = p.last_seen.max(e.ts);
        let watch_until = |p: &mut PlayerModel, t: i64| {
            if let Some((c, since)) = p.current.clone() {
                if t > since {
                    *p.watch.entry(c.clone()).or_default() += t - since;
                    p.current = Some((c, t));
                }
            }
        };
        match &e.body {
            EventBody::SessionStart {} => p.open_since = Some(e.ts),
            EventBody::SessionEnd {} => {
                if let Some(s) = p.open_since.take() {
                    p.sessions += 1;
                    p.playtime_ms += (e.ts - s).max(0);
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
                p.matches += 1;
                p.kills += *kills as u64;
                p.deaths += *deaths as u64;
                p.best_survival = p.best_survival.max(*survival_secs as u64);
                p.best_placement = Some(
                    p.best_placement
                        .map_or(*placement as u64, |b| b.min(*placement as u64)),
                );
            }
            EventBody::Purchase {
                amount, currency, ..
            } => {
                p.purchases += 1;
                *p.revenue.entry(currency.to_string()).or_default() += *amount as u128;
            }
            EventBody::LevelUp { level } => p.level = p.level.max(*level as u64),
            EventBody::Achievement { .. } => p.achievements += 1,
            EventBody::ChatMessage { .. } => p.chats += 1,
            EventBody::Follow { .. } => p.follows += 1,
            EventBody::ViewerJoin { channel } | EventBody::ViewerHeartbeat { channel } => {
                watch_until(p, e.ts);
                if p.current.as_ref().map(|c| c.0.as_str()) != Some(channel.as_str()) {
                    p.current = Some((channel.to_string(), e.ts));
                }
            }
            EventBody::ViewerSwitch { to, .. } => {
                watch_until(p, e.ts);
                p.current = Some((to.to_string(), e.ts));
            }
            EventBody::ViewerLeave { .. } => {
                watch_until(p, e.ts);
                p.current = None;
            }
        }
        for (channel, ce) in e.channel_records() {
            let part = tally_node::partitioner::partition_for(&channel, self.partitions);
            let wm = self.channel_watermarks.entry(part).or_insert(i64::MIN);
            *wm = (*wm).max(ce.ts);
            let watermark = *wm;
            let timeout = self.timeout_ms;
            let c = self.channels.entry(channel.to_string()).or_default();
            // Expire silent viewers as of the partition's watermark.
            let expired: Vec<String> = c
                .present
                .iter()
                .filter(|(_, (_, last))| *last < watermark - timeout)
                .map(|(v, _)| v.clone())
                .collect();
            for v in expired {
                let (joined, last) = c.present.remove(&v).unwrap();
                c.expirations += 1;
                c.watch_ms += (last - joined).max(0);
            }
            match &ce.body {
                EventBody::ViewerJoin { .. } | EventBody::ViewerHeartbeat { .. } => {
                    if let Some(pr) = c.present.get_mut(ce.player.as_str()) {
                        pr.1 = pr.1.max(ce.ts);
                    } else {
                        c.present.insert(ce.player.to_string(), (ce.ts, ce.ts));
                        c.joins += 1;
                        c.ever.insert(ce.player.to_string());
                        c.peak = c.peak.max(c.present.len() as u64);
                    }
                }
                EventBody::ViewerLeave { .. } => {
                    if let Some((joined, last)) = c.present.remove(ce.player.as_str()) {
                        c.leaves += 1;
                        c.watch_ms += (ce.ts.max(last) - joined).max(0);
                    }
                }
                EventBody::Follow { .. } => c.follows += 1,
                _ => {}
            }
        }
    }

    /// The expected concurrent viewers of a channel as of its partition's final watermark.
    pub fn concurrent(&self, id: &str) -> u64 {
        let part = tally_node::partitioner::partition_for(id, self.partitions);
        let wm = self.channel_watermarks[&part];
        self.channels[id]
            .present
            .values()
            .filter(|(_, last)| *last >= wm - self.timeout_ms)
            .count() as u64
    }

    /// Differences between a player's expected state and the node's JSON answer.
    pub fn diff_player(&self, id: &str, got: &Value) -> Vec<String> {
        let m = &self.players[id];
        let mut d = Vec::new();
        let mut check = |field: &str, want: Value| {
            if got[field] != want {
                d.push(format!(
                    "player {id}.{field}: want {want}, got {}",
                    got[field]
                ));
            }
        };
        check("events", m.events.into());
        check("events_by_kind", serde_json::to_value(&m.by_kind).unwrap());
        check("sessions", m.sessions.into());
        check("session_open", m.open_since.is_some().into());
        check("playtime_ms", m.playtime_ms.into());
        check("matches", m.matches.into());
        check("kills", m.kills.into());
        check("deaths", m.deaths.into());
        check("best_survival_secs", m.best_survival.into());
        check(
            "best_placement",
            m.best_placement.map_or(Value::Null, Value::from),
        );
        check("purchases", m.purchases.into());
        check("revenue", serde_json::to_value(&m.revenue).unwrap());
        check("level", m.level.into());
        check("achievements", m.achievements.into());
        check("chat_messages", m.chats.into());
        check("follows", m.follows.into());
        check("last_seen", m.last_seen.into());
        check(
            "current_channel",
            m.current
                .as_ref()
                .map_or(Value::Null, |c| c.0.clone().into()),
        );
        let mut top: Vec<(String, i64)> = m.watch.iter().map(|(c, w)| (c.clone(), *w)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(5);
        check("top_channels", serde_json::to_value(&top).unwrap());
        d
    }

    pub fn diff_channel(&self, id: &str, got: &Value) -> Vec<String> {
        let m = &self.channels[id];
        let mut d = Vec::new();
        let mut check = |field: &str, want: Value| {
            if got[field] != want {
                d.push(format!(
                    "channel {id}.{field}: want {want}, got {}",
                    got[field]
                ));
            }
        };
        check("concurrent_viewers", self.concurrent(id).into());
        check("peak_concurrent", m.peak.into());
        check("joins", m.joins.into());
        check("leaves", m.leaves.into());
        check("expirations", m.expirations.into());
        check("unique_viewers", (m.ever.len() as u64).into());
        check("watch_ms", m.watch_ms.into());
        check("follows", m.follows.into());
        d
    }

    /// Queries every entity on `base` and returns all differences (empty = exact).
    pub async fn compare(&self, client: &reqwest::Client, base: &str) -> Vec<String> {
        let mut diffs = Vec::new();
        for id in self.players.keys() {
            let url = format!("{base}{}", entity_path(ShardKind::Players, id));
            match get_json(client, &url).await {
                Ok(v) => diffs.extend(self.diff_player(id, &v["player"])),
                Err(e) => diffs.push(format!("player {id}: {e}")),
            }
        }
        for id in self.channels.keys() {
            let url = format!("{base}{}", entity_path(ShardKind::Channels, id));
            match get_json(client, &url).await {
                Ok(v) => diffs.extend(self.diff_channel(id, &v["channel"])),
                Err(e) => diffs.push(format!("channel {id}: {e}")),
            }
        }
        diffs
    }

    /// Compares until exact or `timeout`; panics with the first differences otherwise.
    pub async fn assert_converges(&self, base: impl Fn() -> String, timeout: Duration) {
        let client = super::http_client();
        let deadline = Instant::now() + timeout;
        loop {
            let diffs = self.compare(&client, &base()).await;
            if diffs.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} differences after {timeout:?}, first ones:\n{}",
                    diffs.len(),
                    diffs
                        .iter()
                        .take(20)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| e.to_string())
}
