//! Gossip membership (chitchat: scuttlebutt gossip with phi-accrual failure detection).
//!
//! Each node advertises its API address, its status (`serving` or `leaving`) and the
//! partitions it currently owns; its chitchat generation is its start time, so every start
//! is a new generation. Nodes of another cluster id are ignored by chitchat itself.
//!
//! Not for: deciding ownership (see `ownership`) or answering queries (see `api`).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::transport::{Transport, UdpTransport};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::kind::{MemberStatus, ShardId, ShardKind};

const KEY_API: &str = "api";
const KEY_STATUS: &str = "status";
const KEY_OWNED: &str = "owned";

/// A live member as gossip describes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    pub gossip_addr: String,
    pub api_addr: Option<String>,
    /// `serving`, or `leaving` during a graceful shutdown.
    pub status: MemberStatus,
    /// Partitions the member currently runs shards for.
    #[serde(serialize_with = "serialize_owned")]
    pub owned: BTreeSet<ShardId>,
}

fn serialize_owned<S: serde::Serializer>(
    owned: &BTreeSet<ShardId>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&encode_owned(owned))
}

/// `p:0,3,5 c:1,2`: the compact form gossiped under the `owned` key.
pub fn encode_owned(owned: &BTreeSet<ShardId>) -> String {
    let list = |kind: ShardKind| {
        owned
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    ShardKind::ALL
        .map(|kind| format!("{}:{}", kind.tag(), list(kind)))
        .join(" ")
}

pub fn decode_owned(s: &str) -> BTreeSet<ShardId> {
    let mut out = BTreeSet::new();
    for part in s.split_whitespace() {
        let Some((kind, list)) = part
            .split_once(':')
            .and_then(|(tag, list)| Some((ShardKind::from_tag(tag)?, list)))
        else {
            continue;
        };
        out.extend(
            list.split(',')
                .filter_map(|p| p.parse().ok())
                .map(|p| (kind, p)),
        );
    }
    out
}

impl Member {
    pub fn is_serving(&self) -> bool {
        self.status == MemberStatus::Serving
    }
}

/// This node's membership.
pub struct Membership {
    handle: ChitchatHandle,
    self_id: ChitchatId,
    watcher: watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>>,
}

impl Membership {
    /// Starts gossiping over UDP on `cluster.gossip_addr`, as a node does.
    pub async fn start_udp(
        cfg: &ClusterConfig,
        node_id: &str,
        api_addr: &str,
    ) -> anyhow::Result<Membership> {
        Membership::start(cfg, node_id, api_addr, UdpTransport).await
    }

    /// Starts gossiping over `transport`; `api_addr` is the API address peers should use.
    /// Tests hand in chitchat's `ChannelTransport`, so a whole cluster gossips in one
    /// process and links can be cut.
    pub async fn start(
        cfg: &ClusterConfig,
        node_id: &str,
        api_addr: &str,
        transport: impl Transport + 'static,
    ) -> anyhow::Result<Membership> {
        let generation = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let advertised = match &cfg.advertise_gossip_addr {
            None => cfg.gossip_addr,
            Some(a) => tokio::net::lookup_host(a.as_str())
                .await
                .with_context(|| format!("resolve cluster.advertise_gossip_addr {a}"))?
                .next()
                .with_context(|| {
                    format!("cluster.advertise_gossip_addr {a} resolves to nothing")
                })?,
        };
        let self_id = ChitchatId::new(node_id.to_string(), generation, advertised);
        let config = chitchat_config(cfg, self_id.clone());
        let initial = vec![
            (KEY_API.to_string(), api_addr.to_string()),
            (
                KEY_STATUS.to_string(),
                MemberStatus::Serving.as_str().to_string(),
            ),
            (KEY_OWNED.to_string(), encode_owned(&BTreeSet::new())),
        ];
        let rx = spawn_gossip_thread(config, initial, transport)?;
        let handle = rx
            .await
            .context("gossip thread ended")?
            .with_context(|| format!("start gossip on {}", cfg.gossip_addr))?;
        let watcher = handle.chitchat().lock().await.live_nodes_watcher();
        Ok(Membership {
            handle,
            self_id,
            watcher,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.self_id.node_id
    }

    /// Live members, this node included.
    pub fn members(&self) -> Vec<Member> {
        self.watcher
            .borrow()
            .iter()
            .map(|(id, state)| Member {
                node_id: id.node_id.to_string(),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr.to_string(),
                api_addr: state.get(KEY_API).map(str::to_string),
                status: state
                    .get(KEY_STATUS)
                    .map_or(MemberStatus::Serving, MemberStatus::parse),
                owned: state.get(KEY_OWNED).map(decode_owned).unwrap_or_default(),
            })
            .collect()
    }

    /// Members the failure detector holds dead and has not forgotten yet.
    pub async fn suspected(&self) -> usize {
        self.handle.chitchat().lock().await.dead_nodes().count()
    }

    /// A receiver that changes whenever the set of live members or their state changes.
    pub fn watch(
        &self,
    ) -> watch::Receiver<std::collections::BTreeMap<ChitchatId, chitchat::NodeState>> {
        self.watcher.clone()
    }

    pub async fn advertise_owned(&self, owned: &BTreeSet<ShardId>) {
        let value = encode_owned(owned);
        self.handle
            .with_chitchat(|c| c.self_node_state().set(KEY_OWNED, &value))
            .await;
    }

    /// What this node advertises as owned at this moment. [`Membership::members`] shows
    /// this node's own change only after the next gossip round; tests that look for two
    /// nodes advertising one partition at once need the moment itself.
    #[cfg(test)]
    pub(crate) async fn advertised_owned(&self) -> BTreeSet<ShardId> {
        self.handle
            .with_chitchat(|c| {
                c.self_node_state()
                    .get(KEY_OWNED)
                    .map(decode_owned)
                    .unwrap_or_default()
            })
            .await
    }

    pub async fn set_status(&self, status: MemberStatus) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(KEY_STATUS, status.as_str()))
            .await;
    }

    /// Stops gossiping: the server ends, and with it the gossip thread. Peers then see
    /// this node's heartbeat stop.
    pub async fn shutdown(&self) {
        if let Err(e) = self.handle.initiate_shutdown() {
            tracing::debug!(error = %e, "gossip already stopped");
        }
    }
}

/// chitchat's configuration for this node.
fn chitchat_config(cfg: &ClusterConfig, self_id: ChitchatId) -> ChitchatConfig {
    let interval = Duration::from_millis(cfg.gossip_interval_ms);
    ChitchatConfig {
        chitchat_id: self_id,
        cluster_id: cfg.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: cfg.gossip_addr,
        seed_nodes: cfg.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: cfg.phi_threshold,
            initial_interval: interval,
            // Long gaps (a loaded peer) still count, so the detector adapts to them.
            max_interval: interval * 100,
            dead_node_grace_period: Duration::from_secs(60),
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    }
}

/// The answer of the gossip thread: the started server's handle, or why it did not start.
type Started = tokio::sync::oneshot::Receiver<anyhow::Result<ChitchatHandle>>;

/// Starts chitchat on a thread and a runtime of its own: heartbeats must keep flowing
/// while the shards keep the main runtime busy, or a loaded node looks dead to its peers.
/// The thread ends when the gossip server does.
fn spawn_gossip_thread(
    config: ChitchatConfig,
    initial: Vec<(String, String)>,
    transport: impl Transport + 'static,
) -> anyhow::Result<Started> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gossip".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("build gossip runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match spawn_chitchat(config, initial, &transport).await {
                    Ok(handle) => {
                        let terminated = handle.termination_watcher();
                        let _ = tx.send(Ok(handle));
                        let _ = terminated.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .context("spawn gossip thread")?;
    Ok(rx)
}

/// Rendezvous (highest random weight) owner of a shard among `candidates` node ids.
pub fn rendezvous_owner<'a>(
    candidates: impl IntoIterator<Item = &'a str>,
    shard: ShardId,
) -> Option<&'a str> {
    let kind = shard.0.tag();
    candidates
        .into_iter()
        .map(|node| {
            let weight =
                crate::partitioner::murmur2(format!("{node}/{kind}/{}", shard.1).as_bytes()) as u32;
            (weight, node)
        })
        .max()
        .map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_round_trips() {
        let owned: BTreeSet<ShardId> = [
            (ShardKind::Players, 0),
            (ShardKind::Players, 7),
            (ShardKind::Channels, 3),
        ]
        .into();
        assert_eq!(encode_owned(&owned), "p:0,7 c:3");
        assert_eq!(decode_owned(&encode_owned(&owned)), owned);
        assert!(decode_owned("p: c:").is_empty());
    }

    #[test]
    fn rendezvous_moves_only_the_partitions_of_a_leaving_node() {
        let nodes = ["n1", "n2", "n3"];
        let owner = |live: &[&str], p| {
            rendezvous_owner(live.iter().copied(), (ShardKind::Players, p))
                .unwrap()
                .to_string()
        };
        let before: Vec<String> = (0..64).map(|p| owner(&nodes, p)).collect();
        for n in nodes {
            assert!(
                before.iter().filter(|o| *o == n).count() >= 10,
                "{n} owns too few: {before:?}"
            );
        }
        let after: Vec<String> = (0..64).map(|p| owner(&["n1", "n3"], p)).collect();
        for p in 0..64 {
            if before[p] != "n2" {
                assert_eq!(
                    before[p], after[p],
                    "partition {p} moved although its owner stayed"
                );
            }
        }
    }
}
