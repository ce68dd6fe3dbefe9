//! Reading the consumer queue in batches, through librdkafka's C API.
//!
//! rdkafka's `BaseConsumer::poll` hands over one record per call, and each call costs
//! several clock reads, a queue lock, an event object and a reference count: at a million
//! records a second that was a quarter of the node's CPU. `rd_kafka_consume_batch_queue`
//! hands over every queued record with one call. The consumer stays rdkafka's (config,
//! assignment, positions, watermarks); only reading and offset commits go through here.
//!
//! Offset commits must not answer on the consumer queue: librdkafka's batch call aborts
//! the process on an offset-commit reply it finds there (it has no callback to serve it
//! with). So commits answer on a queue of their own, [`Reader::commit`], drained by
//! [`Reader::take_commit_results`]. Likewise librdkafka's log lines: rdkafka routes them
//! to the consumer queue, where the batch call would print them to stderr in librdkafka's
//! own format; the reader moves them to a queue of their own and hands each to the
//! consumer's context, so they reach the node's log as before.
//!
//! Not for: deciding what to read (the poll loop assigns partitions) or routing records.

use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

/// One record read, borrowed from the reader until the next read.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, milliseconds since the epoch (-1: none): the broker's
    /// append time on topics with `message.timestamp.type=LogAppendTime`, which Tally's
    /// own topics use, else the producer's create time.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The record's `traceparent` header; read only when tracing is on (see `telemetry`).
    pub traceparent: Option<&'a [u8]>,
}

/// The consumer's queue, read in batches; owns the records of the last read.
pub struct Reader {
    /// Keeps the client alive as long as the queues.
    consumer: std::sync::Arc<BaseConsumer>,
    queue: *mut rd::rd_kafka_queue_t,
    /// Where offset-commit results arrive.
    commits: *mut rd::rd_kafka_queue_t,
    /// Where librdkafka's log lines arrive.
    logs: *mut rd::rd_kafka_queue_t,
    /// Records of the last read, destroyed at the next read or on drop.
    read: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka queues and messages may be used from any thread; the reader is only
// ever used by one thread at a time (it is not Sync).
unsafe impl Send for Reader {}

/// The value of a message's last `traceparent` header, if it has one.
fn traceparent(m: &rd::rd_kafka_message_t) -> Option<&[u8]> {
    let ok = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    let mut headers = std::ptr::null_mut();
    // SAFETY: `m` is a live message; librdkafka parses its headers once and keeps them
    // with the message, which owns them.
    if unsafe { rd::rd_kafka_message_headers(m, &mut headers) } != ok {
        return None;
    }
    let (mut value, mut size) = (std::ptr::null(), 0usize);
    // SAFETY: the headers belong to `m`; the name is NUL-terminated; the value pointer
    // and size are written together and stay valid as long as `m`.
    let found = unsafe {
        rd::rd_kafka_header_get_last(headers, c"traceparent".as_ptr(), &mut value, &mut size)
    };
    (found == ok && !value.is_null())
        // SAFETY: as above: `size` bytes at `value`, alive while `m` is.
        .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) })
}

impl Reader {
    /// A reader of `consumer`'s queue that reads at most `max_batch` records at once (at
    /// least one: the batch call writes into a buffer of that many slots).
    pub fn new(
        consumer: std::sync::Arc<BaseConsumer>,
        max_batch: NonZeroUsize,
    ) -> anyhow::Result<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is a live consumer handle; both calls return a new queue reference
        // (or null), released in `drop`.
        let (queue, commits, logs) = unsafe {
            (
                rd::rd_kafka_queue_get_consumer(rk),
                rd::rd_kafka_queue_new(rk),
                rd::rd_kafka_queue_new(rk),
            )
        };
        let reader = Reader {
            consumer,
            queue,
            commits,
            logs,
            read: Vec::with_capacity(max_batch.get()),
        };
        anyhow::ensure!(
            !queue.is_null() && !commits.is_null() && !logs.is_null(),
            "kafka consumer has no consumer queue (is group.id set?)"
        );
        // SAFETY: live handles; librdkafka keeps its own reference to the queue.
        let err = unsafe { rd::rd_kafka_set_log_queue(rk, logs) };
        anyhow::ensure!(
            err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "kafka consumer logs cannot be redirected: {}",
            RDKafkaErrorCode::from(err)
        );
        Ok(reader)
    }

    /// Reads up to the batch size: waits up to `wait` for a first record, then takes what
    /// else is queued without waiting. Calls `each` per record (or per error librdkafka
    /// reports on the queue), in queue order. Returns how many records were read and how
    /// long the wait for the first one took.
    pub fn read(
        &mut self,
        wait: Duration,
        mut each: impl FnMut(Result<Record<'_>, KafkaError>),
    ) -> (usize, Duration) {
        let traced = crate::telemetry::enabled();
        self.release();
        self.forward_logs();
        let cap = self.read.capacity();
        let wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        let asked = Instant::now();
        let waited;
        // SAFETY: the buffer has room for `cap` pointers, and `cap` is at least 1 (`new`
        // takes a `NonZeroUsize`), so the first call's one pointer fits and the second
        // writes at most the `cap - 1` left after it. librdkafka returns how many it wrote
        // (or -1, clamped to 0), so `set_len` covers only initialised pointers, each a
        // message we own until `rd_kafka_message_destroy` in `release`.
        unsafe {
            let buf = self.read.as_mut_ptr();
            let first = rd::rd_kafka_consume_batch_queue(self.queue, wait_ms, buf, 1).max(0);
            waited = asked.elapsed();
            let rest = if first == 1 && cap > 1 {
                rd::rd_kafka_consume_batch_queue(self.queue, 0, buf.add(1), cap - 1).max(0)
            } else {
                0
            };
            self.read.set_len((first + rest) as usize);
        }
        // The topic name of the previous record, by its topic handle: most records of a
        // read share one, and the name would otherwise be measured per record.
        let mut topic: (*mut rd::rd_kafka_topic_t, &str) = (std::ptr::null_mut(), "");
        let mut records = 0;
        for &m in &self.read {
            // SAFETY: `m` came from the batch call above and is destroyed only in
            // `release`; its key, payload and topic live as long as it does.
            let m = unsafe { &*m };
            if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                each(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(
                    m.err,
                ))));
                continue;
            }
            if m.rkt != topic.0 {
                // SAFETY: a record's topic handle is valid while the record is.
                let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)) };
                topic = (m.rkt, name.to_str().unwrap_or(""));
            }
            let bytes = |p: *mut std::ffi::c_void, len: usize| {
                (!p.is_null()).then(|| {
                    // SAFETY: librdkafka sets pointer and length together (null means
                    // absent), and the bytes live as long as the message, which outlives
                    // the `Record` handed to `each`.
                    unsafe { std::slice::from_raw_parts(p as *const u8, len) }
                })
            };
            // SAFETY: `m` is a live message (see above); the call only reads it.
            let timestamp = unsafe { rd::rd_kafka_message_timestamp(m, std::ptr::null_mut()) };
            records += 1;
            each(Ok(Record {
                topic: topic.1,
                partition: m.partition,
                offset: m.offset,
                timestamp,
                key: bytes(m.key, m.key_len),
                payload: bytes(m.payload, m.len),
                traceparent: if traced { traceparent(m) } else { None },
            }));
        }
        (records, waited)
    }

    /// Where a partition stands, from librdkafka's cached state (no broker round trip):
    /// the high watermark as of the last fetch response, and the consumer's position (the
    /// offset after the last record handed over, moved past transaction markers). None
    /// where unknown.
    pub fn cached_progress(&self, topic: &str, partition: i32) -> (Option<i64>, Option<i64>) {
        let Ok(name) = std::ffi::CString::new(topic) else {
            return (None, None);
        };
        let (mut low, mut high) = (-1i64, -1i64);
        let rk = self.consumer.client().native_ptr();
        // SAFETY: a live handle and a NUL-terminated name; librdkafka only writes the two
        // offsets it is given.
        let err = unsafe {
            rd::rd_kafka_get_watermark_offsets(rk, name.as_ptr(), partition, &mut low, &mut high)
        };
        let ok = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
        let high = (err == ok && high >= 0).then_some(high);
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(topic, partition);
        // SAFETY: a live handle and a list this function owns; librdkafka writes each
        // element's offset in place.
        let err = unsafe { rd::rd_kafka_position(rk, list.ptr()) };
        let position = (err == ok)
            .then(|| list.elements().first().map(|e| e.offset()))
            .flatten()
            .and_then(|o| match o {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            });
        (high, position)
    }

    /// Commits `offsets` without waiting; the result arrives on the reader's own queue.
    pub fn commit(&self, offsets: &TopicPartitionList) -> Result<(), KafkaError> {
        let rk = self.consumer.client().native_ptr();
        // SAFETY: live handles; librdkafka copies the list before returning.
        let err = unsafe {
            rd::rd_kafka_commit_queue(rk, offsets.ptr(), self.commits, None, std::ptr::null_mut())
        };
        match err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
            e => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::from(e))),
        }
    }

    /// The answers to earlier commits that have arrived, oldest first.
    pub fn take_commit_results(&self) -> Vec<Result<(), KafkaError>> {
        let mut answers = Vec::new();
        drain(self.commits, |ev| {
            // SAFETY: a live event (see `drain`).
            answers.push(match unsafe { rd::rd_kafka_event_error(ev) } {
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                e => Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::from(e))),
            })
        });
        answers
    }

    /// Hands librdkafka's queued log lines to the consumer's context (which writes them to
    /// the node's log, as rdkafka's own poll would have).
    fn forward_logs(&self) {
        drain(self.logs, |ev| {
            let (mut fac, mut line, mut level) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: a live event (see `drain`); its strings live as long as it does.
            unsafe {
                if rd::rd_kafka_event_log(ev, &mut fac, &mut line, &mut level) == 0 {
                    let fac = CStr::from_ptr(fac).to_string_lossy();
                    let line = CStr::from_ptr(line).to_string_lossy();
                    self.consumer
                        .context()
                        .log(log_level(level), fac.trim(), line.trim());
                }
            }
        });
    }

    /// Destroys the records of the last read.
    fn release(&mut self) {
        for m in self.read.drain(..) {
            // SAFETY: each was returned by the batch call and is destroyed once.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

/// rdkafka's name for a syslog level.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        ..=0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// Hands each event waiting on `queue` (if there is a queue) to `each`, then destroys it.
fn drain(queue: *mut rd::rd_kafka_queue_t, mut each: impl FnMut(*mut rd::rd_kafka_event_t)) {
    if queue.is_null() {
        return;
    }
    // SAFETY: a queue reference the reader holds; each event polled is ours to destroy,
    // and `each` sees it only before that.
    unsafe {
        while let Some(ev) = std::ptr::NonNull::new(rd::rd_kafka_queue_poll(queue, 0)) {
            each(ev.as_ptr());
            rd::rd_kafka_event_destroy(ev.as_ptr());
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.release();
        // Log lines go back to rdkafka's queue; those already here are still written.
        if !self.logs.is_null() {
            // SAFETY: a live consumer handle.
            unsafe {
                rd::rd_kafka_set_log_queue(
                    self.consumer.client().native_ptr(),
                    std::ptr::null_mut(),
                )
            };
        }
        self.forward_logs();
        drain(self.commits, |_| {});
        // SAFETY: the references taken in `new`, each released once, before the consumer.
        unsafe {
            for queue in [self.logs, self.commits, self.queue] {
                if !queue.is_null() {
                    rd::rd_kafka_queue_destroy(queue);
                }
            }
        }
    }
}
