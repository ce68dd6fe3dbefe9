//! Tally's load generator and exact verifier, as a library so its scenarios can be tested.
//!
//! - [`players`]: the players scenario's generator and the expected state it keeps.
//! - [`viewers`]: the viewers scenario (Zipf channels, Poisson switching, heartbeats).
//! - [`drive`]: sending into Kafka or HTTP ingest at a rate, keeping order and exactness.
//! - [`probe`]: end-to-end latency probes (event created -> visible in the owner's state).
//! - [`verify`]: comparing every entity with the expected state, with retries and failover.
//! - [`cluster_bench`]: failover time after kill -9; query latency on owner vs. non-owner.
//! - [`baseline`]: a plain rdkafka consume-and-discard, the yardstick for node throughput.
//! - [`report`]: live progress, the final table, JSON output.

pub mod baseline;
pub mod cluster_bench;
pub mod drive;
pub mod players;
pub mod probe;
pub mod report;
pub mod verify;
pub mod viewers;

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tally_node::config::KafkaConfig;

/// Partition counts of the player and channel topics.
pub async fn topic_partitions(kafka: &KafkaConfig) -> anyhow::Result<(i32, i32)> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()
            .context("create kafka client")?;
        let count = |topic: &str| -> anyhow::Result<i32> {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| {
                    format!("read metadata of topic {topic} from {}", kafka.brokers)
                })?;
            let n = md
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32);
            anyhow::ensure!(
                n > 0,
                "topic {topic} does not exist on {}: start a node first (it creates the topics)",
                kafka.brokers
            );
            Ok(n)
        };
        Ok((count(&kafka.player_topic)?, count(&kafka.channel_topic)?))
    })
    .await
    .context("metadata task")?
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
