//! The load tester against a real node (in-process) on the real Kafka and Cassandra: a
//! players run verifies exact (querying with an API key: the node has auth on), and a
//! deliberately wrong expected counter is reported.

use std::time::Duration;

use tally_loadtest::drive::{self, DriveOpts, Progress, Via};
use tally_loadtest::players::{Expected, PlayersGen, PlayersSpec};
use tally_loadtest::verify::{verify, VerifyOpts};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_run_verifies_exact_and_a_wrong_counter_is_reported() {
    let id = format!("ltverify_{}_{}", std::process::id(), rand::random::<u32>());
    let node = common::TestNode::start(&id, 3, Default::default()).await;
    let (base, kafka, read_key) = (node.addr.clone(), node.kafka.clone(), node.read_key.clone());

    let spec = PlayersSpec {
        players: 300,
        channels: 20,
        events: 8_000,
        seed: 42,
        id_prefix: format!("{id}-"),
        start_ts: 1_700_000_000_000,
    };
    let mut expected = Expected::new(3, 120_000);
    let progress = Progress::default();
    let opts = DriveOpts {
        event_time: None,
        batch: 500,
        rate: None,
        lanes: 1,
        pipeline: 4,
        api_key: None,
        stamp_send_time: false,
    };
    drive::drive(
        PlayersGen::new(spec),
        &Via::Kafka(Box::new(kafka)),
        &opts,
        &mut expected,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(
        progress.sent.load(std::sync::atomic::Ordering::Relaxed),
        8_000
    );

    let vopts = VerifyOpts {
        nodes: vec![base.clone()],
        timeout: Duration::from_secs(60),
        sample: None,
        seed: 1,
        concurrency: 16,
        api_key: Some(read_key),
    };
    let report = verify(&expected, &vopts).await;
    assert!(
        report.mismatches.is_empty(),
        "{:?}",
        &report.mismatches[..report.mismatches.len().min(10)]
    );
    assert_eq!(report.players_checked, expected.players.len());

    // One deliberately wrong expected counter is found and named, and nothing else.
    let victim = expected.players.keys().min().unwrap().clone();
    expected.players.get_mut(&victim).unwrap().kills += 1;
    let report = verify(
        &expected,
        &VerifyOpts {
            timeout: Duration::from_secs(2),
            ..vopts
        },
    )
    .await;
    assert!(
        !report.mismatches.is_empty(),
        "a wrong counter went unnoticed"
    );
    assert!(
        report
            .mismatches
            .iter()
            .all(|m| m.starts_with(&format!("player {victim}.")) && m.contains("kills")),
        "{:?}",
        report.mismatches
    );
    node.stop().await;
}
