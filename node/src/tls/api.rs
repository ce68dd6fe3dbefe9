//! The API's TLS: the node's certificate, the CA its clients' certificates must be signed
//! by (mutual TLS), and the CA of the other nodes' certificates (forwarded queries), held
//! together and swapped as a whole when SIGHUP asks for the files to be read again.
//!
//! rustls asks for the certificate and the verifiers on every handshake, through [`Live`],
//! which reads whatever is current: new connections get the new files, connections already
//! open keep going on the old ones. A reload that fails (a missing file, a key that does not
//! fit its certificate) changes nothing, and says why in an error log line.
//!
//! Not for: Cassandra's TLS (see the module above) or Kafka's.

use std::fmt;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{provider, read_certified_key, read_roots};
use crate::config::ApiTlsConfig;

/// The API's TLS files, as last read successfully.
pub struct ApiTls {
    cfg: ApiTlsConfig,
    current: RwLock<Arc<Material>>,
}

/// What one reading of the files made.
struct Material {
    /// The certificate served.
    key: Arc<CertifiedKey>,
    /// The certificate presented to other nodes with mutual TLS on (`key` unless
    /// `client_certificate_file` is set).
    client_key: Arc<CertifiedKey>,
    /// Checks clients' certificates; None without `client_ca_file`.
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// Checks the other nodes' certificates when a query is forwarded to them.
    peers: Arc<WebPkiServerVerifier>,
}

impl ApiTls {
    /// Reads the files; fails, naming the setting and the file, if any is unusable.
    pub fn load(cfg: &ApiTlsConfig) -> anyhow::Result<Arc<ApiTls>> {
        let material = read(cfg)?;
        Ok(Arc::new(ApiTls {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(material)),
        }))
    }

    /// Reads the files again and, if all of them are usable, uses them from the next
    /// handshake on; otherwise keeps the current ones and returns why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let material = read(&self.cfg)?;
        *self.current.write().expect("tls material lock") = Arc::new(material);
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().expect("tls material lock").clone()
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.cfg.client_ca_file.is_some()
    }

    /// The server side of the API: the current certificate, and with mutual TLS the
    /// current client CA.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let live = Arc::new(Live(self.clone()));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("api tls: protocol versions")?;
        let builder = if self.mutual() {
            builder.with_client_cert_verifier(live.clone())
        } else {
            builder.with_no_client_auth()
        };
        Ok(builder.with_cert_resolver(live))
    }

    /// The client side of forwarded queries: peers are checked against the current peer
    /// CA, and with mutual TLS the node presents its current certificate.
    pub fn client_config(self: &Arc<Self>) -> anyhow::Result<rustls::ClientConfig> {
        let live = Arc::new(Live(self.clone()));
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("forwarding tls: protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(live.clone())
            .with_client_cert_resolver(live))
    }
}

impl fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTls").field("cfg", &self.cfg).finish()
    }
}

fn read(cfg: &ApiTlsConfig) -> anyhow::Result<Material> {
    let key = Arc::new(read_certified_key(
        ("node.tls.certificate_file", &cfg.certificate_file),
        ("node.tls.key_file", &cfg.key_file),
    )?);
    let client_key = match (&cfg.client_certificate_file, &cfg.client_key_file) {
        (Some(cert), Some(k)) => Arc::new(read_certified_key(
            ("node.tls.client_certificate_file", cert),
            ("node.tls.client_key_file", k),
        )?),
        _ => key.clone(),
    };
    let clients = match &cfg.client_ca_file {
        None => None,
        Some(path) => {
            let roots = read_roots("node.tls.client_ca_file", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .with_context(|| format!("node.tls.client_ca_file: {}", path.display()))?;
            Some(verifier)
        }
    };
    let (peer_key, peer_path) = match &cfg.ca_file {
        Some(path) => ("node.tls.ca_file", path.as_path()),
        None => (
            "node.tls.client_ca_file",
            cfg.peer_ca_file().context("node.tls.ca_file is not set")?,
        ),
    };
    let roots = read_roots(peer_key, peer_path)?;
    let peers = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .with_context(|| format!("{peer_key}: {}", peer_path.display()))?;
    Ok(Material {
        key,
        client_key,
        clients,
        peers,
    })
}

/// Reads the API's TLS files again on every SIGHUP until `stop` is cancelled. Without
/// `[node.tls]` a SIGHUP is only logged: it never stops the node.
pub async fn reload_on_sighup(tls: Option<Arc<ApiTls>>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGHUP; the tls files will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        let Some(tls) = &tls else {
            info!("SIGHUP: no [node.tls] files to reload");
            continue;
        };
        match tls.reload() {
            Ok(()) => info!(
                certificate_file = %tls.cfg.certificate_file.display(),
                "SIGHUP: tls files reloaded; new connections use them"
            ),
            Err(e) => error!(
                error = %format!("{e:#}"),
                "SIGHUP: tls files not reloaded; the previous certificate stays in use"
            ),
        }
    }
}

/// What rustls holds: every call reads the current material.
#[derive(Debug)]
struct Live(Arc<ApiTls>);

impl ResolvesServerCert for Live {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material().key.clone())
    }
}

impl ResolvesClientCert for Live {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .mutual()
            .then(|| self.0.material().client_key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.mutual()
    }
}

impl ClientCertVerifier for Live {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the list would have to outlive a reload. Clients then present the
    /// certificate they have, which is what the nodes and usual clients do anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.clients()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.clients()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.clients()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.clients()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

impl Live {
    /// The current client verifier; only asked for with mutual TLS on.
    fn clients(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0
            .material()
            .clients
            .clone()
            .ok_or_else(|| rustls::Error::General("no client CA configured".into()))
    }
}

impl ServerCertVerifier for Live {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.material().peers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .peers
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .material()
            .peers
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.material().peers.supported_verify_schemes()
    }
}
