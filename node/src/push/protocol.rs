//! The messages a WebSocket client sends (docs/API.md, "Push"), parsed into commands with
//! errors that name the field at fault.
//!
//! Not for: running the session (see `api::push`).

use serde_json::Value;

use crate::shard::TopBy;

/// The most channels a top-N subscription may ask for (as `GET /v1/channels/top`).
pub const MAX_TOP_LIMIT: usize = 1000;
const DEFAULT_TOP_LIMIT: usize = 10;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Player(String),
    Channel(String),
    Top { by: TopByName, limit: usize },
    Cluster,
}

/// A top-N ordering with its API name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopByName {
    Concurrent,
    Peak,
    Follows,
}

impl TopByName {
    pub fn parse(name: &str) -> Option<TopByName> {
        match name {
            "concurrent" => Some(TopByName::Concurrent),
            "peak" => Some(TopByName::Peak),
            "follows" => Some(TopByName::Follows),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TopByName::Concurrent => "concurrent",
            TopByName::Peak => "peak",
            TopByName::Follows => "follows",
        }
    }

    pub fn by(self) -> TopBy {
        match self {
            TopByName::Concurrent => TopBy::Concurrent,
            TopByName::Peak => TopBy::Peak,
            TopByName::Follows => TopBy::Follows,
        }
    }
}

impl Target {
    /// The subscription's name in every frame: `player:<id>`, `channel:<id>`,
    /// `top:<by>:<limit>`, `cluster`.
    pub fn name(&self) -> String {
        match self {
            Target::Player(id) => format!("player:{id}"),
            Target::Channel(id) => format!("channel:{id}"),
            Target::Top { by, limit } => format!("top:{}:{limit}", by.name()),
            Target::Cluster => "cluster".into(),
        }
    }
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe(Target),
    Unsubscribe(Target),
}

/// A message the server cannot use: the field at fault and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Malformed {
    pub field: String,
    pub reason: String,
}

fn malformed(field: &str, reason: impl Into<String>) -> Malformed {
    Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks an id as [`crate::event::id_problem`] does.
pub fn check_id(field: &str, id: &str) -> Result<(), Malformed> {
    crate::event::id_problem(id).map_or(Ok(()), |why| Err(malformed(field, why)))
}

/// Parses one text message.
pub fn parse(text: &str) -> Result<Command, Malformed> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| malformed("message", format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(malformed(
            "message",
            "expected an object with \"subscribe\" or \"unsubscribe\"",
        ));
    };
    let mut found = None;
    for (key, value) in map {
        let verb = match key.as_str() {
            "subscribe" | "unsubscribe" => key,
            other => {
                return Err(malformed(
                    "message",
                    format!("unknown field {other:?}: expected \"subscribe\" or \"unsubscribe\""),
                ))
            }
        };
        if found.is_some() {
            return Err(malformed(
                "message",
                "holds both \"subscribe\" and \"unsubscribe\": send one per message",
            ));
        }
        found = Some((verb, value));
    }
    let Some((verb, value)) = found else {
        return Err(malformed(
            "message",
            "expected an object with \"subscribe\" or \"unsubscribe\"",
        ));
    };
    let target = target(&verb, &value)?;
    Ok(if verb == "subscribe" {
        Command::Subscribe(target)
    } else {
        Command::Unsubscribe(target)
    })
}

fn target(verb: &str, value: &Value) -> Result<Target, Malformed> {
    const EXPECTED: &str =
        "expected {\"player\": ID}, {\"channel\": ID}, {\"top\": {...}} or \"cluster\"";
    match value {
        Value::String(s) if s == "cluster" => return Ok(Target::Cluster),
        Value::Object(map) if map.len() == 1 => {
            let (key, inner) = map.iter().next().expect("one entry");
            let field = format!("{verb}.{key}");
            return match key.as_str() {
                "player" | "channel" => {
                    let Value::String(id) = inner else {
                        return Err(malformed(&field, "expected a string id"));
                    };
                    check_id(&field, id)?;
                    Ok(if key == "player" {
                        Target::Player(id.clone())
                    } else {
                        Target::Channel(id.clone())
                    })
                }
                "top" => top(&field, inner),
                _ => Err(malformed(
                    verb,
                    format!("unknown target {key:?}: {EXPECTED}"),
                )),
            };
        }
        _ => {}
    }
    Err(malformed(verb, EXPECTED))
}

fn top(field: &str, value: &Value) -> Result<Target, Malformed> {
    let empty = serde_json::Map::new();
    let map = match value {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => {
            return Err(malformed(
                field,
                "expected an object {\"by\": ..., \"limit\": ...}",
            ))
        }
    };
    let mut by = TopByName::Concurrent;
    let mut limit = DEFAULT_TOP_LIMIT;
    for (key, v) in map {
        match key.as_str() {
            "by" => {
                let name = v.as_str().unwrap_or_default();
                by = TopByName::parse(name).ok_or_else(|| {
                    malformed(
                        &format!("{field}.by"),
                        format!("expected \"concurrent\", \"peak\" or \"follows\", got {v}"),
                    )
                })?;
            }
            "limit" => {
                limit = v
                    .as_u64()
                    .filter(|l| (1..=MAX_TOP_LIMIT as u64).contains(l))
                    .ok_or_else(|| {
                        malformed(
                            &format!("{field}.limit"),
                            format!("expected an integer from 1 to {MAX_TOP_LIMIT}, got {v}"),
                        )
                    })? as usize;
            }
            other => {
                return Err(malformed(
                    field,
                    format!("unknown field {other:?}: expected \"by\" and \"limit\""),
                ))
            }
        }
    }
    Ok(Target::Top { by, limit })
}

#[cfg(test)]
use serde_json::json;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::TestCaseResult;

    /// Messages near the valid ones: every verb, target and field, ids at and around the
    /// bounds with every awkward character, numbers at and beyond the limits, wrong types,
    /// and bytes that are not JSON at all.
    fn arb_message() -> impl Strategy<Value = String> {
        let id = prop_oneof![
            "[a-z0-9]{1,8}",
            "[/?#%+&= .~é€\\\"\\u{0}\\u{7}\\u{1F600}]{0,12}",
            (120usize..=132).prop_map(|n| "x".repeat(n)),
            (40usize..=45).prop_map(|n| "€".repeat(n)),
            Just(String::new()),
        ];
        let number = prop_oneof![
            Just(json!(0)),
            Just(json!(1)),
            Just(json!(1000)),
            Just(json!(1001)),
            Just(json!(-1)),
            Just(json!(2.5)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(1e300)),
            Just(json!("10")),
            Just(json!(null)),
        ];
        let by = select(vec![
            json!("concurrent"),
            json!("peak"),
            json!("follows"),
            json!("views"),
            json!(7),
            json!(null),
        ]);
        let target = prop_oneof![
            id.clone().prop_map(|i| json!({"player": i})),
            id.prop_map(|i| json!({"channel": i})),
            (by, number).prop_map(|(b, l)| json!({"top": {"by": b, "limit": l}})),
            Just(json!("cluster")),
            Just(json!({"team": "x"})),
            Just(json!({"player": 1})),
            Just(json!([1, 2])),
            Just(json!({"player": "a", "channel": "b"})),
        ];
        let verb = select(vec!["subscribe", "unsubscribe", "Subscribe", "sub", ""]);
        prop_oneof![
            4 => (verb, target).prop_map(|(v, t)| json!({ v: t }).to_string()),
            1 => "\\PC{0,64}",
            1 => proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    /// Parsing never panics; a command's ids are valid; an error names a field of the
    /// message, and its text starts with that field.
    fn check_message(text: &str) -> TestCaseResult {
        match parse(text) {
            Ok(Command::Subscribe(t)) | Ok(Command::Unsubscribe(t)) => match t {
                Target::Player(id) | Target::Channel(id) => {
                    prop_assert!(check_id("id", &id).is_ok(), "{id:?}");
                }
                Target::Top { limit, .. } => prop_assert!((1..=MAX_TOP_LIMIT).contains(&limit)),
                Target::Cluster => {}
            },
            Err(e) => {
                let known = ["message", "subscribe", "unsubscribe"];
                let root = e.field.split('.').next().unwrap_or_default();
                prop_assert!(known.contains(&root), "{e}");
                prop_assert!(e.to_string().starts_with(&e.field), "{e}");
            }
        }
        Ok(())
    }

    #[test]
    #[ignore = "a fuzz target: make fuzz-quick (part of make test), or make fuzz"]
    fn fuzz_subscription_messages() {
        fuzz::run("fuzz_subscription_messages", arb_message(), |m| {
            check_message(&m)
        });
    }

    proptest! {
        #[test]
        fn subscription_messages_parse_or_name_their_field(m in arb_message()) {
            check_message(&m)?;
        }
    }

    #[test]
    fn each_documented_message_parses() {
        assert_eq!(
            parse(r#"{"subscribe": {"player": "a/b?#%é"}}"#),
            Ok(Command::Subscribe(Target::Player("a/b?#%é".into())))
        );
        assert_eq!(
            parse(r#"{"subscribe": {"channel": "c-7"}}"#),
            Ok(Command::Subscribe(Target::Channel("c-7".into())))
        );
        assert_eq!(
            parse(r#"{"subscribe": {"top": {"by": "peak", "limit": 1000}}}"#),
            Ok(Command::Subscribe(Target::Top {
                by: TopByName::Peak,
                limit: 1000
            }))
        );
        assert_eq!(
            parse(r#"{"subscribe": {"top": {}}}"#),
            Ok(Command::Subscribe(Target::Top {
                by: TopByName::Concurrent,
                limit: 10
            }))
        );
        assert_eq!(
            parse(r#"{"subscribe": "cluster"}"#),
            Ok(Command::Subscribe(Target::Cluster))
        );
        assert_eq!(
            parse(r#"{"unsubscribe": {"player": "p"}}"#),
            Ok(Command::Unsubscribe(Target::Player("p".into())))
        );
        assert_eq!(
            Target::Top {
                by: TopByName::Follows,
                limit: 3
            }
            .name(),
            "top:follows:3"
        );
    }

    #[test]
    fn a_bad_message_names_its_field() {
        let field = |text: &str| parse(text).unwrap_err().field;
        assert_eq!(field("not json"), "message");
        assert_eq!(field("[1]"), "message");
        assert_eq!(field("{}"), "message");
        assert_eq!(field(r#"{"hello": 1}"#), "message");
        assert_eq!(field(r#"{"subscribe": 1, "unsubscribe": 2}"#), "message");
        assert_eq!(field(r#"{"subscribe": "clusters"}"#), "subscribe");
        assert_eq!(field(r#"{"subscribe": {"team": "x"}}"#), "subscribe");
        assert_eq!(field(r#"{"subscribe": {"player": 7}}"#), "subscribe.player");
        assert_eq!(
            field(r#"{"subscribe": {"player": ""}}"#),
            "subscribe.player"
        );
        let long = format!(r#"{{"subscribe": {{"channel": "{}"}}}}"#, "é".repeat(65));
        let e = parse(&long).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subscribe.channel: must be 1 to 128 bytes, got 130"
        );
        assert_eq!(
            field(r#"{"subscribe": {"player": "a\u0007"}}"#),
            "subscribe.player"
        );
        assert_eq!(
            field(r#"{"subscribe": {"top": {"limit": 0}}}"#),
            "subscribe.top.limit"
        );
        assert_eq!(
            field(r#"{"subscribe": {"top": {"limit": 1001}}}"#),
            "subscribe.top.limit"
        );
        assert_eq!(
            field(r#"{"subscribe": {"top": {"limit": 2.5}}}"#),
            "subscribe.top.limit"
        );
        assert_eq!(
            field(r#"{"subscribe": {"top": {"by": "views"}}}"#),
            "subscribe.top.by"
        );
        assert_eq!(
            field(r#"{"subscribe": {"top": {"size": 1}}}"#),
            "subscribe.top"
        );
        assert_eq!(field(r#"{"unsubscribe": {"top": 5}}"#), "unsubscribe.top");
        // 128 bytes exactly is an id.
        let max = format!(r#"{{"subscribe": {{"player": "{}"}}}}"#, "x".repeat(128));
        assert!(parse(&max).is_ok());
    }
}
