//! Test harness for integration tests against the real Kafka and Cassandra.
//!
//! Each test gets its own topics and keyspace (unique names), so tests run in parallel and
//! reruns never collide. Nodes are real `tally-node` processes on port 0, killed and
//! restarted like in production. Fails with a clear message when the services are down.
//!
//! Secure mode ([`TestEnv::secure`], or every test with `TALLY_TEST_SECURE=1`) runs the
//! same tests against the secure services (`make services-secure`): Kafka over SASL_SSL
//! (SCRAM-SHA-512), Cassandra with TLS and a password, and the nodes' API over HTTPS with
//! client certificates, every file from [`secure_dir`].
#![allow(dead_code)]

pub mod cluster;
pub mod model;
pub mod scenarios;
pub mod secure;

pub use secure::{http_client, SECURE_CASSANDRA, SECURE_KAFKA};

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_node::config::{IngestConfig, KafkaConfig};
use tally_node::event::Event;
use tally_node::ingest::{records_for, Ingest, IngestError};
use tally_node::metrics::Metrics;

pub const KAFKA: &str = "127.0.0.1:9092";
pub const CASSANDRA: &str = "127.0.0.1:9042";

/// Panics with a clear message unless Kafka and Cassandra both accept connections.
pub fn require_services() {
    for (name, addr) in [("kafka", KAFKA), ("cassandra", CASSANDRA)] {
        let ok = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok();
        assert!(
            ok,
            "{name} is not serving on {addr}: start the services with `make services` \
             (integration tests need the real Kafka and Cassandra)"
        );
    }
}

/// Whether `TALLY_TEST_SECURE=1` asks every test to run against the secure services.
pub fn secure_mode() -> bool {
    std::env::var("TALLY_TEST_SECURE").is_ok_and(|v| v == "1")
}

/// A name no other test or earlier run uses: `<prefix>_<pid>_<time>_<counter>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000_000;
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A UDP port free right now (for gossip addresses).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The isolated resources of one test.
#[derive(Clone)]
pub struct TestEnv {
    pub name: String,
    pub keyspace: String,
    pub player_topic: String,
    pub channel_topic: String,
    pub dlq_topic: String,
    pub partitions: i32,
    pub dir: PathBuf,
    /// The secure services' files, in secure mode; None: the plain services.
    pub secure: Option<PathBuf>,
}

impl TestEnv {
    /// A test's resources on the plain services, or the secure ones with
    /// `TALLY_TEST_SECURE=1`.
    pub fn new(name: &str, partitions: i32) -> TestEnv {
        if secure_mode() {
            return TestEnv::secure(name, partitions);
        }
        require_services();
        TestEnv::with(name, partitions, None)
    }

    /// A test's resources on the plain services, whatever `TALLY_TEST_SECURE` says (for
    /// tests that configure security themselves).
    pub fn plain(name: &str, partitions: i32) -> TestEnv {
        require_services();
        TestEnv::with(name, partitions, None)
    }

    /// A test's resources on the secure services (see the module doc).
    pub fn secure(name: &str, partitions: i32) -> TestEnv {
        let dir = secure::require_services();
        TestEnv::with(name, partitions, Some(dir))
    }

    fn with(name: &str, partitions: i32, secure: Option<PathBuf>) -> TestEnv {
        let id = unique(name);
        let dir = std::env::temp_dir().join("tally-tests").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        TestEnv {
            keyspace: format!("t_{}", id.replace('-', "_"))
                .chars()
                .take(48)
                .collect(),
            player_topic: format!("{id}.players"),
            channel_topic: format!("{id}.channels"),
            dlq_topic: format!("{id}.dlq"),
            partitions,
            name: id,
            dir,
            secure,
        }
    }

    /// The brokers and the Cassandra contact point of this test's services.
    pub fn addresses(&self) -> (&'static str, &'static str) {
        match self.secure {
            None => (KAFKA, CASSANDRA),
            Some(_) => (SECURE_KAFKA, SECURE_CASSANDRA),
        }
    }

    pub fn kafka_config(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            brokers: self.addresses().0.into(),
            player_topic: self.player_topic.clone(),
            channel_topic: self.channel_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            partitions: self.partitions,
            replication_factor: 1,
            group_id: format!("{}-group", self.name),
            ..KafkaConfig::default()
        };
        if let Some(dir) = &self.secure {
            secure::secure_kafka(&mut kafka, dir);
        }
        kafka
    }

    /// A node config for this test; `extra` is appended (TOML sections). Unless `extra`
    /// has a `[cluster]` section, the node gossips alone on a free port; unless it has an
    /// `[auth]` section, auth is off.
    pub fn node_config(&self, node_id: &str, extra: &str) -> String {
        let mut defaults = if extra.contains("[cluster]") {
            String::new()
        } else {
            format!(
                "[cluster]\ncluster_id = \"{}\"\ngossip_addr = \"127.0.0.1:{}\"\n",
                self.name,
                free_udp_port()
            )
        };
        if !extra.contains("[auth]") {
            defaults.push_str("\n[auth]\nenabled = false\n");
        }
        let (kafka, cassandra) = self.addresses();
        let (node_tls, kafka_security, cassandra_security) = match &self.secure {
            None => Default::default(),
            Some(dir) => secure::toml(dir),
        };
        format!(
            r#"[node]
id = "{node_id}"
api_addr = "127.0.0.1:0"
{node_tls}
[kafka]
brokers = "{kafka}"
player_topic = "{}"
channel_topic = "{}"
dlq_topic = "{}"
partitions = {}
group_id = "{}-group"
{kafka_security}
[cassandra]
contact_points = ["{cassandra}"]
keyspace = "{}"
{cassandra_security}
{defaults}
{extra}
"#,
            self.player_topic,
            self.channel_topic,
            self.dlq_topic,
            self.partitions,
            self.name,
            self.keyspace
        )
    }

    /// Offsets the nodes' consumer group committed to Kafka, per partition of both topics:
    /// (topic, partition, offset), -1 where none was committed.
    pub fn kafka_commits(&self) -> Vec<(String, i32, i64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = self
            .kafka_config()
            .client_config()
            .set("group.id", format!("{}-group", self.name))
            .create()
            .expect("create kafka consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in [&self.player_topic, &self.channel_topic] {
            for p in 0..self.partitions {
                tpl.add_partition(topic, p);
            }
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("read committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| {
                let at = match e.offset() {
                    rdkafka::Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.topic().to_string(), e.partition(), at)
            })
            .collect()
    }

    /// A producer using the node's own ingest path (transactions, partitioner).
    pub fn producer(&self) -> Ingest {
        Ingest::start(
            &self.kafka_config(),
            &IngestConfig::default(),
            &unique("test-producer"),
            (self.partitions, self.partitions),
            Arc::new(Metrics::default()),
            Box::new(|_| {}),
        )
        .expect("start test producer")
    }
}

/// Produces `events` in transactions of `per_txn` events each. A transaction Kafka did not
/// take (nothing of it written: a broker slowed by the tests around it) is tried again,
/// up to `PRODUCE_ATTEMPTS` times in all, as a client of ingest would; any other failure,
/// and one that may have written, fails the test.
pub async fn produce(ingest: &Ingest, events: &[Event], per_txn: usize) {
    const PRODUCE_ATTEMPTS: usize = 3;
    for chunk in events.chunks(per_txn) {
        let records: Vec<_> = chunk.iter().flat_map(records_for).collect();
        let mut attempt = 1;
        loop {
            match ingest.produce(records.clone()).await {
                Ok(()) => break,
                Err(e @ (IngestError::NotWritten(_) | IngestError::TimedOut(_)))
                    if attempt < PRODUCE_ATTEMPTS =>
                {
                    eprintln!("produce to kafka: attempt {attempt}: {e}; trying again");
                    attempt += 1;
                }
                Err(e) => panic!("produce to kafka: {e:?}"),
            }
        }
    }
}

/// A running `tally-node` process.
pub struct NodeProcess {
    child: Option<Child>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub base: String,
    /// Lines at ERROR level seen in the log (tests may assert there are none).
    pub errors: Arc<Mutex<Vec<String>>>,
    starts: u32,
    /// Environment variables of the next starts (config overrides `TALLY_<SECTION>__<KEY>`).
    env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Writes the config and starts the node; returns once its API address is known.
    pub fn start(env: &TestEnv, node_id: &str, extra: &str) -> NodeProcess {
        Self::start_with_env(env, node_id, extra, &[])
    }

    /// [`NodeProcess::start`] with environment variables set for every start.
    pub fn start_with_env(
        env: &TestEnv,
        node_id: &str,
        extra: &str,
        vars: &[(&str, &str)],
    ) -> NodeProcess {
        let config_path = env.dir.join(format!("{node_id}.toml"));
        std::fs::write(&config_path, env.node_config(node_id, extra)).unwrap();
        let mut n = NodeProcess {
            child: None,
            log_path: env.dir.join(format!("{node_id}.log")),
            config_path,
            base: String::new(),
            errors: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
            env: env
                .secure
                .as_deref()
                .map(secure::node_env)
                .unwrap_or_default(),
        };
        n.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally-node"))
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,scylla=warn,rdkafka=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally-node");
        let (tx, rx) = mpsc::channel();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let errors = self.errors.clone();
        let start_no = self.starts;
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let mut log = log.try_clone().unwrap();
            let errors = errors.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(log, "[start {start_no}] {line}");
                    if let Some(i) = line
                        .find("api listening on http://")
                        .or_else(|| line.find("api listening on https://"))
                    {
                        let rest = &line[i + "api listening on ".len()..];
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                    }
                    if line.contains(" ERROR ") {
                        errors.lock().unwrap().push(line);
                    }
                }
            });
        }
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "tally-node did not report its api address; see {}",
                    self.log_path.display()
                )
            });
        self.base = base;
        self.child = Some(child);
    }

    /// Process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let client = http_client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node not ready within {timeout:?}; see {}",
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets an environment variable for the next start (see [`NodeProcess::restart`]).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the node again with the same config (a new process, a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        self.spawn();
    }

    /// A Prometheus counter's value (summed over label sets).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = http_client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One record of the dead-letter topic: its headers, key and payload.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub headers: std::collections::BTreeMap<String, String>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl TestEnv {
    /// Reads the test's dead-letter topic from the start until `want` records arrived or
    /// `timeout` passed; returns what arrived (committed records only).
    pub fn dead_letters(&self, want: usize, timeout: Duration) -> Vec<DeadLetterRecord> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = self
            .kafka_config()
            .client_config()
            .set("group.id", unique("dlq-reader"))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .expect("create dead-letter reader");
        consumer
            .subscribe(&[&self.dlq_topic])
            .expect("subscribe to the dead-letter topic");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let mut headers = std::collections::BTreeMap::new();
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    let value = header
                        .value
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    headers.insert(header.key.to_string(), value.into_owned());
                }
            }
            out.push(DeadLetterRecord {
                headers,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
        out
    }
}
