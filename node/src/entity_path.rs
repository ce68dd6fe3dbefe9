//! Where a player or channel is queried: `/v1/players/<id>` with the id percent-encoded,
//! or `/v1/players?id=<id>` for the few ids a path segment cannot carry.
//!
//! Ids are any UTF-8 without control characters, so they can hold `/`, `?`, `#`, `%`,
//! `\` or be `..`. Written into a path as they are, they change it: the player
//! `../cluster` once made a forwarded player query fetch `/v1/cluster`. Here every byte
//! but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, so
//! an id is always exactly one segment, and the API decodes it back to the id.
//!
//! Three ids cannot be a segment at all, however encoded: `.` and `..`, because URL
//! parsers remove such segments and read `%2E` as `.` (RFC 3986 section 5.2.4; the WHATWG
//! URL standard, which the `url` crate under reqwest follows), and, for channels, `top`,
//! because `/v1/channels/top` is the top-N view and `%74op` is the same URI (RFC 3986
//! section 6.2.2.2; actix decodes it before routing). Those go in the query, which
//! carries any id.
//!
//! Not for: sending requests (see `cluster::routing`) or the routes themselves (see
//! `api`).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Url;

use crate::kind::ShardKind;

/// Everything but RFC 3986's unreserved characters: what an id is encoded with.
pub const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The last segment of `/v1/channels/top`, the top-N view.
pub const TOP: &str = "top";

/// `id`, percent-encoded for a path segment or a query value.
pub fn encode(id: &str) -> String {
    utf8_percent_encode(id, ENCODED).to_string()
}

/// Whether `id` can be the last segment of its kind's query path (see the module doc).
pub fn fits_path(kind: ShardKind, id: &str) -> bool {
    !(id == "." || id == ".." || (kind == ShardKind::Channels && id == TOP))
}

/// The path (and, for ids a segment cannot carry, the query) where `id` is queried:
/// `/v1/players/a%2Fb`, `/v1/players?id=..`.
pub fn entity_path(kind: ShardKind, id: &str) -> String {
    if fits_path(kind, id) {
        format!("{}/{}", kind.api_path(), encode(id))
    } else {
        format!("{}?id={}", kind.api_path(), encode(id))
    }
}

/// The URL of `id`'s query on the node at `addr` (`host:port`), whose API speaks `scheme`
/// (`http` or `https`). Checks that the parsed URL kept exactly the path and query built:
/// the encoding guarantees it, and a changed path would answer another question with a 200.
pub fn entity_url(scheme: &str, addr: &str, kind: ShardKind, id: &str) -> Result<Url, String> {
    checked_url(scheme, addr, kind, id, entity_path(kind, id))
}

/// The URL of `id`'s history or records query (`/v1/players/{id}/{what}?{query}`, `what`
/// being `history` or `records`), checked as [`entity_url`]'s; ids that cannot be a path
/// segment have none.
pub fn history_url(
    scheme: &str,
    addr: &str,
    (kind, id): (ShardKind, &str),
    what: &str,
    query: &str,
) -> Result<Url, String> {
    if !fits_path(kind, id) {
        return Err(format!(
            "{} {id:?}: no history path for this id",
            kind.entity_name()
        ));
    }
    let mut path = format!("{}/{}/{what}", kind.api_path(), encode(id));
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    checked_url(scheme, addr, kind, id, path)
}

fn checked_url(
    scheme: &str,
    addr: &str,
    kind: ShardKind,
    id: &str,
    path: String,
) -> Result<Url, String> {
    let url = Url::parse(&format!("{scheme}://{addr}{path}"))
        .map_err(|e| format!("{} {id:?}: url for {addr}: {e}", kind.entity_name()))?;
    let kept = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    if kept != path {
        return Err(format!(
            "{} {id:?}: the url {url} changed the path {path}",
            kind.entity_name()
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as actix_test, web, App};
    use percent_encoding::percent_decode_str;

    const GEN_DELIMS: &str = ":/?#[]@";
    const SUB_DELIMS: &str = "!$&'()*+,;=";

    /// Ids a URL could mangle, all valid by the event schema.
    fn awkward_ids() -> Vec<String> {
        let mut ids: Vec<String> = GEN_DELIMS
            .chars()
            .chain(SUB_DELIMS.chars())
            .flat_map(|c| [c.to_string(), format!("a{c}b")])
            .collect();
        ids.extend(
            [
                GEN_DELIMS,
                SUB_DELIMS,
                "%",
                "%2F",
                "%25",
                "100%",
                " ",
                "a b",
                "\\",
                "a\\b",
                "\"<>^`{|}",
                "é",
                "日本語",
                "..",
                ".",
                "...",
                "../cluster",
                "..%2Fcluster",
                "./x",
                "//",
                "top",
                "TOP",
            ]
            .map(String::from),
        );
        // 128 bytes, the longest id, of 2-, 3- and 4-byte characters.
        ids.push("é".repeat(64));
        ids.push(format!("{}é", "€".repeat(42)));
        ids.push("😀".repeat(32));
        for id in &ids {
            assert!(id.len() <= crate::event::MAX_ID_LEN, "{id:?} is too long");
        }
        ids
    }

    #[test]
    fn every_id_is_one_segment_that_decodes_back_to_it() {
        for kind in ShardKind::ALL {
            for id in awkward_ids().iter().filter(|id| fits_path(kind, id)) {
                let url = entity_url("http", "127.0.0.1:8080", kind, id).unwrap();
                let segments: Vec<&str> = url.path_segments().unwrap().collect();
                assert_eq!(segments.len(), 3, "{id:?} made {url}");
                assert_eq!(&segments[..2], ["v1", kind.label()], "{id:?} made {url}");
                assert!(
                    segments[2]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                    "{id:?} left a reserved character in {url}"
                );
                assert_eq!(percent_decode_str(segments[2]).decode_utf8().unwrap(), *id);
                assert_eq!(url.query(), None);
                assert_eq!(
                    (url.host_str(), url.port()),
                    (Some("127.0.0.1"), Some(8080))
                );
            }
        }
    }

    #[test]
    fn the_scheme_follows_the_api() {
        for scheme in ["http", "https"] {
            let url = entity_url(scheme, "node-1.tally:8443", ShardKind::Players, "a/b").unwrap();
            assert_eq!(
                url.as_str(),
                format!("{scheme}://node-1.tally:8443/v1/players/a%2Fb")
            );
        }
    }

    #[test]
    fn dot_segments_and_a_channel_named_top_go_in_the_query() {
        let cases = [
            (ShardKind::Players, "."),
            (ShardKind::Players, ".."),
            (ShardKind::Channels, "."),
            (ShardKind::Channels, ".."),
            (ShardKind::Channels, "top"),
        ];
        for (kind, id) in cases {
            assert!(!fits_path(kind, id));
            let url = entity_url("http", "127.0.0.1:8080", kind, id).unwrap();
            assert_eq!(url.path(), kind.api_path(), "{id:?} made {url}");
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            assert_eq!(pairs, [("id".to_string(), id.to_string())], "{url}");
        }
        // Only the channel view is called `top`.
        assert!(fits_path(ShardKind::Players, "top"));
        assert!(fits_path(ShardKind::Channels, "TOP"));
    }

    #[test]
    fn a_path_the_url_would_change_is_refused() {
        // What the old `format!("{}/{id}")` produced for the player `../cluster`.
        let url = Url::parse("http://127.0.0.1:8080/v1/players/../cluster").unwrap();
        assert_eq!(
            url.path(),
            "/v1/cluster",
            "the url crate resolves dot segments"
        );
        let e = entity_url(
            "http",
            "127.0.0.1:8080/v1/players/..",
            ShardKind::Players,
            "x",
        )
        .unwrap_err();
        assert!(e.contains("changed the path"), "{e}");
    }

    /// The other half of the contract: actix, routing as `api::serve` does (the `top` view
    /// before `{id}`), hands the handler exactly the id that was encoded.
    #[actix_web::test]
    async fn actix_decodes_every_encoded_id_back_to_itself() {
        let echo = |p: web::Path<String>| async move { format!("id:{}", p.into_inner()) };
        let echo_query = |q: web::Query<std::collections::HashMap<String, String>>| async move {
            format!("id:{}", q.get("id").cloned().unwrap_or_default())
        };
        let app = actix_test::init_service(
            App::new()
                .route("/v1/players", web::get().to(echo_query))
                .route("/v1/players/{id}", web::get().to(echo))
                .route("/v1/channels", web::get().to(echo_query))
                .route("/v1/channels/top", web::get().to(|| async { "top-n" }))
                .route("/v1/channels/{id}", web::get().to(echo)),
        )
        .await;
        let get = |path: String| actix_test::TestRequest::get().uri(&path).to_request();
        for kind in ShardKind::ALL {
            for id in awkward_ids() {
                let body = actix_test::call_and_read_body(&app, get(entity_path(kind, &id))).await;
                assert_eq!(
                    std::str::from_utf8(&body).unwrap(),
                    format!("id:{id}"),
                    "{kind:?} {id:?} via {}",
                    entity_path(kind, &id)
                );
            }
        }
        // `%74op` is `top` to actix too: the view, not the channel.
        for path in ["/v1/channels/top", "/v1/channels/%74op"] {
            let body = actix_test::call_and_read_body(&app, get(path.to_string())).await;
            assert_eq!(&body[..], b"top-n", "{path}");
        }
    }
}
