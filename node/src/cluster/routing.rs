//! Any node answers any query: from a local shard, by forwarding to the partition's owner,
//! or, when the owner is unknown or unreachable, from Cassandra, marked stale.
//!
//! A forwarded request carries the `x-tally-forwarded` header and is never forwarded
//! again, so routing cannot loop while gossip views differ. Its URL comes from
//! `entity_path`, with the id percent-encoded, so no id can change the path it asks. Every
//! call to another node (forwarded queries, the gathered top-N and cluster views) is
//! signed with the cluster secret (`auth::peer`), and a node honours the header only on a
//! signed call.
//! Outgoing HTTP runs on the node's main runtime, not on the actix worker that received
//! the request. It speaks the node's own scheme: with `[node.tls]`, HTTPS, checking the
//! owner's certificate against `node.tls.ca_file` and, with mutual TLS, presenting the
//! node's own.
//!
//! Not for: deciding ownership (see `ownership`).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Url;
use serde_json::{json, Value};
use tracing::warn;

use crate::auth::peer::PEER_AUTH;
use crate::cluster::membership::{rendezvous_owner, Member};
use crate::entity::{self, Player};
use crate::entity_path::entity_url;
use crate::kind::{ShardId, ShardKind};
use crate::partitioner::partition_for;
use crate::shard::{sort_top, ShardMsg, TopBy, TopEntry};
use crate::state::{Core, NodeState};
use crate::store::channel_log;
use crate::telemetry;

/// Header marking a request forwarded by another node.
pub const FORWARDED: &str = "x-tally-forwarded";

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

/// An answer: the HTTP status and the JSON body.
pub type Answer = (u16, Value);

/// The API address of the member that serves `shard`, if it is another node: the member
/// advertising it, else its rendezvous owner among serving members.
pub fn owner_api(core: &Core, shard: ShardId) -> Option<String> {
    let me = core.membership.node_id().to_string();
    let members = core.membership.members();
    let advertised = members
        .iter()
        .filter(|m| m.owned.contains(&shard) && m.node_id != me)
        .find_map(|m| m.api_addr.clone());
    if advertised.is_some() {
        return advertised;
    }
    let serving: Vec<&str> = members
        .iter()
        .filter(|m| m.is_serving())
        .map(|m| m.node_id.as_str())
        .collect();
    let owner = rendezvous_owner(serving.iter().copied(), shard)?;
    (owner != me)
        .then(|| {
            members
                .iter()
                .find(|m| m.node_id == owner)?
                .api_addr
                .clone()
        })
        .flatten()
}

/// GET `path`, a path and query of our own with no id in it, on the node at `addr`.
pub async fn get_remote(state: &NodeState, addr: &str, path: &str) -> Result<Answer, String> {
    let url = format!("{}://{addr}{path}", state.api_scheme());
    let url = Url::parse(&url).map_err(|e| format!("{url}: {e}"))?;
    get_url(state, url).await
}

/// `request` to `url` on another node, marked forwarded and signed with the cluster secret,
/// continuing the current trace.
pub fn signed(
    state: &NodeState,
    request: reqwest::RequestBuilder,
    url: &Url,
) -> reqwest::RequestBuilder {
    let mut request = request.header(FORWARDED, "1");
    if let Some(secret) = state.auth.peer() {
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        request = request.header(PEER_AUTH, secret.sign("GET", &path, crate::event::now_ms()));
    }
    // The owner's request span continues this one's trace.
    if let Some(tp) = telemetry::current_traceparent() {
        request = request.header(telemetry::TRACEPARENT, tp);
    }
    request
}

/// GET `url` on another node, signed, on the main runtime; returns status and JSON body.
async fn get_url(state: &NodeState, url: Url) -> Result<Answer, String> {
    let shown = url.to_string();
    let (status, _, body) = get_raw(state, url).await?;
    let body = serde_json::from_slice(&body).map_err(|e| format!("{shown}: {e}"))?;
    Ok((status, body))
}

/// An answer as another node sent it: status, headers and body.
pub type RawAnswer = (u16, reqwest::header::HeaderMap, Vec<u8>);

/// GET `url` on another node, signed, on the main runtime; the answer is passed on as
/// sent (a history answer can be megabytes: not parsed to be written again).
pub async fn get_raw(state: &NodeState, url: Url) -> Result<RawAnswer, String> {
    let request = signed(state, state.http.get(url.clone()), &url);
    state
        .runtime
        .spawn(async move {
            let r = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            Ok((status, headers, body.to_vec()))
        })
        .await
        .map_err(|e| e.to_string())?
}

/// A player or channel, wherever it lives.
pub async fn lookup(
    state: &NodeState,
    core: &Core,
    kind: ShardKind,
    id: &str,
    forwarded: bool,
) -> Result<Answer, RouteError> {
    let partition = partition_for(id, core.partitions(kind));
    let shard = (kind, partition);
    if let Some(actor) = core.shard(shard) {
        return ask_local(state, &actor, kind, id).await;
    }
    if !forwarded {
        if let Some(addr) = owner_api(core, shard) {
            // The id is encoded, so it can never change the path the owner is asked.
            state.metrics.add_forwarded(kind);
            let answer = match entity_url(state.api_scheme(), &addr, kind, id) {
                Ok(url) => get_url(state, url).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok((status, body)) if status == 200 || status == 404 => return Ok((status, body)),
                Ok((status, body)) => {
                    warn!(%addr, status, %body, "owner answered with an error; answering from cassandra")
                }
                Err(e) => warn!(%addr, error = %e, "owner unreachable; answering from cassandra"),
            }
        }
    }
    from_storage(state, core, kind, partition, id).await
}

async fn ask_local(
    state: &NodeState,
    actor: &ractor::ActorRef<ShardMsg>,
    kind: ShardKind,
    id: &str,
) -> Result<Answer, RouteError> {
    let name = kind.entity_name();
    let unavailable = |e: String| RouteError::Unavailable(format!("{name} {id}: {e}"));
    let answer = ractor::call_t!(actor, ShardMsg::Query, 10_000, id.to_string())
        .map_err(|e| unavailable(format!("shard did not answer: {e}")))?
        .map_err(|e| unavailable(e.to_string()))?;
    let Some((view, freshness)) = answer else {
        return Err(RouteError::NotFound(format!("{name} {id}: no events seen")));
    };
    Ok((
        200,
        json!({ name: view, "freshness": freshness, "stale": false, "served_by": state.cfg.node.id }),
    ))
}

/// The last checkpointed state, marked stale: used while the owner is unknown or down.
async fn from_storage(
    state: &NodeState,
    core: &Core,
    kind: ShardKind,
    partition: i32,
    id: &str,
) -> Result<Answer, RouteError> {
    let unavailable = |e: anyhow::Error| {
        RouteError::Unavailable(format!(
            "{} {id}: owner unavailable and cassandra failed: {e:#}",
            kind.entity_name()
        ))
    };
    let (key, view, offset) = match kind {
        ShardKind::Players => {
            let row = core.store.read_player(id).await.map_err(unavailable)?;
            let Some(row) = row else {
                return Err(RouteError::NotFound(format!("player {id}: no events seen")));
            };
            let p: Player = entity::decode(&row.state).map_err(unavailable)?;
            (
                "player",
                serde_json::to_value(p.view(id)),
                row.applied_offset,
            )
        }
        ShardKind::Channels => {
            let loaded = channel_log::load(&core.store, partition, id)
                .await
                .map_err(unavailable)?;
            let Some(loaded) = loaded else {
                return Err(RouteError::NotFound(format!(
                    "channel {id}: no events seen"
                )));
            };
            let watermark = core
                .store
                .read_progress(state.topic(kind), partition)
                .await
                .map_err(unavailable)?
                .map_or(0, |p| p.watermark_ms);
            let timeout = state.cfg.shard.viewer_timeout_secs as i64 * 1000;
            (
                "channel",
                serde_json::to_value(loaded.channel.view(id, watermark, timeout)),
                loaded.offset,
            )
        }
    };
    let view = view.map_err(|e| unavailable(e.into()))?;
    Ok((
        200,
        json!({
            key: view,
            "freshness": { "entity_offset": offset, "partition": partition, "partition_offset": null, "checkpoint_age_ms": null },
            "stale": true,
            "served_by": state.cfg.node.id,
        }),
    ))
}

/// A part of a top-N view: the entries and the next offset of each partition they reflect
/// (`channels/<partition>`).
#[derive(Debug, Default)]
pub struct TopPart {
    pub channels: Vec<TopEntry>,
    pub offsets: BTreeMap<String, i64>,
    /// Whether any part came from stored summaries (partitions nobody serves).
    pub stale: bool,
}

/// Top-N of the local channel shards.
pub async fn local_top(core: &Core, by: TopBy, limit: usize) -> TopPart {
    let mut part = TopPart::default();
    for shard in core.shards_of(ShardKind::Channels) {
        if let Ok(entries) = ractor::call_t!(shard, ShardMsg::Top, 10_000, by, limit) {
            part.channels.extend(entries);
        }
        if let Ok(stats) = ractor::call_t!(shard, ShardMsg::Stats, 10_000) {
            part.offsets.insert(
                format!("{}/{}", stats.kind.label(), stats.partition),
                stats.next_offset,
            );
        }
    }
    sort_top(&mut part.channels, by);
    part.channels.truncate(limit);
    part
}

/// Top-N over the whole cluster: every serving member's local top-N, merged; partitions
/// nobody serves right now come from their stored summaries (and make the answer stale).
pub async fn cluster_top(
    state: &NodeState,
    core: &Core,
    by: TopBy,
    by_name: &str,
    limit: usize,
) -> TopPart {
    let mut all = local_top(core, by, limit).await;
    let me = core.membership.node_id().to_string();
    let mut covered: BTreeSet<ShardId> = core.shard_ids();
    let others: Vec<Member> = core
        .membership
        .members()
        .into_iter()
        .filter(|m| m.node_id != me)
        .collect();
    let path = format!("/v1/channels/top?by={by_name}&limit={limit}&local=1");
    let answers = futures::future::join_all(others.iter().map(|m| {
        let path = path.clone();
        async move {
            let addr = m.api_addr.clone()?;
            get_remote(state, &addr, &path)
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|(_, b)| (m, b))
        }
    }))
    .await;
    for (member, body) in answers.into_iter().flatten() {
        if let Ok(entries) = serde_json::from_value::<Vec<TopEntry>>(body["channels"].clone()) {
            all.channels.extend(entries);
            covered.extend(member.owned.iter().copied());
            if let Ok(offsets) =
                serde_json::from_value::<BTreeMap<String, i64>>(body["offsets"].clone())
            {
                all.offsets.extend(offsets);
            }
        }
    }
    for p in 0..core.channel_partitions {
        if covered.contains(&(ShardKind::Channels, p)) {
            continue;
        }
        all.stale = true;
        match core.store.channel_summaries(p).await {
            Ok(summaries) => all
                .channels
                .extend(summaries.iter().map(TopEntry::from_summary)),
            Err(e) => {
                warn!(partition = p, error = %format!("{e:#}"), "top-N: cannot read stored summaries")
            }
        }
    }
    sort_top(&mut all.channels, by);
    all.channels.truncate(limit);
    all
}
