//! Verification: every entity (or a stated random sample) the cluster reports equals the
//! expected state exactly. Waits for the cluster to catch up, retries other nodes when one
//! fails, and survives nodes being killed and restarted while it waits (up to a timeout).

use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
use tally_node::entity_path::entity_path;
use tally_node::kind::ShardKind;

use crate::players::Expected;

pub struct VerifyOpts {
    pub nodes: Vec<String>,
    pub timeout: Duration,
    /// Check only this many players (random, seeded); None = all.
    pub sample: Option<usize>,
    pub seed: u64,
    pub concurrency: usize,
    /// The API key for queries (scope `read`), if the cluster checks keys.
    pub api_key: Option<String>,
}

/// What verification found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub players_checked: usize,
    pub channels_checked: usize,
    pub mismatches: Vec<String>,
    pub waited_secs: f64,
    /// Events acknowledged but missing from the players' `events` counts at the end.
    pub lost_events: u64,
    /// Events counted more often than they were acknowledged.
    pub doubled_events: u64,
}

#[derive(Clone)]
enum Target {
    Player(String),
    Channel(String),
}

/// GETs `path` from the first of `nodes` (starting at `start`) that answers 2xx.
pub async fn fetch(
    client: &reqwest::Client,
    nodes: &[String],
    start: usize,
    path: &str,
) -> Result<Value, String> {
    let mut last = String::new();
    for i in 0..nodes.len() {
        let node = &nodes[(start + i) % nodes.len()];
        match client.get(format!("http://{node}{path}")).send().await {
            Ok(r) if r.status().is_success() => return r.json().await.map_err(|e| e.to_string()),
            Ok(r) => last = format!("{node}{path}: {}", r.status()),
            Err(e) => last = format!("{node}{path}: {e}"),
        }
    }
    Err(last)
}

/// Differences between an expected view and the answer (field by field).
pub fn diff(what: &str, want: &Value, got: &Value) -> Vec<String> {
    let (Some(w), Some(g)) = (want.as_object(), got.as_object()) else {
        return vec![format!("{what}: want {want}, got {got}")];
    };
    w.iter()
        .filter(|(k, v)| g.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{what}.{k}: want {v}, got {}",
                g.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

/// The view a query of `kind`/`id` must answer after the run: the player or channel view
/// the expected state gives (a channel's concurrent viewers at its partition's
/// watermark), or None for an entity that saw no event of the run.
pub fn expected_view(expected: &Expected, kind: ShardKind, id: &str) -> Option<Value> {
    let view = match kind {
        ShardKind::Players => serde_json::to_value(expected.players.get(id)?.view(id)),
        ShardKind::Channels => serde_json::to_value(expected.channels.get(id)?.view(
            id,
            expected.channel_watermark(id),
            expected.viewer_timeout_ms,
        )),
    };
    Some(view.expect("view serializes"))
}

async fn check(
    client: &reqwest::Client,
    expected: &Expected,
    nodes: &[String],
    i: usize,
    t: &Target,
) -> Vec<String> {
    let (kind, id, key, what) = match t {
        Target::Player(id) => (ShardKind::Players, id, "player", format!("player {id}")),
        Target::Channel(id) => (ShardKind::Channels, id, "channel", format!("channel {id}")),
    };
    let want = expected_view(expected, kind, id).expect("only expected entities are checked");
    match fetch(client, nodes, i, &entity_path(kind, id)).await {
        Ok(v) => diff(&what, &want, &v[key]),
        Err(e) => vec![format!("{what}: {e}")],
    }
}

/// (lost, doubled): over `players`, how many acknowledged events are missing from their
/// `events` counts, and how many are counted beyond what was acknowledged. A player that
/// cannot be read counts all its events as lost.
async fn count_events(
    client: &reqwest::Client,
    expected: &Expected,
    players: &[&String],
    opts: &VerifyOpts,
) -> (u64, u64) {
    let counts: Vec<(u64, u64)> = futures::stream::iter(players.iter().enumerate())
        .map(|(i, id)| async move {
            let want = expected.players[*id].view(id).events;
            let got = fetch(client, &opts.nodes, i, &format!("/v1/players/{id}"))
                .await
                .ok()
                .and_then(|v| v["player"]["events"].as_u64())
                .unwrap_or(0);
            (want.saturating_sub(got), got.saturating_sub(want))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    counts
        .iter()
        .fold((0, 0), |(l, d), (lost, doubled)| (l + lost, d + doubled))
}

/// Compares until everything matches or the timeout passes.
pub async fn verify(expected: &Expected, opts: &VerifyOpts) -> VerifyReport {
    let client =
        crate::http_client(Duration::from_secs(10), opts.api_key.as_deref()).expect("http client");
    let mut players: Vec<&String> = expected.players.keys().collect();
    players.sort();
    if let Some(n) = opts.sample {
        players.shuffle(&mut StdRng::seed_from_u64(opts.seed));
        players.truncate(n);
    }
    let mut pending: Vec<Target> = players
        .iter()
        .map(|p| Target::Player((*p).clone()))
        .collect();
    let channels = expected.channels.len();
    pending.extend(expected.channels.keys().map(|c| Target::Channel(c.clone())));
    let mut report = VerifyReport {
        players_checked: players.len(),
        channels_checked: channels,
        ..Default::default()
    };
    let started = Instant::now();
    loop {
        let results: Vec<(Target, Vec<String>)> =
            futures::stream::iter(pending.iter().cloned().enumerate())
                .map(|(i, t)| {
                    let client = client.clone();
                    async move {
                        let d = check(&client, expected, &opts.nodes, i, &t).await;
                        (t, d)
                    }
                })
                .buffer_unordered(opts.concurrency.max(1))
                .collect()
                .await;
        let failing: Vec<(Target, Vec<String>)> =
            results.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        if failing.is_empty() || started.elapsed() >= opts.timeout {
            report.mismatches = failing.into_iter().flat_map(|(_, d)| d).collect();
            report.waited_secs = started.elapsed().as_secs_f64();
            (report.lost_events, report.doubled_events) =
                count_events(&client, expected, &players, opts).await;
            return report;
        }
        eprintln!(
            "tally-loadtest: verify: {} entities not yet matching (e.g. {}); waiting",
            failing.len(),
            failing[0].1[0]
        );
        pending = failing.into_iter().map(|(t, _)| t).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
