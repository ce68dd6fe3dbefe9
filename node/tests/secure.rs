//! Against the secure services (`make services-secure`): Kafka over SASL_SSL, Cassandra
//! with TLS and a password, the API over HTTPS with client certificates. The kill -9
//! scenario of exactly_once.rs keeps every counter exact there, SASL PLAIN works as well as
//! SCRAM-SHA-512, and neither password reaches a node's log, even at debug level.
//! `TALLY_TEST_SECURE=1` runs every test built on `TestEnv` against these services.

mod common;

use std::path::Path;
use std::time::Duration;

use common::secure::password;
use common::{http_client, scenarios, NodeProcess, TestEnv};

/// Panics if a password of the secure services is in the log at `log`.
fn assert_no_password(dir: &Path, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    for service in ["kafka", "cassandra"] {
        assert!(
            !text.contains(&password(dir, service)),
            "the {service} password is in {}",
            log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_over_sasl_ssl_and_cassandra_tls_keeps_every_counter_exact() {
    let env = TestEnv::secure("secure-crash", 4);
    let node = scenarios::kill_9_at_random_points(&env).await;
    assert!(node.base.starts_with("https://"), "{}", node.base);
    assert_no_password(env.secure.as_deref().unwrap(), &node.log_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_serves_too_and_debug_logs_hold_no_password() {
    let env = TestEnv::secure("secure-plain", 1);
    let mut node = NodeProcess::start_with_env(
        &env,
        "n1",
        "",
        &[
            ("TALLY_KAFKA__SASL_MECHANISM", "PLAIN"),
            ("RUST_LOG", "debug"),
        ],
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = http_client();
    let r = client
        .post(node.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body("{\"v\":1,\"id\":\"e1\",\"ts\":1700000000000,\"player\":\"p1\",\"kind\":\"level_up\",\"level\":7}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = common::model::get_json(&client, &node.url("/v1/players/p1")).await;
        if matches!(&v, Ok(v) if v["player"]["level"] == 7) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "player p1: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = node.terminate();
    assert!(status.success(), "tally-node exited with {status}");
    assert_no_password(env.secure.as_deref().unwrap(), &node.log_path);
}
