//! API keys, scopes, the cluster secret and per-key rate limits, on real node processes
//! against the real Kafka and Cassandra: every route refuses a caller without a key (401)
//! or without its scope (403) before it says anything about an entity; a forwarded marker
//! from outside is refused; two nodes with auth on still forward to each other; a flood on
//! one key leaves another untouched and loses nothing acknowledged; no secret reaches the
//! log.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{free_udp_port, NodeProcess, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally_node::auth::keys::{entry_toml, new_key, random_token};
use tally_node::auth::peer::{PeerSecret, PEER_AUTH};
use tally_node::auth::rate::IngestLimits;
use tally_node::auth::Scope;
use tally_node::entity_path::entity_path;
use tally_node::event::now_ms;
use tally_node::kind::ShardKind;

/// The keys of a test, by name, and the keys file holding their hashes.
struct Keys {
    file: PathBuf,
    plain: BTreeMap<String, String>,
}

impl Keys {
    /// Writes a keys file with one key per `(name, scopes, limits)`.
    fn write(env: &TestEnv, keys: &[(&str, &[Scope], IngestLimits)]) -> Keys {
        let mut text = String::new();
        let mut plain = BTreeMap::new();
        for (name, scopes, limits) in keys {
            let key = new_key();
            text.push_str(&entry_toml(name, &key, scopes, limits));
            plain.insert(name.to_string(), key);
        }
        let file = env.dir.join("keys.toml");
        std::fs::write(&file, text).unwrap();
        Keys { file, plain }
    }

    /// `ingester`, `reader` and `operator`: one key of each scope, without limits.
    fn one_per_scope(env: &TestEnv) -> Keys {
        Keys::write(
            env,
            &[
                ("ingester", &[Scope::Ingest], no_limits()),
                ("reader", &[Scope::Read], no_limits()),
                ("operator", &[Scope::Admin], no_limits()),
            ],
        )
    }

    fn get(&self, name: &str) -> &str {
        &self.plain[name]
    }
}

fn no_limits() -> IngestLimits {
    IngestLimits::default()
}

/// A cluster secret written to a file of the test.
fn secret_file(env: &TestEnv) -> (PathBuf, String) {
    let secret = random_token();
    let path = env.dir.join("cluster-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    (path, secret)
}

fn auth_toml(keys: &Keys, rest: &str) -> String {
    format!(
        "[auth]\nenabled = true\nkeys_file = \"{}\"\n{rest}",
        keys.file.display()
    )
}

/// An answer: status, headers we look at, body as JSON (Null when not JSON).
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    body: Value,
}

async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut request = client.request(method, url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/x-ndjson")
            .body(body);
    }
    let r = request.send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    let status = r.status();
    let text = r.text().await.unwrap();
    Answer {
        status,
        retry_after,
        www_authenticate,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// GET `url` with `headers`.
async fn get_with(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    call(client, Method::GET, url, headers, None).await
}

/// GET `url` with `key`.
async fn get(client: &reqwest::Client, url: &str, key: &str) -> Answer {
    let auth = bearer(key);
    get_with(client, url, &[("authorization", &auth)]).await
}

/// POST the NDJSON `body` to `url` with `key`.
async fn post(client: &reqwest::Client, url: &str, key: &str, body: String) -> Answer {
    let auth = bearer(key);
    call(
        client,
        Method::POST,
        url,
        &[("authorization", &auth)],
        Some(body),
    )
    .await
}

/// NDJSON of `n` session_start events of `player`, ids `<tag>-0..n`.
fn events(player: &str, tag: &str, n: usize) -> String {
    let ts = now_ms();
    (0..n)
        .map(|i| {
            json!({"v": 1, "id": format!("{tag}-{i}"), "ts": ts, "player": player,
                   "kind": "session_start"})
            .to_string()
                + "\n"
        })
        .collect()
}

/// The `events` counter of a player as `base` answers with `key`, None while unknown.
async fn player_events(
    client: &reqwest::Client,
    base: &NodeProcess,
    key: &str,
    id: &str,
) -> Option<u64> {
    let url = base.url(&entity_path(ShardKind::Players, id));
    let a = get(client, &url, key).await;
    (a.status == 200).then(|| a.body["player"]["events"].as_u64().unwrap())
}

/// Waits until every player in `want` shows exactly its count through `node`.
async fn assert_counts(node: &NodeProcess, key: &str, want: &BTreeMap<String, u64>) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        for (player, n) in want {
            let got = player_events(&client, node, key, player).await.unwrap_or(0);
            if got != *n {
                wrong.push(format!("{player}: {got} events, {n} acknowledged"));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "counts differ: {wrong:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asserts that the node's log holds none of `secrets`.
fn assert_not_logged(node: &NodeProcess, secrets: &[&str]) {
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "a secret is in the log {}",
            node.log_path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_caller_without_a_key_or_without_its_scope() {
    let env = TestEnv::new("auth_routes", 2);
    let keys = Keys::one_per_scope(&env);
    let secret = random_token();
    let extra = auth_toml(&keys, "metrics_scope = \"admin\"\n");
    // The cluster secret comes from the environment here (a file in the 2-node test).
    let node = NodeProcess::start_with_env(
        &env,
        "n1",
        &extra,
        &[("TALLY_AUTH__CLUSTER_SECRET", &secret)],
    );
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let key_of = |scope: Scope| match scope {
        Scope::Ingest => keys.get("ingester"),
        Scope::Read => keys.get("reader"),
        Scope::Admin => keys.get("operator"),
    };
    let event = events("p-1", "routes", 1);
    let routes: &[(Method, &str, Scope)] = &[
        (Method::POST, "/v1/events", Scope::Ingest),
        (Method::GET, "/v1/players/p-1", Scope::Read),
        (Method::GET, "/v1/players?id=p-1", Scope::Read),
        (Method::GET, "/v1/channels/c-1", Scope::Read),
        (Method::GET, "/v1/channels?id=c-1", Scope::Read),
        (Method::GET, "/v1/channels/top", Scope::Read),
        (Method::GET, "/v1/cluster", Scope::Admin),
        (Method::GET, "/metrics", Scope::Admin),
        // The same routes, encoded: checked as the router reads them.
        (Method::GET, "/v1/%63luster", Scope::Admin),
        (Method::GET, "/v1/channels/%74op", Scope::Read),
    ];
    for (method, path, scope) in routes {
        let url = node.url(path);
        let body = (*method == Method::POST).then(|| event.clone());
        let refusals = [
            vec![],
            vec![("authorization", bearer(&new_key()))],
            vec![("authorization", "Bearer ".to_string())],
            vec![("authorization", format!("Basic {}", key_of(*scope)))],
            vec![("authorization", key_of(*scope).to_string())],
        ];
        for headers in &refusals {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let a = call(&client, method.clone(), &url, &headers, body.clone()).await;
            assert_eq!(a.status, 401, "{method} {path} {headers:?}: {}", a.body);
            assert!(
                a.body["error"].as_str().unwrap().starts_with("auth: "),
                "{}",
                a.body
            );
            assert_eq!(
                a.www_authenticate.as_deref(),
                Some("Bearer realm=\"tally\"")
            );
        }
        let with_key = |key: &str| {
            let auth = bearer(key);
            let (client, method, url, body) = (&client, method.clone(), &url, body.clone());
            async move { call(client, method, url, &[("authorization", &auth)], body).await }
        };
        for other in Scope::ALL.into_iter().filter(|s| s != scope) {
            let a = with_key(key_of(other)).await;
            assert_eq!(a.status, 403, "{method} {path} with {other:?}: {}", a.body);
            assert_eq!(
                a.body["error"],
                format!("auth: this key lacks the scope {}", scope.name()),
                "{method} {path}"
            );
        }
        let a = with_key(key_of(*scope)).await;
        assert!(
            ![401, 403].contains(&a.status.as_u16()),
            "{method} {path} with its scope: {} {}",
            a.status,
            a.body
        );
    }
    for open in ["/healthz", "/readyz"] {
        let a = get_with(&client, &node.url(open), &[]).await;
        assert_eq!(a.status, 200, "{open}");
    }
    // An unknown path needs a key too, and then is 404.
    let a = get_with(&client, &node.url("/v1/nothing"), &[]).await;
    assert_eq!(a.status, 401);
    let reader_key = keys.get("reader");
    let a = get(&client, &node.url("/v1/nothing"), reader_key).await;
    assert_eq!(a.status, 404);

    unknown_entities_are_told_only_to_authorised_callers(&node, &keys).await;
    forwarded_requests_need_the_cluster_secret(&node, &keys, &secret).await;

    let mut secrets: Vec<&str> = keys.plain.values().map(String::as_str).collect();
    secrets.push(&secret);
    assert_not_logged(&node, &secrets);
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    assert!(log.contains("auth is on: 3 api keys loaded"), "{log}");
    assert!(!log.contains("AUTH IS OFF"));
    assert_eq!(*node.errors.lock().unwrap(), Vec::<String>::new());
}

/// 401 and 403 are the same whether the entity exists or not; 404 only with the scope.
async fn unknown_entities_are_told_only_to_authorised_callers(node: &NodeProcess, keys: &Keys) {
    let client = reqwest::Client::new();
    // p-1 got its event above (the POST with the ingest key).
    let deadline = Instant::now() + Duration::from_secs(30);
    while player_events(&client, node, keys.get("reader"), "p-1")
        .await
        .is_none()
    {
        assert!(Instant::now() < deadline, "p-1 never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in [
        "/v1/players/p-1",
        "/v1/players/nobody",
        "/v1/players?id=nobody",
    ] {
        for (auth, status) in [
            (None, 401),
            (Some(keys.get("ingester")), 403),
            (Some(keys.get("operator")), 403),
        ] {
            let header = auth.map(bearer).unwrap_or_default();
            let headers: Vec<(&str, &str)> = auth
                .map(|_| ("authorization", header.as_str()))
                .into_iter()
                .collect();
            let a = get_with(&client, &node.url(path), &headers).await;
            assert_eq!(a.status, status, "{path}");
            assert!(!a.body.to_string().contains("p-1") && !a.body.to_string().contains("nobody"));
        }
    }
    let reader_key = keys.get("reader");
    let a = get(&client, &node.url("/v1/players/nobody"), reader_key).await;
    assert_eq!(a.status, 404, "{}", a.body);
}

/// `x-tally-forwarded` from outside is refused, with or without a client key, unless the
/// request carries a valid signature of the cluster secret.
async fn forwarded_requests_need_the_cluster_secret(node: &NodeProcess, keys: &Keys, secret: &str) {
    let client = reqwest::Client::new();
    let path = "/v1/players/p-1";
    let reader_key = keys.get("reader");
    let ours = PeerSecret::new(secret.as_bytes()).unwrap();
    let theirs = PeerSecret::new(random_token().as_bytes()).unwrap();
    let good = ours.sign("GET", path, now_ms());
    let spoofs: Vec<Vec<(&str, String)>> = vec![
        vec![("x-tally-forwarded", "1".into())],
        vec![
            ("x-tally-forwarded", "1".into()),
            ("authorization", bearer(reader_key)),
        ],
        vec![
            ("x-tally-forwarded", "1".into()),
            (PEER_AUTH, "v1 1 00".into()),
        ],
        vec![
            ("x-tally-forwarded", "1".into()),
            (PEER_AUTH, theirs.sign("GET", path, now_ms())),
        ],
        vec![(PEER_AUTH, ours.sign("GET", "/v1/players/p-2", now_ms()))],
        vec![(PEER_AUTH, ours.sign("GET", path, now_ms() - 120_000))],
        vec![
            (PEER_AUTH, good.replace(' ', "  ")),
            ("authorization", bearer(reader_key)),
        ],
    ];
    for headers in &spoofs {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = get_with(&client, &node.url(path), &headers).await;
        assert_eq!(a.status, 401, "{headers:?}: {}", a.body);
        assert_eq!(
            a.body["error"],
            "auth: missing or invalid cluster credential on a forwarded request"
        );
    }
    // A call signed with the cluster secret is a peer's: answered without a client key.
    let signed = [("x-tally-forwarded", "1"), (PEER_AUTH, good.as_str())];
    let a = get_with(&client, &node.url(path), &signed).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Probes stay open whatever headers they carry.
    let a = get_with(
        &client,
        &node.url("/healthz"),
        &[("x-tally-forwarded", "1")],
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_auth_off_says_so_at_every_start() {
    let env = TestEnv::new("auth_off", 2);
    let mut node = NodeProcess::start(&env, "n1", "");
    node.kill9();
    node.restart();
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    for start in ["[start 1]", "[start 2]"] {
        let warned = log.lines().any(|l| {
            l.starts_with(start)
                && l.contains(" WARN ")
                && l.contains("AUTH IS OFF (auth.enabled = false)")
        });
        assert!(warned, "{start} did not warn: {log}");
    }
    // Open to anyone, as it said.
    let a = get_with(
        &reqwest::Client::new(),
        &node.url("/v1/players/nobody"),
        &[],
    )
    .await;
    assert_ne!(a.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_auth_on_forward_queries_and_gather_views() {
    let env = TestEnv::new("auth_fwd", 6);
    let keys = Keys::one_per_scope(&env);
    let (secret_path, secret) = secret_file(&env);
    let ports = [free_udp_port(), free_udp_port()];
    let seeds = format!("[\"127.0.0.1:{}\", \"127.0.0.1:{}\"]", ports[0], ports[1]);
    let nodes: Vec<NodeProcess> = (0..2)
        .map(|i| {
            let secret = format!("cluster_secret_file = \"{}\"\n", secret_path.display());
            let extra = format!(
                "{}\n[cluster]\ncluster_id = \"{}\"\ngossip_addr = \"127.0.0.1:{}\"\n\
                 seeds = {seeds}\n",
                auth_toml(&keys, &secret),
                env.name,
                ports[i],
            );
            NodeProcess::start(&env, &format!("n{}", i + 1), &extra)
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60)).await;
    }
    let client = reqwest::Client::new();
    let operator_key = keys.get("operator");
    // Both nodes own partitions, as each sees it through the (signed) cluster view.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = get(&client, &nodes[1].url("/v1/cluster"), operator_key).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let owners: Vec<&str> = a.body["partitions"]
            .as_object()
            .map(|p| p.values().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let both = ["n1", "n2"].iter().all(|n| owners.contains(n));
        let views_ok = a.body["nodes"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v.iter().all(|n| n.get("error").is_none()));
        if both && owners.len() == 12 && views_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ownership never settled: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Players (some with ids a URL could mangle) and channels, ingested through node 1.
    let players: Vec<String> = (0..24)
        .map(|i| match i % 4 {
            0 => format!("a/b#{i} é"),
            1 => format!("p?{i}&x=1"),
            _ => format!("p-{i}"),
        })
        .collect();
    let mut body = String::new();
    let mut want = BTreeMap::new();
    for (i, p) in players.iter().enumerate() {
        body.push_str(&events(p, &format!("fwd{i}"), 1 + i % 3));
        want.insert(p.clone(), (1 + i % 3) as u64);
        let join = json!({"v": 1, "id": format!("join{i}"), "ts": now_ms(), "player": p,
                          "kind": "viewer_join", "channel": format!("c-{}", i % 8)});
        body.push_str(&format!("{join}\n"));
        *want.get_mut(p).unwrap() += 1;
    }
    let ingest_key = keys.get("ingester");
    let a = post(&client, &nodes[0].url("/v1/events"), ingest_key, body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    // Every player is answered by both nodes: the non-owner forwards with its signature.
    for node in &nodes {
        assert_counts(node, keys.get("reader"), &want).await;
    }
    let reader_key = keys.get("reader");
    for node in &nodes {
        let mut served_by = std::collections::BTreeSet::new();
        for p in &players {
            let url = node.url(&entity_path(ShardKind::Players, p));
            let a = get(&client, &url, reader_key).await;
            assert_eq!(a.body["stale"], false, "{p}: {}", a.body);
            served_by.insert(a.body["served_by"].as_str().unwrap().to_string());
        }
        assert_eq!(served_by.len(), 2, "answers came from both owners");
        assert!(node.metric("tally_queries_forwarded_total").await > 0);
    }
    // The top-N view gathers both nodes' channels (signed `local=1` calls).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = nodes[1].url("/v1/channels/top?limit=100");
        let a = get(&client, &url, reader_key).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let n = a.body["channels"].as_array().map_or(0, Vec::len);
        if n == 8 && a.body["stale"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "top-N never gathered 8 channels: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for node in &nodes {
        let mut secrets: Vec<&str> = keys.plain.values().map(String::as_str).collect();
        secrets.push(&secret);
        assert_not_logged(node, &secrets);
        assert_eq!(*node.errors.lock().unwrap(), Vec::<String>::new());
    }
}

/// One client's loop: posts `batch` events a request to players `<prefix>-0..5` until
/// `until`; returns the events acknowledged per player and the count of 429s.
async fn send_until(
    base: String,
    key: String,
    prefix: String,
    batch: usize,
    pause: Duration,
    until: Instant,
) -> (BTreeMap<String, u64>, usize) {
    let client = reqwest::Client::new();
    let mut acknowledged = BTreeMap::new();
    let mut refused = 0;
    let mut n = 0;
    while Instant::now() < until {
        let player = format!("{prefix}-{}", n % 5);
        let body = events(&player, &format!("{prefix}-r{n}"), batch);
        let url = format!("{base}/v1/events");
        let a = post(&client, &url, &key, body).await;
        match a.status.as_u16() {
            202 => *acknowledged.entry(player).or_insert(0) += a.body["accepted"].as_u64().unwrap(),
            429 => {
                refused += 1;
                let secs: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
                assert!(secs >= 1, "Retry-After {secs}");
                assert!(
                    a.body["error"].as_str().unwrap().starts_with("rate: "),
                    "{}",
                    a.body
                );
                acknowledged.entry(player).or_insert(0);
            }
            other => panic!("{other}: {}", a.body),
        }
        n += 1;
        tokio::time::sleep(pause).await;
    }
    (acknowledged, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_key_leaves_another_untouched_and_loses_nothing_acknowledged() {
    let env = TestEnv::new("auth_rate", 4);
    let limits = |rps, eps| IngestLimits {
        requests_per_sec: Some(rps),
        events_per_sec: Some(eps),
        ..IngestLimits::default()
    };
    let keys = Keys::write(
        &env,
        &[
            ("flood", &[Scope::Ingest], limits(5, 50)),
            ("steady", &[Scope::Ingest], limits(1000, 100_000)),
            ("tight", &[Scope::Ingest], limits(100, 10)),
            ("reader", &[Scope::Read], no_limits()),
        ],
    );
    let node = NodeProcess::start(&env, "n1", &auth_toml(&keys, ""));
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();

    // A request over the remaining events is refused whole and takes nothing; more events
    // than the key's burst can never pass (413, not a wait).
    let url = node.url("/v1/events");
    let tight = keys.get("tight");
    for (player, n, status, why) in [
        ("tight-a", 8, 202, "within the burst of 10"),
        ("tight-b", 5, 429, "5 events, 2 left"),
        ("tight-c", 2, 202, "the refusal took no tokens"),
        ("tight-d", 11, 413, "more than the burst"),
    ] {
        let a = post(&client, &url, tight, events(player, player, n)).await;
        assert_eq!(a.status, status, "{why}: {}", a.body);
        if status == 429 {
            assert_eq!(a.retry_after.as_deref(), Some("1"));
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = post(&client, &url, tight, events("tight-b", "tight-b2", 5)).await;
    assert_eq!(a.status, 202, "after Retry-After: {}", a.body);

    // Three clients flood one key while two send steadily on another.
    let until = Instant::now() + Duration::from_secs(4);
    let clients = |key: &str, n: usize, batch: usize, pause: Duration| -> Vec<_> {
        (0..n)
            .map(|i| {
                let (base, secret) = (node.base.clone(), keys.get(key).to_string());
                let prefix = format!("{key}{i}");
                tokio::spawn(send_until(base, secret, prefix, batch, pause, until))
            })
            .collect()
    };
    let flood = clients("flood", 3, 10, Duration::ZERO);
    let steady = clients("steady", 2, 20, Duration::from_millis(50));
    let mut want = BTreeMap::from([
        ("tight-a".to_string(), 8),
        ("tight-b".to_string(), 5),
        ("tight-c".to_string(), 2),
        ("tight-d".to_string(), 0),
    ]);
    let (mut flood_refused, mut flood_accepted) = (0, 0);
    for task in flood {
        let (acked, refused) = task.await.unwrap();
        flood_refused += refused;
        flood_accepted += acked.values().sum::<u64>();
        want.extend(acked);
    }
    for task in steady {
        let (acked, refused) = task.await.unwrap();
        assert_eq!(
            refused, 0,
            "the steady key was refused during the other's flood"
        );
        assert!(acked.values().sum::<u64>() >= 5 * 20, "{acked:?}");
        want.extend(acked);
    }
    assert!(flood_refused > 0, "the flood was never refused");
    // At most the burst plus 4 s of 50 events/s (and a second of slack).
    assert!(
        flood_accepted <= 50 + 5 * 50,
        "{flood_accepted} flood events accepted"
    );
    assert_counts(&node, keys.get("reader"), &want).await;
    assert_eq!(*node.errors.lock().unwrap(), Vec::<String>::new());
}
