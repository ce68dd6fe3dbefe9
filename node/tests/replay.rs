//! The exactly-once rules, tested deterministically in-process against the real Cassandra:
//! a replay after a partial checkpoint skips what each entity already reflects, and a stale
//! writer can never overwrite newer state.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::model::{generate, Model, StreamSpec};
use common::TestEnv;
use ractor::ActorRef;
use tally_node::config::{CassandraConfig, ShardConfig};
use tally_node::dead_letter::DeadLetters;
use tally_node::event::Event;
use tally_node::kind::ShardKind;
use tally_node::metrics::Metrics;
use tally_node::partitioner::partition_for;
use tally_node::shard::{self, Record, ShardArgs, ShardMsg};
use tally_node::store::{self, player_bucket, EntityRow, Progress, Store};
use tokio::sync::Semaphore;

async fn store(env: &TestEnv) -> Arc<Store> {
    let cfg = CassandraConfig {
        keyspace: env.keyspace.clone(),
        ..Default::default()
    };
    let session = store::connect(&cfg, Duration::from_secs(30)).await.unwrap();
    tally_node::store::schema::migrate(&session, &cfg)
        .await
        .unwrap();
    Arc::new(Store::prepare(session, &cfg.keyspace).await.unwrap())
}

async fn start_shard(store: &Arc<Store>, progress: Option<Progress>) -> ActorRef<ShardMsg> {
    start_shard_of(store, ShardKind::Players, progress).await
}

async fn start_shard_of(
    store: &Arc<Store>,
    kind: ShardKind,
    progress: Option<Progress>,
) -> ActorRef<ShardMsg> {
    let args = ShardArgs {
        kind,
        topic: format!("{kind:?}"),
        partition: 0,
        store: store.clone(),
        cfg: ShardConfig {
            checkpoint_interval_ms: 3_600_000,
            ..Default::default()
        },
        owner: "test".into(),
        progress,
        dedupe_from: None,
        metrics: Arc::new(Metrics::default()),
        dead_letters: None,
        push_interval: Duration::from_millis(250),
        history: Default::default(),
        history_cache: None,
    };
    shard::spawn(args).await.unwrap()
}

/// The player-topic records of `events` that land in partition 0 of 1, offsets from 0.
fn records(events: &[Event]) -> Vec<Record> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            offset: i as i64,
            timestamp: e.ts,
            key: Some(e.player.as_bytes().to_vec()),
            payload: Some(e.to_json()),
        })
        .collect()
}

async fn feed(shard: &ActorRef<ShardMsg>, recs: &[Record]) {
    let permits = Arc::new(Semaphore::new(1));
    for chunk in recs.chunks(500) {
        let permit = permits.clone().acquire_owned().await.unwrap();
        shard.cast(ShardMsg::Records(chunk.into(), permit)).unwrap();
    }
}

/// The channel-topic records of `events` (all in partition 0 of 1), offsets from 0.
fn channel_records(events: &[Event]) -> Vec<(Record, i64)> {
    events
        .iter()
        .flat_map(|e| e.channel_records())
        .enumerate()
        .map(|(i, (channel, e))| {
            let rec = Record {
                offset: i as i64,
                timestamp: e.ts,
                key: Some(channel.as_bytes().to_vec()),
                payload: Some(e.to_json()),
            };
            (rec, e.ts)
        })
        .collect()
}

async fn channel_diffs(shard: &ActorRef<ShardMsg>, model: &Model) -> Vec<String> {
    let mut diffs = Vec::new();
    for id in model.channels.keys() {
        let (view, _) = ractor::call_t!(shard, ShardMsg::Query, 10_000, id.to_string())
            .unwrap()
            .unwrap()
            .unwrap_or_else(|| panic!("channel {id} missing"));
        diffs.extend(model.diff_channel(id, &serde_json::to_value(view).unwrap()));
    }
    diffs
}

async fn player_json(shard: &ActorRef<ShardMsg>, id: &str) -> serde_json::Value {
    let (view, _) = ractor::call_t!(shard, ShardMsg::Query, 10_000, id.to_string())
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

/// Channels are stored as a base plus one delta per checkpoint: a new owner loads every
/// channel from its log, replays from an older resume offset, and is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_reload_from_base_and_deltas_and_replay_exactly() {
    let env = TestEnv::new("chanlog", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 11,
        events: 8_000,
        players: 300,
        channels: 4,
        start_ts: 1_700_000_000_000,
    });
    let all = channel_records(&events);
    let recs: Vec<Record> = all.iter().map(|(r, _)| r.clone()).collect();
    assert!(recs.len() > 2_000, "{} channel records", recs.len());
    let mut model = Model::new(1, 120_000);
    model.apply_all(&events);

    // The first owner checkpoints after each tenth of the stream: a base, then deltas.
    let first = start_shard_of(&store, ShardKind::Channels, None).await;
    for piece in recs.chunks(recs.len() / 10 + 1) {
        feed(&first, piece).await;
        ractor::call_t!(first, ShardMsg::Flush, 30_000)
            .unwrap()
            .unwrap();
    }
    assert!(channel_diffs(&first, &model).await.is_empty());
    first.stop(None);

    let resume = recs.len() / 3;
    let second = start_shard_of(
        &store,
        ShardKind::Channels,
        Some(Progress {
            resume_offset: resume as i64,
            watermark_ms: all[..resume].iter().map(|(_, ts)| *ts).max().unwrap(),
        }),
    )
    .await;
    feed(&second, &recs[resume..]).await;
    let diffs = channel_diffs(&second, &model).await;
    assert!(diffs.is_empty(), "after reload and replay: {diffs:#?}");
    second.stop(None);
}

/// Two writers of one channel's log, as after a failover with a paused former owner: the
/// stored channel is always one writer's complete chain, the one of the highest offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_channel_writer_never_mixes_into_the_log() {
    use tally_node::entity::Channel;
    use tally_node::event::EventBody;
    use tally_node::store::channel_log::{self, LogState};
    let env = TestEnv::new("chanzombie", 1);
    let store = store(&env).await;
    let write = |w: channel_log::ChannelWrite| {
        let store = store.clone();
        async move {
            for row in &w.rows {
                store.write_log_row(0, "c", row).await.unwrap();
            }
            for (gen, at) in &w.deletes {
                store.delete_log_gen(0, "c", *gen, *at).await.unwrap();
            }
        }
    };
    let join = |c: &mut Channel, who: &str, ts: i64| {
        let body = EventBody::ViewerJoin {
            channel: "c".into(),
        };
        c.apply(ts, who, &body, ts, 120_000);
    };
    let loaded = || async {
        let l = channel_log::load(&store, 0, "c").await.unwrap().unwrap();
        (l.channel, l.offset)
    };
    // The same records reach both writers: identical states at identical offsets.
    let mut new_owner = Channel::default();
    let mut new_log = LogState::default();
    let mut stale = Channel::default();
    let mut stale_log = LogState::default();
    for i in 0..=8 {
        join(&mut new_owner, &format!("v{i}"), i);
        join(&mut stale, &format!("v{i}"), i);
    }
    write(new_log.plan(&mut new_owner, 8)).await;
    for i in 9..=12 {
        join(&mut new_owner, &format!("v{i}"), i);
        write(new_log.plan(&mut new_owner, i)).await;
        new_log.written();
    }
    // The stale writer wakes with offset 8 and writes a base and a delta: it loses.
    write(stale_log.plan(&mut stale, 8)).await;
    stale_log.written();
    assert_eq!(loaded().await, (new_owner.clone(), 12));
    // It goes on past the new owner (records it had fetched): now its chain is the newest.
    for i in 9..=15 {
        join(&mut stale, &format!("v{i}"), i);
    }
    write(stale_log.plan(&mut stale, 15)).await;
    assert_eq!(loaded().await, (stale.clone(), 15));
    // The new owner passes it again; its own generation continues and wins.
    for i in 13..=20 {
        join(&mut new_owner, &format!("v{i}"), i);
    }
    write(new_log.plan(&mut new_owner, 20)).await;
    new_log.written();
    assert_eq!(loaded().await, (new_owner.clone(), 20));

    // A torn base (every chunk but the one with the head) leaves the previous head.
    let mut big = new_owner.clone();
    for i in 0..30_000 {
        join(&mut big, &format!("viewer-{i:08}"), 21);
    }
    let mut fresh_log = LogState::default();
    let torn = fresh_log.plan(&mut big, 21);
    assert!(torn.rows.len() > 1);
    for row in &torn.rows[..torn.rows.len() - 1] {
        store.write_log_row(0, "c", row).await.unwrap();
    }
    assert_eq!(loaded().await, (new_owner.clone(), 20));
    store
        .write_log_row(0, "c", torn.rows.last().unwrap())
        .await
        .unwrap();
    assert_eq!(loaded().await, (big, 21));
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
    // Another player of the same bucket, so both rows travel in one batch (one mutation).
    let bucket = player_bucket("p");
    let q = (0..)
        .map(|n| format!("q{n}"))
        .find(|q| player_bucket(q) == bucket)
        .unwrap();
    store
        .write_players(&[(bucket, "p", &newer), (bucket, &q, &older)])
        .await
        .unwrap();
    // A paused former owner wakes up and writes what it had: its row of p must lose, while
    // its row of q, newer than what is stored, wins within the same batch.
    let newest_q = EntityRow {
        state: vec![3],
        applied_offset: 500,
    };
    store
        .write_players(&[(bucket, "p", &older), (bucket, &q, &newest_q)])
        .await
        .unwrap();
    let row = store.read_player("p").await.unwrap().unwrap();
    assert_eq!((row.state, row.applied_offset), (vec![2], 900));
    let row = store.read_player(&q).await.unwrap().unwrap();
    assert_eq!((row.state, row.applied_offset), (vec![3], 500));

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
    let session = store::connect(&cfg, Duration::from_secs(30)).await.unwrap();
    let first = tally_node::store::schema::migrate(&session, &cfg)
        .await
        .unwrap();
    assert_eq!(first, tally_node::store::schema::MIGRATIONS.len());
    assert_eq!(
        tally_node::store::schema::migrate(&session, &cfg)
            .await
            .unwrap(),
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
        (1..=tally_node::store::schema::MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_stored_before_buckets_are_still_found() {
    let env = TestEnv::new("legacyplayers", 1);
    let store = store(&env).await;
    // No legacy rows when this store started: a missing player is just missing.
    assert!(store.read_player("old").await.unwrap().is_none());
    // A row as an earlier version wrote it, into the table before player buckets.
    store
        .session
        .query_unpaged(
            format!(
                "INSERT INTO {}.players (id, state, applied_offset) VALUES ('old', 0x0102, 41)",
                env.keyspace
            ),
            (),
        )
        .await
        .unwrap();
    let store = Store::prepare(store.session.clone(), &env.keyspace)
        .await
        .unwrap();
    let row = store.read_player("old").await.unwrap().unwrap();
    assert_eq!((row.state, row.applied_offset), (vec![1, 2], 41));
    // Once written again, the bucketed row is the one read.
    let newer = EntityRow {
        state: vec![9],
        applied_offset: 50,
    };
    store
        .write_players(&[(player_bucket("old"), "old", &newer)])
        .await
        .unwrap();
    let row = store.read_player("old").await.unwrap().unwrap();
    assert_eq!((row.state, row.applied_offset), (vec![9], 50));
    assert!(store.read_player("never").await.unwrap().is_none());
}

/// Records written to Kafka by producers other than Tally's ingest may be anything: each bad
/// one is skipped, counted and sent to the dead-letter topic with the reason, and its
/// neighbours (and the entities read ahead of it) apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_skipped_counted_and_dead_lettered_and_neighbours_apply() {
    let env = TestEnv::new("badrecords", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 11,
        events: 400,
        players: 20,
        channels: 3,
        start_ts: 1_700_000_000_000,
    });
    let mut model = Model::new(1, 120_000);
    model.apply_all(&events);
    // Bad records between the good ones, shifting the good ones' offsets.
    let bad = [
        (None, Some(b"{}".to_vec())),                                  // no key
        (Some(vec![0xff, 0xfe]), Some(events[0].to_json())),           // key not utf-8
        (Some(b"p-x".to_vec()), None),                                 // no value
        (Some(b"p-x".to_vec()), Some(b"{\"v\":1,\"kind\":".to_vec())), // malformed json
    ];
    let mut recs = Vec::new();
    for (i, rec) in records(&events).into_iter().enumerate() {
        if i % 100 == 50 {
            let (key, payload) = bad[i / 100].clone();
            recs.push(shard::Record {
                offset: 0,
                timestamp: -1,
                key,
                payload,
            });
        }
        recs.push(rec);
    }
    for (offset, r) in recs.iter_mut().enumerate() {
        r.offset = offset as i64;
    }
    let metrics = Arc::new(Metrics::default());
    let dead_letters =
        Arc::new(DeadLetters::start(&env.kafka_config(), "test", metrics.clone()).unwrap());
    let args = ShardArgs {
        kind: ShardKind::Players,
        topic: "players".into(),
        partition: 0,
        store: store.clone(),
        cfg: ShardConfig::default(),
        owner: "test".into(),
        progress: None,
        dedupe_from: None,
        metrics: metrics.clone(),
        dead_letters: Some(dead_letters.clone()),
        push_interval: Duration::from_millis(250),
        history: Default::default(),
        history_cache: None,
    };
    let shard = shard::spawn(args).await.unwrap();
    feed(&shard, &recs).await;
    let p = ractor::call_t!(shard, ShardMsg::Flush, 30_000)
        .unwrap()
        .unwrap();
    assert_eq!(p.resume_offset, recs.len() as i64);
    let mut diffs = Vec::new();
    for id in model.players.keys() {
        diffs.extend(model.diff_player(id, &player_json(&shard, id).await));
    }
    assert!(diffs.is_empty(), "good records around bad ones: {diffs:#?}");
    let text = metrics.render();
    assert!(
        text.contains(&format!("tally_records_invalid_total {}", bad.len())),
        "{text}"
    );
    assert_eq!(metrics.applied_total(), events.len() as u64);
    shard.stop(None);
    dead_letters.flush(Duration::from_secs(10));
    let mut dead = env.dead_letters(bad.len(), Duration::from_secs(30));
    assert_eq!(dead.len(), bad.len(), "{dead:#?}");
    // The topic has several partitions: put them back in source order.
    let source_offset = |d: &common::DeadLetterRecord| -> i64 {
        d.headers["tally-source"]
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    dead.sort_by_key(source_offset);
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["tally-reason"].as_str())
        .collect();
    for (d, want) in dead.iter().zip([
        "record has no key",
        "key is not utf-8",
        "record has no value",
        "invalid event: event: malformed json",
    ]) {
        assert_eq!(d.headers["tally-field"], "event");
        assert!(d.headers["tally-reason"].starts_with(want), "{reasons:?}");
        assert!(d.headers["tally-source"].starts_with("players/0/"), "{d:?}");
    }
    assert_eq!(dead[3].payload, b"{\"v\":1,\"kind\":");
}

/// Reads never create state: after a restart (the partition was checkpointed before, so
/// any id may be stored) a scan of ids that were never sent answers "no events" and leaves
/// the resident entities, and the top-N view, exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_unknown_ids_creates_no_entities_before_or_after_a_restart() {
    let env = TestEnv::new("scan", 1);
    let store = store(&env).await;
    let events = generate(&StreamSpec {
        seed: 11,
        events: 2_000,
        players: 40,
        channels: 6,
        start_ts: 1_700_000_000_000,
    });
    let resident = |shard: ActorRef<ShardMsg>| async move {
        ractor::call_t!(shard, ShardMsg::Stats, 10_000)
            .unwrap()
            .resident_entities
    };
    let scan = |shard: ActorRef<ShardMsg>| async move {
        for n in 0..3_000 {
            let id = format!("never-sent-{n}");
            let answer = ractor::call_t!(shard, ShardMsg::Query, 10_000, id.clone()).unwrap();
            assert!(answer.unwrap().is_none(), "{id} was never sent");
        }
    };
    let channel_recs: Vec<Record> = channel_records(&events).into_iter().map(|r| r.0).collect();
    for (kind, recs) in [
        (ShardKind::Players, records(&events)),
        (ShardKind::Channels, channel_recs),
    ] {
        // Before any checkpoint: nothing can be stored, and nothing is created.
        let first = start_shard_of(&store, kind, None).await;
        feed(&first, &recs).await;
        let before = resident(first.clone()).await;
        assert!(before > 0);
        scan(first.clone()).await;
        assert_eq!(resident(first.clone()).await, before, "{kind:?}");
        let progress = ractor::call_t!(first, ShardMsg::Flush, 30_000)
            .unwrap()
            .unwrap();
        first.stop(None);

        // After a restart every id may be stored: each is looked up, none is created. A
        // channel shard starts with the channels that had viewers at the watermark, which
        // history samples (docs/ARCHITECTURE.md, "History"); nothing else is resident.
        let second = start_shard_of(&store, kind, Some(progress)).await;
        let at_start = resident(second.clone()).await;
        match kind {
            ShardKind::Players => assert_eq!(at_start, 0),
            ShardKind::Channels => assert!(at_start <= 6, "{at_start} channels at start"),
        }
        scan(second.clone()).await;
        assert_eq!(
            resident(second.clone()).await,
            at_start,
            "{kind:?} after restart"
        );
        if kind == ShardKind::Channels {
            let top = ractor::call_t!(second, ShardMsg::Top, 10_000, shard::TopBy::Follows, 1000)
                .unwrap();
            assert!(
                top.len() <= 6,
                "only channels that saw events rank: {top:?}"
            );
            assert!(top.iter().all(|e| !e.id.starts_with("never-sent-")));
        }
        second.stop(None);
    }
}
