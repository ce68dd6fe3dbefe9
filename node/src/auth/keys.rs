//! API keys: what a key looks like, the keys file that holds their hashes, and finding the
//! key a request presents.
//!
//! A key is 32 random bytes from the operating system, written `tally_<base64url>`; the
//! node knows only its SHA-256 (of the whole text, prefix included, as `sha256sum` prints
//! it), so the keys file reveals no key. A presented key is hashed and compared with every
//! known hash in constant time.
//!
//! Not for: which route needs which scope (see `api::auth`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::rate::{IngestLimits, Limiter};
use super::Scope;

/// What every key starts with, so a leaked one is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "tally_";

/// One `[[key]]` entry of the keys file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key (logs and the 429 message name it; never the key).
    pub name: String,
    /// SHA-256 of the key's text, 64 hex digits.
    pub sha256: String,
    /// What the key may do: any of `ingest`, `read`, `admin`.
    pub scopes: Vec<Scope>,
    /// Most ingest requests per second (a token bucket); absent: not limited.
    pub requests_per_sec: Option<u32>,
    /// Requests the key may send at once after a quiet time; default `requests_per_sec`.
    pub request_burst: Option<u32>,
    /// Most events per second, counted in the parsed bodies; absent: not limited.
    pub events_per_sec: Option<u32>,
    /// Events the key may send at once after a quiet time (and the most one request may
    /// hold); default `events_per_sec`.
    pub event_burst: Option<u32>,
}

impl KeyEntry {
    fn limits(&self) -> IngestLimits {
        IngestLimits {
            requests_per_sec: self.requests_per_sec,
            request_burst: self.request_burst,
            events_per_sec: self.events_per_sec,
            event_burst: self.event_burst,
        }
    }
}

/// The keys file: `[[key]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// A key the node accepts.
#[derive(Debug)]
pub struct ApiKey {
    pub name: String,
    hash: [u8; 32],
    scopes: BTreeSet<Scope>,
    /// This key's ingest budget: each key has its own, so one key's flood leaves the
    /// others' untouched.
    pub limiter: Limiter,
}

impl ApiKey {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Every key the node accepts.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<Arc<ApiKey>>,
}

impl KeyRing {
    /// Reads and checks the keys file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<KeyRing> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read auth.keys_file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("auth.keys_file {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<KeyRing> {
        let file: KeysFile = toml::from_str(text)?;
        let mut keys: Vec<Arc<ApiKey>> = Vec::with_capacity(file.key.len());
        for entry in file.key {
            let key = ApiKey::from_entry(entry)?;
            if keys.iter().any(|k| k.name == key.name) {
                bail!("key {:?} is listed twice", key.name);
            }
            if keys.iter().any(|k| k.hash == key.hash) {
                bail!("key {:?} has the hash of another key", key.name);
            }
            keys.push(Arc::new(key));
        }
        Ok(KeyRing { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` is, if any. Every hash is compared, in constant time, so the
    /// time taken says nothing about how close a guess came or which key matched.
    pub fn find(&self, presented: &[u8]) -> Option<Arc<ApiKey>> {
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key.clone());
            }
        }
        found
    }
}

impl ApiKey {
    fn from_entry(entry: KeyEntry) -> anyhow::Result<ApiKey> {
        let name = entry.name.trim().to_string();
        if name.is_empty() || name.chars().any(char::is_control) {
            bail!("a key's name must be non-empty text without control characters");
        }
        let hash = parse_hash(&entry.sha256)
            .with_context(|| format!("key {name:?}: sha256 must be 64 hex digits"))?;
        if entry.scopes.is_empty() {
            bail!("key {name:?}: scopes must name at least one of ingest, read, admin");
        }
        let limiter = entry
            .limits()
            .limiter()
            .with_context(|| format!("key {name:?}"))?;
        Ok(ApiKey {
            name,
            hash,
            scopes: entry.scopes.into_iter().collect(),
            limiter,
        })
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of `key` in lowercase hex, as the keys file holds it.
pub fn hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 random bytes from the operating system, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
        .expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new API key: `tally_` and 32 random bytes.
pub fn new_key() -> String {
    format!("{KEY_PREFIX}{}", random_token())
}

/// The keys file entry of `key`: what `tally-node keys new` prints.
pub fn entry_toml(name: &str, key: &str, scopes: &[Scope], limits: &IngestLimits) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{}\"", s.name())).collect();
    let mut out = format!(
        "[[key]]\nname = {}\nsha256 = \"{}\"\nscopes = [{}]\n",
        toml_string(name),
        hash_hex(key),
        scopes.join(", ")
    );
    for (setting, value) in limits.settings() {
        out.push_str(&format!("{setting} = {value}\n"));
    }
    out
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_found_by_its_entry_and_nothing_else_is() {
        let key = new_key();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 43, "{key}");
        assert_ne!(key, new_key());
        let toml = entry_toml(
            "game \"backend\"",
            &key,
            &[Scope::Ingest, Scope::Read],
            &IngestLimits::default(),
        );
        let ring = KeyRing::parse(&toml).unwrap();
        let found = ring.find(key.as_bytes()).expect("the key is found");
        assert_eq!(found.name, "game \"backend\"");
        assert!(found.has(Scope::Ingest) && found.has(Scope::Read) && !found.has(Scope::Admin));
        assert!(ring.find(new_key().as_bytes()).is_none());
        assert!(ring.find(b"").is_none());
        assert!(!toml.contains(&key), "the entry holds the hash only");
    }

    #[test]
    fn the_hash_is_what_sha256sum_prints() {
        // printf %s abc | sha256sum
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let h = hash_hex("k");
        for (file, expect) in [
            (
                "[[key]]\nname = \"a\"\nsha256 = \"xyz\"\nscopes = [\"read\"]\n".to_string(),
                "sha256",
            ),
            (
                format!("[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = []\n"),
                "scopes",
            ),
            (
                format!("[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"write\"]\n"),
                "write",
            ),
            (
                format!("[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\nrate = 1\n"),
                "rate",
            ),
            (
                format!(
                    "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n\
                     [[key]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
                    hash_hex("other")
                ),
                "twice",
            ),
            (
                format!(
                    "[[key]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n\
                     [[key]]\nname = \"b\"\nsha256 = \"{h}\"\nscopes = [\"read\"]\n"
                ),
                "hash of another key",
            ),
        ] {
            let e = format!("{:#}", KeyRing::parse(&file).unwrap_err());
            assert!(e.contains(expect), "{expect}: {e}");
        }
    }
}
