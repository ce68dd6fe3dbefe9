//! Whatever ingest accepts, the consumer accepts: a property test over the whole event
//! space. Every kind, ids at and near every length limit (ASCII, multi-byte UTF-8, every
//! reserved URL character, JSON escapes written raw or as `\u` sequences), extreme numbers
//! and timestamps. Each generated event is written as JSON the way a producer might, parsed
//! as ingest parses it, turned into the Kafka records ingest writes, and each record is
//! decoded as the shard decodes it and applied to a fresh entity, whose counters must say
//! the record counted.

use proptest::prelude::*;

use crate::entity::{Channel, Player};
use crate::event::{Event, EventBody, Id, MAX_ID_LEN};
use crate::ingest::{records_for, Target};

/// Characters ids are built from: ASCII, every URL-reserved and JSON-special character,
/// and UTF-8 of two, three and four bytes.
pub(super) const CHARS: &[char] = &[
    'a', 'Z', '7', '-', '_', '.', '~', ':', '/', '?', '#', '[', ']', '@', '!', '$', '&', '\'', '(',
    ')', '*', '+', ',', ';', '=', '%', ' ', '"', '\\', '<', '>', '{', '}', '|', '^', '`', 'é', 'ß',
    '日', '本', '€', '😀', '𝄞',
];

/// Byte lengths an id is generated at: the bounds, and around the inline-string size.
const LENGTHS: &[usize] = &[1, 2, 23, 24, 25, 64, 126, 127, MAX_ID_LEN];

/// An id of exactly `len` bytes: characters from `picks`, then ASCII to fill up.
pub(super) fn id_of(len: usize, picks: &[usize]) -> Id {
    let mut s = String::new();
    for &p in picks {
        let c = CHARS[p % CHARS.len()];
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s.into()
}

fn arb_id() -> impl Strategy<Value = Id> {
    (
        prop::sample::select(LENGTHS),
        prop::collection::vec(any::<usize>(), 0..130),
    )
        .prop_map(|(len, picks)| id_of(len, &picks))
}

/// A channel pair for a switch: two different ids.
fn arb_two_ids() -> impl Strategy<Value = (Id, Id)> {
    (arb_id(), arb_id()).prop_map(|(a, b)| {
        if a == b {
            let mut other = b.to_string();
            other.pop();
            other.push(if a.ends_with('y') { 'z' } else { 'y' });
            (a, other.into())
        } else {
            (a, b)
        }
    })
}

fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()]
}

fn arb_body() -> impl Strategy<Value = EventBody> {
    let text = prop::collection::vec(any::<usize>(), 0..40).prop_map(|picks| {
        let mut t: String = picks.iter().map(|&p| CHARS[p % CHARS.len()]).collect();
        t.push('\n');
        t.push('\t');
        t
    });
    let big_text = Just("é".repeat(2048)); // exactly 4096 bytes, the limit
    prop_oneof![
        Just(EventBody::SessionStart {}),
        Just(EventBody::SessionEnd {}),
        arb_id().prop_map(|match_id| EventBody::MatchStart { match_id }),
        (arb_id(), arb_u32(), arb_u32(), arb_u32(), arb_u32()).prop_map(
            |(match_id, kills, deaths, survival_secs, placement)| EventBody::MatchEnd {
                match_id,
                kills,
                deaths,
                survival_secs,
                placement,
            }
        ),
        (
            arb_id(),
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            prop::sample::select(&["USD", "EUR", "JPY"][..])
        )
            .prop_map(|(item, amount, currency)| EventBody::Purchase {
                item,
                amount,
                currency: currency.into(),
            }),
        arb_u32().prop_map(|level| EventBody::LevelUp { level }),
        arb_id().prop_map(|achievement| EventBody::Achievement { achievement }),
        (arb_id(), prop_oneof![text, big_text])
            .prop_map(|(channel, text)| EventBody::ChatMessage { channel, text }),
        arb_id().prop_map(|channel| EventBody::Follow { channel }),
        arb_id().prop_map(|channel| EventBody::ViewerJoin { channel }),
        arb_id().prop_map(|channel| EventBody::ViewerLeave { channel }),
        arb_id().prop_map(|channel| EventBody::ViewerHeartbeat { channel }),
        arb_two_ids().prop_map(|(from, to)| EventBody::ViewerSwitch { from, to }),
    ]
}

pub(super) fn arb_event() -> impl Strategy<Value = Event> {
    (
        arb_id(),
        prop_oneof![
            Just(1i64),
            Just(1_700_000_000_000),
            Just(i64::MAX),
            1..i64::MAX
        ],
        arb_id(),
        arb_body(),
    )
        .prop_map(|(id, ts, player, body)| Event {
            v: 1,
            id,
            ts,
            player,
            body,
        })
}

/// A JSON string literal of `s`, each character written raw (escaped where JSON needs it)
/// or, where `as_u` says so, as `\uXXXX` (a surrogate pair beyond the BMP).
pub(super) fn json_string(s: &str, as_u: &dyn Fn(usize) -> bool) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if as_u(i) || c.is_control() {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else if c == '"' || c == '\\' {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// The fields of `event` as JSON text, (key, value), its strings escaped per
/// `escape_every` (0: only where needed).
pub(super) fn json_fields(event: &Event, escape_every: usize) -> Vec<(String, String)> {
    let as_u = move |i: usize| escape_every > 0 && i.is_multiple_of(escape_every);
    let value = serde_json::to_value(event).expect("an event serializes");
    let serde_json::Value::Object(fields) = value else {
        unreachable!("an event is an object")
    };
    fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => json_string(s, &as_u),
                other => other.to_string(),
            };
            (json_string(k, &|_| false), v)
        })
        .collect()
}

/// `event` as JSON, its strings escaped per `escape_every` (0: only where needed).
pub(super) fn to_json_escaped(event: &Event, escape_every: usize) -> String {
    let parts: Vec<String> = json_fields(event, escape_every)
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{{{}}}", parts.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_accepted_event_makes_records_the_consumer_decodes_and_counts(
        event in arb_event(),
        escape_every in prop_oneof![Just(0usize), 1..5usize],
    ) {
        let json = to_json_escaped(&event, escape_every);
        let parsed = Event::parse(json.as_bytes());
        prop_assert_eq!(parsed.as_ref(), Ok(&event), "ingest must accept {}", json);
        let records = records_for(&event);
        let channel_records = event.channel_records();
        prop_assert_eq!(records.len(), 1 + channel_records.len());
        for rec in &records {
            // Decoded as the shard decodes a record: key, then payload.
            let read = Event::parse(&rec.payload);
            prop_assert!(read.is_ok(), "consumer rejected {:?}: {:?}", rec.target, read);
            let read = read.unwrap();
            prop_assert!(!rec.key.is_empty() && rec.key.len() <= MAX_ID_LEN);
            prop_assert_eq!(&read.id, &event.id);
            prop_assert_eq!(&read.player, &event.player);
            match rec.target {
                Target::Players => {
                    prop_assert_eq!(&rec.key, event.player.as_str());
                    prop_assert_eq!(&read, &event);
                    let mut p = Player::default();
                    p.apply(read.ts, &read.body);
                    prop_assert_eq!(p.view(&rec.key).events, 1);
                }
                Target::Channels => {
                    let mut c = Channel::default();
                    c.apply(read.ts, &read.player, &read.body, read.ts, 60_000);
                    let v = c.view(&rec.key, read.ts, 60_000);
                    match &read.body {
                        EventBody::ViewerJoin { channel } | EventBody::ViewerHeartbeat { channel } => {
                            prop_assert_eq!(channel.as_str(), rec.key.as_str());
                            prop_assert_eq!((v.joins, v.concurrent_viewers), (1, 1));
                        }
                        EventBody::ViewerLeave { channel } => {
                            // A leave on a channel the viewer is not in changes nothing.
                            prop_assert_eq!(channel.as_str(), rec.key.as_str());
                            prop_assert_eq!(v.leaves, 0);
                        }
                        EventBody::Follow { channel } => {
                            prop_assert_eq!(channel.as_str(), rec.key.as_str());
                            prop_assert_eq!(v.follows, 1);
                        }
                        other => prop_assert!(false, "{:?} on the channel topic", other),
                    }
                }
                Target::DeadLetter => prop_assert!(false, "a valid event made a dead letter"),
            }
        }
    }
}
