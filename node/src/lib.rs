//! Tally node: an actor-based telemetry cluster node.
//!
//! Events arrive in Kafka (`player-events` keyed by player, `channel-events` keyed by
//! channel), directly or through HTTP ingest. The node owns partitions; for each it runs
//! a shard actor that hosts the partition's players or channels as virtual actors and
//! checkpoints them to Cassandra so that every acknowledged event counts exactly once.
//!
//! The pieces, in the order data flows through them:
//! - [`api`]: HTTP (actix-web): ingest, queries, health, metrics.
//! - [`event`]: the versioned event model and its validation.
//! - [`ingest`]: group-committed Kafka transactions for ingested events; dead letters.
//! - [`partitioner`]: Kafka's murmur2 key-to-partition function, shared by everyone.
//! - [`source`]: the blocking Kafka consumer's poll loop, feeding shards with backpressure.
//! - [`shard`]: one ractor actor per partition; activation, passivation, queries.
//! - [`entity`]: players and channels as pure state machines.
//! - [`checkpoint`]: what a checkpoint writes, in which order.
//! - [`channel_log`]: channel state stored as a base and deltas.
//! - [`storage`], [`schema`]: Cassandra statements and versioned migrations.
//! - [`membership`], [`ownership`], [`routing`]: gossip, who owns which partition, and
//!   answering any query on any node (forwarding to the owner, or stale from Cassandra).
//! - [`node`]: start-up, dependency monitoring and the designed shutdown.
//! - [`config`], [`metrics`]: typed configuration; every metric in one place.

pub mod api;
pub mod channel_log;
pub mod checkpoint;
pub mod config;
pub mod entity;
pub mod event;
pub mod ingest;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod ownership;
pub mod partitioner;
pub mod resident;
pub mod routing;
pub mod schema;
pub mod shard;
pub mod source;
pub mod storage;

pub use config::Config;
pub use node::run;
