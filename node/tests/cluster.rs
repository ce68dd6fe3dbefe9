//! A 3-node cluster of real node processes on loopback, against the real Kafka and
//! Cassandra: kill -9, restart, SIGSTOP/SIGCONT and a rolling restart under a continuous
//! seeded stream; at the end every counter equals the reference model, queried through a
//! single node (so most answers are forwarded to their owners). Ids full of reserved URL
//! characters are answered alike by every node, owner or not.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::model::{generate, get_json, Model, StreamSpec};
use common::{free_udp_port, produce, NodeProcess, TestEnv};
use serde_json::Value;
use tally_node::entity_path::entity_path;
use tally_node::event::Event;
use tally_node::kind::ShardKind;

const TIMEOUT_SECS: u64 = 60;

fn spec(seed: u64, events: usize) -> StreamSpec {
    StreamSpec {
        seed,
        events,
        players: 1_500,
        channels: 30,
        start_ts: 1_700_000_000_000,
    }
}

/// Streams `events` steadily in the background (about `secs` seconds).
fn stream(env: &TestEnv, events: Vec<Event>, secs: f64) -> tokio::task::JoinHandle<()> {
    let producer = env.producer();
    let chunks = (events.len() / 500).max(1);
    let pause = Duration::from_secs_f64(secs / chunks as f64);
    tokio::spawn(async move {
        for chunk in events.chunks(500) {
            produce(&producer, chunk, 500).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// Every known entity is answered (by someone) while `node` is down.
async fn every_query_answered(cluster: &Cluster, via: usize, model: &Model) {
    let client = reqwest::Client::new();
    for id in model.players.keys().take(200).chain(model.channels.keys()) {
        let kind = if id.starts_with("ch-") {
            "channels"
        } else {
            "players"
        };
        let v: Result<Value, String> = get_json(
            &client,
            &cluster.nodes[via].url(&format!("/v1/{kind}/{id}")),
        )
        .await;
        assert!(
            v.is_ok(),
            "no answer for {kind}/{id} while a node was down: {v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keep_every_counter_exact() {
    let env = TestEnv::new("cl_kill", 6);
    let mut cluster = Cluster::start(env.clone(), 3, TIMEOUT_SECS).await;
    let first = generate(&spec(31, 30_000));
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&first);

    let s = stream(&env, first, 5.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[1].kill9();
    let failover = cluster.wait_owned_by(&["n1", "n3"], 0).await;
    println!("partitions of the killed node owned by survivors {failover:?} after kill -9");
    s.await.unwrap();
    every_query_answered(&cluster, 2, &model).await;
    model
        .assert_converges(|| cluster.nodes[0].base.clone(), Duration::from_secs(90))
        .await;

    // Restart: its partitions move back, and a second stream is still counted exactly.
    cluster.nodes[1].restart();
    cluster.nodes[1].wait_ready(Duration::from_secs(60)).await;
    cluster.wait_owned_by(&["n1", "n2", "n3"], 0).await;
    let second = generate(&spec(32, 10_000));
    let second: Vec<Event> = second
        .into_iter()
        .map(|mut e| {
            e.ts += 10_000_000; // after the first stream
            e
        })
        .collect();
    model.apply_all(&second);
    stream(&env, second, 2.0).await.unwrap();
    model
        .assert_converges(|| cluster.nodes[1].base.clone(), Duration::from_secs(90))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_returns_does_not_corrupt_counters() {
    let env = TestEnv::new("cl_pause", 6);
    let cluster = Cluster::start(env.clone(), 3, TIMEOUT_SECS).await;
    let events = generate(&spec(41, 30_000));
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);

    let s = stream(&env, events, 6.0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = cluster.nodes[2].pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // Longer than failure detection: the others take its partitions over.
    cluster.wait_owned_by(&["n1", "n2"], 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    s.await.unwrap();
    cluster.wait_owned_by(&["n1", "n2", "n3"], 0).await;
    model
        .assert_converges(|| cluster.nodes[0].base.clone(), Duration::from_secs(90))
        .await;
    model
        .assert_converges(|| cluster.nodes[2].base.clone(), Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_a_continuous_stream_keeps_counters_exact() {
    let env = TestEnv::new("cl_roll", 6);
    let mut cluster = Cluster::start(env.clone(), 3, TIMEOUT_SECS).await;
    let events = generate(&spec(51, 40_000));
    let mut model = Model::new(env.partitions, TIMEOUT_SECS as i64 * 1000);
    model.apply_all(&events);

    let s = stream(&env, events, 12.0);
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let status = cluster.nodes[i].terminate();
        assert!(
            status.success(),
            "node {} exited with {status} on SIGTERM",
            i + 1
        );
        cluster.nodes[i].restart();
        cluster.nodes[i].wait_ready(Duration::from_secs(60)).await;
    }
    s.await.unwrap();
    cluster.wait_owned_by(&["n1", "n2", "n3"], 1).await;
    model
        .assert_converges(|| cluster.nodes[1].base.clone(), Duration::from_secs(90))
        .await;
    for n in &cluster.nodes {
        let errors = n.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "ERROR lines in a graceful rolling restart: {errors:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_id_is_ignored() {
    let env = TestEnv::new("cl_ids", 2);
    let (ga, gb) = (free_udp_port(), free_udp_port());
    let config = |cluster: &str, own: u16, seed: u16| {
        format!("[cluster]\ncluster_id = \"{cluster}\"\ngossip_addr = \"127.0.0.1:{own}\"\nseeds = [\"127.0.0.1:{seed}\"]\n")
    };
    let a = NodeProcess::start(&env, "a", &config(&format!("{}-x", env.name), ga, gb));
    let b = NodeProcess::start(&env, "b", &config(&format!("{}-y", env.name), gb, ga));
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = reqwest::Client::new();
    for (node, me) in [(&a, "a"), (&b, "b")] {
        let v = get_json(&client, &node.url("/v1/cluster")).await.unwrap();
        let members: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(members, vec![me], "a node of another cluster id was let in");
    }
}

/// Ids a URL could mangle, each valid by the event schema: every gen-delim and sub-delim of
/// RFC 3986 alone and inside an id, `%`, spaces, backslashes, dot segments, the name of the
/// `top` view, and unicode up to 128 bytes of 2-, 3- and 4-byte characters.
fn awkward_ids() -> Vec<String> {
    let mut ids: Vec<String> = ":/?#[]@!$&'()*+,;="
        .chars()
        .flat_map(|c| [c.to_string(), format!("id{c}x")])
        .collect();
    ids.extend(
        [
            ":/?#[]@",
            "!$&'()*+,;=",
            "%",
            "100%",
            "%2F",
            "%41",
            " ",
            "a b",
            "\\",
            "a\\b",
            "\"<>^`{|}",
            ".",
            "..",
            "...",
            "./x",
            "top",
            "日本語",
        ]
        .map(String::from),
    );
    ids.push("é".repeat(64));
    ids.push(format!("{}é", "€".repeat(42)));
    ids.push("😀".repeat(32));
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_reserved_url_characters_are_answered_by_every_node() {
    let env = TestEnv::new("cl_url", 6);
    let cluster = Cluster::start(env.clone(), 3, TIMEOUT_SECS).await;
    let client = reqwest::Client::new();
    let ids = awkward_ids();
    // Each id is a player with three events that follows the channel of the same id, which
    // one viewer joins.
    let ts = 1_700_000_000_000_i64;
    let mut events = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let event = |n: &str, player: &str, kind: &str| {
            let id = format!("e{i}-{n}");
            serde_json::json!({"v": 1, "id": id, "ts": ts, "player": player, "kind": kind})
        };
        events.push(event("start", id, "session_start"));
        let mut level = event("level", id, "level_up");
        level["level"] = 7.into();
        events.push(level);
        let mut follow = event("follow", id, "follow");
        follow["channel"] = id.as_str().into();
        events.push(follow);
        let mut join = event("join", &format!("viewer-{i}"), "viewer_join");
        join["channel"] = id.as_str().into();
        events.push(join);
    }
    let r = client
        .post(cluster.nodes[0].url("/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ingested: Value = r.json().await.unwrap();
    assert_eq!(ingested["rejected"], serde_json::json!([]), "{ingested}");
    assert_eq!(ingested["accepted"], events.len());

    let expected = |kind: ShardKind| match kind {
        ShardKind::Players => ("player", vec![("events", 3), ("level", 7), ("follows", 1)]),
        ShardKind::Channels => ("channel", vec![("follows", 1), ("joins", 1)]),
    };
    let right = |kind: ShardKind, id: &str, v: &Value| {
        let (key, counters) = expected(kind);
        v["stale"] == false
            && v[key]["id"] == id
            && counters.iter().all(|(name, n)| v[key][name] == *n)
    };
    // Consumed: the last answers are right through the first node.
    let deadline = Instant::now() + Duration::from_secs(60);
    for kind in ShardKind::ALL {
        for id in &ids {
            let url = cluster.nodes[0].url(&entity_path(kind, id));
            loop {
                let v = get_json(&client, &url).await;
                if v.as_ref().is_ok_and(|v| right(kind, id, v)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind:?} {id:?} not counted: {v:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Then every node answers at once from the owner's memory, most of them forwarded.
    for kind in ShardKind::ALL {
        for id in &ids {
            let path = entity_path(kind, id);
            let mut served_by = Vec::new();
            for node in &cluster.nodes {
                let v = get_json(&client, &node.url(&path)).await;
                let v = v.unwrap_or_else(|e| panic!("{kind:?} {id:?} via {path}: {e}"));
                assert!(right(kind, id, &v), "{kind:?} {id:?} via {path}: {v}");
                served_by.push(v["served_by"].as_str().unwrap_or_default().to_string());
            }
            served_by.dedup();
            assert_eq!(
                served_by.len(),
                1,
                "{kind:?} {id:?}: served by {served_by:?}"
            );
        }
    }

    // An id that decodes to `../cluster` is a player like any other, on every node.
    for node in &cluster.nodes {
        let r = client
            .get(node.url("/v1/players/..%2Fcluster"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "player ../cluster: no events seen", "{body}");
    }
    // And `top` is still the view.
    for node in &cluster.nodes {
        let v = get_json(&client, &node.url("/v1/channels/top"))
            .await
            .unwrap();
        assert!(v["channels"].is_array(), "{v}");
    }
}
