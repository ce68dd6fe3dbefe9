//! The node's shared state: what the API handlers, the ownership controller and the
//! background tasks all read.
//!
//! [`NodeState`] exists from the first moment (config, metrics, health, the shutdown
//! token); [`Core`] exists once start-up has reached every service (Cassandra, Kafka,
//! gossip). A leaf for the modules above it: `api`, `cluster` and `node` import this, and
//! this imports none of them, so the wiring has no import cycle.
//!
//! Not for: starting or stopping anything (see `node`), or deciding ownership (see
//! `cluster::ownership`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::ActorRef;
use scylla::client::session::Session;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::acknowledged::Acknowledged;
use crate::auth::Auth;
use crate::cluster::membership::Membership;
use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::history::cache::HistoryCache;
use crate::ingest::Ingest;
use crate::kind::{ChangeKind, ShardId, ShardKind};
use crate::metrics::Metrics;
use crate::shard::{ShardMsg, ShardStats};
use crate::source::SourceHandle;
use crate::store::Store;
use crate::tls::ApiTls;

/// Acknowledged events a node remembers at most (about 70 bytes each).
const ACKNOWLEDGED_KEPT: usize = 262_144;

/// Ownership changes kept for `/v1/cluster`.
const RECENT_CHANGES: usize = 64;

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Each missing dependency with the reason, e.g. `cassandra: ... 127.0.0.1:9042`.
    pub missing: Vec<String>,
}

/// One entry of the recent ownership history shown by `/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct OwnershipChange {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: ShardKind,
    pub partition: i32,
    pub change: ChangeKind,
    /// Offset the shard started from, or the durable offset it released at.
    pub offset: i64,
    /// For acquisitions after a handover timeout or a failure: who advertised it before.
    pub note: String,
}

impl OwnershipChange {
    /// A change that happens now.
    pub fn now(shard: ShardId, change: ChangeKind, offset: i64, note: String) -> Self {
        OwnershipChange {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: shard.0,
            partition: shard.1,
            change,
            offset,
            note,
        }
    }
}

/// The latest result of each dependency check.
#[derive(Debug, Default)]
pub struct HealthStatus {
    pub kafka: Option<Result<(), String>>,
    pub cassandra: Option<Result<(), String>>,
    pub schema_applied: bool,
    pub shards_started: bool,
    /// Why the ingest producer cannot commit: a group of requests failed without any of it
    /// committing (never a request over ingest's limits: those do not reach Kafka). Set and
    /// cleared by the producer's health hook (`ingest::HealthHook`): cleared when a
    /// transaction commits again or `ingest::FAILURE_HOLD` passes without another failure;
    /// a fenced producer keeps it until the node restarts.
    pub ingest_failure: Option<String>,
}

/// Everything that exists once startup has finished.
pub struct Core {
    pub store: Arc<Store>,
    pub ingest: Ingest,
    pub player_partitions: i32,
    pub channel_partitions: i32,
    /// The shards this node runs now; changed by the ownership controller only.
    shards: RwLock<HashMap<ShardId, ActorRef<ShardMsg>>>,
    pub source: SourceHandle,
    pub membership: Membership,
    /// Batches in flight between the source and the shards (backpressure); closed at
    /// shutdown so the poll loop stops waiting.
    pub permits: Arc<Semaphore>,
    /// The ownership controller's task, awaited at shutdown.
    pub controller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where shards send the records they skip.
    pub dead_letters: Arc<DeadLetters>,
}

impl Core {
    pub fn new(
        store: Arc<Store>,
        ingest: Ingest,
        partitions: (i32, i32),
        source: SourceHandle,
        membership: Membership,
        permits: Arc<Semaphore>,
        dead_letters: Arc<DeadLetters>,
    ) -> Core {
        Core {
            store,
            ingest,
            player_partitions: partitions.0,
            channel_partitions: partitions.1,
            shards: RwLock::new(HashMap::new()),
            source,
            membership,
            permits,
            controller: Mutex::new(None),
            dead_letters,
        }
    }

    pub fn shard(&self, id: ShardId) -> Option<ActorRef<ShardMsg>> {
        self.shards.read().expect("shards lock").get(&id).cloned()
    }

    pub fn shard_ids(&self) -> BTreeSet<ShardId> {
        self.shards
            .read()
            .expect("shards lock")
            .keys()
            .copied()
            .collect()
    }

    pub fn shards_of(&self, kind: ShardKind) -> Vec<ActorRef<ShardMsg>> {
        let shards = self.shards.read().expect("shards lock");
        shards
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn insert_shard(&self, id: ShardId, actor: ActorRef<ShardMsg>) {
        self.shards.write().expect("shards lock").insert(id, actor);
    }

    pub fn remove_shard(&self, id: ShardId) -> Option<ActorRef<ShardMsg>> {
        self.shards.write().expect("shards lock").remove(&id)
    }

    /// Partition count of a kind's topic.
    pub fn partitions(&self, kind: ShardKind) -> i32 {
        match kind {
            ShardKind::Players => self.player_partitions,
            ShardKind::Channels => self.channel_partitions,
        }
    }
}

/// State shared by the API handlers and the background tasks.
pub struct NodeState {
    pub cfg: Config,
    /// The API keys and the cluster secret, loaded at start.
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub core: OnceLock<Core>,
    health: Mutex<HealthStatus>,
    /// The Cassandra session, once connected (the dependency monitor pings it).
    pub session: OnceLock<Arc<Session>>,
    pub started: Instant,
    changes: Mutex<VecDeque<OwnershipChange>>,
    /// The main runtime: outgoing HTTP (forwarded queries) runs here, not on actix workers.
    pub runtime: tokio::runtime::Handle,
    /// Forwards queries to other nodes: over HTTPS, trusting `node.tls.ca_file`, when the
    /// API serves HTTPS.
    pub http: reqwest::Client,
    /// Follows other nodes' push streams: as `http`, with no limit on a response's length
    /// (a stream lasts as long as its subscription), only on the silence within it.
    pub stream_http: reqwest::Client,
    /// The API's certificate and CAs with `[node.tls]`, re-read on SIGHUP.
    pub tls: Option<Arc<ApiTls>>,
    /// Events this node's ingest acknowledged recently (answering retries as such).
    pub acknowledged: Acknowledged,
    /// Stored history buckets of the partitions this node owns, for repeated queries.
    pub history_cache: Arc<HistoryCache>,
    /// The root of the shutdown tree: cancelled once, when the node starts to stop; every
    /// background task (start-up, the dependency monitor, the controller) holds a child.
    pub shutdown: CancellationToken,
}

impl NodeState {
    pub fn new(cfg: Config, auth: Auth) -> anyhow::Result<Arc<NodeState>> {
        let tls = cfg.node.tls.as_ref().map(ApiTls::load).transpose()?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        // A push stream sends a keep-alive every 15 s: three missed is a dead stream.
        let mut stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(45));
        if let Some(tls) = &tls {
            http = http.use_preconfigured_tls(tls.client_config()?);
            stream_http = stream_http.use_preconfigured_tls(tls.client_config()?);
        }
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| anyhow::anyhow!("build http client: {e}"))
        };
        let (http, stream_http) = (build(http)?, build(stream_http)?);

        let acknowledged = Acknowledged::new(
            Duration::from_secs(cfg.shard.dedupe_window_secs),
            ACKNOWLEDGED_KEPT,
        );
        let history_cache = Arc::new(cfg.history.cache());
        Ok(Arc::new(NodeState {
            history_cache,
            cfg,
            auth,
            metrics: Arc::new(Metrics::default()),
            core: OnceLock::new(),
            health: Mutex::new(HealthStatus::default()),
            session: OnceLock::new(),
            started: Instant::now(),
            changes: Mutex::new(VecDeque::new()),
            runtime: tokio::runtime::Handle::current(),
            http,
            stream_http,
            tls,
            acknowledged,
            shutdown: CancellationToken::new(),
        }))
    }

    /// The scheme of this node's API, and so of every other node's: `https` with
    /// `[node.tls]`.
    pub fn api_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn topic(&self, kind: ShardKind) -> &str {
        match kind {
            ShardKind::Players => &self.cfg.kafka.player_topic,
            ShardKind::Channels => &self.cfg.kafka.channel_topic,
        }
    }

    pub fn record_change(&self, change: OwnershipChange) {
        self.metrics
            .add_ownership_change(change.kind, change.change);
        let mut changes = self.changes.lock().expect("changes lock");
        if changes.len() == RECENT_CHANGES {
            changes.pop_front();
        }
        changes.push_back(change);
    }

    pub fn recent_changes(&self) -> Vec<OwnershipChange> {
        self.changes
            .lock()
            .expect("changes lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn mark_shards_started(&self) {
        self.set_health(|h| h.shards_started = true);
    }

    pub fn readiness(&self) -> Readiness {
        let h = self.health.lock().expect("health lock");
        let mut missing = Vec::new();
        match &h.kafka {
            Some(Ok(())) => {}
            Some(Err(e)) => missing.push(format!("kafka: {e}")),
            None => missing.push(format!(
                "kafka: not yet reached at {}",
                self.cfg.kafka.brokers
            )),
        }
        match &h.cassandra {
            Some(Ok(())) => {}
            Some(Err(e)) => missing.push(format!("cassandra: {e}")),
            None => missing.push(format!(
                "cassandra: not yet reached at {}",
                self.cfg.cassandra.contact_points.join(",")
            )),
        }
        if !h.schema_applied {
            missing.push("schema: migrations not yet applied".into());
        }
        if !h.shards_started {
            missing.push("shards: not yet started".into());
        }
        if let Some(e) = &h.ingest_failure {
            missing.push(format!("ingest: {e}"));
        }
        Readiness {
            ready: missing.is_empty(),
            missing,
        }
    }

    pub fn set_health(&self, f: impl FnOnce(&mut HealthStatus)) {
        f(&mut self.health.lock().expect("health lock"));
        self.metrics.set_ready(self.readiness().ready);
    }

    /// Stats of every local shard.
    pub async fn shard_stats(&self) -> Vec<ShardStats> {
        let Some(core) = self.core.get() else {
            return Vec::new();
        };
        let shards: Vec<ActorRef<ShardMsg>> = core
            .shards
            .read()
            .expect("shards lock")
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for shard in &shards {
            if let Ok(s) = ractor::call_t!(shard, ShardMsg::Stats, 5_000) {
                out.push(s);
            }
        }
        out.sort_by_key(|s| (s.kind == ShardKind::Channels, s.partition));
        out
    }
}
