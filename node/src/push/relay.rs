//! The task that fills one feed, for as long as anyone reads it.
//!
//! - A player or channel: from the local shard's watch when this node owns the partition,
//!   else from the owner's stream of frames (`GET /v1/stream?player=...`, marked forwarded
//!   and signed, which the owner serves from its own shard only). When the source ends
//!   (the shard stopped, the owner died or moved) the relay finds the owner again; the
//!   first frame from the new source is marked as a gap, and frames behind the last one
//!   are held back until the new owner has caught up.
//! - The top-N: the cluster-wide top-N, gathered every push interval.
//! - The cluster view: gathered every push interval, at most once a second.
//!
//! Not for: the shard's side of a watch (see `shard::watch`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::debug;

use super::frame::{next_frame, EntityState, Offsets, NULL};
use super::protocol::{Target, TopByName};
use super::{FeedKey, FeedSender, Hub};
use crate::cluster::{routing, view};
use crate::kind::ShardKind;
use crate::partitioner::partition_for;
use crate::shard::{ShardMsg, StateFeed};
use crate::state::NodeState;

/// How long a relay waits before looking for a source again.
const RETRY: Duration = Duration::from_millis(200);
/// The most a cluster feed is gathered.
const CLUSTER_EVERY: Duration = Duration::from_secs(1);

/// Fills the feed of `key` until nobody reads it (or, for a local-only feed, until this
/// node stops owning the entity).
pub(super) async fn run(state: Arc<NodeState>, hub: Arc<Hub>, key: FeedKey, tx: FeedSender) {
    let name = key.target.name();
    let interval = hub.cfg().interval();
    loop {
        match &key.target {
            Target::Player(id) => {
                let kind = ShardKind::Players;
                entity(&state, &hub, &tx, kind, id, &name, key.local_only).await
            }
            Target::Channel(id) => {
                let kind = ShardKind::Channels;
                entity(&state, &hub, &tx, kind, id, &name, key.local_only).await
            }
            Target::Top { by, limit } => {
                let (by, limit) = (*by, *limit);
                gathered(&state, &tx, &name, interval, |s| top(s, by, limit)).await
            }
            Target::Cluster => {
                let every = interval.max(CLUSTER_EVERY);
                gathered(&state, &tx, &name, every, cluster).await
            }
        }
        // A local-only feed ends with its shard; any other ends when nobody reads it.
        if hub.release(&key, &tx, key.local_only) {
            debug!(subscription = %name, "feed ended");
            return;
        }
    }
}

/// Publishes `data` with `offsets` on `tx` if it is new and not behind; returns whether
/// it did.
fn publish(
    tx: &FeedSender,
    name: &str,
    data: &str,
    offsets: Offsets,
    gap: &mut bool,
    by: &str,
) -> bool {
    let last = tx.borrow().clone();
    let Some(frame) = next_frame(last.as_deref(), name, data, offsets, *gap, by.to_string()) else {
        return false;
    };
    *gap = false;
    tx.send_replace(Some(frame));
    true
}

fn entity_offsets(s: &EntityState) -> Offsets {
    Offsets::Entity {
        offset: s.offset,
        partition: s.partition,
        partition_offset: s.partition_offset,
    }
}

/// One entity's feed: returns when nobody reads it (or a local-only source ended).
async fn entity(
    state: &Arc<NodeState>,
    hub: &Hub,
    tx: &FeedSender,
    kind: ShardKind,
    id: &str,
    name: &str,
    local_only: bool,
) {
    let mut gap = false;
    while tx.receiver_count() > 0 {
        let Some(core) = state.core.get() else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let shard = (kind, partition_for(id, core.partitions(kind)));
        // The call and the remote stream are boxed: a feed's task is held for as long as
        // anyone follows it, and is only as big as the state it waits in most (the local
        // watch), not as the largest (an HTTP request in flight).
        if let Some(actor) = core.shard(shard) {
            let watch =
                Box::pin(
                    async move { ractor::call_t!(actor, ShardMsg::Watch, 10_000, id.to_string()) },
                );
            if let Ok(Ok(feed)) = watch.await {
                follow_local(state, hub, tx, name, feed, &mut gap).await;
            }
        } else if local_only {
            return;
        } else if let Some(addr) = routing::owner_api(core, shard) {
            Box::pin(follow_remote(state, tx, kind, id, name, &addr, &mut gap)).await;
        }
        if local_only {
            return;
        }
        // The source is gone: what comes next, from whichever owner, follows a gap.
        gap |= tx.borrow().is_some();
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Relays the local shard's states until the shard stops or nobody reads the feed.
async fn follow_local(
    state: &NodeState,
    hub: &Hub,
    tx: &FeedSender,
    name: &str,
    mut feed: StateFeed,
    gap: &mut bool,
) {
    let me = state.cfg.node.id.as_str();
    loop {
        let s = feed.borrow_and_update().clone();
        let data = s.data.as_deref().unwrap_or(NULL);
        if publish(tx, name, data, entity_offsets(&s), gap, me) {
            if let Some(at) = s.published {
                hub.metrics().observe_shard_to_frame(at.elapsed());
            }
        }
        tokio::select! {
            changed = feed.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// The URL of the owner's stream of `id`: the query form, good for every id.
pub fn stream_url(scheme: &str, addr: &str, kind: ShardKind, id: &str) -> Result<Url, String> {
    let mut url =
        Url::parse(&format!("{scheme}://{addr}/v1/stream")).map_err(|e| format!("{addr}: {e}"))?;
    url.query_pairs_mut().append_pair(kind.entity_name(), id);
    Ok(url)
}

/// Relays the owner's frames until its stream ends, the owner changes, or nobody reads.
async fn follow_remote(
    state: &NodeState,
    tx: &FeedSender,
    kind: ShardKind,
    id: &str,
    name: &str,
    addr: &str,
    gap: &mut bool,
) {
    let Ok(url) = stream_url(state.api_scheme(), addr, kind, id) else {
        return;
    };
    let request = routing::signed(state, state.stream_http.get(url.clone()), &url);
    let response = match request.send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            debug!(%url, status = r.status().as_u16(), "owner refused the stream");
            return;
        }
        Err(e) => {
            debug!(%url, error = %e, "owner's stream unreachable");
            return;
        }
    };
    let Some(core) = state.core.get() else { return };
    let shard = (kind, partition_for(id, core.partitions(kind)));
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            chunk = body.next() => {
                let Some(Ok(chunk)) = chunk else { return };
                pending.extend_from_slice(&chunk);
                while let Some(event) = take_event(&mut pending) {
                    if let Some((s, by)) = parse_event(&event) {
                        let data = s.data.as_deref().unwrap_or(NULL);
                        publish(tx, name, data, entity_offsets(&s), gap, &by);
                    }
                }
            }
            _ = check.tick() => {
                // Ownership moved (here, or to another node): look again.
                let owner = routing::owner_api(core, shard);
                if core.shard(shard).is_some() || owner.as_deref() != Some(addr) {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// Takes one complete event (up to a blank line) off the front of `pending`.
fn take_event(pending: &mut Vec<u8>) -> Option<String> {
    let end = pending.windows(2).position(|w| w == b"\n\n")?;
    let event: Vec<u8> = pending.drain(..end + 2).collect();
    Some(String::from_utf8_lossy(&event).into_owned())
}

/// The fields of an owner's frame a relay reads; `data` stays JSON text.
#[derive(Deserialize)]
struct OwnerFrame<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    offset: i64,
    partition: i32,
    partition_offset: i64,
    served_by: String,
}

/// The entity state and the serving node of one event of an owner's stream (None for
/// comments and events that are not frames).
fn parse_event(event: &str) -> Option<(EntityState, String)> {
    let data: String = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    let frame: OwnerFrame = serde_json::from_str(&data).ok()?;
    let state = EntityState {
        data: frame.data.map(|d| Arc::from(d.get())),
        offset: frame.offset,
        partition: frame.partition,
        partition_offset: frame.partition_offset,
        published: None,
    };
    Some((state, frame.served_by))
}

/// A view gathered every `every` (the cluster-wide top-N, the cluster view) until nobody
/// reads the feed: `gather` answers the view and the partition offsets it reflects.
async fn gathered<F, Fut>(
    state: &Arc<NodeState>,
    tx: &FeedSender,
    name: &str,
    every: Duration,
    gather: F,
) where
    F: Fn(Arc<NodeState>) -> Fut,
    Fut: std::future::Future<Output = Option<(Value, Offsets)>>,
{
    let mut every = tokio::time::interval(every);
    let mut gap = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = tx.closed() => return,
        }
        // Boxed, so the feed's task between gatherings is small (see `entity`).
        if let Some((data, offsets)) = Box::pin(gather(state.clone())).await {
            // A view of plain maps and numbers: serializing it cannot fail.
            let data = serde_json::to_string(&data).unwrap_or_default();
            publish(tx, name, &data, offsets, &mut gap, &state.cfg.node.id);
        }
    }
}

/// The cluster-wide top-N.
async fn top(state: Arc<NodeState>, by: TopByName, limit: usize) -> Option<(Value, Offsets)> {
    let core = state.core.get()?;
    let part = routing::cluster_top(&state, core, by.by(), by.name(), limit).await;
    let data = json!({ "by": by.name(), "channels": part.channels, "stale": part.stale });
    Some((data, Offsets::Partitions(part.offsets)))
}

/// The cluster view.
async fn cluster(state: Arc<NodeState>) -> Option<(Value, Offsets)> {
    let core = state.core.get()?;
    let data = view::cluster_view(&state, core).await;
    let offsets = Offsets::Partitions(view::offsets(&data));
    Some((data, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_and_frames_parsed_from_their_data() {
        let mut pending = b": keep-alive\n\nevent: update\ndata: {\"type\":\"update\",\"subscription\":\"player:a\",\"served_by\":\"n2\",\"partition\":1,\"offset\":7,\"partition_offset\":9,\"gap\":false,\"data\":{\"k\":1}}\n\nevent: upd".to_vec();
        let first = take_event(&mut pending).unwrap();
        assert_eq!(parse_event(&first), None, "a comment is no frame");
        let second = take_event(&mut pending).unwrap();
        let (s, by) = parse_event(&second).unwrap();
        assert_eq!(by, "n2");
        assert_eq!((s.offset, s.partition, s.partition_offset), (7, 1, 9));
        assert_eq!(s.data.as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(
            take_event(&mut pending),
            None,
            "an event not yet complete waits"
        );
        assert_eq!(pending, b"event: upd");
        // An entity with no event yet: data null.
        let (s, _) = parse_event("data: {\"served_by\":\"n\",\"partition\":0,\"offset\":-1,\"partition_offset\":0,\"data\":null}\n\n").unwrap();
        assert_eq!((s.data, s.offset), (None, -1));
    }

    #[test]
    fn the_stream_url_carries_any_id_in_its_query() {
        let url = stream_url("http", "127.0.0.1:8081", ShardKind::Players, "a/b?#&=+ é").unwrap();
        let (k, v) = url.query_pairs().next().unwrap();
        assert_eq!((k.as_ref(), v.as_ref()), ("player", "a/b?#&=+ é"));
        assert_eq!(url.path(), "/v1/stream");
    }
}
