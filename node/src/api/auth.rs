//! Who may call which route: the one table of routes and what each needs, and the
//! middleware that checks every request against it before any handler runs, so a refused
//! caller learns nothing a handler would say (not even whether an entity exists).
//!
//! A client sends `Authorization: Bearer <key>`; a node calling another signs the call
//! with the cluster secret (`auth::peer`). A request that claims to come from a node
//! (`x-tally-forwarded` or the peer header) must carry a valid signature, whatever else it
//! holds, so the forwarded marker cannot be spoofed to skip routing or auth. The caller
//! found is put in the request's extensions ([`caller`]) for the handlers.
//!
//! Not for: loading keys or checking signatures (see `auth`), or rate limits (the ingest
//! handler applies the key's buckets once it knows the events of a body).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpMessage, HttpRequest, ResponseError};
use tracing::warn;

use super::ApiError;
use crate::auth::peer::PEER_AUTH;
use crate::auth::{Caller, Scope};
use crate::cluster::routing::FORWARDED;
use crate::log_limit::LogLimit;
use crate::state::NodeState;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Anyone, always (probes).
    Open,
    /// A key with this scope.
    Scope(Scope),
    /// `/metrics`: open, or the scope `auth.metrics_scope` names.
    Metrics,
}

/// Every route the API serves (the patterns `api::serve` registers) and what it needs. A
/// path that matches none of them needs a valid key of any scope (and then gets 404).
pub(super) const ROUTES: &[(&str, Access)] = &[
    // The dashboard's page and assets hold no data; the page asks for a key.
    ("/", Access::Open),
    ("/dashboard/{file}", Access::Open),
    ("/healthz", Access::Open),
    ("/readyz", Access::Open),
    ("/metrics", Access::Metrics),
    ("/v1/events", Access::Scope(Scope::Ingest)),
    ("/v1/players", Access::Scope(Scope::Read)),
    ("/v1/players/{id}", Access::Scope(Scope::Read)),
    ("/v1/channels", Access::Scope(Scope::Read)),
    ("/v1/channels/top", Access::Scope(Scope::Read)),
    ("/v1/channels/{id}", Access::Scope(Scope::Read)),
    ("/v1/cluster", Access::Scope(Scope::Admin)),
    ("/v1/players/{id}/history", Access::Scope(Scope::Read)),
    ("/v1/players/{id}/records", Access::Scope(Scope::Read)),
    ("/v1/channels/{id}/history", Access::Scope(Scope::Read)),
    ("/v1/stats", Access::Scope(Scope::Read)),
    // Push: the cluster subscription on `/v1/subscribe` needs admin too (`api::push`).
    ("/v1/subscribe", Access::Scope(Scope::Read)),
    ("/v1/stream", Access::Scope(Scope::Read)),
    ("/v1/players/{id}/stream", Access::Scope(Scope::Read)),
    ("/v1/channels/top/stream", Access::Scope(Scope::Read)),
    ("/v1/channels/{id}/stream", Access::Scope(Scope::Read)),
    ("/v1/cluster/stream", Access::Scope(Scope::Admin)),
];

/// The routes browsers reach with a WebSocket or an `EventSource`, which cannot send
/// headers: they also take the key as `?access_token=<key>`.
const TOKEN_IN_QUERY: &[&str] = &[
    "/v1/subscribe",
    "/v1/stream",
    "/v1/players/{id}/stream",
    "/v1/channels/top/stream",
    "/v1/channels/{id}/stream",
    "/v1/cluster/stream",
];

/// What a request needs, once the config is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    AnyKey,
    Scope(Scope),
}

fn needs(pattern: Option<&str>, metrics_scope: Option<Scope>) -> Needs {
    let access = ROUTES.iter().find(|(p, _)| Some(*p) == pattern);
    match access.map(|(_, a)| *a) {
        None => Needs::AnyKey,
        Some(Access::Open) => Needs::Nothing,
        Some(Access::Scope(s)) => Needs::Scope(s),
        Some(Access::Metrics) => metrics_scope.map_or(Needs::Nothing, Needs::Scope),
    }
}

/// The 401 of a missing or unknown key.
const NO_KEY: &str = "auth: missing or invalid api key: send Authorization: Bearer <key>";
/// The 401 of a request that claims to come from a node and cannot prove it.
const NO_PEER: &str = "auth: missing or invalid cluster credential on a forwarded request";

static PEER_REFUSED_LOG: LogLimit = LogLimit::new(Duration::from_secs(10));

/// The caller the middleware found (`Anyone` if none was recorded, as in unit tests).
pub(super) fn caller(req: &HttpRequest) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anyone)
}

/// Checks `req` against [`ROUTES`]; calls the app, or answers 401/403 itself.
pub(super) fn guard<S, B>(
    state: Arc<NodeState>,
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let outcome = match decide(&state, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(srv.call(req))
        }
        Err(e) => Err(req.into_response(e.error_response())),
    };
    async move {
        match outcome {
            Ok(answer) => answer.await.map(ServiceResponse::map_into_left_body),
            Err(refused) => Ok(refused.map_into_right_body()),
        }
    }
}

fn decide(state: &NodeState, req: &ServiceRequest) -> Result<Caller, ApiError> {
    // The path as the router matches it (partly decoded), so no encoding of a path can
    // reach one route while being checked as another.
    let pattern = req
        .request()
        .resource_map()
        .match_pattern(req.match_info().as_str());
    let auth = &state.auth;
    let needs = needs(pattern.as_deref(), auth.metrics_scope());
    if needs == Needs::Nothing {
        return Ok(Caller::Anyone);
    }
    let headers = req.headers();
    if headers.contains_key(FORWARDED) || headers.contains_key(PEER_AUTH) {
        return peer(state, req);
    }
    if !auth.enabled() {
        return Ok(Caller::Anyone);
    }
    let in_query = || {
        pattern
            .as_deref()
            .filter(|p| TOKEN_IN_QUERY.contains(p))
            .and_then(|_| access_token(req.query_string()))
    };
    let key = bearer(req)
        .map(<[u8]>::to_vec)
        .or_else(in_query)
        .and_then(|k| auth.key(&k))
        .ok_or_else(|| ApiError::Unauthorized(NO_KEY.into()))?;
    match needs {
        Needs::Scope(scope) if !key.has(scope) => Err(ApiError::Forbidden(format!(
            "auth: this key lacks the scope {}",
            scope.name()
        ))),
        _ => Ok(Caller::Key(key)),
    }
}

/// A call that says it comes from another node: verified with the cluster secret. Without
/// a secret it is trusted only while auth is off (local development, warned at start).
fn peer(state: &NodeState, req: &ServiceRequest) -> Result<Caller, ApiError> {
    let Some(secret) = state.auth.peer() else {
        if state.auth.enabled() {
            return Err(ApiError::Unauthorized(NO_PEER.into()));
        }
        return Ok(Caller::Peer);
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let header = req.headers().get(PEER_AUTH).map(|v| v.as_bytes());
    match secret.verify(header, req.method().as_str(), path, crate::event::now_ms()) {
        Ok(()) => Ok(Caller::Peer),
        Err(e) => {
            if let Some(suppressed) = PEER_REFUSED_LOG.allow() {
                let from = req.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                warn!(%from, reason = %e, suppressed, "refused a forwarded request");
            }
            Err(ApiError::Unauthorized(NO_PEER.into()))
        }
    }
}

/// The key of `Authorization: Bearer <key>`, if the header has that form.
fn bearer(req: &ServiceRequest) -> Option<&[u8]> {
    let value = req.headers().get(AUTHORIZATION)?.as_bytes();
    let (scheme, key) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(key.trim_ascii()).filter(|k| !k.is_empty())
}

/// The key of `?access_token=<key>`, percent-decoded.
fn access_token(query: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "access_token")
        .map(|(_, v)| percent_encoding::percent_decode_str(v).collect::<Vec<u8>>())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_what_the_table_says_and_an_unknown_path_a_key() {
        assert_eq!(needs(Some("/healthz"), None), Needs::Nothing);
        assert_eq!(needs(Some("/metrics"), None), Needs::Nothing);
        assert_eq!(
            needs(Some("/metrics"), Some(Scope::Admin)),
            Needs::Scope(Scope::Admin)
        );
        assert_eq!(needs(Some("/v1/events"), None), Needs::Scope(Scope::Ingest));
        assert_eq!(
            needs(Some("/v1/channels/{id}"), None),
            Needs::Scope(Scope::Read)
        );
        assert_eq!(needs(Some("/v1/cluster"), None), Needs::Scope(Scope::Admin));
        assert_eq!(needs(None, None), Needs::AnyKey);
        assert_eq!(needs(Some("/v1/unknown"), None), Needs::AnyKey);
    }
}
