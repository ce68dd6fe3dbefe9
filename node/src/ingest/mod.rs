//! HTTP ingest's Kafka side: validated events become records on `player-events` and
//! `channel-events`, rejected input goes to `events-dlq`, all in Kafka transactions.
//!
//! A batch's records become visible together or not at all (consumers read committed
//! only), so a viewer switch's leave on the old channel and join on the new one can never
//! be seen half. Transactions are group-committed: one producer thread gathers the
//! requests arriving within `linger_ms` into one transaction, so transactions do not cap
//! throughput. A request is answered only after Kafka acknowledged its transaction.
//!
//! Sharing a transaction must not let one request hurt the others, so:
//! - **Records are bounded.** No record handed to Kafka exceeds [`MAX_RECORD_BYTES`], which
//!   is under librdkafka's and Kafka's default limits: a dead-letter copy keeps a bounded
//!   prefix of its input and clipped reasons ([`dead_letter`]), and a request holding a
//!   larger record is answered [`IngestError::TooLarge`] before any transaction begins.
//! - **A failed group is split.** When a group transaction fails, its requests are retried
//!   in halves, down to single requests, so only a request that cannot be written fails.
//! - **Every request has a deadline** (`ingest.request_timeout_ms`). Each Kafka call's
//!   timeout is cut to the earliest deadline of its transaction, so the request is
//!   answered in time; a request whose time ran out before its transaction began is never
//!   written, and one whose commit went unconfirmed is told the outcome is unknown.
//!
//! Whether the producer can commit is reported through a [`HealthHook`]; the node shows it
//! on `/readyz`.
//!
//! - `record`: the records of an event, and bounded dead letters.
//! - `producer`: the producer thread: group transactions, splitting, deadlines.
//! - `health`: whether the producer can commit, for `/readyz`.
//!
//! Not for: parsing HTTP bodies or choosing statuses (see `api`), or consuming.

mod health;
mod producer;
mod record;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::{IngestConfig, KafkaConfig};
use crate::metrics::Metrics;

pub use health::FAILURE_HOLD;
pub use record::{
    clip, clip_rejection, dead_letter, records_for, OutRecord, Target, Truncation, HEADER_FIELD,
    HEADER_REASON, HEADER_TRUNCATED, LENGTH_UNKNOWN, MAX_DEAD_LETTER_BYTES, MAX_FIELD_BYTES,
    MAX_REASON_BYTES, MAX_RECORD_BYTES,
};

/// Requests queued for the producer thread at most; more wait (backpressure).
const QUEUE: usize = 1024;

/// Why a produce failed, for the HTTP status. Every variant but `Unknown` means nothing of
/// the request was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// A record is larger than Kafka accepts; ingest did not try to write it.
    #[error("record: {size} bytes, more than the limit of {limit} bytes per kafka record; nothing of the request was written")]
    TooLarge { size: usize, limit: usize },
    /// Kafka refused a record of this request, tried alone, though it is within ingest's
    /// limits: the deployment does not match them (a topic's `max.message.bytes` below
    /// `ingest.max_event_bytes`, say), and retrying will not help until it does.
    #[error("kafka refused a record of the request, though it is within ingest's limits (check the topics' max.message.bytes): {0}; nothing of the request was written")]
    Refused(String),
    /// Kafka did not take the transaction: nothing of the request was written.
    #[error(
        "kafka did not accept the transaction: {0}; nothing of the request was written, retry"
    )]
    NotWritten(String),
    /// The request's deadline passed before its transaction began.
    #[error("not written within the request timeout of {0} ms (kafka slow or the producer busy); nothing of the request was written, retry")]
    TimedOut(u64),
    /// A commit was sent but not confirmed in time: the events may or may not be written.
    #[error("kafka did not confirm the commit in time: {0}; the events may or may not have been written, retry")]
    Unknown(String),
    /// The producer thread is gone (the node is stopping, or the thread failed).
    #[error("the ingest producer stopped; the events may or may not have been written, retry")]
    Closed,
}

/// Told whenever the producer's ability to commit changes: `Some(reason)` when a group of
/// requests failed and none of it committed, `None` when a transaction commits again. A
/// request over ingest's limits is answered before it reaches Kafka, so it never counts.
pub type HealthHook = Box<dyn Fn(Option<String>) + Send>;

/// A job's owner: the producer claims it before writing it, the waiting request abandons
/// it when its deadline passes first. Exactly one wins, so a request that gave up is never
/// written behind its back.
const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

struct Job {
    records: Vec<OutRecord>,
    /// When the request handed its records to the producer.
    queued_at: Instant,
    /// When the request stops waiting.
    deadline: Instant,
    claim: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<(), IngestError>>,
}

impl Job {
    /// True if the producer may write this job: its request has not given up.
    fn claim(&self) -> bool {
        self.claim
            .compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn answer(self, result: Result<(), IngestError>) {
        // The request may have stopped listening (its client went away): nothing to tell.
        let _ = self.reply.send(result);
    }
}

/// A group's failed jobs, answered once the group's health verdict is recorded.
#[derive(Default)]
struct Failed(Vec<(Job, IngestError)>);

impl Failed {
    fn add(&mut self, jobs: Vec<Job>, err: IngestError) {
        self.0.extend(jobs.into_iter().map(|j| (j, err.clone())));
    }

    fn answer(self) {
        for (job, err) in self.0 {
            job.answer(Err(err));
        }
    }
}

/// Handle to the producer thread; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
    /// `ingest.request_timeout_ms`: the deadline of `produce` and `submit`.
    timeout: Duration,
}

impl Ingest {
    /// Starts the producer thread. Fails if the transactional producer cannot initialise.
    /// `id` names the producer (`tally-ingest-<id>` is its transactional id), so it must be
    /// unique among the producers sharing the brokers; `health` hears whether it can commit.
    pub fn start(
        kafka: &KafkaConfig,
        cfg: &IngestConfig,
        id: &str,
        partitions: (i32, i32),
        metrics: Arc<Metrics>,
        health: HealthHook,
    ) -> anyhow::Result<Ingest> {
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let tx = producer::start(producer::Setup {
            kafka,
            cfg,
            id,
            partitions,
            metrics,
            health,
        })?;
        Ok(Ingest { tx, timeout })
    }

    /// `ingest.request_timeout_ms`.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Produces `records` in a transaction and waits until Kafka acknowledged it, for at
    /// most the request timeout.
    pub async fn produce(&self, records: Vec<OutRecord>) -> Result<(), IngestError> {
        self.produce_until(records, Instant::now() + self.timeout)
            .await
    }

    /// [`Ingest::produce`], answered by `deadline` at the latest.
    pub async fn produce_until(
        &self,
        records: Vec<OutRecord>,
        deadline: Instant,
    ) -> Result<(), IngestError> {
        if records.is_empty() {
            return Ok(());
        }
        self.submit_until(records, deadline).await?.await
    }

    /// Queues `records` and returns a future of Kafka's answer without waiting for it; the
    /// deadline is the request timeout from now. Batches submitted one after another by one
    /// caller reach Kafka in that order (those that fail are answered so), which lets a
    /// caller pipeline batches and still know the order of its records.
    pub async fn submit(
        &self,
        records: Vec<OutRecord>,
    ) -> Result<impl std::future::Future<Output = Result<(), IngestError>>, IngestError> {
        self.submit_until(records, Instant::now() + self.timeout)
            .await
    }

    /// [`Ingest::submit`] with the given deadline: the future resolves by then. If the
    /// producer had not begun writing the records by then, they are never written.
    pub async fn submit_until(
        &self,
        records: Vec<OutRecord>,
        deadline: Instant,
    ) -> Result<impl std::future::Future<Output = Result<(), IngestError>>, IngestError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        let (reply, mut rx) = oneshot::channel();
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            records,
            queued_at: Instant::now(),
            deadline,
            claim: claim.clone(),
            reply,
        };
        let until = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(until, self.tx.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(IngestError::Closed),
            Err(_) => return Err(IngestError::TimedOut(timeout_ms)),
        }
        Ok(async move {
            if let Ok(answer) = tokio::time::timeout_at(until, &mut rx).await {
                return answer.unwrap_or(Err(IngestError::Closed));
            }
            if let Ok(answer) = rx.try_recv() {
                return answer;
            }
            let abandoned = claim
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if abandoned {
                Err(IngestError::TimedOut(timeout_ms))
            } else {
                Err(IngestError::Unknown(
                    "the producer did not answer by the deadline".into(),
                ))
            }
        })
    }
}
