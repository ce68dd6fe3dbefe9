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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ractor::{Actor, ActorRef};
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
use crate::metrics::Metrics;
use crate::shard::{Shard, ShardArgs, ShardKind, ShardMsg, ShardStats};
use crate::source::{self, Assignment, SourceHandle};
use crate::storage::{self, Store};

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
    pub shards: HashMap<(ShardKind, i32), ActorRef<ShardMsg>>,
    source: Mutex<Option<SourceHandle>>,
    permits: Arc<Semaphore>,
    ingest_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// State shared by the API handlers and the background tasks.
pub struct NodeState {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub core: OnceLock<Core>,
    health: Mutex<HealthStatus>,
    session: OnceLock<Arc<Session>>,
    pub started: Instant,
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
        })
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
        for shard in core.shards.values() {
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

    let startup = tokio::spawn(start_core(state.clone()));
    let monitor = tokio::spawn(monitor_dependencies(state.clone()));

    shutdown.await;
    info!("shutting down: stopping http");
    server_handle.stop(true).await;
    let _ = server_task.await;
    startup.abort();
    monitor.abort();
    if let Some(core) = state.core.get() {
        stop_core(core).await;
    }
    info!("shutdown complete");
    Ok(())
}

/// Stop order: source, batches in flight, final checkpoints, actors, ingest.
async fn stop_core(core: &Core) {
    let source = core.source.lock().expect("source lock").take();
    if let Some(source) = source {
        let _ = tokio::task::spawn_blocking(move || source.stop()).await;
    }
    let total = core.permits.available_permits() as u32;
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        // Wait until every batch handed out has been applied.
        loop {
            if core.permits.available_permits() as u32 >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    core.permits.close();
    let flushes = core.shards.iter().map(|(key, shard)| async move {
        match ractor::call_t!(shard, ShardMsg::Flush, 60_000) {
            Ok(Ok(p)) => info!(kind = ?key.0, partition = key.1, resume_offset = p.resume_offset, "final checkpoint written"),
            Ok(Err(e)) => error!(kind = ?key.0, partition = key.1, error = %e, "final checkpoint failed"),
            Err(e) => error!(kind = ?key.0, partition = key.1, error = %e, "final checkpoint did not answer"),
        }
        shard.stop(None);
    });
    futures::future::join_all(flushes).await;
    if let Some(t) = core.ingest_thread.lock().expect("ingest lock").take() {
        // The producer thread ends when the last Ingest handle is dropped; it has nothing
        // uncommitted because every request waited for its transaction.
        drop(t);
    }
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

async fn start_core(state: Arc<NodeState>) {
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
        retry("read kafka topic metadata", || partition_counts(cfg)).await;
    let (ingest, ingest_thread) = retry("start ingest producer", || async {
        Ingest::start(
            &cfg.kafka,
            &cfg.ingest,
            &cfg.node.id,
            (player_partitions, channel_partitions),
            state.metrics.clone(),
        )
    })
    .await;

    let mut shards = HashMap::new();
    let mut assignments = Vec::new();
    for (kind, topic, count) in [
        (
            ShardKind::Players,
            &cfg.kafka.player_topic,
            player_partitions,
        ),
        (
            ShardKind::Channels,
            &cfg.kafka.channel_topic,
            channel_partitions,
        ),
    ] {
        for partition in 0..count {
            let progress = retry("read shard progress", || {
                store.read_progress(topic, partition)
            })
            .await;
            let args = ShardArgs {
                kind,
                topic: topic.clone(),
                partition,
                store: store.clone(),
                cfg: cfg.shard.clone(),
                owner: cfg.node.id.clone(),
                progress,
                metrics: state.metrics.clone(),
            };
            let (shard, _) = match Actor::spawn(None, Shard, args).await {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, %topic, partition, "shard failed to start");
                    return;
                }
            };
            assignments.push(Assignment {
                topic: topic.clone(),
                partition,
                start_offset: progress.map_or(0, |p| p.resume_offset),
                shard: shard.clone(),
            });
            shards.insert((kind, partition), shard);
        }
    }
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
        assignments,
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
    let _ = state.core.set(Core {
        store,
        ingest,
        player_partitions,
        channel_partitions,
        shards,
        source: Mutex::new(Some(source)),
        permits,
        ingest_thread: Mutex::new(Some(ingest_thread)),
    });
    state.set_health(|h| h.shards_started = true);
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
async fn partition_counts(cfg: &Config) -> anyhow::Result<(i32, i32)> {
    let kafka = cfg.kafka.clone();
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
