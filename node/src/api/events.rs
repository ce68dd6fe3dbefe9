//! `POST /v1/events`: the body read within its deadline, split into events (a JSON array
//! or NDJSON), each event validated, sized and checked against the node's recent
//! acknowledgements, and the records written in the producer's group commit. A caller
//! with a rate-limited key is refused (429) before anything of its request is written.
//!
//! Not for: the Kafka side of ingest (see `ingest`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::auth::caller;
use super::{core, ApiError, Data};
use crate::auth::keys::ApiKey;
use crate::auth::Caller;
use crate::event::{Event, Rejection};
use crate::ingest::IngestError;
use crate::ingest::{clip_rejection, dead_letter, records_for, OutRecord};
use crate::metrics::RejectReason;
use crate::shard::dedupe::{fingerprint, Fingerprint};
use crate::state::{Core, NodeState};
use crate::telemetry;

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
    /// Events acknowledged: written now, or (listed in `duplicates`) already written.
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
    /// Positions of accepted events this node recognised as already acknowledged (a
    /// retry, or the same event twice in one request): not written again. A retry this
    /// node does not recognise is written and still counted once (the shards deduplicate).
    #[serde(default)]
    pub duplicates: Vec<usize>,
}

/// Why a body is refused as a whole.
#[derive(Debug, PartialEq)]
enum Refused {
    /// Empty, or neither a JSON array nor NDJSON: 400.
    Malformed(Rejection),
    /// More events than the limit per request: 413.
    TooMany(Rejection),
}

impl Refused {
    fn answer(self) -> (Rejection, fn(String) -> ApiError) {
        match self {
            Refused::Malformed(r) => (r, ApiError::BadRequest),
            Refused::TooMany(r) => (r, ApiError::TooLarge),
        }
    }
}

/// Splits a body into the raw bytes of its events: a JSON array, or NDJSON.
///
/// An array is parsed as a whole, so one syntax error anywhere rejects the whole body:
/// after a broken element there is no telling where the next one starts. NDJSON lines are
/// independent, so a broken line costs only that line (docs/API.md recommends NDJSON).
/// A body of more than `max_events` events is refused; its events are counted to its end
/// but not kept, so the split allocates for at most `max_events`, however small they are.
fn split_body(body: &[u8], max_events: usize) -> Result<Vec<&[u8]>, Refused> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        let reason = "empty body: send a json array or ndjson";
        return Err(Refused::Malformed(Rejection::new("body", reason)));
    };
    let (mut items, mut count) = (Vec::new(), 0usize);
    let mut keep = |item| {
        count += 1;
        if items.len() < max_events {
            items.push(item);
        }
    };
    if body[start] == b'[' {
        use serde::Deserializer as _;
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_seq(Elements(&mut keep))
            .and_then(|()| de.end())
            .map_err(|e| {
                let reason = format!("malformed json array: {e}");
                Refused::Malformed(Rejection::new("body", reason))
            })?;
    } else {
        body.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .for_each(&mut keep);
    }
    if count > max_events {
        let reason = format!("{count} events, more than the limit of {max_events} per request");
        return Err(Refused::TooMany(Rejection::new("body", reason)));
    }
    Ok(items)
}

/// The elements of a JSON array, each handed to the closure as its raw text. Elements are
/// skipped over, not decoded, so nesting inside one costs no stack.
struct Elements<F>(F);

impl<'de, F: FnMut(&'de [u8])> serde::de::Visitor<'de> for Elements<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a json array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            (self.0)(raw.get().as_bytes());
        }
        Ok(())
    }
}

/// An event larger than `max` bytes (as it stands in the body) is rejected before it is
/// parsed: its size alone decides, whatever field makes it large.
fn check_event_size(raw: &[u8], max: usize) -> Result<(), Rejection> {
    if raw.len() > max {
        return Err(Rejection::new(
            "event",
            format!(
                "{} bytes, more than the limit of {max} bytes per event",
                raw.len()
            ),
        ));
    }
    Ok(())
}

/// What arrived of a request body.
enum Body {
    Whole(Vec<u8>),
    /// The body passed the limit; this is its start, as much as the limit.
    TooLarge(Vec<u8>),
}

/// Reads the body up to `limit` bytes, by `deadline` (408 after it).
async fn read_body(
    payload: &mut web::Payload,
    limit: usize,
    deadline: Instant,
    timeout_ms: u64,
) -> Result<Body, ApiError> {
    let until = tokio::time::Instant::from_std(deadline);
    let mut body = Vec::new();
    loop {
        let chunk = match tokio::time::timeout_at(until, payload.next()).await {
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "body: not received within the request timeout of {timeout_ms} ms"
                )))
            }
            Ok(None) => return Ok(Body::Whole(body)),
            Ok(Some(chunk)) => chunk.map_err(|e| ApiError::BadRequest(format!("body: {e}")))?,
        };
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok(Body::TooLarge(body));
        }
        body.extend_from_slice(&chunk);
    }
}

fn content_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Rejects a whole body: its start goes to the dead-letter topic (like every rejected
/// input), and the answer is `status` with the reason, or 503 if the dead letter could
/// not be written.
async fn reject_body(
    state: &NodeState,
    core: &Core,
    received: &[u8],
    input_len: Option<usize>,
    rejection: Rejection,
    deadline: Instant,
    status: fn(String) -> ApiError,
) -> ApiError {
    let rejection = clip_rejection(&rejection);
    let record = dead_letter(
        received,
        input_len,
        &rejection,
        state.cfg.ingest.max_event_bytes,
    );
    if let Err(e) = core.ingest.produce_until(vec![record], deadline).await {
        return e.into();
    }
    state.metrics.add_ingest_rejected(RejectReason::Body, 1);
    status(rejection.to_string())
}

pub(super) async fn ingest(
    state: Data,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // One deadline for everything the request waits for: its body, the producer, Kafka.
    let limits = &state.cfg.ingest;
    let deadline = Instant::now() + limits.request_timeout();
    let core = core(&state)?;
    let budget = Budget::of(&req);
    // Out of requests: refused before the body is read.
    budget.check()?;
    let body = match read_body(
        &mut payload,
        limits.max_body_bytes,
        deadline,
        limits.request_timeout_ms,
    )
    .await?
    {
        Body::Whole(body) => body,
        Body::TooLarge(start) => {
            budget.admit(0)?;
            let rejection = Rejection::new(
                "body",
                format!("larger than the limit of {} bytes", limits.max_body_bytes),
            );
            let declared = content_length(&req).filter(|&n| n > start.len());
            let e = reject_body(
                &state,
                core,
                &start,
                declared,
                rejection,
                deadline,
                ApiError::TooLarge,
            );
            return Err(e.await);
        }
    };
    let items = match split_body(&body, limits.max_batch_events) {
        Ok(items) => items,
        Err(refused) => {
            budget.admit(0)?;
            let (rejection, status) = refused.answer();
            let len = Some(body.len());
            let e = reject_body(&state, core, &body, len, rejection, deadline, status);
            return Err(e.await);
        }
    };
    // Refused whole, before anything of it is written, and taking nothing of the budget.
    budget.admit(items.len())?;
    write_events(&state, core, &items, deadline).await
}

/// The caller's ingest budget: its key's token buckets, or none (auth off, or a peer).
struct Budget(Option<Arc<ApiKey>>);

impl Budget {
    fn of(req: &HttpRequest) -> Budget {
        match caller(req) {
            Caller::Key(key) => Budget(Some(key)),
            Caller::Anyone | Caller::Peer => Budget(None),
        }
    }

    /// Whether a request could pass now; takes nothing.
    fn check(&self) -> Result<(), ApiError> {
        match &self.0 {
            Some(key) => Ok(key.limiter.check_request(Instant::now())?),
            None => Ok(()),
        }
    }

    /// Takes one request and `events` events, or refuses the request taking nothing.
    fn admit(&self, events: usize) -> Result<(), ApiError> {
        match &self.0 {
            Some(key) => Ok(key.limiter.admit(events as u64, Instant::now())?),
            None => Ok(()),
        }
    }
}

/// Sorts the events, writes the records and answers 202 (or 400 if every event was
/// rejected).
async fn write_events(
    state: &NodeState,
    core: &Core,
    items: &[&[u8]],
    deadline: Instant,
) -> Result<HttpResponse, ApiError> {
    let Sorted {
        records,
        answer,
        written,
        rejected_by,
    } = sort_events(state, items);
    produce_traced(core, records, deadline).await?;
    state.acknowledged.record(written);
    state.metrics.add_ingest_accepted(answer.accepted as u64);
    for (reason, n) in rejected_by {
        state.metrics.add_ingest_rejected(reason, n);
    }
    let status = if answer.accepted == 0 && !answer.rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status).json(answer))
}

/// Writes `records` inside a `kafka.produce` span; when it is sampled, each record carries
/// its `traceparent`, so the shards' apply spans continue the trace.
async fn produce_traced(
    core: &Core,
    mut records: Vec<OutRecord>,
    deadline: Instant,
) -> Result<(), IngestError> {
    let span = tracing::info_span!(
        "kafka.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.batch.message_count = records.len(),
    );
    if let Some(tp) = span.in_scope(telemetry::current_traceparent) {
        for r in &mut records {
            r.traceparent = Some(tp.clone());
        }
    }
    core.ingest
        .produce_until(records, deadline)
        .instrument(span)
        .await
}

/// A request's events, sorted: the records to write, the answer, and the fingerprints of
/// the events written (acknowledged once the records commit).
struct Sorted {
    records: Vec<OutRecord>,
    answer: IngestResponse,
    written: HashSet<Fingerprint>,
    /// The rejected events, counted by reason.
    rejected_by: Vec<(RejectReason, u64)>,
}

/// Validates each event: a valid one makes its records (unless it is a duplicate), a bad
/// one a dead letter and a rejection naming the field.
fn sort_events(state: &NodeState, items: &[&[u8]]) -> Sorted {
    let limits = &state.cfg.ingest;
    let mut out = Sorted {
        records: Vec::with_capacity(items.len() * 2),
        answer: IngestResponse {
            accepted: 0,
            rejected: Vec::new(),
            duplicates: Vec::new(),
        },
        written: HashSet::new(),
        rejected_by: Vec::new(),
    };
    let now_ms = crate::event::now_ms();
    let lead = state.cfg.shard.future_tolerance_ms();
    for (index, raw) in items.iter().enumerate() {
        let parsed = check_event_size(raw, limits.max_event_bytes)
            .map_err(|r| (RejectReason::TooLarge, r))
            .and_then(|()| Event::parse(raw).map_err(|r| (RejectReason::Invalid, r)))
            .and_then(|e| {
                e.check_not_ahead(now_ms, lead)
                    .map(|()| e)
                    .map_err(|r| (RejectReason::Future, r))
            });
        match parsed {
            Ok(event) => {
                out.answer.accepted += 1;
                let fp = fingerprint(&event.player, &event.player, &event.id);
                if state.acknowledged.seen(&[fp])[0] || !out.written.insert(fp) {
                    out.answer.duplicates.push(index);
                    continue;
                }
                out.records.extend(records_for(&event));
            }
            Err((why, r)) => {
                match out.rejected_by.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, n)) => *n += 1,
                    None => out.rejected_by.push((why, 1)),
                }
                let r = clip_rejection(&r);
                out.records.push(dead_letter(
                    raw,
                    Some(raw.len()),
                    &r,
                    limits.max_event_bytes,
                ));
                out.answer.rejected.push(Rejected {
                    index,
                    field: r.field,
                    reason: r.reason,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_and_ndjson() {
        let arr = split_body(br#" [ {"a":1}, {"b":[2,3]} ] "#, 10).unwrap();
        assert_eq!(arr, vec![&br#"{"a":1}"#[..], &br#"{"b":[2,3]}"#[..]]);
        let nd = split_body(b"{\"a\":1}\r\n\n{\"b\":2}\n", 10).unwrap();
        assert_eq!(nd, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        for malformed in [&b"  "[..], b"[{", b"[1,]", b"[1] [2]", b"[1]\n[2]"] {
            let refused = split_body(malformed, 10);
            assert!(
                matches!(&refused, Err(Refused::Malformed(r)) if r.field == "body"),
                "{refused:?}"
            );
        }
        // An ndjson body whose first line is not an array is ndjson throughout.
        assert_eq!(split_body(b"{}\n[1]", 10).unwrap().len(), 2);
    }

    #[test]
    fn a_body_over_the_event_limit_is_counted_to_its_end_but_not_kept() {
        let ndjson = "1\n".repeat(100_000);
        let array = format!("[{}1]", "1,".repeat(99_999));
        for body in [ndjson, array] {
            assert_eq!(split_body(body.as_bytes(), 100_000).unwrap().len(), 100_000);
            let (refused, peak) = crate::fuzz::peak_allocation(|| split_body(body.as_bytes(), 10));
            let reason = "100000 events, more than the limit of 10 per request";
            assert_eq!(
                refused,
                Err(Refused::TooMany(Rejection::new("body", reason)))
            );
            assert!(peak < 1024, "{peak} bytes allocated for 10 events");
        }
    }

    #[test]
    fn an_event_is_rejected_by_size_only_above_the_limit() {
        for max in [1, 100, 65536] {
            for len in [max - 1, max, max + 1] {
                let raw = vec![b' '; len];
                let checked = check_event_size(&raw, max);
                if len <= max {
                    assert_eq!(checked, Ok(()), "{len} bytes, limit {max}");
                } else {
                    let r = checked.unwrap_err();
                    assert_eq!(r.field, "event");
                    assert_eq!(
                        r.reason,
                        format!("{len} bytes, more than the limit of {max} bytes per event")
                    );
                }
            }
        }
    }

    #[test]
    fn a_broken_ndjson_line_is_its_own_item_but_a_broken_array_is_the_whole_body() {
        let nd = split_body(b"{\"a\":1}\n{broken\n{\"b\":2}", 10).unwrap();
        assert_eq!(nd.len(), 3);
        assert_eq!(nd[1], b"{broken");
        let Err(Refused::Malformed(arr)) = split_body(br#"[{"a":1}, {broken}, {"b":2}]"#, 10)
        else {
            panic!("a broken array is malformed")
        };
        assert_eq!(arr.field, "body");
        assert!(arr.reason.starts_with("malformed json array"), "{arr}");
    }
}
