//! What a read request names besides its route: the id in its path, and its query
//! parameters (`?id=` of the entity queries; `by`, `limit` and `local` of the top-N view;
//! `local` of the cluster view). Each is decoded and bounded here, and an error names the
//! parameter (`player id` for a path segment) and quotes at most [`QUOTED`] bytes of what
//! was sent. Values are decoded as HTML forms are (`+` is a space, `%XX` a byte, then
//! UTF-8 with U+FFFD for what is not): as actix decodes a path segment, so `?id=` and the
//! path find the same id. Parameters not named here are ignored.
//!
//! A query is as long as the request head allows at most (`head`); an id is 1 to
//! [`crate::event::MAX_ID_LEN`] bytes once decoded, without control characters, `limit` 1 to [`MAX_TOP_LIMIT`].
//!
//! Not for: routing (see `api`) or putting ids into URLs (see `entity_path`).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::ApiError;
use crate::ingest::clip;
use crate::kind::ShardKind;
use crate::shard::TopBy;

/// The most bytes of a parameter's value an error quotes.
pub const QUOTED: usize = 32;
/// The most channels a top-N query may ask for.
pub const MAX_TOP_LIMIT: usize = 1000;
/// Channels a top-N query without `limit` gets.
const DEFAULT_TOP_LIMIT: usize = 10;

/// A 400 whose message names `param`.
pub(super) fn bad(param: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("{param}: {why}"))
}

/// `value` quoted for an error message, cut to [`QUOTED`] bytes.
pub(super) fn quoted(value: &str) -> String {
    format!("{:?}", clip(value, QUOTED))
}

/// `raw` decoded as a form value: `+` is a space, `%XX` a byte, UTF-8 lossily.
fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// The value of the parameter `name` in `query` (the URL's part after `?`), decoded; None
/// when it is absent. Given twice, it is an error: which one was meant is not known.
pub(super) fn param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key) != name {
            continue;
        }
        if found.is_some() {
            return Err(bad(name, "given more than once"));
        }
        found = Some(decode(value).into_owned());
    }
    Ok(found)
}

/// Checks an id taken from a path segment (already decoded by actix).
pub(super) fn path_id(kind: ShardKind, id: &str) -> Result<(), ApiError> {
    check_id(&format!("{} id", kind.entity_name()), id)
}

fn check_id(name: &str, id: &str) -> Result<(), ApiError> {
    crate::event::id_problem(id).map_or(Ok(()), |why| Err(bad(name, why)))
}

/// The id of `?id=`: the form for ids a path segment cannot carry (`.`, `..`, the
/// channel `top`), good for every id.
pub(super) fn query_id(kind: ShardKind, query: &str) -> Result<String, ApiError> {
    let path = kind.api_path();
    let id = param(query, "id")?.ok_or_else(|| {
        bad(
            "id",
            format!("missing: query {path}/{{id}} or {path}?id={{id}}"),
        )
    })?;
    check_id("id", &id)?;
    Ok(id)
}

/// A top-N query's parameters.
#[derive(Debug, PartialEq)]
pub(super) struct Top {
    pub by: TopBy,
    /// `by` as named in the API (and in the query nodes send each other).
    pub by_name: &'static str,
    pub limit: usize,
    /// `local=1`: only this node's shards (what nodes ask each other).
    pub local: bool,
}

/// Parses `by`, `limit` and `local` of a top-N query.
pub(super) fn top(query: &str) -> Result<Top, ApiError> {
    let (by, by_name) = match param(query, "by")?.as_deref() {
        None | Some("concurrent") => (TopBy::Concurrent, "concurrent"),
        Some("peak") => (TopBy::Peak, "peak"),
        Some("follows") => (TopBy::Follows, "follows"),
        Some(other) => {
            let why = format!(
                "unknown ordering {}, expected concurrent, peak or follows",
                quoted(other)
            );
            return Err(bad("by", why));
        }
    };
    let limit = match param(query, "limit")? {
        None => DEFAULT_TOP_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP_LIMIT).contains(&n) => n,
            _ => {
                let why = format!(
                    "expected an integer from 1 to {MAX_TOP_LIMIT}, got {}",
                    quoted(&s)
                );
                return Err(bad("limit", why));
            }
        },
    };
    Ok(Top {
        by,
        by_name,
        limit,
        local: local(query)?,
    })
}

/// The entity of `GET /v1/stream`: `?player=<id>` or `?channel=<id>`, exactly one.
pub(super) fn stream_target(query: &str) -> Result<(ShardKind, String), ApiError> {
    let player = param(query, "player")?;
    let channel = param(query, "channel")?;
    let (kind, name, id) = match (player, channel) {
        (Some(id), None) => (ShardKind::Players, "player", id),
        (None, Some(id)) => (ShardKind::Channels, "channel", id),
        (Some(_), Some(_)) => {
            return Err(bad("player", "give player or channel, not both"));
        }
        (None, None) => return Err(bad("player", "missing: give ?player=<id> or ?channel=<id>")),
    };
    check_id(name, &id)?;
    Ok((kind, id))
}

/// `local=1` of the cluster and top-N views; any other value is the whole cluster.
pub(super) fn local(query: &str) -> Result<bool, ApiError> {
    Ok(param(query, "local")?.as_deref() == Some("1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MAX_ID_LEN;
    use crate::fuzz::{self, Input};
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::TestCaseResult;

    #[test]
    fn a_stream_names_one_entity_by_query() {
        let of = |q: &str| stream_target(q).map_err(|e| e.to_string());
        assert_eq!(
            of("player=a%2Fb+c"),
            Ok((ShardKind::Players, "a/b c".into()))
        );
        assert_eq!(of("channel=top"), Ok((ShardKind::Channels, "top".into())));
        assert_eq!(of("channel=.."), Ok((ShardKind::Channels, "..".into())));
        assert_eq!(
            of("player=a&channel=b"),
            Err("player: give player or channel, not both".into())
        );
        assert!(of("").unwrap_err().starts_with("player: missing"));
        assert!(of("player=")
            .unwrap_err()
            .starts_with("player: must be 1 to 128 bytes"));
        let long = format!("channel={}", "x".repeat(129));
        assert_eq!(
            of(&long),
            Err("channel: must be 1 to 128 bytes, got 129".into())
        );
        assert_eq!(
            of("player=a&player=b"),
            Err("player: given more than once".into())
        );
    }

    #[test]
    fn top_parameters_are_checked_and_named() {
        let top_of = |q: &str| top(q).map_err(|e| e.to_string());
        let t = top_of("").unwrap();
        assert_eq!(
            (t.by, t.by_name, t.limit, t.local),
            (TopBy::Concurrent, "concurrent", 10, false)
        );
        let t = top_of("by=peak&limit=3&local=1").unwrap();
        assert_eq!((t.by, t.limit, t.local), (TopBy::Peak, 3, true));
        assert_eq!(top_of("limit=1000").unwrap().limit, 1000);
        for (query, error) in [
            (
                "by=loud",
                r#"by: unknown ordering "loud", expected concurrent, peak or follows"#,
            ),
            (
                "limit=0",
                r#"limit: expected an integer from 1 to 1000, got "0""#,
            ),
            (
                "limit=1001",
                r#"limit: expected an integer from 1 to 1000, got "1001""#,
            ),
            (
                "limit=ten",
                r#"limit: expected an integer from 1 to 1000, got "ten""#,
            ),
            ("limit=1&limit=2", "limit: given more than once"),
            ("by=peak&%62y=peak", "by: given more than once"),
            ("local=1&local=1", "local: given more than once"),
        ] {
            assert_eq!(top_of(query).unwrap_err(), error, "{query}");
        }
        // What an error quotes is cut.
        let long = format!("limit={}", "9".repeat(10_000));
        let e = top_of(&long).unwrap_err();
        assert_eq!(
            e,
            format!(
                r#"limit: expected an integer from 1 to 1000, got "{}…""#,
                "9".repeat(29)
            )
        );
    }

    #[test]
    fn ids_in_the_query_are_decoded_and_bounded_naming_the_parameter() {
        let id_of = |q: &str| query_id(ShardKind::Players, q).map_err(|e| e.to_string());
        assert_eq!(id_of("id=..").unwrap(), "..");
        assert_eq!(id_of("id=a%2Fb%231+c%2B").unwrap(), "a/b#1 c+");
        assert_eq!(id_of("x=1&%69d=%C3%A9&y").unwrap(), "é");
        assert_eq!(id_of(&format!("id={}", "é".repeat(64))).unwrap().len(), 128);
        assert_eq!(id_of("id=%FF").unwrap(), "\u{fffd}");
        for (query, error) in [
            (
                "",
                "id: missing: query /v1/players/{id} or /v1/players?id={id}",
            ),
            ("id=", "id: must be 1 to 128 bytes, got 0"),
            ("id", "id: must be 1 to 128 bytes, got 0"),
            ("id=a&id=b", "id: given more than once"),
            ("id=a%00b", "id: must not hold control characters"),
            ("id=%0A", "id: must not hold control characters"),
            ("id=%C2%85", "id: must not hold control characters"),
        ] {
            assert_eq!(id_of(query).unwrap_err(), error, "{query:?}");
        }
        let e = id_of(&format!("id={}", "%C3%A9".repeat(64) + "x")).unwrap_err();
        assert_eq!(e, "id: must be 1 to 128 bytes, got 129");
        let e = path_id(ShardKind::Channels, &"c".repeat(129))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "channel id: must be 1 to 128 bytes, got 129");
        let e = path_id(ShardKind::Players, "a\tb").unwrap_err().to_string();
        assert_eq!(e, "player id: must not hold control characters");
        assert!(path_id(ShardKind::Players, "\u{fffd} é/..").is_ok());
    }

    /// Keys a query is built from: the parameters, spelled plainly and encoded, and others.
    const KEYS: &[&str] = &[
        "id", "id", "by", "limit", "local", "%69d", "l%69mit", "ID", "", "x", "id+", "by%00",
    ];

    /// Values: ids at the length limit (in bytes once decoded) and around it, encodings
    /// whole and broken, numbers and orderings at and beyond their bounds.
    fn arb_value() -> impl Strategy<Value = String> {
        let edge = select(
            &[
                "",
                "%",
                "%F",
                "%FF",
                "%C3%A9",
                "%C3",
                "+",
                "%2B",
                "%00",
                "%25",
                "a+b",
                "é",
                "%26",
                "%3D",
                "0",
                "1",
                "1000",
                "1001",
                "-1",
                "+5",
                "0001",
                "1e3",
                "18446744073709551616",
                "concurrent",
                "peak",
                "follows",
                "PEAK",
                "peak%00",
            ][..],
        )
        .prop_map(String::from);
        let id = (
            select(&[0usize, 1, 127, 128, 129, 1000][..]),
            select(&["a", "é", "%41", "%C3%A9", "+", "%"][..]),
        )
            .prop_map(|(len, unit)| unit.repeat(len));
        let long = select(&["9", "x", "%", "&"][..]).prop_map(|c| c.repeat(20_000));
        prop_oneof![4 => edge, 4 => id, 1 => long]
    }

    fn arb_query() -> impl Strategy<Value = String> {
        let pair = (select(KEYS), select(&["=", "=", "", "=="][..]), arb_value())
            .prop_map(|(k, eq, v)| format!("{k}{eq}{v}"));
        let pairs = (
            prop::collection::vec(pair, 0..6),
            select(&["&", "&", "&&", ";"][..]),
        )
            .prop_map(|(pairs, sep)| pairs.join(sep));
        prop_oneof![4 => pairs, 1 => any::<String>()]
    }

    /// The parameters of `query` as the `url` crate (WHATWG's form parser) reads them;
    /// None where it would read another query than the one given.
    fn model(query: &str) -> Option<Vec<(String, String)>> {
        if query.contains(['#', '\t', '\n', '\r']) {
            return None;
        }
        let url = reqwest::Url::parse(&format!("http://h/?{query}")).ok()?;
        Some(url.query_pairs().into_owned().collect())
    }

    /// The values of `name` among `pairs`.
    fn values(pairs: &Option<Vec<(String, String)>>, name: &str) -> Option<Vec<String>> {
        let pairs = pairs.as_ref()?.iter().filter(|(k, _)| k == name);
        Some(pairs.map(|(_, v)| v.clone()).collect())
    }

    /// An error names `param` first and is short, whatever was sent.
    fn check_error(e: &ApiError, param: &str) -> TestCaseResult {
        let text = e.to_string();
        prop_assert!(matches!(e, ApiError::BadRequest(_)), "{:?}", e);
        prop_assert!(text.starts_with(&format!("{param}: ")), "{}", text);
        prop_assert!(text.len() <= 200, "{} bytes: {}", text.len(), text);
        Ok(())
    }

    fn check_query(query: &str) -> TestCaseResult {
        let pairs = model(query);
        let ids = values(&pairs, "id");
        match query_id(ShardKind::Channels, query) {
            Ok(id) => {
                prop_assert!((1..=MAX_ID_LEN).contains(&id.len()), "{:?}", id);
                prop_assert!(!id.chars().any(char::is_control), "{:?}", id);
                if let Some(ids) = &ids {
                    prop_assert_eq!(ids, &vec![id]);
                }
            }
            Err(e) => {
                check_error(&e, "id")?;
                if let Some(ids) = &ids {
                    let bad = |id: &String| {
                        id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control)
                    };
                    prop_assert!(ids.len() != 1 || bad(&ids[0]), "{}: {:?}", e, ids);
                }
            }
        }
        match top(query) {
            Ok(t) => {
                prop_assert!((1..=MAX_TOP_LIMIT).contains(&t.limit));
                let (by, limit) = (values(&pairs, "by"), values(&pairs, "limit"));
                if let (Some(by), Some(limit)) = (by, limit) {
                    prop_assert!(by.len() <= 1 && limit.len() <= 1);
                    prop_assert_eq!(by.first().map_or("concurrent", String::as_str), t.by_name);
                    let want = limit.first().map_or(Ok(10), |l| l.parse::<usize>());
                    prop_assert_eq!(want, Ok(t.limit));
                }
            }
            Err(e) => {
                let param = e
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                prop_assert!(["by", "limit", "local"].contains(&param.as_str()), "{}", e);
                check_error(&e, &param)?;
            }
        }
        Ok(())
    }

    #[test]
    #[ignore = "a fuzz target: make fuzz-quick (part of make test), or make fuzz"]
    fn fuzz_query_parameters() {
        let queries = arb_query().prop_map(|q| Input(q.into_bytes()));
        fuzz::run("fuzz_query_parameters", queries, |q| {
            check_query(std::str::from_utf8(&q.0).expect("generated as text"))
        });
    }
}
