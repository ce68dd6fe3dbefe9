//! Partition ownership: the owner of each partition is the rendezvous hash over the live,
//! serving members; this module makes the local shards match that.
//!
//! On every membership change (and on a short tick) the controller compares the partitions
//! this node should own with the ones it runs. A partition that moves away is revoked from
//! the Kafka source, checkpointed and stopped, then dropped from what the node advertises.
//! A partition that moves here is started from its recorded progress, but only once no
//! other live member advertises it (its old owner has released it), or after the handover
//! timeout. A dead node advertises nothing, so its partitions are taken as soon as the
//! failure detector drops it. Two owners at once, which gossip can cause briefly, are safe:
//! both compute the same states and Cassandra keeps the one of the higher offset.
//!
//! Not for: gossip itself (see `membership`) or applying records (see `shard`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::membership::{rendezvous_owner, Member};
use crate::kind::{ChangeKind, ShardId, ShardKind};
use crate::shard::{self, ShardArgs, ShardMsg};
use crate::source::Assignment;
use crate::state::{Core, NodeState, OwnershipChange};

/// The shards `node` should own given the live `members`.
pub fn desired(members: &[Member], node: &str, partitions: (i32, i32)) -> BTreeSet<ShardId> {
    let mut candidates: Vec<&str> = members
        .iter()
        .filter(|m| m.is_serving())
        .map(|m| m.node_id.as_str())
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let all = (0..partitions.0)
        .map(|p| (ShardKind::Players, p))
        .chain((0..partitions.1).map(|p| (ShardKind::Channels, p)));
    all.filter(|s| rendezvous_owner(candidates.iter().copied(), *s) == Some(node))
        .collect()
}

/// Keeps the local shards equal to the desired ones until `stop` is cancelled.
pub async fn run_controller(state: Arc<NodeState>, stop: CancellationToken) {
    let core = state.core.get().expect("controller starts after core");
    let mut members_changed = core.membership.watch();
    if !state.cfg.cluster.seeds.is_empty() {
        // Let gossip find the peers first, so a starting node does not grab every
        // partition only to hand most of them back a moment later.
        let settle = Duration::from_millis(state.cfg.cluster.gossip_interval_ms * 15);
        tokio::select! {
            _ = tokio::time::sleep(settle) => {}
            _ = stop.cancelled() => return,
        }
    }
    let mut wanted_since: HashMap<ShardId, Instant> = HashMap::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        reconcile(&state, core, &mut wanted_since).await;
        state.mark_shards_started();
        tokio::select! {
            _ = members_changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn reconcile(state: &NodeState, core: &Core, wanted_since: &mut HashMap<ShardId, Instant>) {
    let me = core.membership.node_id().to_string();
    let members = core.membership.members();
    let want = desired(
        &members,
        &me,
        (core.player_partitions, core.channel_partitions),
    );
    let have: BTreeSet<ShardId> = core.shard_ids();
    for shard in have.difference(&want) {
        release(state, core, *shard, "rebalance").await;
    }
    let timeout = Duration::from_millis(state.cfg.cluster.handover_timeout_ms);
    wanted_since.retain(|s, _| want.contains(s) && !have.contains(s));
    for shard in want.difference(&have) {
        let holders: Vec<&str> = members
            .iter()
            .filter(|m| m.node_id != me && m.owned.contains(shard))
            .map(|m| m.node_id.as_str())
            .collect();
        let since = *wanted_since.entry(*shard).or_insert_with(Instant::now);
        if !holders.is_empty() && since.elapsed() < timeout {
            continue; // its owner is still checkpointing and releasing it
        }
        let note = if holders.is_empty() {
            String::new()
        } else {
            format!(
                "handover timeout: still advertised by {}",
                holders.join(",")
            )
        };
        if acquire(state, core, *shard, note).await {
            wanted_since.remove(shard);
        }
    }
    core.membership.advertise_owned(&core.shard_ids()).await;
}

/// Starts a shard for `shard` from its recorded progress and assigns it to the source.
async fn acquire(state: &NodeState, core: &Core, shard: ShardId, note: String) -> bool {
    let (kind, partition) = shard;
    let topic = state.topic(kind).to_string();
    // The dedupe mark first: it is written after the progress, so the progress read next
    // is at least as new, and the mark is then at or before what that progress needs.
    let stored = async {
        let dedupe_from = core.store.read_dedupe_from(&topic, partition).await?;
        let progress = core.store.read_progress(&topic, partition).await?;
        anyhow::Ok((progress, dedupe_from))
    };
    let (progress, dedupe_from) = match stored.await {
        Ok(p) => p,
        Err(e) => {
            warn!(%topic, partition, error = %format!("{e:#}"), "cannot read progress; will retry");
            return false;
        }
    };
    let args = ShardArgs {
        kind,
        topic: topic.clone(),
        partition,
        store: core.store.clone(),
        cfg: state.cfg.shard.clone(),
        owner: state.cfg.node.id.clone(),
        progress,
        metrics: state.metrics.clone(),
        dead_letters: Some(core.dead_letters.clone()),
    };
    let actor = match shard::spawn(args).await {
        Ok(a) => a,
        Err(e) => {
            error!(%topic, partition, error = %e, "shard failed to start; will retry");
            return false;
        }
    };
    let start_offset = progress.map_or(0, |p| p.resume_offset);
    // Reading starts at the dedupe mark: the records below the resume offset rebuild the
    // dedupe window and are not applied again.
    let read_from = dedupe_from.map_or(start_offset, |d| d.clamp(0, start_offset));
    core.insert_shard(shard, actor.clone());
    if let Err(e) = core.source.assign(Assignment {
        topic: topic.clone(),
        partition,
        start_offset: read_from,
        shard: actor,
    }) {
        error!(%topic, partition, error = %format!("{e:#}"), "assigning partition failed");
    }
    info!(%topic, partition, start_offset, read_from, "acquired partition");
    state.record_change(OwnershipChange::now(
        shard,
        ChangeKind::Acquired,
        start_offset,
        note,
    ));
    true
}

/// Stops reading `shard`, writes its final checkpoint and stops it.
pub async fn release(state: &NodeState, core: &Core, shard: ShardId, why: &str) {
    let (kind, partition) = shard;
    let topic = state.topic(kind).to_string();
    if let Err(e) = core.source.revoke(&topic, partition).await {
        warn!(%topic, partition, error = %format!("{e:#}"), "revoking partition from the source failed");
    }
    let Some(actor) = core.remove_shard(shard) else {
        return;
    };
    let offset = match ractor::call_t!(actor, ShardMsg::Flush, 60_000) {
        Ok(Ok(p)) => p.resume_offset,
        Ok(Err(e)) => {
            error!(%topic, partition, error = %e, "final checkpoint failed; the next owner replays from the last one");
            -1
        }
        Err(e) => {
            error!(%topic, partition, error = %e, "shard did not answer the final checkpoint");
            -1
        }
    };
    actor.stop(None);
    state.metrics.clear_durable(kind, partition);
    info!(%topic, partition, durable_offset = offset, why, "released partition");
    state.record_change(OwnershipChange::now(
        shard,
        ChangeKind::Released,
        offset,
        why.to_string(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::MemberStatus;

    fn member(id: &str, status: MemberStatus) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            gossip_addr: String::new(),
            api_addr: None,
            status,
            owned: BTreeSet::new(),
        }
    }

    #[test]
    fn every_partition_has_exactly_one_desired_owner() {
        let members = vec![
            member("a", MemberStatus::Serving),
            member("b", MemberStatus::Serving),
            member("c", MemberStatus::Serving),
        ];
        let sets: Vec<BTreeSet<ShardId>> = ["a", "b", "c"]
            .iter()
            .map(|n| desired(&members, n, (8, 8)))
            .collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        assert_eq!(total, 16);
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                assert!(a.is_disjoint(b));
            }
        }
    }

    #[test]
    fn a_leaving_node_is_not_a_candidate() {
        let members = vec![
            member("a", MemberStatus::Serving),
            member("b", MemberStatus::Leaving),
        ];
        assert!(desired(&members, "b", (8, 8)).is_empty());
        assert_eq!(desired(&members, "a", (8, 8)).len(), 16);
    }
}
