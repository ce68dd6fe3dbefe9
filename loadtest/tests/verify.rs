//! The load tester against a real node (in-process) on the real Kafka and Cassandra: a
//! players run verifies exact (querying with an API key: the node has auth on), and a
//! deliberately wrong expected counter is reported.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tally_loadtest::drive::{self, DriveOpts, Progress, Via};
use tally_loadtest::players::{Expected, PlayersGen, PlayersSpec};
use tally_loadtest::verify::{verify, VerifyOpts};
use tally_node::auth::keys::{entry_toml, new_key};
use tally_node::auth::rate::IngestLimits;
use tally_node::auth::Scope;
use tally_node::config::{
    CassandraConfig, ClusterConfig, Config, IngestConfig, KafkaConfig, NodeConfig, ShardConfig,
};

fn require_services() {
    for (name, addr) in [("kafka", "127.0.0.1:9092"), ("cassandra", "127.0.0.1:9042")] {
        assert!(
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok(),
            "{name} is not serving on {addr}: start the services with `make services`"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_run_verifies_exact_and_a_wrong_counter_is_reported() {
    require_services();
    let id = format!("ltverify_{}_{}", std::process::id(), rand::random::<u32>());
    let port = free_port();
    let kafka = KafkaConfig {
        player_topic: format!("{id}.players"),
        channel_topic: format!("{id}.channels"),
        dlq_topic: format!("{id}.dlq"),
        partitions: 3,
        group_id: id.clone(),
        ..Default::default()
    };
    // One key that may read: the verifier's queries carry it.
    let read_key = new_key();
    let keys_file = std::env::temp_dir().join(format!("{id}-keys.toml"));
    let entry = entry_toml(
        "verifier",
        &read_key,
        &[Scope::Read],
        &IngestLimits::default(),
    );
    std::fs::write(&keys_file, entry).unwrap();
    let cfg = Config {
        node: NodeConfig {
            id: "lt-node".into(),
            api_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            advertise_api_addr: None,
            shutdown_grace_secs: 30,
            tls: None,
        },
        kafka: kafka.clone(),
        cassandra: CassandraConfig {
            keyspace: id.clone(),
            ..Default::default()
        },
        shard: ShardConfig {
            checkpoint_interval_ms: 200,
            ..Default::default()
        },
        ingest: IngestConfig::default(),
        telemetry: Default::default(),
        push: Default::default(),
        auth: tally_node::auth::AuthConfig {
            keys_file: Some(keys_file.clone()),
            ..Default::default()
        },
        cluster: ClusterConfig {
            cluster_id: id.clone(),
            gossip_addr: std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
            ..Default::default()
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(tally_node::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let base = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://{base}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "node not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spec = PlayersSpec {
        players: 300,
        channels: 20,
        events: 8_000,
        seed: 42,
        id_prefix: format!("{id}-"),
        start_ts: 1_700_000_000_000,
    };
    let mut expected = Expected::new(3, 120_000);
    let progress = Progress::default();
    let opts = DriveOpts {
        event_time: None,
        batch: 500,
        rate: None,
        lanes: 1,
        pipeline: 4,
        api_key: None,
        stamp_send_time: false,
    };
    drive::drive(
        PlayersGen::new(spec),
        &Via::Kafka(Box::new(kafka)),
        &opts,
        &mut expected,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(
        progress.sent.load(std::sync::atomic::Ordering::Relaxed),
        8_000
    );

    let vopts = VerifyOpts {
        nodes: vec![base.clone()],
        timeout: Duration::from_secs(60),
        sample: None,
        seed: 1,
        concurrency: 16,
        api_key: Some(read_key),
    };
    let report = verify(&expected, &vopts).await;
    assert!(
        report.mismatches.is_empty(),
        "{:?}",
        &report.mismatches[..report.mismatches.len().min(10)]
    );
    assert_eq!(report.players_checked, expected.players.len());

    // One deliberately wrong expected counter is found and named, and nothing else.
    let victim = expected.players.keys().min().unwrap().clone();
    expected.players.get_mut(&victim).unwrap().kills += 1;
    let report = verify(
        &expected,
        &VerifyOpts {
            timeout: Duration::from_secs(2),
            ..vopts
        },
    )
    .await;
    assert!(
        !report.mismatches.is_empty(),
        "a wrong counter went unnoticed"
    );
    assert!(
        report
            .mismatches
            .iter()
            .all(|m| m.starts_with(&format!("player {victim}.")) && m.contains("kills")),
        "{:?}",
        report.mismatches
    );
    let _ = stop_tx.send(());
    node.await.unwrap().unwrap();
    let _ = std::fs::remove_file(&keys_file);
}
