//! The shared vocabulary of the cluster: which kind of entity a shard hosts, a shard's
//! identity, a member's status and the names of ownership changes.
//!
//! A leaf module: it imports nothing from the crate, so every other module can use it
//! without making an import cycle. Each name that crosses a wire or a log (gossip values,
//! metric labels, JSON fields) is defined here once.
//!
//! Not for: behaviour. Types here only name things and turn them into strings and back.

use serde::Serialize;

/// Which entities a shard hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    Players,
    Channels,
}

impl ShardKind {
    /// Both kinds, players first (the order of every listing).
    pub const ALL: [ShardKind; 2] = [ShardKind::Players, ShardKind::Channels];

    /// The plural label: metric labels, JSON and `/v1/cluster`.
    pub fn label(self) -> &'static str {
        match self {
            ShardKind::Players => "players",
            ShardKind::Channels => "channels",
        }
    }

    /// One entity of this kind, in messages: `player p1: no events seen`.
    pub fn entity_name(self) -> &'static str {
        match self {
            ShardKind::Players => "player",
            ShardKind::Channels => "channel",
        }
    }

    /// The one-letter tag used in gossip (`p:0,3 c:1`) and in rendezvous hashing.
    pub fn tag(self) -> char {
        match self {
            ShardKind::Players => 'p',
            ShardKind::Channels => 'c',
        }
    }

    /// The kind of a gossip tag, if it is one.
    pub fn from_tag(tag: &str) -> Option<ShardKind> {
        ShardKind::ALL
            .into_iter()
            .find(|k| tag.len() == 1 && tag.starts_with(k.tag()))
    }

    /// The path prefix of this kind's queries: `/v1/players` or `/v1/channels`.
    pub fn api_path(self) -> &'static str {
        match self {
            ShardKind::Players => "/v1/players",
            ShardKind::Channels => "/v1/channels",
        }
    }
}

/// A shard's identity in the cluster: its kind and its partition of that kind's topic.
pub type ShardId = (ShardKind, i32);

/// What a member advertises about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Running and a candidate for ownership.
    Serving,
    /// Shutting down gracefully: its partitions are moving away.
    Leaving,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Serving => "serving",
            MemberStatus::Leaving => "leaving",
        }
    }

    /// The status a gossip value names; anything unknown counts as serving (a member
    /// running a newer version), as before this was typed.
    pub fn parse(value: &str) -> MemberStatus {
        match value {
            "leaving" => MemberStatus::Leaving,
            _ => MemberStatus::Serving,
        }
    }
}

/// What happened to a partition on this node, in `/v1/cluster`'s recent changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Acquired,
    Released,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_nothing_else_parses() {
        for kind in ShardKind::ALL {
            assert_eq!(ShardKind::from_tag(&kind.tag().to_string()), Some(kind));
        }
        assert_eq!(ShardKind::from_tag("x"), None);
        assert_eq!(ShardKind::from_tag("pp"), None);
        assert_eq!(ShardKind::from_tag(""), None);
    }

    #[test]
    fn statuses_round_trip() {
        for s in [MemberStatus::Serving, MemberStatus::Leaving] {
            assert_eq!(MemberStatus::parse(s.as_str()), s);
        }
        assert_eq!(MemberStatus::parse("something-new"), MemberStatus::Serving);
    }

    #[test]
    fn labels_match_the_serialized_names() {
        for kind in ShardKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.label())
            );
        }
        assert_eq!(
            serde_json::to_value(ChangeKind::Acquired).unwrap(),
            "acquired"
        );
    }
}
