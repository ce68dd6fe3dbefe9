//! A direct decoder for valid events in the plain shape every producer writes: one flat
//! JSON object with exactly the envelope and the fields of its kind, whose strings have no
//! escapes and whose numbers are non-negative integers. It builds the same [`Event`] serde
//! would, in about 40% of the time (`benches/decode.rs`): no per-field visitor calls, no
//! intermediate struct, no second pass over the bytes to check UTF-8.
//!
//! Anything else (an escape, a `null`, a float, a negative or overflowing number, an
//! unknown, missing or repeated field, another version, a syntax error) makes it give up
//! with `None`, and the event takes serde's path, which accepts and rejects exactly as
//! before. So this decoder never rejects anything; it only takes the common case off
//! serde's hands. Rules serde cannot express are still checked by [`Event::validate`].
//!
//! Not for: rejections, which come from serde's path and `Wire::into_event`.

use super::{Event, EventBody, Id, EVENT_VERSION};

/// The fields of an event, in the order of the bits that mark them.
#[derive(Clone, Copy)]
enum Field {
    V,
    Id,
    Ts,
    Player,
    Kind,
    MatchId,
    Kills,
    Deaths,
    SurvivalSecs,
    Placement,
    Item,
    Amount,
    Currency,
    Level,
    Achievement,
    Channel,
    Text,
    From,
    To,
}
const FIELDS: usize = Field::To as usize + 1;

impl Field {
    fn of(key: &str) -> Option<Field> {
        Some(match key {
            "v" => Field::V,
            "id" => Field::Id,
            "ts" => Field::Ts,
            "player" => Field::Player,
            "kind" => Field::Kind,
            "match_id" => Field::MatchId,
            "kills" => Field::Kills,
            "deaths" => Field::Deaths,
            "survival_secs" => Field::SurvivalSecs,
            "placement" => Field::Placement,
            "item" => Field::Item,
            "amount" => Field::Amount,
            "currency" => Field::Currency,
            "level" => Field::Level,
            "achievement" => Field::Achievement,
            "channel" => Field::Channel,
            "text" => Field::Text,
            "from" => Field::From,
            "to" => Field::To,
            _ => return None,
        })
    }

    /// Whether the value is a number (else a string).
    fn numeric(self) -> bool {
        use Field::*;
        matches!(
            self,
            V | Ts | Kills | Deaths | SurvivalSecs | Placement | Amount | Level
        )
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The fields' values as read: strings borrowed from the input, numbers as u64.
struct Fields<'a> {
    seen: u32,
    strings: [&'a str; FIELDS],
    numbers: [u64; FIELDS],
}

impl<'a> Fields<'a> {
    fn str(&self, f: Field) -> &'a str {
        self.strings[f as usize]
    }
    fn id(&self, f: Field) -> Id {
        Id::from(self.str(f))
    }
    fn u32(&self, f: Field) -> Option<u32> {
        self.numbers[f as usize].try_into().ok()
    }
}

/// Decodes `bytes` if they are a valid event in the plain shape, or gives up with `None`.
/// Also says whether every byte of every string was printable ASCII (then no id can hold a
/// control character, and [`Event::validate`] need not look for one).
pub(super) fn decode(bytes: &[u8]) -> Option<(Event, bool)> {
    let mut s = Scan {
        b: bytes,
        i: 0,
        printable: true,
    };
    let mut f = Fields {
        seen: 0,
        strings: [""; FIELDS],
        numbers: [0; FIELDS],
    };
    s.expect(b'{')?;
    loop {
        let field = Field::of(s.string()?)?;
        s.expect(b':')?;
        if f.seen & field.bit() != 0 {
            return None; // repeated: serde names it
        }
        f.seen |= field.bit();
        if field.numeric() {
            f.numbers[field as usize] = s.uint()?;
        } else {
            f.strings[field as usize] = s.string()?;
        }
        match s.peek()? {
            b',' => s.i += 1,
            b'}' => {
                s.i += 1;
                break;
            }
            _ => return None,
        }
    }
    // Only whitespace may follow the object.
    s.skip_ws();
    if s.i != bytes.len() {
        return None;
    }
    Some((build(&f)?, s.printable))
}

/// The event `f` holds, if it has exactly the envelope and its kind's fields.
fn build(f: &Fields) -> Option<Event> {
    use Field::*;
    let envelope = V.bit() | Id.bit() | Ts.bit() | Player.bit() | Kind.bit();
    let exactly = |fields: &[Field]| {
        let want = fields.iter().fold(envelope, |m, f| m | f.bit());
        (f.seen == want).then_some(())
    };
    if f.seen & envelope != envelope || f.numbers[V as usize] != u64::from(EVENT_VERSION) {
        return None;
    }
    // Kinds whose only field is one id.
    let one_id = |field: Field, body: fn(super::Id) -> EventBody| {
        exactly(&[field]).map(|()| body(f.id(field)))
    };
    let body = match f.str(Kind) {
        "session_start" => exactly(&[]).map(|()| EventBody::SessionStart {})?,
        "session_end" => exactly(&[]).map(|()| EventBody::SessionEnd {})?,
        "match_start" => one_id(MatchId, |match_id| EventBody::MatchStart { match_id })?,
        "match_end" => {
            exactly(&[MatchId, Kills, Deaths, SurvivalSecs, Placement])?;
            EventBody::MatchEnd {
                match_id: f.id(MatchId),
                kills: f.u32(Kills)?,
                deaths: f.u32(Deaths)?,
                survival_secs: f.u32(SurvivalSecs)?,
                placement: f.u32(Placement)?,
            }
        }
        "purchase" => {
            exactly(&[Item, Amount, Currency])?;
            EventBody::Purchase {
                item: f.id(Item),
                amount: f.numbers[Amount as usize],
                currency: f.id(Currency),
            }
        }
        "level_up" => {
            exactly(&[Level])?;
            EventBody::LevelUp {
                level: f.u32(Level)?,
            }
        }
        "achievement" => one_id(Achievement, |achievement| EventBody::Achievement {
            achievement,
        })?,
        "chat_message" => {
            exactly(&[Channel, Text])?;
            EventBody::ChatMessage {
                channel: f.id(Channel),
                text: f.str(Text).to_string(),
            }
        }
        "follow" => one_id(Channel, |channel| EventBody::Follow { channel })?,
        "viewer_join" => one_id(Channel, |channel| EventBody::ViewerJoin { channel })?,
        "viewer_leave" => one_id(Channel, |channel| EventBody::ViewerLeave { channel })?,
        "viewer_switch" => {
            exactly(&[From, To])?;
            EventBody::ViewerSwitch {
                from: f.id(From),
                to: f.id(To),
            }
        }
        "viewer_heartbeat" => one_id(Channel, |channel| EventBody::ViewerHeartbeat { channel })?,
        _ => return None,
    };
    Some(Event {
        v: EVENT_VERSION,
        id: f.id(Id),
        ts: f.numbers[Ts as usize].try_into().ok()?,
        player: f.id(Player),
        body,
    })
}

/// The bytes of `word` (eight input bytes, little-endian) where a plain string stops: a
/// quote, a backslash, a control character, DEL or a byte of a multi-byte character. The
/// high bit of each such byte is set; above the lowest one, others may be set spuriously
/// (a borrow), so only the lowest is meaningful.
fn stops(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set where a byte is below n (n <= 0x80), lowest such byte exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word ^ (ONES * 0x7f), 1)
        | below(word, 0x20)
        | (word & HIGH)
}

/// A cursor over the input.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// No string so far had a byte outside printable ASCII (0x20-0x7e).
    printable: bool,
}

impl<'a> Scan<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace, left in place.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string without escapes or C0 control characters, borrowed from the input. Only its
    /// bytes are checked for UTF-8, and only when one of them is not ASCII. Printable
    /// bytes are skipped eight at a time.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let (b, start) = (self.b, self.i);
        let mut i = start;
        let mut printable = true;
        loop {
            if let Some(word) = b.get(i..i + 8) {
                let stops = stops(u64::from_le_bytes(word.try_into().expect("8 bytes")));
                if stops == 0 {
                    i += 8;
                    continue;
                }
                i += stops.trailing_zeros() as usize / 8;
            }
            match *b.get(i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                0x7f.. => printable = false,
                _ => {}
            }
            i += 1;
        }
        self.i = i + 1;
        let raw = &b[start..i];
        if printable {
            // SAFETY: every byte of `raw` is below 0x7f, and ASCII is valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(raw) })
        } else {
            self.printable = false;
            std::str::from_utf8(raw).ok()
        }
    }

    /// A non-negative integer in JSON's form (no leading zero, no fraction or exponent)
    /// that fits a u64.
    fn uint(&mut self) -> Option<u64> {
        self.skip_ws();
        let start = self.i;
        let mut n = 0u64;
        while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
            n = n.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.len() > 19 {
            // Only now can it have overflowed: count again, checking.
            n = digits.iter().try_fold(0u64, |n, c| {
                n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            })?;
        }
        let leading_zero = digits.len() > 1 && digits[0] == b'0';
        let fraction = matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'));
        (!digits.is_empty() && !leading_zero && !fraction).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::KINDS;
    use super::*;
    use proptest::prelude::*;

    fn one_of_each_kind() -> Vec<Event> {
        let body = |k: &str| match k {
            "session_start" => EventBody::SessionStart {},
            "session_end" => EventBody::SessionEnd {},
            "match_start" => EventBody::MatchStart {
                match_id: "m-1".into(),
            },
            "match_end" => EventBody::MatchEnd {
                match_id: "m-1".into(),
                kills: 7,
                deaths: 0,
                survival_secs: 4_000_000_000,
                placement: 1,
            },
            "purchase" => EventBody::Purchase {
                item: "sword of ünïcode".into(),
                amount: u64::MAX,
                currency: "EUR".into(),
            },
            "level_up" => EventBody::LevelUp { level: 10 },
            "achievement" => EventBody::Achievement {
                achievement: "first-blood".into(),
            },
            "chat_message" => EventBody::ChatMessage {
                channel: "c1".into(),
                text: "gg wp, quite a long message that does not fit inline".into(),
            },
            "follow" => EventBody::Follow {
                channel: "c1".into(),
            },
            "viewer_join" => EventBody::ViewerJoin {
                channel: "c1".into(),
            },
            "viewer_leave" => EventBody::ViewerLeave {
                channel: "c1".into(),
            },
            "viewer_switch" => EventBody::ViewerSwitch {
                from: "c1".into(),
                to: "c2".into(),
            },
            "viewer_heartbeat" => EventBody::ViewerHeartbeat {
                channel: "c2".into(),
            },
            other => panic!("no sample for {other}"),
        };
        KINDS
            .iter()
            .map(|k| Event {
                v: 1,
                id: "loadtest-e123456789".into(),
                ts: 1_700_000_000_000,
                player: "loadtest-p42".into(),
                body: body(k),
            })
            .collect()
    }

    #[test]
    fn every_kind_as_producers_write_it_takes_the_direct_path() {
        for e in one_of_each_kind() {
            let json = e.to_json();
            let (direct, printable) = decode(&json)
                .unwrap_or_else(|| panic!("gave up on {}", String::from_utf8_lossy(&json)));
            assert_eq!(direct, e);
            assert_eq!(printable, !json.iter().any(|&b| b >= 0x7f));
            assert_eq!(Event::parse(&json).unwrap(), e);
        }
        // Whitespace between tokens, fields in any order.
        let spaced = b" {\n \"kind\" : \"level_up\" ,\t\"level\":3, \"player\":\"p\",\"ts\":5,\"id\":\"e\",\"v\":1 }\r\n";
        let (direct, _) = decode(spaced).expect("plain, with whitespace");
        assert_eq!(direct.body, EventBody::LevelUp { level: 3 });
    }

    #[test]
    fn gives_up_on_what_only_serde_may_judge() {
        let base = r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3}"#;
        assert!(decode(base.as_bytes()).is_some());
        for bad in [
            r#"{"v":1,"id":"e","ts":5,"player":"p\u0041","kind":"level_up","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":null}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3.0}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3e2}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":03}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":-3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":4294967296}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":"3"}"#,
            r#"{"v":1,"id":"e","ts":-5,"player":"p","kind":"level_up","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3,"level":4}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3,"extra":1}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3,}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3} x"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3}}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","le\u0076el":3}"#,
            "{\"v\":1,\"id\":\"e\",\"ts\":5,\"player\":\"p\tq\",\"kind\":\"level_up\",\"level\":3}",
            r#"{"v":2,"id":"e","ts":5,"player":"p","kind":"level_up","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up"}"#,
            r#"{"v":1,"id":"e","ts":5,"kind":"level_up","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"session_start","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"dance","level":3}"#,
            r#"{"v":1,"id":"e","ts":5,"player":"p","kind":"level_up","level":3,"item":"i"}"#,
            r#"[{"v":1}]"#,
            "{}",
            "",
        ] {
            assert!(decode(bad.as_bytes()).is_none(), "took {bad}");
        }
        // Not UTF-8 inside a string.
        let mut bytes = base.as_bytes().to_vec();
        bytes[33] = 0xff; // the player id
        assert!(decode(&bytes).is_none());
    }

    /// A valid event of some kind, as a list of fields, with 0-3 edits (a value replaced,
    /// a field added, dropped or repeated) drawn from pieces on both sides of the line,
    /// and whitespace between tokens.
    fn fragment() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "v",
            "id",
            "ts",
            "player",
            "kind",
            "match_id",
            "kills",
            "level",
            "channel",
            "text",
            "from",
            "to",
            "extra",
            "l\\u0065vel",
        ]);
        let value = prop::sample::select(vec![
            "1",
            "0",
            "2",
            "00",
            "3.5",
            "-1",
            "1e3",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "null",
            "true",
            "\"\"",
            "\"p1\"",
            "\"c2\"",
            "\"eur\"",
            "\"é\"",
            "\"a\\nb\"",
            "\"p\u{7f}\"",
            "\"p\u{85}\"",
            "\"an id well past the twenty-four bytes kept inline\"",
            "12345678901234567890",
            "99999999999999999999",
            "\"level_up\"",
            "\"match_end\"",
            "\"viewer_switch\"",
            "\"dance\"",
            "[]",
            "{}",
        ]);
        let edit = (0..4u8, key, value, any::<prop::sample::Index>());
        let ws = prop::collection::vec(prop::sample::select(vec!["", "", " ", "\n"]), 64);
        (0..KINDS.len(), prop::collection::vec(edit, 0..4), ws).prop_map(|(kind, edits, ws)| {
            let event = one_of_each_kind().swap_remove(kind);
            let serde_json::Value::Object(map) = serde_json::to_value(&event).unwrap() else {
                unreachable!("an event is an object")
            };
            let mut fields: Vec<(String, String)> =
                map.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            for (op, k, v, at) in edits {
                let at = at.index(fields.len());
                match op {
                    0 => fields[at].1 = v.to_string(),
                    1 => fields.insert(at, (k.to_string(), v.to_string())),
                    2 => drop(fields.remove(at)),
                    _ => fields.push(fields[at].clone()),
                }
            }
            let w = |i: usize| ws[i % ws.len()];
            let body: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, (k, v))| {
                    format!("{}\"{k}\"{}:{}{v}", w(3 * i), w(3 * i + 1), w(3 * i + 2))
                })
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    #[test]
    fn the_fragments_reach_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut direct, n) = (0, 2000);
        for _ in 0..n {
            let json = fragment().new_tree(&mut runner).unwrap().current();
            direct += decode(json.as_bytes()).is_some() as usize;
        }
        // Else the agreement below would compare little.
        assert!(direct > n / 10 && direct < n * 9 / 10, "{direct} of {n}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn stops_finds_the_first_byte_a_plain_string_stops_at(bytes in any::<[u8; 8]>()) {
            let first = bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b));
            let found = stops(u64::from_le_bytes(bytes));
            let found = (found != 0).then(|| found.trailing_zeros() as usize / 8);
            prop_assert_eq!(found, first);
        }

        /// Whatever the direct decoder accepts, serde decodes to the same event or the
        /// same rejection.
        #[test]
        fn agrees_with_serde_wherever_it_decodes(json in fragment()) {
            if let Some((direct, printable)) = decode(json.as_bytes()) {
                let direct = direct.check(!printable).map(|()| direct);
                prop_assert_eq!(direct, super::super::wire::parse(json.as_bytes()), "{}", json);
            }
        }

        #[test]
        fn agrees_with_serde_on_valid_events(
            kind in 0..KINDS.len(),
            id in "[a-z0-9-]{1,40}",
            player in "[a-zé]{1,30}",
            ts in 1i64..i64::MAX,
            n in any::<u32>(),
        ) {
            let mut e = one_of_each_kind().swap_remove(kind);
            e.id = id.into();
            e.player = player.into();
            e.ts = ts;
            if let EventBody::LevelUp { level } = &mut e.body {
                *level = n;
            }
            let json = e.to_json();
            let direct = decode(&json);
            prop_assert!(direct.is_some(), "{}", String::from_utf8_lossy(&json));
            prop_assert_eq!(direct.unwrap().0, e);
        }
    }
}
