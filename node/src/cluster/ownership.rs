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
//! The decision is kept apart from its effects: a [`Planner`] turns what gossip shows
//! into a [`Plan`] (a pure function of the members, the held shards and the time), and
//! [`LocalShards`] carries it out. The node's shards are actors fed by Kafka
//! ([`NodeShards`]); the in-process cluster tests (`sandbox`) drive the same controller
//! over recorded sets, with real gossip over chitchat's in-memory transport.
//!
//! Not for: gossip itself (see `membership`) or applying records (see `shard`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::membership::{rendezvous_owner, Member, Membership};
use crate::config::ClusterConfig;
use crate::history::cache::Durable;
use crate::kind::{ChangeKind, MemberStatus, ShardId, ShardKind};
use crate::shard::{self, ShardArgs, ShardMsg};
use crate::source::Assignment;
use crate::state::{Core, NodeState, OwnershipChange};

/// How often the controller reconciles when membership does not change, so a shard that
/// failed to start is tried again.
const TICK: Duration = Duration::from_millis(500);

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

/// The shards of this node as the controller changes them. The node runs shard actors
/// fed by the Kafka source ([`NodeShards`]); the in-process cluster tests only record
/// which shards they hold, so ownership can be tested without Kafka and Cassandra.
pub trait LocalShards: Sync {
    /// The shards this node runs now.
    fn held(&self) -> BTreeSet<ShardId>;

    /// Starts `shard`; `note` says why it was taken while still advertised elsewhere (or
    /// is empty). A shard that cannot start now is simply not held: the next round tries
    /// again.
    fn acquire(&self, shard: ShardId, note: String) -> impl Future<Output = ()> + Send;

    /// Stops `shard` after its final checkpoint.
    fn release(&self, shard: ShardId, why: &'static str) -> impl Future<Output = ()> + Send;

    /// Called after every round.
    fn round_done(&self) {}

    /// The members a round planned with, and how many the failure detector suspects.
    fn observe_members(&self, _members: &[Member], _suspected: usize) {}
}

/// How the controller paces itself, from `[cluster]` and the topics' partition counts.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Partition counts of the player and channel topics.
    pub partitions: (i32, i32),
    /// How long a wanted shard may stay advertised by another live member before this
    /// node takes it anyway.
    pub handover_timeout: Duration,
    /// Waited once before the first round when there are seeds, so a starting node finds
    /// its peers before it grabs every partition only to hand most back a moment later.
    pub settle: Duration,
}

impl Rules {
    pub fn new(cfg: &ClusterConfig, partitions: (i32, i32)) -> Rules {
        Rules {
            partitions,
            handover_timeout: Duration::from_millis(cfg.handover_timeout_ms),
            settle: if cfg.seeds.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_millis(cfg.gossip_interval_ms * 15)
            },
        }
    }
}

/// What one round decides: the effects come after, in this order.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Held shards this node should no longer own; released first.
    pub release: Vec<ShardId>,
    /// Shards to start now, each with its note for `/v1/cluster` (empty, or who still
    /// advertised it when the handover timeout ran out).
    pub acquire: Vec<(ShardId, String)>,
}

/// The controller's decisions, apart from their effects: a function of the members it is
/// shown, the shards held and the time, plus what it remembers between rounds.
#[derive(Debug)]
pub struct Planner {
    me: String,
    partitions: (i32, i32),
    handover_timeout: Duration,
    /// When each wanted, not yet held shard was first wanted: its handover timeout counts
    /// from there.
    wanted_since: HashMap<ShardId, Instant>,
}

impl Planner {
    pub fn new(me: &str, rules: &Rules) -> Planner {
        Planner {
            me: me.to_string(),
            partitions: rules.partitions,
            handover_timeout: rules.handover_timeout,
            wanted_since: HashMap::new(),
        }
    }

    /// Release what moved away at once; take what moved here once no other live member
    /// advertises it (its old owner has checkpointed and released it), or once it has
    /// been wanted for the handover timeout.
    pub fn plan(&mut self, members: &[Member], have: &BTreeSet<ShardId>, now: Instant) -> Plan {
        let want = desired(members, &self.me, self.partitions);
        let release = have.difference(&want).copied().collect();
        self.wanted_since
            .retain(|s, _| want.contains(s) && !have.contains(s));
        let mut acquire = Vec::new();
        for shard in want.difference(have) {
            let holders: Vec<&str> = members
                .iter()
                .filter(|m| m.node_id != self.me && m.owned.contains(shard))
                .map(|m| m.node_id.as_str())
                .collect();
            let since = *self.wanted_since.entry(*shard).or_insert(now);
            if !holders.is_empty() && now.duration_since(since) < self.handover_timeout {
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
            acquire.push((*shard, note));
        }
        Plan { release, acquire }
    }
}

/// Keeps the node's shards equal to the desired ones until `stop` is cancelled.
pub async fn run_controller(state: Arc<NodeState>, stop: CancellationToken) {
    let core = state.core.get().expect("controller starts after core");
    let rules = Rules::new(
        &state.cfg.cluster,
        (core.player_partitions, core.channel_partitions),
    );
    control(
        &NodeShards::new(&state, core),
        &core.membership,
        &rules,
        stop,
    )
    .await;
}

/// Keeps `shards` equal to the desired ones until `stop` is cancelled: a round on every
/// membership change and every `TICK`.
pub async fn control<S: LocalShards>(
    shards: &S,
    membership: &Membership,
    rules: &Rules,
    stop: CancellationToken,
) {
    let mut members_changed = membership.watch();
    if !rules.settle.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(rules.settle) => {}
            _ = stop.cancelled() => return,
        }
    }
    let mut planner = Planner::new(membership.node_id(), rules);
    loop {
        if stop.is_cancelled() {
            return;
        }
        reconcile(shards, membership, &mut planner).await;
        tokio::select! {
            _ = members_changed.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One round: plan, release, acquire, then advertise what is held.
async fn reconcile<S: LocalShards>(shards: &S, membership: &Membership, planner: &mut Planner) {
    let members = membership.members();
    shards.observe_members(&members, membership.suspected().await);
    let plan = planner.plan(&members, &shards.held(), Instant::now());
    for shard in plan.release {
        shards.release(shard, "rebalance").await;
    }
    for (shard, note) in plan.acquire {
        shards.acquire(shard, note).await;
    }
    membership.advertise_owned(&shards.held()).await;
    shards.round_done();
}

/// A graceful leave, once the controller has stopped (or it would take the shards back):
/// advertise `leaving` so no peer counts this node as an owner, release every shard with
/// its final checkpoint, then advertise that nothing is owned, which lets the new owners
/// start at once.
pub async fn leave<S: LocalShards>(shards: &S, membership: &Membership) {
    membership.set_status(MemberStatus::Leaving).await;
    futures::future::join_all(
        shards
            .held()
            .into_iter()
            .map(|s| shards.release(s, "shutdown")),
    )
    .await;
    membership.advertise_owned(&BTreeSet::new()).await;
}

/// The node's shards: ractor actors fed by the Kafka source, checkpointed to Cassandra.
pub struct NodeShards<'a> {
    state: &'a NodeState,
    core: &'a Core,
}

impl<'a> NodeShards<'a> {
    pub fn new(state: &'a NodeState, core: &'a Core) -> NodeShards<'a> {
        NodeShards { state, core }
    }
}

impl LocalShards for NodeShards<'_> {
    fn held(&self) -> BTreeSet<ShardId> {
        self.core.shard_ids()
    }

    fn acquire(&self, shard: ShardId, note: String) -> impl Future<Output = ()> + Send {
        acquire(self.state, self.core, shard, note)
    }

    fn release(&self, shard: ShardId, why: &'static str) -> impl Future<Output = ()> + Send {
        release(self.state, self.core, shard, why)
    }

    /// Readiness counts the shards as started once the first round is done.
    fn round_done(&self) {
        self.state.mark_shards_started();
    }

    fn observe_members(&self, members: &[Member], suspected: usize) {
        let count = |status| members.iter().filter(|m| m.status == status).count() as i64;
        let by_status = [MemberStatus::Serving, MemberStatus::Leaving].map(|s| (s, count(s)));
        self.state.metrics.set_members(&by_status, suspected as i64);
    }
}

/// Starts a shard for `shard` from its recorded progress and assigns it to the source.
async fn acquire(state: &NodeState, core: &Core, shard: ShardId, note: String) {
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
            return;
        }
    };
    let start_offset = progress.map_or(0, |p| p.resume_offset);
    // Reading starts at the dedupe mark: the records below the resume offset rebuild the
    // dedupe window and are not applied again. Without a window there is nothing to rebuild.
    let read_from = match dedupe_from {
        Some(d) if state.cfg.shard.dedupe_window_secs > 0 => d.clamp(0, start_offset),
        _ => start_offset,
    };
    let args = ShardArgs {
        kind,
        topic: topic.clone(),
        partition,
        store: core.store.clone(),
        cfg: state.cfg.shard.clone(),
        owner: state.cfg.node.id.clone(),
        progress,
        dedupe_from: Some(read_from),
        metrics: state.metrics.clone(),
        dead_letters: Some(core.dead_letters.clone()),
        push_interval: state.cfg.push.interval(),
        history: state.cfg.history.clone(),
        history_cache: Some(state.history_cache.clone()),
    };
    // Before the shard writes anything: what the cache held of an earlier ownership goes.
    let durable = progress.map(Durable::from).unwrap_or_default();
    state.history_cache.acquire(shard, durable);
    let actor = match shard::spawn(args).await {
        Ok(a) => a,
        Err(e) => {
            state.history_cache.release(shard);
            error!(%topic, partition, error = %e, "shard failed to start; will retry");
            return;
        }
    };
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
}

/// Stops reading `shard`, writes its final checkpoint and stops it.
async fn release(state: &NodeState, core: &Core, shard: ShardId, why: &str) {
    let (kind, partition) = shard;
    let topic = state.topic(kind).to_string();
    if let Err(e) = core.source.revoke(&topic, partition).await {
        warn!(%topic, partition, error = %format!("{e:#}"), "revoking partition from the source failed");
    }
    let Some(actor) = core.remove_shard(shard) else {
        return;
    };
    // The next owner writes its rows from now on.
    state.history_cache.release(shard);
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
    state.metrics.forget_shard(kind, partition);
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

    fn owning(mut m: Member, owned: &BTreeSet<ShardId>) -> Member {
        m.owned = owned.clone();
        m
    }

    const PARTITIONS: (i32, i32) = (8, 8);

    fn planner(me: &str, handover_timeout: Duration) -> Planner {
        Planner::new(
            me,
            &Rules {
                partitions: PARTITIONS,
                handover_timeout,
                settle: Duration::ZERO,
            },
        )
    }

    #[test]
    fn a_partition_nobody_advertises_is_taken_at_once() {
        let members = vec![
            member("a", MemberStatus::Serving),
            member("b", MemberStatus::Serving),
        ];
        let plan =
            planner("a", Duration::from_secs(10)).plan(&members, &BTreeSet::new(), Instant::now());
        let taken: BTreeSet<ShardId> = plan.acquire.iter().map(|a| a.0).collect();
        assert_eq!(taken, desired(&members, "a", PARTITIONS));
        assert!(plan.acquire.iter().all(|a| a.1.is_empty()), "{plan:?}");
        assert!(plan.release.is_empty());
    }

    #[test]
    fn a_partition_still_advertised_waits_for_the_handover_timeout() {
        let all = desired(&[member("b", MemberStatus::Serving)], "b", PARTITIONS);
        // b is leaving but still checkpointing: it advertises everything.
        let members = vec![
            member("a", MemberStatus::Serving),
            owning(member("b", MemberStatus::Leaving), &all),
        ];
        let timeout = Duration::from_secs(10);
        let mut planner = planner("a", timeout);
        let t0 = Instant::now();
        assert_eq!(
            planner.plan(&members, &BTreeSet::new(), t0),
            Plan::default()
        );
        let just_before = t0 + timeout - Duration::from_millis(1);
        assert_eq!(
            planner.plan(&members, &BTreeSet::new(), just_before),
            Plan::default()
        );
        let plan = planner.plan(&members, &BTreeSet::new(), t0 + timeout);
        assert_eq!(plan.acquire.len(), all.len());
        for (shard, note) in &plan.acquire {
            assert_eq!(note, "handover timeout: still advertised by b", "{shard:?}");
        }
    }

    #[test]
    fn a_partition_is_taken_in_the_round_after_its_old_owner_released_it() {
        let all = desired(&[member("b", MemberStatus::Serving)], "b", PARTITIONS);
        let mut planner = planner("a", Duration::from_secs(10));
        let t0 = Instant::now();
        let advertising = vec![
            member("a", MemberStatus::Serving),
            owning(member("b", MemberStatus::Leaving), &all),
        ];
        assert_eq!(
            planner.plan(&advertising, &BTreeSet::new(), t0),
            Plan::default()
        );
        let released = vec![
            member("a", MemberStatus::Serving),
            member("b", MemberStatus::Leaving),
        ];
        let plan = planner.plan(&released, &BTreeSet::new(), t0);
        assert_eq!(plan.acquire.len(), all.len());
        assert!(plan.acquire.iter().all(|a| a.1.is_empty()), "{plan:?}");
    }

    #[test]
    fn held_partitions_of_another_owner_are_released() {
        let members = vec![
            member("a", MemberStatus::Serving),
            member("b", MemberStatus::Serving),
        ];
        let everything = desired(&[member("a", MemberStatus::Serving)], "a", PARTITIONS);
        let plan =
            planner("a", Duration::from_secs(10)).plan(&members, &everything, Instant::now());
        let released: BTreeSet<ShardId> = plan.release.into_iter().collect();
        assert_eq!(released, desired(&members, "b", PARTITIONS));
        assert!(plan.acquire.is_empty());
    }

    #[test]
    fn the_handover_wait_starts_again_when_a_partition_is_wanted_anew() {
        let all = desired(&[member("b", MemberStatus::Serving)], "b", PARTITIONS);
        let timeout = Duration::from_secs(10);
        let mut planner = planner("a", timeout);
        let leaving = vec![
            member("a", MemberStatus::Serving),
            owning(member("b", MemberStatus::Leaving), &all),
        ];
        let staying = vec![
            member("a", MemberStatus::Serving),
            owning(member("b", MemberStatus::Serving), &all),
        ];
        let t0 = Instant::now();
        planner.plan(&leaving, &BTreeSet::new(), t0);
        // b changed its mind: a wants only its own share, already held.
        let mine = desired(&staying, "a", PARTITIONS);
        planner.plan(&staying, &mine, t0 + timeout / 2);
        let t1 = t0 + timeout;
        assert_eq!(
            planner.plan(&leaving, &mine, t1),
            Plan::default(),
            "the wait counted from the first time"
        );
        let plan = planner.plan(&leaving, &mine, t1 + timeout);
        assert_eq!(plan.acquire.len(), all.len() - mine.len());
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
