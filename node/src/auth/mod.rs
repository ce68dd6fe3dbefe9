//! Who may call a node: clients with API keys that carry scopes, and other nodes of the
//! cluster with the cluster secret.
//!
//! - [`keys`]: API keys, their hashes in the keys file, and making new ones.
//! - [`peer`]: the signature a node puts on its calls to another node.
//! - [`rate`]: the token buckets that limit a key's ingest.
//!
//! The credentials are loaded once at start ([`Auth::load`]) and never logged: the keys
//! file holds only hashes, and the cluster secret stays in [`peer::PeerSecret`], whose
//! `Debug` shows nothing of it. The secret is read from its file or from
//! [`CLUSTER_SECRET_ENV`], never from the TOML config, so `Config` (which derives `Debug`)
//! never holds it.
//!
//! Not for: the HTTP side (which route needs which scope, the 401/403/429 answers): see
//! `api::auth`.

pub mod keys;
pub mod peer;
pub mod rate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use keys::{ApiKey, KeyRing};
use peer::PeerSecret;

/// The environment variable that may hold the cluster secret (instead of
/// `auth.cluster_secret_file`). It is kept out of the config's environment overrides.
pub const CLUSTER_SECRET_ENV: &str = "TALLY_AUTH__CLUSTER_SECRET";

/// What an API key may do. docs/API.md lists the scope of every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/events`.
    Ingest,
    /// Player and channel queries, the top-N view.
    Read,
    /// The cluster view (and `/metrics` when `auth.metrics_scope = "admin"`).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name (`ingest`, `read`, `admin`).
    pub fn parse(name: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| format!("unknown scope {name:?}, expected ingest, read or admin"))
    }
}

/// `[auth]`: API keys for clients, the cluster secret for nodes. On unless turned off, so a
/// config without this section is secure; docs/API.md, "Authentication", has the details.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether requests need an API key. `false` opens every endpoint to anyone and trusts
    /// `x-tally-forwarded` from anyone (unless a cluster secret is set): for local
    /// development only; the node logs a warning at every start.
    pub enabled: bool,
    /// The keys file (TOML: `[[key]]` entries with a name, the key's SHA-256 and its scopes;
    /// see `tally-node keys new`). Required when `enabled`. A relative path is relative to
    /// the working directory.
    pub keys_file: Option<PathBuf>,
    /// A file holding the cluster secret (its first line; at least 32 bytes) every node of
    /// the cluster shares. Or set the secret itself in `TALLY_AUTH__CLUSTER_SECRET`.
    /// Required when `enabled` and `cluster.seeds` is not empty.
    pub cluster_secret_file: Option<PathBuf>,
    /// The scope `/metrics` needs; unset, `/metrics` is open (its labels never carry ids).
    pub metrics_scope: Option<Scope>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keys_file: None,
            cluster_secret_file: None,
            metrics_scope: None,
        }
    }
}

/// Who made a request, as the API found out (kept in the request's extensions).
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off: anyone may do anything.
    Anyone,
    /// A client with a valid API key.
    Key(Arc<ApiKey>),
    /// Another node of the cluster (a valid cluster credential; with auth off and no
    /// secret, a request that says it is forwarded).
    Peer,
}

impl Caller {
    /// Whether the request came from another node (so it is answered here, not forwarded).
    pub fn is_peer(&self) -> bool {
        matches!(self, Caller::Peer)
    }
}

/// The credentials a node checks and uses, loaded once at start.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    keys: KeyRing,
    peer: Option<PeerSecret>,
    metrics_scope: Option<Scope>,
}

impl Auth {
    /// Reads the keys file and the cluster secret that `cfg` names. `has_peers`: whether
    /// the node expects other nodes (`cluster.seeds` is not empty), which makes the cluster
    /// secret required when auth is on.
    pub fn load(cfg: &AuthConfig, has_peers: bool) -> anyhow::Result<Auth> {
        let keys = match &cfg.keys_file {
            Some(path) => KeyRing::load(path)?,
            None if cfg.enabled => bail!(
                "auth.keys_file must be set while auth.enabled is true (make keys with \
                 `tally-node keys new`; set auth.enabled = false only for local development)"
            ),
            None => KeyRing::default(),
        };
        let env = std::env::var(CLUSTER_SECRET_ENV).ok();
        let peer = match (&cfg.cluster_secret_file, env) {
            (Some(_), Some(_)) => bail!(
                "the cluster secret is given twice: in auth.cluster_secret_file and in \
                 {CLUSTER_SECRET_ENV}; keep one"
            ),
            (Some(path), None) => Some(read_secret_file(path)?),
            (None, Some(value)) => {
                Some(PeerSecret::new(value.trim().as_bytes()).context(CLUSTER_SECRET_ENV)?)
            }
            (None, None) => None,
        };
        if cfg.enabled && has_peers && peer.is_none() {
            bail!(
                "auth.cluster_secret_file (or {CLUSTER_SECRET_ENV}) must be set while \
                 auth.enabled is true and cluster.seeds names peers: nodes sign the calls \
                 they make to each other with it"
            );
        }
        Ok(Auth {
            enabled: cfg.enabled,
            keys,
            peer,
            metrics_scope: cfg.metrics_scope,
        })
    }

    /// No keys, no secret, nothing checked (unit tests).
    pub fn disabled() -> Auth {
        Auth {
            enabled: false,
            keys: KeyRing::default(),
            peer: None,
            metrics_scope: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The key whose hash matches `presented`, compared in constant time.
    pub fn key(&self, presented: &[u8]) -> Option<Arc<ApiKey>> {
        self.keys.find(presented)
    }

    /// The cluster secret, if the node has one.
    pub fn peer(&self) -> Option<&PeerSecret> {
        self.peer.as_ref()
    }

    pub fn metrics_scope(&self) -> Option<Scope> {
        self.metrics_scope
    }

    /// One line for the start-up log: what is checked, never a secret.
    pub fn summary(&self) -> String {
        let metrics = match self.metrics_scope {
            Some(s) => format!("needs scope {}", s.name()),
            None => "open".into(),
        };
        let peers = if self.peer.is_some() {
            "calls between nodes are signed with the cluster secret"
        } else {
            "no cluster secret: this node answers no forwarded call"
        };
        format!(
            "auth is on: {} api keys loaded; /metrics {metrics}; {peers}",
            self.keys.len()
        )
    }

    /// The warning logged at every start while auth is off.
    pub fn disabled_warning(&self) -> &'static str {
        if self.peer.is_some() {
            "AUTH IS OFF (auth.enabled = false): anyone who reaches this node may ingest, query \
             and read the cluster view without an API key. For local development only; never \
             run a node reachable by others like this"
        } else {
            "AUTH IS OFF (auth.enabled = false): anyone who reaches this node may ingest, query \
             and read the cluster view without an API key, and x-tally-forwarded is trusted \
             from anyone. For local development only; never run a node reachable by others \
             like this"
        }
    }
}

/// The cluster secret in `path`: its first line, without surrounding white space.
fn read_secret_file(path: &Path) -> anyhow::Result<PeerSecret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read auth.cluster_secret_file {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default().trim();
    PeerSecret::new(first.as_bytes())
        .with_context(|| format!("auth.cluster_secret_file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tally-auth-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&p, text).expect("write temp file");
        p
    }

    #[test]
    fn scopes_parse_by_name_only() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.name()), Ok(s));
        }
        assert!(Scope::parse("Admin").unwrap_err().contains("unknown scope"));
    }

    #[test]
    fn auth_on_needs_a_keys_file_and_with_peers_a_cluster_secret() {
        let on = AuthConfig::default();
        let e = format!("{:#}", Auth::load(&on, false).unwrap_err());
        assert!(e.contains("auth.keys_file"), "{e}");
        let keys = temp_file("");
        let with_keys = AuthConfig {
            keys_file: Some(keys.clone()),
            ..AuthConfig::default()
        };
        assert!(Auth::load(&with_keys, false).unwrap().peer().is_none());
        let e = format!("{:#}", Auth::load(&with_keys, true).unwrap_err());
        assert!(e.contains("auth.cluster_secret_file"), "{e}");
        let secret = temp_file("0123456789abcdef0123456789abcdef\n");
        let complete = AuthConfig {
            cluster_secret_file: Some(secret.clone()),
            ..with_keys
        };
        assert!(Auth::load(&complete, true).unwrap().peer().is_some());
        let off = AuthConfig {
            enabled: false,
            ..AuthConfig::default()
        };
        assert!(!Auth::load(&off, true).unwrap().enabled());
        let _ = std::fs::remove_file(keys);
        let _ = std::fs::remove_file(secret);
    }

    #[test]
    fn a_short_secret_is_refused_without_showing_it() {
        let secret = temp_file("too-short-secret\n");
        let cfg = AuthConfig {
            enabled: false,
            cluster_secret_file: Some(secret.clone()),
            ..AuthConfig::default()
        };
        let e = format!("{:#}", Auth::load(&cfg, false).unwrap_err());
        assert!(e.contains("at least 32 bytes"), "{e}");
        assert!(!e.contains("too-short-secret"), "{e}");
        let _ = std::fs::remove_file(secret);
    }
}
