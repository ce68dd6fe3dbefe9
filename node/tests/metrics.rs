//! The `GET /metrics` exposition read by Prometheus's own parser: the Go program in
//! `ops/metricscheck` (built by `make metricscheck` into `.services/bin/`) parses what
//! `Metrics::render` writes, with the parser its `CONTENT_TYPE` selects, and lists the
//! families it found. The same program checks that every metric the Grafana dashboard
//! and the Prometheus alert rules under `ops/` name is one a running node serves.
//!
//! Not for: the values the node counts (the exactly-once and replay tests check those).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{NodeProcess, TestEnv};
use tally_node::kind::{ChangeKind, MemberStatus, ShardKind};
use tally_node::metrics::{Metrics, RejectReason, CONTENT_TYPE};

const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.services/bin/metricscheck");

/// The files whose every `tally_*` name must be served: the dashboard, the alert rules
/// and the rules' unit tests, relative to the repository root.
const OPS_FILES: [&str; 3] = [
    "ops/grafana/tally.json",
    "ops/prometheus/alerts.yml",
    "ops/prometheus/alerts_test.yml",
];

/// What the checker printed: its family list if it accepted `text`, its error if not.
fn check(text: &str, content_type: &str) -> Result<String, String> {
    run_checker(text, content_type, &[])
}

/// As [`check`], and the checker also refuses `text` unless every `tally_*` name in
/// each of `files` is a family or series it holds (`-require-from`).
fn check_references(text: &str, content_type: &str, files: &[PathBuf]) -> Result<String, String> {
    let mut args = Vec::new();
    for file in files {
        args.push("-require-from".to_string());
        args.push(file.display().to_string());
    }
    run_checker(text, content_type, &args)
}

fn run_checker(text: &str, content_type: &str, args: &[String]) -> Result<String, String> {
    assert!(
        Path::new(CHECKER).exists(),
        "{CHECKER} is missing: `make metricscheck` builds it (needs Go)"
    );
    let mut child = Command::new(CHECKER)
        .args(["-content-type", content_type])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start metricscheck");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to metricscheck");
    let out = child.wait_with_output().expect("wait for metricscheck");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// A node's metrics with every series the node can export holding a value.
fn every_series() -> Metrics {
    let m = Metrics::default();
    // With the 5 of each shard below (a shard's count is also its kind's): 5 and 7.
    m.add_applied(ShardKind::Channels, 2);
    m.add_consumed(12);
    m.add_invalid_records(1);
    m.add_duplicate_records(2);
    m.add_future_records(1);
    m.add_dead_letters(2, 1);
    m.add_entity_loads(2);
    m.add_passivations(3);
    m.record_checkpoint(ShardKind::Players, 4, 300, Duration::from_micros(250));
    m.observe_apply(ShardKind::Channels, Duration::from_micros(80));
    m.add_source_wait(Duration::from_micros(10), Duration::from_micros(20));
    m.add_ingest_accepted(8);
    m.add_ingest_rejected(RejectReason::Future, 1);
    m.add_ingest_transaction();
    m.add_ingest_failed_transaction();
    m.add_forwarded(ShardKind::Players);
    m.add_ownership_change(ShardKind::Channels, ChangeKind::Acquired);
    m.set_members(&[(MemberStatus::Serving, 2), (MemberStatus::Leaving, 1)], 1);
    m.set_ready(true);
    m.observe_http("/v1/players/{id}", 200, Duration::from_millis(3));
    m.observe_http("/v1/players/{id}", 404, Duration::from_millis(2));
    m.set_durable(ShardKind::Players, 0, 100);
    m.set_durable(ShardKind::Channels, 3, 42);
    for (kind, partition) in [(ShardKind::Players, 0), (ShardKind::Channels, 3)] {
        let shard = m.shard(kind, partition);
        shard.add_applied(5);
        shard.set_lag(Some(20));
        shard.checkpointed();
        shard.set_resident(10, 4096);
    }
    m
}

#[test]
fn every_family_appears_once_with_its_help_and_type() {
    let text = every_series().render();
    let families = check(&text, CONTENT_TYPE).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // name, type, number of series; sorted by name.
    let expected = "\
tally_apply_duration_seconds histogram 2
tally_checkpoint_bytes_total counter 2
tally_checkpoint_duration_seconds histogram 2
tally_checkpoint_last_timestamp_seconds gauge 2
tally_checkpoint_micros_total counter 1
tally_checkpoint_rows_total counter 1
tally_checkpoints_total counter 1
tally_cluster_members gauge 2
tally_cluster_members_suspected gauge 1
tally_consumer_dead_letters_dropped_total counter 1
tally_consumer_dead_letters_total counter 1
tally_durable_offset gauge 2
tally_entity_loads_total counter 1
tally_entity_passivations_total counter 1
tally_history_bucket_loads_total counter 1
tally_history_bucket_writes_total counter 2
tally_history_cache_bytes gauge 1
tally_history_queries_total counter 3
tally_http_request_duration_seconds histogram 1
tally_http_requests_total counter 2
tally_ingest_events_accepted_total counter 1
tally_ingest_events_rejected_total counter 4
tally_ingest_failed_transactions_total counter 1
tally_ingest_stage_duration_seconds histogram 3
tally_ingest_transactions_total counter 1
tally_node_ready gauge 1
tally_ownership_changes_total counter 1
tally_push_connections gauge 1
tally_push_feeds gauge 1
tally_push_frames_sent_total counter 1
tally_push_slow_clients_closed_total counter 1
tally_push_stage_duration_seconds histogram 2
tally_queries_forwarded_total counter 2
tally_record_stage_duration_seconds histogram 4
tally_records_applied_total counter 2
tally_records_consumed_total counter 1
tally_records_duplicate_total counter 1
tally_records_future_total counter 1
tally_records_invalid_total counter 1
tally_resident_bytes gauge 2
tally_resident_entities gauge 2
tally_shard_lag_records gauge 2
tally_shard_records_applied_total counter 2
tally_source_wait_micros_total counter 2
";
    assert_eq!(families, expected, "{text}");
    for line in [
        "# HELP tally_records_applied_total Kafka records applied to entities.",
        "# TYPE tally_records_applied_total counter",
        "tally_records_applied_total{kind=\"players\"} 5",
        "tally_records_applied_total{kind=\"channels\"} 7",
        "tally_source_wait_micros_total{on=\"shards\"} 20",
        "tally_checkpoint_micros_total 250",
        "tally_durable_offset{kind=\"channels\",partition=\"3\"} 42",
        "tally_shard_lag_records{kind=\"players\",partition=\"0\"} 20",
        "tally_ingest_events_rejected_total{reason=\"future\"} 1",
        "tally_ingest_events_rejected_total{reason=\"body\"} 0",
        "tally_http_requests_total{route=\"/v1/players/{id}\",status=\"404\"} 1",
        "tally_cluster_members{status=\"leaving\"} 1",
        "tally_checkpoint_bytes_total{kind=\"players\"} 300",
        "tally_apply_duration_seconds_count{kind=\"channels\"} 1",
        "tally_node_ready 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
}

#[test]
fn a_shard_that_moves_away_takes_its_series_with_it() {
    let m = every_series();
    m.forget_shard(ShardKind::Players, 0);
    let text = m.render();
    let families = check(&text, CONTENT_TYPE).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for family in [
        "tally_durable_offset gauge 1\n",
        "tally_shard_lag_records gauge 1\n",
        "tally_shard_records_applied_total counter 1\n",
        "tally_checkpoint_last_timestamp_seconds gauge 1\n",
        "tally_resident_entities gauge 1\n",
        "tally_resident_bytes gauge 1\n",
    ] {
        assert!(families.contains(family), "{family} in {families}");
    }
    assert!(!text.contains("partition=\"0\""), "{text}");
    assert_eq!(m.durable_offsets(), vec![(ShardKind::Channels, 3, 42)]);
}

/// The exposition as it was written by hand: HELP and TYPE once per label value. The
/// checker must refuse it, or the test above could pass without parsing anything.
#[test]
fn the_checker_rejects_a_family_whose_help_and_type_come_twice() {
    let repeated = "\
# HELP tally_records_applied_total Kafka records applied to entities.
# TYPE tally_records_applied_total counter
tally_records_applied_total{kind=\"players\"} 5
# HELP tally_records_applied_total Kafka records applied to entities.
# TYPE tally_records_applied_total counter
tally_records_applied_total{kind=\"channels\"} 7
";
    let err = check(repeated, CONTENT_TYPE).expect_err("repeated HELP and TYPE accepted");
    assert!(
        err.contains("second HELP line for metric name \"tally_records_applied_total\""),
        "{err}"
    );
    let once = repeated.lines().take(3).collect::<Vec<_>>().join("\n") + "\n";
    assert_eq!(
        check(&once, CONTENT_TYPE).as_deref(),
        Ok("tally_records_applied_total counter 1\n")
    );
}

/// Every metric the dashboard and the alert rules name is one a running node serves, so a
/// renamed or removed metric fails here rather than as an empty panel or an alert that
/// can never fire. Families whose series appear only later (a rejection reason, a route)
/// count by their HELP and TYPE lines, which the node prints from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_name_is_served_by_a_running_node() {
    let env = TestEnv::new("metrics_ops", 2);
    let node = NodeProcess::start(&env, "node-1", "");
    node.wait_ready(Duration::from_secs(60)).await;
    let response = reqwest::get(node.url("/metrics"))
        .await
        .expect("GET /metrics");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .expect("/metrics answers with a content type")
        .to_string();
    let text = response.text().await.expect("read /metrics");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files: Vec<PathBuf> = OPS_FILES.iter().map(|f| root.join(f)).collect();
    check_references(&text, &content_type, &files).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

/// The check above has teeth: a dashboard naming a metric the node does not serve is
/// refused, the message naming the file and the metric, and the same file without that
/// name passes.
#[test]
fn a_dashboard_naming_a_metric_the_node_lacks_is_refused() {
    let text = every_series().render();
    let dir = std::env::temp_dir().join(format!("tally-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    let dashboard = dir.join("dashboard.json");
    let query = |name: &str| {
        format!(
            r#"{{"panels": [{{"targets": [{{"expr": "sum(rate(tally_records_applied_total[5m])) / sum(rate({name}[5m]))"}}]}}]}}"#
        )
    };
    std::fs::write(&dashboard, query("tally_no_such_metric_total")).expect("write dashboard");
    let err = check_references(&text, CONTENT_TYPE, std::slice::from_ref(&dashboard))
        .expect_err("a dashboard naming a missing metric was accepted");
    assert_eq!(
        err.trim_end(),
        format!(
            "metricscheck: {} names tally_no_such_metric_total, which the exposition does not serve",
            dashboard.display()
        )
    );
    std::fs::write(&dashboard, query("tally_records_consumed_total")).expect("write dashboard");
    let accepted = check_references(&text, CONTENT_TYPE, &[dashboard]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(accepted.is_ok(), "{accepted:?}");
}
