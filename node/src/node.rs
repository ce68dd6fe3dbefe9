//! The node: starts every piece in order, watches the services it depends on, and shuts
//! down in a designed order.
//!
//! Start: the HTTP API first (so `/healthz` answers and `/readyz` explains what is
//! missing), then in the background Cassandra (retried with backoff), migrations, Kafka
//! topics, the ingest producer, one shard actor per partition, and the Kafka source.
//! Shutdown: stop HTTP (in-flight requests finish), stop polling Kafka, wait for batches
//! in flight, write a final checkpoint of every shard, stop the actors.
//!
//! Not for: the HTTP handlers (see `api`) or state transitions (see `entity`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ractor::ActorRef;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use scylla::client::session::Session;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::ingest::Ingest;
use crate::membership::{Membership, ShardId};
use crate::metrics::Metrics;
use crate::ownership::{self, OwnershipChange};
use crate::shard::{ShardKind, ShardMsg, ShardStats};
use crate::source::{self, SourceHandle};
use crate::storage::{self, Store};

/// Ownership changes kept for `/v1/cluster`.
const RECENT_CHANGES: usize = 64;

/// What `/readyz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Each missing dependency with the reason, e.g. `cassandra: ... 127.0.0.1:9042`.
    pub missing: Vec<String>,
}

/// The latest result of each dependency check.
#[derive(Debug, Default)]
struct HealthStatus {
    kafka: Option<Result<(), String>>,
    cassandra: Option<Result<(), String>>,
    schema_applied: bool,
    shards_started: bool,
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
    permits: Arc<Semaphore>,
    /// Tells the ownership controller to stop (shutdown).
    controller_stop: tokio::sync::watch::Sender<bool>,
    controller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Core {
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

    pub(crate) fn insert_shard(&self, id: ShardId, actor: ActorRef<ShardMsg>) {
        self.shards.write().expect("shards lock").insert(id, actor);
    }

    pub(crate) fn remove_shard(&self, id: ShardId) -> Option<ActorRef<ShardMsg>> {
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
    pub metrics: Arc<Metrics>,
    pub core: OnceLock<Core>,
    health: Mutex<HealthStatus>,
    session: OnceLock<Arc<Session>>,
    pub started: Instant,
    changes: Mutex<VecDeque<OwnershipChange>>,
    /// The main runtime: outgoing HTTP (forwarded queries) runs here, not on actix workers.
    pub runtime: tokio::runtime::Handle,
    pub http: reqwest::Client,
}

impl NodeState {
    pub fn new(cfg: Config) -> Arc<NodeState> {
        Arc::new(NodeState {
            cfg,
            metrics: Arc::new(Metrics::default()),
            core: OnceLock::new(),
            health: Mutex::new(HealthStatus::default()),
            session: OnceLock::new(),
            started: Instant::now(),
            changes: Mutex::new(VecDeque::new()),
            runtime: tokio::runtime::Handle::current(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("build http client"),
        })
    }

    pub fn topic(&self, kind: ShardKind) -> &str {
        match kind {
            ShardKind::Players => &self.cfg.kafka.player_topic,
            ShardKind::Channels => &self.cfg.kafka.channel_topic,
        }
    }

    pub fn record_change(&self, change: OwnershipChange) {
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
        Readiness {
            ready: missing.is_empty(),
            missing,
        }
    }

    fn set_health(&self, f: impl FnOnce(&mut HealthStatus)) {
        f(&mut self.health.lock().expect("health lock"));
    }

    /// Stats of every local shard.
    pub async fn shard_stats(&self) -> Vec<ShardStats> {
        let Some(core) = self.core.get() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let shards: Vec<ActorRef<ShardMsg>> = core
            .shards
            .read()
            .expect("shards lock")
            .values()
            .cloned()
            .collect();
        for shard in &shards {
            if let Ok(s) = ractor::call_t!(shard, ShardMsg::Stats, 5_000) {
                out.push(s);
            }
        }
        out.sort_by_key(|s| (s.kind == ShardKind::Channels, s.partition));
        out
    }
}

/// Runs a node until `shutdown` resolves, then shuts down in order.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let state = NodeState::new(cfg);
    let listener = std::net::TcpListener::bind(state.cfg.node.api_addr)
        .with_context(|| format!("bind api address {}", state.cfg.node.api_addr))?;
    let addr: SocketAddr = listener.local_addr().context("read bound api address")?;
    let server = crate::api::serve(listener, state.clone())?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    info!(node = %state.cfg.node.id, "api listening on http://{addr}");

    let startup = tokio::spawn(start_core(state.clone(), addr));
    let monitor = tokio::spawn(monitor_dependencies(state.clone()));

    shutdown.await;
    info!("shutting down: stopping http");
    server_handle.stop(true).await;
    let _ = server_task.await;
    startup.abort();
    monitor.abort();
    if let Some(core) = state.core.get() {
        stop_core(core, &state).await;
    }
    info!("shutdown complete");
    Ok(())
}

/// Stop order: ownership controller; announce the leave; for every shard: revoke it from
/// the source, wait for its batches, write its final checkpoint, stop it; advertise that
/// nothing is owned any more so peers take over at once; stop polling and gossiping.
async fn stop_core(core: &Core, state: &Arc<NodeState>) {
    let _ = core.controller_stop.send(true);
    let controller = core.controller.lock().expect("controller lock").take();
    if let Some(c) = controller {
        let _ = c.await;
    }
    core.membership.set_status("leaving").await;
    let shards: Vec<ShardId> = core.shard_ids().into_iter().collect();
    futures::future::join_all(
        shards
            .into_iter()
            .map(|s| ownership::release(state, core, s, "shutdown")),
    )
    .await;
    core.membership.advertise_owned(&BTreeSet::new()).await;
    // Give gossip a few rounds to tell the peers before going silent.
    tokio::time::sleep(Duration::from_millis(
        state.cfg.cluster.gossip_interval_ms * 5,
    ))
    .await;
    core.permits.close();
    // Joining the poll thread blocks: do it off the async workers.
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(core) = st.core.get() {
            core.source.stop();
        }
    })
    .await;
}

/// Retries `f` with capped exponential backoff until it succeeds, logging each failure.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "{what} failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn start_core(state: Arc<NodeState>, api_addr: SocketAddr) {
    let cfg = &state.cfg;
    let session = storage::connect(&cfg.cassandra, None)
        .await
        .expect("connect retries forever");
    info!(contact_points = %cfg.cassandra.contact_points.join(","), "connected to cassandra");
    let _ = state.session.set(session.clone());
    retry("apply cassandra migrations", || {
        crate::schema::migrate(&session, &cfg.cassandra)
    })
    .await;
    state.set_health(|h| h.schema_applied = true);
    let store = Arc::new(
        retry("prepare cassandra statements", || {
            Store::prepare(session.clone(), &cfg.cassandra.keyspace)
        })
        .await,
    );
    retry("create kafka topics", || create_topics(cfg)).await;
    let (player_partitions, channel_partitions) =
        retry("read kafka topic metadata", || partition_counts(&cfg.kafka)).await;
    let ingest = retry("start ingest producer", || async {
        Ingest::start(
            &cfg.kafka,
            &cfg.ingest,
            &cfg.node.id,
            (player_partitions, channel_partitions),
            state.metrics.clone(),
        )
    })
    .await;

    let advertised_api = cfg
        .node
        .advertise_api_addr
        .clone()
        .unwrap_or_else(|| api_addr.to_string());
    let membership = retry("start gossip membership", || {
        Membership::start(&cfg.cluster, &cfg.node.id, &advertised_api)
    })
    .await;
    let permits = Arc::new(Semaphore::new(cfg.shard.max_inflight_batches));
    let metrics = state.metrics.clone();
    let topics = (
        cfg.kafka.player_topic.clone(),
        cfg.kafka.channel_topic.clone(),
    );
    let durable = Arc::new(move || {
        metrics
            .durable_offsets()
            .into_iter()
            .map(|(kind, p, off)| {
                let topic = if kind == "players" {
                    &topics.0
                } else {
                    &topics.1
                };
                (topic.clone(), p, off)
            })
            .collect()
    });
    let source = match source::spawn(
        &cfg.kafka,
        &format!("tally-{}", cfg.node.id),
        Vec::new(),
        cfg.shard.max_batch,
        permits.clone(),
        state.metrics.clone(),
        durable,
    ) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %format!("{e:#}"), "kafka source failed to start");
            return;
        }
    };
    let (controller_stop, stop_rx) = tokio::sync::watch::channel(false);
    let _ = state.core.set(Core {
        store,
        ingest,
        player_partitions,
        channel_partitions,
        shards: RwLock::new(HashMap::new()),
        source,
        membership,
        permits,
        controller_stop,
        controller: Mutex::new(None),
    });
    let controller = tokio::spawn(ownership::run_controller(state.clone(), stop_rx));
    if let Some(core) = state.core.get() {
        *core.controller.lock().expect("controller lock") = Some(controller);
    }
    info!(player_partitions, channel_partitions, "node ready");
}

async fn create_topics(cfg: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .context("create kafka admin client")?;
    let topics: Vec<NewTopic> = [
        &cfg.kafka.player_topic,
        &cfg.kafka.channel_topic,
        &cfg.kafka.dlq_topic,
    ]
    .into_iter()
    .map(|name| {
        NewTopic::new(
            name,
            cfg.kafka.partitions,
            TopicReplication::Fixed(cfg.kafka.replication_factor),
        )
    })
    .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .with_context(|| format!("create topics on kafka at {}", cfg.kafka.brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Partition counts of the player and channel topics, from broker metadata.
pub async fn partition_counts(kafka: &crate::config::KafkaConfig) -> anyhow::Result<(i32, i32)> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .create()
            .context("create kafka metadata client")?;
        let count = |topic: &str| -> anyhow::Result<i32> {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .with_context(|| format!("fetch metadata of {topic} from {}", kafka.brokers))?;
            let n = md
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32);
            anyhow::ensure!(n > 0, "topic {topic} has no partitions yet");
            Ok(n)
        };
        Ok((count(&kafka.player_topic)?, count(&kafka.channel_topic)?))
    })
    .await
    .context("metadata task")?
}

/// Checks Kafka and Cassandra every second and records the result for `/readyz`.
async fn monitor_dependencies(state: Arc<NodeState>) {
    let brokers = state.cfg.kafka.brokers.clone();
    let consumer: Option<Arc<BaseConsumer>> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .map(Arc::new)
        .map_err(|e| error!(error = %e, "cannot create kafka health client"))
        .ok();
    let contact = state.cfg.cassandra.contact_points.join(",");
    let mut was_ready = None;
    loop {
        let kafka = match &consumer {
            None => Err(format!("no client for {brokers}")),
            Some(c) => {
                let c = c.clone();
                let brokers = brokers.clone();
                tokio::task::spawn_blocking(move || {
                    c.fetch_metadata(None, Duration::from_secs(2))
                        .map(|_| ())
                        .map_err(|e| format!("unreachable at {brokers}: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        let cassandra = match state.session.get() {
            None => Err(format!("not connected to {contact}")),
            Some(s) => match tokio::time::timeout(
                Duration::from_secs(2),
                s.query_unpaged("SELECT release_version FROM system.local", ()),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("unreachable at {contact}: {e}")),
                Err(_) => Err(format!("no answer from {contact} within 2 s")),
            },
        };
        state.set_health(|h| {
            h.kafka = Some(kafka);
            h.cassandra = Some(cassandra);
        });
        let r = state.readiness();
        if was_ready != Some(r.ready) {
            if r.ready {
                info!("ready");
            } else {
                warn!(missing = ?r.missing, "not ready");
            }
            was_ready = Some(r.ready);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
