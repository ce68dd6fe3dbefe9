//! Client retries and wrong clocks, at the shard against the real Cassandra: a resent
//! batch is counted once, also across a restart that rebuilds the dedupe window from the
//! recorded mark; records dated far ahead of their arrival neither apply nor move the
//! event-time watermark, so no audience is expired by them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::model::{generate, Model, StreamSpec};
use common::TestEnv;
use ractor::ActorRef;
use tally_node::config::{CassandraConfig, ShardConfig};
use tally_node::event::{Event, EventBody};
use tally_node::kind::ShardKind;
use tally_node::metrics::Metrics;
use tally_node::shard::{self, Record, ShardArgs, ShardMsg};
use tally_node::store::{self, Progress, Store};
use tokio::sync::Semaphore;

const START: i64 = 1_700_000_000_000;

async fn store(env: &TestEnv) -> Arc<Store> {
    let cfg = CassandraConfig {
        keyspace: env.keyspace.clone(),
        ..Default::default()
    };
    let session = store::connect(&cfg, Duration::from_secs(30)).await.unwrap();
    store::schema::migrate(&session, &cfg).await.unwrap();
    Arc::new(Store::prepare(session, &cfg.keyspace).await.unwrap())
}

async fn start(
    env: &TestEnv,
    store: &Arc<Store>,
    kind: ShardKind,
    progress: Option<Progress>,
    metrics: &Arc<Metrics>,
) -> ActorRef<ShardMsg> {
    shard::spawn(ShardArgs {
        kind,
        topic: format!("{}-{kind:?}", env.name),
        partition: 0,
        store: store.clone(),
        cfg: ShardConfig {
            checkpoint_interval_ms: 3_600_000,
            ..Default::default()
        },
        owner: "test".into(),
        progress,
        dedupe_from: None,
        metrics: metrics.clone(),
        dead_letters: None,
        push_interval: Duration::from_millis(250),
        history: Default::default(),
        history_cache: None,
    })
    .await
    .unwrap()
}

async fn feed(shard: &ActorRef<ShardMsg>, recs: &[Record]) {
    let permits = Arc::new(Semaphore::new(1));
    for chunk in recs.chunks(300) {
        let permit = permits.clone().acquire_owned().await.unwrap();
        shard.cast(ShardMsg::Records(chunk.into(), permit)).unwrap();
    }
}

async fn player_json(shard: &ActorRef<ShardMsg>, id: &str) -> serde_json::Value {
    let (view, _) = ractor::call_t!(shard, ShardMsg::Query, 10_000, id.to_string())
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("player {id} missing"));
    serde_json::to_value(view).unwrap()
}

async fn flush(shard: &ActorRef<ShardMsg>) -> Progress {
    ractor::call_t!(shard, ShardMsg::Flush, 30_000)
        .unwrap()
        .unwrap()
}

/// The player records of `events` as a client that resends every batch of 50 once, the
/// retry arriving `retry_after_ms` after the original; arrivals follow event time.
fn with_retries(events: &[Event], retry_after_ms: i64) -> Vec<Record> {
    let mut out = Vec::new();
    for batch in events.chunks(50) {
        for arrival_shift in [0, retry_after_ms] {
            for e in batch {
                out.push(Record {
                    offset: out.len() as i64,
                    timestamp: e.ts + arrival_shift,
                    key: Some(e.player.as_bytes().to_vec()),
                    payload: Some(e.to_json()),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_is_counted_once_also_across_a_restart() {
    let env = TestEnv::new("dedupe", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 21,
        events: 3_000,
        players: 30,
        channels: 4,
        start_ts: START,
    });
    let mut model = Model::new(1, 120_000);
    model.apply_all(&events);
    // Retries 30 s after the original, well inside the default 10-minute window.
    let recs = with_retries(&events, 30_000);
    let metrics = Arc::new(Metrics::default());

    // The first owner sees the first 2,060 records, checkpoints, stops: in the middle of a
    // resent batch (originals at 2,000-2,049, their retries at 2,050-2,099), so 40 retries
    // of events it applied arrive after the restart.
    let first = start(&env, &store, ShardKind::Players, None, &metrics).await;
    feed(&first, &recs[..2_060]).await;
    let progress = flush(&first).await;
    first.stop(None);
    assert_eq!(progress.resume_offset, 2_060);
    let topic = format!("{}-Players", env.name);
    let mark = store.read_dedupe_from(&topic, 0).await.unwrap().unwrap();
    assert!(
        mark < 2_000,
        "the window reaches back before the resume offset: {mark}"
    );

    // The next owner reads from the mark, as the source does after a takeover: records
    // below the resume offset rebuild the window; the retries of batches the first owner
    // applied, arriving after the restart, are recognised.
    let second = start(&env, &store, ShardKind::Players, Some(progress), &metrics).await;
    feed(&second, &recs[mark as usize..]).await;
    let mut diffs = Vec::new();
    for id in model.players.keys() {
        diffs.extend(model.diff_player(id, &player_json(&second, id).await));
    }
    assert!(diffs.is_empty(), "retries counted again: {diffs:#?}");
    assert_eq!(metrics.applied_total(), events.len() as u64);
    let text = metrics.render();
    assert!(
        text.contains(&format!("tally_records_duplicate_total {}", events.len())),
        "every event was sent twice: {text}"
    );
    second.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_the_window_counts_again() {
    let env = TestEnv::new("dedupe-off", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 22,
        events: 400,
        players: 10,
        channels: 3,
        start_ts: START,
    });
    // Resent 11 minutes later: outside the default 10-minute window, so counted again.
    let late = with_retries(&events, 11 * 60_000);
    let metrics = Arc::new(Metrics::default());
    let shard = start(&env, &store, ShardKind::Players, None, &metrics).await;
    feed(&shard, &late).await;
    flush(&shard).await;
    assert_eq!(metrics.applied_total(), 2 * events.len() as u64);
    shard.stop(None);
}

/// 64 events dated ten years ahead of their arrival, amid a live audience: not applied,
/// counted, and the audience is what it was (they did not move the watermark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dated_records_leave_every_audience_intact() {
    let env = TestEnv::new("future", 1);
    let store = store(&env).await;
    let metrics = Arc::new(Metrics::default());
    let shard = start(&env, &store, ShardKind::Channels, None, &metrics).await;
    let ten_years = 10 * 365 * 24 * 3_600_000i64;
    let event = |n: usize, ts: i64, body: EventBody| Event {
        v: 1,
        id: format!("e{n}").into(),
        ts,
        player: format!("viewer-{}", n % 500).into(),
        body,
    };
    let mut recs = Vec::new();
    let mut push = |e: Event, arrival: i64, channel: &str| {
        recs.push(Record {
            offset: recs.len() as i64,
            timestamp: arrival,
            key: Some(channel.as_bytes().to_vec()),
            payload: Some(e.to_json()),
        })
    };
    // 500 viewers join 4 channels within a minute.
    for n in 0..500 {
        let channel = format!("ch-{}", n % 4);
        let ts = START + n as i64 * 100;
        let body = EventBody::ViewerJoin {
            channel: channel.as_str().into(),
        };
        push(event(n, ts, body), ts, &channel);
    }
    // A client with a clock ten years ahead sends 64 heartbeats.
    for n in 0..64 {
        let channel = format!("ch-{}", n % 4);
        let arrival = START + 60_000 + n as i64;
        let body = EventBody::ViewerHeartbeat {
            channel: channel.as_str().into(),
        };
        push(
            event(1_000 + n, arrival + ten_years, body),
            arrival,
            &channel,
        );
    }
    feed(&shard, &recs).await;
    flush(&shard).await;
    for c in 0..4 {
        let id = format!("ch-{c}");
        let (view, _) = ractor::call_t!(shard, ShardMsg::Query, 10_000, id.clone())
            .unwrap()
            .unwrap()
            .unwrap();
        let view = serde_json::to_value(view).unwrap();
        assert_eq!(view["concurrent_viewers"], 125, "{id}: {view}");
        assert_eq!(view["expirations"], 0, "{id}: {view}");
    }
    let text = metrics.render();
    assert!(text.contains("tally_records_future_total 64"), "{text}");
    shard.stop(None);
}
