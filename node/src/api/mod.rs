//! The HTTP API (actix-web): health, ingest (`events`), queries, metrics.
//!
//! Every request passes `auth` first (the table of routes and the scope each needs), then
//! `observe` (counts and spans) wraps it all, refusals included.
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
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use serde_json::json;

mod auth;
mod dashboard;
mod events;
mod head;
mod history;
mod observe;
mod params;
mod push;

use events::ingest;

use crate::auth::rate::Refused;
use crate::cluster::routing::{self, RouteError};
use crate::cluster::view;
use crate::ingest::IngestError;
use crate::kind::ShardKind;
use crate::state::{Core, NodeState};

/// Every way a request can fail, and its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key without the scope the route needs: 403.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Timeout(String),
    /// Over the key's rate limit: 429, with `Retry-After` in seconds.
    #[error("{0}")]
    RateLimited(String, u64),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn error_response(&self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                answer.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"tally\""));
            }
            ApiError::RateLimited(_, secs) => {
                answer.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            _ => {}
        }
        answer.json(json!({ "error": self.to_string() }))
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let message = format!("ingest: {e}");
        match e {
            // A record over Kafka's limit: retrying the same request will not help.
            IngestError::TooLarge { .. } => ApiError::TooLarge(message),
            // Kafka refused what ingest's limits allow: the deployment is at fault.
            IngestError::Refused(_) => ApiError::Internal(message),
            // Nothing written, or the outcome unknown: retry (see docs/API.md).
            IngestError::NotWritten(_)
            | IngestError::TimedOut(_)
            | IngestError::Unknown(_)
            | IngestError::Closed => ApiError::Unavailable(message),
        }
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            // More events than the key's bucket holds: waiting will not help.
            Refused::OverBurst { .. } => ApiError::TooLarge(r.to_string()),
            Refused::Wait {
                retry_after_secs, ..
            } => ApiError::RateLimited(r.to_string(), retry_after_secs),
        }
    }
}

type Data = web::Data<Arc<NodeState>>;

/// How long an idle client connection stays open (see `serve`).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(75);

/// Builds the server on an already bound listener: HTTPS with `[node.tls]`, else HTTP.
pub fn serve(listener: TcpListener, state: Arc<NodeState>) -> anyhow::Result<Server> {
    let tls = state.tls.as_ref().map(|t| t.server_config()).transpose()?;
    // The push feeds and connections (`push::Hub`), one per node, shared by the workers.
    let hub = web::Data::new(Arc::new(crate::push::Hub::new(
        state.cfg.push.clone(),
        state.metrics.push.clone(),
    )));
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        let observed = data.get_ref().clone();
        let guarded = data.get_ref().clone();
        App::new()
            .app_data(data.clone())
            .app_data(hub.clone())
            .wrap_fn(move |req, srv| auth::guard(guarded.clone(), req, srv))
            .wrap_fn(head::bound)
            .wrap_fn(move |req, srv| observe::observe(observed.clone(), req, srv))
            // What each route needs is in `auth::ROUTES`: a route added here goes there too.
            .route("/", web::get().to(dashboard::index))
            .route("/dashboard/{file}", web::get().to(dashboard::asset))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/v1/events", web::post().to(ingest))
            // actix decodes `{id}` fully (`%2F` is `/`) but routes on the path with only
            // `%2F`, `%25` and `+` still encoded, so an encoded id is one segment, and
            // `top` in any encoding is the view: ids a segment cannot carry use `?id=`
            // (see `entity_path`).
            // Push (see `push`): the stream routes come before the `{id}` routes they extend.
            .route("/v1/subscribe", web::get().to(push::subscribe))
            .route("/v1/stream", web::get().to(push::stream_by_query))
            .route(
                "/v1/players/{id}/stream",
                web::get().to(push::player_stream),
            )
            .route("/v1/channels/top/stream", web::get().to(push::top_stream))
            .route(
                "/v1/channels/{id}/stream",
                web::get().to(push::channel_stream),
            )
            .route("/v1/cluster/stream", web::get().to(push::cluster_stream))
            // History (see `history`): before the `{id}` routes they extend.
            .route(
                "/v1/players/{id}/history",
                web::get().to(history::player_history),
            )
            .route(
                "/v1/players/{id}/records",
                web::get().to(history::player_records),
            )
            .route(
                "/v1/channels/{id}/history",
                web::get().to(history::channel_history),
            )
            .route("/v1/stats", web::get().to(history::stats))
            .route("/v1/players", web::get().to(player_by_query))
            .route("/v1/players/{id}", web::get().to(player))
            .route("/v1/channels", web::get().to(channel_by_query))
            .route("/v1/channels/top", web::get().to(top_channels))
            .route("/v1/channels/{id}", web::get().to(channel))
            .route("/v1/cluster", web::get().to(cluster))
    })
    .workers(2)
    // An idle connection is kept this long. actix's default, 5 s, is shorter than clients
    // keep theirs (reqwest and hyper: 90 s), so a client that pauses about 5 s sends its
    // next request into a connection the node is closing and can get a bare 408.
    .keep_alive(KEEP_ALIVE)
    .disable_signals()
    .shutdown_timeout(10);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
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
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(state.metrics.render())
}

fn core(state: &NodeState) -> Result<&Core, ApiError> {
    state.core.get().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "node is not ready yet: {}",
            state.readiness().missing.join("; ")
        ))
    })
}

fn answer(result: Result<routing::Answer, RouteError>) -> Result<HttpResponse, ApiError> {
    match result {
        Ok((status, body)) => Ok(HttpResponse::build(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        )
        .json(body)),
        Err(RouteError::NotFound(m)) => Err(ApiError::NotFound(m)),
        Err(RouteError::Unavailable(m)) => Err(ApiError::Unavailable(m)),
    }
}

async fn player(
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    params::path_id(ShardKind::Players, &id)?;
    lookup(&state, &req, ShardKind::Players, id).await
}

async fn channel(
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    params::path_id(ShardKind::Channels, &id)?;
    lookup(&state, &req, ShardKind::Channels, id).await
}

async fn player_by_query(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = params::query_id(ShardKind::Players, req.query_string())?;
    lookup(&state, &req, ShardKind::Players, id).await
}

async fn channel_by_query(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = params::query_id(ShardKind::Channels, req.query_string())?;
    lookup(&state, &req, ShardKind::Channels, id).await
}

/// Answers the query of an id already checked (see `params`).
async fn lookup(
    state: &NodeState,
    req: &HttpRequest,
    kind: ShardKind,
    id: String,
) -> Result<HttpResponse, ApiError> {
    let core = core(state)?;
    // A peer's request is answered here: it was routed already (and is never routed twice).
    let forwarded = auth::caller(req).is_peer();
    answer(routing::lookup(state, core, kind, &id, forwarded).await)
}

async fn top_channels(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let top = params::top(req.query_string())?;
    let (by, by_name, limit) = (top.by, top.by_name, top.limit);
    let core = core(&state)?;
    let part = if top.local {
        routing::local_top(core, by, limit).await
    } else {
        routing::cluster_top(&state, core, by, by_name, limit).await
    };
    Ok(HttpResponse::Ok().json(json!({
        "by": by_name, "channels": part.channels, "stale": part.stale, "offsets": part.offsets,
    })))
}

async fn cluster(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let only_local = params::local(req.query_string())?;
    if only_local {
        return Ok(HttpResponse::Ok().json(view::local_view(&state).await));
    }
    let core = core(&state)?;
    Ok(HttpResponse::Ok().json(view::cluster_view(&state, core).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_errors_map_to_statuses_that_say_whether_to_retry() {
        let status = |e: IngestError| ApiError::from(e).status_code().as_u16();
        assert_eq!(status(IngestError::TooLarge { size: 2, limit: 1 }), 413);
        assert_eq!(status(IngestError::Refused("kafka: too large".into())), 500);
        assert_eq!(status(IngestError::NotWritten("kafka: down".into())), 503);
        assert_eq!(status(IngestError::TimedOut(10_000)), 503);
        assert_eq!(status(IngestError::Unknown("kafka: slow".into())), 503);
        assert_eq!(status(IngestError::Closed), 503);
        let text = ApiError::from(IngestError::TimedOut(10_000)).to_string();
        assert!(
            text.starts_with("ingest: ") && text.contains("10000 ms"),
            "{text}"
        );
    }
}
