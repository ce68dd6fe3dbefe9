//! Exactly-once counters against the real Kafka and Cassandra: a seeded stream of mixed
//! events, compared entity by entity with the reference model, through kill -9, clean
//! restarts and passivation.

mod common;

use std::time::Duration;

use common::model::{generate, Model, StreamSpec};
use common::{http_client, produce, scenarios, NodeProcess, TestEnv};

use scenarios::TIMEOUT_SECS;

/// Fast checkpoints and a short viewer timeout, so tests exercise both. Checkpoints space
/// out while the node works through the stream's backlog (the default catch-up pace).
fn shard_config(passivate_after_secs: u64) -> String {
    format!(
        "[shard]\ncheckpoint_interval_ms = 200\nviewer_timeout_secs = {TIMEOUT_SECS}\npassivate_after_secs = {passivate_after_secs}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_exact_after_100k_events() {
    let env = TestEnv::new("exact", 4);
    let spec = StreamSpec {
        seed: 11,
        events: 100_000,
        players: 2_000,
        channels: 40,
        start_ts: 1_700_000_000_000,
    };
    let events = generate(&spec);
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);

    let node = NodeProcess::start(&env, "n1", &shard_config(600));
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    produce(&producer, &events, 2_000).await;
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(120))
        .await;

    // Top-N agrees with the model too.
    let top = common::model::get_json(
        &http_client(),
        &node.url("/v1/channels/top?by=peak&limit=5"),
    )
    .await
    .unwrap();
    let mut want: Vec<(String, u64)> = model
        .channels
        .iter()
        .map(|(id, c)| (id.clone(), c.peak))
        .collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let got: Vec<(String, u64)> = top["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["peak"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want[..5].to_vec());
    assert!(
        node.errors.lock().unwrap().is_empty(),
        "unexpected ERROR lines: {:?}",
        node.errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_keeps_every_counter_exact() {
    scenarios::kill_9_at_random_points(&TestEnv::new("crash", 4)).await;
}

/// A level-up of `player` to `level` at `ts`, with an id of its own.
fn level_up(player: &str, ts: i64, level: u32) -> tally_node::event::Event {
    tally_node::event::Event {
        v: 1,
        id: format!("flush-{player}-{level}").into(),
        ts,
        player: player.into(),
        body: tally_node::event::EventBody::LevelUp { level },
    }
}

/// The node's players shard as `/v1/cluster?local=1` shows it (one partition).
async fn players_shard(client: &reqwest::Client, node: &NodeProcess) -> serde_json::Value {
    let cluster = common::model::get_json(client, &node.url("/v1/cluster?local=1"))
        .await
        .unwrap();
    cluster["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "players")
        .unwrap()
        .clone()
}

/// `shard.flush_period_ms`: a player that changes all the time is written about once per
/// period (not once per checkpoint), the resume offset stays behind its unwritten changes,
/// and a kill -9 meanwhile loses nothing and counts nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_written_once_per_flush_period_is_exact_after_kill_9() {
    let env = TestEnv::new("flushperiod", 1);
    let config = "[shard]\ncheckpoint_interval_ms = 100\nflush_period_ms = 3000\n";
    let mut node = NodeProcess::start(&env, "n1", config);
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    let client = http_client();
    let start_ts = 1_700_000_000_000;
    // One event of a second player first, then 40 of the hot one over about 4 s (one per
    // checkpoint interval): a checkpoint per event would write 40 rows of it.
    let mut events = vec![level_up("flush-cold", start_ts, 1)];
    produce(&producer, &events, 1).await;
    let rows_before = node.metric("tally_checkpoint_rows_total").await;
    for i in 0..40 {
        let e = level_up("flush-hot", start_ts + i as i64 * 100, i + 1);
        produce(&producer, std::slice::from_ref(&e), 1).await;
        events.push(e);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(30))
        .await;
    let rows = node.metric("tally_checkpoint_rows_total").await - rows_before;
    assert!(
        rows <= 4,
        "{rows} entity rows written for 41 events in about 4 s with a 3 s flush period"
    );
    // The hot player's last changes are unwritten: the durable offset is behind.
    let shard = players_shard(&client, &node).await;
    assert!(
        shard["durable_offset"].as_i64().unwrap() < shard["next_offset"].as_i64().unwrap(),
        "nothing unwritten: {shard}"
    );
    node.kill9();
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(60))
        .await;
    // A retry of the whole stream after the restart still counts once.
    produce(&producer, &events, 41).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(30))
        .await;
}

/// A checkpoint with a flush period writes the partition's buckets up to its watermark but
/// records an older resume point: a replay from it must find those buckets stored, not
/// make them anew. p changes first (minute 0), q later (minute 0, then minute 1), then p
/// again (minute 1); p comes due and is written with the minute-1 partition bucket while q
/// is not, and a kill -9 follows. One record per batch, so q is resident when the replay
/// reaches its minute-1 record. The minute-1 bucket must still count both players.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_an_older_resume_point_keeps_the_partition_buckets_written_ahead() {
    let env = TestEnv::new("flushglobal", 1);
    let config = "[shard]\ncheckpoint_interval_ms = 100\ncatch_up_checkpoint_interval_ms = 100\nflush_period_ms = 3000\nmax_batch = 1\n";
    let mut node = NodeProcess::start(&env, "n1", config);
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    let client = http_client();
    let minute0 = 1_700_000_040_000; // a minute's start
    let minute1 = minute0 + 60_000;
    let started = std::time::Instant::now();
    produce(&producer, &[level_up("p", minute0 + 30_000, 2)], 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce(&producer, &[level_up("q", minute0 + 40_000, 2)], 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&producer, &[level_up("q", minute1 + 2_000, 3)], 1).await;
    produce(&producer, &[level_up("p", minute1 + 3_000, 3)], 1).await;
    // p is due 3 s after its first change; q 1.5 s later. Kill between the two.
    tokio::time::sleep(Duration::from_millis(3600).saturating_sub(started.elapsed())).await;
    let shard = players_shard(&client, &node).await;
    node.kill9();
    assert!(
        shard["durable_offset"].as_i64().unwrap() < shard["next_offset"].as_i64().unwrap(),
        "q's change should still be unwritten at the kill: {shard}"
    );
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    // Once the replay is applied and written (the stats read what is stored), the
    // minute-1 bucket holds both players.
    let next = shard["next_offset"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let durable = players_shard(&client, &node).await["durable_offset"].as_i64();
        if durable.is_some_and(|d| d >= next) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replay was not written in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = node.url(&format!(
        "/v1/stats?metric=dau&step=minute&from={minute0}&to={}",
        minute1 + 60_000
    ));
    let body = common::model::get_json(&client, &url).await.unwrap();
    let values: Vec<(i64, i64)> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["start"].as_i64().unwrap(), b["value"].as_i64().unwrap()))
        .collect();
    assert_eq!(values, [(minute0, 2), (minute1, 2)], "dau per minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_so_a_clean_restart_replays_nothing() {
    let env = TestEnv::new("sigterm", 2);
    let spec = StreamSpec {
        seed: 5,
        events: 10_000,
        players: 300,
        channels: 10,
        start_ts: 1_700_000_000_000,
    };
    let events = generate(&spec);
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);

    let mut node = NodeProcess::start(&env, "n1", &shard_config(600));
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    produce(&producer, &events, 1_000).await;
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(60))
        .await;
    // Durable offsets reach Kafka's group offsets (for lag tools) while the node runs:
    // checkpoints every second, commits every two.
    let client = http_client();
    let mut differ = None;
    for _ in 0..40 {
        let cluster = common::model::get_json(&client, &node.url("/v1/cluster"))
            .await
            .unwrap();
        let mut durable: Vec<(String, i32, i64)> = cluster["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let topic = match s["kind"].as_str().unwrap() {
                    "players" => env.player_topic.clone(),
                    _ => env.channel_topic.clone(),
                };
                let offset = s["durable_offset"].as_i64().unwrap();
                // Nothing durable is nothing to commit.
                let offset = if offset > 0 { offset } else { -1 };
                (topic, s["partition"].as_i64().unwrap() as i32, offset)
            })
            .collect();
        let mut committed = env.kafka_commits();
        durable.sort();
        committed.sort();
        if durable == committed {
            differ = None;
            break;
        }
        differ = Some((durable, committed));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some((durable, committed)) = differ {
        panic!("kafka group offsets differ from the durable offsets: durable {durable:?}, committed {committed:?}");
    }

    let status = node.terminate();
    assert!(
        status.success(),
        "tally-node exited with {status} on SIGTERM"
    );
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A clean restart applies nothing. It re-reads only what the dedupe window needs (the
    // records that arrived within shard.dedupe_window_secs; here all of them), feeding
    // them to the window and not to the entities.
    let records: usize = events.iter().map(|e| 1 + e.channel_records().len()).sum();
    let consumed = node.metric("tally_records_consumed_total").await;
    assert!(
        consumed <= records as u64,
        "re-read {consumed} records, more than the {records} written"
    );
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(30))
        .await;
    assert_eq!(
        node.metric("tally_records_applied_total").await,
        0,
        "a clean restart applied records again"
    );
    assert_eq!(node.metric("tally_records_duplicate_total").await, 0);
    node.terminate();

    // With the window off, a clean restart reads nothing at all.
    node.set_env("TALLY_SHARD__DEDUPE_WINDOW_SECS", "0");
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node.metric("tally_records_consumed_total").await,
        0,
        "a clean restart without the dedupe window replayed records"
    );
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_entities_come_back_identical() {
    let env = TestEnv::new("passivate", 2);
    let spec = StreamSpec {
        seed: 8,
        events: 20_000,
        players: 500,
        channels: 12,
        start_ts: 1_700_000_000_000,
    };
    let events = generate(&spec);
    let (first, second) = events.split_at(events.len() / 2);
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);

    let node = NodeProcess::start(&env, "n1", &shard_config(1));
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    produce(&producer, first, 1_000).await;
    model.apply_all(first);
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(60))
        .await;

    // Idle for longer than passivate_after: everything is checkpointed and evicted, but
    // for the channels with viewers at the watermark, which history samples at every
    // point and keeps resident (docs/ARCHITECTURE.md, "History").
    let live = model
        .channels
        .keys()
        .filter(|id| model.concurrent(id) > 0)
        .count() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let client = http_client();
    loop {
        let cluster = common::model::get_json(&client, &node.url("/v1/cluster"))
            .await
            .unwrap();
        let resident: u64 = cluster["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["resident_entities"].as_u64().unwrap())
            .sum();
        if resident == live {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{resident} entities still resident, want the {live} live channels"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        node.metric("tally_entity_passivations_total").await
            >= (model.players.len() + model.channels.len()) as u64 - live
    );
    // Queries and new events reactivate them from Cassandra with identical state.
    produce(&producer, second, 1_000).await;
    model.apply_all(second);
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(60))
        .await;
    assert!(
        node.metric("tally_entity_loads_total").await > 0,
        "no entity was loaded back"
    );
}
