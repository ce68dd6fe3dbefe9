//! The cluster: who is alive, who owns which partition, and how any node answers any
//! query.
//!
//! - [`membership`]: chitchat gossip over a transport it is handed (UDP in a node,
//!   chitchat's in-memory `ChannelTransport` in tests); a leaf that knows nothing of shards.
//! - [`ownership`]: the controller that makes this node's shards match the rendezvous
//!   owners over the live, serving members; checkpointed handover; takeover after failure.
//! - [`routing`]: a query goes to the local shard, is forwarded to the owner, or is
//!   answered from Cassandra (stale); cluster-wide top-N.
//! - [`view`]: the cluster view of `GET /v1/cluster` and the `cluster` subscription.
//! - `sandbox` (tests only): three memberships over the in-memory transport, each with the
//!   real controller over recorded shards: handover, failover and cut links in seconds.
//!
//! Not for: applying records (see `shard`) or the HTTP surface (see `api`).

pub mod membership;
pub mod ownership;
pub mod routing;
#[cfg(test)]
mod sandbox;
pub mod view;
