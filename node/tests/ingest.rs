//! HTTP ingest against the real Kafka: bad input gets a clear 4xx reason and lands in the
//! dead-letter topic; good events next to it are counted.

mod common;

use std::time::{Duration, Instant};

use common::model::get_json;
use common::{NodeProcess, TestEnv};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

/// Reads every committed dead-letter record: (payload, field header, reason header).
fn read_dlq(env: &TestEnv, want: usize) -> Vec<(String, String, String)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::KAFKA)
        .set("group.id", common::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.dlq_topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            out.push((
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                header("tally-field"),
                header("tally-reason"),
            ));
        }
    }
    out
}

fn event(id: &str, player: &str, extra: Value) -> Value {
    let mut e = json!({"v": 1, "id": id, "ts": 1_700_000_000_000i64, "player": player});
    e.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_reasons_and_dead_lettered_while_good_events_count() {
    let env = TestEnv::new("ingest", 2);
    let node = NodeProcess::start(
        &env,
        "n1",
        "[ingest]\nmax_body_bytes = 20000\nmax_batch_events = 50\n",
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let post = |body: String, ctype: &'static str| {
        client
            .post(node.url("/v1/events"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };

    // A batch mixing good and bad events: 202, each bad one named, good ones kept.
    let batch = json!([
        event("g1", "alice", json!({"kind": "level_up", "level": 7})),
        {"id": "b1", "ts": 1, "player": "x", "kind": "session_start"},
        event("b2", "x", json!({"kind": "teleport"})),
        {"v": 9, "id": "b3", "ts": 1, "player": "x", "kind": "session_start"},
        event("b4", "x", json!({"kind": "match_end", "match_id": "m", "kills": "many", "deaths": 0, "survival_secs": 1, "placement": 1})),
        event("b5", "x", json!({"kind": "purchase", "item": "i", "currency": "USD"})),
        event("g2", "alice", json!({"kind": "purchase", "item": "skin", "amount": 499, "currency": "USD"})),
        event("g3", "bob", json!({"kind": "viewer_join", "channel": "arena"})),
    ]);
    let r = post(batch.to_string(), "application/json").await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 3);
    let rejected: Vec<(u64, String, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["field"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let fields: Vec<(u64, &str)> = rejected.iter().map(|(i, f, _)| (*i, f.as_str())).collect();
    assert_eq!(
        fields,
        vec![(1, "v"), (2, "kind"), (3, "v"), (4, "kills"), (5, "amount")]
    );
    assert!(rejected[0].2.contains("missing field"), "{rejected:?}");
    assert!(
        rejected[1].2.contains("unknown kind \"teleport\""),
        "{rejected:?}"
    );
    assert!(
        rejected[2].2.contains("unsupported version 9"),
        "{rejected:?}"
    );
    assert!(rejected[3].2.contains("invalid type"), "{rejected:?}");

    // NDJSON with a malformed line: the line is rejected, its neighbours are not.
    let nd = format!(
        "{}\n{{\"v\":1, \"id\": oops\n{}\n",
        event("g4", "bob", json!({"kind": "follow", "channel": "arena"})),
        event(
            "g5",
            "alice",
            json!({"kind": "achievement", "achievement": "first-blood"})
        )
    );
    let r = post(nd, "application/x-ndjson").await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["field"], "event");
    assert!(body["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("malformed json"));

    // A body that is not JSON at all: 400 naming the body; kept in the DLQ.
    let r = post("[{\"v\":1,".into(), "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("body: malformed json array"),
        "{body}"
    );

    // Everything rejected: 400 with the reasons.
    let r = post(json!([{"v": 1}]).to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Too large: 413 naming the limit; too many events: 413.
    let r = post("x".repeat(30_000), "application/json").await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("limit of 20000 bytes"));
    let many: Vec<Value> = (0..60)
        .map(|i| event(&format!("m{i}"), "carol", json!({"kind": "session_start"})))
        .collect();
    let r = post(Value::Array(many).to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("limit of 50 per request"));

    // The good events are counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alice = get_json(&client, &node.url("/v1/players/alice")).await;
        let arena = get_json(&client, &node.url("/v1/channels/arena")).await;
        if let (Ok(a), Ok(c)) = (&alice, &arena) {
            if a["player"]["events"] == 3 && c["channel"]["follows"] == 1 {
                assert_eq!(a["player"]["level"], 7);
                assert_eq!(a["player"]["revenue"]["USD"], 499);
                assert_eq!(a["player"]["achievements"], 1);
                assert_eq!(c["channel"]["concurrent_viewers"], 1);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "good events not counted: {alice:?} {arena:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = client.get(node.url("/v1/players/x")).send().await.unwrap();
    assert_eq!(r.status(), 404, "no event of player x was valid");

    // Every bad input is in the dead-letter topic with its reason and original bytes.
    let dlq = read_dlq(&env, 8);
    assert_eq!(dlq.len(), 8, "{dlq:#?}");
    assert!(dlq
        .iter()
        .any(|(p, f, r)| p.contains("teleport") && f == "kind" && r.contains("unknown kind")));
    assert!(dlq
        .iter()
        .any(|(p, f, _)| p.contains("\"kills\":\"many\"") && f == "kills"));
    assert!(dlq.iter().any(|(p, f, _)| p == "[{\"v\":1," && f == "body"));
    assert!(dlq
        .iter()
        .any(|(p, f, _)| p.contains("oops") && f == "event"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_name_the_parameter() {
    let env = TestEnv::new("queries", 1);
    let node = NodeProcess::start(&env, "n1", "");
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let r = client
        .get(node.url("/v1/channels/top?by=loudness"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("by: unknown ordering"));
    let r = client
        .get(node.url("/v1/channels/top?limit=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("limit: expected an integer"));
    let long = "p".repeat(200);
    let r = client
        .get(node.url(&format!("/v1/players/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .get(node.url("/v1/channels/nobody-watches"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(node.url("/v1/channels/top"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["channels"], json!([]));
}

#[test]
fn misspelled_config_key_fails_at_start_naming_key_and_file() {
    let dir = std::env::temp_dir().join(common::unique("badcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nid = \"n\"\napi_addr = \"127.0.0.1:0\"\n[kafka]\nbrokres = \"x:1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-node"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("brokres"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
