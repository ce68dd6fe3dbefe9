//! History queries: a player's or a channel's buckets, the whole game's metrics, and a
//! player's records. See docs/API.md, "History".
//!
//! Every answer is what Cassandra holds, as of the owners' last checkpoints (at most
//! `shard.checkpoint_interval_ms` behind the live counters). An entity's history is
//! answered by the partition's owner, from its cache of stored buckets
//! (`history::cache`, written through by its checkpoints) or from Cassandra; another node
//! forwards to it, and reads Cassandra itself when the owner does not answer, so every
//! node answers alike and a busy shard never slows one (the shard is not asked). Global
//! metrics merge every partition's partial bucket, from Cassandra. Empty buckets are zeros.
//!
//! Not for: building buckets (see `history`).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use tracing::warn;

use super::params::{self, bad, param};
use super::{auth, core, ApiError, Data};
use crate::cluster::routing::{get_raw, owner_api};
use crate::entity;
use crate::entity_path::history_url;
use crate::event::KINDS;
use crate::history::bucket::MatchRecords;
use crate::history::cache::Durable;
use crate::history::{ChannelBucket, GlobalBucket, PlayerBucket, Scope, Step};
use crate::kind::ShardId;
use crate::kind::ShardKind;
use crate::metrics::HistorySource;
use crate::partitioner::partition_for;
use crate::state::{Core, NodeState};

/// Fields of a player bucket, in answer order.
pub const PLAYER_FIELDS: &[&str] = &[
    "events",
    "events_by_kind",
    "sessions_started",
    "sessions",
    "playtime_ms",
    "matches",
    "kills",
    "deaths",
    "survival_secs",
    "survival_count",
    "survival_max",
    "best_placement",
    "purchases",
    "revenue",
    "levels_gained",
    "achievements",
    "chat_messages",
    "follows",
    "watch_ms",
];

/// Fields of a channel bucket, in answer order.
pub const CHANNEL_FIELDS: &[&str] = &[
    "joins",
    "leaves",
    "expirations",
    "follows",
    "unique_viewers",
    "views_ended",
    "watch_ms",
    "concurrent_avg",
    "concurrent_peak",
];

/// Metrics of `/v1/stats`.
pub const METRICS: &[&str] = &[
    "dau",
    "wau",
    "mau",
    "new_players",
    "sessions_started",
    "sessions",
    "playtime_ms",
    "matches",
    "purchases",
    "paying_players",
    "revenue",
    "arpdau",
    "concurrent",
    "events",
];

/// Windows of `/v1/players/{id}/records` are at most this long: three years (36 months).
const MAX_WINDOW_MS: i64 = 36 * MONTH_MS;
/// A month of a records window: 1/12 of 365.25 days.
const MONTH_MS: i64 = 2_629_800_000;

/// `from`, `to` and `step` of a history query, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub step: Step,
    /// Start of the first bucket.
    pub first: i64,
    /// End of the range (exclusive): buckets start before it.
    pub to: i64,
}

impl Range {
    pub fn starts(&self) -> impl Iterator<Item = i64> {
        let (step, first, to) = (self.step.millis(), self.first, self.to);
        (0..)
            .map(move |i: i64| first.saturating_add(i.saturating_mul(step)))
            .take_while(move |s| *s < to)
    }
}

/// A time parameter: RFC 3339 (`2026-12-01T10:00:00Z`) or epoch milliseconds.
pub fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            bad(
                name,
                format!(
                    "{} is neither RFC 3339 (2026-12-01T10:00:00Z) nor epoch milliseconds: {e}",
                    params::quoted(value)
                ),
            )
        })
}

/// The range of a query: `step` (default hour), `to` (default now), `from` (default 60
/// buckets before `to`); at most `max_points` buckets.
pub fn range(query: &str, now_ms: i64, max_points: usize) -> Result<Range, ApiError> {
    let step = match param(query, "step")? {
        None => Step::Hour,
        Some(s) => Step::parse(&s).ok_or_else(|| {
            bad(
                "step",
                format!("{} is not minute, hour or day", params::quoted(&s)),
            )
        })?,
    };
    let to = match param(query, "to")? {
        Some(v) => parse_time("to", &v)?,
        None => now_ms,
    };
    let from = match param(query, "from")? {
        Some(v) => parse_time("from", &v)?,
        None => to.saturating_sub(60 * step.millis()),
    };
    if from >= to {
        return Err(bad("from", format!("{from} must be before to ({to})")));
    }
    let first = step.start(from);
    let points =
        (to.saturating_sub(first) as i128 + step.millis() as i128 - 1) / step.millis() as i128;
    if points > max_points as i128 {
        return Err(bad(
            "to",
            format!(
                "from..to is {points} {} buckets; at most {max_points} (history.max_points): narrow the range or use a longer step",
                step.label()
            ),
        ));
    }
    Ok(Range { step, first, to })
}

/// The fields asked for (`fields=a,b`), all when absent; an unknown one is a 400.
pub fn fields(query: &str, known: &'static [&'static str]) -> Result<Vec<&'static str>, ApiError> {
    let Some(list) = param(query, "fields")? else {
        return Ok(known.to_vec());
    };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let Some(f) = known.iter().find(|k| **k == name) else {
            return Err(bad(
                "fields",
                format!(
                    "unknown field {}; known: {}",
                    params::quoted(name),
                    known.join(", ")
                ),
            ));
        };
        if !out.contains(f) {
            out.push(*f);
        }
    }
    if out.is_empty() {
        return Err(bad("fields", "names no field"));
    }
    Ok(out)
}

/// RFC 3339 of epoch milliseconds (UTC), or the number when out of chrono's range.
fn rfc3339(ms: i64) -> Value {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or(Value::from(ms), |t| {
        Value::from(t.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

fn revenue_json(revenue: &[([u8; 3], u128)]) -> Value {
    let map: Map<String, Value> = revenue
        .iter()
        .map(|(c, n)| (String::from_utf8_lossy(c).into_owned(), json!(n)))
        .collect();
    Value::Object(map)
}

fn kinds_json<T: Copy + Into<u64>>(by_kind: &[T]) -> Value {
    let map: Map<String, Value> = KINDS
        .iter()
        .zip(by_kind)
        .filter(|(_, n)| (**n).into() > 0)
        .map(|(k, n)| (k.to_string(), json!((*n).into())))
        .collect();
    Value::Object(map)
}

/// How one field of a bucket of type `B` is answered (the step: for averages over it).
pub type Getter<B> = fn(&B, Step) -> Value;

/// The getter of a player bucket's `field` (one of [`PLAYER_FIELDS`]).
pub fn player_getter(field: &str) -> Getter<PlayerBucket> {
    match field {
        "events" => |b, _| json!(b.events()),
        "events_by_kind" => |b, _| kinds_json(&b.events_by_kind),
        "sessions_started" => |b, _| json!(b.sessions_started),
        "sessions" => |b, _| json!(b.sessions),
        "playtime_ms" => |b, _| json!(b.playtime_ms),
        "matches" | "survival_count" => |b, _| json!(b.matches),
        "kills" => |b, _| json!(b.kills),
        "deaths" => |b, _| json!(b.deaths),
        "survival_secs" => |b, _| json!(b.survival_secs),
        "survival_max" => |b, _| json!(b.survival_max),
        "best_placement" => |b, _| json!((b.best_placement > 0).then_some(b.best_placement)),
        "purchases" => |b, _| json!(b.purchases),
        "revenue" => |b, _| revenue_json(&b.revenue),
        "levels_gained" => |b, _| json!(b.levels_gained),
        "achievements" => |b, _| json!(b.achievements),
        "chat_messages" => |b, _| json!(b.chat_messages),
        "follows" => |b, _| json!(b.follows),
        "watch_ms" => |b, _| json!(b.watch_ms),
        _ => |_, _| Value::Null,
    }
}

/// The getter of a channel bucket's `field` (one of [`CHANNEL_FIELDS`]).
pub fn channel_getter(field: &str) -> Getter<ChannelBucket> {
    match field {
        "joins" => |b, _| json!(b.joins),
        "leaves" => |b, _| json!(b.leaves),
        "expirations" => |b, _| json!(b.expirations),
        "follows" => |b, _| json!(b.follows),
        "unique_viewers" => |b, _| json!(b.viewers.as_ref().map_or(0, |s| s.estimate())),
        "views_ended" => |b, _| json!(b.views_ended),
        "watch_ms" => |b, _| json!(b.watch_ms),
        "concurrent_avg" => |b, step| json!(b.concurrent_sum as f64 / step.samples() as f64),
        "concurrent_peak" => |b, _| json!(b.concurrent_peak),
        _ => |_, _| Value::Null,
    }
}

async fn durable(
    state: &NodeState,
    core: &Core,
    kind: ShardKind,
    partition: i32,
) -> Result<Durable, ApiError> {
    let progress = core
        .store
        .read_progress(state.topic(kind), partition)
        .await
        .map_err(unavailable)?;
    Ok(progress.map(Durable::from).unwrap_or_default())
}

fn unavailable(e: anyhow::Error) -> ApiError {
    ApiError::Unavailable(format!("history: cassandra failed: {e:#}"))
}

/// Whether a bucket may still change: it ends within the grace window before the
/// watermark (or after it).
fn open(start: i64, step: Step, watermark: i64, grace_ms: i64) -> bool {
    start.saturating_add(step.millis()) > watermark.saturating_sub(grace_ms)
}

/// The first open bucket start of `range`, if any.
fn open_from(range: &Range, watermark: i64, grace_ms: i64) -> Option<i64> {
    range
        .starts()
        .find(|s| open(*s, range.step, watermark, grace_ms))
}

/// Stored buckets of one scope and id over `range`, decoded, by start, and where they came
/// from.
struct Stored<B> {
    buckets: BTreeMap<i64, B>,
    source: HistorySource,
}

/// The shard that owns `(scope, id)`.
fn shard_of(core: &Core, scope: Scope, id: &str) -> ShardId {
    let kind = match scope {
        Scope::Channel | Scope::ChannelsPartition => ShardKind::Channels,
        Scope::Player | Scope::PlayersPartition => ShardKind::Players,
    };
    (kind, partition_for(id, core.partitions(kind)))
}

/// The stored buckets of `(scope, id)` over `range`: from the owner's cache when this node
/// owns the partition and the cache holds them, else from Cassandra (kept in the cache
/// when this node owns the partition and the rows from `range.first` to now are at most
/// `history.max_points`).
async fn read<B: serde::de::DeserializeOwned>(
    state: &NodeState,
    core: &Core,
    scope: Scope,
    id: &str,
    range: &Range,
) -> Result<Stored<B>, ApiError> {
    let shard = shard_of(core, scope, id);
    let cache = &state.history_cache;
    let key = (scope, id, range.step);
    // Only entities' rows are written through; the partitions' global rows never are.
    let cached = matches!(scope, Scope::Player | Scope::Channel);
    let owner = cached && core.shard(shard).is_some();
    let answer = |buckets, source| {
        state.metrics.add_history_query(source, cache.bytes());
        Ok(Stored { buckets, source })
    };
    if owner {
        if let Some(hit) = cache.get(shard, key, range.first, range.to) {
            let buckets = hit
                .rows
                .iter()
                .map(|(start, s)| decode(*start, s))
                .collect::<Result<_, _>>()?;
            return answer(buckets, HistorySource::Cache);
        }
        let step = range.step.millis();
        let now = crate::event::now_ms();
        let kept = (state.cfg.history.max_points as i64).saturating_mul(step);
        if range.first >= now.saturating_sub(kept) {
            if let Some(fill) = cache.fill(shard, key, range.first) {
                let rows = core
                    .store
                    .read_bucket_range(scope, id, range.step, range.first, i64::MAX)
                    .await
                    .map_err(unavailable)?;
                let buckets = rows
                    .iter()
                    .filter(|(start, ..)| *start < range.to)
                    .map(|(start, _, s)| decode(*start, s))
                    .collect::<Result<_, _>>()?;
                cache.finish(fill, &rows);
                return answer(buckets, HistorySource::Fill);
            }
        }
    }
    answer(
        read_stored(core, scope, id, range).await?,
        HistorySource::Cassandra,
    )
}

/// The stored buckets of `(scope, id)` over `range`, from Cassandra.
async fn read_stored<B: serde::de::DeserializeOwned>(
    core: &Core,
    scope: Scope,
    id: &str,
    range: &Range,
) -> Result<BTreeMap<i64, B>, ApiError> {
    let rows = core
        .store
        .read_bucket_range(scope, id, range.step, range.first, range.to)
        .await
        .map_err(unavailable)?;
    rows.iter().map(|(start, _, s)| decode(*start, s)).collect()
}

fn decode<B: serde::de::DeserializeOwned>(start: i64, state: &[u8]) -> Result<(i64, B), ApiError> {
    entity::decode::<B>(state)
        .map(|b| (start, b))
        .map_err(|e| ApiError::Internal(format!("history: stored bucket does not decode: {e:#}")))
}

/// The header naming where a history answer's stored buckets came from (`hit`, `fill`,
/// `cassandra`; see [`HistorySource`]).
pub const HISTORY_SOURCE: &str = "x-tally-history-source";

fn grace_ms(state: &NodeState) -> i64 {
    state.cfg.history.grace_secs.saturating_mul(1000) as i64
}

/// `GET /v1/players/{id}/history` and `/v1/channels/{id}/history`: answered by the owner
/// (forwarded there, as live queries are), else from Cassandra.
async fn entity_history(
    state: &NodeState,
    req: &HttpRequest,
    kind: ShardKind,
    id: String,
) -> Result<HttpResponse, ApiError> {
    params::path_id(kind, &id)?;
    let query = req.query_string();
    let known = match kind {
        ShardKind::Players => PLAYER_FIELDS,
        ShardKind::Channels => CHANNEL_FIELDS,
    };
    let fields = fields(query, known)?;
    let range = range(query, crate::event::now_ms(), state.cfg.history.max_points)?;
    let core = core(state)?;
    let partition = partition_for(&id, core.partitions(kind));
    let shard = (kind, partition);
    let local = core.shard(shard).is_some();
    if !local && !auth::caller(req).is_peer() {
        if let Some(answer) = forward(state, core, (shard, &id), "history", query).await {
            return Ok(answer);
        }
    }
    let q = EntityQuery {
        kind,
        id: &id,
        range,
        fields,
        partition,
        grace: grace_ms(state),
    };
    // The owner knows its partition's progress; another node reads it beside the buckets.
    let owned = state.history_cache.durable(shard).filter(|_| local);
    let progress = async {
        match owned {
            Some(d) => Ok(d),
            None => durable(state, core, kind, partition).await,
        }
    };
    let (body, source) = match kind {
        ShardKind::Players => {
            entity_answer(state, core, Scope::Player, &q, player_getter, progress).await?
        }
        ShardKind::Channels => {
            entity_answer(state, core, Scope::Channel, &q, channel_getter, progress).await?
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((HISTORY_SOURCE, source.label()))
        .content_type("application/json")
        .body(body))
}

/// An entity history query, checked.
struct EntityQuery<'a> {
    kind: ShardKind,
    id: &'a str,
    range: Range,
    fields: Vec<&'static str>,
    partition: i32,
    grace: i64,
}

/// The JSON answer to `q` and where its buckets came from: the buckets (of `scope`,
/// answered by the getters `getter` resolves) read beside the partition's `progress`.
async fn entity_answer<B: serde::de::DeserializeOwned + Default>(
    state: &NodeState,
    core: &Core,
    scope: Scope,
    q: &EntityQuery<'_>,
    getter: fn(&str) -> Getter<B>,
    progress: impl std::future::Future<Output = Result<Durable, ApiError>>,
) -> Result<(Vec<u8>, HistorySource), ApiError> {
    let (durable, stored) =
        futures::try_join!(progress, read::<B>(state, core, scope, q.id, &q.range))?;
    let buckets = BucketsOut {
        stored: stored.buckets,
        range: q.range,
        open: (durable.watermark, q.grace),
        getters: q.fields.iter().map(|f| (*f, getter(f))).collect(),
    };
    let out = HistoryOut {
        head: head(q, durable),
        buckets,
    };
    Ok((
        to_json(out, answer_size(&q.range, q.fields.len()))?,
        stored.source,
    ))
}

/// The answer as JSON bytes, written into room for about `size_hint` bytes (a history
/// answer runs to megabytes: growing the buffer by doubling copied it over and over).
fn to_json(out: impl serde::Serialize, size_hint: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::with_capacity(size_hint.min(64 << 20));
    serde_json::to_writer(&mut body, &out)
        .map_err(|e| ApiError::Internal(format!("history: answer does not serialize: {e}")))?;
    Ok(body)
}

/// About the bytes of an answer over `range` with `fields` fields per bucket: a bucket's
/// start, time and open flag take about 60, a field about 20.
fn answer_size(range: &Range, fields: usize) -> usize {
    range.starts().count().saturating_mul(64 + 20 * fields) + 512
}

/// The scalar members of an entity's history answer, in order.
fn head(q: &EntityQuery<'_>, durable: Durable) -> Vec<(&'static str, Value)> {
    vec![
        (q.kind.entity_name(), json!(q.id)),
        ("step", json!(q.range.step.label())),
        ("from", json!(q.range.first)),
        ("to", json!(q.range.to)),
        ("fields", json!(q.fields)),
        ("watermark", json!(durable.watermark)),
        ("durable_offset", json!(durable.offset)),
        ("partition", json!(q.partition)),
        (
            "open_from",
            json!(open_from(&q.range, durable.watermark, q.grace)),
        ),
    ]
}

/// The owner's answer to this history (`what`: `history`) or records (`records`) query,
/// passed on as it came: a 200 or a 400 (the same parameters are wrong everywhere). None
/// when there is no other owner or it did not answer so: then this node answers from
/// Cassandra.
async fn forward(
    state: &NodeState,
    core: &Core,
    (shard, id): (ShardId, &str),
    what: &str,
    query: &str,
) -> Option<HttpResponse> {
    let addr = owner_api(core, shard)?;
    state.metrics.add_forwarded(shard.0);
    let answer = match history_url(state.api_scheme(), &addr, (shard.0, id), what, query) {
        Ok(url) => get_raw(state, url).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok((status @ (200 | 400), headers, body)) => {
            let status = actix_web::http::StatusCode::from_u16(status).ok()?;
            let mut out = HttpResponse::build(status);
            // What the answer is and where the owner took it from, as the owner said.
            for name in ["content-type", HISTORY_SOURCE] {
                if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                    out.insert_header((name, v.to_string()));
                }
            }
            Some(out.body(body))
        }
        Ok((status, _, body)) => {
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            warn!(%addr, status, %body, "owner answered a history query with an error; answering from cassandra");
            None
        }
        Err(e) => {
            warn!(%addr, error = %e, "owner unreachable for a history query; answering from cassandra");
            None
        }
    }
}

/// Every bucket of `range` of one entity, `stored` or empty, with the fields `getters`
/// answer; `(watermark, grace)` say which are open. Serialized as it is written, a bucket
/// at a time, with no JSON tree and no string per bucket built first.
struct BucketsOut<B> {
    stored: BTreeMap<i64, B>,
    range: Range,
    open: (i64, i64),
    getters: Vec<(&'static str, Getter<B>)>,
}

impl<B: Default> serde::Serialize for BucketsOut<B> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let empty = B::default();
        let step = self.range.step;
        let (watermark, grace) = self.open;
        let mut stored = self.stored.iter().peekable();
        let mut seq = ser.serialize_seq(None)?;
        for start in self.range.starts() {
            // Both ascend: the stored buckets are walked once.
            while stored.next_if(|(s, _)| **s < start).is_some() {}
            let b = stored
                .next_if(|(s, _)| **s == start)
                .map_or(&empty, |(_, b)| b);
            seq.serialize_element(&BucketOut {
                start,
                open: open(start, step, watermark, grace),
                bucket: b,
                step,
                getters: &self.getters,
            })?;
        }
        seq.end()
    }
}

/// One bucket of an entity's history answer: `start`, `time`, `open`, then the fields.
struct BucketOut<'a, B> {
    start: i64,
    open: bool,
    bucket: &'a B,
    step: Step,
    getters: &'a [(&'static str, Getter<B>)],
}

impl<B> serde::Serialize for BucketOut<'_, B> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(3 + self.getters.len()))?;
        m.serialize_entry("start", &self.start)?;
        match utc_secs(self.start) {
            Some(time) => m.serialize_entry("time", time.as_str())?,
            None => m.serialize_entry("time", &rfc3339(self.start))?,
        }
        m.serialize_entry("open", &self.open)?;
        for (name, get) in self.getters {
            m.serialize_entry(name, &get(self.bucket, self.step))?;
        }
        m.end()
    }
}

/// An entity's history answer: the scalar members in order, then `buckets`.
struct HistoryOut<T> {
    head: Vec<(&'static str, Value)>,
    buckets: T,
}

impl<T: serde::Serialize> serde::Serialize for HistoryOut<T> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(self.head.len() + 1))?;
        for (k, v) in &self.head {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("buckets", &self.buckets)?;
        m.end()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of epoch milliseconds (UTC, seconds truncated) for the years
/// 0000-9999, written without allocating; what [`rfc3339`] writes for them.
fn utc_secs(ms: i64) -> Option<TimeText> {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to the civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    Some(TimeText(out))
}

/// The text [`utc_secs`] wrote: ASCII digits and separators.
struct TimeText([u8; 20]);

impl TimeText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}
pub async fn player_history(
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    entity_history(&state, &req, ShardKind::Players, path.into_inner()).await
}

pub async fn channel_history(
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    entity_history(&state, &req, ShardKind::Channels, path.into_inner()).await
}

/// Every partition's global buckets over `range`, merged by start; and the lowest
/// watermark among the partitions.
async fn global(
    state: &NodeState,
    core: &Core,
    kind: ShardKind,
    range: &Range,
) -> Result<(BTreeMap<i64, GlobalBucket>, i64), ApiError> {
    let scope = match kind {
        ShardKind::Players => Scope::PlayersPartition,
        ShardKind::Channels => Scope::ChannelsPartition,
    };
    let partitions = core.partitions(kind);
    let parts = futures::future::join_all((0..partitions).map(|p| async move {
        let rows: BTreeMap<i64, GlobalBucket> =
            read_stored(core, scope, &p.to_string(), range).await?;
        let d = durable(state, core, kind, p).await?;
        Ok::<_, ApiError>((rows, d.watermark))
    }))
    .await;
    let mut merged: BTreeMap<i64, GlobalBucket> = BTreeMap::new();
    let mut watermark = i64::MAX;
    for part in parts {
        let (rows, w) = part?;
        watermark = watermark.min(w);
        for (start, b) in rows {
            merged.entry(start).or_default().merge(&b);
        }
    }
    Ok((merged, if partitions == 0 { 0 } else { watermark }))
}

/// `GET /v1/stats?metric=...`
pub async fn stats(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = req.query_string();
    let metric = param(query, "metric")?
        .ok_or_else(|| bad("metric", format!("missing; one of {}", METRICS.join(", "))))?;
    let metric: &'static str = METRICS.iter().find(|m| **m == metric).ok_or_else(|| {
        bad(
            "metric",
            format!(
                "unknown metric {}; known: {}",
                params::quoted(&metric),
                METRICS.join(", ")
            ),
        )
    })?;
    let range = range(query, crate::event::now_ms(), state.cfg.history.max_points)?;
    let days = match metric {
        "wau" => 7,
        "mau" => 30,
        _ => 1,
    };
    if (days > 1 || metric == "arpdau") && range.step != Step::Day {
        return Err(bad(
            "step",
            format!("{metric} is a daily metric: use step=day"),
        ));
    }
    let core = core(&state)?;
    let kind = if metric == "concurrent" {
        ShardKind::Channels
    } else {
        ShardKind::Players
    };
    // WAU and MAU of a day need the days before it.
    let read_range = Range {
        first: range.first.saturating_sub((days - 1) * Step::Day.millis()),
        ..range
    };
    let (buckets, watermark) = global(&state, core, kind, &read_range).await?;
    let grace = grace_ms(&state);
    let empty = GlobalBucket::default();
    let step = range.step;
    let out: Vec<Value> = range
        .starts()
        .map(|s| {
            let b = buckets.get(&s).unwrap_or(&empty);
            let value = match metric {
                "dau" => json!(b.active),
                "wau" | "mau" => {
                    let mut union = crate::history::sketch::Sketch::new();
                    for d in 0..days {
                        if let Some(p) = buckets.get(&(s - d * Step::Day.millis())).and_then(|b| b.players.as_deref()) {
                            union.merge(p);
                        }
                    }
                    json!(union.estimate())
                }
                "new_players" => json!(b.new_players),
                "sessions_started" => json!(b.sessions_started),
                "sessions" => json!(b.sessions),
                "playtime_ms" => json!(b.playtime_ms),
                "matches" => json!(b.matches),
                "purchases" => json!(b.purchases),
                "paying_players" => json!(b.paying),
                "revenue" => revenue_json(&b.revenue),
                "arpdau" => {
                    let map: Map<String, Value> = b
                        .revenue
                        .iter()
                        .map(|(c, n)| {
                            let per = if b.active == 0 { 0.0 } else { *n as f64 / b.active as f64 };
                            (String::from_utf8_lossy(c).into_owned(), json!(per))
                        })
                        .collect();
                    Value::Object(map)
                }
                "concurrent" => {
                    let peak = b.concurrent.iter().copied().max().unwrap_or(0);
                    let sum: u64 = b.concurrent.iter().sum();
                    json!({ "peak": peak, "avg": sum as f64 / step.samples() as f64 })
                }
                "events" => kinds_json(&b.events_by_kind),
                _ => Value::Null,
            };
            json!({ "start": s, "time": rfc3339(s), "open": open(s, step, watermark, grace), "value": value })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "metric": metric,
        "step": step.label(),
        "from": range.first,
        "to": range.to,
        "approximate": matches!(metric, "wau" | "mau"),
        "watermark": watermark,
        "open_from": open_from(&range, watermark, grace),
        "buckets": out,
    })))
}

/// A records window: `<n>h`, `<n>d` or `<n>mo` (a month is 1/12 of 365.25 days).
pub fn window(value: &str) -> Result<i64, ApiError> {
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: i64 = digits.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        bad(
            "window",
            format!(
                "{} must be a positive number and h, d or mo, like 24h, 30d or 24mo",
                params::quoted(value)
            ),
        )
    })?;
    let unit_ms = match unit {
        "h" => 3_600_000,
        "d" => 86_400_000,
        "mo" => MONTH_MS,
        _ => {
            return Err(bad(
                "window",
                format!("{}: the unit must be h, d or mo", params::quoted(value)),
            ))
        }
    };
    let ms = n.saturating_mul(unit_ms);
    if ms > MAX_WINDOW_MS {
        return Err(bad(
            "window",
            format!("{} is longer than 3 years", params::quoted(value)),
        ));
    }
    Ok(ms)
}

fn record_json(r: &Option<crate::history::bucket::MatchRecord>) -> Value {
    match r {
        Some(r) => {
            json!({ "value": r.value, "match_id": r.match_id.as_str(), "ts": r.ts, "time": rfc3339(r.ts) })
        }
        None => Value::Null,
    }
}

/// `GET /v1/players/{id}/records?window=24h|30d|24mo`
pub async fn player_records(
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    params::path_id(ShardKind::Players, &id)?;
    let query = req.query_string();
    let window_ms = window(&param(query, "window")?.unwrap_or_else(|| "30d".into()))?;
    let now = match param(query, "now")? {
        Some(v) => parse_time("now", &v)?,
        None => crate::event::now_ms(),
    };
    let core = core(&state)?;
    let shard = shard_of(core, Scope::Player, &id);
    if core.shard(shard).is_none() && !auth::caller(&req).is_peer() {
        if let Some(answer) = forward(&state, core, (shard, &id), "records", query).await {
            return Ok(answer);
        }
    }
    let since = now.saturating_sub(window_ms);
    // Matches: hour buckets for windows up to two days, day buckets beyond.
    let step = if window_ms <= 2 * 86_400_000 {
        Step::Hour
    } else {
        Step::Day
    };
    let matches_range = Range {
        step,
        first: step.start(since),
        to: now.saturating_add(1),
    };
    let days_range = Range {
        step: Step::Day,
        first: Step::Day.start(since),
        to: now.saturating_add(1),
    };
    let matches = read(&state, core, Scope::Player, &id, &matches_range).await?;
    let source = matches.source;
    let by_step: BTreeMap<i64, PlayerBucket> = matches.buckets;
    let by_day: BTreeMap<i64, PlayerBucket> = if step == Step::Day {
        by_step.clone()
    } else {
        read(&state, core, Scope::Player, &id, &days_range)
            .await?
            .buckets
    };
    let mut best = MatchRecords::default();
    for b in by_step.values() {
        if let Some(r) = &b.records {
            let mut inside = (**r).clone();
            for rec in [
                &mut inside.most_kills,
                &mut inside.longest_survival,
                &mut inside.best_placement,
            ] {
                if rec.as_ref().is_some_and(|r| r.ts < since || r.ts > now) {
                    *rec = None;
                }
            }
            best.merge(&inside);
        }
    }
    let best_day = |value: fn(&PlayerBucket) -> u64| -> Value {
        let mut top: Option<(i64, u64)> = None;
        for (start, b) in &by_day {
            let v = value(b);
            if v > 0 && top.is_none_or(|(_, t)| v > t) {
                top = Some((*start, v));
            }
        }
        top.map_or(
            Value::Null,
            |(s, v)| json!({ "day": s, "time": rfc3339(s), "value": v }),
        )
    };
    Ok(HttpResponse::Ok()
        .insert_header((HISTORY_SOURCE, source.label()))
        .json(json!({
            "player": id,
            "window_ms": window_ms,
            "from": since,
            "to": now,
            "best_match": {
                "most_kills": record_json(&best.most_kills),
                "longest_survival": record_json(&best.longest_survival),
                "best_placement": record_json(&best.best_placement),
            },
            "best_day": {
                "kills": best_day(|b| b.kills),
                "matches": best_day(|b| b.matches as u64),
                "playtime_ms": best_day(|b| b.playtime_ms),
                "events": best_day(|b| b.events()),
            },
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_times_are_written_as_chrono_writes_them() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut cases = vec![
            0,
            -1,
            999,
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // before year 0: chrono's form
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01: chrono's form
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-02-28 (2100 is no leap year)
            i64::MIN,
            i64::MAX,
        ];
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            cases.push((rng % 600_000_000_000_000) as i64 - 200_000_000_000_000);
        }
        for ms in cases {
            let chrono = rfc3339(ms);
            match utc_secs(ms) {
                Some(t) => assert_eq!(json!(t.as_str()), chrono, "{ms}"),
                None => assert!(
                    !(-62_167_219_200_000..253_402_300_800_000).contains(&ms),
                    "{ms}: {chrono}"
                ),
            }
        }
    }

    #[test]
    fn times_are_rfc3339_or_epoch_milliseconds() {
        assert_eq!(
            parse_time("from", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("from", "2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000_000
        );
        let e = parse_time("to", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("to: \"yesterday\""), "{e}");
    }

    #[test]
    fn a_range_names_what_is_wrong_and_caps_its_points() {
        let r = range("step=minute&from=60000&to=180001", 0, 100).unwrap();
        assert_eq!(
            r.starts().collect::<Vec<_>>(),
            vec![60_000, 120_000, 180_000]
        );
        let err = |q: &str| range(q, 1_000_000, 10).unwrap_err().to_string();
        assert!(err("step=week").starts_with("step:"));
        assert!(err("from=5&to=5").starts_with("from:"));
        assert!(err("from=x").starts_with("from:"));
        assert!(
            err("step=minute&from=0&to=660000").starts_with("to:"),
            "11 buckets"
        );
        assert!(
            range("step=minute&from=0&to=600000", 0, 10).is_ok(),
            "10 buckets"
        );
        assert!(err("step=hour&step=day").starts_with("step: given more than once"));
        // Defaults: hourly, the 60 hours before now.
        let d = range("", 100 * 3_600_000, 100).unwrap();
        assert_eq!(
            (d.step, d.first, d.to),
            (Step::Hour, 40 * 3_600_000, 100 * 3_600_000)
        );
        // Extremes do not overflow.
        assert!(range(&format!("from={}&to={}", i64::MIN, i64::MAX), 0, 10).is_err());
    }

    #[test]
    fn fields_are_checked_against_the_known_ones() {
        assert_eq!(
            fields("fields=kills,deaths,kills", PLAYER_FIELDS).unwrap(),
            vec!["kills", "deaths"]
        );
        assert_eq!(
            fields("", CHANNEL_FIELDS).unwrap().len(),
            CHANNEL_FIELDS.len()
        );
        assert!(fields("fields=kills,bogus", PLAYER_FIELDS)
            .unwrap_err()
            .to_string()
            .starts_with("fields: unknown field \"bogus\""));
        assert!(fields("fields=,", PLAYER_FIELDS).is_err());
    }

    #[test]
    fn windows_take_hours_days_and_months() {
        assert_eq!(window("24h").unwrap(), 86_400_000);
        assert_eq!(window("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(window("24mo").unwrap(), 24 * 2_629_800_000);
        // Three years: 36 months, 1095.75 days, 26298 hours.
        assert_eq!(window("36mo").unwrap(), 94_672_800_000);
        assert_eq!(window("1095d").unwrap(), 1095 * 86_400_000);
        assert_eq!(window("26298h").unwrap(), 94_672_800_000);
        for bad in [
            "",
            "0d",
            "h",
            "5w",
            "-1d",
            "37mo",
            "1096d",
            "26299h",
            "99999999999999999999d",
        ] {
            assert!(
                window(bad).unwrap_err().to_string().starts_with("window:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bucket_is_open_while_it_ends_inside_the_grace_window() {
        assert!(open(0, Step::Minute, 60_000, 1));
        assert!(!open(0, Step::Minute, 60_001, 1));
        assert!(open(i64::MAX - 5, Step::Day, 0, 0));
    }
}
