//! TLS with rustls (aws-lc-rs as its crypto): the HTTPS API and forwarded queries between
//! nodes ([`ApiTls`], whose files are re-read on SIGHUP), and the connections to Cassandra
//! ([`cassandra_client_config`]).
//!
//! Certificates and keys are PEM files. A file that cannot be read or parsed, a key that
//! does not match its certificate, or a CA file without a certificate is an error naming the
//! setting and the file.
//!
//! Not for: Kafka, whose TLS and SASL librdkafka does itself with OpenSSL (see
//! `config::KafkaConfig::apply_connection`).

mod api;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use api::{reload_on_sighup, ApiTls};

use crate::config::{CassandraTls, Config};

/// Reads every certificate, key and CA file `cfg` names for rustls (`check-config` runs
/// it; the node reads them again when it starts).
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    if let Some(tls) = &cfg.node.tls {
        ApiTls::load(tls)?.server_config()?;
    }
    if let Some(tls) = &cfg.cassandra.tls {
        cassandra_client_config(tls)?;
    }
    Ok(())
}

/// The one crypto provider every TLS config of the node uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file, in order; `key` names the setting in errors.
pub fn read_certificates(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{key}: read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{key}: {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// A trust store of the certificates in a PEM file.
pub fn read_roots(key: &str, path: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(key, path)? {
        roots
            .add(cert)
            .with_context(|| format!("{key}: a certificate of {} is not a CA", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its private key, checked to belong together.
pub fn read_certified_key(
    (cert_key, cert_path): (&str, &Path),
    (key_key, key_path): (&str, &Path),
) -> anyhow::Result<CertifiedKey> {
    let chain = read_certificates(cert_key, cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        anyhow::anyhow!(
            "{key_key}: read a private key from {}: {e}",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "{key_key}: the key in {} does not fit the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })
}

/// The client side of Cassandra connections: the nodes' certificates are checked against
/// `ca_file` (and, with `verify_hostname`, must name the address connected to); a client
/// certificate is presented when configured.
pub fn cassandra_client_config(tls: &CassandraTls) -> anyhow::Result<rustls::ClientConfig> {
    let roots = read_roots("cassandra.tls.ca_file", &tls.ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("cassandra tls: protocol versions")?;
    let builder = if tls.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly::new(roots)))
    };
    match (&tls.certificate_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let key = read_certified_key(
                ("cassandra.tls.certificate_file", cert),
                ("cassandra.tls.key_file", key),
            )?;
            Ok(builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key))))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Checks a server's chain against the roots and not its name: for Cassandra clusters
/// whose certificates do not name the nodes' addresses (`verify_hostname = false`).
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ChainOnly {
    fn new(roots: Arc<RootCertStore>) -> ChainOnly {
        ChainOnly {
            roots,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
