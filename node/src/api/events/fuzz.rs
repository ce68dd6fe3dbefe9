//! Fuzz target of the body splitter (the harness is `crate::fuzz`): request bodies of
//! `POST /v1/events` through [`split_body`], each event it yields through the decoder's
//! target (`event::fuzz`).
//!
//! Bodies: NDJSON of valid and broken events between every kind of line break (`\n`,
//! `\r\n`, a lone `\r`, blank and whitespace-only lines); JSON arrays of them with
//! whitespace, a trailing comma, or cut short; bodies of many tiny events around the limit
//! of events; nesting up to 10,000 levels; arbitrary bytes; all of them sometimes with
//! bytes edited. Properties, for every body and limit of events:
//! - splitting never panics and allocates for at most the limit of events (plus a scratch
//!   byte per level of nesting), however many events the body has;
//! - it answers as a plain model does: NDJSON's non-blank lines without their line break;
//!   an array's elements as serde_json reads them; a refusal (field `body`) for an empty
//!   or malformed body, and for more events than the limit, naming the count and limit;
//! - every event it yields is part of the body and satisfies the decoder's properties.
//!
//! Not for: the HTTP answers to these bodies (node/tests/limits.rs).

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseResult;
use serde_json::value::RawValue;

use super::{split_body, Refused};
use crate::event::fuzz::{arb_input, arb_valid_event, check_decoder};
use crate::fuzz::{self, apply_byte_edits, arb_byte_edits, arb_nesting, Input};

/// What may stand between two NDJSON lines (a lone `\r` does not end a line).
const BREAKS: &[&str] = &[
    "\n", "\n", "\r\n", "\n\n", "\r\n\r\n", "\n \t\n", "\r", "\n\r\n",
];

/// Limits of events per request a body is split under.
const LIMITS: &[usize] = &[1, 2, 3, 10, 20];

/// An event of a body: valid, or any decoder input without line breaks (those would make
/// it several NDJSON lines; bodies with them come from the byte edits).
fn arb_item() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arb_valid_event(),
        arb_input().prop_map(|mut b| {
            b.retain(|&c| c != b'\n');
            b
        }),
    ]
}

fn arb_ndjson() -> impl Strategy<Value = Vec<u8>> {
    let items = prop::collection::vec(arb_item(), 0..12);
    let breaks = prop::collection::vec(select(BREAKS), 13);
    (items, breaks).prop_map(|(items, breaks)| {
        let mut body = breaks[0].as_bytes().to_vec();
        for (i, item) in items.iter().enumerate() {
            body.extend_from_slice(item);
            body.extend_from_slice(breaks[i + 1].as_bytes());
        }
        body
    })
}

/// An array, mostly of valid events: one broken element makes the whole body malformed.
fn arb_array() -> impl Strategy<Value = Vec<u8>> {
    let item = prop_oneof![3 => arb_valid_event(), 1 => arb_item()];
    let items = prop::collection::vec(item, 0..12);
    let ws = select(&["", "", " ", "\n", "\r\n", "\t"][..]);
    (
        items,
        ws,
        any::<bool>(),
        any::<prop::sample::Index>(),
        0..4u8,
    )
        .prop_map(|(items, ws, trailing_comma, cut_at, cut)| {
            let items: Vec<String> = items
                .iter()
                .map(|i| format!("{ws}{}{ws}", String::from_utf8_lossy(i)))
                .collect();
            let comma = if trailing_comma { "," } else { "" };
            let body = format!("{ws}[{}{comma}]{ws}", items.join(",")).into_bytes();
            match cut {
                0 => body[..cut_at.index(body.len() + 1)].to_vec(),
                _ => body,
            }
        })
}

/// Many tiny events, near the limits: `1`, `{}` or `[]` (not events, but events by count).
fn arb_many() -> impl Strategy<Value = Vec<u8>> {
    (select(&["1", "{}", "[]"][..]), 0..25usize, any::<bool>()).prop_map(|(item, n, array)| {
        let items = vec![item; n];
        if array {
            format!("[{}]", items.join(","))
        } else {
            items.join("\n")
        }
        .into_bytes()
    })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        4 => arb_ndjson(),
        4 => arb_array(),
        2 => arb_many(),
        1 => arb_nesting(),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];
    let edits = prop_oneof![3 => Just(Vec::new()), 1 => arb_byte_edits(3)];
    (body, edits).prop_map(|(body, edits)| apply_byte_edits(body, &edits))
}

/// The splitter as a plain model: what it must answer.
fn model(body: &[u8], max: usize) -> Result<Vec<Vec<u8>>, Refused> {
    use crate::event::Rejection;
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        let reason = "empty body: send a json array or ndjson";
        return Err(Refused::Malformed(Rejection::new("body", reason)));
    };
    let items: Vec<Vec<u8>> = if body[start] == b'[' {
        match serde_json::from_slice::<Vec<&RawValue>>(body) {
            Ok(items) => items.iter().map(|r| r.get().as_bytes().to_vec()).collect(),
            Err(e) => {
                let reason = format!("malformed json array: {e}");
                return Err(Refused::Malformed(Rejection::new("body", reason)));
            }
        }
    } else {
        let text = body.split(|&b| b == b'\n');
        let lines = text.map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec());
        lines.filter(|l| !l.trim_ascii().is_empty()).collect()
    };
    if items.len() > max {
        let reason = format!(
            "{} events, more than the limit of {max} per request",
            items.len()
        );
        return Err(Refused::TooMany(Rejection::new("body", reason)));
    }
    Ok(items)
}

/// The properties of the module doc, for one body and limit.
fn check_split(body: &[u8], max: usize) -> TestCaseResult {
    let (split, peak) = fuzz::peak_allocation(|| split_body(body, max));
    // Room for `max` slices twice over (a vector's growth), a scratch byte per level of
    // nesting (doubling too) and an error message.
    let bound = 2 * max * std::mem::size_of::<&[u8]>() + 2 * body.len() + 4096;
    prop_assert!(peak <= bound, "{peak} bytes allocated, more than {bound}");
    let model = model(body, max);
    let split_owned = split
        .as_ref()
        .map(|items| items.iter().map(|i| i.to_vec()).collect::<Vec<_>>());
    match (&split_owned, &model) {
        (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
        (Err(got), Err(want)) => prop_assert_eq!(*got, want),
        _ => prop_assert!(false, "split {:?}, the model {:?}", split_owned, model),
    }
    let Ok(items) = split else { return Ok(()) };
    let range = body.as_ptr_range();
    for item in items {
        let inside = range.contains(&item.as_ptr()) && item.len() <= body.len();
        prop_assert!(inside, "an event not taken from the body");
        prop_assert!(!item.trim_ascii().is_empty(), "a blank event");
        check_decoder(item)?;
    }
    Ok(())
}

#[test]
#[ignore = "a fuzz target: make fuzz-quick (part of make test), or make fuzz"]
fn fuzz_body_splitter() {
    let cases = (arb_body().prop_map(Input), select(LIMITS));
    fuzz::run("fuzz_body_splitter", cases, |(body, max)| {
        check_split(&body.0, max)
    });
}

/// Else the properties would be checked on little: the bodies reach every answer.
#[test]
fn the_bodies_reach_every_answer() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let n = 2000;
    let (mut ndjson, mut array, mut too_many, mut malformed) = (0, 0, 0, 0);
    for _ in 0..n {
        let (body, max) = (arb_body(), select(LIMITS))
            .new_tree(&mut runner)
            .unwrap()
            .current();
        match split_body(&body, max) {
            Ok(items) if items.is_empty() => {}
            Ok(_) if body.trim_ascii_start().starts_with(b"[") => array += 1,
            Ok(_) => ndjson += 1,
            Err(Refused::TooMany(_)) => too_many += 1,
            Err(Refused::Malformed(_)) => malformed += 1,
        }
    }
    let answers = [ndjson, array, too_many, malformed];
    assert!(answers.iter().all(|&k| k > n / 20), "{answers:?} of {n}");
}
