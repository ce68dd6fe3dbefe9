//! Node configuration: one typed struct per TOML section, loaded once at start.
//!
//! A config file is TOML; every key can be overridden by an environment variable named
//! `TALLY_<SECTION>__<KEY>` (double underscore between section and key), for example
//! `TALLY_KAFKA__BROKERS=10.0.0.5:9092`. Unknown keys are rejected, with the key and the
//! file named, so a typo never silently falls back to a default. The doc comments on the
//! fields below are the user documentation of each setting.
//!
//! Secrets (the Kafka and Cassandra passwords) never come from the config file: each is
//! read from a file the config names or from one environment variable, and prints as
//! `<redacted>` ([`Secret`]).
//!
//! Not for: runtime reconfiguration. A changed file takes effect on the next start; only
//! the certificate and key files of `[node.tls]` are read again, on SIGHUP (see `tls`).

mod api_tls;
mod cassandra;
mod files;
mod history;
mod kafka;
mod push;
mod secret;
#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub use api_tls::ApiTlsConfig;
pub use cassandra::{CassandraConfig, CassandraTls, Replication};
pub use history::HistoryConfig;
pub use kafka::{ClientProperties, KafkaConfig, SaslMechanism, SecurityProtocol, RESERVED};
pub use push::PushConfig;
pub use secret::Secret;

/// Environment variables that hold secrets: read by the sections they belong to, never by
/// the generic `TALLY_<SECTION>__<KEY>` overrides (which would parse `0123` as a number).
const SECRET_ENV: [&str; 2] = [kafka::SASL_PASSWORD_ENV, cassandra::PASSWORD_ENV];

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and HTTP address of this node.
    pub node: NodeConfig,
    /// Where Kafka is and which topics Tally reads and writes.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Where Cassandra / ScyllaDB is and how the keyspace is replicated.
    #[serde(default)]
    pub cassandra: CassandraConfig,
    /// Shard behaviour: checkpoints, passivation, viewer expiry, batching.
    #[serde(default)]
    pub shard: ShardConfig,
    /// HTTP ingest limits and group commit.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Gossip membership: cluster id, this node's gossip address, seeds.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Traces: where spans are exported (off unless set) and how many are sampled.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// API keys and the cluster secret: where they are, whether they are checked.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Pushed updates: coalescing interval and the limits of connections and subscriptions.
    #[serde(default)]
    pub push: PushConfig,
    /// History buckets: on or off, retention per step, query limits.
    #[serde(default)]
    pub history: HistoryConfig,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Nodes gossip only with nodes of the same cluster id; others are ignored.
    pub cluster_id: String,
    /// UDP address this node gossips on.
    pub gossip_addr: SocketAddr,
    /// Gossip address (`host:port`, resolved at start) peers use to reach this node;
    /// defaults to `gossip_addr`. Set it when listening on 0.0.0.0.
    pub advertise_gossip_addr: Option<String>,
    /// Gossip addresses of seed nodes (`host:port`); empty for a single node.
    pub seeds: Vec<String>,
    /// Time between gossip rounds, milliseconds.
    pub gossip_interval_ms: u64,
    /// Phi-accrual threshold above which a silent peer is considered dead (lower = faster
    /// failover, more false suspicion).
    pub phi_threshold: f64,
    /// How long a node that wants a partition waits for its previous owner to checkpoint
    /// and release it before taking it anyway, milliseconds.
    pub handover_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            cluster_id: "tally".into(),
            gossip_addr: "127.0.0.1:7946"
                .parse()
                .expect("valid default gossip address"),
            advertise_gossip_addr: None,
            seeds: Vec::new(),
            gossip_interval_ms: 100,
            phi_threshold: 8.0,
            handover_timeout_ms: 15_000,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable name of this node, unique in the cluster (used in logs, ownership records
    /// and the ingest producer's transactional id).
    pub id: String,
    /// Address the HTTP API listens on. Port 0 picks a free port (tests use this).
    pub api_addr: SocketAddr,
    /// `host:port` other nodes use to reach this node's API (forwarded queries); defaults
    /// to the bound `api_addr`. Set it when listening on 0.0.0.0.
    #[serde(default)]
    pub advertise_api_addr: Option<String>,
    /// Longest a shutdown (SIGTERM, SIGINT) may take, in seconds: HTTP, final checkpoints,
    /// the Kafka source and gossip normally stop in a few seconds, but a broker that is
    /// down can hold rdkafka's consumer close for about 40 s. Past this the process exits
    /// at once with status 70; anything not checkpointed is replayed by the next owner.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// MiB of memory made resident at start and kept by the process (see
    /// `crate::memory`): entity state built later (a restart's catch-up, a failover, a bulk
    /// load) then needs no fresh pages from the kernel. 0 (the default): off, and freed
    /// memory goes back to the OS as usual. At most 1048576.
    #[serde(default)]
    pub pretouch_mib: u64,
    /// `[node.tls]`: serve the API over HTTPS (see [`ApiTlsConfig`]). Unset: plain HTTP.
    #[serde(default)]
    pub tls: Option<ApiTlsConfig>,
}

/// The largest `node.pretouch_mib` (1 TiB).
const MAX_PRETOUCH_MIB: u64 = 1 << 20;

fn default_shutdown_grace_secs() -> u64 {
    30
}

/// `[shard]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// How often dirty entities are written to Cassandra, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// How often while a shard works through a backlog (its batches arrive full: after a
    /// restart, a failover or a bulk load). Fewer, larger checkpoints coalesce more writes
    /// of the same entities, so the backlog drains faster; a crash meanwhile replays more.
    /// Set it equal to `checkpoint_interval_ms` to checkpoint at one pace always.
    pub catch_up_checkpoint_interval_ms: u64,
    /// An entity, and its history buckets, is written at most once per this many
    /// milliseconds: a checkpoint writes it once its first unwritten change is this old,
    /// so an entity that changes often costs one Cassandra row per period, not one per
    /// checkpoint. The partition's resume offset stays at the oldest unwritten change: a
    /// restart or failover re-reads at most about this long of the partition (plus a
    /// checkpoint). 0 writes every change at the next checkpoint. A flush (shutdown,
    /// handover) writes everything at once. At most 600000.
    pub flush_period_ms: u64,
    /// An entity untouched for this long (wall clock) is checkpointed and evicted from
    /// memory; its next event or query loads it back.
    pub passivate_after_secs: u64,
    /// A viewer whose last heartbeat is older than this, in event time, is expired from
    /// its channel (judged against the partition's event-time watermark).
    pub viewer_timeout_secs: u64,
    /// Most records read from Kafka at once, and so most records handed to a shard in one
    /// batch. At least 1 (0 is refused when the config is read).
    pub max_batch: NonZeroUsize,
    /// Batches in flight between the Kafka poll loop and the shards, per node. When all are
    /// taken the poll loop waits, so a slow shard pushes back on Kafka.
    pub max_inflight_batches: usize,
    /// Client retries are counted once: a record whose (entity, player, event id) its
    /// partition already saw within this many seconds of arrival (Kafka timestamps) is a
    /// duplicate and is not applied. 0 turns deduplication off. Costs about 110 bytes of
    /// memory per record that arrived within the window, a third of the bulk consume rate
    /// (scripts/bench-compare.sh), and a new owner re-reads the window's records before it
    /// applies new ones.
    pub dedupe_window_secs: u64,
    /// How far an event's `ts` may be ahead of its arrival, in seconds. HTTP ingest rejects
    /// later events with the reason; a record read from Kafka that is further ahead of its
    /// Kafka timestamp is counted (`tally_records_future_total`), sent to the dead-letter
    /// topic and not applied, so one client's wrong clock can never move the partition's
    /// event-time watermark (and expire every viewer).
    pub future_tolerance_secs: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_ms: 1000,
            catch_up_checkpoint_interval_ms: 10_000,
            flush_period_ms: 5_000,
            passivate_after_secs: 600,
            viewer_timeout_secs: 120,
            max_batch: NonZeroUsize::new(2000).expect("2000 is not zero"),
            max_inflight_batches: 64,
            dedupe_window_secs: 600,
            future_tolerance_secs: 300,
        }
    }
}

impl ShardConfig {
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
    pub fn catch_up_checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.catch_up_checkpoint_interval_ms)
    }
    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_after_secs)
    }
    pub fn dedupe_window_ms(&self) -> i64 {
        (self.dedupe_window_secs as i64).saturating_mul(1000)
    }
    pub fn future_tolerance_ms(&self) -> i64 {
        (self.future_tolerance_secs as i64).saturating_mul(1000)
    }
}

/// The longest `shard.flush_period_ms` may be (10 minutes).
pub const MAX_FLUSH_PERIOD_MS: u64 = 600_000;

/// The most `ingest.max_event_bytes` may be: a dead letter that keeps this many bytes of
/// its input, with its headers, still fits a Kafka record (see `ingest`).
pub const MAX_EVENT_BYTES_LIMIT: usize = 512 * 1024;

/// `[ingest]`: limits of `POST /v1/events` and its Kafka transactions. docs/API.md says
/// what a client sees when a limit is crossed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest accepted request body in bytes; a larger body gets 413 and its first
    /// `max_event_bytes` bytes go to the dead-letter topic.
    pub max_body_bytes: usize,
    /// Most events in one request; more get 413 (the whole request; its first
    /// `max_event_bytes` bytes go to the dead-letter topic).
    pub max_batch_events: usize,
    /// Largest accepted event in bytes, as it stands in the body (an array element's JSON
    /// text, or an NDJSON line without its line break). A larger event is rejected (field
    /// `event`) while its neighbours are written. Also the most bytes of any rejected input
    /// kept in the dead-letter topic: a longer input is cut, and the record says so. At most
    /// 524288, so every record fits Kafka's default limits (the topics' `max.message.bytes`
    /// must stay at its default of about 1 MiB or above).
    pub max_event_bytes: usize,
    /// Most time a request may take, from its arrival to its answer, in milliseconds:
    /// reading the body (408 when it has not arrived by then), waiting for the producer,
    /// and Kafka's transaction. A request answered 503 after it was not written; see
    /// docs/API.md for when the outcome is unknown. 1000-300000.
    pub request_timeout_ms: u64,
    /// Concurrent requests are gathered for this long into one Kafka transaction; less than
    /// `request_timeout_ms`.
    pub linger_ms: u64,
    /// Most records in one Kafka transaction (one request's records are never split).
    pub max_transaction_records: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 20_000,
            max_event_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            linger_ms: 1,
            max_transaction_records: 50_000,
        }
    }
}

impl IngestConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl Config {
    /// Loads `path`, applies `TALLY_...` environment overrides, and validates the result.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        if !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("TALLY")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(environment())),
            )
            .build()
            .with_context(|| format!("read config file {}", path.display()))?;
        for (key, instead) in [
            (
                "kafka.sasl_password",
                "kafka.sasl_password_file or TALLY_KAFKA__SASL_PASSWORD",
            ),
            (
                "cassandra.password",
                "cassandra.password_file or TALLY_CASSANDRA__PASSWORD",
            ),
        ] {
            if raw.get::<config::Value>(key).is_ok() {
                bail!(
                    "invalid config file {}: {key} cannot be set in a config file; use {instead}",
                    path.display()
                );
            }
        }
        let mut cfg: Config = raw
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
        cfg.kafka
            .read_secrets()
            .and_then(|()| cfg.cassandra.read_secrets())
            .with_context(|| format!("invalid config file {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(cfg)
    }

    /// Whether other nodes are expected: `cluster.seeds` names any.
    pub fn has_peers(&self) -> bool {
        !self.cluster.seeds.is_empty()
    }

    /// Checks the values serde cannot: names, ranges, the relations between settings.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_kafka()?;
        self.validate_cassandra()?;
        self.validate_shard()?;
        self.validate_cluster()?;
        self.validate_ingest()?;
        self.push.validate()?;
        self.history.validate()?;
        self.telemetry.validate()
    }

    /// `[node]` id and `[kafka]`.
    fn validate_kafka(&self) -> anyhow::Result<()> {
        if self.node.id.trim().is_empty() {
            bail!("node.id must not be empty");
        }
        if self.node.pretouch_mib > MAX_PRETOUCH_MIB {
            bail!(
                "node.pretouch_mib must be at most {MAX_PRETOUCH_MIB}, got {}",
                self.node.pretouch_mib
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            bail!("kafka.brokers must not be empty");
        }
        if self.kafka.partitions < 1 {
            bail!(
                "kafka.partitions must be at least 1, got {}",
                self.kafka.partitions
            );
        }
        if !(1..=100_000_000).contains(&self.kafka.fetch_min_bytes) {
            bail!(
                "kafka.fetch_min_bytes must be 1-100000000, got {}",
                self.kafka.fetch_min_bytes
            );
        }
        if self.kafka.fetch_wait_max_ms > 300_000 {
            bail!(
                "kafka.fetch_wait_max_ms must be at most 300000, got {}",
                self.kafka.fetch_wait_max_ms
            );
        }
        if self.kafka.player_topic == self.kafka.channel_topic {
            bail!("kafka.player_topic and kafka.channel_topic must differ");
        }
        self.kafka.validate_connection()
    }

    fn validate_cassandra(&self) -> anyhow::Result<()> {
        self.cassandra.validate()
    }

    fn validate_shard(&self) -> anyhow::Result<()> {
        if self.shard.checkpoint_interval_ms == 0 {
            bail!("shard.checkpoint_interval_ms must be positive");
        }
        if self.shard.catch_up_checkpoint_interval_ms < self.shard.checkpoint_interval_ms {
            bail!(
                "shard.catch_up_checkpoint_interval_ms ({}) must be at least shard.checkpoint_interval_ms ({})",
                self.shard.catch_up_checkpoint_interval_ms,
                self.shard.checkpoint_interval_ms
            );
        }
        if self.shard.flush_period_ms > MAX_FLUSH_PERIOD_MS {
            bail!(
                "shard.flush_period_ms ({}) must be at most {MAX_FLUSH_PERIOD_MS}: a failover re-reads that much of a partition",
                self.shard.flush_period_ms
            );
        }
        if self.shard.max_inflight_batches == 0 {
            bail!("shard.max_inflight_batches must be positive");
        }
        Ok(())
    }

    /// The addresses of `[node]` and `[cluster]`, and the API's TLS files.
    fn validate_cluster(&self) -> anyhow::Result<()> {
        if self.node.api_addr.ip().is_unspecified() && self.node.advertise_api_addr.is_none() {
            bail!(
                "node.advertise_api_addr must be set when node.api_addr listens on {}",
                self.node.api_addr.ip()
            );
        }
        if self.cluster.gossip_addr.ip().is_unspecified()
            && self.cluster.advertise_gossip_addr.is_none()
        {
            bail!(
                "cluster.advertise_gossip_addr must be set when cluster.gossip_addr listens on {}",
                self.cluster.gossip_addr.ip()
            );
        }
        if self.cluster.cluster_id.trim().is_empty() {
            bail!("cluster.cluster_id must not be empty");
        }
        if self.cluster.gossip_interval_ms == 0 || self.cluster.phi_threshold <= 0.0 {
            bail!("cluster.gossip_interval_ms and cluster.phi_threshold must be positive");
        }
        self.node
            .tls
            .as_ref()
            .map_or(Ok(()), ApiTlsConfig::validate)
    }

    fn validate_ingest(&self) -> anyhow::Result<()> {
        if self.ingest.max_batch_events == 0 || self.ingest.max_body_bytes == 0 {
            bail!("ingest.max_batch_events and ingest.max_body_bytes must be positive");
        }
        let max_event = MAX_EVENT_BYTES_LIMIT;
        if !(1..=max_event).contains(&self.ingest.max_event_bytes) {
            bail!(
                "ingest.max_event_bytes must be 1-{max_event}, got {}",
                self.ingest.max_event_bytes
            );
        }
        if !(1000..=300_000).contains(&self.ingest.request_timeout_ms) {
            bail!(
                "ingest.request_timeout_ms must be 1000-300000, got {}",
                self.ingest.request_timeout_ms
            );
        }
        if self.ingest.linger_ms >= self.ingest.request_timeout_ms {
            bail!(
                "ingest.linger_ms ({}) must be less than ingest.request_timeout_ms ({})",
                self.ingest.linger_ms,
                self.ingest.request_timeout_ms
            );
        }
        Ok(())
    }
}

/// The overrides in the process environment: `TALLY_<SECTION>__<KEY>` variables, less the
/// secrets, which are not settings: the cluster secret never enters `Config` (see `auth`),
/// and the two passwords are read by their sections ([`SECRET_ENV`]). Other `TALLY_`
/// variables (`TALLY_CONFIG`, the load tester's `TALLY_API_KEY`, the services' ports) name
/// no section and key, and are left alone rather than refused as unknown keys.
fn environment() -> config::Map<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            k.strip_prefix("TALLY_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .filter(|(k, _)| k != crate::auth::CLUSTER_SECRET_ENV && !SECRET_ENV.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper; the tests need nothing more.
    mod tempfile_path {
        use super::Write;
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "tally-config-test-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::File::create(&p)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .expect("write temp config");
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let f = write("[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n");
        let cfg = Config::load(&f.0).unwrap();
        assert_eq!(cfg.kafka.player_topic, "player-events");
        assert_eq!(cfg.cassandra.replication, Replication::Simple { factor: 1 });
        assert_eq!(cfg.shard.checkpoint_interval_ms, 1000);
    }

    #[test]
    fn tally_variables_that_name_no_section_and_key_are_no_overrides() {
        // Set for the whole process, harmlessly: no test reads it.
        std::env::set_var("TALLY_TEST_NOT_A_SETTING", "1");
        let f = write("[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[auth]\nenabled = false\n");
        Config::load(&f.0).unwrap();
    }

    #[test]
    fn misspelled_key_is_named() {
        let f =
            write("[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[kafka]\nbrokrs = \"x:1\"\n");
        let err = format!("{:#}", Config::load(&f.0).unwrap_err());
        assert!(err.contains("brokrs"), "{err}");
        assert!(err.contains(&f.0.display().to_string()), "{err}");
    }

    #[test]
    fn network_topology_replication_renders_cql() {
        let f = write(
            "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[cassandra.replication]\nstrategy = \"network_topology\"\ndatacenters = { dc1 = 3, dc2 = 2 }\n",
        );
        let cfg = Config::load(&f.0).unwrap();
        assert_eq!(
            cfg.cassandra.replication.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
    }

    /// Every example under cluster-config/ is a valid config.
    #[test]
    fn shipped_examples_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
        let mut files = vec![
            root.join("local.toml"),
            root.join("production.example.toml"),
        ];
        files.extend((1..=3).map(|i| root.join(format!("cluster-3/node-{i}.toml"))));
        for f in files {
            Config::load(&f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        }
    }

    #[test]
    fn listening_on_all_interfaces_needs_an_advertised_address() {
        let f = write("[node]\nid = \"n1\"\napi_addr = \"0.0.0.0:8080\"\n");
        let err = format!("{:#}", Config::load(&f.0).unwrap_err());
        assert!(err.contains("node.advertise_api_addr"), "{err}");
    }

    #[test]
    fn pretouch_is_off_by_default_and_bounded() {
        let base = "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n";
        assert_eq!(Config::load(&write(base).0).unwrap().node.pretouch_mib, 0);
        let at_max = write(&format!("{base}pretouch_mib = 1048576\n"));
        assert_eq!(Config::load(&at_max.0).unwrap().node.pretouch_mib, 1 << 20);
        let over = write(&format!("{base}pretouch_mib = 1048577\n"));
        let err = format!("{:#}", Config::load(&over.0).unwrap_err());
        assert!(
            err.contains("node.pretouch_mib must be at most 1048576"),
            "{err}"
        );
        let negative = write(&format!("{base}pretouch_mib = -1\n"));
        let err = format!("{:#}", Config::load(&negative.0).unwrap_err());
        assert!(err.contains("pretouch_mib"), "{err}");
    }

    #[test]
    fn bad_keyspace_is_rejected() {
        let f = write(
            "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[cassandra]\nkeyspace = \"a-b\"\n",
        );
        let err = format!("{:#}", Config::load(&f.0).unwrap_err());
        assert!(err.contains("cassandra.keyspace"), "{err}");
    }

    #[test]
    fn ingest_limits_out_of_range_are_rejected_naming_the_key() {
        let base = "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[ingest]\n";
        for (setting, field) in [
            ("max_event_bytes = 0", "ingest.max_event_bytes"),
            ("max_event_bytes = 524289", "ingest.max_event_bytes"),
            ("request_timeout_ms = 999", "ingest.request_timeout_ms"),
            ("request_timeout_ms = 300001", "ingest.request_timeout_ms"),
            (
                "request_timeout_ms = 1000\nlinger_ms = 1000",
                "ingest.linger_ms",
            ),
        ] {
            let f = write(&format!("{base}{setting}\n"));
            let err = format!("{:#}", Config::load(&f.0).unwrap_err());
            assert!(err.contains(field), "{setting}: {err}");
        }
        let f = write(&format!(
            "{base}max_event_bytes = 524288\nrequest_timeout_ms = 1000\nlinger_ms = 999\n"
        ));
        let cfg = Config::load(&f.0).unwrap();
        assert_eq!(
            (cfg.ingest.max_event_bytes, cfg.ingest.request_timeout_ms),
            (524288, 1000)
        );
        let f = write("[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n");
        let cfg = Config::load(&f.0).unwrap();
        assert_eq!(
            (cfg.ingest.max_event_bytes, cfg.ingest.request_timeout_ms),
            (65536, 10_000)
        );
    }

    #[test]
    fn a_flush_period_past_its_bound_is_rejected_naming_the_key() {
        let base = "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[shard]\n";
        let f = write(&format!("{base}flush_period_ms = 600001\n"));
        let err = format!("{:#}", Config::load(&f.0).unwrap_err());
        assert!(err.contains("shard.flush_period_ms"), "{err}");
        for ok in [0, 600_000] {
            let f = write(&format!("{base}flush_period_ms = {ok}\n"));
            assert_eq!(Config::load(&f.0).unwrap().shard.flush_period_ms, ok);
        }
        let f = write("[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n");
        assert_eq!(Config::load(&f.0).unwrap().shard.flush_period_ms, 5_000);
    }

    #[test]
    fn fetch_settings_out_of_range_are_rejected() {
        let base = "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n[kafka]\n";
        for (setting, field) in [
            ("fetch_min_bytes = 0", "kafka.fetch_min_bytes"),
            ("fetch_wait_max_ms = 300001", "kafka.fetch_wait_max_ms"),
        ] {
            let f = write(&format!("{base}{setting}\n"));
            let err = format!("{:#}", Config::load(&f.0).unwrap_err());
            assert!(err.contains(field), "{err}");
        }
        let f = write(&format!(
            "{base}fetch_min_bytes = 262144\nfetch_wait_max_ms = 100\n"
        ));
        let cfg = Config::load(&f.0).unwrap();
        assert_eq!(
            (cfg.kafka.fetch_min_bytes, cfg.kafka.fetch_wait_max_ms),
            (262144, 100)
        );
    }
}
