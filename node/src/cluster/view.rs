//! The cluster view of `GET /v1/cluster` and of the `cluster` subscription: every member,
//! who owns each partition, and each node's own view of its shards.
//!
//! Not for: deciding ownership (see `ownership`).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::cluster::routing;
use crate::state::{Core, NodeState};

/// This node's part of the cluster view: its shards with lag and checkpoint age, and its
/// recent ownership changes.
pub async fn local_view(state: &Arc<NodeState>) -> Value {
    let shards = state.shard_stats().await;
    // A broker round trip per partition: kept off the async workers.
    let st = state.clone();
    let lag: Vec<(String, i32, i64)> = tokio::task::spawn_blocking(move || {
        st.core.get().map(|c| c.source.lag()).unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let shards: Vec<Value> = shards
        .into_iter()
        .map(|s| {
            let topic = state.topic(s.kind);
            let lag = lag
                .iter()
                .find(|(t, p, _)| t == topic && *p == s.partition)
                .map(|l| l.2);
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            v["lag"] = json!(lag);
            v
        })
        .collect();
    json!({
        "node_id": state.cfg.node.id,
        "ready": state.readiness().ready,
        "shards": shards,
        "recent_changes": state.recent_changes(),
    })
}

/// The whole view: the members, the owner of each partition, and every member's local view
/// (or the error asking it gave).
pub async fn cluster_view(state: &Arc<NodeState>, core: &Core) -> Value {
    let local = local_view(state).await;
    let members = core.membership.members();
    let mut nodes = vec![local];
    let others = members
        .iter()
        .filter(|m| m.node_id != state.cfg.node.id)
        .filter_map(|m| Some((m, m.api_addr.clone()?)));
    let answers = futures::future::join_all(others.map(|(m, addr)| async move {
        match routing::get_remote(state, &addr, "/v1/cluster?local=1").await {
            Ok((200, body)) => body,
            Ok((status, _)) => json!({ "node_id": m.node_id, "error": format!("status {status}") }),
            Err(e) => json!({ "node_id": m.node_id, "error": e }),
        }
    }))
    .await;
    nodes.extend(answers);
    let mut partitions = serde_json::Map::new();
    for m in &members {
        for (kind, p) in &m.owned {
            let key = format!("{}/{p}", kind.label());
            partitions.insert(key, json!(m.node_id));
        }
    }
    json!({
        "members": members,
        "partitions": partitions,
        "nodes": nodes,
        // Kept for single-node tools: the shards of the node that answered.
        "shards": nodes[0]["shards"],
    })
}

/// The next offset of every shard in a cluster view, by `kind/partition`.
pub fn offsets(view: &Value) -> std::collections::BTreeMap<String, i64> {
    let mut all = std::collections::BTreeMap::new();
    let nodes = view["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for shard in nodes
        .iter()
        .filter_map(|n| n["shards"].as_array())
        .flatten()
    {
        if let (Some(kind), Some(p), Some(o)) = (
            shard["kind"].as_str(),
            shard["partition"].as_i64(),
            shard["next_offset"].as_i64(),
        ) {
            all.insert(format!("{kind}/{p}"), o);
        }
    }
    all
}
