//! The node: starts every piece in order, watches the services it depends on, and shuts
//! down in a designed order.
//!
//! Start: the HTTP API first (so `/healthz` answers and `/readyz` explains what is
//! missing), then in the background Cassandra (retried with backoff), migrations, Kafka
//! topics, the ingest producer, gossip, the Kafka source and the ownership controller,
//! which starts one shard actor per owned partition. A piece that cannot start at all (the
//! Kafka source refusing its configuration) ends the process with an error instead of
//! leaving it up and never ready.
//!
//! Shutdown is one cancellation tree: `NodeState::shutdown` is cancelled once, and every
//! background task holds a child of it. Order: cancel the tree (start-up, the dependency
//! monitor and the controller stop); stop HTTP (in-flight requests finish); advertise
//! `leaving`; release every shard (revoke it from the source, final checkpoint, stop the
//! actor); advertise that nothing is owned and give gossip a few rounds to say so; close
//! the permits and stop the Kafka source; stop gossip.
//!
//! - [`kafka_admin`]: topics and partition counts.
//! - [`readiness`]: the dependency monitor behind `/readyz`.
//!
//! Not for: the HTTP handlers (see `api`) or state transitions (see `entity`).

pub mod kafka_admin;
pub mod readiness;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::cluster::membership::Membership;
use crate::cluster::ownership;
use crate::config::Config;
use crate::dead_letter::DeadLetters;
use crate::ingest::{HealthHook, Ingest};
use crate::kind::ShardKind;
use crate::retry::until_ok;
use crate::source;
use crate::state::{Core, NodeState};
use crate::store::{self, Store};

pub use kafka_admin::partition_counts;

/// Runs a node until `shutdown` resolves, then shuts down in order. Returns an error if
/// a piece of the node could not start at all.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let auth = Auth::load(&cfg.auth, cfg.has_peers())?;
    // Every start says so: a node without auth must never pass unnoticed.
    if auth.enabled() {
        info!("{}", auth.summary());
    } else {
        warn!("{}", auth.disabled_warning());
    }
    let state = NodeState::new(cfg, auth)?;
    // From now on a SIGHUP re-reads the API's TLS files and never stops the node.
    let reloads = tokio::spawn(crate::tls::reload_on_sighup(
        state.tls.clone(),
        state.shutdown.child_token(),
    ));
    let listener = std::net::TcpListener::bind(state.cfg.node.api_addr)
        .with_context(|| format!("bind api address {}", state.cfg.node.api_addr))?;
    let addr: SocketAddr = listener.local_addr().context("read bound api address")?;
    let server = crate::api::serve(listener, state.clone())?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    info!(node = %state.cfg.node.id, "api listening on {}://{addr}", state.api_scheme());

    let mut startup = tokio::spawn(start_core(state.clone(), addr));
    let monitor = tokio::spawn(readiness::monitor(state.clone()));

    tokio::pin!(shutdown);
    let mut failure = None;
    let mut startup_done = false;
    tokio::select! {
        _ = &mut shutdown => {}
        started = &mut startup => {
            startup_done = true;
            match started {
                Ok(Ok(())) => shutdown.await,
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(anyhow::anyhow!("start-up task failed: {e}")),
            }
        }
    }
    info!("shutting down: stopping background tasks and http");
    state.shutdown.cancel();
    server_handle.stop(true).await;
    let _ = server_task.await;
    if !startup_done {
        let _ = startup.await;
    }
    let _ = monitor.await;
    let _ = reloads.await;
    if let Some(core) = state.core.get() {
        stop_core(core, &state).await;
    }
    match failure {
        Some(e) => Err(e.context("node could not start")),
        None => {
            info!("shutdown complete");
            Ok(())
        }
    }
}

/// Status of a process that ran out of its shutdown grace period.
pub const EXIT_GRACE_EXPIRED: i32 = 70;

/// Bounds the shutdown that starts now: a watchdog thread ends the process with
/// [`EXIT_GRACE_EXPIRED`] if it is still running after `grace`, whatever a dependency does
/// (a blocking client close cannot hold it). Called by the binary when a signal arrives.
pub fn exit_after(grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                grace_secs = grace.as_secs(),
                "shutdown did not finish within node.shutdown_grace_secs; exiting now"
            );
            std::process::exit(EXIT_GRACE_EXPIRED);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the shutdown watchdog; shutdown is unbounded");
    }
}

/// The stop order of what start-up built (see the module doc). The controller was
/// cancelled with the tree; it is awaited first so it starts no shard behind our back.
async fn stop_core(core: &Core, state: &Arc<NodeState>) {
    let controller = core.controller.lock().expect("controller lock").take();
    if let Some(c) = controller {
        let _ = c.await;
    }
    ownership::leave(&ownership::NodeShards::new(state, core), &core.membership).await;
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
    core.membership.shutdown().await;
}

/// Builds the core: every step retries until its service answers, and gives up only when
/// the node is stopping (Ok: nothing to report) or a step can never succeed (Err).
async fn start_core(state: Arc<NodeState>, api_addr: SocketAddr) -> anyhow::Result<()> {
    let cancel = state.shutdown.child_token();
    let Some(store) = start_store(&state, &cancel).await else {
        return Ok(());
    };
    let Some((partitions, ingest)) = start_kafka(&state, &cancel).await else {
        return Ok(());
    };
    let cfg = &state.cfg;
    let advertised_api = cfg
        .node
        .advertise_api_addr
        .clone()
        .unwrap_or_else(|| api_addr.to_string());
    let Some(membership) = until_ok("start gossip membership", &cancel, || {
        Membership::start_udp(&cfg.cluster, &cfg.node.id, &advertised_api)
    })
    .await
    else {
        return Ok(());
    };
    let permits = Arc::new(Semaphore::new(cfg.shard.max_inflight_batches));
    // The dead-letter producer first: it cannot fail once the source runs.
    let consumer = DeadLetters::start(&cfg.kafka, &cfg.node.id, state.metrics.clone()).and_then(
        |dead_letters| {
            let source = source::spawn(
                &cfg.kafka,
                &format!("tally-{}", cfg.node.id),
                Vec::new(),
                cfg.shard.max_batch,
                permits.clone(),
                state.metrics.clone(),
                durable_offsets(&state),
            )
            .context("start the kafka source")?;
            Ok((source, Arc::new(dead_letters)))
        },
    );
    let (source, dead_letters) = match consumer {
        Ok(started) => started,
        Err(e) => {
            membership.shutdown().await;
            return Err(e);
        }
    };
    let core = Core::new(
        store,
        ingest,
        partitions,
        source,
        membership,
        permits,
        dead_letters,
    );
    if state.core.set(core).is_err() {
        anyhow::bail!("the node's core was started twice");
    }
    let controller = tokio::spawn(ownership::run_controller(
        state.clone(),
        state.shutdown.child_token(),
    ));
    if let Some(core) = state.core.get() {
        *core.controller.lock().expect("controller lock") = Some(controller);
    }
    info!(
        player_partitions = partitions.0,
        channel_partitions = partitions.1,
        "node ready"
    );
    Ok(())
}

/// Cassandra: a session, the migrations, the prepared statements (None: cancelled).
async fn start_store(state: &NodeState, cancel: &CancellationToken) -> Option<Arc<Store>> {
    let cfg = &state.cfg;
    let session = store::connect_until(&cfg.cassandra, cancel).await?;
    info!(contact_points = %cfg.cassandra.contact_points.join(","), "connected to cassandra");
    let _ = state.session.set(session.clone());
    until_ok("apply cassandra migrations", cancel, || {
        store::schema::migrate(&session, &cfg.cassandra)
    })
    .await?;
    state.set_health(|h| h.schema_applied = true);
    let store = until_ok("prepare cassandra statements", cancel, || {
        Store::prepare(session.clone(), &cfg.cassandra.keyspace)
    })
    .await?;
    Some(Arc::new(store))
}

/// Kafka: the topics, their partition counts, the ingest producer (None: cancelled).
async fn start_kafka(
    state: &Arc<NodeState>,
    cancel: &CancellationToken,
) -> Option<((i32, i32), Ingest)> {
    let cfg = &state.cfg;
    until_ok("create kafka topics", cancel, || {
        kafka_admin::create_topics(cfg)
    })
    .await?;
    let partitions = until_ok("read kafka topic metadata", cancel, || {
        partition_counts(&cfg.kafka)
    })
    .await?;
    // The cluster id is part of the producer's transactional id: two clusters sharing the
    // brokers may both have a `node-1`, and the second would fence the first.
    let ingest_id = format!("{}-{}", cfg.cluster.cluster_id, cfg.node.id);
    let ingest = until_ok("start ingest producer", cancel, || async {
        // A weak reference: the producer thread must not keep the node state alive.
        let health = Arc::downgrade(state);
        let hook: HealthHook = Box::new(move |failure| {
            if let Some(state) = health.upgrade() {
                state.set_health(|h| h.ingest_failure = failure);
            }
        });
        Ingest::start(
            &cfg.kafka,
            &cfg.ingest,
            &ingest_id,
            partitions,
            state.metrics.clone(),
            hook,
        )
    })
    .await?;
    Some((partitions, ingest))
}

/// The durable offsets of this node's shards by topic name, for the source to commit.
fn durable_offsets(state: &NodeState) -> Arc<dyn Fn() -> Vec<(String, i32, i64)> + Send + Sync> {
    let metrics = state.metrics.clone();
    let topics = (
        state.cfg.kafka.player_topic.clone(),
        state.cfg.kafka.channel_topic.clone(),
    );
    Arc::new(move || {
        metrics
            .durable_offsets()
            .into_iter()
            .map(|(kind, p, off)| {
                let topic = match kind {
                    ShardKind::Players => &topics.0,
                    ShardKind::Channels => &topics.1,
                };
                (topic.clone(), p, off)
            })
            .collect()
    })
}
