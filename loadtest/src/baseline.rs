//! The yardstick: a plain rdkafka consumer that reads a topic from the beginning and
//! discards every record. A node's throughput is reported next to this number, measured
//! on the same topic in the same run. It reads either with rdkafka's `poll`, a record per
//! call (the plain consumer), or in batches the way a node's poll loop does
//! (`tally_node::source::reader`), so the cost of reading can be told from the cost of
//! applying.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tally_node::source::reader::Reader;

/// How the baseline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    /// rdkafka's `BaseConsumer::poll`, one record per call.
    Poll,
    /// librdkafka's batch call, as a node reads.
    Batch,
}

/// Records read and the time from the first record to the last.
#[derive(Debug, serde::Serialize)]
pub struct BaselineResult {
    pub read: Read,
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
    read: Read,
) -> anyhow::Result<BaselineResult> {
    let consumer: Arc<BaseConsumer> = Arc::new(
        crate::baseline_config(brokers)
            .create()
            .context("create kafka consumer")?,
    );
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
    let mut reader = match read {
        Read::Poll => None,
        Read::Batch => Some(Reader::new(
            consumer.clone(),
            std::num::NonZeroUsize::new(2000).expect("not zero"),
        )?),
    };
    while seen < records {
        let got = match &mut reader {
            None => match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    1
                }
                Some(Err(e)) => anyhow::bail!("kafka error while consuming {topic}: {e}"),
                None => 0,
            },
            Some(reader) => {
                let mut failed = None;
                let (n, _) = reader.read(Duration::from_millis(100), |m| match m {
                    Ok(m) => bytes += m.payload.map_or(0, <[u8]>::len),
                    Err(e) => failed = Some(e),
                });
                if let Some(e) = failed {
                    anyhow::bail!("kafka error while consuming {topic}: {e}");
                }
                n as u64
            }
        };
        if got > 0 {
            first.get_or_insert_with(Instant::now);
            seen += got;
            last = Instant::now();
        } else if first.is_some() && last.elapsed() > idle {
            break;
        } else if first.is_none() && last.elapsed() > idle * 3 {
            anyhow::bail!("no records in {topic}");
        }
    }
    std::hint::black_box(bytes);
    let secs = first
        .map_or(0.0, |f| last.duration_since(f).as_secs_f64())
        .max(1e-6);
    Ok(BaselineResult {
        read,
        records: seen,
        secs,
        records_per_sec: seen as f64 / secs,
    })
}
