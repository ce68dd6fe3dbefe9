//! The secure services (`make services-secure`) and how tests reach them: the settings a
//! node gets, the Kafka client settings of the tests' own clients, and an HTTP client that
//! trusts the services' CA and presents their client certificate.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tally_node::config::{KafkaConfig, SaslMechanism, Secret, SecurityProtocol};

/// Kafka's SASL_SSL listener (SCRAM-SHA-512 and PLAIN), user `tally`.
pub const SECURE_KAFKA: &str = "127.0.0.1:9094";
/// The Cassandra that requires TLS and a password, role `tally`.
pub const SECURE_CASSANDRA: &str = "127.0.0.1:9142";
/// The environment variable that holds Cassandra's password for the nodes (the Kafka
/// password comes from its file): both ways a secret reaches a node are exercised.
const CASSANDRA_PASSWORD_ENV: &str = "TALLY_CASSANDRA__PASSWORD";

/// The folder of the secure services' certificates and passwords: `secure/` in
/// `TALLY_SERVICES_DIR`, the state folder of the checkout that started the services
/// (docs/SERVICES.md), or in this checkout's `.services`.
pub fn secure_dir() -> PathBuf {
    match std::env::var_os("TALLY_SERVICES_DIR") {
        Some(dir) => PathBuf::from(dir).join("secure"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services/secure"),
    }
}

/// Panics with a clear message unless the secure services serve and their files exist;
/// returns the folder of the files.
pub fn require_services() -> PathBuf {
    let dir = secure_dir();
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .into_iter()
    .chain(["kafka-password", "cassandra-password"])
    {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: start the secure services with `make services-secure` \
             (or point TALLY_SERVICES_DIR at the .services of the checkout that started them)",
            dir.join(file).display()
        );
    }
    for (name, addr) in [("kafka", SECURE_KAFKA), ("cassandra", SECURE_CASSANDRA)] {
        let ok = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok();
        assert!(
            ok,
            "secure {name} is not serving on {addr}: start it with `make services-secure`"
        );
    }
    dir
}

/// A password of the services, as its file holds it.
pub fn password(dir: &Path, service: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{service}-password")))
        .unwrap_or_else(|e| panic!("read the {service} password in {}: {e}", dir.display()))
}

/// The `[node.tls]` table and the security lines of `[kafka]` and `[cassandra]`.
pub fn toml(dir: &Path) -> (String, String, String) {
    let f = |name: &str| dir.join(name).display().to_string();
    let node_tls = format!(
        "[node.tls]\ncertificate_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
         client_certificate_file = \"{}\"\nclient_key_file = \"{}\"\n",
        f("server.pem"),
        f("server.key"),
        f("ca.pem"),
        f("client.pem"),
        f("client.key")
    );
    let kafka = format!(
        "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         sasl_username = \"tally\"\nsasl_password_file = \"{}\"\nssl_ca_file = \"{}\"\n",
        f("kafka-password"),
        f("ca.pem")
    );
    let cassandra = format!(
        "username = \"tally\"\ntls = {{ ca_file = \"{}\" }}\n",
        f("ca.pem")
    );
    (node_tls, kafka, cassandra)
}

/// The environment of a node on the secure services.
pub fn node_env(dir: &Path) -> Vec<(String, String)> {
    vec![(
        CASSANDRA_PASSWORD_ENV.to_string(),
        password(dir, "cassandra"),
    )]
}

/// The Kafka settings of the tests' own clients on the secure services.
pub fn secure_kafka(kafka: &mut KafkaConfig, dir: &Path) {
    kafka.security_protocol = Some(SecurityProtocol::SaslSsl);
    kafka.sasl_mechanism = Some(SaslMechanism::ScramSha512);
    kafka.sasl_username = Some("tally".into());
    kafka.sasl_password = Some(Secret::new(password(dir, "kafka")));
    kafka.ssl_ca_file = Some(dir.join("ca.pem"));
}

/// An HTTP client for the nodes' API: plain HTTP, or, where the secure services' files
/// exist, also HTTPS trusting their CA and presenting their client certificate.
pub fn http_client() -> reqwest::Client {
    let dir = secure_dir();
    let mut builder = reqwest::Client::builder();
    if dir.join("client.key").is_file() {
        builder = builder.use_preconfigured_tls(client_tls(
            &dir.join("ca.pem"),
            Some((&dir.join("client.pem"), &dir.join("client.key"))),
        ));
    }
    builder.build().expect("build http client")
}

/// A TLS client config trusting `ca`, presenting `cert` (certificate and key files) if given.
pub fn client_tls(ca: &Path, cert: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read ca") {
        roots.add(c.expect("parse ca")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots);
    match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("read certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("parse certificate");
            let key = PrivateKeyDer::from_pem_file(key).expect("read key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
    }
}
