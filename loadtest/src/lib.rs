//! Tally's load generator and exact verifier, as a library so its scenarios can be tested.
//!
//! - [`players`]: the players scenario's generator and the expected state it keeps.
//! - [`viewers`]: the viewers scenario (Zipf channels, Poisson switching, heartbeats).
//! - [`drive`]: sending into Kafka or HTTP ingest at a rate, keeping order and exactness.
//! - [`probe`]: end-to-end latency probes (event created -> visible in the owner's state).
//! - [`verify`]: comparing every entity with the expected state, with retries and failover.
//! - [`subscribers`]: WebSocket clients subscribed while the load runs: push latency, and
//!   their last frames against the verified final state.
//! - [`node_usage`]: a node process's CPU and memory from /proc (benchmarks on one machine).
//! - [`cluster_bench`]: failover time after kill -9; query latency on owner vs. non-owner.
//! - [`baseline`]: a plain rdkafka consume-and-discard, the yardstick for node throughput.
//! - [`report`]: live progress, the final table, JSON output.

pub mod baseline;
pub mod cluster_bench;
pub mod drive;
pub mod node_usage;
pub mod players;
pub mod probe;
pub mod report;
pub mod subscribers;
pub mod verify;
pub mod viewers;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tally_node::config::KafkaConfig;

/// An HTTP client for the nodes' API: every request carries `Authorization: Bearer
/// <api_key>` when a key is given (a cluster with auth on needs one: `ingest` to send,
/// `read` to verify and probe).
pub fn http_client(timeout: Duration, api_key: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("--api-key: not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .context("build http client")
}

/// Partition counts of the player and channel topics (the node's own metadata read).
pub async fn topic_partitions(kafka: &KafkaConfig) -> anyhow::Result<(i32, i32)> {
    tally_node::node::partition_counts(kafka)
        .await
        .with_context(|| {
            format!(
                "the topics must exist on {}: start a node first (it creates them)",
                kafka.brokers
            )
        })
}

/// The consumer settings of the baseline, matching the node's source (read committed,
/// same fetch tuning) so the comparison is fair.
pub fn baseline_config(brokers: &str) -> rdkafka::ClientConfig {
    let kafka = KafkaConfig {
        brokers: brokers.to_string(),
        group_id: format!("baseline-{}", std::process::id()),
        ..Default::default()
    };
    tally_node::source::consumer_config(&kafka, "tally-baseline")
}

/// Wall-clock time in microseconds since the epoch (0 before it): event times and push
/// latencies are measured on this clock, shared by every process of the machine.
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
