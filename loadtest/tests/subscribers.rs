//! Subscribers against a real node (in process) on the real Kafka and Cassandra, auth on:
//! while a players run is sent, every subscriber receives pushed updates whose latency is
//! measured, and after the drain every last frame equals the verified final state; a
//! deliberately wrong expected counter is reported, naming the subscription.

use std::time::Duration;

use tally_loadtest::drive::{self, DriveOpts, Progress, Via};
use tally_loadtest::players::{self, Expected, PlayersGen, PlayersSpec};
use tally_loadtest::subscribers::{self, Population, Subscribers, SubscribersOpts, Target, Want};
use tally_loadtest::verify::{verify, VerifyOpts};
use tally_node::config::PushConfig;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_update_and_end_on_the_final_state() {
    let id = format!("ltsubs_{}_{}", std::process::id(), rand::random::<u32>());
    let push = PushConfig {
        interval_ms: 50,
        ..Default::default()
    };
    let node = common::TestNode::start(&id, 3, push).await;
    let prefix = format!("{id}-");
    let player = |n| players::player_id(&prefix, n);
    let channel = |n| players::channel_id(&prefix, n);
    let population = Population {
        players: 200,
        channels: 10,
        player_id: &player,
        channel_id: &channel,
    };
    let mut targets = subscribers::plan(
        100,
        "players=60,channels=30,top=10".parse().unwrap(),
        3,
        &population,
    );
    // A player the run never touches: its snapshot and last frame are `data: null`.
    let stranger = Target::Player(format!("{prefix}nobody"));
    targets.push(stranger.clone());
    let subs = Subscribers::connect(
        targets,
        SubscribersOpts {
            nodes: vec![node.addr.clone()],
            api_key: Some(node.read_key.clone()),
            connect_rate: 200.0,
            connect_concurrency: 16,
            connect_timeout: Duration::from_secs(30),
            push_interval: Duration::from_millis(50),
            probe: None,
        },
    )
    .await
    .unwrap();

    let spec = PlayersSpec {
        players: 200,
        channels: 10,
        events: 6_000,
        seed: 5,
        id_prefix: prefix.clone(),
        start_ts: 0,
    };
    let mut expected = Expected::new(3, 120_000);
    let progress = Progress::default();
    let opts = DriveOpts {
        event_time: None,
        batch: 200,
        rate: Some(3_000.0),
        lanes: 1,
        pipeline: 4,
        api_key: None,
        stamp_send_time: true,
    };
    let via = Via::Kafka(Box::new(node.kafka.clone()));
    drive::drive(PlayersGen::new(spec), &via, &opts, &mut expected, &progress)
        .await
        .unwrap();
    let report = verify(
        &expected,
        &VerifyOpts {
            nodes: vec![node.addr.clone()],
            timeout: Duration::from_secs(60),
            sample: None,
            seed: 1,
            concurrency: 16,
            api_key: Some(node.read_key.clone()),
        },
    )
    .await;
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);

    let client =
        tally_loadtest::http_client(Duration::from_secs(10), Some(&node.read_key)).unwrap();
    let nodes = [node.addr.clone()];
    let (wants, notes) =
        subscribers::final_states(subs.targets(), &expected, &prefix, &nodes, &client)
            .await
            .unwrap();
    // The topics are this test's own: every top-N view is checked against the model.
    assert!(notes.is_empty(), "{notes:?}");
    let i = subs.targets().iter().position(|t| *t == stranger).unwrap();
    assert_eq!(wants[i], Want::Entity(None));
    let mismatches = subs.check_final(&wants, Duration::from_secs(10)).await;
    assert!(mismatches.is_empty(), "{mismatches:?}");

    // One wrong expected counter: found, and only in that player's subscription.
    let victim = subs
        .targets()
        .iter()
        .position(|t| matches!(t, Target::Player(p) if expected.players.contains_key(p)))
        .unwrap();
    let Target::Player(victim_id) = subs.targets()[victim].clone() else {
        unreachable!()
    };
    expected.players.get_mut(&victim_id).unwrap().kills += 1;
    let (wrong, _) = subscribers::final_states(subs.targets(), &expected, &prefix, &nodes, &client)
        .await
        .unwrap();
    let mismatches = subs.check_final(&wrong, Duration::from_secs(1)).await;
    let kills = expected.players[&victim_id].view(&victim_id).kills;
    assert!(
        mismatches.contains(&format!(
            "player:{victim_id}.kills: want {kills}, got {}",
            kills - 1
        )),
        "{mismatches:?}"
    );
    assert!(
        mismatches
            .iter()
            .all(|m| m.starts_with(&format!("player:{victim_id}."))),
        "{mismatches:?}"
    );

    let r = subs.finish(Vec::new(), notes).await;
    assert_eq!(r.clients, 101);
    assert_eq!(r.snapshots, 101, "one snapshot each, no reconnects");
    assert!(r.updates > 0 && r.latency.samples > 0, "{r:?}");
    // The node's push interval is 50 ms: updates come well within a second of the event.
    assert!(r.latency.p50_ms < 1_000.0, "{:?}", r.latency);
    assert_eq!(
        (r.error_frames, r.protocol_errors, r.reconnects, r.gaps),
        (0, 0, 0, 0),
        "{:?}",
        r.problems
    );
    node.stop().await;
}
