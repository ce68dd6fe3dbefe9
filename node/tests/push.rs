//! Pushed updates against real node processes, Kafka and Cassandra: WebSocket and SSE
//! subscriptions reach the exact state, coalesced and with offsets that never go back;
//! malformed messages and every limit get their documented answer while the socket stays
//! open; a client that stops reading is disconnected without slowing anyone; and in a
//! 3-node cluster a subscription held on a node that does not own the player keeps going,
//! on the same socket, when the owner is killed with kill -9.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use common::model::get_json;
use common::{free_udp_port, NodeProcess, TestEnv};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tally_node::partitioner::partition_for;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(node: &NodeProcess) -> Ws {
    let url = node.url("/v1/subscribe").replacen("http", "ws", 1);
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade");
    ws
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next JSON frame within `timeout` (pings skipped); None on timeout.
async fn next(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match m.expect("websocket frame") {
            Message::Text(t) => return Some(serde_json::from_str(&t).expect("a JSON frame")),
            Message::Close(c) => panic!("closed by the node: {c:?}"),
            _ => continue,
        }
    }
}

/// Posts `events` through HTTP ingest; all must be accepted.
async fn post(node: &NodeProcess, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let r = reqwest::Client::new()
        .post(node.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status}: {answer}");
    assert_eq!(answer["accepted"], events.len(), "{answer}");
}

fn now_ms() -> i64 {
    tally_node::event::now_ms()
}

/// `n` level-ups of `player` (levels `from+1 ..= from+n`) and a join of `channel` each.
fn events(player: &str, channel: &str, from: u64, n: u64) -> Vec<Value> {
    (from + 1..=from + n)
        .flat_map(|i| {
            [
                json!({"v": 1, "id": format!("{player}-l{i}"), "ts": now_ms(), "player": player,
                       "kind": "level_up", "level": i}),
                json!({"v": 1, "id": format!("{player}-j{i}"), "ts": now_ms(), "player": format!("{player}-viewer-{i}"),
                       "kind": "viewer_join", "channel": channel}),
            ]
        })
        .collect()
}

/// Frames of every subscription, checked as they come: offsets never go back.
#[derive(Default)]
struct Seen {
    last: BTreeMap<String, Value>,
    counts: BTreeMap<String, usize>,
    gaps: usize,
}

impl Seen {
    fn record(&mut self, frame: &Value) {
        let name = frame["subscription"].as_str().unwrap().to_string();
        if let Some(last) = self.last.get(&name) {
            for field in ["offset", "partition_offset"] {
                if let (Some(a), Some(b)) = (last[field].as_i64(), frame[field].as_i64()) {
                    assert!(b >= a, "{name}: {field} went back from {a} to {b}");
                }
            }
            if let (Some(a), Some(b)) = (last["offsets"].as_object(), frame["offsets"].as_object())
            {
                for (p, o) in b {
                    if let Some(prev) = a.get(p) {
                        assert!(o.as_i64() >= prev.as_i64(), "{name}: {p} went back");
                    }
                }
            }
            assert_eq!(
                frame["type"], "update",
                "{name}: a second snapshot: {frame}"
            );
        } else {
            assert_eq!(
                frame["type"], "snapshot",
                "{name}: the first frame: {frame}"
            );
        }
        if frame["gap"] == true {
            self.gaps += 1;
        }
        *self.counts.entry(name.clone()).or_default() += 1;
        self.last.insert(name, frame.clone());
    }

    /// Reads frames until `done` holds for the recorded frames, within `timeout`.
    async fn until(&mut self, ws: &mut Ws, timeout: Duration, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = next(ws, left).await else {
                panic!("timed out; last frames: {:#?}", self.last);
            };
            if frame["type"] == "error" || frame["type"] == "unsubscribed" {
                continue;
            }
            self.record(&frame);
        }
    }

    fn data(&self, name: &str) -> &Value {
        &self.last.get(name).unwrap_or(&Value::Null)["data"]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_reach_the_exact_state_coalesced_over_websocket_and_sse() {
    let env = TestEnv::new("push-one", 4);
    let node = NodeProcess::start(&env, "n1", "[push]\ninterval_ms = 200\n");
    node.wait_ready(Duration::from_secs(60)).await;
    let (player, channel) = ("p/ü ?#%+1", "c/é&=2");
    let mut ws = connect(&node).await;
    send(&mut ws, json!({"subscribe": {"player": player}})).await;
    send(&mut ws, json!({"subscribe": {"channel": channel}})).await;
    send(
        &mut ws,
        json!({"subscribe": {"top": {"by": "concurrent", "limit": 5}}}),
    )
    .await;
    let (p, c, top) = (
        format!("player:{player}"),
        format!("channel:{channel}"),
        "top:concurrent:5".to_string(),
    );
    let mut seen = Seen::default();
    seen.until(&mut ws, Duration::from_secs(20), |s| s.last.len() == 3)
        .await;
    // Nothing seen yet: a snapshot of null at offset -1.
    assert_eq!(seen.last[&p]["data"], Value::Null);
    assert_eq!(seen.last[&p]["offset"], -1);

    // Malformed messages: an error frame naming the field; the socket goes on.
    for (bad, field) in [
        ("not json".to_string(), "message"),
        (
            json!({"subscribe": {"player": ""}}).to_string(),
            "subscribe.player",
        ),
        (
            json!({"subscribe": {"player": "x".repeat(129)}}).to_string(),
            "subscribe.player",
        ),
        (
            json!({"subscribe": {"top": {"limit": 1001}}}).to_string(),
            "subscribe.top.limit",
        ),
        (json!({"subscribe": {"team": "x"}}).to_string(), "subscribe"),
        (
            json!({"unsubscribe": {"player": "never"}}).to_string(),
            "unsubscribe",
        ),
    ] {
        ws.send(Message::text(bad.clone())).await.unwrap();
        let frame = loop {
            let f = next(&mut ws, Duration::from_secs(10))
                .await
                .expect("an error frame");
            if f["type"] == "error" {
                break f;
            }
            seen.record(&f);
        };
        assert_eq!(frame["field"], field, "{bad}: {frame}");
        assert!(
            frame["error"].as_str().unwrap().starts_with(field),
            "{frame}"
        );
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();

    // 3 rounds of 40 level-ups and 40 joins each.
    let started = Instant::now();
    for round in 0..3 {
        post(&node, &events(player, channel, round * 40, 40)).await;
    }
    seen.until(&mut ws, Duration::from_secs(30), |s| {
        s.data(&p)["level"] == 120
            && s.data(&c)["joins"] == 120
            && s.data(&top)["channels"][0]["concurrent"] == 120
    })
    .await;
    let elapsed = started.elapsed();
    // The pushed state is the queried state.
    let query = |kind: &str, id: &str| {
        let url = node.url(&format!(
            "/v1/{kind}?id={}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        ));
        async move { get_json(&reqwest::Client::new(), &url).await.unwrap() }
    };
    assert_eq!(seen.data(&p), &query("players", player).await["player"]);
    assert_eq!(seen.data(&c), &query("channels", channel).await["channel"]);
    assert_eq!(seen.data(&p)["events"], 120);
    assert_eq!(seen.data(&top)["channels"][0]["id"], channel);
    // Coalesced: at most one update per 200 ms interval (and a tick of slack) each.
    let most = (elapsed.as_millis() / 200) as usize + 3;
    for name in [&p, &c] {
        let n = seen.counts[name];
        assert!(
            n <= most,
            "{name}: {n} frames in {elapsed:?}, at most {most} expected"
        );
    }

    // Every frame's stages were timed: each update the session queued (not the
    // snapshots), and each state the local shard published that made a frame.
    let sent = node.metric("tally_push_frames_sent_total").await;
    let stage = |s: &str| format!("tally_push_stage_duration_seconds_count{{stage=\"{s}\"}}");
    let to_socket = node.metric(&stage("frame_to_socket")).await;
    let from_shard = node.metric(&stage("shard_to_frame")).await;
    assert!(
        to_socket > 0 && to_socket <= sent,
        "{to_socket} frames timed to the socket, {sent} sent"
    );
    let entity_frames = (seen.counts[&p] + seen.counts[&c]) as u64;
    assert!(
        from_shard >= entity_frames,
        "{from_shard} frames timed from the shard, {entity_frames} entity frames seen"
    );

    // Subscribing again sends the snapshot again; unsubscribing is answered.
    send(&mut ws, json!({"subscribe": {"player": player}})).await;
    let again = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (&again["type"], &again["subscription"]),
        (&json!("snapshot"), &json!(p))
    );
    assert_eq!(again["data"]["level"], 120);
    send(&mut ws, json!({"unsubscribe": {"player": player}})).await;
    let gone = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(gone, json!({"type": "unsubscribed", "subscription": p}));

    // SSE, through the query form: the same state.
    let url = node.url(&format!(
        "/v1/stream?player={}",
        percent_encoding::utf8_percent_encode(player, percent_encoding::NON_ALPHANUMERIC)
    ));
    let mut sse = reqwest::Client::new().get(url).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {text:?}"));
    assert!(text.starts_with("event: snapshot\n"), "{text}");
    let frame: Value = serde_json::from_str(data).unwrap();
    assert_eq!(frame["data"], query("players", player).await["player"]);
    // Bad parameters: 400 before any stream.
    let r = reqwest::get(node.url("/v1/stream?player=a&channel=b"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(node.url("/v1/subscribe")).await.unwrap();
    assert_eq!(r.status(), 400, "a plain GET of the WebSocket route");
}

/// Opens a WebSocket by hand on a socket that never reads what it is sent.
fn deaf_socket(node: &NodeProcess, subscriptions: &[Value]) -> std::net::TcpStream {
    let addr = node.base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // A small receive window, so the node's side blocks soon.
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a c_int option value of the size given.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let request = format!(
        "GET /v1/subscribe HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    for m in subscriptions {
        // A masked text frame, as a client must send.
        let payload = m.to_string().into_bytes();
        let mut frame = vec![0x81u8];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        let mask = [1u8, 2, 3, 4];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_gets_its_answer_and_a_client_that_stops_reading_is_closed() {
    let env = TestEnv::new("push-limits", 2);
    let config = "[push]\ninterval_ms = 50\nmax_subscriptions = 12\nmax_connections = 3\n\
                  max_message_bytes = 512\nblocked_timeout_ms = 1000\n";
    let node = NodeProcess::start(&env, "n1", config);
    node.wait_ready(Duration::from_secs(60)).await;

    // Subscriptions per connection.
    let mut ws = connect(&node).await;
    for i in 0..12 {
        send(&mut ws, json!({"subscribe": {"player": format!("p{i}")}})).await;
    }
    send(&mut ws, json!({"subscribe": {"player": "one-too-many"}})).await;
    let error = loop {
        let f = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("a frame");
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(error["field"], "subscribe");
    assert_eq!(
        error["error"],
        "subscribe: at most 12 subscriptions per connection"
    );
    assert_eq!(error["subscription"], "player:one-too-many");

    // A client that stops reading, while top-N frames of 1000 channels keep changing: it is
    // closed once its socket stays blocked 1 s, and others are not held up meanwhile.
    let channels: Vec<Value> = (0..1000)
        .map(|i| json!({"v": 1, "id": format!("j{i}"), "ts": now_ms(), "player": format!("v{i}"),
                        "kind": "viewer_join", "channel": format!("channel-with-a-long-name-{i:04}")}))
        .collect();
    post(&node, &channels).await;
    let tops: Vec<Value> = (0..12)
        .map(|i| json!({"subscribe": {"top": {"by": "follows", "limit": 989 + i}}}))
        .collect();
    let deaf = deaf_socket(&node, &tops);
    let started = Instant::now();
    let mut round = 0u64;
    send(&mut ws, json!({"unsubscribe": {"player": "p0"}})).await;
    send(&mut ws, json!({"subscribe": {"player": "watched"}})).await;
    // Follows change every top-N by follows, so every frame of the deaf socket is new.
    let closed = loop {
        round += 1;
        let follows: Vec<Value> = (0..200)
            .map(|i| json!({"v": 1, "id": format!("f{round}-{i}"), "ts": now_ms(), "player": format!("f{round}-{i}"),
                            "kind": "follow", "channel": format!("channel-with-a-long-name-{:04}", (round * 7 + i) % 1000)}))
            .chain([json!({"v": 1, "id": format!("w{round}"), "ts": now_ms(), "player": "watched", "kind": "level_up", "level": round})])
            .collect();
        post(&node, &follows).await;
        // The reading client keeps getting its updates.
        let mut seen = Seen::default();
        let want = json!(round);
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.last.get("player:watched").map(|f| &f["data"]["level"]) != Some(&want) {
            assert!(
                Instant::now() < deadline,
                "the reading client got no update of round {round}"
            );
            if let Some(f) = next(&mut ws, Duration::from_secs(10)).await {
                if f["subscription"] == "player:watched" {
                    seen.last.insert("player:watched".into(), f);
                }
            }
        }
        let blocked_long_enough = started.elapsed() > Duration::from_secs(3);
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        if blocked_long_enough && log.contains("push: closed a slow client") {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the deaf client was never closed"
        );
    };
    eprintln!("deaf client closed after {closed:?}");
    assert_eq!(node.metric("tally_push_slow_clients_closed_total").await, 1);
    // Its session has ended once its close frame had its moment (100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Connections per node: 1 open (ws), the deaf one gone; two more fit, the next is refused.
    let _second = connect(&node).await;
    let _third = connect(&node).await;
    assert_eq!(node.metric("tally_push_connections").await, 3);
    let url = node.url("/v1/subscribe").replacen("http", "ws", 1);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body = String::from_utf8(r.body().clone().unwrap_or_default()).unwrap();
            assert!(
                body.contains("push: at most 3 connections per node"),
                "{body}"
            );
        }
        other => panic!("a fourth connection: {other:?}"),
    }

    drop(deaf);

    // A message over max_message_bytes: close code 1009.
    ws.send(Message::text(format!(
        "{{\"subscribe\": {{\"player\": \"{}\"}}}}",
        "x".repeat(600)
    )))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a close frame")
        {
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 1009, "{c:?}");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_on_a_node_that_does_not_own_the_player_survives_kill_9_of_the_owner() {
    let env = TestEnv::new("push-cluster", 4);
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let seeds: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut nodes: Vec<NodeProcess> = (0..3)
        .map(|i| {
            let extra = format!(
                "[shard]\ncheckpoint_interval_ms = 200\n[push]\ninterval_ms = 100\n\
                 [cluster]\ncluster_id = \"{}\"\ngossip_addr = \"127.0.0.1:{}\"\nseeds = [{}]\n\
                 gossip_interval_ms = 100\nphi_threshold = 8.0\nhandover_timeout_ms = 10000\n",
                env.name,
                ports[i],
                seeds.join(", ")
            );
            NodeProcess::start(&env, &format!("n{}", i + 1), &extra)
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60)).await;
    }
    // Every partition owned, by all three.
    let owners = {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last: Option<BTreeMap<String, String>> = None;
        loop {
            let v = get_json(&reqwest::Client::new(), &nodes[0].url("/v1/cluster")).await;
            if let Ok(v) = v {
                let owners: BTreeMap<String, String> = v["partitions"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let mut who: Vec<&String> = owners.values().collect();
                who.sort();
                who.dedup();
                if owners.len() == 8 && who.len() >= 2 {
                    break owners;
                }
                last = Some(owners);
            }
            assert!(
                Instant::now() < deadline,
                "partitions not spread over the nodes: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // A player with reserved URL characters, followed through a node that does not own it.
    let player = "owned elsewhere/?#%+ é".to_string();
    let owner = owners[&format!("players/{}", partition_for(&player, 4))].clone();
    let owner_index: usize = owner[1..].parse::<usize>().unwrap() - 1;
    let via = (0..3).find(|i| *i != owner_index).unwrap();
    let name = format!("player:{player}");
    let mut ws = connect(&nodes[via]).await;
    send(&mut ws, json!({"subscribe": {"player": &player}})).await;
    let mut seen = Seen::default();
    seen.until(&mut ws, Duration::from_secs(20), |s| {
        s.last.contains_key(&name)
    })
    .await;
    post(&nodes[via], &events(&player, "c", 0, 30)).await;
    seen.until(&mut ws, Duration::from_secs(20), |s| {
        s.data(&name)["level"] == 30
    })
    .await;
    assert_eq!(
        seen.last[&name]["served_by"],
        json!(owner),
        "relayed from the owner"
    );

    nodes[owner_index].kill9();
    // Events keep coming (through `via`) while the partition moves; the same socket follows.
    for round in 1..=4 {
        post(&nodes[via], &events(&player, "c", round * 30, 30)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen.until(&mut ws, Duration::from_secs(60), |s| {
        s.data(&name)["level"] == 150 && s.last[&name]["served_by"] != json!(owner)
    })
    .await;
    assert_eq!(seen.data(&name)["events"], 150, "every event exactly once");
    assert!(seen.gaps >= 1, "the lost owner is marked as a gap");
    let v = get_json(
        &reqwest::Client::new(),
        &nodes[via].url(&format!(
            "/v1/players?id={}",
            percent_encoding::utf8_percent_encode(&player, percent_encoding::NON_ALPHANUMERIC)
        )),
    )
    .await
    .unwrap();
    assert_eq!(seen.data(&name), &v["player"]);
}
