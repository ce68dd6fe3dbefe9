//! The partition source: the blocking Kafka consumer in its own poll loop thread.
//!
//! rdkafka's consumer blocks, so it lives on a dedicated thread (never on an actix worker
//! or a tokio worker). Partitions are assigned by hand (`assign`), not by group
//! subscription: Tally decides ownership. The loop reads committed records only, groups
//! them per partition into batches and casts each batch to its shard, taking a permit from
//! a semaphore first: when every permit is out, the loop waits and Kafka is paused, so
//! a slow shard pushes back instead of growing memory. Durable offsets are committed back
//! to Kafka so standard lag tools work.
//!
//! Not for: applying records (shards do) or choosing partitions (the node does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use ractor::ActorRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::shard::{Record, ShardMsg};

/// One assigned partition and where its records go.
pub struct Assignment {
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
    pub shard: ActorRef<ShardMsg>,
}

/// Control of a running poll loop.
pub struct SourceHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SourceHandle {
    /// Stops polling and waits for the thread; batches already cast stay with the shards.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The consumer settings Tally relies on.
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.max.messages.kbytes", "65536");
    c
}

/// Starts the poll loop for `assignments`.
pub fn spawn(
    kafka: &KafkaConfig,
    client_id: &str,
    assignments: Vec<Assignment>,
    max_batch: usize,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    durable: Arc<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
) -> anyhow::Result<SourceHandle> {
    let consumer: BaseConsumer = consumer_config(kafka, client_id)
        .create()
        .context("create kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut routes: HashMap<(String, i32), ActorRef<ShardMsg>> = HashMap::new();
    for a in assignments {
        tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.start_offset))
            .with_context(|| format!("assign {}/{}", a.topic, a.partition))?;
        routes.insert((a.topic, a.partition), a.shard);
    }
    consumer
        .assign(&tpl)
        .context("assign partitions to kafka consumer")?;
    info!(
        partitions = routes.len(),
        "kafka source assigned partitions"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let rt = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || {
            poll_loop(
                consumer, routes, max_batch, permits, metrics, durable, stop2, rt,
            )
        })
        .context("spawn kafka source thread")?;
    Ok(SourceHandle {
        stop,
        thread: Some(thread),
    })
}

#[allow(clippy::too_many_arguments)]
fn poll_loop(
    consumer: BaseConsumer,
    routes: HashMap<(String, i32), ActorRef<ShardMsg>>,
    max_batch: usize,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    durable: Arc<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) {
    let mut last_commit = Instant::now();
    let mut committed: HashMap<(String, i32), i64> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let mut batches: HashMap<(String, i32), Vec<Record>> = HashMap::new();
        let mut n = 0usize;
        let mut timeout = Duration::from_millis(100);
        while n < max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    warn!(error = %e, "kafka poll error");
                    break;
                }
                Some(Ok(m)) => {
                    batches
                        .entry((m.topic().to_string(), m.partition()))
                        .or_default()
                        .push(Record {
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec),
                        });
                    n += 1;
                    timeout = Duration::ZERO;
                }
            }
        }
        metrics.add_consumed(n as u64);
        for (tp, records) in batches {
            let Some(shard) = routes.get(&tp) else {
                warn!(topic = %tp.0, partition = tp.1, "record for a partition without a shard");
                continue;
            };
            let permit = match rt.block_on(permits.clone().acquire_owned()) {
                Ok(p) => p,
                Err(_) => return, // semaphore closed: shutting down
            };
            if shard.cast(ShardMsg::Records(records, permit)).is_err() {
                warn!(topic = %tp.0, partition = tp.1, "shard stopped; dropping batch (it will be replayed)");
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(2) {
            last_commit = Instant::now();
            commit_durable(&consumer, &durable(), &mut committed);
        }
    }
    commit_durable(&consumer, &durable(), &mut committed);
}

/// Commits durable offsets to Kafka for lag tools (Tally itself resumes from Cassandra).
fn commit_durable(
    consumer: &BaseConsumer,
    durable: &[(String, i32, i64)],
    committed: &mut HashMap<(String, i32), i64>,
) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in durable {
        let key = (topic.clone(), *partition);
        if committed.get(&key) == Some(offset) || *offset <= 0 {
            continue;
        }
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_ok()
        {
            committed.insert(key, *offset);
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            warn!(error = %e, "committing offsets to kafka failed (lag tools only)");
        }
    }
}
