//! Dead letters from the consumer: records read from Kafka that a shard does not apply
//! (they do not decode, or their `ts` is too far ahead of their arrival) go to the
//! dead-letter topic with the reason, next to what HTTP ingest rejected.
//!
//! Sending never blocks a shard: records go to librdkafka's queue, and a full queue drops
//! the dead letter (counted in `tally_consumer_dead_letters_dropped_total`); the record is
//! skipped and counted either way. A dead letter is bounded in size: a payload over
//! [`MAX_PAYLOAD_BYTES`] is cut, and the header `tally-truncated` gives its original length.
//! After a crash the records since the last checkpoint are read again, so one bad record
//! can reach the topic more than once; `tally-source` (topic/partition/offset) identifies it.
//!
//! Not for: HTTP ingest's rejections, which travel in its transactions (see `ingest`).

use std::sync::Arc;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Bytes of a record's payload a dead letter keeps at most.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// One record to send to the dead-letter topic.
pub struct DeadLetter<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The field at fault (`event`, `ts`, ...), as in ingest's `tally-field`.
    pub field: &'a str,
    pub reason: &'a str,
}

/// The node's producer of consumer-side dead letters; cheap to share.
pub struct DeadLetters {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    pub fn start(
        kafka: &KafkaConfig,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.brokers)
            .set("client.id", format!("tally-dead-letters-{node_id}"))
            .set("enable.idempotence", "true")
            .set("linger.ms", "50");
        let producer = kafka
            .apply_connection(&mut client)
            .create()
            .context("create kafka dead-letter producer")?;
        Ok(DeadLetters {
            producer,
            topic: kafka.dlq_topic.clone(),
            metrics,
        })
    }

    /// Queues `d` for the dead-letter topic without waiting.
    pub fn send(&self, d: DeadLetter<'_>) {
        let source = format!("{}/{}/{}", d.topic, d.partition, d.offset);
        let payload = d.payload.unwrap_or_default();
        let kept = &payload[..payload.len().min(MAX_PAYLOAD_BYTES)];
        let original_len = payload.len().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "tally-field",
                value: Some(d.field.as_bytes()),
            })
            .insert(Header {
                key: "tally-reason",
                value: Some(d.reason.as_bytes()),
            })
            .insert(Header {
                key: "tally-source",
                value: Some(source.as_bytes()),
            });
        if kept.len() < payload.len() {
            headers = headers.insert(Header {
                key: "tally-truncated",
                value: Some(original_len.as_bytes()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(kept)
            .headers(headers);
        if let Some(k) = d.key {
            record = record.key(&k[..k.len().min(MAX_PAYLOAD_BYTES)]);
        }
        match self.producer.send(record) {
            Ok(()) => self.metrics.add_dead_letters(1, 0),
            Err(_) => self.metrics.add_dead_letters(0, 1),
        }
    }

    /// Waits up to `timeout` for the queued dead letters to reach Kafka.
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "dead letters not all delivered before shutdown");
        }
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.flush(std::time::Duration::from_secs(2));
    }
}
