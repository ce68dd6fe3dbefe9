//! What every request leaves behind: a count and a latency by route pattern and status.
//!
//! Not for: what a handler does (the handlers) or metric definitions (see `metrics`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};

use crate::state::NodeState;

/// The route label of a request no route matched (a 404 of the router itself). Never the
/// path: a client could otherwise make a series per path it tries.
const UNMATCHED: &str = "unmatched";

/// Calls the app for `req` and records the answer's route pattern, status and time.
pub(super) fn observe<S, B>(
    state: Arc<NodeState>,
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let started = Instant::now();
    let answer = srv.call(req);
    async move {
        let res = answer.await?;
        // The pattern is known once the router has matched, so it is read off the answer.
        let route = res.request().match_pattern();
        let route = route.as_deref().unwrap_or(UNMATCHED);
        state
            .metrics
            .observe_http(route, res.status().as_u16(), started.elapsed());
        Ok(res)
    }
}
