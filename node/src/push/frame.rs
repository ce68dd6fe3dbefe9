//! What a subscription receives: the state a source publishes, the frame a client gets,
//! and the rule that keeps a subscription's offsets from going backwards.
//!
//! A frame is rendered once, for every client of the feed, as an update; its snapshot form
//! (only `type` differs) is made from that when a new client needs it. States travel as
//! JSON text, rendered once by their source, never as JSON trees.
//!
//! Not for: where states come from (see `relay`) or how they are sent (see `api::push`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use serde::Serialize;

pub use crate::shard::EntityState;

/// Where a frame's offsets come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Offsets {
    /// One entity: its own offset and its partition's.
    Entity {
        offset: i64,
        partition: i32,
        partition_offset: i64,
    },
    /// A view over partitions (top-N, cluster): the next offset of each, `kind/partition`.
    Partitions(BTreeMap<String, i64>),
}

impl Offsets {
    /// Whether a frame with these offsets may follow one with `last`: no offset lower.
    /// A partition missing from `self` is not a step back (nobody serves it right now).
    pub fn not_behind(&self, last: &Offsets) -> bool {
        match (self, last) {
            (
                Offsets::Entity {
                    offset,
                    partition_offset,
                    ..
                },
                Offsets::Entity {
                    offset: last_offset,
                    partition_offset: last_partition,
                    ..
                },
            ) => offset >= last_offset && partition_offset >= last_partition,
            (Offsets::Partitions(now), Offsets::Partitions(last)) => {
                now.iter().all(|(p, o)| last.get(p).is_none_or(|l| o >= l))
            }
            _ => true,
        }
    }

    /// The highest offset of each partition in `self` and `last`: what a later frame must
    /// not go below.
    pub fn merged(&self, last: Option<&Offsets>) -> Offsets {
        match (self, last) {
            (Offsets::Partitions(now), Some(Offsets::Partitions(last))) => {
                let mut all = last.clone();
                for (p, o) in now {
                    let e = all.entry(p.clone()).or_insert(*o);
                    *e = (*e).max(*o);
                }
                Offsets::Partitions(all)
            }
            _ => self.clone(),
        }
    }
}

/// One frame of a subscription, rendered once for every client.
///
/// The state is kept only as JSON text, the end of `update`: a frame is compared, relayed
/// and sent without building a JSON tree.
#[derive(Debug)]
pub struct Frame {
    pub offsets: Offsets,
    pub gap: bool,
    pub served_by: String,
    /// `{"type": "update", ..., "data": ...}`.
    pub update: ByteString,
    /// Where the `data` value begins in `update` (it is the last field).
    data_at: usize,
    /// When it was rendered.
    pub made: Instant,
}

/// How a rendered frame begins (`type` is the first field), in each form.
const UPDATE_PREFIX: &str = r#"{"type":"update""#;
const SNAPSHOT_PREFIX: &str = r#"{"type":"snapshot""#;
/// The JSON text of no state.
pub const NULL: &str = "null";

/// Every field of a frame but `data`, which is appended as text.
#[derive(Serialize)]
struct Rendered<'a> {
    r#type: &'a str,
    subscription: &'a str,
    served_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets: Option<&'a BTreeMap<String, i64>>,
    gap: bool,
}

impl Frame {
    /// The frame of `data`, JSON text its source rendered (and so known to be valid).
    pub fn new(
        subscription: &str,
        data: &str,
        offsets: Offsets,
        gap: bool,
        served_by: String,
    ) -> Arc<Frame> {
        let (partition, offset, partition_offset, map) = match &offsets {
            Offsets::Entity {
                offset,
                partition,
                partition_offset,
            } => (
                Some(*partition),
                Some(*offset),
                Some(*partition_offset),
                None,
            ),
            Offsets::Partitions(map) => (None, None, None, Some(map)),
        };
        let r = Rendered {
            r#type: "update",
            subscription,
            served_by: &served_by,
            partition,
            offset,
            partition_offset,
            offsets: map,
            gap,
        };
        // Serializing strings, numbers and a map with string keys cannot fail.
        let mut text = serde_json::to_string(&r).unwrap_or_default();
        text.pop(); // the closing brace
        text.push_str(r#","data":"#);
        let data_at = text.len();
        text.push_str(data);
        text.push('}');
        Arc::new(Frame {
            offsets,
            gap,
            served_by,
            update: ByteString::from(text),
            data_at,
            made: Instant::now(),
        })
    }

    /// The state this frame shows, as JSON text (`null`: none yet).
    pub fn data(&self) -> &str {
        &self.update[self.data_at..self.update.len() - 1]
    }

    /// The frame as a new client's first: `"type": "snapshot"`. Made when asked, not kept:
    /// a frame lives until the next replaces it, and most are never anyone's first.
    pub fn snapshot(&self) -> ByteString {
        let rest = self.update.strip_prefix(UPDATE_PREFIX).unwrap_or_default();
        ByteString::from(format!("{SNAPSHOT_PREFIX}{rest}"))
    }
}

/// What a feed publishes next, given what it published last: the frame to publish, or
/// None (nothing new, or a step back to hold back until the source catches up).
///
/// `data` is the state's JSON text; two states are the same when their texts are (a source
/// renders the same state the same way).
///
/// `gap_pending`: the source was lost and found again since `last`; the next frame that is
/// not behind is published (even if unchanged) with `gap: true`.
pub fn next_frame(
    last: Option<&Frame>,
    subscription: &str,
    data: &str,
    offsets: Offsets,
    gap_pending: bool,
    served_by: String,
) -> Option<Arc<Frame>> {
    if let Some(last) = last {
        if !offsets.not_behind(&last.offsets) {
            return None;
        }
        if !gap_pending && last.data() == data && last.offsets == offsets {
            return None;
        }
    }
    let offsets = offsets.merged(last.map(|l| &l.offsets));
    Some(Frame::new(
        subscription,
        data,
        offsets,
        gap_pending,
        served_by,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn entity(offset: i64, partition_offset: i64) -> Offsets {
        Offsets::Entity {
            offset,
            partition: 2,
            partition_offset,
        }
    }

    #[test]
    fn an_entity_frame_never_goes_back_and_an_unchanged_one_is_not_sent() {
        let first = next_frame(
            None,
            "player:a",
            r#"{"k":1}"#,
            entity(5, 9),
            false,
            "n1".into(),
        )
        .unwrap();
        let frame: Value = serde_json::from_str(&first.snapshot()).unwrap();
        assert_eq!(
            frame,
            json!({"type": "snapshot", "subscription": "player:a", "served_by": "n1",
                   "partition": 2, "offset": 5, "partition_offset": 9, "gap": false,
                   "data": {"k": 1}})
        );
        assert!(first.update.contains(r#""type":"update""#));
        assert_eq!(first.data(), r#"{"k":1}"#);
        // No state yet: `data` is null, in both forms.
        let none = Frame::new("player:b", NULL, entity(-1, 0), false, "n1".into());
        let parsed: Value = serde_json::from_str(&none.update).unwrap();
        assert_eq!(
            (parsed["type"].as_str(), &parsed["data"]),
            (Some("update"), &Value::Null)
        );
        let parsed: Value = serde_json::from_str(&none.snapshot()).unwrap();
        assert_eq!(
            (parsed["type"].as_str(), &parsed["data"]),
            (Some("snapshot"), &Value::Null)
        );
        assert_eq!(none.data(), NULL);
        // The same state again: nothing.
        assert!(next_frame(
            Some(&first),
            "player:a",
            r#"{"k":1}"#,
            entity(5, 9),
            false,
            "n1".into()
        )
        .is_none());
        // A new owner still replaying: held back, gap or not.
        assert!(next_frame(
            Some(&first),
            "player:a",
            r#"{"k":0}"#,
            entity(4, 12),
            true,
            "n2".into()
        )
        .is_none());
        assert!(next_frame(
            Some(&first),
            "player:a",
            r#"{"k":1}"#,
            entity(5, 8),
            true,
            "n2".into()
        )
        .is_none());
        // Caught up: published, with the gap marked even though nothing changed.
        let after = next_frame(
            Some(&first),
            "player:a",
            r#"{"k":1}"#,
            entity(5, 9),
            true,
            "n2".into(),
        )
        .unwrap();
        assert!(after.gap);
        assert_eq!(after.served_by, "n2");
        // A channel whose viewers expired: same offsets, new data, published.
        assert!(next_frame(
            Some(&after),
            "player:a",
            r#"{"k":2}"#,
            entity(5, 9),
            false,
            "n2".into()
        )
        .is_some());
    }

    #[test]
    fn partition_offsets_never_go_back_and_a_missing_partition_keeps_its_last() {
        let map = |v: &[(&str, i64)]| {
            Offsets::Partitions(v.iter().map(|(p, o)| (p.to_string(), *o)).collect())
        };
        let first = next_frame(
            None,
            "top:concurrent:10",
            "[1]",
            map(&[("channels/0", 10), ("channels/1", 20)]),
            false,
            "n1".into(),
        )
        .unwrap();
        // Partition 1 unserved for a moment: not a step back; its last offset is kept.
        let second = next_frame(
            Some(&first),
            "top:concurrent:10",
            "[2]",
            map(&[("channels/0", 11)]),
            false,
            "n1".into(),
        )
        .unwrap();
        assert_eq!(
            second.offsets,
            map(&[("channels/0", 11), ("channels/1", 20)])
        );
        // Its new owner reports it replaying below 20: held back.
        assert!(next_frame(
            Some(&second),
            "top:concurrent:10",
            "[3]",
            map(&[("channels/0", 11), ("channels/1", 15)]),
            false,
            "n2".into()
        )
        .is_none());
        assert!(next_frame(
            Some(&second),
            "top:concurrent:10",
            "[3]",
            map(&[("channels/0", 11), ("channels/1", 20)]),
            false,
            "n2".into()
        )
        .is_some());
    }
}
