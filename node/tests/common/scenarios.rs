//! Scenarios more than one test file runs: the same steps on the plain services
//! (exactly_once.rs) and on the secure ones (secure.rs).

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::model::{generate, Model, StreamSpec};
use super::{produce, NodeProcess, TestEnv};

/// Event-time silence after which a viewer expires, in the tests' shard configs.
pub const TIMEOUT_SECS: u64 = 60;

/// Checkpoints every `checkpoint_interval_ms`, even during a backlog, and a short viewer
/// timeout.
pub fn shard_config_with(passivate_after_secs: u64, checkpoint_interval_ms: u64) -> String {
    format!(
        "[shard]\ncheckpoint_interval_ms = {checkpoint_interval_ms}\ncatch_up_checkpoint_interval_ms = {checkpoint_interval_ms}\nviewer_timeout_secs = {TIMEOUT_SECS}\npassivate_after_secs = {passivate_after_secs}\n"
    )
}

/// 100,000 events produced steadily while the node is killed with kill -9 at random
/// moments and restarted (at least 3 times); then every counter equals the model's.
/// Returns the node, still running, for the caller to look at its log.
pub async fn kill_9_at_random_points(env: &TestEnv) -> NodeProcess {
    let spec = StreamSpec {
        seed: 23,
        events: 100_000,
        players: 2_000,
        channels: 40,
        start_ts: 1_700_000_000_000,
    };
    let events = generate(&spec);
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);

    // Checkpoints back to back, so that kills often land between a checkpoint's entity
    // rows and its progress row (entities stored ahead of the resume offset).
    let mut node = NodeProcess::start(env, "n1", &shard_config_with(600, 20));
    node.wait_ready(Duration::from_secs(60)).await;
    let producer = env.producer();
    // The stream is produced steadily over several seconds while the node is killed with
    // kill -9 at random moments and restarted: mid-batch, mid-checkpoint, mid-load.
    let stream = tokio::spawn(async move {
        for chunk in events.chunks(1_000) {
            produce(&producer, chunk, 1_000).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut kills = 0;
    while !stream.is_finished() && kills < 6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        // The first kill waits until the node has applied something: on a cold start
        // (fresh services, a first transaction) the stream can reach it after the first
        // pause.
        if kills == 0 && node.metric("tally_records_applied_total").await == 0 {
            continue;
        }
        node.kill9();
        kills += 1;
        node.restart();
        node.wait_ready(Duration::from_secs(60)).await;
    }
    stream.await.unwrap();
    assert!(
        kills >= 3,
        "only {kills} kills happened while the stream ran"
    );
    model
        .assert_converges(|| node.base.clone(), Duration::from_secs(120))
        .await;
    node
}
