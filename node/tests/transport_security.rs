//! The API over HTTPS, with certificates made here: a SIGHUP swaps the certificate for new
//! connections while open ones and the node keep going (and a broken file changes
//! nothing); mutual TLS refuses clients without a certificate of its CA; two nodes forward
//! queries to each other over mutual TLS; and a password never reaches a node's log.
//! The nodes use the plain Kafka and Cassandra (secure.rs runs against the secure ones).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_udp_port, NodeProcess, TestEnv};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// A CA of the test's own, and the certificates it signs.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = TestCa {
            issuer,
            dir: dir.to_path_buf(),
        };
        std::fs::write(ca.path(&format!("{name}.pem")), ca.issuer.pem()).unwrap();
        ca
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A certificate for localhost and 127.0.0.1, good for servers and clients, written
    /// to `<name>.pem` and `<name>.key`; returns its DER.
    fn issue(&self, name: &str, serial: u64) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }
}

/// `[node.tls]` with `cert` (`<cert>.pem`, `<cert>.key`), trusting `ca` for peers, and
/// requiring client certificates of `ca` when `mutual`.
fn node_tls(ca: &TestCa, cert: &str, mutual: bool) -> String {
    let file = |f: String| ca.path(&f).display().to_string();
    let mut t = format!(
        "[node.tls]\ncertificate_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        file(format!("{cert}.pem")),
        file(format!("{cert}.key")),
        file("ca.pem".into())
    );
    if mutual {
        t.push_str(&format!("client_ca_file = \"{}\"\n", file("ca.pem".into())));
    }
    t
}

/// A TLS client trusting `ca.pem`, presenting `<cert>.pem` when given.
fn tls_client(ca: &TestCa, cert: Option<&str>) -> rustls::ClientConfig {
    let cert = cert.map(|c| (ca.path(&format!("{c}.pem")), ca.path(&format!("{c}.key"))));
    common::secure::client_tls(
        &ca.path("ca.pem"),
        cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
}

/// One TLS connection to the node, kept open (HTTP/1.1 keep-alive).
struct Connection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Connection {
    fn open(config: rustls::ClientConfig, base: &str) -> std::io::Result<Connection> {
        let addr = base.trim_start_matches("https://");
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Connection { tls })
    }

    /// The certificate the node presented on this connection.
    fn peer_certificate(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// GET /healthz on this connection; the status line.
    fn healthz(&mut self) -> std::io::Result<String> {
        self.tls
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")?;
        let mut buf = vec![0u8; 4096];
        let n = self.tls.read(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        Ok(text.lines().next().unwrap_or_default().to_string())
    }
}

fn sighup(node: &NodeProcess) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(node.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until a new connection presents `want`.
fn wait_for_certificate(config: &rustls::ClientConfig, base: &str, want: &CertificateDer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = Connection::open(config.clone(), base).unwrap();
        if c.peer_certificate() == *want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node still serves the old certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_the_new_certificate_to_new_connections_and_keeps_the_node_up() {
    let env = TestEnv::plain("tls-reload", 1);
    let ca = TestCa::new(&env.dir, "ca");
    let first = ca.issue("node", 1);
    let node = NodeProcess::start(&env, "n1", &node_tls(&ca, "node", false));
    assert!(node.base.starts_with("https://"), "{}", node.base);
    let config = tls_client(&ca, None);
    let mut open = Connection::open(config.clone(), &node.base).unwrap();
    assert_eq!(open.peer_certificate(), first, "serial 1 first");
    assert!(open.healthz().unwrap().contains("200"));

    // New files in place, then SIGHUP: new connections get serial 2.
    let second = ca.issue("node", 2);
    sighup(&node);
    wait_for_certificate(&config, &node.base, &second);
    // The connection opened before goes on, and so does the node.
    assert!(open.healthz().unwrap().contains("200"));
    assert_eq!(open.peer_certificate(), first);
    let mut new = Connection::open(config.clone(), &node.base).unwrap();
    assert!(new.healthz().unwrap().contains("200"));

    // A key that does not parse: the reload fails, says so, and serial 2 stays.
    std::fs::write(
        ca.path("node.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    sighup(&node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node
        .errors
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("tls files not reloaded"))
    {
        assert!(
            Instant::now() < deadline,
            "no error logged for the failed reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = Connection::open(config, &node.base).unwrap();
    assert_eq!(after.peer_certificate(), second);
    assert!(after.healthz().unwrap().contains("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_of_its_ca() {
    let env = TestEnv::plain("tls-mutual", 1);
    let ca = TestCa::new(&env.dir, "ca");
    ca.issue("node", 1);
    ca.issue("client", 2);
    let other = TestCa::new(&env.dir, "other-ca");
    let stranger = {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &other.issuer).unwrap();
        std::fs::write(other.path("stranger.pem"), cert.pem()).unwrap();
        std::fs::write(other.path("stranger.key"), key.serialize_pem()).unwrap();
        "stranger"
    };
    let node = NodeProcess::start(&env, "n1", &node_tls(&ca, "node", true));

    let mut with_cert = Connection::open(tls_client(&ca, Some("client")), &node.base).unwrap();
    assert!(with_cert.healthz().unwrap().contains("200"));
    // TLS 1.3: the server refuses the client's certificate (or its absence) after the
    // client finished its side, so the refusal shows on the first read.
    for cert in [None, Some(stranger)] {
        let answer =
            Connection::open(tls_client(&ca, cert), &node.base).and_then(|mut c| c.healthz());
        assert!(
            !matches!(&answer, Ok(status) if status.contains("200")),
            "{cert:?}: answered {answer:?}"
        );
    }
    assert!(
        with_cert.healthz().unwrap().contains("200"),
        "the node stays up"
    );
}

/// Waits until both nodes own partitions, as `via` sees the cluster.
async fn wait_both_own(client: &reqwest::Client, via: &NodeProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = common::model::get_json(client, &via.url("/v1/cluster")).await {
            let owners: std::collections::BTreeSet<&str> = v["partitions"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if owners.len() == 2 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the two nodes never both owned partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_queries_to_each_other_over_mutual_tls() {
    // With 6 partitions, rendezvous hashing gives both n1 and n2 some player partitions
    // (with 4, n2 would own every one).
    let env = TestEnv::plain("tls-forward", 6);
    let ca = TestCa::new(&env.dir, "ca");
    ca.issue("n1", 1);
    ca.issue("n2", 2);
    ca.issue("client", 3);
    let ports = [free_udp_port(), free_udp_port()];
    let nodes: Vec<NodeProcess> = (0..2)
        .map(|i| {
            let cluster = format!(
                "[cluster]\ncluster_id = \"{}\"\ngossip_addr = \"127.0.0.1:{}\"\nseeds = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
                env.name, ports[i], ports[0], ports[1]
            );
            let id = format!("n{}", i + 1);
            NodeProcess::start(&env, &id, &format!("{cluster}{}", node_tls(&ca, &id, true)))
        })
        .collect();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client(&ca, Some("client")))
        .build()
        .unwrap();
    wait_both_own(&client, &nodes[0]).await;
    let events: String = (0..40)
        .map(|i| {
            format!("{{\"v\":1,\"id\":\"e{i}\",\"ts\":1700000000000,\"player\":\"p{i}\",\"kind\":\"level_up\",\"level\":3}}\n")
        })
        .collect();
    let r = client
        .post(nodes[0].url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let mut served_by = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..40 {
        loop {
            let v =
                common::model::get_json(&client, &nodes[0].url(&format!("/v1/players/p{i}"))).await;
            match v {
                Ok(v) if v["player"]["level"] == 3 && v["stale"] == false => {
                    served_by.insert(v["served_by"].as_str().unwrap_or_default().to_string());
                    break;
                }
                other => assert!(Instant::now() < deadline, "player p{i}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        served_by.into_iter().collect::<Vec<_>>(),
        ["n1", "n2"],
        "node 1 answered every player, half of them forwarded to node 2"
    );
    for n in &nodes {
        let errors = n.errors.lock().unwrap();
        assert!(errors.is_empty(), "unexpected ERROR lines: {errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_reaches_the_log() {
    let env = TestEnv::plain("tls-secrets", 1);
    // The plain Cassandra does not ask for it, so the node works with it set.
    let password = format!("pw-{}", common::unique("cassandra"));
    let mut node = NodeProcess::start_with_env(
        &env,
        "n1",
        "",
        &[
            ("RUST_LOG", "debug"),
            ("TALLY_CASSANDRA__USERNAME", "tally"),
            ("TALLY_CASSANDRA__PASSWORD", &password),
        ],
    );
    node.wait_ready(Duration::from_secs(60)).await;
    node.terminate();
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    assert!(log.lines().count() > 50, "debug logging was on");
    assert!(
        !log.contains(&password),
        "the password is in {}",
        node.log_path.display()
    );
}
