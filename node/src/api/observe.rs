//! What every request leaves behind: a count and a latency by route pattern and status,
//! and a span (continuing the client's `traceparent`, see `telemetry`).
//!
//! Not for: what a handler does (the handlers) or metric definitions (see `metrics`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use tracing::Instrument;

use crate::state::NodeState;
use crate::telemetry;

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
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if telemetry::enabled() {
        let parent = req.headers().get(telemetry::TRACEPARENT);
        telemetry::continue_from(&span, parent.map(|v| v.as_bytes()));
    }
    let method = req.method().clone();
    let answer = span.in_scope(|| srv.call(req));
    async move {
        let res = answer.instrument(span.clone()).await?;
        // The pattern is known once the router has matched, so it is read off the answer.
        let route = res.request().match_pattern();
        let route = route.as_deref().unwrap_or(UNMATCHED);
        let status = res.status().as_u16();
        if telemetry::enabled() {
            // The span has started by now (its trace context is known), so the name is
            // set on it directly: recording `otel.name` would only reach an unstarted one.
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            span.context()
                .span()
                .update_name(format!("{method} {route}"));
        }
        span.record("http.route", route);
        span.record("http.response.status_code", status);
        state.metrics.observe_http(route, status, started.elapsed());
        Ok(res)
    }
}
