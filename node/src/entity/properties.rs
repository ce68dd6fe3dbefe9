//! Property tests of the pure state transitions: the interleaving of unrelated entities
//! does not matter, replaying from a checkpoint is idempotent, and the stored form round-trips.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{apply_record, decode, encode, Channel, Entity, Player};
use crate::event::{Event, EventBody};

const TIMEOUT_MS: i64 = 60_000;

/// (entity index, channel index, kind selector, time step) per record.
type Raw = (u8, u8, u8, u32);

fn body(kind: u8, ch: u8, other: u8) -> EventBody {
    let c = |i: u8| compact_str::format_compact!("c{i}");
    match kind % 12 {
        0 => EventBody::SessionStart {},
        1 => EventBody::SessionEnd {},
        2 => EventBody::MatchEnd {
            match_id: "m".into(),
            kills: ch as u32,
            deaths: 1,
            survival_secs: 10 * kind as u32,
            placement: 1 + other as u32,
        },
        3 => EventBody::Purchase {
            item: "i".into(),
            amount: 1 + ch as u64,
            currency: ["USD", "EUR"][(other % 2) as usize].into(),
        },
        4 => EventBody::LevelUp {
            level: other as u32,
        },
        5 => EventBody::Achievement {
            achievement: "a".into(),
        },
        6 => EventBody::Follow { channel: c(ch) },
        7 | 8 => EventBody::ViewerJoin { channel: c(ch) },
        9 => EventBody::ViewerHeartbeat { channel: c(ch) },
        10 => EventBody::ViewerLeave { channel: c(ch) },
        _ => EventBody::ViewerSwitch {
            from: c(ch),
            to: c(ch + 1),
        },
    }
}

/// Records of one partition: (key, event, watermark at that record), keys from `keys`.
fn records(raw: &[Raw], channels: bool) -> Vec<(String, Event, i64)> {
    let mut ts = 1_000_000i64;
    let mut watermark = i64::MIN;
    raw.iter()
        .enumerate()
        .map(|(i, &(who, ch, kind, step))| {
            ts += step as i64;
            watermark = watermark.max(ts);
            let player = compact_str::format_compact!("p{}", who % 6);
            let b = if channels {
                // Channel topics carry joins, heartbeats, leaves and follows.
                match kind % 4 {
                    0 => EventBody::ViewerJoin {
                        channel: Default::default(),
                    },
                    1 => EventBody::ViewerHeartbeat {
                        channel: Default::default(),
                    },
                    2 => EventBody::ViewerLeave {
                        channel: Default::default(),
                    },
                    _ => EventBody::Follow {
                        channel: Default::default(),
                    },
                }
            } else {
                body(kind, ch % 4, who)
            };
            let key = if channels {
                format!("c{}", ch % 4)
            } else {
                player.to_string()
            };
            (
                key,
                Event {
                    v: 1,
                    id: compact_str::format_compact!("e{i}"),
                    ts,
                    player,
                    body: b,
                },
                watermark,
            )
        })
        .collect()
}

fn apply_all<E: Entity + Clone>(
    recs: &[(usize, &(String, Event, i64))],
) -> HashMap<String, (E, i64)> {
    let mut out: HashMap<String, (E, i64)> = HashMap::new();
    for (offset, (key, event, wm)) in recs {
        let (state, applied) = out.entry(key.clone()).or_insert_with(|| (E::default(), -1));
        apply_record(state, applied, *offset as i64, event, *wm, TIMEOUT_MS);
    }
    out
}

type Record = (String, Event, i64);
type Queue<'a> = std::collections::VecDeque<(usize, &'a Record)>;

/// Reorders records so that each key keeps its own order but keys interleave differently.
fn interleave<'a>(
    recs: &'a [(String, Event, i64)],
    picks: &[u8],
) -> Vec<(usize, &'a (String, Event, i64))> {
    let mut queues: Vec<(String, Queue<'a>)> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        match queues.iter_mut().find(|(k, _)| *k == r.0) {
            Some((_, q)) => q.push_back((i, r)),
            None => queues.push((r.0.clone(), [(i, r)].into())),
        }
    }
    let mut out = Vec::with_capacity(recs.len());
    let mut p = picks.iter().cycle();
    while out.len() < recs.len() {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].1.is_empty())
            .collect();
        let pick = live[*p.next().unwrap_or(&0) as usize % live.len()];
        out.push(queues[pick].1.pop_front().unwrap());
    }
    out
}

fn check_interleaving<E: Entity + Clone + PartialEq + std::fmt::Debug>(
    raw: &[Raw],
    picks: &[u8],
    channels: bool,
) {
    let recs = records(raw, channels);
    let in_order: Vec<_> = recs.iter().enumerate().collect();
    let a = apply_all::<E>(&in_order);
    let b = apply_all::<E>(&interleave(&recs, picks));
    assert_eq!(a, b);
}

/// Applies everything; then "restarts" from resume offset `r` with each entity stored as of
/// some offset at or after r - 1 (rows may be ahead of the resume offset after a crash
/// mid-checkpoint) and replays r..: the result must equal the uninterrupted run.
fn check_replay<E: Entity + Clone + PartialEq + std::fmt::Debug>(
    raw: &[Raw],
    resume: usize,
    ahead: &[u8],
    channels: bool,
) {
    let recs = records(raw, channels);
    let all: Vec<_> = recs.iter().enumerate().collect();
    let want = apply_all::<E>(&all);
    let r = resume % (recs.len() + 1);
    let mut keys: Vec<&String> = want.keys().collect();
    keys.sort();
    let mut stored: HashMap<String, (E, i64)> = HashMap::new();
    for (i, key) in keys.into_iter().enumerate() {
        let extra = ahead.get(i).copied().unwrap_or(0) as usize;
        let upto = (r + extra).min(recs.len()); // records [0, upto) are in the stored row
        let own: Vec<_> = all
            .iter()
            .filter(|(o, rec)| *o < upto && &rec.0 == key)
            .cloned()
            .collect();
        if let Some(s) = apply_all::<E>(&own).remove(key) {
            stored.insert(key.clone(), s);
        }
    }
    for (offset, (key, event, wm)) in &all[r..] {
        let (state, applied) = stored
            .entry(key.clone())
            .or_insert_with(|| (E::default(), -1));
        apply_record(state, applied, *offset as i64, event, *wm, TIMEOUT_MS);
    }
    assert_eq!(want, stored);
}

/// Checkpoints every channel as a stored base plus deltas taken at the `cuts`, "reloads"
/// each from that chain after record `reload`, and applies the rest: the result must equal
/// the uninterrupted run.
fn check_delta_chain(raw: &[Raw], cuts: &[u8], reload: usize) {
    let recs = records(raw, true);
    let all: Vec<_> = recs.iter().enumerate().collect();
    let want = apply_all::<Channel>(&all);
    let reload = reload % (recs.len() + 1);
    let mut live: HashMap<String, (Channel, i64)> = HashMap::new();
    // Per channel: the stored base and the deltas written after it.
    let mut chains: HashMap<String, (Vec<u8>, Vec<super::ChannelDelta>)> = HashMap::new();
    let mut cut_at = cuts.iter().map(|c| *c as usize % 8 + 1).cycle();
    let mut next_cut = cut_at.next().unwrap_or(1);
    for (offset, (key, event, wm)) in &all {
        let (state, applied) = live
            .entry(key.clone())
            .or_insert_with(|| (Channel::default(), -1));
        apply_record(state, applied, *offset as i64, event, *wm, TIMEOUT_MS);
        if *offset + 1 == next_cut.min(recs.len()) || *offset + 1 == reload {
            next_cut += cut_at.next().unwrap_or(1);
            for (k, (c, _)) in live.iter_mut() {
                match chains.get_mut(k) {
                    Some((_, deltas)) => deltas.push(c.take_delta()),
                    None => {
                        c.clear_changes();
                        chains.insert(k.clone(), (encode(c), Vec::new()));
                    }
                }
            }
        }
        if *offset + 1 == reload {
            for (k, (base, deltas)) in &chains {
                let mut c: Channel = decode(base).unwrap();
                for d in deltas {
                    c.apply_delta(d.clone());
                }
                c.rebuild_expiry();
                let applied = live[k].1;
                live.insert(k.clone(), (c, applied));
            }
        }
    }
    assert_eq!(want, live);
}

fn raw_stream() -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (any::<u8>(), any::<u8>(), any::<u8>(), 0u32..40_000),
        1..200,
    )
}

proptest! {
    #[test]
    fn player_order_of_unrelated_entities_does_not_matter(raw in raw_stream(), picks in prop::collection::vec(any::<u8>(), 1..64)) {
        check_interleaving::<Player>(&raw, &picks, false);
    }

    #[test]
    fn channel_order_of_unrelated_entities_does_not_matter(raw in raw_stream(), picks in prop::collection::vec(any::<u8>(), 1..64)) {
        check_interleaving::<Channel>(&raw, &picks, true);
    }

    #[test]
    fn player_replay_from_checkpoint_is_idempotent(raw in raw_stream(), resume in any::<usize>(), ahead in prop::collection::vec(0u8..50, 0..8)) {
        check_replay::<Player>(&raw, resume, &ahead, false);
    }

    #[test]
    fn channel_replay_from_checkpoint_is_idempotent(raw in raw_stream(), resume in any::<usize>(), ahead in prop::collection::vec(0u8..50, 0..8)) {
        check_replay::<Channel>(&raw, resume, &ahead, true);
    }

    #[test]
    fn channel_rebuilt_from_base_and_deltas_continues_identically(raw in raw_stream(), cuts in prop::collection::vec(any::<u8>(), 1..16), reload in any::<u16>()) {
        check_delta_chain(&raw, &cuts, reload as usize);
    }

    #[test]
    fn stored_form_round_trips(raw in raw_stream()) {
        for (key, (p, _)) in apply_all::<Player>(&records(&raw, false).iter().enumerate().collect::<Vec<_>>()) {
            prop_assert_eq!(&decode::<Player>(&encode(&p)).unwrap(), &p, "player {}", key);
        }
        for (key, (c, _)) in apply_all::<Channel>(&records(&raw, true).iter().enumerate().collect::<Vec<_>>()) {
            prop_assert_eq!(&decode::<Channel>(&encode(&c)).unwrap(), &c, "channel {}", key);
        }
    }
}
