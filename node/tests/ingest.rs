//! HTTP ingest against the real Kafka: bad input gets a clear 4xx reason and lands in the
//! dead-letter topic, bounded; good events next to it, and in concurrent requests, are
//! written exactly once; every request is answered within the request timeout; `/readyz`
//! says when the producer cannot commit.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::get_json;
use common::{NodeProcess, TestEnv};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::{json, Value};
use tally_node::config::{IngestConfig, KafkaConfig};
use tally_node::event::Rejection;
use tally_node::ingest::{dead_letter, Ingest, IngestError, OutRecord, Target};
use tally_node::metrics::Metrics;

/// One committed record as a consumer sees it.
#[derive(Debug, Clone)]
struct Record {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Reads `topic` with a read_committed consumer until `want` records arrived (or 30 s
/// passed), then one second more, so that a record written twice is seen twice.
fn read_committed(topic: &str, want: usize) -> Vec<Record> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::KAFKA)
        .set("group.id", common::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut linger_until = None;
    loop {
        let now = Instant::now();
        if linger_until.is_some_and(|t| now > t) || now > deadline {
            return out;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            let v = x.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (x.key.to_string(), v.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        if out.len() >= want && linger_until.is_none() {
            linger_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
}

/// Reads every committed dead-letter record: (payload, field header, reason header).
fn read_dlq(env: &TestEnv, want: usize) -> Vec<(String, String, String)> {
    read_committed(&env.dlq_topic, want)
        .into_iter()
        .map(|r| {
            let field = r.header("tally-field").unwrap_or_default().to_string();
            let reason = r.header("tally-reason").unwrap_or_default().to_string();
            (r.text(), field, reason)
        })
        .collect()
}

/// How many times each event id appears among the player topic's committed records.
fn player_event_ids(env: &TestEnv, want: usize) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in read_committed(&env.player_topic, want) {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        *ids.entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

/// Sets a topic's config through the admin API (the topic belongs to one test).
async fn set_topic_config(topic: &str, key: &str, value: &str) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::KAFKA)
        .create()
        .unwrap();
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    for r in admin
        .alter_configs(&[change], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// One HTTP answer: status, JSON body, and how long it took.
struct Answer {
    status: u16,
    body: Value,
    took: Duration,
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Answer {
    let start = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        took: start.elapsed(),
    }
}

/// `json` (an object) with spaces before its closing brace, `len` bytes in all.
fn padded(json: &str, len: usize) -> String {
    assert!(json.len() <= len, "{json} is longer than {len}");
    format!(
        "{}{}}}",
        &json[..json.len() - 1],
        " ".repeat(len - json.len())
    )
}

fn level_up(id: &str, player: &str) -> String {
    event(id, player, json!({"kind": "level_up", "level": 2})).to_string()
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
    let dlq = read_dlq(&env, 10);
    assert_eq!(dlq.len(), 10, "{dlq:#?}");
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
    // So are the bodies answered 413.
    assert!(dlq
        .iter()
        .any(|(_, f, r)| f == "body" && r == "larger than the limit of 20000 bytes"));
    assert!(dlq
        .iter()
        .any(|(_, f, r)| f == "body" && r == "60 events, more than the limit of 50 per request"));
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

/// Sends `head` and the start of a body whose Content-Length promises more, then waits for
/// the answer: a client that stalls mid-body. Returns the status line and the time taken.
fn stall_mid_body(base: &str) -> (String, Duration) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n{{\"v\":1,"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    (
        text.lines().next().unwrap_or("").to_string(),
        start.elapsed(),
    )
}

/// Posts `body` in chunks, without a Content-Length (so its length is unknown until its
/// end); returns the status line.
fn post_chunked(base: &str, body: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(4096) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer before it read everything; what it did not read is its business.
    let _ = s.write_all(&request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_among_concurrent_good_ones_fails_alone_and_in_time_and_every_good_event_is_written_once(
) {
    let env = TestEnv::new("isolation", 2);
    let timeout = Duration::from_millis(5000);
    // A long linger makes the concurrent requests share transactions.
    let node = NodeProcess::start(
        &env,
        "n1",
        "[ingest]\nmax_batch_events = 100\nrequest_timeout_ms = 5000\nlinger_ms = 20\n",
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/events");

    // 12 senders, 4 requests each, 5 events a request.
    let mut good_ids = Vec::new();
    let mut good = Vec::new();
    for s in 0..12 {
        for r in 0..4 {
            let ids: Vec<String> = (0..5).map(|i| format!("good-{s}-{r}-{i}")).collect();
            let body: Vec<String> = ids
                .iter()
                .map(|id| level_up(id, &format!("p{s}")))
                .collect();
            good_ids.extend(ids);
            let (client, url) = (client.clone(), url.clone());
            good.push(tokio::spawn(async move {
                post(&client, &url, body.join("\n")).await
            }));
        }
    }

    let six_mib_text = event(
        "big-text",
        "mallory",
        json!({"kind": "chat_message", "channel": "c", "text": "x".repeat(6 << 20)}),
    )
    .to_string();
    let one_mib_id = level_up(&"i".repeat(1 << 20), "mallory");
    let beside_good = [
        level_up("good-nb-0", "neighbour"),
        one_mib_id.clone(),
        level_up("good-nb-1", "neighbour"),
    ]
    .join("\n");
    good_ids.extend(["good-nb-0".to_string(), "good-nb-1".to_string()]);
    let unknown_field = |len: usize| {
        let mut e = event("unknown", "mallory", json!({"kind": "session_start"}));
        e["u".repeat(len)] = json!(1);
        e.to_string()
    };
    let huge_unknown = unknown_field(2 << 20);
    let long_unknown = unknown_field(2048);
    let long_id = level_up(&"i".repeat(1024), "mallory");
    let nine_mib: String = (0..)
        .map(|i| level_up(&format!("huge-{i}"), "mallory") + "\n")
        .scan(0, |len, line| {
            *len += line.len();
            (*len <= (9 << 20) + 100).then_some(line)
        })
        .collect();
    let too_many: String = (0..101)
        .map(|i| level_up(&format!("many-{i}"), "mallory"))
        .collect::<Vec<_>>()
        .join("\n");

    let bad_bodies = vec![
        ("an event of 6 MiB", six_mib_text.clone()),
        ("an id of 1 MiB between good events", beside_good),
        ("an unknown field of 2 MiB", huge_unknown),
        ("an unknown field of 2 KiB", long_unknown),
        ("an id of 1 KiB", long_id.clone()),
        ("a body of 9 MiB", nine_mib.clone()),
        ("101 events", too_many.clone()),
    ];
    let mut bad = Vec::new();
    for (what, body) in bad_bodies {
        let (client, url) = (client.clone(), url.clone());
        bad.push((
            what,
            tokio::spawn(async move { post(&client, &url, body).await }),
        ));
    }
    let base = node.base.clone();
    let stalled = tokio::task::spawn_blocking(move || stall_mid_body(&base));

    for g in good {
        let a = g.await.unwrap();
        assert_eq!(a.status, 202, "{}", a.body);
        assert_eq!(a.body["accepted"], 5);
        assert!(a.took < timeout, "a good request took {:?}", a.took);
    }
    let mut answers = HashMap::new();
    for (what, b) in bad {
        let a = b.await.unwrap();
        assert!(a.took < timeout, "{what} took {:?}", a.took);
        answers.insert(what, a);
    }
    let only_rejection = |what: &str| {
        let a = &answers[what];
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert_eq!(a.body["accepted"], 0, "{what}");
        let r = &a.body["rejected"][0];
        (
            r["field"].as_str().unwrap().to_string(),
            r["reason"].as_str().unwrap().to_string(),
        )
    };
    let (field, reason) = only_rejection("an event of 6 MiB");
    assert_eq!(field, "event");
    assert_eq!(
        reason,
        format!(
            "{} bytes, more than the limit of 65536 bytes per event",
            six_mib_text.len()
        )
    );
    let a = &answers["an id of 1 MiB between good events"];
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["accepted"], 2);
    assert_eq!(a.body["rejected"][0]["index"], 1);
    assert_eq!(a.body["rejected"][0]["field"], "event");
    assert_eq!(only_rejection("an unknown field of 2 MiB").0, "event");
    let (field, reason) = only_rejection("an unknown field of 2 KiB");
    assert!(field.starts_with("uuu") && field.len() <= 256, "{field}");
    assert!(
        reason.contains("unknown field") && reason.len() <= 1024,
        "{reason}"
    );
    let (field, reason) = only_rejection("an id of 1 KiB");
    assert_eq!(
        (field.as_str(), reason.as_str()),
        ("id", "longer than 128 bytes")
    );
    let a = &answers["a body of 9 MiB"];
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(
        a.body["error"],
        "body: larger than the limit of 8388608 bytes"
    );
    let a = &answers["101 events"];
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(
        a.body["error"],
        "body: 101 events, more than the limit of 100 per request"
    );
    let (status_line, took) = stalled.await.unwrap();
    assert!(status_line.contains(" 408 "), "{status_line}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");

    // Every good event is in Kafka exactly once, and nothing of a request answered 413.
    let ids = player_event_ids(&env, good_ids.len());
    let expected: BTreeMap<String, usize> = good_ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(ids, expected);

    // Each rejected input has one bounded dead letter; a cut one says so.
    let dlq = read_committed(&env.dlq_topic, 7);
    assert_eq!(
        dlq.len(),
        7,
        "{:?}",
        dlq.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
    assert!(dlq.iter().all(|r| r.payload.len() <= 65536));
    let cut_from = |len: usize| {
        dlq.iter()
            .find(|r| r.header("tally-truncated") == Some(&len.to_string()))
            .unwrap_or_else(|| panic!("no dead letter of {len} bytes"))
    };
    for (input, field) in [
        (&six_mib_text, "event"),
        (&one_mib_id, "event"),
        (&nine_mib, "body"),
    ] {
        let r = cut_from(input.len());
        assert_eq!(r.header("tally-field"), Some(field));
        assert_eq!(r.payload.len(), 65536);
        assert!(input.as_bytes().starts_with(&r.payload));
    }
    let whole = |payload: &str| {
        dlq.iter()
            .find(|r| r.payload == payload.as_bytes())
            .unwrap_or_else(|| panic!("no whole dead letter of {}", &payload[..40]))
    };
    let r = whole(&too_many);
    assert_eq!(r.header("tally-field"), Some("body"));
    assert_eq!(r.header("tally-truncated"), None);
    assert_eq!(
        r.header("tally-reason"),
        Some("101 events, more than the limit of 100 per request")
    );
    assert_eq!(whole(&long_id).header("tally-field"), Some("id"));

    // Bad requests are the requests' own fault: the node stays ready.
    let r = client.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_just_under_at_and_just_over_each_limit_are_accepted_accepted_and_rejected() {
    let env = TestEnv::new("limits", 2);
    let node = NodeProcess::start(
        &env,
        "n1",
        "[ingest]\nmax_body_bytes = 20000\nmax_batch_events = 10\nmax_event_bytes = 1000\n",
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/events");
    let mut accepted_ids = Vec::new();
    // (input, field, tally-truncated) of each dead letter expected cut
    let mut cut: Vec<(String, &str, String)> = Vec::new();

    // Event size, in both body formats: 999 and 1000 bytes are written, 1001 is rejected.
    for format in ["ndjson", "array"] {
        let events: Vec<String> = [999, 1000, 1001]
            .iter()
            .map(|&len| padded(&level_up(&format!("{format}-{len}"), "sizes"), len))
            .collect();
        let body = match format {
            "ndjson" => events.join("\n"),
            _ => format!("[{}]", events.join(",")),
        };
        let a = post(&client, &url, body).await;
        assert_eq!(a.status, 202, "{format}: {}", a.body);
        assert_eq!(a.body["accepted"], 2, "{format}");
        assert_eq!(
            a.body["rejected"],
            json!([{"index": 2, "field": "event",
                    "reason": "1001 bytes, more than the limit of 1000 bytes per event"}]),
            "{format}"
        );
        accepted_ids.extend([format!("{format}-999"), format!("{format}-1000")]);
        cut.push((events[2].clone(), "event", "1001".into()));
    }

    // Body size: 19999 and 20000 bytes are read, 20001 is 413.
    for len in [19_999, 20_000, 20_001] {
        let e = level_up(&format!("body-{len}"), "sizes");
        let body = format!("{e}\n{}", " ".repeat(len - e.len() - 1));
        assert_eq!(body.len(), len);
        let a = post(&client, &url, body.clone()).await;
        if len <= 20_000 {
            assert_eq!((a.status, &a.body["accepted"]), (202, &json!(1)), "{len}");
            accepted_ids.push(format!("body-{len}"));
        } else {
            assert_eq!(a.status, 413, "{len}: {}", a.body);
            assert_eq!(
                a.body["error"],
                "body: larger than the limit of 20000 bytes"
            );
            cut.push((body, "body", len.to_string()));
        }
    }
    // Sent without a Content-Length, the body's length is not known when reading stops.
    let e = level_up("chunked-20001", "sizes");
    let body = format!("{e}\n{}", " ".repeat(20_001 - e.len() - 1));
    let base = node.base.clone();
    let chunked = body.clone();
    let status = tokio::task::spawn_blocking(move || post_chunked(&base, &chunked))
        .await
        .unwrap();
    assert!(status.contains(" 413 "), "{status}");
    cut.push((body, "body", "unknown".into()));

    // Events per request: 9 and 10 are written, 11 is 413.
    for n in [9, 10, 11] {
        let ids: Vec<String> = (0..n).map(|i| format!("count-{n}-{i}")).collect();
        let body: Vec<String> = ids
            .iter()
            .map(|id| padded(&level_up(id, "sizes"), 100))
            .collect();
        let body = body.join("\n");
        let a = post(&client, &url, body.clone()).await;
        if n <= 10 {
            assert_eq!((a.status, &a.body["accepted"]), (202, &json!(n)), "{n}");
            accepted_ids.extend(ids);
        } else {
            assert_eq!(a.status, 413, "{n}: {}", a.body);
            assert_eq!(
                a.body["error"],
                "body: 11 events, more than the limit of 10 per request"
            );
            assert!(body.len() > 1000, "the dead letter of this body is cut");
            let len = body.len().to_string();
            cut.push((body, "body", len));
        }
    }

    let ids = player_event_ids(&env, accepted_ids.len());
    let expected: BTreeMap<String, usize> = accepted_ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(ids, expected);

    // The 1001-byte events are one byte over the dead-letter bound too: cut to 1000.
    let dlq = read_committed(&env.dlq_topic, cut.len());
    assert_eq!(dlq.len(), cut.len());
    for (input, field, length) in &cut {
        let r = dlq
            .iter()
            .find(|r| r.payload == input.as_bytes()[..1000])
            .unwrap_or_else(|| panic!("no dead letter for a {field} of {} bytes", input.len()));
        assert_eq!(r.header("tally-field"), Some(*field));
        assert_eq!(r.header("tally-truncated"), Some(length.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_refuses_every_record_makes_the_node_unready_until_a_transaction_commits_again(
) {
    let env = TestEnv::new("unwritable", 2);
    let node = NodeProcess::start(&env, "n1", "[ingest]\nrequest_timeout_ms = 3000\n");
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/events");
    let readyz = || async {
        let r = client.get(node.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let a = post(&client, &url, level_up("before", "p")).await;
    assert_eq!(a.status, 202, "{}", a.body);

    // A topic limit below these events' record batches: Kafka refuses records well within
    // ingest's limits, which is the deployment's fault, not the request's. (Above the size
    // of a transaction marker, which the coordinator must still be able to write.)
    set_topic_config(&env.player_topic, "max.message.bytes", "200").await;
    let chat = |id: &str| {
        // Random text: lz4 would shrink anything regular under the limit.
        let text: String = (0..1000)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        let e = json!({"kind": "chat_message", "channel": "c", "text": text});
        event(id, "p", e).to_string()
    };
    let mut written = vec!["before".to_string()];
    let mut failed = None;
    for attempt in 0..20 {
        let id = format!("during-{attempt}");
        let a = post(&client, &url, chat(&id)).await;
        assert!(a.took < Duration::from_millis(3000), "took {:?}", a.took);
        match a.status {
            202 => written.push(id), // the change had not reached the broker yet
            500 => {
                let e = a.body["error"].as_str().unwrap().to_string();
                assert!(e.starts_with("ingest: kafka refused a record"), "{e}");
                assert!(e.contains("nothing of the request was written"), "{e}");
                failed = Some(id);
                break;
            }
            s => panic!("unexpected status {s}: {}", a.body),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = failed.expect("a request fails while the topic refuses records");
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    let missing = body["missing"].to_string();
    assert!(missing.contains("ingest: kafka"), "{missing}");

    // Writable again: the retried request commits, and the node is ready at once.
    set_topic_config(&env.player_topic, "max.message.bytes", "1048588").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = post(&client, &url, chat(&failed)).await;
        if a.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "still failing: {}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    written.push(failed);
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");

    // The request that failed was not written behind its client's back: its retry is its
    // only copy.
    let ids = player_event_ids(&env, written.len());
    let expected: BTreeMap<String, usize> = written.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fenced_by_another_producer_with_its_transactional_id_says_so_on_readyz() {
    let env = TestEnv::new("fenced", 2);
    let node = NodeProcess::start(&env, "n1", "[ingest]\nrequest_timeout_ms = 3000\n");
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/events");
    assert_eq!(post(&client, &url, level_up("e1", "p")).await.status, 202);

    // The node's transactional id is tally-ingest-<cluster id>-<node id>.
    let usurper: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::KAFKA)
        .set("transactional.id", format!("tally-ingest-{}-n1", env.name))
        .create()
        .unwrap();
    usurper.init_transactions(Duration::from_secs(30)).unwrap();

    let a = post(&client, &url, level_up("e2", "p")).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.took < Duration::from_millis(3000), "took {:?}", a.took);
    let (r1, took) = {
        let a = post(&client, &url, level_up("e3", "p")).await;
        (
            a.body["error"].as_str().unwrap_or_default().to_string(),
            a.took,
        )
    };
    assert!(r1.contains("fenced"), "{r1}");
    assert!(
        took < Duration::from_millis(500),
        "a fenced node answers at once: {took:?}"
    );
    let r = client.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["missing"].to_string().contains("fenced"), "{body}");
}

/// A producer on the test's topics whose health reports are kept.
fn producer_with_health(
    env: &TestEnv,
    cfg: &IngestConfig,
) -> (Ingest, Arc<Mutex<Vec<Option<String>>>>) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    let kafka: KafkaConfig = env.kafka_config();
    let ingest = Ingest::start(
        &kafka,
        cfg,
        &common::unique("isolation-producer"),
        (env.partitions, env.partitions),
        Arc::new(Metrics::default()),
        Box::new(move |h| r.lock().unwrap().push(h)),
    )
    .unwrap();
    (ingest, reports)
}

fn player_record(id: &str) -> OutRecord {
    OutRecord {
        target: Target::Players,
        key: "p".into(),
        payload: level_up(id, "p").into_bytes(),
        rejection: None,
        truncated: None,
        traceparent: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_fails_only_its_own_request_of_a_shared_transaction() {
    let env = TestEnv::new("refused", 1);
    // The dead-letter topic takes record batches of at most 2000 bytes: less than ingest's
    // own bound, so only the broker can refuse the large dead letter below.
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::KAFKA)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new(&env.player_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&env.channel_topic, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&env.dlq_topic, 1, TopicReplication::Fixed(1))
            .set("max.message.bytes", "2000"),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let cfg = IngestConfig {
        linger_ms: 200,
        request_timeout_ms: 5000,
        ..IngestConfig::default()
    };
    let (ingest, health) = producer_with_health(&env, &cfg);
    // Random bytes: lz4 would shrink anything regular under the topic's limit.
    let noise: Vec<u8> = (0..5000).map(|_| rand::random::<u8>()).collect();
    let big_dead_letter = dead_letter(&noise, Some(5000), &Rejection::new("event", "test"), 5000);
    let oversized = OutRecord {
        payload: vec![b'y'; 2 << 20],
        ..player_record("oversized")
    };
    let jobs = vec![
        ("a", vec![player_record("a")]),
        ("big dead letter", vec![player_record("b"), big_dead_letter]),
        ("c", vec![player_record("c")]),
        ("oversized", vec![player_record("e"), oversized]),
        ("d", vec![player_record("d")]),
    ];
    let start = Instant::now();
    let mut answers = Vec::new();
    for (what, records) in jobs {
        answers.push((what, ingest.submit(records).await.unwrap()));
    }
    let mut results = HashMap::new();
    for (what, answer) in answers {
        results.insert(what, answer.await);
    }
    assert!(
        start.elapsed() < Duration::from_millis(5000),
        "took {:?}",
        start.elapsed()
    );
    for ok in ["a", "c", "d"] {
        assert_eq!(results[ok], Ok(()), "{ok}");
    }
    assert!(
        matches!(&results["big dead letter"], Err(IngestError::Refused(reason)) if reason.contains("too large")),
        "{:?}",
        results["big dead letter"]
    );
    assert!(
        matches!(results["oversized"], Err(IngestError::TooLarge { size, .. }) if size > 2 << 20),
        "{:?}",
        results["oversized"]
    );
    let ids = player_event_ids(&env, 3);
    let expected: BTreeMap<String, usize> = ["a", "c", "d"]
        .iter()
        .map(|id| (id.to_string(), 1))
        .collect();
    assert_eq!(ids, expected);
    assert!(
        health.lock().unwrap().iter().all(Option::is_none),
        "a request's own records never make the producer unhealthy: {:?}",
        health.lock().unwrap()
    );
}

/// A game backend that times out and resends the same batch (the same event ids) four
/// times, then once more after the node restarted (which forgets what it acknowledged):
/// every purchase counts once. The node answers the resends it recognises as duplicates
/// and does not write them again; the one after the restart is written, and the shard
/// drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_is_answered_as_duplicates_and_counted_once_also_after_a_restart() {
    let env = TestEnv::new("retries", 2);
    let mut node = NodeProcess::start(&env, "n1", "");
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let players = ["buyer-1", "buyer-2", "buyer-3"];
    let batch: String = players
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let amount = (1u64 << 63) + i as u64;
            event(
                &format!("purchase-{i}"),
                p,
                json!({"kind": "purchase", "item": "sword", "amount": amount, "currency": "USD"}),
            )
            .to_string()
                + "\n"
        })
        .collect();
    // The same event twice in one request counts once too.
    let twice = batch.clone() + batch.lines().next().unwrap() + "\n";
    let first = post(&client, &node.url("/v1/events"), twice).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["accepted"], 4);
    assert_eq!(first.body["duplicates"], json!([3]));
    for _ in 0..3 {
        let again = post(&client, &node.url("/v1/events"), batch.clone()).await;
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.body["accepted"], 3);
        assert_eq!(again.body["duplicates"], json!([0, 1, 2]));
    }
    node.terminate();
    node.restart();
    node.wait_ready(Duration::from_secs(60)).await;
    let after = post(&client, &node.url("/v1/events"), batch.clone()).await;
    assert_eq!(after.status, 202, "{}", after.body);
    assert_eq!(
        after.body["duplicates"],
        json!([]),
        "a restarted node forgets"
    );
    // One purchase each, and the shards dropped the resend they were given.
    for (i, p) in players.iter().enumerate() {
        let want = (1u128 << 63) + i as u128;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = get_json(&client, &node.url(&format!("/v1/players/{p}"))).await;
            if let Ok(v) = &got {
                if v["player"]["purchases"] == 1 && v["player"]["revenue"]["USD"] == json!(want) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{p}: {got:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.metric("tally_records_duplicate_total").await < 3 {
        assert!(
            Instant::now() < deadline,
            "the resend after the restart was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly the resend after the restart was written again: 3 duplicates, no more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.metric("tally_records_duplicate_total").await, 3);
}
