//! Sending a generated stream into a cluster, at a target rate or as fast as possible,
//! keeping the expected state of exactly the events the cluster acknowledged.
//!
//! Order matters for exactness: an entity's state depends on the order of its events. Via
//! Kafka, one pipelined submitter feeds Tally's own transactional ingest producer, so
//! records reach Kafka in generation order. Via HTTP, events are split into lanes by player
//! (a player's events always take the same lane, one request at a time), so each player's
//! order is kept while lanes run in parallel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tally_node::config::{IngestConfig, KafkaConfig};
use tally_node::event::Event;
use tally_node::ingest::{records_for, Ingest};
use tally_node::metrics::Metrics;
use tally_node::partitioner::partition_for;

use crate::players::Expected;

/// Where events go.
pub enum Via {
    /// Straight to Kafka, partitioned exactly as Tally expects.
    Kafka(Box<KafkaConfig>),
    /// Through the HTTP ingest of these nodes (`host:port`), round robin with failover.
    Http(Vec<String>),
    /// Nowhere: every record is built and encoded exactly as for Kafka, then dropped. What
    /// the generator alone can do (its ceiling), measured without a broker.
    Discard,
}

/// Counters shared with the progress display.
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

/// How to send.
pub struct DriveOpts {
    pub batch: usize,
    /// Events per second; None = as fast as possible.
    pub rate: Option<f64>,
    /// Pace by event time instead: (event time of the start, speedup). An event of time t
    /// is sent (t - start) / speedup after the run began.
    pub event_time: Option<(i64, f64)>,
    /// Parallel HTTP lanes.
    pub lanes: usize,
    /// Batches in flight towards Kafka.
    pub pipeline: usize,
    /// The API key for HTTP ingest (scope `ingest`), if the cluster checks keys.
    pub api_key: Option<String>,
    /// Stamp every event with the wall-clock time its batch is sent (instead of the
    /// generated time), so that how long an event took to reach a subscriber is the
    /// receive time minus the event's own time. The expected state is built from the
    /// stamped events, so it stays exact.
    pub stamp_send_time: bool,
}

/// Stamps batches with the time they are sent, in milliseconds since the epoch, never
/// earlier than a batch before (an entity's events stay in time order if the clock steps
/// back).
#[derive(Default)]
struct Stamper {
    last_ms: i64,
}

impl Stamper {
    fn stamp(&mut self, events: &mut [Event]) {
        self.last_ms = self.last_ms.max(crate::unix_micros() / 1000);
        for e in events {
            e.ts = self.last_ms;
        }
    }
}

/// Paces sending to a target rate, or to event time.
struct Pacer {
    rate: Option<f64>,
    event_time: Option<(i64, f64)>,
    started: Instant,
}

impl Pacer {
    fn new(opts: &DriveOpts) -> Pacer {
        Pacer {
            rate: opts.rate,
            event_time: opts.event_time,
            started: Instant::now(),
        }
    }

    /// Waits until the batch starting with the `sent`-th event, of time `ts`, is due, or
    /// until `stop` is set (Ctrl-C must not wait for a slow schedule).
    async fn wait(&self, sent: u64, ts: i64, stop: &AtomicBool) {
        let due = match (self.event_time, self.rate) {
            (Some((start, speedup)), _) => {
                self.started
                    + Duration::from_secs_f64(((ts - start).max(0) as f64 / 1000.0) / speedup)
            }
            (None, Some(rate)) => self.started + Duration::from_secs_f64(sent as f64 / rate),
            (None, None) => return,
        };
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= due {
                return;
            }
            tokio::time::sleep_until(due.min(now + Duration::from_millis(100)).into()).await;
        }
    }
}

/// Sends every event of `events`; applies acknowledged ones to `expected`.
pub async fn drive(
    events: impl Iterator<Item = Event>,
    via: &Via,
    opts: &DriveOpts,
    expected: &mut Expected,
    progress: &Progress,
) -> anyhow::Result<()> {
    match via {
        Via::Kafka(kafka) => drive_kafka(events, kafka, opts, expected, progress).await,
        Via::Http(nodes) => drive_http(events, nodes, opts, expected, progress).await,
        Via::Discard => {
            drive_discard(events, opts, expected, progress).await;
            Ok(())
        }
    }
}

async fn drive_discard(
    events: impl Iterator<Item = Event>,
    opts: &DriveOpts,
    expected: &mut Expected,
    progress: &Progress,
) {
    let pacer = Pacer::new(opts);
    let mut stamper = Stamper::default();
    let mut events = events.peekable();
    let mut queued = 0u64;
    while !progress.stop.load(Ordering::Relaxed) {
        let mut batch: Vec<Event> = events.by_ref().take(opts.batch).collect();
        if batch.is_empty() {
            break;
        }
        pacer.wait(queued, batch[0].ts, &progress.stop).await;
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.stamp_send_time {
            stamper.stamp(&mut batch);
        }
        queued += batch.len() as u64;
        let records: Vec<_> = batch.iter().flat_map(records_for).collect();
        std::hint::black_box(records);
        settle(batch, Ok(()), expected, progress);
    }
}

/// A producer that writes exactly what Tally's HTTP ingest would.
pub fn kafka_producer(kafka: &KafkaConfig, partitions: (i32, i32)) -> anyhow::Result<Ingest> {
    let id = format!("loadtest-{}-{}", std::process::id(), rand::random::<u32>());
    let cfg = IngestConfig {
        linger_ms: 2,
        // A load generator would rather wait for a slow Kafka than fail its batches.
        request_timeout_ms: 60_000,
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let ingest = Ingest::start(kafka, &cfg, &id, partitions, metrics, Box::new(|_| {}))
        .with_context(|| format!("start kafka producer for {}", kafka.brokers))?;
    Ok(ingest)
}

async fn drive_kafka(
    events: impl Iterator<Item = Event>,
    kafka: &KafkaConfig,
    opts: &DriveOpts,
    expected: &mut Expected,
    progress: &Progress,
) -> anyhow::Result<()> {
    let partitions = crate::topic_partitions(kafka).await?;
    let ingest = kafka_producer(kafka, partitions)?;
    let pacer = Pacer::new(opts);
    let mut stamper = Stamper::default();
    let mut inflight: VecDeque<(Vec<Event>, _)> = VecDeque::new();
    let mut events = events.peekable();
    let mut queued = 0u64;
    loop {
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut batch: Vec<Event> = events.by_ref().take(opts.batch).collect();
        let done = batch.is_empty();
        if !done {
            pacer.wait(queued, batch[0].ts, &progress.stop).await;
            if progress.stop.load(Ordering::Relaxed) {
                break;
            }
            if opts.stamp_send_time {
                stamper.stamp(&mut batch);
            }
            queued += batch.len() as u64;
            let records = batch.iter().flat_map(records_for).collect();
            let answer = ingest.submit(records).await.context("submit to kafka")?;
            inflight.push_back((batch, Box::pin(answer)));
        }
        // Settle the oldest batches in order: those already answered (so progress is
        // current), then wait when the pipeline is full or at the end.
        while let Some(front) = inflight.front_mut() {
            let Some(result) = futures::FutureExt::now_or_never(&mut front.1) else {
                break;
            };
            let (batch, _) = inflight.pop_front().expect("non-empty");
            settle(batch, result.map_err(|e| e.to_string()), expected, progress);
        }
        while inflight.len() > opts.pipeline || (done && !inflight.is_empty()) {
            let (batch, answer) = inflight.pop_front().expect("non-empty");
            settle(
                batch,
                answer.await.map_err(|e| e.to_string()),
                expected,
                progress,
            );
        }
        if done {
            break;
        }
    }
    for (batch, answer) in inflight {
        settle(
            batch,
            answer.await.map_err(|e| e.to_string()),
            expected,
            progress,
        );
    }
    Ok(())
}

fn settle(
    batch: Vec<Event>,
    result: Result<(), String>,
    expected: &mut Expected,
    progress: &Progress,
) {
    match result {
        Ok(()) => {
            for e in &batch {
                expected.apply(e);
            }
            progress
                .sent
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            progress
                .errors
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            eprintln!(
                "tally-loadtest: batch of {} events failed: {e}",
                batch.len()
            );
        }
    }
}

/// How long a batch is retried (on every node in turn) before it counts as failed: longer
/// than any outage a soak's fault schedule makes, so every batch is acknowledged in the
/// end. Resending the same events is safe: the cluster counts an event id once.
const RETRY_FOR: Duration = Duration::from_secs(180);

/// Posts one NDJSON batch, trying each node in turn until `RETRY_FOR` has passed; Ok
/// only for a 202 with no rejection.
pub async fn post_batch(
    client: &reqwest::Client,
    nodes: &[String],
    first: usize,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut last = String::new();
    let started = std::time::Instant::now();
    let mut attempt = 0usize;
    while attempt < nodes.len().max(1) * 3 || started.elapsed() < RETRY_FOR {
        let node = &nodes[(first + attempt) % nodes.len()];
        let r = client
            .post(format!("http://{node}/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status().as_u16() == 202 => {
                let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                if v["rejected"].as_array().is_some_and(|a| !a.is_empty()) {
                    return Err(format!("{node} rejected events: {}", v["rejected"]));
                }
                return Ok(());
            }
            // A client error will not change on a retry.
            Ok(r) if r.status().is_client_error() => {
                return Err(format!(
                    "{node}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ))
            }
            Ok(r) => {
                last = format!(
                    "{node}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            Err(e) => last = format!("{node}: {e}"),
        }
        let pause = (200 * (attempt as u64 + 1)).min(2_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        attempt += 1;
    }
    Err(last)
}

async fn drive_http(
    events: impl Iterator<Item = Event>,
    nodes: &[String],
    opts: &DriveOpts,
    expected: &mut Expected,
    progress: &Progress,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !nodes.is_empty(),
        "--nodes must name at least one node for --via http"
    );
    let client = crate::http_client(Duration::from_secs(60), opts.api_key.as_deref())?;
    let lanes = opts.lanes.max(1);
    let pacer = Pacer::new(opts);
    let mut stamper = Stamper::default();
    let mut events = events.peekable();
    let mut queued = 0u64;
    while events.peek().is_some() && !progress.stop.load(Ordering::Relaxed) {
        // One round: a batch per lane, all lanes in parallel, each player in one lane.
        let mut per_lane: Vec<Vec<Event>> = vec![Vec::new(); lanes];
        for e in events.by_ref().take(opts.batch * lanes) {
            let lane = partition_for(&e.player, lanes as i32) as usize;
            per_lane[lane].push(e);
        }
        let first_ts = per_lane
            .iter()
            .flat_map(|b| b.first())
            .map(|e| e.ts)
            .min()
            .unwrap_or(0);
        pacer.wait(queued, first_ts, &progress.stop).await;
        if progress.stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.stamp_send_time {
            per_lane.iter_mut().for_each(|b| stamper.stamp(b));
        }
        queued += per_lane.iter().map(|b| b.len() as u64).sum::<u64>();
        let results: Vec<(Vec<Event>, Result<(), String>)> =
            futures::stream::iter(per_lane.into_iter().enumerate())
                .map(|(lane, batch)| {
                    let client = client.clone();
                    async move {
                        if batch.is_empty() {
                            return (batch, Ok(()));
                        }
                        let mut body = Vec::with_capacity(batch.len() * 160);
                        for e in &batch {
                            body.extend_from_slice(&e.to_json());
                            body.push(b'\n');
                        }
                        let r = post_batch(&client, nodes, lane, body).await;
                        (batch, r)
                    }
                })
                .buffer_unordered(lanes)
                .collect()
                .await;
        for (batch, r) in results {
            settle(batch, r, expected, progress);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_node::event::EventBody;

    fn event(ts: i64) -> Event {
        Event {
            v: 1,
            id: format!("e{ts}").into(),
            ts,
            player: "p".into(),
            body: EventBody::LevelUp { level: 1 },
        }
    }

    #[test]
    fn stamps_are_the_send_time_and_never_go_back() {
        let mut stamper = Stamper::default();
        let mut batch = vec![event(1), event(2)];
        let before = crate::unix_micros() / 1000;
        stamper.stamp(&mut batch);
        let after = crate::unix_micros() / 1000;
        assert!(batch.iter().all(|e| (before..=after).contains(&e.ts)));
        // A clock that stepped back does not date a later batch earlier.
        stamper.last_ms = i64::MAX - 1;
        let mut later = vec![event(3)];
        stamper.stamp(&mut later);
        assert_eq!(later[0].ts, i64::MAX - 1);
    }
}
