//! Traces: OpenTelemetry spans along one event's path, exported over OTLP/HTTP.
//!
//! An HTTP request is a span (continuing a `traceparent` the client sent). Ingest writes
//! its records inside a `kafka.produce` span and, when that span is sampled, puts its W3C
//! `traceparent` in each record's headers. The shard that applies such a record makes a
//! `shard.apply` span, a child of it; the checkpoint that makes it durable is a
//! `shard.checkpoint` span linked to every apply span it covers. A forwarded query carries
//! `traceparent` to the owner, whose request span continues the trace.
//!
//! Sampling: a request with a sampled `traceparent` is always traced; one without is
//! traced with probability `telemetry.sample_ratio`. Records without a sampled
//! `traceparent` cost the shard nothing: with tracing off the source does not even read
//! their headers.
//!
//! Not for: metrics (see `metrics`) or logs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The record header and HTTP header that carry a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Spans at most remembered per shard between checkpoints (the checkpoint span links them).
pub const MAX_LINKS: usize = 64;

/// Whether spans are exported: set once at start. Off, the hot paths skip trace work.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry collector), e.g.
    /// `http://otel-collector:4318`; spans go to its `/v1/traces`. Unset: no tracing.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    pub otlp_protocol: String,
    /// Share of requests without a sampled `traceparent` that are traced, 0.0 to 1.0.
    pub sample_ratio: f64,
    /// How often finished spans are sent, in milliseconds.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: "http/protobuf".into(),
            sample_ratio: 0.01,
            export_interval_ms: 5000,
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("telemetry.otlp_endpoint must be an http:// or https:// URL, got {url:?}");
            }
        }
        self.protocol()?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            bail!(
                "telemetry.sample_ratio must be between 0.0 and 1.0, got {}",
                self.sample_ratio
            );
        }
        if !(10..=600_000).contains(&self.export_interval_ms) {
            bail!(
                "telemetry.export_interval_ms must be 10-600000, got {}",
                self.export_interval_ms
            );
        }
        Ok(())
    }

    fn protocol(&self) -> anyhow::Result<Protocol> {
        match self.otlp_protocol.as_str() {
            "http/protobuf" => Ok(Protocol::HttpBinary),
            "http/json" => Ok(Protocol::HttpJson),
            other => bail!(
                "telemetry.otlp_protocol must be \"http/protobuf\" or \"http/json\", got {other:?}"
            ),
        }
    }
}

/// The tracer provider, for the logging layer and the shutdown flush; None when tracing
/// is off.
pub fn start(cfg: &TelemetryConfig, node_id: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(cfg.protocol()?)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("build the OTLP exporter for {url}"))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(cfg.export_interval_ms))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches)
        .build();
    let resource = Resource::builder()
        .with_service_name("tally-node")
        .with_attribute(KeyValue::new("service.instance.id", node_id.to_string()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer_provider().tracer("tally-node")
}

/// A sampled trace context as the `traceparent` header writes it.
pub fn format_traceparent(cx: &SpanContext) -> Option<String> {
    (cx.is_valid() && cx.is_sampled()).then(|| format!("00-{}-{}-01", cx.trace_id(), cx.span_id()))
}

/// The sampled span context a `traceparent` value names; None for anything else
/// (malformed, unsampled, a version other than 00).
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let cx = SpanContext::new(trace, span, TraceFlags::new(flags), true, TraceState::NONE);
    (cx.is_valid() && cx.is_sampled()).then_some(cx)
}

/// The `traceparent` of the current tracing span, if it is sampled (tracing on).
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    format_traceparent(cx.span().span_context())
}

/// Makes `span` continue the trace a request's `traceparent` header names, if any.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&[u8]>) {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// A finished `shard.apply` span for a traced record, child of the span that produced it;
/// returns its context, for the checkpoint's links.
pub fn applied(
    parent: &SpanContext,
    kind: &'static str,
    partition: i32,
    offset: i64,
    started: SystemTime,
) -> SpanContext {
    use opentelemetry::trace::Span as _;
    let parent = Context::new().with_remote_span_context(parent.clone());
    let tracer = tracer();
    let mut span = tracer
        .span_builder("shard.apply")
        .with_kind(SpanKind::Consumer)
        .with_start_time(started)
        .with_attributes([
            KeyValue::new("tally.kind", kind),
            KeyValue::new("tally.partition", i64::from(partition)),
            KeyValue::new("tally.offset", offset),
        ])
        .start_with_context(&tracer, &parent);
    let cx = span.span_context().clone();
    span.end();
    cx
}

/// A `shard.checkpoint` span from `started` to now that made the records of `applied`
/// durable: a child of the first, linked to all.
pub fn checkpointed(
    applied: &[SpanContext],
    kind: &'static str,
    partition: i32,
    rows: usize,
    started: SystemTime,
    error: Option<String>,
) {
    use opentelemetry::trace::Span as _;
    let Some(first) = applied.first() else {
        return;
    };
    let parent = Context::new().with_remote_span_context(first.clone());
    let tracer = tracer();
    let mut span = tracer
        .span_builder("shard.checkpoint")
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_links(
            applied
                .iter()
                .map(|cx| Link::with_context(cx.clone()))
                .collect(),
        )
        .with_attributes([
            KeyValue::new("tally.kind", kind),
            KeyValue::new("tally.partition", i64::from(partition)),
            KeyValue::new("tally.rows", rows as i64),
        ])
        .start_with_context(&tracer, &parent);
    if let Some(e) = error {
        span.set_status(opentelemetry::trace::Status::error(e));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_only_sampled_well_formed_ones_parse() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(tp.as_bytes()).expect("parses");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format_traceparent(&cx).as_deref(), Some(tp));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", // not sampled
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // unknown version
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // invalid trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // invalid span id
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(parse_traceparent(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |f: fn(&mut TelemetryConfig)| {
            let mut c = TelemetryConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.sample_ratio = 1.5).contains("telemetry.sample_ratio"));
        assert!(bad(|c| c.otlp_protocol = "grpc".into()).contains("telemetry.otlp_protocol"));
        assert!(bad(|c| c.otlp_endpoint = Some("collector:4318".into()))
            .contains("telemetry.otlp_endpoint"));
        assert!(bad(|c| c.export_interval_ms = 0).contains("telemetry.export_interval_ms"));
        TelemetryConfig::default().validate().unwrap();
    }
}
