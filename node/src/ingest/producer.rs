//! The producer thread: gathers requests into group transactions, splits a failed group
//! until only what cannot be written fails, and answers every request by its deadline.
//!
//! librdkafka's producer calls block, so the producer lives on a thread of its own and
//! talks to requests through a bounded queue of jobs and a one-shot answer each.
//!
//! Not for: shaping records (see `record`) or the health report (see `health`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::health::HealthTracker;
use super::record::{OutRecord, Target, MAX_RECORD_BYTES};
use super::{Failed, HealthHook, IngestError, Job, QUEUE};
use crate::config::{IngestConfig, KafkaConfig};
use crate::log_limit::LogLimit;
use crate::metrics::Metrics;
use crate::partitioner::partition_for;
use crate::retry::Backoff;

/// librdkafka's per-record limit (`message.max.bytes`), set explicitly so that
/// [`MAX_RECORD_BYTES`] stays under it whatever librdkafka's default becomes. Kafka's
/// default topic limit (`max.message.bytes`, 1,048,588) is above it.
const PRODUCER_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Time for `init_transactions` when the node starts.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The producer answers this long before a request's deadline, so that its answer arrives
/// before the request stops waiting (after which the outcome could only be "unknown").
const ANSWER_MARGIN: Duration = Duration::from_millis(200);
/// No transaction is begun with less time than this left: it could not finish.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
/// Attempts of one request alone (after its group failed) before it is answered an error.
const SOLO_ATTEMPTS: u32 = 3;

/// One line per second at most for failed transactions: under a broker outage every
/// request fails, and its counter stays exact.
static FAILURE_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// What the producer thread is started with (see `Ingest::start`).
pub(super) struct Setup<'a> {
    pub kafka: &'a KafkaConfig,
    pub cfg: &'a IngestConfig,
    pub id: &'a str,
    pub partitions: (i32, i32),
    pub metrics: Arc<Metrics>,
    pub health: HealthHook,
}

/// Starts the producer thread and returns its queue. Fails if the transactional producer
/// cannot initialise.
pub(super) fn start(setup: Setup<'_>) -> anyhow::Result<mpsc::Sender<Job>> {
    let Setup {
        kafka,
        cfg,
        id,
        partitions,
        metrics,
        health,
    } = setup;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("tally-ingest-{id}"))
        .set("transactional.id", format!("tally-ingest-{id}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES.to_string())
        // A transaction lives no longer than the request it answers: the coordinator
        // aborts one left open longer (a producer that died mid-transaction), and
        // librdkafka stops retrying a record then (message.timeout.ms follows this).
        .set(
            "transaction.timeout.ms",
            cfg.request_timeout_ms.max(1000).to_string(),
        );
    kafka.apply_connection(&mut client);
    let producer: BaseProducer = client.create().context("create kafka producer")?;
    producer
        .init_transactions(INIT_TIMEOUT)
        .context("init kafka transactions")?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let worker = Worker {
        producer: Some(producer),
        retired: Vec::new(),
        client,
        fenced: None,
        stages: None,
        topics: [
            kafka.player_topic.clone(),
            kafka.channel_topic.clone(),
            kafka.dlq_topic.clone(),
        ],
        partitions,
        linger: Duration::from_millis(cfg.linger_ms),
        max_records: cfg.max_transaction_records,
        timeout_ms: cfg.request_timeout_ms,
        metrics,
        health: HealthTracker::new(health),
    };
    // The thread ends by itself when the last `Ingest` handle is dropped: every
    // request has waited for its transaction, so nothing is left uncommitted.
    std::thread::Builder::new()
        .name("kafka-ingest".into())
        .spawn(move || worker.run(rx))
        .context("spawn ingest thread")?;
    info!("ingest producer ready");
    Ok(tx)
}

/// Whose fault a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The producer or the brokers (unreachable, timed out, a fatal producer error).
    Producer,
    /// Another producer took this producer's transactional id: it must not write again.
    Fenced,
    /// Kafka refused a record (too large, invalid): retrying the same records is futile,
    /// but their neighbours may be written without them.
    Record,
}

impl Fault {
    fn of(code: RDKafkaErrorCode) -> Fault {
        use RDKafkaErrorCode as C;
        match code {
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord => Fault::Record,
            C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch => Fault::Fenced,
            _ => Fault::Producer,
        }
    }
}

/// Why an attempt wrote nothing.
#[derive(Debug, Clone)]
struct Failure {
    fault: Fault,
    reason: String,
}

/// What one transaction attempt did.
enum Attempt {
    Committed,
    /// Nothing was written: the commit was never sent, or the transaction was aborted.
    NotWritten(Failure),
    /// The commit was sent but not confirmed.
    Unknown(String),
}

/// Part of a group still to be written, with what happened to it so far.
struct Pending {
    jobs: Vec<Job>,
    /// The failure that made this part necessary (a failed group, an earlier attempt).
    last: Option<Failure>,
    /// Attempts of this part alone so far (single requests are retried a few times).
    attempts: u32,
    backoff: Backoff,
}

impl Pending {
    fn new(jobs: Vec<Job>, last: Option<Failure>) -> Pending {
        Pending {
            jobs,
            last,
            attempts: 0,
            backoff: Backoff::new(Duration::from_millis(100), 3, Duration::from_secs(1)),
        }
    }
}

/// What a group's transactions did, for the health report.
#[derive(Default)]
struct GroupOutcome {
    committed: bool,
    /// The last failure; reported only if nothing of the group committed.
    failure: Option<Failure>,
}

struct Worker {
    /// None after a fatal error or a failed abort: a new one is made before the next
    /// transaction (its `init_transactions` also settles a transaction the old one left).
    producer: Option<BaseProducer>,
    /// Producers taken out of use during the current group (see [`Worker::retire`]).
    retired: Vec<BaseProducer>,
    client: ClientConfig,
    /// Set once fenced, with the reason: the id belongs to another producer now, and
    /// taking it back would fence that one in turn.
    fenced: Option<String>,
    /// Topic names indexed like [`Target`].
    topics: [String; 3],
    /// Partition counts of the player and channel topics.
    partitions: (i32, i32),
    linger: Duration,
    max_records: usize,
    timeout_ms: u64,
    metrics: Arc<Metrics>,
    health: HealthTracker,
    /// When the last attempt began, had every delivery report, and committed.
    stages: Option<(Instant, Instant, Instant)>,
}

impl Drop for Worker {
    /// A producer thread that panicked answers every request 503 from now on: `/readyz`
    /// must say so rather than stay ready.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let reason = "the ingest producer thread panicked (see the log); restart the node";
            self.health.failed(reason.into(), true, Instant::now());
        }
    }
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("build ingest runtime");
        loop {
            let first = match self.health.expires_at() {
                None => rx.blocking_recv(),
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    // The timer must be made inside the runtime: inside the async block.
                    let next = rt.block_on(async { tokio::time::timeout_at(at, rx.recv()).await });
                    match next {
                        Ok(job) => job,
                        Err(_) => {
                            self.health.expire(Instant::now());
                            continue;
                        }
                    }
                }
            };
            let Some(first) = first else {
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
            self.process(jobs);
        }
    }

    /// Writes a group of jobs: all in one transaction if it commits; else in halves, down
    /// to single jobs, each answered for itself. Every job is answered by the earliest
    /// deadline of the group, so a job whose time ran out while others were retried is
    /// answered before its request stops waiting.
    ///
    /// `/readyz` is brought up to date before a request hears its answer: a commit is
    /// recorded before its jobs are answered, and failed jobs are answered after the
    /// group's verdict, so a client that was refused and then asks `/readyz` sees why.
    fn process(&mut self, jobs: Vec<Job>) {
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if !job.claim() {
                continue; // its request gave up and answered that nothing was written
            }
            if let Some(size) = job
                .records
                .iter()
                .map(OutRecord::size)
                .find(|&s| s > MAX_RECORD_BYTES)
            {
                job.answer(Err(IngestError::TooLarge {
                    size,
                    limit: MAX_RECORD_BYTES,
                }));
                continue;
            }
            live.push(job);
        }
        let Some(deadline) = live.iter().map(|j| j.deadline).min() else {
            return;
        };
        let until = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        let mut outcome = GroupOutcome::default();
        let mut failed = Failed::default();
        let mut pending = VecDeque::from([Pending::new(live, None)]);
        while let Some(mut part) = pending.pop_front() {
            if until.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                let err = match &part.last {
                    Some(f) => IngestError::NotWritten(f.reason.clone()),
                    None => IngestError::TimedOut(self.timeout_ms),
                };
                failed.add(part.jobs, err);
                continue;
            }
            part.attempts += 1;
            match self.attempt(&part.jobs, until) {
                Attempt::Committed => {
                    self.metrics.add_ingest_transaction();
                    if let Some((began, appended, committed)) = self.stages.take() {
                        for job in &part.jobs {
                            let queued = began.saturating_duration_since(job.queued_at);
                            self.metrics.stages.observe_ingest(
                                queued,
                                appended - began,
                                committed - appended,
                            );
                        }
                    }
                    outcome.committed = true;
                    self.health.committed();
                    part.jobs.into_iter().for_each(|j| j.answer(Ok(())));
                }
                Attempt::Unknown(reason) => {
                    self.log_failure(&reason, part.jobs.len(), "outcome unknown");
                    outcome.failure = Some(Failure {
                        fault: Fault::Producer,
                        reason: reason.clone(),
                    });
                    failed.add(part.jobs, IngestError::Unknown(reason));
                }
                Attempt::NotWritten(failure) => {
                    self.log_failure(&failure.reason, part.jobs.len(), "aborted");
                    // Even a refused record counts when nothing else commits: records
                    // within ingest's limits should always be accepted.
                    outcome.failure = Some(failure.clone());
                    self.after_failure(part, failure, &mut pending, &mut failed, until);
                }
            }
        }
        self.retired.clear();
        match outcome.failure {
            // Fenced is for good, even if part of the group committed before it.
            Some(f) if f.fault == Fault::Fenced => {
                self.health.failed(f.reason, true, Instant::now())
            }
            _ if outcome.committed => self.health.committed(),
            Some(f) => self.health.failed(f.reason, false, Instant::now()),
            None => {}
        }
        failed.answer();
    }

    /// What follows a failed attempt of `part`: a group is split in halves (each written
    /// on its own, left first, so a caller's order holds); a single job is answered if
    /// Kafka refused its records, or retried a few times if the failure may pass.
    fn after_failure(
        &mut self,
        mut part: Pending,
        failure: Failure,
        pending: &mut VecDeque<Pending>,
        failed: &mut Failed,
        until: Instant,
    ) {
        if failure.fault == Fault::Fenced {
            failed.add(part.jobs, IngestError::NotWritten(failure.reason));
            return;
        }
        if part.jobs.len() > 1 {
            let right = part.jobs.split_off(part.jobs.len() / 2);
            pending.push_front(Pending::new(right, Some(failure.clone())));
            pending.push_front(Pending::new(part.jobs, Some(failure)));
            return;
        }
        if failure.fault == Fault::Record {
            failed.add(part.jobs, IngestError::Refused(failure.reason));
            return;
        }
        let delay = part.backoff.next_delay();
        let time_left = until.saturating_duration_since(Instant::now());
        if part.attempts < SOLO_ATTEMPTS && delay + MIN_ATTEMPT < time_left {
            std::thread::sleep(delay);
            part.last = Some(failure);
            pending.push_front(part);
        } else {
            failed.add(part.jobs, IngestError::NotWritten(failure.reason));
        }
    }

    fn log_failure(&self, reason: &str, jobs: usize, what: &str) {
        self.metrics.add_ingest_failed_transaction();
        if let Some(suppressed) = FAILURE_LOG.allow() {
            warn!(error = %reason, jobs, suppressed, "ingest transaction failed: {what}");
        }
    }

    /// One transaction of all `jobs`' records, every Kafka call cut to end by `until`.
    fn attempt(&mut self, jobs: &[Job], until: Instant) -> Attempt {
        if let Some(reason) = &self.fenced {
            return Attempt::NotWritten(Failure {
                fault: Fault::Fenced,
                reason: reason.clone(),
            });
        }
        if self.producer.is_none() {
            match self.recreate(until.saturating_duration_since(Instant::now())) {
                Ok(p) => self.producer = Some(p),
                Err(e) => return self.not_written(e, "initialise the producer"),
            }
        }
        let producer = self.producer.as_ref().expect("producer created above");
        let began = Instant::now();
        if let Err(e) = producer.begin_transaction() {
            return self.not_written(e, "begin the transaction");
        }
        // Of the time left, a fifth is kept for aborting, so a failed attempt is cleaned
        // up before the requests must be answered.
        let left = until.saturating_duration_since(Instant::now());
        let commit_by = Instant::now() + left - left / 5;
        for rec in jobs.iter().flat_map(|j| j.records.iter()) {
            if let Err(e) = self.send(producer, rec, commit_by) {
                return self.abort(e, until);
            }
        }
        // rdkafka's commit_transaction flushes first, and its flush waits in steps of
        // 100 ms (its poll runs to the end of each step even once the delivery reports are
        // in): a commit cost 100 ms of nothing. The delivery reports are taken here in 1 ms
        // steps, so that flush finds nothing in flight; if time runs out first, the flush
        // inside commit_transaction reports it as before.
        while producer.in_flight_count() > 0 && Instant::now() < commit_by {
            producer.poll(Duration::from_millis(1));
        }
        let appended = Instant::now();
        let timeout = commit_by.saturating_duration_since(appended);
        match producer.commit_transaction(timeout) {
            Ok(()) => {
                self.stages = Some((began, appended, Instant::now()));
                producer.poll(Duration::ZERO);
                Attempt::Committed
            }
            // rdkafka flushes before it asks the coordinator to commit: a flush that did
            // not finish means the commit request was never sent.
            Err(KafkaError::Flush(code)) => {
                let failure = Failure {
                    fault: Fault::of(code),
                    reason: format!(
                        "kafka: the records were not acknowledged within {} ms: {code}",
                        timeout.as_millis()
                    ),
                };
                self.abort(failure, until)
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                let failure = Failure {
                    fault: Fault::of(e.code()),
                    reason: format!("kafka: {}", e.string()),
                };
                self.abort(failure, until)
            }
            Err(e) => {
                // The commit may have reached the coordinator. A new producer's
                // init_transactions settles it one way or the other before the next one.
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                let reason = format!("kafka: commit the transaction: {e}");
                let failure = Failure {
                    fault: Fault::of(code),
                    reason: reason.clone(),
                };
                if let Some(fenced) = self.note_fatal(Some(&failure)) {
                    // The coordinator refused the commit: the producer that fenced this one
                    // aborted the transaction when it took the id.
                    return Attempt::NotWritten(fenced);
                }
                self.retire();
                Attempt::Unknown(reason)
            }
        }
    }

    /// Hands one record to librdkafka, waiting (until `by`) while its queue is full.
    fn send(&self, producer: &BaseProducer, rec: &OutRecord, by: Instant) -> Result<(), Failure> {
        let topic = &self.topics[rec.target as usize];
        let partition = match rec.target {
            Target::Players => Some(partition_for(&rec.key, self.partitions.0)),
            Target::Channels => Some(partition_for(&rec.key, self.partitions.1)),
            Target::DeadLetter => None,
        };
        let headers = rec.headers();
        let headers = (!headers.is_empty()).then(|| {
            headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(&value[..]),
                })
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
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < by =>
                {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    return Err(Failure {
                        fault: Fault::of(code),
                        reason: format!("kafka: produce to {topic}: {e}"),
                    });
                }
            }
        }
    }

    /// A failed call outside a transaction's body (creating, beginning): nothing to abort.
    fn not_written(&mut self, e: KafkaError, doing: &str) -> Attempt {
        let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        let failure = Failure {
            fault: Fault::of(code),
            reason: format!("kafka: {doing}: {e}"),
        };
        if let Some(fenced) = self.note_fatal(Some(&failure)) {
            return Attempt::NotWritten(fenced);
        }
        if failure.fault == Fault::Producer {
            // A producer that cannot begin is not trusted to begin the next time.
            self.retire();
        }
        Attempt::NotWritten(failure)
    }

    /// Aborts the open transaction after `failure`; its commit was never sent, so nothing
    /// of it is written whether or not the abort succeeds.
    fn abort(&mut self, failure: Failure, until: Instant) -> Attempt {
        // A producer with a fatal error cannot abort; it is replaced instead.
        if let Some(fenced) = self.note_fatal(Some(&failure)) {
            return Attempt::NotWritten(fenced);
        }
        let timeout = until
            .saturating_duration_since(Instant::now())
            .max(MIN_ATTEMPT);
        if let Some(p) = &self.producer {
            if let Err(e) = p.abort_transaction(timeout) {
                warn!(error = %e, "ingest abort failed; the producer will be recreated");
                self.retire();
            }
        }
        Attempt::NotWritten(failure)
    }

    /// After a failure: a producer with a fatal error is replaced, and one fenced by
    /// another producer with its transactional id stops for good (returned as a failure).
    fn note_fatal(&mut self, failure: Option<&Failure>) -> Option<Failure> {
        let fatal = self
            .producer
            .as_ref()
            .and_then(|p| p.client().fatal_error());
        let fenced = match (&fatal, failure) {
            (Some((code, _)), _) if Fault::of(*code) == Fault::Fenced => true,
            (_, Some(f)) => f.fault == Fault::Fenced,
            _ => false,
        };
        if fenced {
            let reason = match fatal {
                Some((_, text)) => text,
                None => failure.map(|f| f.reason.clone()).unwrap_or_default(),
            };
            let reason = format!(
                "kafka: the producer was fenced by another producer with its transactional id \
                 (another node with the same cluster_id and node.id?); restart this node: {reason}"
            );
            error!(%reason, "ingest stopped");
            self.fenced = Some(reason.clone());
            self.retire();
            return Some(Failure {
                fault: Fault::Fenced,
                reason,
            });
        }
        if fatal.is_some() {
            self.retire();
        }
        None
    }

    /// Takes the producer out of use; it is dropped once the group's requests are
    /// answered, because dropping waits for librdkafka to purge what it still holds.
    fn retire(&mut self) {
        if let Some(p) = self.producer.take() {
            self.retired.push(p);
        }
    }

    fn recreate(&self, timeout: Duration) -> Result<BaseProducer, KafkaError> {
        let producer: BaseProducer = self.client.create()?;
        producer.init_transactions(timeout.max(MIN_ATTEMPT))?;
        Ok(producer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_errors_are_blamed_on_the_record_only_when_kafka_refused_the_record() {
        use RDKafkaErrorCode as C;
        assert_eq!(Fault::of(C::MessageSizeTooLarge), Fault::Record);
        assert_eq!(Fault::of(C::InvalidRecord), Fault::Record);
        assert_eq!(Fault::of(C::ProducerFenced), Fault::Fenced);
        assert_eq!(Fault::of(C::Fenced), Fault::Fenced);
        for code in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::CoordinatorNotAvailable,
            C::Fatal,
        ] {
            assert_eq!(Fault::of(code), Fault::Producer, "{code:?}");
        }
    }
}
