//! HTTP ingest's Kafka side: validated events become records on `player-events` and
//! `channel-events`, rejected input goes to `events-dlq`, all in Kafka transactions.
//!
//! A batch's records become visible together or not at all (consumers read committed
//! only), so a viewer switch's leave on the old channel and join on the new one can never
//! be seen half. Transactions are group-committed: one producer thread gathers the
//! requests arriving within `linger_ms` into one transaction, so transactions do not cap
//! throughput. A request is answered only after Kafka acknowledged its transaction.
//!
//! Not for: parsing HTTP bodies (see `api`) or consuming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::config::{IngestConfig, KafkaConfig};
use crate::event::{Event, Rejection};
use crate::metrics::Metrics;
use crate::partitioner::partition_for;

/// Requests queued for the producer thread at most; more wait (backpressure).
const QUEUE: usize = 1024;
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per transaction before the requests in it get an error.
const TXN_ATTEMPTS: u32 = 3;

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Players,
    Channels,
    DeadLetter,
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub target: Target,
    pub key: String,
    pub payload: Vec<u8>,
    /// Dead-letter records carry the rejection.
    pub rejection: Option<Rejection>,
}

/// The records one valid event produces: the player record, plus channel records.
pub fn records_for(event: &Event) -> Vec<OutRecord> {
    let mut out = vec![OutRecord {
        target: Target::Players,
        key: event.player.to_string(),
        payload: event.to_json(),
        rejection: None,
    }];
    out.extend(
        event
            .channel_records()
            .into_iter()
            .map(|(channel, e)| OutRecord {
                target: Target::Channels,
                key: channel.into(),
                payload: e.to_json(),
                rejection: None,
            }),
    );
    out
}

/// The dead-letter record of a rejected input.
pub fn dead_letter(original: &[u8], rejection: Rejection) -> OutRecord {
    OutRecord {
        target: Target::DeadLetter,
        key: String::new(),
        payload: original.to_vec(),
        rejection: Some(rejection),
    }
}

struct Job {
    records: Vec<OutRecord>,
    reply: oneshot::Sender<Result<(), String>>,
}

/// Handle to the producer thread; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

/// Why a produce failed, for the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka did not accept the batch: {0}")]
    Kafka(String),
    #[error("ingest is shutting down")]
    Closed,
}

impl Ingest {
    /// Starts the producer thread. Fails if the transactional producer cannot initialise.
    pub fn start(
        kafka: &KafkaConfig,
        cfg: &IngestConfig,
        node_id: &str,
        partitions: (i32, i32),
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Ingest> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.brokers)
            .set("client.id", format!("tally-ingest-{node_id}"))
            .set("transactional.id", format!("tally-ingest-{node_id}"))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("transaction.timeout.ms", "60000");
        let producer: BaseProducer = client.create().context("create kafka producer")?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .context("init kafka transactions")?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            producer,
            client,
            topics: [
                kafka.player_topic.clone(),
                kafka.channel_topic.clone(),
                kafka.dlq_topic.clone(),
            ],
            partitions,
            linger: Duration::from_millis(cfg.linger_ms),
            max_records: cfg.max_transaction_records,
            metrics,
        };
        // The thread ends by itself when the last `Ingest` handle is dropped: every
        // request has waited for its transaction, so nothing is left uncommitted.
        std::thread::Builder::new()
            .name("kafka-ingest".into())
            .spawn(move || worker.run(rx))
            .context("spawn ingest thread")?;
        info!("ingest producer ready");
        Ok(Ingest { tx })
    }

    /// Produces `records` in a transaction and waits until Kafka acknowledged it.
    pub async fn produce(&self, records: Vec<OutRecord>) -> Result<(), IngestError> {
        if records.is_empty() {
            return Ok(());
        }
        self.submit(records).await?.await
    }

    /// Queues `records` and returns a future of Kafka's answer without waiting for it.
    /// Batches submitted one after another by one caller reach Kafka in that order, which
    /// lets a caller pipeline batches and still know the order of its records.
    pub async fn submit(
        &self,
        records: Vec<OutRecord>,
    ) -> Result<impl std::future::Future<Output = Result<(), IngestError>>, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { records, reply })
            .await
            .map_err(|_| IngestError::Closed)?;
        Ok(async move {
            rx.await
                .map_err(|_| IngestError::Closed)?
                .map_err(IngestError::Kafka)
        })
    }
}

struct Worker {
    producer: BaseProducer,
    client: ClientConfig,
    /// Topic names indexed like [`Target`].
    topics: [String; 3],
    /// Partition counts of the player and channel topics.
    partitions: (i32, i32),
    linger: Duration,
    max_records: usize,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("build ingest runtime");
        loop {
            let Some(first) = rx.blocking_recv() else {
                info!("ingest producer stopped");
                return;
            };
            let mut jobs = vec![first];
            let mut count = jobs[0].records.len();
            let deadline = Instant::now() + self.linger;
            while count < self.max_records {
                let left = deadline.saturating_duration_since(Instant::now());
                let next = rt.block_on(async { tokio::time::timeout(left, rx.recv()).await });
                match next {
                    Ok(Some(job)) => {
                        count += job.records.len();
                        jobs.push(job);
                    }
                    _ => break,
                }
            }
            let result = self.transact(&jobs);
            if let Err(e) = &result {
                error!(error = %e, jobs = jobs.len(), records = count, "ingest transaction failed; answering 503");
            } else {
                self.metrics.add_ingest_transaction();
            }
            for job in jobs {
                let _ = job.reply.send(result.clone());
            }
        }
    }

    /// Runs the jobs' records as one transaction. An aborted transaction left nothing
    /// visible (consumers read committed only), so it is retried a few times before the
    /// requests are answered with an error: a transient broker error (a topic just
    /// created, a leader moving) does not fail ingest.
    fn transact(&mut self, jobs: &[Job]) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..TXN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * 3u64.pow(attempt - 1)));
            }
            match self.try_transact(jobs) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    warn!(error = %e, attempt, "ingest transaction failed; aborting");
                    last = e.to_string();
                    // Abort what is open; a fatal producer error needs a new producer.
                    if let Err(abort) = self.producer.abort_transaction(TXN_TIMEOUT) {
                        warn!(error = %abort, "abort failed; recreating the producer");
                        if let Err(re) = self.recreate() {
                            error!(error = %format!("{re:#}"), "recreating the producer failed");
                        }
                    }
                }
            }
        }
        Err(last)
    }

    fn try_transact(&self, jobs: &[Job]) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        for rec in jobs.iter().flat_map(|j| j.records.iter()) {
            let topic = &self.topics[rec.target as usize];
            let partition = match rec.target {
                Target::Players => Some(partition_for(&rec.key, self.partitions.0)),
                Target::Channels => Some(partition_for(&rec.key, self.partitions.1)),
                Target::DeadLetter => None,
            };
            let headers = rec.rejection.as_ref().map(|r| {
                OwnedHeaders::new()
                    .insert(Header {
                        key: "tally-field",
                        value: Some(r.field.as_bytes()),
                    })
                    .insert(Header {
                        key: "tally-reason",
                        value: Some(r.reason.as_bytes()),
                    })
            });
            loop {
                let mut record = BaseRecord::to(topic).payload(&rec.payload[..]);
                if !rec.key.is_empty() {
                    record = record.key(rec.key.as_bytes());
                }
                if let Some(p) = partition {
                    record = record.partition(p);
                }
                if let Some(h) = headers.clone() {
                    record = record.headers(h);
                }
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn recreate(&mut self) -> anyhow::Result<()> {
        let producer: BaseProducer = self.client.create().context("create kafka producer")?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .context("init kafka transactions")?;
        self.producer = producer;
        Ok(())
    }
}
