//! The `viewers` scenario: N concurrent viewers over M channels of Zipf popularity. Each
//! viewer joins in the first minute, sends a heartbeat every `heartbeat_secs`, switches
//! channel on average once a minute (Poisson: exponential gaps) and sometimes leaves and
//! comes back later. Time is event time, simulated: `speedup` runs it faster than the
//! wall clock (an hour of behaviour in minutes).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_node::event::{Event, EventBody};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct ViewersSpec {
    pub viewers: u64,
    pub channels: u64,
    /// Simulated (event-time) length of the run, seconds.
    pub duration_secs: u64,
    pub seed: u64,
    pub id_prefix: String,
    pub start_ts: i64,
    pub heartbeat_secs: u64,
    /// Mean time between channel switches of a viewer, seconds.
    pub switch_mean_secs: f64,
    /// Chance that a viewer leaves instead of switching.
    pub leave_probability: f64,
    /// Mean time until a viewer who left comes back, seconds.
    pub rejoin_mean_secs: f64,
    /// Zipf exponent of channel popularity.
    pub zipf_exponent: f64,
}

impl ViewersSpec {
    pub fn new(
        viewers: u64,
        channels: u64,
        duration_secs: u64,
        seed: u64,
        id_prefix: String,
        start_ts: i64,
    ) -> Self {
        ViewersSpec {
            viewers,
            channels,
            duration_secs,
            seed,
            id_prefix,
            start_ts,
            heartbeat_secs: 30,
            switch_mean_secs: 60.0,
            leave_probability: 0.05,
            rejoin_mean_secs: 120.0,
            zipf_exponent: 1.0,
        }
    }
}

/// Channel popularity: P(rank k) proportional to 1 / k^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn sample(&self, rng: &mut StdRng) -> u32 {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32
    }
}

const NONE: u32 = u32::MAX;

/// A deterministic simulation; yields events in event-time order.
pub struct ViewersGen {
    spec: ViewersSpec,
    rng: StdRng,
    zipf: Zipf,
    /// Channel watched per viewer (`NONE` = not watching).
    watching: Vec<u32>,
    next_heartbeat: Vec<i64>,
    next_switch: Vec<i64>,
    /// (time, viewer) of each viewer's next action, earliest first.
    queue: BinaryHeap<Reverse<(i64, u32)>>,
    end_ms: i64,
    seq: u64,
}

impl ViewersGen {
    pub fn new(spec: ViewersSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let n = spec.viewers as usize;
        let mut queue = BinaryHeap::with_capacity(n);
        let mut next_switch = vec![i64::MAX; n];
        for (v, slot) in next_switch.iter_mut().enumerate() {
            // Everybody joins within the first minute.
            let t = rng.random_range(0..60_000);
            *slot = t;
            queue.push(Reverse((t, v as u32)));
        }
        ViewersGen {
            zipf: Zipf::new(spec.channels, spec.zipf_exponent),
            watching: vec![NONE; n],
            next_heartbeat: vec![i64::MAX; n],
            next_switch,
            queue,
            end_ms: spec.duration_secs as i64 * 1000,
            seq: 0,
            rng,
            spec,
        }
    }

    /// Event time (ms since start) of the next event, if any.
    pub fn peek_time(&self) -> Option<i64> {
        self.queue
            .peek()
            .map(|Reverse((t, _))| *t)
            .filter(|t| *t < self.end_ms)
    }

    fn exp(&mut self, mean_secs: f64) -> i64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        ((-u.ln()) * mean_secs * 1000.0) as i64
    }

    fn channel(&self, c: u32) -> String {
        crate::players::channel_id(&self.spec.id_prefix, c as u64)
    }
}

impl Iterator for ViewersGen {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let Reverse((t, v)) = self.queue.pop()?;
        if t >= self.end_ms {
            self.queue.clear();
            return None;
        }
        let vi = v as usize;
        let cur = self.watching[vi];
        let body = if t == self.next_switch[vi] {
            if cur == NONE {
                let c = self.zipf.sample(&mut self.rng);
                self.watching[vi] = c;
                EventBody::ViewerJoin {
                    channel: self.channel(c).into(),
                }
            } else if self.rng.random_bool(self.spec.leave_probability) {
                self.watching[vi] = NONE;
                EventBody::ViewerLeave {
                    channel: self.channel(cur).into(),
                }
            } else {
                let mut c = self.zipf.sample(&mut self.rng);
                if c == cur {
                    c = (c + 1) % self.spec.channels as u32;
                }
                self.watching[vi] = c;
                EventBody::ViewerSwitch {
                    from: self.channel(cur).into(),
                    to: self.channel(c).into(),
                }
            }
        } else {
            EventBody::ViewerHeartbeat {
                channel: self.channel(cur).into(),
            }
        };
        // Schedule the next action.
        if self.watching[vi] == NONE {
            self.next_heartbeat[vi] = i64::MAX;
            self.next_switch[vi] = t + self.exp(self.spec.rejoin_mean_secs).max(1);
        } else {
            if t == self.next_switch[vi] {
                self.next_switch[vi] = t + self.exp(self.spec.switch_mean_secs).max(1);
            }
            self.next_heartbeat[vi] = t + self.spec.heartbeat_secs as i64 * 1000;
        }
        let next = self.next_heartbeat[vi].min(self.next_switch[vi]);
        if next == self.next_heartbeat[vi] && next == self.next_switch[vi] {
            self.next_heartbeat[vi] += 1; // the switch goes first; keep the two apart
        }
        self.queue.push(Reverse((next, v)));
        self.seq += 1;
        Some(Event {
            v: 1,
            id: format!("{}v{}", self.spec.id_prefix, self.seq).into(),
            ts: self.spec.start_ts + t,
            player: viewer_id(&self.spec.id_prefix, v as u64).into(),
            body,
        })
    }
}

/// Viewer `v` (a player id) of the run whose ids start with `prefix`.
pub fn viewer_id(prefix: &str, v: u64) -> String {
    format!("{prefix}v{v}")
}

/// Viewers watching at the end of a generated run: what `concurrent_viewers` must sum to.
pub fn watching_at_end(g: &ViewersGen) -> u64 {
    g.watching.iter().filter(|&&c| c != NONE).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::players::Expected;

    fn spec(seed: u64) -> ViewersSpec {
        ViewersSpec::new(300, 20, 600, seed, "t-".into(), 1_000_000)
    }

    #[test]
    fn deterministic_ordered_and_valid() {
        let a: Vec<Event> = ViewersGen::new(spec(1)).collect();
        let b: Vec<Event> = ViewersGen::new(spec(1)).collect();
        assert_eq!(a, b);
        assert!(
            a.windows(2).all(|w| w[0].ts <= w[1].ts),
            "events out of time order"
        );
        assert!(a.iter().all(|e| e.validate().is_ok()));
        let switches = a
            .iter()
            .filter(|e| matches!(e.body, EventBody::ViewerSwitch { .. }))
            .count();
        // 300 viewers for 10 minutes, about one switch a minute each (minus the leavers).
        assert!((1_800..3_600).contains(&switches), "{switches} switches");
    }

    #[test]
    fn popular_channels_get_more_joins() {
        let events: Vec<Event> =
            ViewersGen::new(ViewersSpec::new(2_000, 50, 300, 3, "t-".into(), 0)).collect();
        let joins_to = |c: &str| {
            events
                .iter()
                .filter(|e| match &e.body {
                    EventBody::ViewerJoin { channel } => channel == c,
                    EventBody::ViewerSwitch { to, .. } => to == c,
                    _ => false,
                })
                .count()
        };
        assert!(
            joins_to("t-c0") > 5 * joins_to("t-c40"),
            "{} vs {}",
            joins_to("t-c0"),
            joins_to("t-c40")
        );
    }

    /// The expected channel state agrees with the simulation's own idea of who is watching.
    #[test]
    fn expected_concurrency_matches_the_simulation() {
        let mut g = ViewersGen::new(spec(7));
        let mut expected = Expected::new(4, 120_000);
        for e in g.by_ref() {
            expected.apply(&e);
        }
        let concurrent: u64 = expected
            .channels
            .iter()
            .map(|(id, c)| c.concurrent_at(expected.channel_watermark(id), 120_000) as u64)
            .sum();
        assert_eq!(concurrent, watching_at_end(&g));
    }
}
