//! Kafka administration at start: the topics Tally uses exist, and their partition counts.
//!
//! Not for: producing (see `ingest`) or consuming (see `source`).

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Config, KafkaConfig};

/// Creates the player, channel and dead-letter topics, timestamped by the broker at
/// append (LogAppendTime); existing ones are left alone.
pub async fn create_topics(cfg: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg
        .kafka
        .client_config()
        .create()
        .context("create kafka admin client")?;
    let topics: Vec<NewTopic> = [
        &cfg.kafka.player_topic,
        &cfg.kafka.channel_topic,
        &cfg.kafka.dlq_topic,
    ]
    .into_iter()
    .map(|name| {
        NewTopic::new(
            name,
            cfg.kafka.partitions,
            TopicReplication::Fixed(cfg.kafka.replication_factor),
        )
        // A record's timestamp is its arrival by the broker's clock, not a producer's:
        // the future-timestamp bound and the dedupe window measure against it.
        .set("message.timestamp.type", "LogAppendTime")
    })
    .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .with_context(|| format!("create topics on kafka at {}", cfg.kafka.brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Partition counts of the player and channel topics, from broker metadata.
pub async fn partition_counts(kafka: &KafkaConfig) -> anyhow::Result<(i32, i32)> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .client_config()
            .create()
            .context("create kafka metadata client")?;
        let count = |topic: &str| -> anyhow::Result<i32> {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .with_context(|| format!("fetch metadata of {topic} from {}", kafka.brokers))?;
            let n = md
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32);
            anyhow::ensure!(n > 0, "topic {topic} has no partitions yet");
            Ok(n)
        };
        Ok((count(&kafka.player_topic)?, count(&kafka.channel_topic)?))
    })
    .await
    .context("metadata task")?
}
