//! What a running node tells its operators: the series of `/metrics` after real traffic
//! through a real Kafka and Cassandra.
//!
//! Not for: the exposition's format (see `metrics.rs`) or the counts' exactness under
//! failures (see `exactly_once.rs`).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::{NodeProcess, TestEnv};

/// Every sample of `/metrics` whose series starts with `prefix` (a name, or a name and the
/// start of its labels), as (series, value).
async fn samples(node: &NodeProcess, prefix: &str) -> Vec<(String, f64)> {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn value(node: &NodeProcess, series: &str) -> Option<f64> {
    samples(node, series)
        .await
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

fn sum(samples: &[(String, f64)]) -> f64 {
    samples.iter().map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_in_the_shard_ingest_http_and_cluster_series() {
    let env = TestEnv::new("observed", 2);
    let node = NodeProcess::start(&env, "n1", "[shard]\ncheckpoint_interval_ms = 200\n");
    node.wait_ready(Duration::from_secs(60)).await;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let client = reqwest::Client::new();
    let ts = started.as_millis() as i64 - 1_000;
    let mut body = String::new();
    for i in 0..10 {
        let e = json!({"v": 1, "id": format!("e{i}"), "ts": ts, "player": format!("p{i}"),
                       "kind": "level_up", "level": 2});
        body.push_str(&format!("{e}\n"));
    }
    // One of each event rejection: too far ahead, and missing its kind.
    let ahead = ts + 3_600_000;
    body.push_str(
        &json!({"v": 1, "id": "f", "ts": ahead, "player": "p", "kind": "level_up", "level": 2})
            .to_string(),
    );
    body.push('\n');
    body.push_str(&json!({"v": 1, "id": "x", "ts": ts, "player": "p"}).to_string());
    body.push('\n');
    let r = client
        .post(node.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 10, "{answer}");

    // Every event applied: per-shard counts add up to it, and no shard lags behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = value(&node, "tally_records_applied_total{kind=\"players\"}").await;
        if applied == Some(10.0) && sum(&samples(&node, "tally_shard_lag_records{").await) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "applied only {applied:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sum(&samples(&node, "tally_shard_records_applied_total{kind=\"players\"").await),
        10.0
    );
    assert_eq!(sum(&samples(&node, "tally_shard_lag_records{").await), 0.0);
    let r = client.get(node.url("/v1/players/p3")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(node.url("/v1/players/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let reason = |r: &str| format!("tally_ingest_events_rejected_total{{reason=\"{r}\"}}");
    assert_eq!(value(&node, &reason("future")).await, Some(1.0));
    assert_eq!(value(&node, &reason("invalid")).await, Some(1.0));
    assert_eq!(value(&node, &reason("too_large")).await, Some(0.0));
    assert_eq!(
        value(&node, "tally_ingest_events_accepted_total").await,
        Some(10.0)
    );
    let http = |route: &str, status: u16| {
        format!("tally_http_requests_total{{route=\"{route}\",status=\"{status}\"}}")
    };
    assert_eq!(value(&node, &http("/v1/events", 202)).await, Some(1.0));
    assert_eq!(
        value(&node, &http("/v1/players/{id}", 200)).await,
        Some(1.0)
    );
    assert_eq!(
        value(&node, &http("/v1/players/{id}", 404)).await,
        Some(1.0)
    );
    let r = client.get(node.url("/no/such/path")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(value(&node, &http("unmatched", 404)).await, Some(1.0));
    assert!(
        value(
            &node,
            "tally_http_request_duration_seconds_count{route=\"/v1/events\"}"
        )
        .await
            >= Some(1.0)
    );

    // Checkpoints ran after the events were applied, and the resident players are counted.
    let applied_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = samples(&node, "tally_checkpoint_last_timestamp_seconds{").await;
        if last.len() == 4 && last.iter().all(|(_, t)| *t >= applied_at.as_secs_f64()) {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoint times {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sum(&samples(&node, "tally_resident_entities{kind=\"players\"").await),
        10.0
    );
    assert!(sum(&samples(&node, "tally_resident_bytes{").await) > 0.0);
    assert!(
        value(&node, "tally_checkpoint_bytes_total{kind=\"players\"}").await > Some(0.0),
        "checkpoint bytes"
    );
    assert!(
        value(
            &node,
            "tally_apply_duration_seconds_count{kind=\"players\"}"
        )
        .await
            >= Some(1.0)
    );

    // The cluster as the node sees it: alone, serving, ready, holding all 4 partitions.
    assert_eq!(
        value(&node, "tally_cluster_members{status=\"serving\"}").await,
        Some(1.0)
    );
    assert_eq!(
        value(&node, "tally_cluster_members_suspected").await,
        Some(0.0)
    );
    assert_eq!(value(&node, "tally_node_ready").await, Some(1.0));
    let acquired = samples(&node, "tally_ownership_changes_total{").await;
    assert_eq!(sum(&acquired), 4.0, "{acquired:?}");
    assert!(acquired
        .iter()
        .all(|(s, _)| s.contains("change=\"acquired\"")));
}
