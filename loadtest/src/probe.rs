//! End-to-end latency: a probe event is created, sent like the load, and the probe polls
//! the owner's state until the event's effect is visible. Each probe is a `level_up` of a
//! dedicated probe player with a rising level, so "visible" is `level >= k`. Each probe
//! times two things from the event's creation: until the send was acknowledged (the HTTP
//! ingest's answer, or the commit of the Kafka transaction) and until the event was
//! visible. Not for the load's own batches: only the probes are timed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_node::entity_path::entity_path;
use tally_node::event::{Event, EventBody};
use tally_node::ingest::records_for;
use tally_node::kind::ShardKind;

use crate::drive::{post_batch, Progress, Via};

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, serde::Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub timeouts: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>, timeouts: u64) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            timeouts,
        }
    }
}

/// What the probes of a run measured, in microseconds.
pub struct ProbeTimes {
    /// Event created until its send was acknowledged.
    pub acknowledged: Histogram<u64>,
    /// Event created until a query on the owner showed it.
    pub visible: Histogram<u64>,
    /// Probes whose send failed.
    pub failed_sends: u64,
    /// Probes sent but not visible within 30 s.
    pub not_visible: u64,
}

impl Default for ProbeTimes {
    fn default() -> Self {
        let hist = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
        ProbeTimes {
            acknowledged: hist(),
            visible: hist(),
            failed_sends: 0,
            not_visible: 0,
        }
    }
}

impl ProbeTimes {
    /// A probe's send returned Ok `took` after the event was created.
    fn record_ack(&mut self, took: Duration) {
        self.acknowledged.saturating_record(micros(took));
    }

    /// A probe's event was seen `took` after it was created.
    fn record_visible(&mut self, took: Duration) {
        self.visible.saturating_record(micros(took));
    }

    /// Event-to-visible percentiles; a failed send counts as a timeout, as does a probe
    /// never seen.
    pub fn visible_latency(&self) -> Latency {
        Latency::from_histogram(&self.visible, self.failed_sends + self.not_visible)
    }

    /// Acknowledgement percentiles; a failed send counts as a timeout.
    pub fn ack_latency(&self) -> Latency {
        Latency::from_histogram(&self.acknowledged, self.failed_sends)
    }
}

/// A duration in whole microseconds, at least 1 (the histogram's lowest value).
fn micros(d: Duration) -> u64 {
    (d.as_micros().min(u64::MAX as u128) as u64).max(1)
}

/// The player the probes of a run whose ids start with `prefix` level up.
pub fn probe_player(prefix: &str) -> String {
    format!("{prefix}probe")
}

/// Runs probes every `interval` until `progress.stop` is set; returns what they measured.
/// `api_key` (scopes `ingest` and `read`) goes with every request, if given.
pub async fn run(
    via: Arc<Via>,
    nodes: Vec<String>,
    api_key: Option<String>,
    prefix: String,
    interval: Duration,
    progress: Arc<Progress>,
) -> ProbeTimes {
    let mut times = ProbeTimes::default();
    if nodes.is_empty() {
        return times;
    }
    let client =
        crate::http_client(Duration::from_secs(5), api_key.as_deref()).expect("http client");
    let producer = match via.as_ref() {
        Via::Kafka(kafka) => match crate::topic_partitions(kafka)
            .await
            .and_then(|p| crate::drive::kafka_producer(kafka, p))
        {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("tally-loadtest: latency probes disabled: {e:#}");
                return times;
            }
        },
        Via::Http(_) | Via::Discard => None,
    };
    let player = probe_player(&prefix);
    let mut level = 0u32;
    while !progress.stop.load(Ordering::Relaxed) {
        level += 1;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let event = Event {
            v: 1,
            id: format!("{prefix}probe-{level}").into(),
            ts: now_ms,
            player: player.clone().into(),
            body: EventBody::LevelUp { level },
        };
        let created = Instant::now();
        let sent = match &producer {
            Some(p) => p
                .produce(records_for(&event))
                .await
                .map_err(|e| e.to_string()),
            None => post_batch(&client, &nodes, level as usize, event.to_json()).await,
        };
        if sent.is_err() {
            times.failed_sends += 1;
            continue;
        }
        times.record_ack(created.elapsed());
        let node = &nodes[level as usize % nodes.len()];
        let url = format!("http://{node}{}", entity_path(ShardKind::Players, &player));
        // Seen, timed out (None: the run ended while it was in flight and it was not seen
        // within 5 s: no result either way).
        let visible = loop {
            let waited = created.elapsed();
            if waited > Duration::from_secs(30) {
                break Some(false);
            }
            if progress.stop.load(Ordering::Relaxed) && waited > Duration::from_secs(5) {
                break None;
            }
            if let Ok(r) = client.get(&url).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["player"]["level"]
                        .as_u64()
                        .is_some_and(|l| l >= level as u64)
                    {
                        break Some(true);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        match visible {
            Some(true) => times.record_visible(created.elapsed()),
            Some(false) => times.not_visible += 1,
            None => {}
        }
        tokio::time::sleep(interval.saturating_sub(created.elapsed())).await;
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_and_visible_are_reported_apart() {
        let mut t = ProbeTimes::default();
        for ms in [4, 5, 6] {
            t.record_ack(Duration::from_millis(ms));
            t.record_visible(Duration::from_millis(ms * 3));
        }
        t.failed_sends = 1;
        t.not_visible = 2;
        let (ack, seen) = (t.ack_latency(), t.visible_latency());
        assert_eq!((ack.samples, ack.timeouts), (3, 1));
        assert_eq!((seen.samples, seen.timeouts), (3, 3));
        assert!((ack.p50_ms - 5.0).abs() < 0.01, "{ack:?}");
        assert!((seen.p50_ms - 15.0).abs() < 0.02, "{seen:?}");
        assert!((ack.max_ms - 6.0).abs() < 0.01, "{ack:?}");
    }

    #[test]
    fn durations_outside_the_histogram_are_clamped_not_lost() {
        let mut t = ProbeTimes::default();
        t.record_ack(Duration::ZERO);
        t.record_ack(Duration::from_secs(3600));
        let ack = t.ack_latency();
        assert_eq!(ack.samples, 2);
        assert!(ack.max_ms >= 120_000.0 * 0.999, "{ack:?}");
    }
}
