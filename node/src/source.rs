//! The partition source: the blocking Kafka consumer in its own poll loop thread.
//!
//! rdkafka's consumer blocks, so it lives on a dedicated thread (never on an actix worker
//! or a tokio worker). Partitions are assigned by hand (`assign`), not by group
//! subscription: Tally decides ownership. The loop reads committed records only, in
//! batches ([`reader`]), groups them per partition and casts each batch to its shard,
//! taking a permit from a semaphore first: when every permit is out, the loop waits and
//! Kafka is paused, so a slow shard pushes back instead of growing memory. Durable offsets
//! are committed back to Kafka so standard lag tools work.
//!
//! Not for: applying records (shards do) or choosing partitions (the node does).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use ractor::ActorRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub mod reader;
use reader::Reader;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::shard::{Records, RecordsPool, ShardMsg};
use crate::telemetry;

/// One assigned partition and where its records go.
pub struct Assignment {
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
    pub shard: ActorRef<ShardMsg>,
}

/// A change of the partitions the poll loop reads, applied between polls.
pub enum SourceCommand {
    /// Start reading a partition at an offset, handing records to a shard.
    Assign(Assignment),
    /// Stop reading a partition; the reply comes once no further batch of it will be cast.
    Revoke {
        topic: String,
        partition: i32,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// Control of a running poll loop.
pub struct SourceHandle {
    /// Shared with the poll thread for read-only calls (positions, watermarks).
    consumer: Arc<BaseConsumer>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    commands: std::sync::mpsc::Sender<SourceCommand>,
}

impl SourceHandle {
    /// Records in Kafka not yet polled, per assigned partition: (topic, partition, lag).
    /// Blocking (a broker round trip per partition): call from a blocking thread.
    pub fn lag(&self) -> Vec<(String, i32, i64)> {
        let Ok(positions) = self.consumer.position() else {
            return Vec::new();
        };
        positions
            .elements()
            .iter()
            .filter_map(|e| {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                    .ok()?;
                let pos = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => return Some((e.topic().to_string(), e.partition(), -1)),
                };
                Some((e.topic().to_string(), e.partition(), (high - pos).max(0)))
            })
            .collect()
    }

    /// Starts reading a partition.
    pub fn assign(&self, a: Assignment) -> anyhow::Result<()> {
        self.commands
            .send(SourceCommand::Assign(a))
            .map_err(|_| anyhow::anyhow!("kafka source stopped"))
    }

    /// Stops reading a partition and waits until the poll loop has let go of it.
    pub async fn revoke(&self, topic: &str, partition: i32) -> anyhow::Result<()> {
        let (done, rx) = std::sync::mpsc::channel();
        self.commands
            .send(SourceCommand::Revoke {
                topic: topic.to_string(),
                partition,
                done,
            })
            .map_err(|_| anyhow::anyhow!("kafka source stopped"))?;
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .context("revoke task")?
            .map_err(|_| anyhow::anyhow!("kafka source did not release {topic}/{partition}"))
    }

    /// Stops polling and waits for the thread; batches already cast stay with the shards.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().expect("source thread lock").take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The consumer settings Tally relies on, then the connection settings.
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
        // The broker answers a fetch once fetch_min_bytes are waiting or fetch_wait_max_ms
        // have passed. Under a backlog every fetch is full either way; once caught up, a
        // fetch_min_bytes above one small write's size makes every write wait out
        // fetch_wait_max_ms (the default, 1, does not).
        .set("fetch.min.bytes", kafka.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        // Prefetch is bounded by bytes (16 MiB), not by count. librdkafka compares both
        // thresholds against the whole consumer queue (every partition's records) and, once
        // one is crossed, stops fetching each partition for fetch.queue.backoff.ms (default
        // 1 s). With the default count (100,000), a single fetch of 16 partitions crossed
        // it, and consumption ran in bursts. A short backoff resumes fetching as soon as
        // the poll loop has drained the queue.
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "10000000")
        .set("fetch.queue.backoff.ms", "10");
    kafka.apply_connection(&mut c);
    c
}

/// Starts the poll loop for `assignments`.
pub fn spawn(
    kafka: &KafkaConfig,
    client_id: &str,
    assignments: Vec<Assignment>,
    max_batch: NonZeroUsize,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    durable: Arc<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
) -> anyhow::Result<SourceHandle> {
    let consumer: Arc<BaseConsumer> = Arc::new(
        consumer_config(kafka, client_id)
            .create()
            .context("create kafka consumer")?,
    );
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
    // The reader is made here, not in the thread: a source that cannot read fails the
    // start (and the node exits with the reason) instead of running without partitions.
    let reader = Reader::new(consumer.clone(), max_batch).context("open the kafka reader")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (commands, command_rx) = std::sync::mpsc::channel();
    let poll = PollLoop {
        consumer: consumer.clone(),
        reader,
        routes,
        commands: command_rx,
        permits,
        metrics,
        durable,
        stop: stop.clone(),
        rt: tokio::runtime::Handle::current(),
        pool: Arc::new(RecordsPool::default()),
        committed: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || poll.run())
        .context("spawn kafka source thread")?;
    Ok(SourceHandle {
        consumer,
        stop,
        thread: std::sync::Mutex::new(Some(thread)),
        commands,
    })
}

/// A topic partition, by name.
type TopicPartition = (String, i32);

/// One read's records, a batch per partition.
type Batches = Vec<(TopicPartition, Records)>;

/// The poll loop's state, owned by its thread.
struct PollLoop {
    consumer: Arc<BaseConsumer>,
    reader: Reader,
    /// The shard of each assigned partition.
    routes: HashMap<(String, i32), ActorRef<ShardMsg>>,
    commands: std::sync::mpsc::Receiver<SourceCommand>,
    /// Batches in flight to shards (backpressure); closed at shutdown.
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// The durable offsets to commit to Kafka for lag tools.
    durable: Arc<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync>,
    stop: Arc<AtomicBool>,
    /// The node's runtime, to wait for permits from this thread.
    rt: tokio::runtime::Handle,
    pool: Arc<RecordsPool>,
    /// What was last committed per partition (only changes are committed again).
    committed: HashMap<(String, i32), i64>,
}

impl PollLoop {
    fn run(mut self) {
        let mut last_commit = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            while let Ok(cmd) = self.commands.try_recv() {
                apply_command(&self.consumer, &mut self.routes, &mut self.committed, cmd);
            }
            let (batches, waited_kafka) = self.read();
            let Some(waited_shards) = self.dispatch(batches) else {
                return; // the permits are closed: shutting down
            };
            self.metrics.add_source_wait(waited_kafka, waited_shards);
            if last_commit.elapsed() >= Duration::from_secs(2) {
                last_commit = Instant::now();
                self.commit_durable();
                self.pool.shrink();
                release_c_heap();
            }
        }
        self.final_commit();
    }

    /// One read: the records grouped per partition, and how long Kafka took to deliver.
    fn read(&mut self) -> (Batches, Duration) {
        // Per partition; a read touches a handful, so a scan beats hashing the topic name.
        let mut batches: Batches = Vec::new();
        let pool = &self.pool;
        let (n, waited) = self.reader.read(Duration::from_millis(100), |m| match m {
            Err(e) => warn!(error = %e, "kafka poll error"),
            Ok(m) => {
                let at = match batches
                    .iter()
                    .position(|((t, p), _)| *p == m.partition && t == m.topic)
                {
                    Some(at) => at,
                    None => {
                        batches.push(((m.topic.to_string(), m.partition), pool.take()));
                        batches.len() - 1
                    }
                };
                let records = &mut batches[at].1;
                records.push(m.offset, m.timestamp, m.key, m.payload);
                if let Some(parent) = m.traceparent.and_then(telemetry::parse_traceparent) {
                    records.add_trace(m.offset, parent);
                }
            }
        });
        let read_ms = crate::event::now_ms();
        for ((topic, partition), records) in &mut batches {
            let (high, position) = self.reader.cached_progress(topic, *partition);
            records.set_progress(high, position);
            records.set_read_ms(read_ms);
        }
        self.metrics.add_consumed(n as u64);
        (batches, waited)
    }

    /// Hands each batch to its shard, a permit with it; returns how long the permits took,
    /// or None once they are closed.
    fn dispatch(&self, batches: Batches) -> Option<Duration> {
        let mut waited = Duration::ZERO;
        for (tp, records) in batches {
            let Some(shard) = self.routes.get(&tp) else {
                warn!(topic = %tp.0, partition = tp.1, "record for a partition without a shard");
                continue;
            };
            let asked = Instant::now();
            let permit = self
                .rt
                .block_on(self.permits.clone().acquire_owned())
                .ok()?;
            waited += asked.elapsed();
            if shard.cast(ShardMsg::Records(records, permit)).is_err() {
                warn!(topic = %tp.0, partition = tp.1, "shard stopped; dropping batch (it will be replayed)");
            }
        }
        Some(waited)
    }

    /// Commits the durable offsets that changed, without waiting for the answer.
    fn commit_durable(&mut self) -> bool {
        log_failed_commits(self.reader.take_commit_results());
        let offsets = durable_offsets(&(self.durable)(), &mut self.committed);
        if offsets.count() == 0 {
            return false;
        }
        let sent = self.reader.commit(&offsets);
        let sent_ok = sent.is_ok();
        log_failed_commits(vec![sent]);
        sent_ok
    }

    /// The last commit gets up to two seconds for its answer (the consumer closes next); a
    /// Kafka that does not answer must not hold up shutdown.
    fn final_commit(&mut self) {
        if !self.commit_durable() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let answers = self.reader.take_commit_results();
            if !answers.is_empty() {
                log_failed_commits(answers);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Warns of the failed ones among commit results.
fn log_failed_commits(results: Vec<Result<(), rdkafka::error::KafkaError>>) {
    for e in results.into_iter().filter_map(Result::err) {
        warn!(error = %e, "committing offsets to kafka failed (lag tools only)");
    }
}

fn apply_command(
    consumer: &BaseConsumer,
    routes: &mut HashMap<(String, i32), ActorRef<ShardMsg>>,
    committed: &mut HashMap<(String, i32), i64>,
    cmd: SourceCommand,
) {
    match cmd {
        SourceCommand::Assign(a) => {
            let mut tpl = TopicPartitionList::new();
            let added =
                tpl.add_partition_offset(&a.topic, a.partition, Offset::Offset(a.start_offset));
            match added.and_then(|_| consumer.incremental_assign(&tpl)) {
                Ok(()) => {
                    info!(topic = %a.topic, partition = a.partition, offset = a.start_offset, "source assigned partition");
                    routes.insert((a.topic, a.partition), a.shard);
                }
                Err(e) => {
                    warn!(topic = %a.topic, partition = a.partition, error = %e, "assigning partition failed")
                }
            }
        }
        SourceCommand::Revoke {
            topic,
            partition,
            done,
        } => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(e) = consumer.incremental_unassign(&tpl) {
                warn!(%topic, partition, error = %e, "unassigning partition failed");
            }
            routes.remove(&(topic.clone(), partition));
            committed.remove(&(topic, partition));
            let _ = done.send(());
        }
    }
}

/// Returns free memory of the C heap to the OS. librdkafka allocates its prefetched
/// records with the C allocator (Rust code uses mimalloc); after a backlog, glibc keeps the
/// pages of up to `queued.max.messages.kbytes` of freed records in its arenas, where they
/// count as resident memory for good. A trim every few seconds costs well under a
/// millisecond.
fn release_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Durable offsets not yet committed to Kafka, for lag tools (Tally itself resumes from
/// Cassandra); `committed` is updated as if they were committed.
fn durable_offsets(
    durable: &[(String, i32, i64)],
    committed: &mut HashMap<(String, i32), i64>,
) -> TopicPartitionList {
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
    tpl
}
