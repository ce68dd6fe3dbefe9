//! The harness of the fuzz targets: property tests over hostile input, run on stable Rust
//! with proptest, for a number of cases and a time taken from the environment, and a
//! meter of the bytes a piece of code allocates.
//!
//! The targets, each next to the code it attacks: `event::fuzz` (the event decoder, its
//! direct and serde paths), `api::events::fuzz` (the splitter of request bodies) and the
//! tests of `api::params` (query parameters and ids) and of `push::protocol` (the messages a
//! WebSocket client sends).
//!
//! Each target is an ignored test named `fuzz_*`: `make fuzz-quick` (part of `make test`)
//! runs them briefly, `make fuzz` for long. `TALLY_FUZZ_CASES` (default
//! [`QUICK_CASES`]) and `TALLY_FUZZ_SECS` (default [`QUICK_SECS`]) bound each target,
//! whichever comes first. A failure is shrunk to a small input and printed; proptest's
//! `PROPTEST_RNG_SEED` replays a run.
//!
//! Not for: the ordinary unit and property tests, which run in every `cargo test`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};

/// Cases per target when `TALLY_FUZZ_CASES` is not set: what `make fuzz-quick` runs.
pub const QUICK_CASES: u64 = 10_000;
/// Seconds per target when `TALLY_FUZZ_SECS` is not set.
pub const QUICK_SECS: u64 = 20;

/// How long each target runs: at most `cases` cases and at most `time`.
struct Budget {
    cases: u64,
    time: Duration,
}

impl Budget {
    fn from_env() -> Budget {
        let read = |name: &str, default: u64| match std::env::var(name) {
            Err(_) => default,
            Ok(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{name}: expected a whole number, got {v:?}")),
        };
        Budget {
            cases: read("TALLY_FUZZ_CASES", QUICK_CASES),
            time: Duration::from_secs(read("TALLY_FUZZ_SECS", QUICK_SECS)),
        }
    }
}

/// Checks `property` on inputs drawn from `strategy` until the budget is spent; panics
/// with the shrunk input on the first failure (a panic inside `property` is one).
pub fn run<S>(target: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget = Budget::from_env();
    // Failures are printed, not written to a regressions file next to the source.
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let mut cases = 0;
    while cases < budget.cases && started.elapsed() < budget.time {
        let input = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{target}: no input could be drawn: {e}"));
        if let Err(e) = runner.run_one(input, &property) {
            panic!("{target}: failed after {cases} cases: {e}");
        }
        cases += 1;
    }
    eprintln!(
        "{target}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// An input of bytes, shown (when a case fails) as text, cut to its start.
#[derive(Clone)]
pub struct Input(pub Vec<u8>);

impl Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:?} ({} bytes)", shown(&self.0), self.0.len())
    }
}

/// `bytes` as text for a failure's message: lossy, and cut after 2000 bytes.
pub fn shown(bytes: &[u8]) -> String {
    const SHOWN: usize = 2000;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    if bytes.len() > SHOWN {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

/// `f`'s result and the most bytes it had allocated at once (on this thread, beyond what
/// was allocated when it began).
pub fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, peak.saturating_sub(base) as usize)
}

thread_local! {
    /// Bytes this thread allocated and has not freed (negative when it frees what another
    /// thread allocated; only differences are read).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since [`peak_allocation`] reset it.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: an allocation during the thread's teardown is simply not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

/// The system allocator, counting per thread: the unit tests' global allocator.
struct Meter;

// SAFETY: every call is passed to `System` unchanged; the counting beside it touches
// only thread-local cells without destructors, which never allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation here is).
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` is `System`'s.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// JSON values at the edges of what parsers get wrong: numbers out of every range, in
/// every notation; strings with escapes, lone surrogates and control characters; tokens
/// that are not JSON; values of the wrong type.
pub const EDGE_VALUES: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "01",
    "1.0",
    "1.5",
    "1e0",
    "1E+2",
    "1e-7",
    "1e400",
    "-1e400",
    "1e99999999999999999999",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890123456789012345678901234567890",
    "0.",
    ".5",
    "1e",
    "--1",
    "+1",
    "0x10",
    "NaN",
    "Infinity",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1]",
    "{\"a\":1}",
    "[",
    "{",
    "\"\"",
    "\"\\ud800\"",
    "\"\\udc00\"",
    "\"\\ud800\\u0041\"",
    "\"\\ud800\\ud800\"",
    "\"\\ud83d\\ude00\"",
    "\"\\uD834\\uDD1E\"",
    "\"\\u0000\"",
    "\"\\u001f\"",
    "\"\\u007f\"",
    "\"\\u0085\"",
    "\"\\u00e9\"",
    "\"\\u2028\"",
    "\"\\u\"",
    "\"\\u12\"",
    "\"\\u12g4\"",
    "\"\\x41\"",
    "\"\\/\"",
    "\"a\\\"b\"",
    "\"\t\"",
    "\"\u{7f}\"",
    "\"\u{85}\"",
    "\"\u{feff}\"",
    "\"\u{10ffff}\"",
    "\"USD\"",
    "\"usd\"",
    "\"unterminated",
];

/// Byte strings spliced into inputs: structure, escapes and bytes that are not UTF-8.
pub const EDGE_BYTES: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\n",
    b"\r",
    b"\r\n",
    b"\t",
    b" ",
    b"\0",
    b"\x7f",
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"e400",
    b"99999999999999999999",
    b"null",
];

/// Depths of nesting an input is built at: around the decoder's bound, serde_json's
/// recursion limit (128), and far beyond both.
pub const DEPTHS: &[usize] = &[1, 2, 63, 64, 65, 66, 127, 128, 129, 1000, 10_000];

/// Arrays and objects nested `depth` deep, in one of several shapes, closed or not.
pub fn arb_nesting() -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(DEPTHS), 0..4u8, any::<bool>()).prop_map(|(depth, shape, closed)| {
        let (open, close): (&[u8], &[u8]) = match shape {
            0 => (b"[", b"]"),
            1 => (b"{\"a\":", b"}"),
            2 => (b"[{\"v\":", b"}]"),
            _ => (b"[\"[{\\\"\",", b"]"),
        };
        let mut out = open.repeat(depth);
        out.extend_from_slice(b"1");
        if closed {
            out.extend_from_slice(&close.repeat(depth));
        }
        out
    })
}

/// Up to `n` byte edits of an input: a byte replaced, inserted or removed, an edge token
/// spliced in, or the input cut short.
pub fn arb_byte_edits(n: usize) -> impl Strategy<Value = Vec<(u8, prop::sample::Index, u8)>> {
    prop::collection::vec((0..5u8, any::<prop::sample::Index>(), any::<u8>()), 0..=n)
}

/// `input` with `edits` (from [`arb_byte_edits`]) applied in order.
pub fn apply_byte_edits(mut input: Vec<u8>, edits: &[(u8, prop::sample::Index, u8)]) -> Vec<u8> {
    for &(op, at, byte) in edits {
        let at = at.index(input.len() + 1);
        match op {
            0 if at < input.len() => input[at] = byte,
            1 => input.insert(at, byte),
            2 if at < input.len() => drop(input.remove(at)),
            3 => {
                let token = EDGE_BYTES[usize::from(byte) % EDGE_BYTES.len()];
                input.splice(at..at, token.iter().copied());
            }
            4 => input.truncate(at),
            _ => {}
        }
    }
    input
}
