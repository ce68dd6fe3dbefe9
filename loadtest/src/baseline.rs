//! The yardstick: a plain rdkafka consumer that reads a topic from the beginning and
//! discards every record. A node's throughput is reported next to this number, measured
//! on the same topic in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Records read and the time from the first record to the last.
#[derive(Debug, serde::Serialize)]
pub struct BaselineResult {
    pub records: u64,
    pub secs: f64,
    pub records_per_sec: f64,
}

/// Reads `topics` (all partitions, read_committed, from offset 0) until `records` were
/// seen or nothing arrives for `idle`.
pub fn consume_and_discard(
    brokers: &str,
    topics: &[String],
    records: u64,
    idle: Duration,
) -> anyhow::Result<BaselineResult> {
    let consumer: BaseConsumer = crate::baseline_config(brokers)
        .create()
        .context("create kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("read metadata of {topic}"))?;
        for p in md.topics().first().context("topic missing")?.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    let topic = topics.join(",");
    consumer.assign(&tpl).context("assign partitions")?;
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut bytes = 0usize;
    while seen < records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                bytes += m.payload().map_or(0, <[u8]>::len);
                first.get_or_insert_with(Instant::now);
                seen += 1;
                last = Instant::now();
            }
            Some(Err(e)) => anyhow::bail!("kafka error while consuming {topic}: {e}"),
            None if last.elapsed() > idle && first.is_some() => break,
            None if first.is_none() && last.elapsed() > idle * 3 => {
                anyhow::bail!("no records in {topic}")
            }
            None => {}
        }
    }
    std::hint::black_box(bytes);
    let secs = first
        .map_or(0.0, |f| last.duration_since(f).as_secs_f64())
        .max(1e-6);
    Ok(BaselineResult {
        records: seen,
        secs,
        records_per_sec: seen as f64 / secs,
    })
}
