//! The bounds on what a request may carry, each at the edge, against a real node: JSON
//! nesting, the request head (line and headers), query parameters and path ids. Each is
//! answered with a 4xx that names the limit and its value, in time, and the node goes on
//! serving. (The body size, the events per request and the event size are checked at
//! their edges in ingest.rs.)

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use common::{NodeProcess, TestEnv};
use serde_json::{json, Value};

/// Status and JSON body (Null when it is not JSON) of a GET.
async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = client.post(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn level_up(id: &str) -> String {
    json!({"v": 1, "id": id, "ts": 1_700_000_000_000i64, "player": "limits",
           "kind": "level_up", "level": 2})
    .to_string()
}

/// Writes `request` on a new connection (stopping quietly where the server stops reading)
/// and returns the first line of the answer and the time it took, or what ended the wait.
fn raw(base: &str, request: &[u8]) -> (String, Duration) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return (format!("no answer: {e}"), start.elapsed()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    (
        text.lines().next().unwrap_or("").to_string(),
        start.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_answers_a_4xx_naming_the_limit_and_the_node_goes_on_serving() {
    let env = TestEnv::new("bounds", 1);
    let node = NodeProcess::start(&env, "n1", "");
    node.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    nesting(&client, &node).await;
    head(&client, &node).await;
    queries(&client, &node).await;
    // Still serving, and nothing made it log an error but actix's own line for each
    // connection whose head it refused (logged at ERROR by actix-http's dispatcher).
    assert_eq!(get(&client, &node.url("/healthz")).await.0, 200);
    let errors = node.errors.lock().unwrap().clone();
    let actix = "stream error: request parse error: message head is too large";
    let (refused, others): (Vec<_>, Vec<_>) = errors.iter().partition(|l| l.ends_with(actix));
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(others.is_empty(), "{others:?}");
}

/// Nesting deeper than 64 levels rejects the event naming the bound, in both formats and
/// at 10,000 levels; its neighbours are written.
async fn nesting(client: &reqwest::Client, node: &NodeProcess) {
    let url = node.url("/v1/events");
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let reason = "nesting deeper than 64 levels";
    let (status, body) = post(client, &url, deep(10_000)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["rejected"],
        json!([{"index": 0, "field": "event", "reason": reason}])
    );
    let objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let ndjson = format!("{objects}\n{}\n{}", level_up("nest-1"), deep(64));
    let (status, body) = post(client, &url, ndjson).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        body["rejected"][0],
        json!({"index": 0, "field": "event", "reason": reason})
    );
    // 64 levels are not refused for their depth (an array is just not an event).
    assert_eq!(body["rejected"][1]["index"], 2);
    assert_ne!(body["rejected"][1]["reason"], reason);
    let array = format!("[{},{}]", level_up("nest-2"), deep(65));
    let (status, body) = post(client, &url, array).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["rejected"],
        json!([{"index": 1, "field": "event", "reason": reason}])
    );
}

/// A head over 32 KiB is 431 naming the limit; over actix's own buffer (128 KiB) or 96
/// headers, 431 from actix; a head that never ends, 408 after actix's 5 s.
async fn head(client: &reqwest::Client, node: &NodeProcess) {
    let big = "h".repeat(64 * 1024);
    let r = client
        .post(node.url("/v1/events"))
        .header("x-big", &big)
        .body(level_up("head-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let body: Value = r.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("headers: "), "{error}");
    assert!(
        error.ends_with("bytes with the request line, more than the limit of 32768 bytes"),
        "{error}"
    );
    // Just under the limit is served.
    let fits = "h".repeat(32 * 1024 - 200);
    let r = client
        .get(node.url("/healthz"))
        .header("x-big", fits)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A URL counts: an id in the query that makes the head too large.
    let long_url = node.url(&format!("/v1/players?id={}", "h".repeat(40 * 1024)));
    let (status, body) = get(client, &long_url).await;
    assert_eq!(status, 431, "{body}");

    let addr = node.base.trim_start_matches("http://").to_string();
    let base = node.base.clone();
    let (huge, many, unended) = tokio::task::spawn_blocking(move || {
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nhost: {addr}\r\nx-big: {}\r\n\r\n",
            "h".repeat(200 * 1024)
        );
        let headers: String = (0..100).map(|i| format!("x-{i}: {i}\r\n")).collect();
        let many = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n{headers}\r\n");
        let unended = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nx-slow: still coming");
        (
            raw(&base, huge.as_bytes()),
            raw(&base, many.as_bytes()),
            raw(&base, unended.as_bytes()),
        )
    })
    .await
    .unwrap();
    for (what, (line, took), status) in [
        ("200 KiB header", huge, " 431 "),
        ("100 headers", many, " 431 "),
        ("an unended head", unended, " 408 "),
    ] {
        assert!(line.contains(status), "{what}: {line}");
        assert!(took < Duration::from_secs(10), "{what}: {took:?}");
    }
}

/// `?id=` and path ids are 1-128 bytes, `limit` 1-1000; errors name the parameter and quote
/// at most 32 bytes of the value.
async fn queries(client: &reqwest::Client, node: &NodeProcess) {
    let id = |n: usize| "%C3%A9".repeat(n / 2) + &"x".repeat(n % 2);
    let cases: Vec<(String, u16, Option<String>)> = vec![
        (format!("/v1/players?id={}", id(128)), 404, None),
        (
            format!("/v1/players?id={}", id(129)),
            400,
            Some("id: must be 1 to 128 bytes, got 129".into()),
        ),
        (
            "/v1/channels?id=".into(),
            400,
            Some("id: must be 1 to 128 bytes, got 0".into()),
        ),
        (
            "/v1/channels?id=a&id=b".into(),
            400,
            Some("id: given more than once".into()),
        ),
        (format!("/v1/players/{}", id(128)), 404, None),
        (
            format!("/v1/players/{}", id(129)),
            400,
            Some("player id: must be 1 to 128 bytes, got 129".into()),
        ),
        ("/v1/channels/top?limit=1000".into(), 200, None),
        (
            "/v1/channels/top?limit=1001".into(),
            400,
            Some(r#"limit: expected an integer from 1 to 1000, got "1001""#.into()),
        ),
        (
            format!("/v1/channels/top?limit={}", "9".repeat(10_000)),
            400,
            Some(format!(
                r#"limit: expected an integer from 1 to 1000, got "{}…""#,
                "9".repeat(29)
            )),
        ),
        (
            "/v1/channels/top?by=peak&by=follows".into(),
            400,
            Some("by: given more than once".into()),
        ),
        (
            "/v1/cluster?local=1&local=0".into(),
            400,
            Some("local: given more than once".into()),
        ),
    ];
    for (path, status, error) in cases {
        let (got, body) = get(client, &node.url(&path)).await;
        let shown = &path[..path.len().min(80)];
        assert_eq!(got, status, "{shown}: {body}");
        if let Some(error) = error {
            assert_eq!(body["error"], error.as_str(), "{shown}");
        }
    }
}
