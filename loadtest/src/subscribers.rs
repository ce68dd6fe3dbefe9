//! Subscribers: N WebSocket clients on the nodes' `GET /v1/subscribe` (docs/API.md, "Push"),
//! each subscribed to one player, channel or top-N view of the run while the load runs.
//! They measure push latency (an event's own time, which the load stamps with its send
//! time, to the frame that first shows it) and, once the cluster has drained, every
//! client's last frame is compared with the verified final state.
//!
//! - Pure parts, tested here: the mix of target kinds ([`Mix`]), the plan of targets
//!   ([`plan`]), the subscribe message and subscription name of a target, frames
//!   ([`parse_frame`]), what a frame tells about latency ([`Watch::take`]), the wanted final
//!   state ([`want`], [`model_top`]) and the comparison ([`compare`]).
//! - [`Subscribers`]: the clients, and optionally one more on the latency probes' player,
//!   whose push latency is that of the very events the probes time. Connections are
//!   spread out (at most `connect_rate` a second, at most `connect_concurrency`
//!   handshakes in flight), a dropped socket is reconnected a bounded number of times,
//!   and every wait has a deadline.
//!
//! Not for: Server-Sent Events (curl reads those), the `cluster` view, or measuring the
//! node itself ([`crate::node_usage`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tally_node::kind::ShardKind;
use tally_node::shard::{sort_top, TopBy, TopEntry};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::players::Expected;
use crate::probe::Latency;

/// Connection attempts per client over a whole run (the first one included), with pauses
/// growing to `MAX_PAUSE`: a node restarting for up to about a minute is waited for.
const MAX_ATTEMPTS: u32 = 30;
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// A handshake and its snapshot must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Closing every socket at the end may take this long; then the rest are dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Problems kept word for word (the counters stay exact).
const MAX_PROBLEMS: usize = 50;
/// The top-N views subscribers take, in turn.
const TOP_VIEWS: [(TopBy, &str); 3] = [
    (TopBy::Concurrent, "concurrent"),
    (TopBy::Peak, "peak"),
    (TopBy::Follows, "follows"),
];
/// Channels in each top-N view subscribed to.
pub const TOP_LIMIT: usize = 10;

/// Shares of the subscribers per target kind: `players=60,channels=35,top=5`. Weights,
/// not necessarily summing to 100; a kind left out gets none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub players: u32,
    pub channels: u32,
    pub top: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            players: 0,
            channels: 0,
            top: 0,
        };
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("expected KIND=WEIGHT, got {part:?}"))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("{key}: expected a whole number, got {value:?}"))?;
            let slot = match key.trim() {
                "players" => &mut mix.players,
                "channels" => &mut mix.channels,
                "top" => &mut mix.top,
                other => {
                    return Err(format!(
                        "unknown kind {other:?}: expected players, channels or top"
                    ))
                }
            };
            if seen.contains(&key) {
                return Err(format!("{key} given twice"));
            }
            seen.push(key);
            *slot = value;
        }
        if mix.total() == 0 {
            return Err(format!("no kind has a weight above 0 in {s:?}"));
        }
        Ok(mix)
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "players={},channels={},top={}",
            self.players, self.channels, self.top
        )
    }
}

impl Mix {
    fn total(&self) -> u64 {
        self.players as u64 + self.channels as u64 + self.top as u64
    }

    /// (players, channels, top) subscribers out of `n`: proportional, remainders to the
    /// largest fractions (ties in the order players, channels, top), summing to `n`.
    pub fn split(&self, n: usize) -> (usize, usize, usize) {
        let weights = [self.players, self.channels, self.top];
        let total = self.total();
        let exact: Vec<(u64, u64)> = weights
            .iter()
            .map(|&w| {
                let x = n as u64 * w as u64;
                (x / total, x % total)
            })
            .collect();
        let mut counts: Vec<u64> = exact.iter().map(|e| e.0).collect();
        let mut left = n as u64 - counts.iter().sum::<u64>();
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(exact[i].1));
        for i in order {
            if left == 0 {
                break;
            }
            if weights[i] > 0 {
                counts[i] += 1;
                left -= 1;
            }
        }
        (counts[0] as usize, counts[1] as usize, counts[2] as usize)
    }
}

/// What one subscriber subscribes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Player(String),
    Channel(String),
    Top { by: TopBy, limit: usize },
}

/// The name of a top-N ordering, as the API spells it.
pub fn by_name(by: TopBy) -> &'static str {
    TOP_VIEWS
        .iter()
        .find(|(b, _)| *b == by)
        .map(|(_, name)| *name)
        .expect("every TopBy has a name")
}

impl Target {
    /// The subscription's name, as frames carry it: `player:<id>`, `channel:<id>`,
    /// `top:<by>:<limit>`.
    pub fn subscription(&self) -> String {
        match self {
            Target::Player(id) => format!("player:{id}"),
            Target::Channel(id) => format!("channel:{id}"),
            Target::Top { by, limit } => format!("top:{}:{limit}", by_name(*by)),
        }
    }

    /// The client's text message that subscribes to it.
    pub fn subscribe_message(&self) -> String {
        let target = match self {
            Target::Player(id) => json!({ "player": id }),
            Target::Channel(id) => json!({ "channel": id }),
            Target::Top { by, limit } => json!({ "top": { "by": by_name(*by), "limit": limit } }),
        };
        json!({ "subscribe": target }).to_string()
    }

    /// The time of the latest event a state shows, milliseconds since the epoch: a player's
    /// `last_seen`, a channel's `last_event`; None for a top-N view (or no state). Read
    /// from the state's text without building it (the load tester reads thousands of
    /// frames a second on the cores it measures).
    pub fn event_time(&self, data: &RawValue) -> Option<i64> {
        #[derive(Deserialize)]
        struct Times {
            last_seen: Option<i64>,
            last_event: Option<i64>,
        }
        if matches!(self, Target::Top { .. }) {
            return None;
        }
        let times: Times = serde_json::from_str::<Option<Times>>(data.get()).ok()??;
        match self {
            Target::Player(_) => times.last_seen,
            Target::Channel(_) => times.last_event,
            Target::Top { .. } => None,
        }
    }
}

/// The players and channels of a run, by index: subscribers pick from them.
pub struct Population<'a> {
    pub players: u64,
    pub channels: u64,
    pub player_id: &'a dyn Fn(u64) -> String,
    pub channel_id: &'a dyn Fn(u64) -> String,
}

/// `n` targets by `mix`, reproducible from `seed`: distinct players and channels chosen at
/// random while there are enough (then each is taken again, in turn), the top-N views by
/// concurrent, peak and follows in turn, the kinds shuffled together so connections and
/// nodes get a bit of each.
pub fn plan(n: usize, mix: Mix, seed: u64, population: &Population) -> Vec<Target> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (np, nc, nt) = mix.split(n);
    let mut pick = |wanted: usize, of: u64| -> Vec<u64> {
        if of == 0 {
            return Vec::new();
        }
        let distinct = rand::seq::index::sample(&mut rng, of as usize, wanted.min(of as usize));
        let distinct: Vec<u64> = distinct.into_iter().map(|i| i as u64).collect();
        (0..wanted).map(|i| distinct[i % distinct.len()]).collect()
    };
    let mut targets: Vec<Target> = pick(np, population.players)
        .into_iter()
        .map(|i| Target::Player((population.player_id)(i)))
        .collect();
    targets.extend(
        pick(nc, population.channels)
            .into_iter()
            .map(|i| Target::Channel((population.channel_id)(i))),
    );
    targets.extend((0..nt).map(|i| Target::Top {
        by: TOP_VIEWS[i % TOP_VIEWS.len()].0,
        limit: TOP_LIMIT,
    }));
    targets.shuffle(&mut rng);
    targets
}

/// A frame the server sends.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A snapshot or an update: the subscription's state.
    State {
        snapshot: bool,
        subscription: String,
        gap: bool,
        /// The state's JSON text, as sent.
        data: Box<RawValue>,
    },
    Unsubscribed {
        subscription: String,
    },
    Error {
        field: String,
        error: String,
    },
}

/// A frame as sent: every kind's fields in one flat struct, read in one pass (an
/// internally tagged enum would buffer each frame before reading it: the load tester reads
/// thousands a second).
#[derive(Deserialize)]
struct WireFrame {
    #[serde(rename = "type")]
    kind: String,
    subscription: Option<String>,
    #[serde(default)]
    gap: bool,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    field: String,
    error: Option<String>,
}

/// JSON `null`, as a raw value.
fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// Parses a text frame; the error names what is wrong and quotes the frame's start.
pub fn parse_frame(text: &str) -> Result<Frame, String> {
    let unreadable = |why: &dyn std::fmt::Display| {
        let start: String = text.chars().take(120).collect();
        format!("unreadable frame ({why}): {start}")
    };
    let wire: WireFrame = serde_json::from_str(text).map_err(|e| unreadable(&e))?;
    let subscription = || {
        wire.subscription
            .clone()
            .ok_or_else(|| unreadable(&format!("a {} frame without a subscription", wire.kind)))
    };
    Ok(match wire.kind.as_str() {
        "snapshot" | "update" => Frame::State {
            snapshot: wire.kind == "snapshot",
            subscription: subscription()?,
            gap: wire.gap,
            data: wire.data.unwrap_or_else(null),
        },
        "unsubscribed" => Frame::Unsubscribed {
            subscription: subscription()?,
        },
        "error" => Frame::Error {
            error: wire
                .error
                .ok_or_else(|| unreadable(&"an error frame without an error"))?,
            field: wire.field,
        },
        other => return Err(unreadable(&format!("unknown type {other:?}"))),
    })
}

/// What one subscriber has seen of its subscription.
#[derive(Debug, Default)]
pub struct Watch {
    /// State frames received.
    pub frames: u64,
    /// The `data` of the latest snapshot or update, as sent; None before the first.
    pub last: Option<Box<RawValue>>,
    /// The newest event time any frame showed.
    pub newest_event_ms: Option<i64>,
    /// A socket is open and subscribed.
    pub live: bool,
    /// Why the last socket ended, if it did.
    pub last_error: Option<String>,
}

impl Watch {
    /// Takes a state frame received at `received_us` (microseconds since the epoch).
    /// Returns its push latency in microseconds when it is an update showing an event newer
    /// than any frame before: the receive time minus that event's time (the load stamps
    /// events in whole milliseconds, so this errs up to 1 ms high). A snapshot never counts:
    /// it shows the state when the client subscribed, not a push.
    pub fn take(
        &mut self,
        target: &Target,
        snapshot: bool,
        data: Box<RawValue>,
        received_us: i64,
    ) -> Option<i64> {
        self.frames += 1;
        let event = target.event_time(&data);
        let newer = match (event, self.newest_event_ms) {
            (Some(t), Some(seen)) => t > seen,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            self.newest_event_ms = event;
        }
        self.last = Some(data);
        let t = event?;
        (newer && !snapshot).then(|| (received_us - t * 1000).max(0))
    }
}

/// The final state a subscription must show.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// A player's or channel's view, or None (`data: null`) for one the run never touched.
    Entity(Option<Value>),
    /// The `channels` of a top-N view.
    Top(Value),
}

/// The top-N of the expected state: every expected channel's entry (concurrent viewers at
/// its partition's watermark), ordered as the node orders them.
pub fn model_top(expected: &Expected, by: TopBy, limit: usize) -> Vec<TopEntry> {
    let mut all: Vec<TopEntry> = expected
        .channels
        .iter()
        .map(|(id, c)| TopEntry {
            id: id.clone(),
            concurrent: c.concurrent_at(expected.channel_watermark(id), expected.viewer_timeout_ms),
            peak: c.counters.peak_concurrent,
            follows: c.counters.follows,
        })
        .collect();
    sort_top(&mut all, by);
    all.truncate(limit);
    all
}

/// What `target` must show at the end. A player or channel: its expected view (the one
/// the verifier compares queries with). A top-N view: the expected model's when the
/// node's own answer (`answer`: the `channels` of `GET /v1/channels/top`, fetched after the
/// drain) names only channels of this run (`prefix`); otherwise the topics hold other
/// runs' channels and the node's answer is what the frames must equal. The string says
/// why a top-N view was not checked against the model, or where the node's answer and
/// the model differ.
pub fn want(
    target: &Target,
    expected: &Expected,
    prefix: &str,
    answer: Option<&Value>,
) -> (Want, Option<String>) {
    match target {
        Target::Player(id) => (
            Want::Entity(crate::verify::expected_view(
                expected,
                ShardKind::Players,
                id,
            )),
            None,
        ),
        Target::Channel(id) => (
            Want::Entity(crate::verify::expected_view(
                expected,
                ShardKind::Channels,
                id,
            )),
            None,
        ),
        Target::Top { by, limit } => {
            let model = serde_json::to_value(model_top(expected, *by, *limit))
                .expect("top entries serialize");
            let name = target.subscription();
            let Some(answer) = answer else {
                return (Want::Top(model), None);
            };
            let foreign = answer.as_array().is_none_or(|a| {
                a.iter()
                    .any(|e| !e["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
            });
            if foreign {
                let note = format!(
                    "{name}: the node's answer holds channels of other runs: frames compared with it, not with the model"
                );
                (Want::Top(answer.clone()), Some(note))
            } else if *answer != model {
                let note = format!("{name}: the node answers {answer}, the model {model}");
                (Want::Top(model), Some(note))
            } else {
                (Want::Top(model), None)
            }
        }
    }
}

/// What each target must show at the end ([`want`]), fetching the node's top-N answers
/// (once per view) now that the cluster has drained; and the notes on top-N views.
pub async fn final_states(
    targets: &[Target],
    expected: &Expected,
    prefix: &str,
    nodes: &[String],
    client: &reqwest::Client,
) -> anyhow::Result<(Vec<Want>, Vec<String>)> {
    let mut answers: Vec<(String, Value)> = Vec::new();
    for t in targets {
        let Target::Top { by, limit } = t else {
            continue;
        };
        let name = t.subscription();
        if answers.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let path = format!("/v1/channels/top?by={}&limit={limit}", by_name(*by));
        let answer = crate::verify::fetch(client, nodes, 0, &path)
            .await
            .map_err(|e| anyhow::anyhow!("top-N for the final check: {e}"))?;
        answers.push((name, answer["channels"].clone()));
    }
    let mut notes = Vec::new();
    let wants = targets
        .iter()
        .map(|t| {
            let name = t.subscription();
            let answer = answers.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
            let (want, note) = want(t, expected, prefix, answer);
            if let Some(note) = note.filter(|n| !notes.contains(n)) {
                notes.push(note);
            }
            want
        })
        .collect();
    Ok((wants, notes))
}

/// Differences between what a subscriber saw last and what it must show.
pub fn compare(target: &Target, want: &Want, watch: &Watch) -> Vec<String> {
    let name = target.subscription();
    let Some(last) = &watch.last else {
        return vec![format!("{name}: no frame received")];
    };
    let last: Value = match serde_json::from_str(last.get()) {
        Ok(v) => v,
        Err(e) => return vec![format!("{name}: the last state is not JSON: {e}")],
    };
    let last = &last;
    match want {
        Want::Entity(None) if last.is_null() => Vec::new(),
        Want::Entity(None) => vec![format!("{name}: want no state (null), got {last}")],
        Want::Entity(Some(w)) if last.is_null() => vec![format!("{name}: want {w}, got null")],
        Want::Entity(Some(w)) => crate::verify::diff(&name, w, last),
        Want::Top(w) if last["channels"] == *w => Vec::new(),
        Want::Top(w) => vec![format!(
            "{name}.channels: want {w}, got {}",
            last["channels"]
        )],
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct SubscribersOpts {
    /// Nodes (`host:port`); client i starts on node i mod len and moves on when it
    /// reconnects.
    pub nodes: Vec<String>,
    /// Sent as `Authorization: Bearer` (scope `read`).
    pub api_key: Option<String>,
    /// New connections per second, at most.
    pub connect_rate: f64,
    /// Handshakes (up to the snapshot) in flight, at most.
    pub connect_concurrency: usize,
    /// Every subscriber must have its snapshot within this.
    pub connect_timeout: Duration,
    /// The nodes' `push.interval_ms`: the final check waits a few.
    pub push_interval: Duration,
    /// One more subscriber, to the latency probes' player (see `probe`): its push latency
    /// is that of the very events whose event-to-visible latency the probes measure. Its
    /// state is not part of the expected model: it is not checked at the end.
    pub probe: Option<Target>,
}

/// Counters of every client together.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    snapshots: AtomicU64,
    updates: AtomicU64,
    gaps: AtomicU64,
    error_frames: AtomicU64,
    protocol_errors: AtomicU64,
    connect_failures: AtomicU64,
    reconnects: AtomicU64,
    slow_closes: AtomicU64,
    going_away_closes: AtomicU64,
    gave_up: AtomicU64,
    /// Subscribers with their first snapshot.
    ready: AtomicUsize,
    /// Sockets open now.
    open: AtomicI64,
}

/// What every client shares.
struct Shared {
    counters: Counters,
    /// Push latency, microseconds: of the checked subscribers, and of the probe's.
    latency: Mutex<Histogram<u64>>,
    probe_latency: Mutex<Histogram<u64>>,
    problems: Mutex<Vec<String>>,
    handshakes: Semaphore,
    config: WebSocketConfig,
    api_key: Option<String>,
    nodes: Vec<String>,
}

impl Shared {
    fn problem(&self, p: String) {
        let mut problems = self.problems.lock().expect("problems lock");
        if problems.len() < MAX_PROBLEMS {
            problems.push(p);
        }
    }
}

/// What the subscribers measured.
#[derive(Debug, Default, Serialize)]
pub struct SubscribersReport {
    /// Checked subscribers, by kind (the probe's, if any, not among them).
    pub clients: usize,
    pub players: usize,
    pub channels: usize,
    pub top: usize,
    /// Seconds until every client had its snapshot.
    pub connect_secs: f64,
    /// Frames of every client, the probe's included.
    pub frames: u64,
    pub snapshots: u64,
    pub updates: u64,
    pub gaps: u64,
    /// Frames of type error (a subscription refused), and frames that broke the protocol.
    pub error_frames: u64,
    pub protocol_errors: u64,
    pub connect_failures: u64,
    pub reconnects: u64,
    /// Closed by the node: 4008 (slow client) and 1001 (going away).
    pub slow_closes: u64,
    pub going_away_closes: u64,
    /// Clients that used up their connection attempts.
    pub gave_up: u64,
    /// Push latency: event time to the first frame that shows it.
    pub latency: Latency,
    /// The same for the probe events alone (`SubscribersOpts::probe`), if subscribed.
    pub probe_latency: Option<Latency>,
    /// Subscriptions compared with the final state, and the differences.
    pub checked: usize,
    pub mismatches: Vec<String>,
    /// How top-N views were checked, where not against the model.
    pub notes: Vec<String>,
    /// Problems word for word (at most 50).
    pub problems: Vec<String>,
}

impl SubscribersReport {
    /// Exact: every subscription matched, and nothing was refused or unreadable.
    pub fn exact(&self) -> bool {
        self.mismatches.is_empty() && self.error_frames == 0 && self.protocol_errors == 0
    }
}

/// The running clients.
pub struct Subscribers {
    /// The checked targets, then the probe's if any.
    targets: Arc<[Target]>,
    /// How many of `targets` are checked.
    checked: usize,
    watches: Arc<[Mutex<Watch>]>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    connect_secs: f64,
    push_interval: Duration,
}

impl Subscribers {
    /// Connects a client per target, spread out, and waits until each has its snapshot.
    /// Fails (after closing them all) if that takes longer than `connect_timeout`.
    pub async fn connect(targets: Vec<Target>, opts: SubscribersOpts) -> anyhow::Result<Self> {
        if opts.nodes.is_empty() {
            bail!("subscribers need at least one node (--nodes)");
        }
        if !(opts.connect_rate > 0.0 && opts.connect_rate.is_finite()) {
            bail!(
                "--connect-rate: expected a positive number, got {}",
                opts.connect_rate
            );
        }
        let checked = targets.len();
        let mut targets = targets;
        targets.extend(opts.probe.clone());
        let n = targets.len();
        let histogram =
            || Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"));
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            latency: histogram(),
            probe_latency: histogram(),
            problems: Mutex::new(Vec::new()),
            handshakes: Semaphore::new(opts.connect_concurrency.max(1)),
            // Small buffers: thousands of sockets, each reading small frames.
            config: WebSocketConfig::default()
                .read_buffer_size(8 * 1024)
                .write_buffer_size(0)
                .max_message_size(Some(4 << 20)),
            api_key: opts.api_key.clone(),
            nodes: opts.nodes.clone(),
        });
        let mut subs = Subscribers {
            watches: (0..n).map(|_| Mutex::new(Watch::default())).collect(),
            targets: targets.into(),
            checked,
            shared,
            stop: CancellationToken::new(),
            tasks: tokio::task::JoinSet::new(),
            connect_secs: 0.0,
            push_interval: opts.push_interval,
        };
        let started = Instant::now();
        let deadline = started + opts.connect_timeout;
        let mut last_report = started;
        let mut spawned = 0;
        loop {
            let now = Instant::now();
            // Spawn every client now due by the rate.
            let due = ((now - started).as_secs_f64() * opts.connect_rate).ceil() as usize;
            while spawned < n.min(due.max(1)) {
                subs.spawn(spawned);
                spawned += 1;
            }
            let ready = subs.shared.counters.ready.load(Ordering::Relaxed);
            if ready == n {
                break;
            }
            if now >= deadline {
                let problems = subs.shared.problems.lock().expect("problems lock").clone();
                subs.finish_quietly().await;
                bail!(
                    "only {ready} of {n} subscribers had their snapshot within {} s (--connect-timeout); first problems: {}",
                    opts.connect_timeout.as_secs(),
                    if problems.is_empty() { "none".to_string() } else { problems.join("; ") }
                );
            }
            if now - last_report >= Duration::from_secs(1) {
                last_report = now;
                eprintln!(
                    "tally-loadtest: subscribers: {ready} of {n} subscribed ({} connect failures)",
                    subs.shared
                        .counters
                        .connect_failures
                        .load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        subs.connect_secs = started.elapsed().as_secs_f64();
        eprintln!(
            "tally-loadtest: subscribers: all {n} subscribed in {:.1} s",
            subs.connect_secs
        );
        Ok(subs)
    }

    fn spawn(&mut self, i: usize) {
        let (targets, watches, shared, stop) = (
            self.targets.clone(),
            self.watches.clone(),
            self.shared.clone(),
            self.stop.clone(),
        );
        let probe = i >= self.checked;
        self.tasks
            .spawn(async move { client(i, &targets[i], &watches[i], &shared, &stop, probe).await });
    }

    /// The targets checked at the end (the probe's is not).
    pub fn targets(&self) -> &[Target] {
        &self.targets[..self.checked]
    }

    /// Waits a few push intervals, then compares every subscriber's last frame with what
    /// its target must show (`wants[i]` for target i), again each push interval for the
    /// ones that differ, until all match or `timeout` passed. Returns the differences left.
    pub async fn check_final(&self, wants: &[Want], timeout: Duration) -> Vec<String> {
        assert_eq!(wants.len(), self.checked, "a want per checked target");
        let started = Instant::now();
        tokio::time::sleep(self.push_interval * 4).await;
        let mut pending: Vec<usize> = (0..self.checked).collect();
        loop {
            let mut failing = Vec::new();
            for &i in &pending {
                let watch = self.watches[i].lock().expect("watch lock");
                let mut d = compare(&self.targets[i], &wants[i], &watch);
                if !watch.live && d.is_empty() {
                    d.push(format!(
                        "{}: not connected at the end ({})",
                        self.targets[i].subscription(),
                        watch.last_error.as_deref().unwrap_or("closed")
                    ));
                }
                if !d.is_empty() {
                    failing.push((i, d));
                }
            }
            if failing.is_empty() || started.elapsed() >= timeout {
                return failing.into_iter().flat_map(|(_, d)| d).collect();
            }
            pending = failing.into_iter().map(|(i, _)| i).collect();
            tokio::time::sleep(self.push_interval).await;
        }
    }

    /// Closes every socket (bounded by `CLOSE_TIMEOUT`) and reports.
    pub async fn finish(
        mut self,
        mismatches: Vec<String>,
        notes: Vec<String>,
    ) -> SubscribersReport {
        self.close_all().await;
        let c = &self.shared.counters;
        let count = |f: fn(&Target) -> bool| self.targets().iter().filter(|t| f(t)).count();
        let latency = self.shared.latency.lock().expect("latency lock");
        SubscribersReport {
            clients: self.checked,
            players: count(|t| matches!(t, Target::Player(_))),
            channels: count(|t| matches!(t, Target::Channel(_))),
            top: count(|t| matches!(t, Target::Top { .. })),
            connect_secs: self.connect_secs,
            frames: c.frames.load(Ordering::Relaxed),
            snapshots: c.snapshots.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            error_frames: c.error_frames.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            slow_closes: c.slow_closes.load(Ordering::Relaxed),
            going_away_closes: c.going_away_closes.load(Ordering::Relaxed),
            gave_up: c.gave_up.load(Ordering::Relaxed),
            latency: Latency::from_histogram(&latency, 0),
            probe_latency: (self.targets.len() > self.checked).then(|| {
                let h = self.shared.probe_latency.lock().expect("latency lock");
                Latency::from_histogram(&h, 0)
            }),
            checked: self.checked,
            mismatches,
            notes,
            problems: self.shared.problems.lock().expect("problems lock").clone(),
        }
    }

    /// Stops without a report (a failed connect phase).
    async fn finish_quietly(&mut self) {
        self.close_all().await;
    }

    async fn close_all(&mut self) {
        self.stop.cancel();
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            eprintln!(
                "tally-loadtest: subscribers: {} sockets not closed within {} s; dropped",
                self.tasks.len(),
                CLOSE_TIMEOUT.as_secs()
            );
            self.tasks.abort_all();
        }
    }
}

/// Why a socket ended.
enum Ended {
    /// The run is over: the client closed it.
    Stopped,
    /// The node or the network ended it: reconnect.
    Lost(String),
}

/// One subscriber: connects, subscribes, reads frames until `stop`; reconnects (to the next
/// node) when the socket is lost, at most `MAX_ATTEMPTS` connections in all.
async fn client(
    i: usize,
    target: &Target,
    watch: &Mutex<Watch>,
    shared: &Shared,
    stop: &CancellationToken,
    probe: bool,
) {
    let latency = if probe {
        &shared.probe_latency
    } else {
        &shared.latency
    };
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            let pause =
                (Duration::from_millis(250) * 2u32.saturating_pow(attempt - 1)).min(MAX_PAUSE);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if stop.is_cancelled() {
            return;
        }
        let node = &shared.nodes[(i + attempt as usize) % shared.nodes.len()];
        match session(node, target, watch, shared, stop, latency).await {
            Ended::Stopped => return,
            Ended::Lost(why) => {
                let mut w = watch.lock().expect("watch lock");
                w.live = false;
                w.last_error = Some(format!("{node}: {why}"));
            }
        }
        if attempt + 1 < MAX_ATTEMPTS {
            shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.counters.gave_up.fetch_add(1, Ordering::Relaxed);
    let why = watch.lock().expect("watch lock").last_error.clone();
    shared.problem(format!(
        "{}: gave up after {MAX_ATTEMPTS} connections: {}",
        target.subscription(),
        why.unwrap_or_default()
    ));
}

/// One socket's life: handshake and snapshot (one of the bounded handshakes in flight,
/// within `HANDSHAKE_TIMEOUT`), then frames until the run stops or the socket is lost.
async fn session(
    node: &str,
    target: &Target,
    watch: &Mutex<Watch>,
    shared: &Shared,
    stop: &CancellationToken,
    latency: &Mutex<Histogram<u64>>,
) -> Ended {
    let c = &shared.counters;
    let permit = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        p = shared.handshakes.acquire() => p.expect("the semaphore is never closed"),
    };
    let mut permit = Some(permit);
    let request = match request(node, shared.api_key.as_deref()) {
        Ok(r) => r,
        Err(e) => return Ended::Lost(e),
    };
    let connected = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(shared.config), true),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            c.connect_failures.fetch_add(1, Ordering::Relaxed);
            let why = handshake_error(e);
            shared.problem(format!(
                "{}: connect to {node}: {why}",
                target.subscription()
            ));
            return Ended::Lost(why);
        }
        Err(_) => {
            c.connect_failures.fetch_add(1, Ordering::Relaxed);
            return Ended::Lost(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ));
        }
    };
    c.open.fetch_add(1, Ordering::Relaxed);
    let ended = subscribed(&mut ws, target, watch, shared, stop, &mut permit, latency).await;
    c.open.fetch_sub(1, Ordering::Relaxed);
    if let Ended::Stopped = ended {
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(normal))).await;
    }
    ended
}

/// The upgrade request, with the key if there is one.
fn request(
    node: &str,
    api_key: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
    let mut request = format!("ws://{node}/v1/subscribe")
        .into_client_request()
        .map_err(|e| format!("ws://{node}/v1/subscribe: {e}"))?;
    if let Some(key) = api_key {
        let value = format!("Bearer {key}")
            .parse()
            .map_err(|_| "--api-key: not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A refused upgrade says its status and body (503 when the node has too many connections).
fn handshake_error(e: tokio_tungstenite::tungstenite::Error) -> String {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!("upgrade answered {}: {body}", response.status())
        }
        e => e.to_string(),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribed(
    ws: &mut Socket,
    target: &Target,
    watch: &Mutex<Watch>,
    shared: &Shared,
    stop: &CancellationToken,
    permit: &mut Option<tokio::sync::SemaphorePermit<'_>>,
    histogram: &Mutex<Histogram<u64>>,
) -> Ended {
    let c = &shared.counters;
    let name = target.subscription();
    if let Err(e) = ws.send(Message::text(target.subscribe_message())).await {
        return Ended::Lost(format!("send subscribe: {e}"));
    }
    let snapshot_by = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            _ = tokio::time::sleep_until(snapshot_by), if permit.is_some() => {
                return Ended::Lost(format!("no snapshot within {} s", HANDSHAKE_TIMEOUT.as_secs()));
            }
            m = ws.next() => m,
        };
        let received_us = crate::unix_micros();
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                match code {
                    Some(4008) => c.slow_closes.fetch_add(1, Ordering::Relaxed),
                    Some(1001) => c.going_away_closes.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                let why = match frame {
                    Some(f) => format!("closed by the node: {} {}", u16::from(f.code), f.reason),
                    None => "closed by the node".to_string(),
                };
                shared.problem(format!("{name}: {why}"));
                return Ended::Lost(why);
            }
            Some(Ok(Message::Binary(_))) => {
                c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                shared.problem(format!("{name}: a binary frame (the protocol sends text)"));
                continue;
            }
            // Pings are answered by the library as it reads.
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ended::Lost(e.to_string()),
            None => return Ended::Lost("the socket ended".to_string()),
        };
        match parse_frame(&text) {
            Ok(Frame::State {
                snapshot,
                subscription,
                gap,
                data,
            }) => {
                c.frames.fetch_add(1, Ordering::Relaxed);
                if snapshot {
                    c.snapshots.fetch_add(1, Ordering::Relaxed)
                } else {
                    c.updates.fetch_add(1, Ordering::Relaxed)
                };
                if gap {
                    c.gaps.fetch_add(1, Ordering::Relaxed);
                }
                if subscription != name {
                    c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    shared.problem(format!("{name}: a frame of subscription {subscription:?}"));
                    continue;
                }
                let latency = {
                    let mut w = watch.lock().expect("watch lock");
                    if w.frames == 0 {
                        c.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    w.live = true;
                    w.take(target, snapshot, data, received_us)
                };
                // Subscribed: the next client's handshake may start.
                permit.take();
                if let Some(us) = latency {
                    let mut h = histogram.lock().expect("latency lock");
                    h.saturating_record(us.max(1) as u64);
                }
            }
            Ok(Frame::Error { field, error }) => {
                c.error_frames.fetch_add(1, Ordering::Relaxed);
                shared.problem(format!("{name}: error frame ({field}): {error}"));
            }
            Ok(Frame::Unsubscribed { subscription }) => {
                c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                shared.problem(format!(
                    "{name}: unsubscribed from {subscription:?} unasked"
                ));
            }
            Err(e) => {
                c.protocol_errors.fetch_add(1, Ordering::Relaxed);
                shared.problem(format!("{name}: {e}"));
            }
        }
    }
}

/// Raises the open-file soft limit to the hard limit and checks that `needed` files fit;
/// returns the limit now in force.
pub fn raise_open_files(needed: u64) -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a pointer to a live, properly aligned
    // local; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a pointer to a live local; raising the
        // soft limit up to the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setrlimit(RLIMIT_NOFILE) to {}", limit.rlim_max));
        }
        limit = raised;
    }
    let have = limit.rlim_cur;
    if have < needed {
        bail!(
            "{needed} open files needed (one socket per subscriber, and room for the rest), but the hard limit is {have}: raise it (ulimit -Hn, limits.conf) or use fewer --subscribers"
        );
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_node::event::{Event, EventBody};

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    /// A state frame's fields, its data built.
    fn state(frame: Frame) -> (bool, String, bool, Value) {
        match frame {
            Frame::State {
                snapshot,
                subscription,
                gap,
                data,
            } => (
                snapshot,
                subscription,
                gap,
                serde_json::from_str(data.get()).unwrap(),
            ),
            other => panic!("a state frame, got {other:?}"),
        }
    }

    #[test]
    fn a_mix_is_read_and_checked() {
        let mix: Mix = "players=60,channels=35,top=5".parse().unwrap();
        assert_eq!((mix.players, mix.channels, mix.top), (60, 35, 5));
        assert_eq!(mix.to_string().parse::<Mix>(), Ok(mix));
        let only: Mix = "channels=1".parse().unwrap();
        assert_eq!((only.players, only.channels, only.top), (0, 1, 0));
        for (bad, error) in [
            ("players=60,viewers=40", "unknown kind \"viewers\""),
            ("players", "expected KIND=WEIGHT"),
            ("players=x", "players: expected a whole number"),
            ("players=1,players=2", "players given twice"),
            ("players=0", "no kind has a weight above 0"),
            ("", "no kind has a weight above 0"),
        ] {
            let e = bad.parse::<Mix>().unwrap_err();
            assert!(e.contains(error), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_split_is_proportional_and_sums_to_n() {
        let mix: Mix = "players=60,channels=35,top=5".parse().unwrap();
        assert_eq!(mix.split(10_000), (6_000, 3_500, 500));
        assert_eq!(mix.split(0), (0, 0, 0));
        for n in [1, 2, 3, 7, 19, 101] {
            let (p, c, t) = mix.split(n);
            assert_eq!(p + c + t, n, "{n}");
        }
        // A kind with no weight gets nobody, remainders included.
        let mix: Mix = "players=1,channels=1".parse().unwrap();
        assert_eq!(mix.split(3), (2, 1, 0));
    }

    fn population_of(players: u64, channels: u64, n: usize, seed: u64) -> Vec<Target> {
        let p = |i: u64| format!("t-p{i}");
        let c = |i: u64| format!("t-c{i}");
        let pop = Population {
            players,
            channels,
            player_id: &p,
            channel_id: &c,
        };
        plan(
            n,
            "players=60,channels=35,top=5".parse().unwrap(),
            seed,
            &pop,
        )
    }

    #[test]
    fn a_plan_is_reproducible_distinct_and_mixed() {
        let a = population_of(1_000, 100, 200, 7);
        assert_eq!(a, population_of(1_000, 100, 200, 7));
        assert_ne!(a, population_of(1_000, 100, 200, 8));
        let players: Vec<&Target> = a
            .iter()
            .filter(|t| matches!(t, Target::Player(_)))
            .collect();
        let channels: Vec<&Target> = a
            .iter()
            .filter(|t| matches!(t, Target::Channel(_)))
            .collect();
        let tops: Vec<&Target> = a
            .iter()
            .filter(|t| matches!(t, Target::Top { .. }))
            .collect();
        assert_eq!((players.len(), channels.len(), tops.len()), (120, 70, 10));
        let mut names: Vec<String> = players.iter().map(|t| t.subscription()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            120,
            "players are distinct while there are enough"
        );
        // The three top-N views in turn.
        for (by, name) in TOP_VIEWS {
            assert!(
                tops.contains(&&Target::Top {
                    by,
                    limit: TOP_LIMIT
                }),
                "{name}"
            );
        }
        // Shuffled: the first fifth holds more than one kind.
        let head = &a[..40];
        assert!(head.iter().any(|t| matches!(t, Target::Player(_))));
        assert!(head.iter().any(|t| matches!(t, Target::Channel(_))));
    }

    #[test]
    fn more_subscribers_than_channels_share_them() {
        let a = population_of(10, 3, 100, 1);
        let channels: Vec<String> = a
            .iter()
            .filter(|t| matches!(t, Target::Channel(_)))
            .map(|t| t.subscription())
            .collect();
        assert_eq!(channels.len(), 35);
        for c in ["channel:t-c0", "channel:t-c1", "channel:t-c2"] {
            let n = channels.iter().filter(|x| *x == c).count();
            assert!((11..=12).contains(&n), "{c}: {n}");
        }
        // No players at all: no player subscriptions, and no panic.
        let none = population_of(0, 3, 10, 1);
        assert!(none.iter().all(|t| !matches!(t, Target::Player(_))));
    }

    #[test]
    fn messages_and_names_follow_the_protocol() {
        let p = Target::Player("alice".into());
        assert_eq!(p.subscription(), "player:alice");
        assert_eq!(p.subscribe_message(), r#"{"subscribe":{"player":"alice"}}"#);
        let c = Target::Channel("c-7 \"x\"".into());
        assert_eq!(c.subscription(), "channel:c-7 \"x\"");
        let v: Value = serde_json::from_str(&c.subscribe_message()).unwrap();
        assert_eq!(v, json!({"subscribe": {"channel": "c-7 \"x\""}}));
        let t = Target::Top {
            by: TopBy::Follows,
            limit: 10,
        };
        assert_eq!(t.subscription(), "top:follows:10");
        let v: Value = serde_json::from_str(&t.subscribe_message()).unwrap();
        assert_eq!(
            v,
            json!({"subscribe": {"top": {"by": "follows", "limit": 10}}})
        );
    }

    #[test]
    fn frames_are_parsed() {
        let update = r#"{"type": "update", "subscription": "player:alice", "served_by": "node-2",
            "partition": 3, "offset": 18422, "partition_offset": 18430, "gap": false,
            "data": {"id": "alice", "events": 12, "last_seen": 5}}"#;
        assert_eq!(
            state(parse_frame(update).unwrap()),
            (
                false,
                "player:alice".into(),
                false,
                json!({"id": "alice", "events": 12, "last_seen": 5})
            )
        );
        let snapshot =
            r#"{"type":"snapshot","subscription":"channel:c","offset":-1,"data":null,"gap":true}"#;
        assert_eq!(
            state(parse_frame(snapshot).unwrap()),
            (true, "channel:c".into(), true, Value::Null)
        );
        // A state frame without data is a null state too.
        let bare = r#"{"type":"update","subscription":"channel:c"}"#;
        assert_eq!(
            state(parse_frame(bare).unwrap()),
            (false, "channel:c".into(), false, Value::Null)
        );
        let error = r#"{"type": "error", "field": "subscribe.player", "error": "subscribe.player: must be 1 to 128 bytes, got 129"}"#;
        assert!(
            matches!(parse_frame(error).unwrap(), Frame::Error { field, .. } if field == "subscribe.player")
        );
        let gone = r#"{"type": "unsubscribed", "subscription": "player:alice"}"#;
        assert!(matches!(
            parse_frame(gone).unwrap(),
            Frame::Unsubscribed { subscription } if subscription == "player:alice"
        ));
        for bad in [
            "not json",
            r#"{"type":"hello"}"#,
            r#"{"type":"update"}"#,
            "[]",
        ] {
            let e = parse_frame(bad).unwrap_err();
            assert!(e.starts_with("unreadable frame"), "{bad}: {e}");
        }
    }

    #[test]
    fn latency_counts_only_updates_that_show_a_newer_event() {
        let p = Target::Player("a".into());
        let mut w = Watch::default();
        // An empty snapshot, then the first event: 40 ms after its time.
        assert_eq!(w.take(&p, true, raw(Value::Null), 1_000_000), None);
        assert_eq!(
            w.take(&p, false, raw(json!({"last_seen": 2_000})), 2_040_000),
            Some(40_000)
        );
        // The same event again (another counter changed? no: nothing new) is no sample.
        assert_eq!(
            w.take(&p, false, raw(json!({"last_seen": 2_000})), 2_300_000),
            None
        );
        // A snapshot after a reconnect shows a newer event, but is no push.
        assert_eq!(
            w.take(&p, true, raw(json!({"last_seen": 3_000})), 3_500_000),
            None
        );
        assert_eq!(w.newest_event_ms, Some(3_000));
        // An older event time (it cannot happen; offsets never go back) is no sample either.
        assert_eq!(
            w.take(&p, false, raw(json!({"last_seen": 2_500})), 3_600_000),
            None
        );
        // A clock behind the stamp gives 0, not a negative latency.
        assert_eq!(
            w.take(&p, false, raw(json!({"last_seen": 9_000})), 8_999_000),
            Some(0)
        );
        assert_eq!(w.frames, 6);
        assert_eq!(
            w.last.map(|l| l.get().to_string()),
            Some(r#"{"last_seen":9000}"#.into())
        );
        // The time is found among every other field of a state, nested ones too.
        let full = json!({"id": "a", "channels": {"c": {"watch_ms": 5, "last_seen": 1}},
            "recent": [{"last_seen": 2}], "last_seen": 9_500, "kills": 3});
        assert_eq!(p.event_time(&raw(full)), Some(9_500));
        assert_eq!(p.event_time(&raw(Value::Null)), None);
        // Channels by last_event; top-N views never.
        let c = Target::Channel("c".into());
        let mut w = Watch::default();
        assert_eq!(
            w.take(&c, false, raw(json!({"last_event": 10})), 12_000),
            Some(2_000)
        );
        let t = Target::Top {
            by: TopBy::Peak,
            limit: 10,
        };
        let mut w = Watch::default();
        assert_eq!(
            w.take(&t, false, raw(json!({"channels": []})), 12_000),
            None
        );
    }

    fn expected_of(events: &[Event]) -> Expected {
        let mut e = Expected::new(4, 120_000);
        for ev in events {
            e.apply(ev);
        }
        e
    }

    fn event(i: i64, player: &str, body: EventBody) -> Event {
        Event {
            v: 1,
            id: format!("e{i}").into(),
            ts: 1_000 + i,
            player: player.into(),
            body,
        }
    }

    fn run() -> Expected {
        let follow = |c: &str| EventBody::Follow { channel: c.into() };
        let join = |c: &str| EventBody::ViewerJoin { channel: c.into() };
        expected_of(&[
            event(1, "r-p1", follow("r-c1")),
            event(2, "r-p2", follow("r-c1")),
            event(3, "r-p2", follow("r-c2")),
            event(4, "r-p3", join("r-c2")),
            event(5, "r-p4", join("r-c3")),
            event(6, "r-p5", join("r-c3")),
            event(7, "r-p1", EventBody::LevelUp { level: 3 }),
        ])
    }

    #[test]
    fn the_model_top_is_ordered_as_the_node_orders() {
        let e = run();
        let ids = |by| -> Vec<String> { model_top(&e, by, 10).into_iter().map(|t| t.id).collect() };
        assert_eq!(ids(TopBy::Follows), ["r-c1", "r-c2", "r-c3"]);
        assert_eq!(ids(TopBy::Concurrent), ["r-c3", "r-c2", "r-c1"]);
        assert_eq!(model_top(&e, TopBy::Peak, 2).len(), 2);
        assert_eq!(model_top(&e, TopBy::Concurrent, 1)[0].concurrent, 2);
    }

    #[test]
    fn the_final_state_is_the_verified_view_or_the_model_top() {
        let e = run();
        let player = Target::Player("r-p1".into());
        let (Want::Entity(Some(view)), None) = want(&player, &e, "r-", None) else {
            panic!("a player of the run wants its view")
        };
        assert_eq!(view["level"], 3);
        assert_eq!(view["events"], 2);
        let stranger = Target::Player("r-p99".into());
        assert_eq!(want(&stranger, &e, "r-", None).0, Want::Entity(None));
        let channel = Target::Channel("r-c3".into());
        let (Want::Entity(Some(view)), _) = want(&channel, &e, "r-", None) else {
            panic!("a channel of the run wants its view")
        };
        assert_eq!(view["concurrent_viewers"], 2);

        let top = Target::Top {
            by: TopBy::Follows,
            limit: 10,
        };
        let model = serde_json::to_value(model_top(&e, TopBy::Follows, 10)).unwrap();
        // The node agrees: the model, no note.
        assert_eq!(
            want(&top, &e, "r-", Some(&model)),
            (Want::Top(model.clone()), None)
        );
        // The node disagrees about our own channels: still the model, with a note.
        let wrong = json!([{"id": "r-c2", "concurrent": 1, "peak": 1, "follows": 9}]);
        let (w, note) = want(&top, &e, "r-", Some(&wrong));
        assert_eq!(w, Want::Top(model.clone()));
        assert!(note.unwrap().contains("the node answers"));
        // Channels of another run: the node's answer, with a note.
        let shared = json!([{"id": "old-c9", "concurrent": 0, "peak": 0, "follows": 50}]);
        let (w, note) = want(&top, &e, "r-", Some(&shared));
        assert_eq!(w, Want::Top(shared.clone()));
        assert!(note.unwrap().contains("other runs"));
    }

    #[test]
    fn the_last_frame_is_compared_field_by_field() {
        let p = Target::Player("a".into());
        let watch = |last: Option<Value>| Watch {
            last: last.map(raw),
            ..Default::default()
        };
        let want = Want::Entity(Some(json!({"events": 3, "kills": 1})));
        assert!(compare(
            &p,
            &want,
            &watch(Some(json!({"events": 3, "kills": 1, "extra": 0})))
        )
        .is_empty());
        assert_eq!(
            compare(&p, &want, &watch(Some(json!({"events": 2, "kills": 1})))),
            ["player:a.events: want 3, got 2"]
        );
        assert_eq!(
            compare(&p, &want, &watch(None)),
            ["player:a: no frame received"]
        );
        assert_eq!(
            compare(&p, &want, &watch(Some(Value::Null))),
            [r#"player:a: want {"events":3,"kills":1}, got null"#]
        );
        assert!(compare(&p, &Want::Entity(None), &watch(Some(Value::Null))).is_empty());
        assert_eq!(
            compare(&p, &Want::Entity(None), &watch(Some(json!({"events": 1})))),
            [r#"player:a: want no state (null), got {"events":1}"#]
        );
        let t = Target::Top {
            by: TopBy::Peak,
            limit: 10,
        };
        let channels = json!([{"id": "c", "concurrent": 1, "peak": 2, "follows": 0}]);
        let frame = json!({"by": "peak", "channels": channels, "stale": false});
        assert!(compare(&t, &Want::Top(channels.clone()), &watch(Some(frame))).is_empty());
        let other = json!({"by": "peak", "channels": [], "stale": false});
        assert_eq!(
            compare(&t, &Want::Top(channels), &watch(Some(other))).len(),
            1
        );
    }

    #[test]
    fn the_open_file_limit_is_raised_or_refused_clearly() {
        let have = raise_open_files(16).unwrap();
        assert!(have >= 16);
        let e = raise_open_files(u64::MAX).unwrap_err().to_string();
        assert!(e.contains("hard limit"), "{e}");
    }
}
