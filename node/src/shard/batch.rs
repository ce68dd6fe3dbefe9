//! Record batches: what the Kafka poll loop hands a shard.
//!
//! A batch's keys and payloads share one buffer, and emptied buffers return to a pool, so
//! the poll loop copies each record once and allocates nothing per record or per batch.
//!
//! Not for: decoding records (see `shard::apply`) or reading Kafka (see `source`).

use std::sync::Arc;

/// One Kafka record, owned (tests and tools build batches from these).
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    /// Kafka timestamp in milliseconds (-1: none); see [`RecordRef::timestamp`].
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One record of a [`Records`] batch, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: i64,
    /// Kafka timestamp in milliseconds (-1: none): when the record arrived, by the broker's
    /// clock on Tally's topics (LogAppendTime). Part of the log, so replays see the same.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// A (start, length) range of [`Records::bytes`].
type Span = (u32, u32);

/// Offset, timestamp, then key and payload as spans of the batch's bytes.
type Item = (i64, i64, Option<Span>, Option<Span>);

/// Records of one partition in offset order, handed to its shard. Keys and payloads share
/// one buffer: the poll loop copies each record once and allocates nothing per record.
/// Taken from a [`RecordsPool`], a batch goes back to it when dropped, so the buffers are
/// reused instead of allocated (and their pages faulted in) for every batch.
#[derive(Debug, Clone, Default)]
pub struct Records {
    items: Vec<Item>,
    bytes: Vec<u8>,
    pool: Option<Arc<RecordsPool>>,
    /// The partition's high watermark as of the fetch that brought these records, and the
    /// consumer's position after them (past transaction markers, unlike the offset after
    /// the last record), for the shard's lag. None: not known.
    high_watermark: Option<i64>,
    position: Option<i64>,
    /// The sampled trace contexts records carried, by offset (empty unless tracing is on).
    traces: Vec<(i64, opentelemetry::trace::SpanContext)>,
    /// When the source read these records, milliseconds since the epoch (0: not known).
    read_ms: i64,
}

/// Emptied [`Records`] buffers waiting to be reused by the poll loop.
#[derive(Debug, Default)]
pub struct RecordsPool {
    free: std::sync::Mutex<Vec<(Vec<Item>, Vec<u8>)>>,
}

impl RecordsPool {
    /// Buffers kept at most; more are freed. Enough for every batch in flight under a
    /// backlog (`shard.max_inflight_batches` plus a poll round's), so a bulk load reuses
    /// buffers instead of growing (and faulting in) fresh ones for most batches.
    const KEEP: usize = 128;
    /// Buffers kept after [`Self::shrink`]: what a steady stream needs.
    const KEEP_IDLE: usize = 16;
    /// A buffer that grew past this is freed rather than kept.
    const KEEP_BYTES: usize = 512 * 1024;

    /// Frees the buffers beyond what a steady stream needs; called every few seconds, so
    /// the pool's memory after a backlog does not stay resident. Under a backlog the pool
    /// refills at once, which costs a few allocations per call.
    pub fn shrink(&self) {
        let mut free = self.free.lock().expect("records pool lock");
        free.truncate(Self::KEEP_IDLE);
        free.shrink_to(Self::KEEP_IDLE);
    }

    /// An empty batch, with reused buffers when there are any.
    pub fn take(self: &Arc<Self>) -> Records {
        let reused = self.free.lock().expect("records pool lock").pop();
        let (items, bytes) =
            reused.unwrap_or_else(|| (Vec::with_capacity(256), Vec::with_capacity(64 * 1024)));
        Records {
            items,
            bytes,
            pool: Some(self.clone()),
            high_watermark: None,
            position: None,
            traces: Vec::new(),
            read_ms: 0,
        }
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        if self.bytes.capacity() > RecordsPool::KEEP_BYTES {
            return;
        }
        let mut free = pool.free.lock().expect("records pool lock");
        if free.len() < RecordsPool::KEEP {
            self.items.clear();
            self.bytes.clear();
            free.push((
                std::mem::take(&mut self.items),
                std::mem::take(&mut self.bytes),
            ));
        }
    }
}

impl Records {
    pub fn push(
        &mut self,
        offset: i64,
        timestamp: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let mut put = |b: &[u8]| {
            let start = self.bytes.len() as u32;
            self.bytes.extend_from_slice(b);
            (start, b.len() as u32)
        };
        let key = key.map(&mut put);
        let payload = payload.map(&mut put);
        self.items.push((offset, timestamp, key, payload));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Records of the partition after this batch (see [`Records::set_progress`]), at
    /// least 0; None while not known.
    pub fn records_after(&self) -> Option<i64> {
        let high = self.high_watermark?;
        let last = self.items.last().map_or(-1, |i| i.0);
        let after = self.position.unwrap_or(last + 1).max(last + 1);
        Some(high.saturating_sub(after).max(0))
    }

    /// Notes that the record at `offset` carries a sampled trace context.
    pub fn add_trace(&mut self, offset: i64, parent: opentelemetry::trace::SpanContext) {
        self.traces.push((offset, parent));
    }

    /// The trace contexts its records carried, by offset.
    pub fn take_traces(&mut self) -> Vec<(i64, opentelemetry::trace::SpanContext)> {
        std::mem::take(&mut self.traces)
    }

    /// Where the partition stood when this batch was read: its high watermark and the
    /// consumer's position.
    pub fn set_progress(&mut self, high_watermark: Option<i64>, position: Option<i64>) {
        self.high_watermark = high_watermark;
        self.position = position;
    }

    /// Notes when the source read these records (milliseconds since the epoch).
    pub fn set_read_ms(&mut self, read_ms: i64) {
        self.read_ms = read_ms;
    }

    /// When the source read these records, and the oldest one's Kafka timestamp (-1: none).
    pub fn read_times(&self) -> (i64, i64) {
        (self.read_ms, self.items.first().map_or(-1, |i| i.1))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let part = |r: Option<Span>| {
            r.map(|(start, len)| &self.bytes[start as usize..(start + len) as usize])
        };
        self.items
            .iter()
            .map(move |&(offset, timestamp, key, payload)| RecordRef {
                offset,
                timestamp,
                key: part(key),
                payload: part(payload),
            })
    }
}

impl From<&[Record]> for Records {
    fn from(records: &[Record]) -> Self {
        let mut out = Records::default();
        for r in records {
            out.push(
                r.offset,
                r.timestamp,
                r.key.as_deref(),
                r.payload.as_deref(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_batches_return_their_buffers_to_the_pool() {
        let pool = Arc::new(RecordsPool::default());
        let mut batch = pool.take();
        batch.push(7, 1, Some(b"p1"), Some(b"{}"));
        let bytes_at = batch.bytes.as_ptr();
        drop(batch);
        // The next batch reuses the buffer, emptied.
        let batch = pool.take();
        assert!(batch.is_empty());
        assert_eq!(batch.bytes.as_ptr(), bytes_at);
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        drop(batch);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
        // A buffer that grew too large is freed, not kept.
        let mut big = pool.take();
        let payload = vec![b'x'; RecordsPool::KEEP_BYTES + 1];
        big.push(8, 1, None, Some(&payload));
        drop(big);
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        // A batch built without a pool goes nowhere.
        drop(Records::default());
        assert_eq!(pool.free.lock().unwrap().len(), 0);
        // Every batch of a backlog returns to the pool; shrinking keeps a steady stream's.
        let batches: Vec<Records> = (0..RecordsPool::KEEP + 5).map(|_| pool.take()).collect();
        drop(batches);
        assert_eq!(pool.free.lock().unwrap().len(), RecordsPool::KEEP);
        pool.shrink();
        assert_eq!(pool.free.lock().unwrap().len(), RecordsPool::KEEP_IDLE);
    }
}
