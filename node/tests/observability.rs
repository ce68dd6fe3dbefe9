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
    // The players' rows themselves are written once their first change is
    // `shard.flush_period_ms` (5 s) old; checkpoints before that write nothing of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while value(&node, "tally_checkpoint_bytes_total{kind=\"players\"}").await <= Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint bytes of players in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        value(
            &node,
            "tally_apply_duration_seconds_count{kind=\"players\"}"
        )
        .await
            >= Some(1.0)
    );

    // Each stage of the request and of its records was timed: one request, three stages;
    // at least one batch of player records, read and applied.
    for stage in ["queued", "produce", "commit"] {
        let series = format!("tally_ingest_stage_duration_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(value(&node, &series).await, Some(1.0), "{series}");
    }
    for stage in ["appended_to_read", "read_to_applied"] {
        let series = format!(
            "tally_record_stage_duration_seconds_count{{kind=\"players\",stage=\"{stage}\"}}"
        );
        assert!(value(&node, &series).await >= Some(1.0), "{series}");
        // Well under the histogram's top: these records were read and applied at once.
        let sum = format!(
            "tally_record_stage_duration_seconds_sum{{kind=\"players\",stage=\"{stage}\"}}"
        );
        assert!(value(&node, &sum).await < Some(30.0), "{sum}");
    }

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

/// An OTLP/HTTP receiver (JSON encoding) on a free port: every span it was sent.
struct Receiver {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, kept.clone()));
            }
        });
        Receiver { endpoint, spans }
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

/// Answers HTTP/1.1 requests on one connection, keeping the spans of each export.
async fn serve(conn: tokio::net::TcpStream, spans: std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut conn = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if conn.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.unwrap();
        assert!(
            request_line.starts_with("POST /v1/traces "),
            "{request_line}"
        );
        let export: Value = serde_json::from_slice(&body).expect("an OTLP JSON export");
        let mut got = Vec::new();
        for resource in export["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                got.extend(scope["spans"].as_array().unwrap().iter().cloned());
            }
        }
        spans.lock().unwrap().extend(got);
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
    }
}

fn span_named<'a>(spans: &'a [Value], name: &str, parent: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["name"] == name && s["parentSpanId"] == parent)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_ingest_request_links_to_its_apply_and_the_checkpoint_that_made_it_durable() {
    let receiver = Receiver::start().await;
    let env = TestEnv::new("traced", 2);
    let node = NodeProcess::start(
        &env,
        "n1",
        &format!(
            "[shard]\ncheckpoint_interval_ms = 200\n\n[telemetry]\notlp_endpoint = \"{}\"\n\
             otlp_protocol = \"http/json\"\nsample_ratio = 0.0\nexport_interval_ms = 200\n",
            receiver.endpoint
        ),
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let (trace, parent) = (random_hex(16), random_hex(8));
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1_000;
    let event = |id: &str| {
        json!({"v": 1, "id": id, "ts": ts, "player": "p", "kind": "level_up", "level": 2})
            .to_string()
    };
    let r = client
        .post(node.url("/v1/events"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .body(event("traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Without a traceparent, at a sample ratio of 0, nothing of this one is traced.
    let r = client
        .post(node.url("/v1/events"))
        .body(event("untraced"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, produce, apply) = loop {
        let spans = receiver.spans();
        let request = span_named(&spans, "POST /v1/events", &parent).cloned();
        let produce = request
            .as_ref()
            .and_then(|r| span_named(&spans, "kafka.produce", r["spanId"].as_str()?).cloned());
        let apply = produce
            .as_ref()
            .and_then(|p| span_named(&spans, "shard.apply", p["spanId"].as_str()?).cloned());
        let checkpoint = apply.as_ref().and_then(|a| {
            spans
                .iter()
                .find(|s| {
                    s["name"] == "shard.checkpoint"
                        && s["links"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|l| l["spanId"] == a["spanId"]))
                })
                .cloned()
        });
        if let (Some(r), Some(p), Some(a), Some(_)) = (request, produce, apply, checkpoint) {
            break (r, p, a);
        }
        assert!(
            Instant::now() < deadline,
            "the trace is incomplete; spans received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for span in [&request, &produce, &apply] {
        assert_eq!(span["traceId"], trace.as_str(), "{span}");
    }
    // Server, producer, consumer (OTLP's span kind numbers).
    assert_eq!(request["kind"], 2);
    assert_eq!(produce["kind"], 4);
    assert_eq!(apply["kind"], 5);
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s["traceId"] == trace.as_str()),
        "a span of an unsampled request was exported: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_query_continues_the_trace_on_the_owner() {
    let receiver = Receiver::start().await;
    let env = TestEnv::new("traced-forward", 2);
    let ports = [common::free_udp_port(), common::free_udp_port()];
    let nodes: Vec<NodeProcess> = (0..2)
        .map(|i| {
            let extra = format!(
                "[shard]\ncheckpoint_interval_ms = 200\n\n[cluster]\ncluster_id = \"{}\"\n\
                 gossip_addr = \"127.0.0.1:{}\"\nseeds = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
                 gossip_interval_ms = 100\n\n[telemetry]\notlp_endpoint = \"{}\"\n\
                 otlp_protocol = \"http/json\"\nsample_ratio = 0.0\nexport_interval_ms = 200\n",
                env.name, ports[i], ports[0], ports[1], receiver.endpoint
            );
            NodeProcess::start(&env, &format!("n{}", i + 1), &extra)
        })
        .collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(60)).await;
    }
    let client = reqwest::Client::new();
    let partition = tally_node::partitioner::partition_for("p", env.partitions);
    // Until both nodes are members and every partition has its owner; the other node is
    // asked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let owner = loop {
        let c: Value = client
            .get(nodes[0].url("/v1/cluster"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let owned = c["partitions"].as_object().map_or(0, |o| o.len());
        let members = c["members"].as_array().map_or(0, Vec::len);
        let owner = c["partitions"][format!("players/{partition}")].as_str();
        if owned == 4 && members == 2 {
            if let Some(owner) = owner {
                break owner.to_string();
            }
        }
        assert!(Instant::now() < deadline, "partitions not placed: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (asked, owning) = if owner == "n1" { (1, 0) } else { (0, 1) };
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1_000;
    let e = json!({"v": 1, "id": "e", "ts": ts, "player": "p", "kind": "level_up", "level": 2});
    let r = client
        .post(nodes[owning].url("/v1/events"))
        .body(e.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let (trace, parent) = (random_hex(16), random_hex(8));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(nodes[asked].url("/v1/players/p"))
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["served_by"], owner.as_str(), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "p not visible: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans();
        let forwarding = spans
            .iter()
            .filter(|s| s["traceId"] == trace.as_str())
            .find(|s| s["name"] == "GET /v1/players/{id}" && s["parentSpanId"] == parent.as_str());
        let answering = forwarding
            .and_then(|f| span_named(&spans, "GET /v1/players/{id}", f["spanId"].as_str()?));
        if let Some(answering) = answering {
            assert_eq!(answering["traceId"], trace.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no forwarded span pair in {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
