//! The event model: what producers send, versioned, and how it is validated.
//!
//! Events are JSON objects with `"v": 1`, an `id`, an event timestamp `ts` (milliseconds
//! since the Unix epoch, set by the producer), the `player` they concern and a `kind` with
//! the kind's own fields. Viewer events are player events too (the viewer is a player);
//! the ones that change a channel also reach the channel topic, see [`Event::channel_records`].
//!
//! Not for: state. Applying events to players and channels lives in `entity`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only version this build understands.
pub const EVENT_VERSION: u32 = 1;
/// Longest accepted id (player, channel, item, event id).
pub const MAX_ID_LEN: usize = 128;

/// One event as it travels on the wire and in Kafka.
// Unknown fields are rejected by the kind's variant: serde's `deny_unknown_fields` cannot
// sit on a struct with a flattened field; the schema still says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Event {
    /// Schema version; must be 1.
    pub v: u32,
    /// Producer-chosen unique id of the event.
    pub id: String,
    /// Event time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The player (or viewer) the event concerns; the key of `player-events`.
    pub player: String,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kind of an event and its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    SessionStart {},
    SessionEnd {},
    MatchStart {
        match_id: String,
    },
    MatchEnd {
        match_id: String,
        kills: u32,
        deaths: u32,
        /// Seconds the player survived in the match.
        survival_secs: u32,
        /// Final placement, 1 = winner.
        placement: u32,
    },
    Purchase {
        item: String,
        /// Amount in minor units of `currency` (cents for USD).
        amount: u64,
        /// ISO 4217 code, three upper-case letters.
        currency: String,
    },
    LevelUp {
        level: u32,
    },
    Achievement {
        achievement: String,
    },
    ChatMessage {
        channel: String,
        text: String,
    },
    Follow {
        channel: String,
    },
    ViewerJoin {
        channel: String,
    },
    ViewerLeave {
        channel: String,
    },
    ViewerSwitch {
        from: String,
        to: String,
    },
    ViewerHeartbeat {
        channel: String,
    },
}

/// The kinds, in the order of [`EventBody`]'s variants; also the names used in counters.
pub const KINDS: [&str; 13] = [
    "session_start",
    "session_end",
    "match_start",
    "match_end",
    "purchase",
    "level_up",
    "achievement",
    "chat_message",
    "follow",
    "viewer_join",
    "viewer_leave",
    "viewer_switch",
    "viewer_heartbeat",
];

/// A rejected input: which field, and why. Shown to the producer and put in the DLQ.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Rejection {
    /// Dotted path of the offending field, or `body` / `event` for the whole thing.
    pub field: String,
    /// Lower-case human-readable reason.
    pub reason: String,
}

impl Rejection {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl EventBody {
    /// Index of this kind in [`KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            EventBody::SessionStart {} => 0,
            EventBody::SessionEnd {} => 1,
            EventBody::MatchStart { .. } => 2,
            EventBody::MatchEnd { .. } => 3,
            EventBody::Purchase { .. } => 4,
            EventBody::LevelUp { .. } => 5,
            EventBody::Achievement { .. } => 6,
            EventBody::ChatMessage { .. } => 7,
            EventBody::Follow { .. } => 8,
            EventBody::ViewerJoin { .. } => 9,
            EventBody::ViewerLeave { .. } => 10,
            EventBody::ViewerSwitch { .. } => 11,
            EventBody::ViewerHeartbeat { .. } => 12,
        }
    }

    pub fn kind(&self) -> &'static str {
        KINDS[self.kind_index()]
    }
}

impl Event {
    /// Parses and validates one JSON event. The error names the field and the reason.
    pub fn parse(bytes: &[u8]) -> Result<Event, Rejection> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Rejection::new("event", format!("malformed json: {e}")))?;
        Self::from_value(value)
    }

    /// Validates an already-parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Event, Rejection> {
        let obj = value
            .as_object()
            .ok_or_else(|| Rejection::new("event", "expected a json object"))?;
        match obj.get("v") {
            None => return Err(Rejection::new("v", "missing field")),
            Some(v) if v.as_u64() == Some(EVENT_VERSION as u64) => {}
            Some(v) if v.is_u64() => {
                return Err(Rejection::new(
                    "v",
                    format!("unsupported version {v}, this node understands {EVENT_VERSION}"),
                ))
            }
            Some(v) => return Err(Rejection::new("v", format!("expected an integer, got {v}"))),
        }
        match obj.get("kind") {
            None => return Err(Rejection::new("kind", "missing field")),
            Some(serde_json::Value::String(k)) if !KINDS.contains(&k.as_str()) => {
                return Err(Rejection::new(
                    "kind",
                    format!("unknown kind {k:?}, expected one of {}", KINDS.join(", ")),
                ))
            }
            Some(serde_json::Value::String(_)) => {}
            Some(k) => {
                return Err(Rejection::new(
                    "kind",
                    format!("expected a string, got {k}"),
                ))
            }
        }
        let event: Event = match serde_json::from_value(value.clone()) {
            Ok(e) => e,
            Err(e) => {
                return Err(Rejection::new(
                    culprit(&value, &e.to_string()),
                    e.to_string(),
                ))
            }
        };
        event.validate()?;
        Ok(event)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), Rejection> {
        check_id("id", &self.id)?;
        check_id("player", &self.player)?;
        if self.ts <= 0 {
            return Err(Rejection::new(
                "ts",
                format!(
                    "must be positive milliseconds since the epoch, got {}",
                    self.ts
                ),
            ));
        }
        match &self.body {
            EventBody::MatchStart { match_id } | EventBody::MatchEnd { match_id, .. } => {
                check_id("match_id", match_id)?
            }
            EventBody::Purchase { item, currency, .. } => {
                check_id("item", item)?;
                if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(Rejection::new(
                        "currency",
                        format!("must be three upper-case letters (ISO 4217), got {currency:?}"),
                    ));
                }
            }
            EventBody::Achievement { achievement } => check_id("achievement", achievement)?,
            EventBody::ChatMessage { channel, text } => {
                check_id("channel", channel)?;
                if text.len() > 4096 {
                    return Err(Rejection::new("text", "longer than 4096 bytes"));
                }
            }
            EventBody::Follow { channel }
            | EventBody::ViewerJoin { channel }
            | EventBody::ViewerLeave { channel }
            | EventBody::ViewerHeartbeat { channel } => check_id("channel", channel)?,
            EventBody::ViewerSwitch { from, to } => {
                check_id("from", from)?;
                check_id("to", to)?;
                if from == to {
                    return Err(Rejection::new("to", "must differ from `from`"));
                }
            }
            EventBody::SessionStart {} | EventBody::SessionEnd {} | EventBody::LevelUp { .. } => {}
        }
        Ok(())
    }

    /// The records this event puts on the channel topic, as (channel key, event):
    /// viewer events and follows concern a channel; a switch is a leave on the old channel
    /// and a join on the new one (produced in the same transaction as the player record).
    pub fn channel_records(&self) -> Vec<(String, Event)> {
        let derived = |suffix: &str, body: EventBody| Event {
            v: self.v,
            id: format!("{}{suffix}", self.id),
            ts: self.ts,
            player: self.player.clone(),
            body,
        };
        match &self.body {
            EventBody::Follow { channel }
            | EventBody::ViewerJoin { channel }
            | EventBody::ViewerLeave { channel }
            | EventBody::ViewerHeartbeat { channel } => vec![(channel.clone(), self.clone())],
            EventBody::ViewerSwitch { from, to } => vec![
                (
                    from.clone(),
                    derived(
                        "#leave",
                        EventBody::ViewerLeave {
                            channel: from.clone(),
                        },
                    ),
                ),
                (
                    to.clone(),
                    derived(
                        "#join",
                        EventBody::ViewerJoin {
                            channel: to.clone(),
                        },
                    ),
                ),
            ],
            _ => Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }
}

fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Rejection::new(
            field,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(Rejection::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// The field a deserialization error is about. serde names missing and unknown fields in
/// its message; for a mistyped field inside the flattened kind it gives no path, so the
/// field is found by elimination: without the culprit, the error becomes "missing field".
fn culprit(value: &serde_json::Value, message: &str) -> String {
    if let Some(f) = field_in_message(message) {
        return f;
    }
    let Some(obj) = value.as_object() else {
        return "event".into();
    };
    // Kind fields first: a missing envelope field is reported before the kind's fields.
    const ENVELOPE: [&str; 4] = ["v", "id", "ts", "player"];
    let (envelope, fields): (Vec<&String>, Vec<&String>) = obj
        .keys()
        .filter(|k| k.as_str() != "kind")
        .partition(|k| ENVELOPE.contains(&k.as_str()));
    for key in fields.into_iter().chain(envelope) {
        let mut probe = obj.clone();
        probe.remove(key);
        if let Err(e) = serde_json::from_value::<Event>(serde_json::Value::Object(probe)) {
            if field_in_message(&e.to_string()).as_deref() == Some(key.as_str()) {
                return key.to_string();
            }
        }
    }
    "event".into()
}

/// Pulls the field name out of serde's "missing field `x`" / "unknown field `x`" messages.
fn field_in_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    (msg.contains("missing field") || msg.contains("unknown field"))
        .then(|| msg[start..end].to_string())
}

/// The JSON Schema of [`Event`], as written to docs/event.schema.json.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Event);
    serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(json: &str) -> Rejection {
        Event::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_a_match_end() {
        let e = Event::parse(
            br#"{"v":1,"id":"e1","ts":1700000000000,"player":"p1","kind":"match_end","match_id":"m1","kills":3,"deaths":1,"survival_secs":300,"placement":2}"#,
        )
        .unwrap();
        assert_eq!(e.body.kind(), "match_end");
        assert_eq!(Event::parse(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn names_the_field_and_reason() {
        assert_eq!(reject("{").field, "event");
        assert_eq!(reject("[1]").field, "event");
        assert_eq!(
            reject(r#"{"id":"e","ts":1,"player":"p","kind":"session_start"}"#).field,
            "v"
        );
        let r = reject(r#"{"v":2,"id":"e","ts":1,"player":"p","kind":"session_start"}"#);
        assert_eq!(r.field, "v");
        assert!(r.reason.contains("unsupported version 2"), "{r}");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"dance"}"#);
        assert_eq!(r.field, "kind");
        assert!(r.reason.contains("unknown kind \"dance\""), "{r}");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"kind":"session_start"}"#);
        assert_eq!(r.field, "player");
        assert!(r.reason.contains("missing field"), "{r}");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"level_up","level":"ten"}"#);
        assert_eq!(r.field, "level");
        assert!(r.reason.contains("invalid type"), "{r}");
        let r = reject(
            r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"purchase","item":"i","amount":5,"currency":"usd"}"#,
        );
        assert_eq!(r.field, "currency");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"player":"","kind":"session_start"}"#);
        assert_eq!(r.field, "player");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"session_start","extra":1}"#);
        assert_eq!(r.field, "extra");
        let r = reject(r#"{"v":1,"id":"e","ts":"soon","player":"p","kind":"session_start"}"#);
        assert_eq!(r.field, "ts");
        let r = reject(
            r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"match_end","match_id":"m","kills":-1,"deaths":0,"survival_secs":1,"placement":1}"#,
        );
        assert_eq!(r.field, "kills");
        let r = reject(r#"{"v":1,"id":"e","ts":-5,"player":"p","kind":"session_start"}"#);
        assert_eq!(r.field, "ts");
    }

    #[test]
    fn switch_becomes_leave_and_join_on_channels() {
        let e = Event::parse(
            br#"{"v":1,"id":"s","ts":5,"player":"p","kind":"viewer_switch","from":"a","to":"b"}"#,
        )
        .unwrap();
        let recs = e.channel_records();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, "a");
        assert_eq!(
            recs[0].1.body,
            EventBody::ViewerLeave {
                channel: "a".into()
            }
        );
        assert_eq!(recs[1].0, "b");
        assert_eq!(
            recs[1].1.body,
            EventBody::ViewerJoin {
                channel: "b".into()
            }
        );
        let purchase = Event::parse(
            br#"{"v":1,"id":"x","ts":5,"player":"p","kind":"purchase","item":"i","amount":5,"currency":"EUR"}"#,
        )
        .unwrap();
        assert!(purchase.channel_records().is_empty());
    }

    #[test]
    fn kinds_match_variants() {
        for (i, k) in KINDS.iter().enumerate() {
            let json = format!(r#"{{"v":1,"id":"e","ts":1,"player":"p","kind":"{k}"}}"#);
            // Kinds without fields parse; the others fail on a named missing field, not on kind.
            match Event::parse(json.as_bytes()) {
                Ok(e) => assert_eq!(e.body.kind_index(), i),
                Err(r) => assert_ne!(r.field, "kind", "{k}: {r}"),
            }
        }
    }

    #[test]
    fn committed_schema_is_current() {
        let committed = include_str!("../../docs/event.schema.json");
        assert_eq!(
            committed,
            json_schema(),
            "docs/event.schema.json is stale: run `cargo run -p tally-node --bin tally-node -- schema > docs/event.schema.json`"
        );
    }
}
