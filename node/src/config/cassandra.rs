//! `[cassandra]`: where Cassandra / ScyllaDB is, how the keyspace is replicated, and how
//! the node authenticates (username and password) and encrypts (TLS) its connections.
//!
//! Not for: opening the session (see `store`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use super::files::{require_files, require_pair};
use super::secret::{read_secret, Secret};

/// The environment variable that may hold the password instead of a file.
pub const PASSWORD_ENV: &str = "TALLY_CASSANDRA__PASSWORD";

/// `[cassandra]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// Keyspace holding all of Tally's tables; created by the first migration.
    pub keyspace: String,
    /// Replication of the keyspace when the first migration creates it.
    pub replication: Replication,
    /// The role to log in as (PasswordAuthenticator), with a password.
    pub username: Option<String>,
    /// A file holding the password of `username` (one final line break is dropped). Or set
    /// the environment variable `TALLY_CASSANDRA__PASSWORD`; the password itself is never
    /// read from the config file.
    pub password_file: Option<PathBuf>,
    /// The password, read from `password_file` or the environment by `Config::load`.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// `tls = { ca_file = "..." }`: connect over TLS. Unset: plain connections.
    pub tls: Option<CassandraTls>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "tally".into(),
            replication: Replication::Simple { factor: 1 },
            username: None,
            password_file: None,
            password: None,
            tls: None,
        }
    }
}

/// `[cassandra.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraTls {
    /// CA certificates (PEM) the nodes' certificates are checked against.
    pub ca_file: PathBuf,
    /// This node's client certificate (PEM), for clusters that require one
    /// (`require_client_auth`); with `key_file`.
    pub certificate_file: Option<PathBuf>,
    /// The private key (PEM, unencrypted) of `certificate_file`.
    pub key_file: Option<PathBuf>,
    /// Whether a Cassandra node's certificate must name the IP address the driver
    /// connects to (an IP subject alternative name): the driver reaches nodes by the
    /// addresses they gossip, not by host name. `false` checks the chain only. Default true.
    #[serde(default = "default_verify_hostname")]
    pub verify_hostname: bool,
}

fn default_verify_hostname() -> bool {
    true
}

/// `[cassandra.replication]`: `strategy = "simple"` with `factor`, or
/// `strategy = "network_topology"` with `datacenters = { dc1 = 3, ... }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// SimpleStrategy: fine for a single data centre and for local use.
    Simple { factor: u32 },
    /// NetworkTopologyStrategy: production, one replication factor per data centre.
    NetworkTopology { datacenters: BTreeMap<String, u32> },
}

impl Replication {
    /// The CQL replication map, e.g. `{'class': 'SimpleStrategy', 'replication_factor': 1}`.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, rf)| format!("'{dc}': {rf}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }
}

impl CassandraConfig {
    /// Reads the password from its file or the environment, without a final line break.
    pub fn read_secrets(&mut self) -> anyhow::Result<()> {
        self.password = read_secret(
            "cassandra.password_file",
            self.password_file.as_deref(),
            PASSWORD_ENV,
        )?;
        Ok(())
    }

    /// Contact points, keyspace name, credentials that go together, TLS files that exist.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.contact_points.is_empty() {
            bail!("cassandra.contact_points must name at least one host:port");
        }
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || !ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        {
            bail!("cassandra.keyspace {ks:?} must be 1-48 letters, digits or '_', starting with a letter");
        }
        match (&self.username, &self.password) {
            (Some(u), _) if u.is_empty() => bail!("cassandra.username must not be empty"),
            (Some(_), None) => bail!(
                "cassandra.username needs a password: cassandra.password_file or {PASSWORD_ENV}"
            ),
            (None, Some(_)) => bail!("a cassandra password is set but cassandra.username is not"),
            _ => {}
        }
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let cert = (
            "cassandra.tls.certificate_file",
            tls.certificate_file.as_ref(),
        );
        let key = ("cassandra.tls.key_file", tls.key_file.as_ref());
        require_files(&[("cassandra.tls.ca_file", Some(&tls.ca_file)), cert, key])?;
        require_pair(cert, key)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Dir, NODE};

    #[test]
    fn a_login_and_tls_are_read_and_the_password_never_shown() {
        let dir = Dir::new();
        let ca = dir.file("ca.pem", "not parsed here");
        let pw = dir.file("pw", "0123\n");
        let cfg = dir
            .load(&format!(
                "{NODE}[cassandra]\nusername = \"tally\"\npassword_file = \"{pw}\"\ntls = {{ ca_file = \"{ca}\" }}\n"
            ))
            .unwrap();
        let c = &cfg.cassandra;
        assert_eq!(c.password.as_ref().map(|p| p.expose()), Some("0123"));
        let tls = c.tls.as_ref().unwrap();
        assert!(
            tls.verify_hostname,
            "host names are checked unless switched off"
        );
        assert_eq!(tls.certificate_file, None);
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("0123"), "{debug}");
    }

    #[test]
    fn credentials_and_tls_files_that_do_not_add_up_are_refused() {
        let dir = Dir::new();
        let pw = dir.file("pw", "pw");
        let cases = [
            (
                "username = \"tally\"".to_string(),
                "cassandra.username needs a password: cassandra.password_file or TALLY_CASSANDRA__PASSWORD",
            ),
            (
                format!("password_file = \"{pw}\""),
                "a cassandra password is set but cassandra.username is not",
            ),
            (
                "password = \"inline\"".to_string(),
                "cassandra.password cannot be set in a config file",
            ),
            (
                "tls = { ca_file = \"/no/such/ca.pem\" }".to_string(),
                "cassandra.tls.ca_file: /no/such/ca.pem is not a readable file",
            ),
            (
                format!("tls = {{ ca_file = \"{pw}\", certificate_file = \"{pw}\" }}"),
                "cassandra.tls.certificate_file and cassandra.tls.key_file go together",
            ),
        ];
        for (settings, want) in cases {
            let e = dir.error(&format!("{NODE}[cassandra]\n{settings}\n"));
            assert!(e.contains(want), "{settings}: {e}");
        }
    }
}
