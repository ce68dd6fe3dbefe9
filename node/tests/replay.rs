//! The exactly-once rules, tested deterministically in-process against the real Cassandra:
//! a replay after a partial checkpoint skips what each entity already reflects, and a stale
//! writer can never overwrite newer state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::model::{generate, Model, StreamSpec};
use common::TestEnv;
use ractor::{Actor, ActorRef};
use tally_node::config::{CassandraConfig, ShardConfig};
use tally_node::event::Event;
use tally_node::metrics::Metrics;
use tally_node::partitioner::partition_for;
use tally_node::shard::{Record, Shard, ShardArgs, ShardKind, ShardMsg};
use tally_node::storage::{self, EntityRow, Progress, Store};
use tokio::sync::Semaphore;

async fn store(env: &TestEnv) -> Arc<Store> {
    let cfg = CassandraConfig {
        keyspace: env.keyspace.clone(),
        ..Default::default()
    };
    let session = storage::connect(&cfg, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    tally_node::schema::migrate(&session, &cfg).await.unwrap();
    Arc::new(Store::prepare(session, &cfg.keyspace).await.unwrap())
}

async fn start_shard(store: &Arc<Store>, progress: Option<Progress>) -> ActorRef<ShardMsg> {
    let args = ShardArgs {
        kind: ShardKind::Players,
        topic: "players".into(),
        partition: 0,
        store: store.clone(),
        cfg: ShardConfig {
            checkpoint_interval_ms: 3_600_000,
            ..Default::default()
        },
        owner: "test".into(),
        progress,
        metrics: Arc::new(Metrics::default()),
    };
    Actor::spawn(None, Shard, args).await.unwrap().0
}

/// The player-topic records of `events` that land in partition 0 of 1, offsets from 0.
fn records(events: &[Event]) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            offset: i as i64,
            key: Some(e.player.as_bytes().to_vec()),
            payload: Some(e.to_json()),
        })
        .collect()
}

async fn feed(shard: &ActorRef<ShardMsg>, recs: &[Record]) {
    let permits = Arc::new(Semaphore::new(1));
    for chunk in recs.chunks(500) {
        let permit = permits.clone().acquire_owned().await.unwrap();
        shard
            .cast(ShardMsg::Records(chunk.to_vec(), permit))
            .unwrap();
    }
}

async fn player_json(shard: &ActorRef<ShardMsg>, id: &str) -> serde_json::Value {
    let (view, _) = ractor::call_t!(shard, ShardMsg::Player, 10_000, id.to_string())
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("player {id} missing"));
    serde_json::to_value(view).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_partial_checkpoint_skips_what_entities_already_reflect() {
    let env = TestEnv::new("replay", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 3,
        events: 6_000,
        players: 50,
        channels: 5,
        start_ts: 1_700_000_000_000,
    });
    assert!(events.iter().all(|e| partition_for(&e.player, 1) == 0));
    let recs = records(&events);
    let mut model = Model::new(1, 120_000);
    model.apply_all(&events);

    // First owner applies everything and checkpoints: entity rows reflect offsets up to 5999.
    let first = start_shard(&store, None).await;
    feed(&first, &recs).await;
    let p = ractor::call_t!(first, ShardMsg::Flush, 30_000)
        .unwrap()
        .unwrap();
    assert_eq!(p.resume_offset, 6_000);
    first.stop(None);

    // A crash between entity rows and the progress row leaves the resume offset behind:
    // the next owner starts from offset 2000 and replays 2000..6000 onto stored entities.
    let second = start_shard(
        &store,
        Some(Progress {
            resume_offset: 2_000,
            watermark_ms: events[1_999].ts,
        }),
    )
    .await;
    feed(&second, &recs[2_000..]).await;
    let mut diffs = Vec::new();
    for id in model.players.keys() {
        diffs.extend(model.diff_player(id, &player_json(&second, id).await));
    }
    assert!(diffs.is_empty(), "replay counted records twice: {diffs:#?}");
    second.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_cannot_overwrite_newer_state() {
    let env = TestEnv::new("zombie", 1);
    let store = store(&env).await;
    let newer = EntityRow {
        state: vec![2],
        applied_offset: 900,
    };
    let older = EntityRow {
        state: vec![1],
        applied_offset: 400,
    };
    store.write_player("p", &newer).await.unwrap();
    // A paused former owner wakes up and writes what it had: it must lose.
    store.write_player("p", &older).await.unwrap();
    let row = store.read_player("p").await.unwrap().unwrap();
    assert_eq!((row.state, row.applied_offset), (vec![2], 900));

    store
        .write_progress(
            "t",
            0,
            Progress {
                resume_offset: 900,
                watermark_ms: 9,
            },
            "new",
        )
        .await
        .unwrap();
    store
        .write_progress(
            "t",
            0,
            Progress {
                resume_offset: 400,
                watermark_ms: 4,
            },
            "zombie",
        )
        .await
        .unwrap();
    assert_eq!(
        store.read_progress("t", 0).await.unwrap(),
        Some(Progress {
            resume_offset: 900,
            watermark_ms: 9
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_recorded() {
    let env = TestEnv::new("migrate", 1);
    let cfg = CassandraConfig {
        keyspace: env.keyspace.clone(),
        ..Default::default()
    };
    let session = storage::connect(&cfg, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let first = tally_node::schema::migrate(&session, &cfg).await.unwrap();
    assert_eq!(first, tally_node::schema::MIGRATIONS.len());
    assert_eq!(
        tally_node::schema::migrate(&session, &cfg).await.unwrap(),
        0,
        "second run applied again"
    );
    let versions: Vec<i32> = session
        .query_unpaged(
            format!("SELECT version FROM {}.schema_migrations", cfg.keyspace),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i32,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    let mut versions = versions;
    versions.sort();
    assert_eq!(
        versions,
        (1..=tally_node::schema::MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
}
