//! The event model: what producers send, versioned, and how it is validated.
//!
//! Events are JSON objects with `"v": 1`, an `id`, an event timestamp `ts` (milliseconds
//! since the Unix epoch, set by the producer), the `player` they concern and a `kind` with
//! the kind's own fields. Viewer events are player events too (the viewer is a player);
//! the ones that change a channel also reach the channel topic, see [`Event::channel_records`].
//! [`Event::parse`] decodes the plain shape producers write directly (`plain`) and hands
//! anything else to serde (`wire`), which also words the rejections.
//!
//! Not for: state. Applying events to players and channels lives in `entity`.

use compact_str::CompactString;
use schemars::JsonSchema;
use serde::Serialize;

#[cfg(test)]
pub(crate) mod fuzz;
mod plain;
#[cfg(test)]
mod roundtrip;
mod wire;

/// The only version this build understands.
pub const EVENT_VERSION: u32 = 1;
/// Longest accepted id (player, channel, item, event id).
pub const MAX_ID_LEN: usize = 128;
/// Deepest nesting of arrays and objects in an input before it is rejected for its depth
/// alone (`event: nesting deeper than 64 levels`). An event is one flat object, so an input
/// nested deeper never decodes anyway: the bound gives it a reason that says so. Depth
/// costs no stack on any path: the direct decoder takes only strings and numbers, serde
/// stops at the first value of the wrong type (depth 2, far from serde_json's recursion
/// limit of 128), and the body splitter skips elements without recursing.
pub const MAX_NESTING: usize = 64;

/// The wall clock in milliseconds since the epoch: ingest's "now" for the future bound.
/// Never used in a state transition (those run on event time).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An identifier (event, player, channel, match, item, ...): inline up to 24 bytes, so
/// decoding an event allocates nothing for its ids.
pub type Id = CompactString;

/// One event as it travels on the wire and in Kafka.
// Decoded through the flat `Wire` form (see `wire`); serialized and documented as below.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Event {
    /// Schema version; must be 1.
    pub v: u32,
    /// Producer-chosen unique id of the event.
    #[schemars(with = "String")]
    pub id: Id,
    /// Event time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The player (or viewer) the event concerns; the key of `player-events`.
    #[schemars(with = "String")]
    pub player: Id,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kind of an event and its fields.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    SessionStart {},
    SessionEnd {},
    MatchStart {
        #[schemars(with = "String")]
        match_id: Id,
    },
    MatchEnd {
        #[schemars(with = "String")]
        match_id: Id,
        kills: u32,
        deaths: u32,
        /// Seconds the player survived in the match.
        survival_secs: u32,
        /// Final placement, 1 = winner.
        placement: u32,
    },
    Purchase {
        #[schemars(with = "String")]
        item: Id,
        /// Amount in minor units of `currency` (cents for USD).
        amount: u64,
        /// ISO 4217 code, three upper-case letters.
        #[schemars(with = "String")]
        currency: Id,
    },
    LevelUp {
        level: u32,
    },
    Achievement {
        #[schemars(with = "String")]
        achievement: Id,
    },
    ChatMessage {
        #[schemars(with = "String")]
        channel: Id,
        text: String,
    },
    Follow {
        #[schemars(with = "String")]
        channel: Id,
    },
    ViewerJoin {
        #[schemars(with = "String")]
        channel: Id,
    },
    ViewerLeave {
        #[schemars(with = "String")]
        channel: Id,
    },
    ViewerSwitch {
        #[schemars(with = "String")]
        from: Id,
        #[schemars(with = "String")]
        to: Id,
    },
    ViewerHeartbeat {
        #[schemars(with = "String")]
        channel: Id,
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
    /// Parses and validates one JSON event. The error names the field and the reason; an
    /// input nested deeper than [`MAX_NESTING`] is rejected for that (field `event`).
    pub fn parse(bytes: &[u8]) -> Result<Event, Rejection> {
        // The plain shape every producer writes decodes directly; anything else, valid or
        // not, is serde's to judge.
        match plain::decode(bytes) {
            Some((event, printable)) => event.check(!printable).map(|()| event),
            None => wire::parse(bytes),
        }
    }

    /// Rejects an event whose `ts` is more than `tolerance_ms` after `now_ms` (ingest's
    /// clock): one client's wrong clock must not move a partition's event-time watermark.
    pub fn check_not_ahead(&self, now_ms: i64, tolerance_ms: i64) -> Result<(), Rejection> {
        let bound = now_ms.saturating_add(tolerance_ms);
        if self.ts > bound {
            return Err(Rejection::new(
                "ts",
                format!(
                    "{} is more than {} s ahead of the ingest clock ({now_ms}); check the producer's clock",
                    self.ts,
                    tolerance_ms / 1000
                ),
            ));
        }
        Ok(())
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), Rejection> {
        self.check(true)
    }

    /// [`Event::validate`]; `scan_chars: false` skips looking for control characters in
    /// ids, for a caller that saw every byte of them printable ASCII.
    fn check(&self, scan_chars: bool) -> Result<(), Rejection> {
        let check_id = |field: &str, value: &str| check_id(field, value, scan_chars);
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
    /// Derived records keep the event's id unchanged, so they obey every rule the event
    /// did (an id of 128 bytes stays 128 bytes): whatever ingest accepted, the consumer
    /// accepts. The two halves of a switch differ by channel, which is their key.
    pub fn channel_records(&self) -> Vec<(Id, Event)> {
        let derived = |body: EventBody| Event {
            v: self.v,
            id: self.id.clone(),
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
                    derived(EventBody::ViewerLeave {
                        channel: from.clone(),
                    }),
                ),
                (
                    to.clone(),
                    derived(EventBody::ViewerJoin {
                        channel: to.clone(),
                    }),
                ),
            ],
            _ => Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }
}

fn check_id(field: &str, value: &str, scan_chars: bool) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Rejection::new(
            field,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if scan_chars && has_control(value) {
        return Err(Rejection::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Whether `value` holds a control character: C0 (bytes below 0x20), DEL, or C1
/// (U+0080-U+009F, which UTF-8 writes as 0xC2 0x80-0x9F). Only a string with such a byte
/// needs the char scan.
pub fn has_control(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && value.chars().any(char::is_control)
}

/// What keeps `id` from naming an entity in a query or a subscription (1 to
/// [`MAX_ID_LEN`] bytes, no control characters, as ingest takes ids), or None. No event
/// carries such an id, so no entity has it.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Some(format!("must be 1 to {MAX_ID_LEN} bytes, got {}", id.len()));
    }
    has_control(id).then(|| "must not hold control characters".to_string())
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
    fn input_that_is_not_utf8_is_malformed_and_escapes_still_decode() {
        let mut bytes =
            br#"{"v":1,"id":"e1","ts":5,"player":"p1","kind":"session_start"}"#.to_vec();
        let ok = Event::parse(&bytes).unwrap();
        assert_eq!(ok.body, EventBody::SessionStart {});
        bytes[15] = 0xff; // inside the player id
        let r = Event::parse(&bytes).unwrap_err();
        assert_eq!(r.field, "event");
        assert!(r.reason.contains("not utf-8"), "{}", r.reason);
        // An escaped kind cannot be borrowed from the input; it decodes all the same.
        let escaped = r#"{"v":1,"id":"e1","ts":5,"player":"p1","kind":"session\u005fend"}"#;
        assert_eq!(
            Event::parse(escaped.as_bytes()).unwrap().body,
            EventBody::SessionEnd {}
        );
    }

    #[test]
    fn an_event_too_far_ahead_of_the_ingest_clock_is_rejected_naming_ts() {
        let at = |ts: i64| Event {
            v: 1,
            id: "e".into(),
            ts,
            player: "p".into(),
            body: EventBody::SessionStart {},
        };
        let now = 1_700_000_000_000;
        assert!(at(now + 300_000).check_not_ahead(now, 300_000).is_ok());
        assert!(at(1).check_not_ahead(now, 300_000).is_ok());
        let r = at(now + 300_001).check_not_ahead(now, 300_000).unwrap_err();
        assert_eq!(r.field, "ts");
        assert!(r.reason.contains("300 s ahead"), "{}", r.reason);
        assert!(at(i64::MAX).check_not_ahead(i64::MAX - 1, i64::MAX).is_ok());
        assert!(at(i64::MAX).check_not_ahead(now, 0).is_err());
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
        // The fields' values in order, as serde's derived decoding of a struct would take.
        let r = reject(&format!(
            r#"[1,"e",5,"p","session_start"{}]"#,
            ",null".repeat(14)
        ));
        assert_eq!(r.field, "event");
        assert!(r.reason.contains("expected an event object"), "{r}");
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
        let r = reject(r#"{"v":1,"id":"e","ts":1,"player":"p","kind":"session_start","a`b":1}"#);
        assert_eq!(r.field, "a`b");
        let r = reject(r#"{"v":1,"id":"e","ts":1,"ts":2,"player":"p","kind":"session_start"}"#);
        assert_eq!(r.field, "ts");
        assert!(r.reason.contains("duplicate field"), "{r}");
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let r = reject(&format!(
            r#"{{"v":1,"id":"e","ts":1,"player":"p","kind":"level_up","level":{deep}}}"#
        ));
        assert_eq!(r.to_string(), "event: nesting deeper than 64 levels");
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
