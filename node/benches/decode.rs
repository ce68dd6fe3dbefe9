//! Decoding cost per event: `Event::parse` (the direct decoder for the plain shape) next to
//! serde's decode of the same bytes. Run: `cargo bench -p tally-node --bench decode`.

use std::hint::black_box;
use std::time::Instant;

use tally_node::event::Event;

/// Events as the load tester writes them: the mix of `tally-loadtest players`.
fn samples() -> Vec<Vec<u8>> {
    let kinds = [
        r#""kind":"session_start""#,
        r#""kind":"match_start","match_id":"m123456""#,
        r#""kind":"match_end","match_id":"m123456","kills":3,"deaths":1,"survival_secs":312,"placement":4"#,
        r#""kind":"purchase","item":"item-17","amount":499,"currency":"EUR""#,
        r#""kind":"level_up","level":12"#,
        r#""kind":"achievement","achievement":"ach-42""#,
        r#""kind":"chat_message","channel":"lt-c17","text":"gg wp see you next round""#,
        r#""kind":"follow","channel":"lt-c17""#,
        r#""kind":"viewer_join","channel":"lt-c17""#,
        r#""kind":"viewer_switch","from":"lt-c17","to":"lt-c3""#,
        r#""kind":"viewer_heartbeat","channel":"lt-c3""#,
        r#""kind":"session_end""#,
    ];
    (0..1200)
        .map(|i| {
            let k = kinds[i % kinds.len()];
            format!(
                r#"{{"v":1,"id":"lt-e{}","ts":{},"player":"lt-p{}",{k}}}"#,
                9_000_000 + i,
                1_700_000_000_000u64 + i as u64,
                400_000 + i * 7
            )
            .into_bytes()
        })
        .collect()
}

/// Nanoseconds per event of one pass of `f` over `rounds` x `samples`.
fn pass(rounds: usize, samples: &[Vec<u8>], f: &impl Fn(&[u8]) -> bool) -> f64 {
    let mut ok = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for s in samples {
            ok += f(black_box(s)) as usize;
        }
    }
    assert_eq!(ok, rounds * samples.len(), "every sample decodes");
    start.elapsed().as_nanos() as f64 / (rounds * samples.len()) as f64
}

fn main() {
    let samples = samples();
    let serde = |b: &[u8]| serde_json::from_slice::<Event>(b).is_ok_and(|e| e.validate().is_ok());
    let parse = |b: &[u8]| Event::parse(b).is_ok();
    // Passes alternate, and the fastest of each counts: on a shared machine the slower
    // passes measure the neighbours.
    let (mut best_serde, mut best_parse) = (f64::MAX, f64::MAX);
    for _ in 0..15 {
        best_serde = best_serde.min(pass(200, &samples, &serde));
        best_parse = best_parse.min(pass(200, &samples, &parse));
    }
    println!("serde_json + validate  {best_serde:>7.1} ns/event");
    println!("Event::parse           {best_parse:>7.1} ns/event");
    println!(
        "Event::parse takes {:.0}% of serde's time",
        100.0 * best_parse / best_serde
    );
}
