//! End-to-end latency: a probe event is created, sent like the load, and the probe polls
//! the owner's state until the event's effect is visible. Each probe is a `level_up` of a
//! dedicated probe player with a rising level, so "visible" is `level >= k`.

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

/// The player the probes of a run whose ids start with `prefix` level up.
pub fn probe_player(prefix: &str) -> String {
    format!("{prefix}probe")
}

/// Runs probes every `interval` until `progress.stop` is set; returns the histogram (µs).
/// `api_key` (scopes `ingest` and `read`) goes with every request, if given.
pub async fn run(
    via: Arc<Via>,
    nodes: Vec<String>,
    api_key: Option<String>,
    prefix: String,
    interval: Duration,
    progress: Arc<Progress>,
) -> (Histogram<u64>, u64) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let mut timeouts = 0;
    if nodes.is_empty() {
        return (hist, 0);
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
                return (hist, 0);
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
            timeouts += 1;
            continue;
        }
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
            Some(true) => {
                let _ = hist.record(created.elapsed().as_micros().max(1) as u64);
            }
            Some(false) => timeouts += 1,
            None => {}
        }
        tokio::time::sleep(interval.saturating_sub(created.elapsed())).await;
    }
    (hist, timeouts)
}
