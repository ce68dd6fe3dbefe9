//! `[node.tls]`: the HTTP API serves HTTPS, optionally requiring client certificates, and
//! the node forwards queries to the other nodes over HTTPS.
//!
//! Not for: loading the files or serving (see `tls`).

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

use super::files::{require_files, require_pair};

/// `[node.tls]`. Every node of a cluster must agree: with it, nodes forward queries to
/// each other as `https://` and trust `ca_file`. The files are read at start and again on
/// SIGHUP (a failed reload keeps the previous ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// This node's certificate chain (PEM), leaf first.
    pub certificate_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1, unencrypted) of `certificate_file`.
    pub key_file: PathBuf,
    /// CA certificates (PEM). Set: every client must present a certificate signed by one of
    /// them (mutual TLS); a client without one is refused during the handshake.
    pub client_ca_file: Option<PathBuf>,
    /// CA certificates (PEM) the other nodes' certificates are checked against when this
    /// node forwards a query to them; defaults to `client_ca_file`. One of the two is needed.
    pub ca_file: Option<PathBuf>,
    /// With `client_ca_file`: the certificate chain (PEM) this node presents when it
    /// forwards a query to another node, with `client_key_file`. Defaults to
    /// `certificate_file`, which must then allow client authentication too (no extended key
    /// usage, or both serverAuth and clientAuth).
    pub client_certificate_file: Option<PathBuf>,
    /// The private key (PEM) of `client_certificate_file`.
    pub client_key_file: Option<PathBuf>,
}

impl ApiTlsConfig {
    /// The CA file peers' certificates are checked against.
    pub fn peer_ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref().or(self.client_ca_file.as_deref())
    }

    /// The files exist, and forwarded queries have a CA to check peers with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let client_cert = (
            "node.tls.client_certificate_file",
            self.client_certificate_file.as_ref(),
        );
        let client_key = ("node.tls.client_key_file", self.client_key_file.as_ref());
        require_files(&[
            ("node.tls.certificate_file", Some(&self.certificate_file)),
            ("node.tls.key_file", Some(&self.key_file)),
            ("node.tls.client_ca_file", self.client_ca_file.as_ref()),
            ("node.tls.ca_file", self.ca_file.as_ref()),
            client_cert,
            client_key,
        ])?;
        require_pair(client_cert, client_key)?;
        if self.client_certificate_file.is_some() && self.client_ca_file.is_none() {
            bail!("node.tls.client_certificate_file is presented to other nodes only with mutual TLS: set node.tls.client_ca_file too");
        }
        if self.peer_ca_file().is_none() {
            bail!("node.tls.ca_file must be set (the CA of the other nodes' certificates, checked when a query is forwarded), or node.tls.client_ca_file");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Dir, NODE};

    #[test]
    fn the_peers_ca_defaults_to_the_client_ca_and_one_is_needed() {
        let dir = Dir::new();
        let f = |name: &str| dir.file(name, "not parsed here");
        let (cert, key, ca) = (f("node.pem"), f("node.key"), f("ca.pem"));
        let base =
            format!("{NODE}[node.tls]\ncertificate_file = \"{cert}\"\nkey_file = \"{key}\"\n");
        let cfg = dir
            .load(&format!("{base}client_ca_file = \"{ca}\"\n"))
            .unwrap();
        let tls = cfg.node.tls.unwrap();
        assert_eq!(
            tls.peer_ca_file().map(|p| p.display().to_string()),
            Some(ca.clone())
        );
        let e = dir.error(&base);
        assert!(e.contains("node.tls.ca_file must be set"), "{e}");
        let e = dir.error(&format!("{base}ca_file = \"{ca}\"\nclient_certificate_file = \"{cert}\"\nclient_key_file = \"{key}\"\n"));
        assert!(e.contains("set node.tls.client_ca_file too"), "{e}");
        let e = dir.error(&format!("{base}ca_file = \"/no/ca.pem\"\n"));
        assert!(
            e.contains("node.tls.ca_file: /no/ca.pem is not a readable file"),
            "{e}"
        );
    }
}
