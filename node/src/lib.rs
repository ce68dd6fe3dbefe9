//! Tally node: an actor-based telemetry cluster node.
//!
//! Events arrive in Kafka (`player-events` keyed by player, `channel-events` keyed by
//! channel), directly or through HTTP ingest. The node owns partitions; for each it runs
//! a shard actor that hosts the partition's players or channels as virtual actors and
//! checkpoints them to Cassandra so that every acknowledged event counts exactly once.
//!
//! The pieces, in the order data flows through them:
//! - `api`: HTTP (actix-web): ingest, queries, health, metrics; who may call which route.
//! - [`auth`]: API keys with scopes, the cluster secret that signs calls between nodes,
//!   per-key ingest rate limits.
//! - [`event`]: the versioned event model and its validation.
//! - [`ingest`]: group-committed Kafka transactions for ingested events; dead letters;
//!   `acknowledged`: the events it acknowledged recently, to answer retries as such.
//! - [`dead_letter`]: the consumer's dead letters (records read from Kafka it skips).
//! - [`partitioner`]: Kafka's murmur2 key-to-partition function, shared by everyone.
//! - [`source`]: the blocking Kafka consumer's poll loop, feeding shards with backpressure.
//! - [`shard`]: one ractor actor per partition, generic over the hosted kind of entity:
//!   record batches, activation and apply, checkpointing and passivation, queries.
//! - [`entity`]: players and channels as pure state machines.
//! - [`resident`]: the slab of resident entities (and of their history buckets), found by
//!   key and prefetched ahead of the apply loop.
//! - [`dirty`]: what changed since it was last written, oldest first, for checkpoints.
//! - [`store`]: Cassandra statements, migrations, the channel log and the checkpoint write
//!   order.
//! - `cluster`: gossip membership, partition ownership, and routing any query anywhere.
//! - [`push`]: subscriptions (WebSocket, SSE) fed from the owner's shard, relayed by any
//!   node, following ownership.
//! - [`entity_path`]: where a player or channel is queried, its id percent-encoded.
//! - [`node`]: start-up order, the readiness monitor, Kafka administration, shutdown.
//! - `state`: the state the API, the controller and the background tasks share.
//! - [`kind`]: the shared vocabulary (shard kinds and ids, member status, change names).
//! - [`config`], [`metrics`], [`telemetry`], `retry`: typed configuration; every metric
//!   in one place; OpenTelemetry traces along an event's path; the one backoff policy.
//! - [`memory`]: pretouching the process's memory at start (`node.pretouch_mib`).
//! - `tls`: HTTPS for the API and forwarded queries (reloaded on SIGHUP), TLS to Cassandra.
//!
//! # Policies
//!
//! **Errors.** Typed errors (`thiserror`) where a caller branches on the kind of failure:
//! [`shard::QueryError`], [`shard::CheckpointError`], [`ingest::IngestError`],
//! `cluster::routing::RouteError`, and `api::ApiError`, the one mapping from error to
//! HTTP status. Everywhere else `anyhow` with `.context("verb object")`. An error is logged
//! where it is handled, not where it is passed up. Input from the network or disk is never
//! unwrapped; `expect` is kept for invariants of our own (a poisoned lock, a dirty key that
//! must be resident) and says which.
//!
//! **Retries.** Every wait for a dependency goes through `retry::Backoff` (capped
//! exponential) or `retry::until_ok`, which also stops when the node shuts down.
//!
//! **Shutdown.** One cancellation tree: `state::NodeState::shutdown` is cancelled once;
//! start-up, the readiness monitor and the ownership controller hold children of it. The
//! order of what follows (HTTP, shards, the Kafka source, gossip) is in [`node`]. A piece
//! that cannot start at all makes [`run`] return an error, and the binary exit non-zero.
//!
//! **Secrets.** API keys are known by their SHA-256 only; the cluster secret lives in
//! `auth::peer::PeerSecret`, whose `Debug` shows nothing, and never in [`Config`]. Neither is
//! ever logged, nor put in an error message; `node/tests/auth.rs` greps the logs for them.
//!
//! **Log volume.** A line per record or per rejected event would flood the log under bad
//! input: such warnings are rate-limited (`log_limit`), while their counters in
//! [`metrics`] stay exact.

mod acknowledged;
mod api;
pub mod auth;
mod cluster;
pub mod config;
pub mod dead_letter;
pub mod dirty;
pub mod entity;
pub mod entity_path;
pub mod event;
#[cfg(test)]
mod fuzz;
pub mod history;
pub mod ingest;
pub mod kind;
mod log_limit;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod partitioner;
pub mod push;
pub mod resident;
mod retry;
pub mod shard;
pub mod source;
mod state;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use node::run;
