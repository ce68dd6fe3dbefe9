//! The HTTP API (actix-web): health, ingest, queries, metrics.
//!
//! Handlers stay thin: they parse, call a shard or the ingest producer, and map errors to
//! statuses in one place ([`ApiError`]). Clients (shard refs, the producer handle) are
//! created by the node and passed in through `web::Data`, because actix workers run their
//! own single-thread runtimes. See docs/API.md for the reference.
//!
//! Not for: state or Kafka logic.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::event::{Event, Rejection, MAX_ID_LEN};
use crate::ingest::{dead_letter, records_for, IngestError};
use crate::node::NodeState;
use crate::partitioner::partition_for;
use crate::shard::{sort_top, ShardKind, ShardMsg, TopBy, TopEntry};

/// Every way a request can fail, and its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

type Data = web::Data<Arc<NodeState>>;

/// Builds the server on an already bound listener.
pub fn serve(listener: TcpListener, state: Arc<NodeState>) -> anyhow::Result<Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/v1/events", web::post().to(ingest))
            .route("/v1/players/{id}", web::get().to(player))
            .route("/v1/channels/top", web::get().to(top_channels))
            .route("/v1/channels/{id}", web::get().to(channel))
            .route("/v1/cluster", web::get().to(cluster))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    Ok(server)
}

async fn healthz(state: Data) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "alive",
        "node": state.cfg.node.id,
        "uptime_secs": state.started.elapsed().as_secs(),
    }))
}

async fn readyz(state: Data) -> HttpResponse {
    let r = state.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(r)
}

async fn metrics(state: Data) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

fn core(state: &NodeState) -> Result<&crate::node::Core, ApiError> {
    state.core.get().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "node is not ready yet: {}",
            state.readiness().missing.join("; ")
        ))
    })
}

/// One rejected event in an ingest response.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Rejected {
    /// Position of the event in the batch (array index or NDJSON line number, from 0).
    pub index: usize,
    pub field: String,
    pub reason: String,
}

/// The ingest response.
#[derive(Debug, Serialize, Deserialize)]
pub struct IngestResponse {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// Splits a body into the raw bytes of its events: a JSON array, or NDJSON.
fn split_body(body: &[u8]) -> Result<Vec<&[u8]>, Rejection> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(Rejection::new(
            "body",
            "empty body: send a json array or ndjson",
        ));
    };
    if body[start] == b'[' {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
            .map_err(|e| Rejection::new("body", format!("malformed json array: {e}")))?;
        return Ok(items.into_iter().map(|r| r.get().as_bytes()).collect());
    }
    Ok(body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .collect())
}

async fn ingest(state: Data, mut payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let core = core(&state)?;
    let limits = &state.cfg.ingest;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
        if body.len() + chunk.len() > limits.max_body_bytes {
            return Err(ApiError::TooLarge(format!(
                "body: larger than the limit of {} bytes",
                limits.max_body_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let items = match split_body(&body) {
        Ok(items) => items,
        Err(rejection) => {
            // The whole body is unusable: keep it in the dead-letter topic, say why.
            let reason = rejection.to_string();
            core.ingest
                .produce(vec![dead_letter(&body, rejection)])
                .await?;
            state.metrics.add_ingest(0, 1);
            return Err(ApiError::BadRequest(reason));
        }
    };
    if items.len() > limits.max_batch_events {
        return Err(ApiError::TooLarge(format!(
            "body: {} events, more than the limit of {} per request",
            items.len(),
            limits.max_batch_events
        )));
    }
    let mut records = Vec::with_capacity(items.len() * 2);
    let mut rejected = Vec::new();
    let mut accepted = 0;
    for (index, raw) in items.iter().enumerate() {
        match Event::parse(raw) {
            Ok(event) => {
                records.extend(records_for(&event));
                accepted += 1;
            }
            Err(r) => {
                rejected.push(Rejected {
                    index,
                    field: r.field.clone(),
                    reason: r.reason.clone(),
                });
                records.push(dead_letter(raw, r));
            }
        }
    }
    core.ingest.produce(records).await?;
    state
        .metrics
        .add_ingest(accepted as u64, rejected.len() as u64);
    let status = if accepted == 0 && !rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status).json(IngestResponse { accepted, rejected }))
}

fn check_path_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::BadRequest(format!(
            "{what} id: must be 1 to {MAX_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

fn shard_of(
    core: &crate::node::Core,
    kind: ShardKind,
    partition: i32,
) -> Result<&ractor::ActorRef<ShardMsg>, ApiError> {
    core.shards.get(&(kind, partition)).ok_or_else(|| {
        ApiError::Unavailable(format!(
            "partition {partition} of {kind:?} is not served by this node"
        ))
    })
}

async fn player(state: Data, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    check_path_id("player", &id)?;
    let core = core(&state)?;
    let shard = shard_of(
        core,
        ShardKind::Players,
        partition_for(&id, core.player_partitions),
    )?;
    let answer = ractor::call_t!(shard, ShardMsg::Player, 10_000, id.clone())
        .map_err(|e| ApiError::Unavailable(format!("player {id}: shard did not answer: {e}")))?
        .map_err(|e| ApiError::Internal(format!("player {id}: {e}")))?;
    match answer {
        None => Err(ApiError::NotFound(format!("player {id}: no events seen"))),
        Some((view, freshness)) => Ok(HttpResponse::Ok().json(json!({
            "player": view,
            "freshness": freshness,
            "stale": false,
            "served_by": state.cfg.node.id,
        }))),
    }
}

async fn channel(state: Data, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    check_path_id("channel", &id)?;
    let core = core(&state)?;
    let shard = shard_of(
        core,
        ShardKind::Channels,
        partition_for(&id, core.channel_partitions),
    )?;
    let answer = ractor::call_t!(shard, ShardMsg::Channel, 10_000, id.clone())
        .map_err(|e| ApiError::Unavailable(format!("channel {id}: shard did not answer: {e}")))?
        .map_err(|e| ApiError::Internal(format!("channel {id}: {e}")))?;
    match answer {
        None => Err(ApiError::NotFound(format!("channel {id}: no events seen"))),
        Some((view, freshness)) => Ok(HttpResponse::Ok().json(json!({
            "channel": view,
            "freshness": freshness,
            "stale": false,
            "served_by": state.cfg.node.id,
        }))),
    }
}

#[derive(Deserialize)]
struct TopQuery {
    by: Option<String>,
    limit: Option<String>,
}

/// Parses `by` and `limit` of a top-N query; errors name the parameter.
fn parse_top(q: &TopQuery) -> Result<(TopBy, usize), ApiError> {
    let by = match q.by.as_deref().unwrap_or("concurrent") {
        "concurrent" => TopBy::Concurrent,
        "peak" => TopBy::Peak,
        "follows" => TopBy::Follows,
        other => {
            return Err(ApiError::BadRequest(format!(
                "by: unknown ordering {other:?}, expected concurrent, peak or follows"
            )))
        }
    };
    let limit = match q.limit.as_deref() {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit: expected an integer from 1 to 1000, got {s:?}"
                )))
            }
        },
    };
    Ok((by, limit))
}

async fn top_channels(state: Data, query: web::Query<TopQuery>) -> Result<HttpResponse, ApiError> {
    let (by, limit) = parse_top(&query)?;
    let core = core(&state)?;
    let mut all: Vec<TopEntry> = Vec::new();
    for ((kind, _), shard) in &core.shards {
        if *kind != ShardKind::Channels {
            continue;
        }
        let part = ractor::call_t!(shard, ShardMsg::Top, 10_000, by, limit).map_err(|e| {
            ApiError::Unavailable(format!("top channels: shard did not answer: {e}"))
        })?;
        all.extend(part);
    }
    sort_top(&mut all, by);
    all.truncate(limit);
    Ok(HttpResponse::Ok()
        .json(json!({ "by": query.by.as_deref().unwrap_or("concurrent"), "channels": all })))
}

async fn cluster(state: Data, _req: HttpRequest) -> HttpResponse {
    let shards = state.shard_stats().await;
    HttpResponse::Ok().json(json!({
        "members": [{
            "id": state.cfg.node.id,
            "api_addr": state.cfg.node.api_addr.to_string(),
            "status": if state.readiness().ready { "ready" } else { "starting" },
        }],
        "shards": shards,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_and_ndjson() {
        let arr = split_body(br#" [ {"a":1}, {"b":[2,3]} ] "#).unwrap();
        assert_eq!(arr, vec![&br#"{"a":1}"#[..], &br#"{"b":[2,3]}"#[..]]);
        let nd = split_body(b"{\"a\":1}\r\n\n{\"b\":2}\n").unwrap();
        assert_eq!(nd, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(split_body(b"  ").unwrap_err().field, "body");
        assert_eq!(split_body(b"[{").unwrap_err().field, "body");
    }

    #[test]
    fn top_parameters_are_checked() {
        let q = |by: Option<&str>, limit: Option<&str>| TopQuery {
            by: by.map(String::from),
            limit: limit.map(String::from),
        };
        assert!(matches!(
            parse_top(&q(None, None)),
            Ok((TopBy::Concurrent, 10))
        ));
        assert!(matches!(
            parse_top(&q(Some("peak"), Some("3"))),
            Ok((TopBy::Peak, 3))
        ));
        let e = parse_top(&q(Some("loud"), None)).unwrap_err().to_string();
        assert!(e.starts_with("by:"), "{e}");
        let e = parse_top(&q(None, Some("0"))).unwrap_err().to_string();
        assert!(e.starts_with("limit:"), "{e}");
    }
}
