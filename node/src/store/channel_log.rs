//! Channel state in Cassandra as a log: a base snapshot, then one delta per checkpoint.
//!
//! A popular channel holds tens of thousands of present viewers and every viewer it ever
//! had; rewriting all of that each second would cost Cassandra more than the events that
//! changed it. So a checkpoint writes a [`ChannelDelta`] (the viewers that came, went or
//! sent a heartbeat, and the counters) as one row, and only now and then a new base.
//!
//! Layout (table `channel_log`, one Cassandra partition per channel): a generation is a
//! base (one or more chunks) followed by deltas, `seq` counting up from 0. Each generation
//! has exactly one writer, the shard incarnation that started it with a random id, so its
//! chain is never interleaved with another writer's. The static `head` cell names the
//! newest complete chain (generation, last seq, offset); it is set in the same statement
//! as the entry it names and written `USING TIMESTAMP <offset + 1>`, so whichever writer
//! reflects the highest offset owns the head, exactly like the whole-row player state.
//! Loading reads the head, then entries `0..=seq` of its generation, and checks that they
//! chain (each delta starts at the offset the previous entry ended at).
//!
//! A shard starts a new generation when it first writes a channel it loaded (another
//! incarnation's chain is never appended to), after a write whose outcome is unknown, and
//! when the deltas since the base outgrow the base. It deletes its own superseded
//! generations once a newer base is written; a generation another incarnation wrote is
//! left in place, because a paused former owner might still append to it.
//!
//! Not for: when to checkpoint (see `shard`) or the channel's semantics (see `entity`).

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};

use crate::entity::{self, Channel, ChannelDelta};
use crate::store::{LogRow, Store};

/// Size of one base chunk: well below Cassandra's mutation size limit.
const CHUNK_BYTES: usize = 256 * 1024;
/// A chain is rebased once its deltas exceed the base's size, or this, whichever is more.
const MIN_REBASE_BYTES: usize = 16 * 1024;

/// One entry of a generation.
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    /// A piece of the stored form of the channel as of `offset` (pieces concatenate).
    Base { offset: i64, bytes: Vec<u8> },
    /// The changes from the state as of `prev` to the state as of `offset`.
    Delta {
        prev: i64,
        offset: i64,
        delta: ChannelDelta,
    },
}

/// The newest complete chain of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub gen: i64,
    pub seq: i32,
    /// Offset of the last channel-events record the chain reflects.
    pub offset: i64,
}

/// The generation a shard appends to.
#[derive(Debug, Clone, Copy)]
struct Chain {
    gen: i64,
    next_seq: i32,
    /// Offset the last written entry reflects.
    offset: i64,
    base_offset: i64,
    base_bytes: usize,
    delta_bytes: usize,
}

/// A shard's bookkeeping of one channel's log. Kept while the channel is passivated, so a
/// reactivated channel continues its generation instead of writing a new base.
#[derive(Debug, Default)]
pub struct LogState {
    chain: Option<Chain>,
    /// Own generations a newer base supersedes: (generation, last offset written to it).
    retired: Vec<(i64, i64)>,
}

/// What one checkpoint writes for one channel, in order.
#[derive(Debug)]
pub struct ChannelWrite {
    pub rows: Vec<LogRow>,
    /// Own generations to delete after the rows: (generation, offset for the tombstone).
    pub deletes: Vec<(i64, i64)>,
}

/// A channel read from Cassandra.
pub struct Loaded {
    pub channel: Channel,
    pub offset: i64,
    /// None: read from a row written before channel logs existed.
    pub head: Option<Head>,
}

impl LogState {
    /// Plans the write of a changed channel whose last applied record is `offset`:
    /// a delta onto this shard's chain, or a new generation.
    pub fn plan(&mut self, channel: &mut Channel, offset: i64) -> ChannelWrite {
        if let Some(chain) = &mut self.chain {
            if chain.delta_bytes <= chain.base_bytes.max(MIN_REBASE_BYTES) {
                let entry = encode_entry(&Entry::Delta {
                    prev: chain.offset,
                    offset,
                    delta: channel.take_delta(),
                });
                let seq = chain.next_seq;
                chain.next_seq += 1;
                chain.delta_bytes += entry.len();
                chain.offset = offset;
                let head = Head {
                    gen: chain.gen,
                    seq,
                    offset,
                };
                return ChannelWrite {
                    rows: vec![LogRow {
                        gen: chain.gen,
                        seq,
                        entry,
                        head: Some(encode_head(&head)),
                        offset,
                    }],
                    deletes: Vec::new(),
                };
            }
            self.retired.push((chain.gen, chain.offset));
        }
        channel.clear_changes();
        let stored = entity::encode(&*channel);
        let gen: i64 = rand::random();
        let chunks: Vec<&[u8]> = stored.chunks(CHUNK_BYTES).collect();
        let last = chunks.len() as i32 - 1;
        let rows = chunks
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let seq = i as i32;
                LogRow {
                    gen,
                    seq,
                    entry: encode_entry(&Entry::Base {
                        offset,
                        bytes: bytes.to_vec(),
                    }),
                    head: (seq == last).then(|| encode_head(&Head { gen, seq, offset })),
                    offset,
                }
            })
            .collect();
        self.chain = Some(Chain {
            gen,
            next_seq: last + 1,
            offset,
            base_offset: offset,
            base_bytes: stored.len(),
            delta_bytes: 0,
        });
        // A tombstone at `offset` covers every row of a generation that ended below it; a
        // generation that ended at `offset` could still own the head (a tie), so it waits.
        let deletes = self
            .retired
            .iter()
            .filter(|(_, ended)| *ended < offset)
            .map(|(gen, _)| (*gen, offset))
            .collect();
        ChannelWrite { rows, deletes }
    }

    /// The planned write is durable.
    pub fn written(&mut self) {
        if let Some(chain) = &self.chain {
            let base = chain.base_offset;
            self.retired.retain(|(_, ended)| *ended >= base);
        }
    }

    /// The planned write failed, and may or may not have landed: start over with a new
    /// generation next time.
    pub fn failed(&mut self) {
        if let Some(chain) = self.chain.take() {
            self.retired.push((chain.gen, chain.offset));
        }
    }

    /// The channel was read from Cassandra: keep appending only if the stored head is
    /// still this shard's own.
    pub fn loaded(&mut self, head: Option<Head>) {
        let ours = match (&self.chain, head) {
            (Some(chain), Some(head)) => {
                head.gen == chain.gen
                    && head.seq + 1 == chain.next_seq
                    && head.offset == chain.offset
            }
            _ => false,
        };
        if !ours {
            self.failed();
        }
    }
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    postcard::to_stdvec(entry).expect("log entries always encode")
}

fn encode_head(head: &Head) -> Vec<u8> {
    postcard::to_stdvec(head).expect("log heads always encode")
}

/// Reads a channel: its log if it has one, else a row from before channel logs existed.
pub async fn load(store: &Store, partition: i32, id: &str) -> anyhow::Result<Option<Loaded>> {
    let Some(head) = store.read_log_head(partition, id).await? else {
        let Some(row) = store.read_legacy_channel(partition, id).await? else {
            return Ok(None);
        };
        return Ok(Some(Loaded {
            channel: entity::decode(&row.state)?,
            offset: row.applied_offset,
            head: None,
        }));
    };
    let head: Head = postcard::from_bytes(&head)
        .with_context(|| format!("decode channel {id} log head of {} bytes", head.len()))?;
    let entries = store
        .read_log_entries(partition, id, head.gen, head.seq)
        .await?;
    let channel = assemble(&head, entries).with_context(|| format!("channel {id}"))?;
    Ok(Some(Loaded {
        channel,
        offset: head.offset,
        head: Some(head),
    }))
}

/// Rebuilds a channel from the entries `0..=head.seq` of the head's generation.
fn assemble(head: &Head, entries: Vec<(i32, Vec<u8>)>) -> anyhow::Result<Channel> {
    let gen = head.gen;
    ensure!(
        entries.len() as i64 == head.seq as i64 + 1,
        "log {gen} has {} entries, its head names {}",
        entries.len(),
        head.seq + 1
    );
    let mut base = Vec::new();
    let mut channel: Option<Channel> = None;
    let mut at: Option<i64> = None;
    for (i, (seq, bytes)) in entries.into_iter().enumerate() {
        ensure!(seq == i as i32, "log {gen}: entry {i} is missing");
        let entry: Entry = postcard::from_bytes(&bytes)
            .with_context(|| format!("log {gen}: decode entry {seq} of {} bytes", bytes.len()))?;
        match entry {
            Entry::Base { offset, bytes } => {
                ensure!(
                    channel.is_none(),
                    "log {gen}: base entry {seq} after a delta"
                );
                ensure!(
                    at.is_none_or(|a| a == offset),
                    "log {gen}: base entry {seq} is of another offset"
                );
                at = Some(offset);
                base.extend_from_slice(&bytes);
            }
            Entry::Delta {
                prev,
                offset,
                delta,
            } => {
                ensure!(
                    at == Some(prev),
                    "log {gen}: delta {seq} starts at offset {prev}, the chain is at {at:?}"
                );
                let c = match channel.as_mut() {
                    Some(c) => c,
                    None => channel.insert(entity::decode(&base)?),
                };
                c.apply_delta(delta);
                at = Some(offset);
            }
        }
    }
    if at != Some(head.offset) {
        bail!(
            "log {gen} ends at offset {at:?}, its head names {}",
            head.offset
        );
    }
    let mut channel = match channel {
        Some(c) => c,
        None => entity::decode(&base)?,
    };
    channel.rebuild_expiry();
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBody;

    const T: i64 = 60_000;

    fn join(c: &mut Channel, who: &str, ts: i64) {
        let body = EventBody::ViewerJoin {
            channel: "c".into(),
        };
        c.apply(ts, who, &body, ts, T);
    }

    fn rows_of(writes: &[ChannelWrite]) -> (Head, Vec<(i32, Vec<u8>)>) {
        let rows: Vec<&LogRow> = writes.iter().flat_map(|w| &w.rows).collect();
        let last = rows.last().expect("a write");
        let head: Head = postcard::from_bytes(last.head.as_ref().expect("head")).unwrap();
        let entries = rows
            .iter()
            .filter(|r| r.gen == head.gen)
            .map(|r| (r.seq, r.entry.clone()))
            .collect();
        (head, entries)
    }

    #[test]
    fn deltas_follow_a_base_and_rebuild_the_channel() {
        let mut c = Channel::default();
        let mut log = LogState::default();
        let mut writes = Vec::new();
        for i in 0..50i64 {
            join(&mut c, &format!("v{i}"), i * 1_000);
            writes.push(log.plan(&mut c, i));
            log.written();
        }
        assert_eq!(writes[0].rows.len(), 1, "a small base is one chunk");
        assert!(writes[1..]
            .iter()
            .all(|w| w.rows.len() == 1 && w.deletes.is_empty()));
        let (head, entries) = rows_of(&writes);
        assert_eq!(head.offset, 49);
        assert_eq!(assemble(&head, entries).unwrap(), c);
    }

    #[test]
    fn a_large_base_is_chunked_and_deltas_rebase() {
        let mut c = Channel::default();
        for i in 0..40_000i64 {
            join(&mut c, &format!("viewer-{i:08}"), 0);
        }
        let mut log = LogState::default();
        let first = log.plan(&mut c, 1);
        assert!(first.rows.len() > 1, "{} chunks", first.rows.len());
        assert!(first.rows[..first.rows.len() - 1]
            .iter()
            .all(|r| r.head.is_none()));
        log.written();
        let mut writes = vec![first];
        let mut offset = 1;
        // Heartbeats from everyone, checkpoint after each 1,000: the deltas outgrow the base.
        let hb = EventBody::ViewerHeartbeat {
            channel: "c".into(),
        };
        for round in 1..=3i64 {
            for i in 0..40_000i64 {
                c.apply(
                    round * 1_000,
                    &format!("viewer-{i:08}"),
                    &hb,
                    round * 1_000,
                    T,
                );
                if i % 1_000 == 999 {
                    offset += 1;
                    writes.push(log.plan(&mut c, offset));
                    log.written();
                }
            }
        }
        let rebased: Vec<&ChannelWrite> =
            writes[1..].iter().filter(|w| w.rows[0].seq == 0).collect();
        assert!(!rebased.is_empty(), "no rebase in {} writes", writes.len());
        assert_eq!(
            rebased[0].deletes,
            vec![(writes[0].rows[0].gen, rebased[0].rows[0].offset)]
        );
        let (head, entries) = rows_of(&writes);
        assert_eq!(assemble(&head, entries).unwrap(), c);
    }

    #[test]
    fn a_failed_write_starts_a_new_generation() {
        let mut c = Channel::default();
        let mut log = LogState::default();
        join(&mut c, "a", 0);
        let first = log.plan(&mut c, 0);
        log.written();
        join(&mut c, "b", 1);
        let lost = log.plan(&mut c, 1);
        assert_eq!(lost.rows[0].gen, first.rows[0].gen);
        log.failed();
        join(&mut c, "c", 2);
        let again = log.plan(&mut c, 2);
        assert_ne!(again.rows[0].gen, first.rows[0].gen);
        assert_eq!(again.rows[0].seq, 0);
        // The failed generation ended at offset 1 < 2: superseded, deleted with this base.
        assert_eq!(again.deletes, vec![(first.rows[0].gen, 2)]);
        let (head, entries) = rows_of(&[again]);
        assert_eq!(assemble(&head, entries).unwrap(), c);
    }

    #[test]
    fn a_chain_with_a_gap_is_refused() {
        let mut c = Channel::default();
        let mut log = LogState::default();
        let mut writes = Vec::new();
        for i in 0..3i64 {
            join(&mut c, &format!("v{i}"), i);
            writes.push(log.plan(&mut c, i));
        }
        let (head, mut entries) = rows_of(&writes);
        entries.remove(1);
        let err = assemble(&head, entries).unwrap_err().to_string();
        assert!(err.contains("entries"), "{err}");
    }

    #[test]
    fn reloading_its_own_head_continues_the_chain() {
        let mut c = Channel::default();
        let mut log = LogState::default();
        join(&mut c, "a", 0);
        let w = log.plan(&mut c, 0);
        log.written();
        let head: Head = postcard::from_bytes(w.rows[0].head.as_ref().unwrap()).unwrap();
        log.loaded(Some(head));
        join(&mut c, "b", 1);
        assert_eq!(log.plan(&mut c, 1).rows[0].seq, 1);
        log.written();
        // Someone else's newer head: never append to it.
        log.loaded(Some(Head {
            gen: head.gen + 1,
            seq: 0,
            offset: 5,
        }));
        join(&mut c, "c", 6);
        assert_eq!(log.plan(&mut c, 6).rows[0].seq, 0);
    }
}
