//! An in-process cluster for ownership tests: real [`Membership`]s gossiping over
//! chitchat's `ChannelTransport`, whose links can be cut and restored, each driven by the
//! real controller ([`ownership::control`]) over shards that are only recorded. A whole
//! handover, failover or partition runs in a few seconds, without Kafka or Cassandra.
//!
//! Every wait polls for a condition until a deadline far longer than it normally takes,
//! so a loaded machine makes a test slower, never red.
//!
//! Not for: what a shard does with its partition, or real processes being killed and
//! paused (see `node/tests/cluster.rs`).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::membership::{rendezvous_owner, Membership};
use crate::cluster::ownership::{self, LocalShards, Rules};
use crate::config::ClusterConfig;
use crate::kind::{ShardId, ShardKind};

/// Partition counts of the player and channel topics.
const PARTITIONS: (i32, i32) = (8, 4);
const GOSSIP_INTERVAL_MS: u64 = 25;
/// Longer than any wait in these tests: a handover or takeover that happens is always due
/// to a release or to the failure detector, never to this timeout.
const HANDOVER_TIMEOUT_MS: u64 = 60_000;
/// A convergence not reached by then fails the test; it normally takes a second or two.
const DEADLINE: Duration = Duration::from_secs(30);

/// How quickly a silent peer counts as dead.
#[derive(Debug, Clone, Copy)]
enum Detector {
    /// About 10 s of silence: for tests where nobody dies, so a gossip thread starved by a
    /// loaded machine never looks like a death.
    Patient,
    /// About 1 s of silence.
    Quick,
}

impl Detector {
    /// phi is the silence divided by the mean heartbeat interval (about one gossip round).
    fn phi_threshold(self) -> f64 {
        match self {
            Detector::Patient => 400.0,
            Detector::Quick => 40.0,
        }
    }
}

fn all_shards() -> impl Iterator<Item = ShardId> {
    (0..PARTITIONS.0)
        .map(|p| (ShardKind::Players, p))
        .chain((0..PARTITIONS.1).map(|p| (ShardKind::Channels, p)))
}

/// Shards that are only a set; what the controller did to them is logged with the time.
#[derive(Default)]
struct RecordedShards {
    held: Mutex<BTreeSet<ShardId>>,
    /// Every acquisition with its note.
    acquired: Mutex<Vec<(Instant, ShardId, String)>>,
    released: Mutex<Vec<(Instant, ShardId)>>,
    /// How long a release takes: the final checkpoint a peer has to wait for.
    checkpoint: Duration,
}

impl RecordedShards {
    fn acquired_since(&self, t: Instant) -> Vec<(Instant, ShardId, String)> {
        let acquired = self.acquired.lock().unwrap();
        acquired.iter().filter(|a| a.0 >= t).cloned().collect()
    }

    fn released_since(&self, t: Instant) -> Vec<ShardId> {
        let released = self.released.lock().unwrap();
        released.iter().filter(|r| r.0 >= t).map(|r| r.1).collect()
    }
}

impl LocalShards for RecordedShards {
    fn held(&self) -> BTreeSet<ShardId> {
        self.held.lock().unwrap().clone()
    }

    fn acquire(&self, shard: ShardId, note: String) -> impl Future<Output = ()> + Send {
        self.held.lock().unwrap().insert(shard);
        self.acquired
            .lock()
            .unwrap()
            .push((Instant::now(), shard, note));
        std::future::ready(())
    }

    async fn release(&self, shard: ShardId, _why: &'static str) {
        tokio::time::sleep(self.checkpoint).await;
        self.held.lock().unwrap().remove(&shard);
        self.released.lock().unwrap().push((Instant::now(), shard));
    }
}

struct SandboxNode {
    id: String,
    addr: SocketAddr,
    membership: Arc<Membership>,
    shards: Arc<RecordedShards>,
    /// The running controller; `None` once stopped.
    controller: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Nodes `n1`, `n2`, ... gossiping over one in-memory transport, each with its controller.
struct Sandbox {
    transport: ChannelTransport,
    nodes: Vec<SandboxNode>,
}

impl Sandbox {
    /// Starts `n` nodes that all seed each other; a release takes `checkpoint`.
    async fn start(n: usize, detector: Detector, checkpoint: Duration) -> Sandbox {
        let transport = ChannelTransport::default();
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_001 + i as u16)))
            .collect();
        let mut nodes = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let cfg = ClusterConfig {
                cluster_id: "sandbox".into(),
                gossip_addr: addr,
                advertise_gossip_addr: None,
                seeds: addrs.iter().map(|a| a.to_string()).collect(),
                gossip_interval_ms: GOSSIP_INTERVAL_MS,
                phi_threshold: detector.phi_threshold(),
                handover_timeout_ms: HANDOVER_TIMEOUT_MS,
            };
            let id = format!("n{}", i + 1);
            let membership = Membership::start(&cfg, &id, &format!("{id}:80"), transport.clone())
                .await
                .expect("start gossip over the channel transport");
            let shards = Arc::new(RecordedShards {
                checkpoint,
                ..RecordedShards::default()
            });
            let mut node = SandboxNode {
                id,
                addr,
                membership: Arc::new(membership),
                shards,
                controller: None,
            };
            node.start_controller(Rules::new(&cfg, PARTITIONS));
            nodes.push(node);
        }
        Sandbox { transport, nodes }
    }

    fn index(&self, node_id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node_id)
    }

    /// Why the cluster has not converged yet. Converged: every partition is held by
    /// exactly one node of `up`, its rendezvous owner among `serving`; every node of `up`
    /// advertises what it holds; and every node of `up` sees exactly the nodes of `up`,
    /// with their status and what they hold.
    async fn not_converged(&self, serving: &[usize], up: &[usize]) -> Option<String> {
        let candidates: Vec<&str> = serving.iter().map(|&i| self.nodes[i].id.as_str()).collect();
        for shard in all_shards() {
            let owner = rendezvous_owner(candidates.iter().copied(), shard);
            let holders: Vec<&str> = up
                .iter()
                .map(|&i| &self.nodes[i])
                .filter(|n| n.shards.held().contains(&shard))
                .map(|n| n.id.as_str())
                .collect();
            if holders != Vec::from_iter(owner) {
                return Some(format!(
                    "{shard:?} is held by {holders:?}, its owner is {owner:?}"
                ));
            }
        }
        let mut up_ids: Vec<&str> = up.iter().map(|&i| self.nodes[i].id.as_str()).collect();
        up_ids.sort_unstable();
        for &i in up {
            let node = &self.nodes[i];
            let (held, advertised) = (node.shards.held(), node.membership.advertised_owned().await);
            if held != advertised {
                return Some(format!(
                    "{} holds {held:?} but advertises {advertised:?}",
                    node.id
                ));
            }
            let view = node.membership.members();
            let mut seen: Vec<&str> = view.iter().map(|m| m.node_id.as_str()).collect();
            seen.sort_unstable();
            if seen != up_ids {
                return Some(format!("{} sees {seen:?}, not {up_ids:?}", node.id));
            }
            for m in &view {
                let j = self.index(&m.node_id).expect("members are sandbox nodes");
                if m.owned != self.nodes[j].shards.held() || m.is_serving() != serving.contains(&j)
                {
                    return Some(format!("{} sees {m:?}, out of date", node.id));
                }
            }
        }
        None
    }

    /// Waits until the cluster has converged (see [`Sandbox::not_converged`]); returns how
    /// long that took.
    async fn wait_converged(&self, serving: &[usize], up: &[usize]) -> Duration {
        let started = Instant::now();
        loop {
            let Some(why) = self.not_converged(serving, up).await else {
                return started.elapsed();
            };
            assert!(
                started.elapsed() < DEADLINE,
                "not converged after {DEADLINE:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop_controller(&mut self, i: usize) {
        if let Some((stop, task)) = self.nodes[i].controller.take() {
            stop.cancel();
            task.await.expect("controller task");
        }
    }

    /// A graceful leave, as a node does on SIGTERM.
    async fn leave(&mut self, i: usize) {
        self.stop_controller(i).await;
        let node = &self.nodes[i];
        ownership::leave(&*node.shards, &node.membership).await;
    }

    /// A death: the controller and gossip stop at once, nothing is released.
    async fn kill(&mut self, i: usize) {
        self.stop_controller(i).await;
        self.nodes[i].membership.shutdown().await;
    }

    /// Cuts every gossip link of node `i`; its controller keeps running.
    async fn cut(&self, i: usize) {
        for other in self.nodes.iter().filter(|n| n.addr != self.nodes[i].addr) {
            self.transport
                .remove_link(self.nodes[i].addr, other.addr)
                .await;
        }
    }

    async fn restore(&self, i: usize) {
        for other in self.nodes.iter().filter(|n| n.addr != self.nodes[i].addr) {
            self.transport
                .add_link(self.nodes[i].addr, other.addr)
                .await;
        }
    }
}

impl SandboxNode {
    fn start_controller(&mut self, rules: Rules) {
        let stop = CancellationToken::new();
        let (shards, membership, token) =
            (self.shards.clone(), self.membership.clone(), stop.clone());
        let task = tokio::spawn(async move {
            ownership::control(&*shards, &membership, &rules, token).await;
        });
        self.controller = Some((stop, task));
    }
}

impl Drop for Sandbox {
    /// Gossip runs on threads of its own: stop them, or they outlive the test.
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some((stop, _)) = &node.controller {
                stop.cancel();
            }
            futures::executor::block_on(node.membership.shutdown());
        }
    }
}

/// Samples, until stopped, which partitions the nodes hold and advertise; returns the
/// number of samples and every partition that two nodes held or advertised at one moment.
///
/// The nodes are read forwards and then backwards, so for two nodes x before y the reads
/// go x, y, y, x. A node that holds a partition at both of its reads held it in between
/// (during this test nobody takes back a partition it gave up, nor gives up one it
/// took), so if y holds it at either of its reads, both held it at that moment. Reading
/// one node after another can therefore never report an overlap that did not happen.
fn watch_for_double_owners(
    nodes: Vec<(String, Arc<Membership>, Arc<RecordedShards>)>,
    stop: CancellationToken,
) -> JoinHandle<(usize, BTreeSet<String>)> {
    tokio::spawn(async move {
        let (mut samples, mut overlaps) = (0, BTreeSet::new());
        while !stop.is_cancelled() {
            let mut forward = Vec::new();
            for (_, membership, shards) in &nodes {
                forward.push((shards.held(), membership.advertised_owned().await));
            }
            let mut backward = Vec::new();
            for (_, membership, shards) in nodes.iter().rev() {
                backward.push((shards.held(), membership.advertised_owned().await));
            }
            backward.reverse();
            for x in 0..nodes.len() {
                for y in x + 1..nodes.len() {
                    let held = |i: usize| (&forward[i].0, &backward[i].0);
                    let advertised = |i: usize| (&forward[i].1, &backward[i].1);
                    for (what, (x1, x2), (y1, y2)) in [
                        ("held", held(x), held(y)),
                        ("advertised", advertised(x), advertised(y)),
                    ] {
                        for shard in x1.intersection(x2) {
                            if y1.contains(shard) || y2.contains(shard) {
                                overlaps.insert(format!(
                                    "{shard:?} {what} by {} and {} at once",
                                    nodes[x].0, nodes[y].0
                                ));
                            }
                        }
                    }
                }
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (samples, overlaps)
    })
}

#[tokio::test]
async fn three_nodes_converge_to_one_rendezvous_owner_per_partition() {
    let sandbox = Sandbox::start(3, Detector::Patient, Duration::ZERO).await;
    let took = sandbox.wait_converged(&[0, 1, 2], &[0, 1, 2]).await;
    println!("converged in {took:?}");
    for node in &sandbox.nodes {
        let held = node.shards.held();
        assert!(!held.is_empty(), "{} owns nothing", node.id);
    }
}

#[tokio::test]
async fn a_leaving_node_hands_its_partitions_over_only_after_releasing_them() {
    let checkpoint = Duration::from_millis(300);
    let mut sandbox = Sandbox::start(3, Detector::Patient, checkpoint).await;
    sandbox.wait_converged(&[0, 1, 2], &[0, 1, 2]).await;
    let leaving: BTreeSet<ShardId> = sandbox.nodes[0].shards.held();
    let stop = CancellationToken::new();
    let watcher = watch_for_double_owners(
        sandbox
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.membership.clone(), n.shards.clone()))
            .collect(),
        stop.clone(),
    );
    let left_at = Instant::now();
    sandbox.leave(0).await;
    let last_release = sandbox.nodes[0]
        .shards
        .released
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0)
        .max()
        .expect("the leaving node released its partitions");
    let took = sandbox.wait_converged(&[1, 2], &[0, 1, 2]).await;
    println!("handover done {took:?} after the leave");
    stop.cancel();
    let (samples, overlaps) = watcher.await.unwrap();

    assert!(
        samples >= 10,
        "only {samples} samples: the watch saw too little"
    );
    assert_eq!(overlaps, BTreeSet::new(), "two owners at once");
    let mut taken = BTreeSet::new();
    for node in &sandbox.nodes[1..] {
        assert_eq!(
            node.shards.released_since(left_at),
            Vec::new(),
            "{} gave up a partition that was not the leaving node's",
            node.id
        );
        for (at, shard, note) in node.shards.acquired_since(left_at) {
            assert!(
                at >= last_release,
                "{} took {shard:?} before the leaving node had released everything",
                node.id
            );
            assert_eq!(
                note, "",
                "{} took {shard:?} by the handover timeout",
                node.id
            );
            taken.insert(shard);
        }
    }
    assert_eq!(
        taken, leaving,
        "exactly the leaving node's partitions moved"
    );
}

#[tokio::test]
async fn the_partitions_of_a_dead_node_are_taken_once_the_failure_detector_drops_it() {
    let mut sandbox = Sandbox::start(3, Detector::Quick, Duration::ZERO).await;
    sandbox.wait_converged(&[0, 1, 2], &[0, 1, 2]).await;
    let dead: BTreeSet<ShardId> = sandbox.nodes[0].shards.held();
    let killed_at = Instant::now();
    sandbox.kill(0).await;
    let took = sandbox.wait_converged(&[1, 2], &[1, 2]).await;
    println!("failover done {took:?} after the death");

    let mut taken = BTreeSet::new();
    for node in &sandbox.nodes[1..] {
        for (_, shard, note) in node.shards.acquired_since(killed_at) {
            // A dead node advertises nothing to the living: no handover wait applies.
            assert_eq!(
                note, "",
                "{} took {shard:?} by the handover timeout",
                node.id
            );
            taken.insert(shard);
        }
    }
    assert!(
        dead.is_subset(&taken),
        "survivors took {taken:?}, the dead node owned {dead:?}"
    );
}

#[tokio::test]
async fn a_node_cut_off_for_a_while_gives_back_what_it_took_and_one_owner_remains() {
    let sandbox = Sandbox::start(3, Detector::Quick, Duration::from_millis(20)).await;
    sandbox.wait_converged(&[0, 1, 2], &[0, 1, 2]).await;

    sandbox.cut(0).await;
    // The others take its partitions over; it believes it is alone and takes every
    // partition (two owners at once are safe: see the `ownership` module).
    sandbox.wait_converged(&[1, 2], &[1, 2]).await;
    sandbox.wait_converged(&[0], &[0]).await;

    sandbox.restore(0).await;
    let took = sandbox.wait_converged(&[0, 1, 2], &[0, 1, 2]).await;
    println!("one owner per partition again {took:?} after the links came back");
    // And it stays so: nobody is left holding, or takes back, a partition late.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_millis(GOSSIP_INTERVAL_MS * 20) {
        if let Some(why) = sandbox.not_converged(&[0, 1, 2], &[0, 1, 2]).await {
            panic!("converged, then no longer: {why}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
