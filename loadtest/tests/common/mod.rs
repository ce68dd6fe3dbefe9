//! A real node, in process, on the real Kafka and Cassandra, for the load tester's tests:
//! unique topics and keyspace per test, auth on with one `read` key.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tally_node::auth::keys::{entry_toml, new_key};
use tally_node::auth::rate::IngestLimits;
use tally_node::auth::Scope;
use tally_node::config::{
    CassandraConfig, ClusterConfig, Config, IngestConfig, KafkaConfig, NodeConfig, PushConfig,
    ShardConfig,
};

pub fn require_services() {
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

/// A running node; `stop` shuts it down and waits.
pub struct TestNode {
    /// Its API address, `host:port`.
    pub addr: String,
    pub kafka: KafkaConfig,
    /// A key with the scope `read` (queries, verification, subscriptions).
    pub read_key: String,
    keys_file: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestNode {
    /// Starts a node with `partitions` per topic, its names starting with `id`, and waits
    /// until it is ready.
    pub async fn start(id: &str, partitions: i32, push: PushConfig) -> TestNode {
        require_services();
        let port = free_port();
        let kafka = KafkaConfig {
            player_topic: format!("{id}.players"),
            channel_topic: format!("{id}.channels"),
            dlq_topic: format!("{id}.dlq"),
            partitions,
            group_id: id.to_string(),
            ..Default::default()
        };
        let read_key = new_key();
        let keys_file = std::env::temp_dir().join(format!("{id}-keys.toml"));
        let entry = entry_toml(
            "reader",
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
                pretouch_mib: 0,
                tls: None,
            },
            kafka: kafka.clone(),
            cassandra: CassandraConfig {
                keyspace: id.to_string(),
                ..Default::default()
            },
            shard: ShardConfig {
                checkpoint_interval_ms: 200,
                ..Default::default()
            },
            ingest: IngestConfig::default(),
            telemetry: Default::default(),
            auth: tally_node::auth::AuthConfig {
                keys_file: Some(keys_file.clone()),
                ..Default::default()
            },
            cluster: ClusterConfig {
                cluster_id: id.to_string(),
                gossip_addr: std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap(),
                ..Default::default()
            },
            push,
            history: Default::default(),
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tally_node::run(cfg, async {
            let _ = stop_rx.await;
        }));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("http://{addr}/readyz"))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "node not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        TestNode {
            addr,
            kafka,
            read_key,
            keys_file,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        let _ = std::fs::remove_file(&self.keys_file);
    }
}
