//! The serde path of the event decoder: every input the direct decoder (`plain`) gives up
//! on, valid or not, through the flat `Wire` form; and the rejections, each naming the
//! field (serde names the field of a type error; a second, slow pass tracks its path).
//!
//! Not for: the rules serde cannot express ([`Event::validate`]) or the event model.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Event, EventBody, Id, Rejection, EVENT_VERSION, KINDS, MAX_NESTING};

/// [`Event::parse`] through serde alone. Nesting deeper than [`MAX_NESTING`] is looked
/// for only once decoding failed, which it always does then (every field is a number
/// or a string), so valid events pay no scan for it.
pub(super) fn parse(bytes: &[u8]) -> Result<Event, Rejection> {
    decode(bytes).map_err(|rejection| {
        if nests_deeper_than(bytes, MAX_NESTING) {
            Rejection::new("event", format!("nesting deeper than {MAX_NESTING} levels"))
        } else {
            rejection
        }
    })
}

fn decode(bytes: &[u8]) -> Result<Event, Rejection> {
    // One UTF-8 check of the whole input is cheaper than serde_json's check of each
    // string in it, and lets `kind` be borrowed.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new("event", format!("malformed json: not utf-8: {e}")))?;
    let wire = match serde_json::from_str::<Object>(text) {
        Ok(Object(w)) => w,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(Rejection::new("event", format!("malformed json: {e}")))
        }
        // Its message may quote a value as long as the input: dropped before the next.
        Err(e) => {
            drop(e);
            return Err(name_the_field(text));
        }
    };
    let event = wire.into_event()?;
    event.validate()?;
    Ok(event)
}

/// The rejection of `text`, which decodes as JSON but not as an event: decoded again,
/// tracking the path, so the field can be named. Slow, and only for bad input.
fn name_the_field(text: &str) -> Rejection {
    let mut de = serde_json::Deserializer::from_str(text);
    let e = match serde_path_to_error::deserialize::<_, Object>(&mut de) {
        Ok(_) => unreachable!("decoding failed once"),
        Err(e) => e,
    };
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let field = field_in_message(&inner).unwrap_or(path);
    let field = if field == "." || field.is_empty() {
        "event".to_string()
    } else {
        field
    };
    Rejection::new(field, inner)
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Object::deserialize(d)?
            .0
            .into_event()
            .map_err(serde::de::Error::custom)
    }
}

/// A [`Wire`] from a JSON object only. Serde's derived struct decoding also takes an array
/// of the fields' values in order, which would make `[1,"e",5,"p","session_start",null,...]`
/// an event.
struct Object<'a>(Wire<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Wire<'de>, A::Error> {
                Wire::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields).map(Object)
    }
}

/// The flat form events are decoded from: the envelope and every kind's fields, optional.
/// A flat struct decodes several times faster than serde's flattened, internally tagged
/// enum, and serde can then name the field of a type error. Which fields a kind requires
/// and allows is checked in [`Wire::into_event`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    v: Option<u32>,
    id: Option<Id>,
    ts: Option<i64>,
    player: Option<Id>,
    /// Borrowed from the input unless it has escapes: only matched, never kept.
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    match_id: Option<Id>,
    kills: Option<u32>,
    deaths: Option<u32>,
    survival_secs: Option<u32>,
    placement: Option<u32>,
    item: Option<Id>,
    amount: Option<u64>,
    currency: Option<Id>,
    level: Option<u32>,
    achievement: Option<Id>,
    channel: Option<Id>,
    text: Option<String>,
    from: Option<Id>,
    to: Option<Id>,
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::new(field, "missing field"))
}

impl Wire<'_> {
    fn into_event(mut self) -> Result<Event, Rejection> {
        let v = required("v", self.v)?;
        if v != EVENT_VERSION {
            return Err(Rejection::new(
                "v",
                format!("unsupported version {v}, this node understands {EVENT_VERSION}"),
            ));
        }
        let kind = required("kind", self.kind.take())?;
        let w = &mut self;
        let body = match kind.as_ref() {
            "session_start" => EventBody::SessionStart {},
            "session_end" => EventBody::SessionEnd {},
            "match_start" => EventBody::MatchStart {
                match_id: required("match_id", w.match_id.take())?,
            },
            "match_end" => EventBody::MatchEnd {
                match_id: required("match_id", w.match_id.take())?,
                kills: required("kills", w.kills.take())?,
                deaths: required("deaths", w.deaths.take())?,
                survival_secs: required("survival_secs", w.survival_secs.take())?,
                placement: required("placement", w.placement.take())?,
            },
            "purchase" => EventBody::Purchase {
                item: required("item", w.item.take())?,
                amount: required("amount", w.amount.take())?,
                currency: required("currency", w.currency.take())?,
            },
            "level_up" => EventBody::LevelUp {
                level: required("level", w.level.take())?,
            },
            "achievement" => EventBody::Achievement {
                achievement: required("achievement", w.achievement.take())?,
            },
            "chat_message" => EventBody::ChatMessage {
                channel: required("channel", w.channel.take())?,
                text: required("text", w.text.take())?,
            },
            "follow" => EventBody::Follow {
                channel: required("channel", w.channel.take())?,
            },
            "viewer_join" => EventBody::ViewerJoin {
                channel: required("channel", w.channel.take())?,
            },
            "viewer_leave" => EventBody::ViewerLeave {
                channel: required("channel", w.channel.take())?,
            },
            "viewer_switch" => EventBody::ViewerSwitch {
                from: required("from", w.from.take())?,
                to: required("to", w.to.take())?,
            },
            "viewer_heartbeat" => EventBody::ViewerHeartbeat {
                channel: required("channel", w.channel.take())?,
            },
            other => {
                return Err(Rejection::new(
                    "kind",
                    format!(
                        "unknown kind {other:?}, expected one of {}",
                        KINDS.join(", ")
                    ),
                ))
            }
        };
        let leftovers = [
            ("match_id", w.match_id.is_some()),
            ("kills", w.kills.is_some()),
            ("deaths", w.deaths.is_some()),
            ("survival_secs", w.survival_secs.is_some()),
            ("placement", w.placement.is_some()),
            ("item", w.item.is_some()),
            ("amount", w.amount.is_some()),
            ("currency", w.currency.is_some()),
            ("level", w.level.is_some()),
            ("achievement", w.achievement.is_some()),
            ("channel", w.channel.is_some()),
            ("text", w.text.is_some()),
            ("from", w.from.is_some()),
            ("to", w.to.is_some()),
        ];
        if let Some((field, _)) = leftovers.iter().find(|(_, present)| *present) {
            return Err(Rejection::new(
                *field,
                format!("unknown field for kind {kind}"),
            ));
        }
        Ok(Event {
            v,
            id: required("id", self.id)?,
            ts: required("ts", self.ts)?,
            player: required("player", self.player)?,
            body,
        })
    }
}

/// Whether `bytes`, read as JSON, open more than `max` arrays or objects inside each other
/// (brackets in strings do not count). Malformed input is scanned all the same.
pub(super) fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The field serde's message names, when it is about a field as a whole: "unknown field
/// `x`, expected one of `v`, ..." (`x` is the input's key: any text, backticks too) or
/// "duplicate field `v`".
fn field_in_message(msg: &str) -> Option<String> {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        // The list of expected fields after the name is ours and has no "`, expected".
        return rest.rfind("`, expected").map(|end| rest[..end].to_string());
    }
    let rest = msg.strip_prefix("duplicate field `")?;
    rest.find('`').map(|end| rest[..end].to_string())
}
