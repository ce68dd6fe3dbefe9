//! When and what a shard checkpoints, and passivation of idle entities.
//!
//! A tick starts a checkpoint unless one is running: a snapshot of the dirty entities that
//! are due plus the progress it makes durable, written by a task of its own (see
//! `store::checkpoint`) while the shard keeps applying. An entity is due once its first
//! unwritten change is `shard.flush_period_ms` old (a flush takes every one); the
//! progress's resume offset is the oldest change left unwritten, so a replay from it
//! re-applies everything not in Cassandra, and skips per entity what is (see
//! `crate::dirty`). While the partition has a backlog, checkpoints space out to the
//! catch-up interval. Idle entities leave memory only once they are clean.
//!
//! Not for: the write order itself (see `store::checkpoint`).

use std::time::{Duration, Instant};

use compact_str::CompactString;
use ractor::{ActorRef, RpcReplyPort};
use tracing::{debug, error};

use super::{CheckpointError, Hosted, ResumeMark, ShardMsg, ShardState};
use crate::config::ShardConfig;
use crate::dirty::Due;
use crate::history::Step;
use crate::store::checkpoint::{self, Snapshot};
use crate::store::Progress;
use crate::telemetry;

impl<E: Hosted> ShardState<E> {
    /// Periodic: checkpoint when due, passivate idle entities.
    pub(super) fn tick(&mut self, myself: &ActorRef<ShardMsg>) {
        let due = checkpoint_due(
            self.last_checkpoint.map(|t| t.elapsed()),
            self.last_full_batch.map(|t| t.elapsed()),
            &self.args.cfg,
        );
        if due {
            self.start_checkpoint(myself);
        }
        self.passivate_idle();
    }

    /// Writes everything and answers `reply` once it is durable.
    pub(super) fn flush(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        reply: RpcReplyPort<Result<Progress, CheckpointError>>,
    ) {
        self.flush_waiters.push(reply);
        // A running checkpoint starts the next round when it is done.
        self.start_checkpoint(myself);
    }

    /// A checkpoint task finished: record the durable progress, or mark its entities dirty
    /// again so the next one writes them.
    pub(super) fn checkpoint_done(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        result: Result<Progress, CheckpointError>,
        keys: Vec<String>,
    ) {
        self.checkpoint_running = false;
        E::checkpointed(&mut self.extra, &keys, result.is_ok());
        match result {
            Ok(progress) => {
                self.durable = progress;
                self.prune_resume_marks(self.running_dedupe_from);
                // Buckets leave only when a minute of event time ended or entities left:
                // nothing else makes a clean bucket over.
                let minute = crate::history::Step::Minute.start(self.watermark);
                if minute != self.history.swept_minute || self.history.entities_left {
                    let entities = &self.entities;
                    self.history
                        .passivate(self.watermark, |k| entities.contains_key(k));
                    self.history.swept_minute = minute;
                    self.history.entities_left = false;
                }
                self.completed_checkpoint();
                self.args
                    .metrics
                    .set_durable(E::KIND, self.args.partition, progress.resume_offset);
                if !self.flush_waiters.is_empty() {
                    // Anything applied since the snapshot needs one more round.
                    self.start_checkpoint(myself);
                }
            }
            Err(e) => {
                error!(error = %e, "checkpoint failed; will retry");
                self.mark_dirty(keys);
                self.history.mark_all_dirty(self.durable.resume_offset);
            }
        }
    }

    /// Notes a checkpoint that completed (or found nothing to write), for freshness and
    /// the shard's series.
    fn completed_checkpoint(&mut self) {
        self.last_checkpoint = Some(Instant::now());
        self.series.checkpointed();
        self.series
            .set_resident(self.entities.len(), self.entities.allocated_bytes());
    }

    /// Marks resident entities dirty again (their checkpoint failed). Each goes back in
    /// front as changed at the durable resume offset when the shard's clock began (due at
    /// once, unless the shard is younger than a flush period), also one that changed again
    /// since and is queued further back: its first unwritten change is older.
    fn mark_dirty(&mut self, keys: Vec<String>) {
        let mut again = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(slot) = self.entities.get_mut(&key) {
                slot.dirty = true;
                again.push(slot.key.clone());
            }
        }
        self.dirty
            .requeue(again.into_iter(), self.durable.resume_offset);
    }

    /// Takes a consistent snapshot of the dirty entities that are due (all of them while a
    /// flush waits) with their buckets, and the progress it makes durable: records below
    /// its resume offset are all in Cassandra once it is written.
    fn snapshot(&mut self) -> Snapshot {
        let due = Due {
            all: !self.flush_waiters.is_empty(),
            ..Due::at(self.clock_ms(), self.flush_period_ms())
        };
        let dirty = self.dirty.take_due(due);
        let clock = self.clock();
        let mut snap = Snapshot {
            kind: E::KIND,
            topic: self.args.topic.clone(),
            partition: self.args.partition,
            owner: self.args.owner.clone(),
            entities: Vec::with_capacity(dirty.len()),
            progress: Progress {
                resume_offset: self.next_offset,
                watermark_ms: self.watermark,
            },
            dedupe_from: 0,
            global_buckets: Vec::new(),
            buckets: Vec::new(),
            bucket_ttl: Step::ALL.map(|s| self.args.history.ttl_secs(s)),
        };
        // A key queued twice, or passivated since a failed write requeued it, is skipped.
        let dirty: Vec<CompactString> = dirty
            .into_iter()
            .filter(|k| self.entities.get(k).is_some_and(|s| s.dirty))
            .collect();
        if self.history.enabled {
            let (entity_scope, partition_scope) = E::SCOPES;
            (snap.global_buckets, snap.buckets) = self.history.snapshot(
                (entity_scope, partition_scope, self.args.partition),
                self.next_offset,
                due,
                &dirty,
            );
        }
        let unwritten = [self.dirty.oldest_offset(), self.history.oldest_unwritten()];
        snap.dedupe_from = self.dedupe.oldest_needed(self.next_offset);
        if let Some(oldest) = unwritten.into_iter().flatten().min() {
            if oldest < self.next_offset {
                let mark = self.resume_at(oldest);
                (snap.progress, snap.dedupe_from) = (mark.progress, mark.dedupe_from);
            }
        }
        for (i, key) in dirty.iter().enumerate() {
            // As in the apply loop: the entities ahead are on their way into the cache.
            if let Some(k) = dirty.get(i + 2) {
                self.entities.prefetch_index(k);
            }
            if let Some(k) = dirty.get(i + 1) {
                self.entities.prefetch(k);
            }
            let slot = self
                .entities
                .get_mut(key)
                .expect("dirty keys taken are resident");
            slot.dirty = false;
            snap.entities.push(E::snapshot(
                &mut self.extra,
                key,
                &mut slot.state,
                slot.offset,
                clock,
            ));
        }
        snap
    }

    /// Where to resume so that the change at `offset` is applied again: the last batch
    /// start at or before it.
    fn resume_at(&self, offset: i64) -> ResumeMark {
        // The first mark is the durable progress, and nothing unwritten is older.
        let first = self.resume_marks[0];
        *self
            .resume_marks
            .iter()
            .rev()
            .find(|m| m.progress.resume_offset <= offset)
            .unwrap_or(&first)
    }

    /// Forgets the batch starts before the durable progress, which becomes the first mark
    /// (with the dedupe mark written beside it).
    fn prune_resume_marks(&mut self, dedupe_from: i64) {
        let durable = self.durable;
        self.resume_marks
            .retain(|m| m.progress.resume_offset > durable.resume_offset);
        self.resume_marks.push_front(ResumeMark {
            progress: durable,
            dedupe_from,
        });
    }

    fn start_checkpoint(&mut self, myself: &ActorRef<ShardMsg>) {
        if self.checkpoint_running {
            return;
        }
        let snap = self.snapshot();
        if snap.entities.is_empty()
            && snap.buckets.is_empty()
            && snap.global_buckets.is_empty()
            && snap.progress.resume_offset == self.durable.resume_offset
        {
            // Nothing new, or nothing due: answer waiting flushes at once (a flush takes
            // everything, so it found nothing).
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(Ok(self.durable));
            }
            self.completed_checkpoint();
            return;
        }
        self.checkpoint_running = true;
        self.running_dedupe_from = snap.dedupe_from;
        let store = self.args.store.clone();
        let metrics = self.args.metrics.clone();
        let myself = myself.clone();
        let traced = std::mem::take(&mut self.traced);
        let cache = self.args.history_cache.clone();
        tokio::spawn(async move {
            let started = std::time::SystemTime::now();
            let keys: Vec<String> = snap.entities.iter().map(|e| e.key().to_string()).collect();
            let written = checkpoint::write(&store, &snap, &metrics).await;
            // Through to the owner's cache once Cassandra has it all; after a failure part
            // of it may be there, so the cache forgets the partition.
            if let Some(cache) = &cache {
                let shard = (snap.kind, snap.partition);
                match &written {
                    Ok(()) => cache.written(shard, &snap.buckets, snap.progress.into()),
                    Err(_) => cache.write_failed(shard),
                }
            }
            let result = written
                .map(|_| snap.progress)
                .map_err(|source| CheckpointError {
                    partition: snap.partition,
                    source,
                });
            let error = result.as_ref().err().map(ToString::to_string);
            let (kind, rows) = (snap.kind.label(), snap.entities.len());
            telemetry::checkpointed(&traced, kind, snap.partition, rows, started, error);
            let _ = myself.cast(ShardMsg::CheckpointDone(result, keys));
        });
    }

    /// Evicts entities idle for `passivate_after`. The scan visits every resident entity,
    /// so it runs every twentieth of that period (at most once a second), not every tick:
    /// an idle entity then stays at most 5% longer than configured.
    fn passivate_idle(&mut self) {
        let every = (self.args.cfg.passivate_after() / 20).max(Duration::from_secs(1));
        if self.checkpoint_running || self.last_passivation_scan.elapsed() < every {
            return;
        }
        self.last_passivation_scan = Instant::now();
        let idle = self.args.cfg.passivate_after().as_secs() as u32;
        let now = self.now_secs();
        let clock = self.clock();
        let (passivated, extra) = (&mut self.passivated, &mut self.extra);
        let live = &self.history.live;
        let mut evicted = 0u64;
        self.entities.retain(|s| {
            // A live channel is sampled at every point: it stays.
            let keep = now.saturating_sub(s.touched) < idle || s.dirty || live.contains(&s.key);
            if !keep {
                E::passivated(extra, &s.key, &s.state, clock);
                passivated.insert(s.key.to_string());
                evicted += 1;
            }
            keep
        });
        if evicted > 0 {
            self.history.entities_left = true;
            self.args.metrics.add_passivations(evicted);
            self.series
                .set_resident(self.entities.len(), self.entities.allocated_bytes());
            debug!(
                partition = self.args.partition,
                evicted, "passivated idle entities"
            );
        }
    }
}

/// Whether a periodic tick starts a checkpoint, given the time since the last one finished
/// and since a batch last arrived full: every tick normally; while the partition has a
/// backlog (a full batch within the last two seconds), once per catch-up interval.
fn checkpoint_due(
    since_checkpoint: Option<Duration>,
    since_full_batch: Option<Duration>,
    cfg: &ShardConfig,
) -> bool {
    let catching_up = since_full_batch.is_some_and(|d| d < Duration::from_secs(2));
    match since_checkpoint {
        Some(since) if catching_up => since >= cfg.catch_up_checkpoint_interval(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_space_out_only_while_a_backlog_lasts() {
        let cfg = ShardConfig::default();
        let s = Duration::from_secs;
        // Steady: every tick.
        assert!(checkpoint_due(Some(s(1)), None, &cfg));
        assert!(checkpoint_due(Some(s(1)), Some(s(60)), &cfg));
        // Backlog: only once the catch-up interval has passed.
        assert!(!checkpoint_due(Some(s(1)), Some(s(0)), &cfg));
        assert!(!checkpoint_due(Some(s(9)), Some(s(1)), &cfg));
        assert!(checkpoint_due(Some(s(10)), Some(s(1)), &cfg));
        // Never checkpointed yet: now, backlog or not.
        assert!(checkpoint_due(None, Some(s(0)), &cfg));
        // The backlog is over two seconds after the last full batch.
        assert!(checkpoint_due(Some(s(1)), Some(s(2)), &cfg));
        // Catch-up equal to the interval: one pace always.
        let same = ShardConfig {
            catch_up_checkpoint_interval_ms: cfg.checkpoint_interval_ms,
            ..ShardConfig::default()
        };
        assert!(checkpoint_due(Some(s(1)), Some(s(0)), &same));
    }
}
