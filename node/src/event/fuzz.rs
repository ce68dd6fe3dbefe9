//! Fuzz target of the event decoder (the harness is `crate::fuzz`): hostile inputs through
//! [`Event::parse`], which ingest and the shards both call, and through serde's path alone.
//!
//! Inputs: arbitrary bytes and text; valid events of every kind (ids of every length up to
//! the limit, strings escaped raw or as `\u` sequences) with fields replaced by edge values
//! (huge numbers, exponents, lone surrogates, ids around [`MAX_ID_LEN`], nested arrays),
//! added, dropped or repeated, then bytes edited and the input cut short; nesting from 1 to
//! 10,000 levels. Properties, for every input:
//! - decoding never panics, and allocates at most a small multiple of the input's size;
//! - the direct and the serde paths agree: the same event, or the same rejection;
//! - an accepted event is flat, re-encodes to JSON that both paths decode to the same
//!   event, and makes records the consumer decodes;
//! - a rejection names a field of the event (or `event`, or the unknown field) and a
//!   reason; an input nested deeper than [`MAX_NESTING`] is rejected for exactly that.
//!
//! Not for: the splitter of request bodies (`api::events::fuzz`), which feeds its items
//! through [`check_decoder`] as well.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseResult;

use super::roundtrip::{arb_event, id_of, json_fields, json_string, to_json_escaped};
use super::wire::{self, nests_deeper_than};
use super::{Event, EventBody, Rejection, KINDS, MAX_ID_LEN, MAX_NESTING};
use crate::fuzz::{self, apply_byte_edits, arb_byte_edits, arb_nesting, Input, EDGE_VALUES};
use crate::ingest::{records_for, Target};

/// Every field an event may have.
const FIELDS: &[&str] = &[
    "v",
    "id",
    "ts",
    "player",
    "kind",
    "match_id",
    "kills",
    "deaths",
    "survival_secs",
    "placement",
    "item",
    "amount",
    "currency",
    "level",
    "achievement",
    "channel",
    "text",
    "from",
    "to",
];

/// Keys of added fields, as JSON strings: the real ones, unknown ones, escaped ones.
const KEYS: &[&str] = &[
    "\"v\"",
    "\"id\"",
    "\"ts\"",
    "\"player\"",
    "\"kind\"",
    "\"match_id\"",
    "\"kills\"",
    "\"level\"",
    "\"amount\"",
    "\"currency\"",
    "\"channel\"",
    "\"text\"",
    "\"from\"",
    "\"to\"",
    "\"extra\"",
    "\"\"",
    "\"l\\u0065vel\"",
    "\"\\ud800\"",
    "\"a`b\"",
    "\"kind\\u0000\"",
];

/// Byte lengths of ids put into events: empty, around the inline size and [`MAX_ID_LEN`],
/// and far beyond it.
const ID_LENGTHS: &[usize] = &[
    0,
    1,
    24,
    25,
    MAX_ID_LEN - 1,
    MAX_ID_LEN,
    MAX_ID_LEN + 1,
    MAX_ID_LEN + 2,
    1000,
];

/// The length of the rare huge string value: ingest's default limit of an event's size.
const HUGE: usize = 65_536;

/// A value for a field: an edge value, a kind, an id of an edge length (rarely a huge
/// one, which takes most of the time of a case), or nesting.
fn arb_value() -> impl Strategy<Value = String> {
    let id = (
        prop_oneof![49 => select(ID_LENGTHS), 1 => Just(HUGE)],
        prop::collection::vec(any::<usize>(), 0..40),
        0..3usize,
    )
        .prop_map(|(len, picks, every)| {
            json_string(&id_of(len, &picks), &|i| every > 0 && i % every == 0)
        });
    prop_oneof![
        4 => select(EDGE_VALUES).prop_map(String::from),
        2 => select(&KINDS[..]).prop_map(|k| format!("\"{k}\"")),
        3 => id,
        1 => arb_nesting().prop_map(|b| String::from_utf8(b).expect("nesting is ascii")),
    ]
}

/// A valid event of some kind, often in the plain shape (ASCII strings, no escapes), with
/// up to four field edits (a value replaced, a field added, dropped or repeated),
/// whitespace between tokens, then up to three byte edits.
fn arb_mutated_event() -> impl Strategy<Value = Vec<u8>> {
    let edit = (0..4u8, select(KEYS), arb_value(), any::<Index>());
    let edits = prop_oneof![2 => Just(Vec::new()), 3 => prop::collection::vec(edit, 1..=4)];
    let byte_edits = prop_oneof![3 => Just(Vec::new()), 1 => arb_byte_edits(3)];
    let ws = prop::collection::vec(select(&["", "", "", " ", "\n", "\r\n", "\t"][..]), 16);
    (
        arb_event(),
        prop_oneof![Just(None), Just(Some(0usize)), (1..4usize).prop_map(Some)],
        edits,
        ws,
        byte_edits,
    )
        .prop_map(|(event, escape_every, edits, ws, byte_edits)| {
            let mut fields = match escape_every {
                Some(every) => json_fields(&event, every),
                None => plain_fields(&event),
            };
            for (op, key, value, at) in edits {
                let at = at.index(fields.len().max(1));
                match op {
                    0 if at < fields.len() => fields[at].1 = value,
                    1 => fields.insert(at.min(fields.len()), (key.to_string(), value)),
                    2 if at < fields.len() => drop(fields.remove(at)),
                    3 if at < fields.len() => fields.push(fields[at].clone()),
                    _ => {}
                }
            }
            let w = |i: usize| ws[i % ws.len()];
            let members: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, (k, v))| format!("{}{k}{}:{}{v}", w(3 * i), w(3 * i + 1), w(3 * i + 2)))
                .collect();
            let json = format!("{{{}}}{}", members.join(","), w(7));
            apply_byte_edits(json.into_bytes(), &byte_edits)
        })
}

/// The fields of `event` in the shape the direct decoder takes: each character of its
/// strings that would need an escape or is not ASCII becomes `x`.
fn plain_fields(event: &Event) -> Vec<(String, String)> {
    let plain = |c: char| {
        if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
            c
        } else {
            'x'
        }
    };
    json_fields(event, 0)
        .into_iter()
        .map(|(k, v)| match serde_json::from_str::<String>(&v) {
            Ok(text) => (
                k,
                format!("\"{}\"", text.chars().map(plain).collect::<String>()),
            ),
            Err(_) => (k, v),
        })
        .collect()
}

/// Valid events of every kind, as JSON, some with their strings escaped.
pub(crate) fn arb_valid_event() -> impl Strategy<Value = Vec<u8>> {
    (arb_event(), 0..4usize).prop_map(|(event, every)| to_json_escaped(&event, every).into_bytes())
}

/// Inputs for the decoder, mostly near-valid events.
pub(crate) fn arb_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => arb_nesting(),
        7 => arb_mutated_event(),
    ]
}

/// The most bytes decoding an input of `len` bytes may allocate at once: the event holds
/// its strings (at most the input's size); serde's scratch, its message quoting a value
/// and the rejection made of it up to that much again each.
fn allocation_bound(len: usize) -> usize {
    4 * len + 16 * 1024
}

/// The properties of the module doc, for one input.
pub(crate) fn check_decoder(input: &[u8]) -> TestCaseResult {
    let shown = || fuzz::shown(input);
    let (parsed, peak) = fuzz::peak_allocation(|| Event::parse(input));
    prop_assert!(
        peak <= allocation_bound(input.len()),
        "decoding {} bytes allocated {peak} bytes: {}",
        input.len(),
        shown()
    );
    let serde = wire::parse(input);
    prop_assert_eq!(&parsed, &serde, "the paths disagree on {}", shown());
    match parsed {
        Ok(event) => check_accepted(input, &event),
        Err(rejection) => check_rejected(input, &rejection),
    }
}

fn check_accepted(input: &[u8], event: &Event) -> TestCaseResult {
    let shown = || fuzz::shown(input);
    prop_assert!(!nests_deeper_than(input, 1), "nested: {}", shown());
    let json = event.to_json();
    let again = Ok(event.clone());
    prop_assert_eq!(&Event::parse(&json), &again, "re-encoded {}", shown());
    prop_assert_eq!(&wire::parse(&json), &again);
    for record in records_for(event) {
        let read = Event::parse(&record.payload);
        prop_assert!(read.is_ok(), "the consumer rejected {:?}", read);
        let read = read.expect("checked");
        prop_assert_eq!(
            (&read.id, &read.player, read.ts),
            (&event.id, &event.player, event.ts)
        );
        match record.target {
            Target::Players => prop_assert_eq!(&read, event),
            Target::Channels => match &read.body {
                EventBody::Follow { channel }
                | EventBody::ViewerJoin { channel }
                | EventBody::ViewerLeave { channel }
                | EventBody::ViewerHeartbeat { channel } => {
                    prop_assert_eq!(channel.as_str(), record.key.as_str())
                }
                other => prop_assert!(false, "{:?} on the channel topic", other),
            },
            Target::DeadLetter => prop_assert!(false, "an accepted event made a dead letter"),
        }
    }
    Ok(())
}

fn check_rejected(input: &[u8], r: &Rejection) -> TestCaseResult {
    let shown = || fuzz::shown(input);
    prop_assert!(!r.field.is_empty() && !r.reason.is_empty(), "{:?}", r);
    let named = FIELDS.contains(&r.field.as_str())
        || r.field == "event"
        || r.reason
            .starts_with(&format!("unknown field `{}`, ", r.field));
    prop_assert!(named, "{:?} names no field of {}", r, shown());
    if nests_deeper_than(input, MAX_NESTING) {
        let deep = Rejection::new("event", format!("nesting deeper than {MAX_NESTING} levels"));
        prop_assert_eq!(r, &deep);
    }
    Ok(())
}

#[test]
#[ignore = "a fuzz target: make fuzz-quick (part of make test), or make fuzz"]
fn fuzz_event_decoder() {
    fuzz::run("fuzz_event_decoder", arb_input().prop_map(Input), |input| {
        check_decoder(&input.0)
    });
}

/// The bound holds at every edge of it, and serde's own recursion limit is never what
/// answers.
#[test]
fn nesting_is_rejected_naming_the_bound_at_every_depth() {
    for depth in fuzz::DEPTHS.iter().copied().chain([MAX_NESTING + 1]) {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let input = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let r = Event::parse(input.as_bytes()).unwrap_err();
            if depth > MAX_NESTING {
                assert_eq!(r.reason, "nesting deeper than 64 levels", "{depth}");
                assert_eq!(r.field, "event");
            } else {
                assert!(!r.reason.contains("nesting"), "{depth}: {r}");
                assert!(!r.reason.contains("recursion"), "{depth}: {r}");
            }
        }
    }
    // Inside a valid event, in a field's value.
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let input =
        format!(r#"{{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":{deep}}}"#);
    let r = Event::parse(input.as_bytes()).unwrap_err();
    assert_eq!(r.to_string(), "event: nesting deeper than 64 levels");
    // Brackets in strings are not nesting.
    let text = "[".repeat(100);
    let input = format!(
        r#"{{"v":1,"id":"e","ts":5,"player":"p","kind":"chat_message","channel":"c","text":"{text}\"{{"}}"#
    );
    assert!(Event::parse(input.as_bytes()).is_ok(), "{input}");
}

/// Else the properties would be checked on little: the inputs reach both paths' answers.
#[test]
fn the_inputs_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let n = 2000;
    let (mut direct, mut serde, mut deep, mut malformed, mut field) = (0, 0, 0, 0, 0);
    for _ in 0..n {
        let input = arb_input().new_tree(&mut runner).unwrap().current();
        match Event::parse(&input) {
            Ok(_) if super::plain::decode(&input).is_some() => direct += 1,
            Ok(_) => serde += 1,
            Err(r) if r.reason.starts_with("nesting deeper") => deep += 1,
            Err(r) if r.reason.starts_with("malformed json") => malformed += 1,
            Err(r) if r.field != "event" => field += 1,
            Err(_) => {}
        }
    }
    let outcomes = [direct, serde, deep, malformed, field];
    assert!(outcomes.iter().all(|&k| k > n / 20), "{outcomes:?} of {n}");
}
