//! `[kafka]`: where the brokers are, which topics Tally reads and writes, and how every
//! Kafka client of the node connects: TLS and SASL through typed settings, and any other
//! librdkafka property through the `[kafka.client]` table.
//!
//! Each client (the consumer, the ingest producer, the dead-letter producer, the admin and
//! metadata clients) is given Tally's own settings first, then [`KafkaConfig::apply_connection`]
//! adds the security settings and the table. Properties Tally's guarantees depend on cannot
//! be set in the table ([`RESERVED`]).
//!
//! Not for: making the clients (see `source`, `ingest`, `dead_letter`, `node::kafka_admin`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::bail;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Deserializer};

use super::files::{require_files, require_pair};
use super::secret::{read_secret, Secret};

/// The environment variable that may hold `sasl.password` instead of a file.
pub const SASL_PASSWORD_ENV: &str = "TALLY_KAFKA__SASL_PASSWORD";

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    /// Topic of all player and viewer events, keyed by player id.
    pub player_topic: String,
    /// Topic of channel-changing events, keyed by channel id.
    pub channel_topic: String,
    /// Topic receiving rejected ingest input, with the reason in a header.
    pub dlq_topic: String,
    /// Partition count used when Tally creates the topics (existing topics keep theirs).
    pub partitions: i32,
    /// Replication factor used when Tally creates the topics.
    pub replication_factor: i32,
    /// Consumer group under which durable offsets are committed (for lag tools only:
    /// Tally assigns partitions itself and resumes from Cassandra).
    pub group_id: String,
    /// The broker answers a fetch once this many bytes are waiting (1: any committed
    /// record)...
    pub fetch_min_bytes: u32,
    /// ...or once this many milliseconds have passed: the most a quiet stream waits.
    /// Larger batches cost the node less CPU per record; the wait adds to latency.
    pub fetch_wait_max_ms: u32,
    /// How the clients talk to the brokers: `plaintext` (librdkafka's default when unset),
    /// `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's `security.protocol`).
    pub security_protocol: Option<SecurityProtocol>,
    /// With a `sasl_*` protocol: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// With a `sasl_*` protocol: the user.
    pub sasl_username: Option<String>,
    /// With a `sasl_*` protocol: a file holding the password (one final line break is
    /// dropped). Or set the environment variable `TALLY_KAFKA__SASL_PASSWORD`; the password
    /// itself is never read from the config file.
    pub sasl_password_file: Option<PathBuf>,
    /// The password, read from `sasl_password_file` or the environment by `Config::load`.
    #[serde(skip)]
    pub sasl_password: Option<Secret>,
    /// With `ssl` or `sasl_ssl`: the CA certificates (PEM) the brokers' certificates are
    /// checked against; unset, the system's. Broker host names are verified.
    pub ssl_ca_file: Option<PathBuf>,
    /// With `ssl` or `sasl_ssl`, for brokers that require client certificates: this
    /// node's certificate (PEM), with `ssl_key_file`.
    pub ssl_certificate_file: Option<PathBuf>,
    /// The private key (PEM, unencrypted) of `ssl_certificate_file`.
    pub ssl_key_file: Option<PathBuf>,
    /// `[kafka.client]`: librdkafka properties given to every client the node makes, after
    /// Tally's own settings (so they can change its tuning, e.g. `"socket.keepalive.enable"
    /// = "true"`). The properties in [`RESERVED`] are refused, and so is a property one of
    /// the typed settings above already sets.
    pub client: ClientProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            player_topic: "player-events".into(),
            channel_topic: "channel-events".into(),
            dlq_topic: "events-dlq".into(),
            partitions: 8,
            replication_factor: 1,
            group_id: "tally".into(),
            // 1: the broker answers as soon as committed records wait. A larger value made
            // a caught-up consumer wait out fetch_wait_max_ms for every small write (50 ms
            // of visibility) and saved no measurable CPU (docs/ARCHITECTURE.md, "Latency,
            // stage by stage").
            fetch_min_bytes: 1,
            fetch_wait_max_ms: 50,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_file: None,
            sasl_password: None,
            ssl_ca_file: None,
            ssl_certificate_file: None,
            ssl_key_file: None,
            client: ClientProperties::default(),
        }
    }
}

/// librdkafka's `security.protocol`, written in lower or upper case (`sasl_ssl`, `SASL_SSL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl TryFrom<String> for SecurityProtocol {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        const ALL: [SecurityProtocol; 4] = [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ];
        ALL.into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(&s))
            .ok_or_else(|| {
                format!("expected plaintext, ssl, sasl_plaintext or sasl_ssl, got {s:?}")
            })
    }
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanisms`: the ones librdkafka implements itself (no Kerberos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SaslMechanism {
    ScramSha512,
    ScramSha256,
    Plain,
}

impl TryFrom<String> for SaslMechanism {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        const ALL: [SaslMechanism; 3] = [
            SaslMechanism::ScramSha512,
            SaslMechanism::ScramSha256,
            SaslMechanism::Plain,
        ];
        ALL.into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("expected SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN, got {s:?}"))
    }
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// Properties `[kafka.client]` may not set, each with what owns it: exactly-once reading,
/// ingest's transactions and the node's own offset commits depend on them.
pub const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    ("client.id", "Tally names each client"),
    ("enable.auto.commit", "Tally commits durable offsets itself"),
    (
        "enable.auto.offset.store",
        "Tally commits durable offsets itself",
    ),
    ("auto.offset.reset", "Tally resumes from its checkpoints"),
    (
        "isolation.level",
        "read_committed: exactly once depends on it",
    ),
    ("enable.partition.eof", "the poll loop"),
    ("transactional.id", "ingest's transactions"),
    ("enable.idempotence", "ingest's transactions"),
    ("acks", "ingest's transactions"),
    ("request.required.acks", "ingest's transactions"),
    ("transaction.timeout.ms", "ingest.request_timeout_ms"),
    ("message.timeout.ms", "ingest.request_timeout_ms"),
    ("delivery.timeout.ms", "ingest.request_timeout_ms"),
    ("message.max.bytes", "ingest's record limit"),
    ("fetch.min.bytes", "kafka.fetch_min_bytes"),
    ("fetch.wait.max.ms", "kafka.fetch_wait_max_ms"),
    (
        "sasl.password",
        "kafka.sasl_password_file or TALLY_KAFKA__SASL_PASSWORD",
    ),
];

/// Other names librdkafka accepts for a property a typed setting sets.
const ALIASES: &[(&str, &str)] = &[("sasl.mechanism", "sasl.mechanisms")];

impl KafkaConfig {
    /// Adds the connection settings to a client's own: the typed security settings, then
    /// `[kafka.client]`. Call it last, on every client the node makes.
    pub fn apply_connection<'c>(&self, c: &'c mut ClientConfig) -> &'c mut ClientConfig {
        for (key, value) in self.typed_properties() {
            c.set(key, value);
        }
        for (key, value) in &self.client.0 {
            c.set(key, value);
        }
        c
    }

    /// A client config holding only the brokers and the connection settings (for tools and
    /// tests that read or write the node's topics).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.apply_connection(&mut c);
        c
    }

    /// The properties the typed settings set.
    fn typed_properties(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        let mut out = Vec::new();
        let mut add = |key, value: Option<String>| {
            if let Some(v) = value {
                out.push((key, v));
            }
        };
        add(
            "security.protocol",
            self.security_protocol.map(|p| p.as_str().into()),
        );
        add(
            "sasl.mechanisms",
            self.sasl_mechanism.map(|m| m.as_str().into()),
        );
        add("sasl.username", self.sasl_username.clone());
        add(
            "sasl.password",
            self.sasl_password.as_ref().map(|s| s.expose().into()),
        );
        add("ssl.ca.location", self.ssl_ca_file.as_deref().map(path));
        add(
            "ssl.certificate.location",
            self.ssl_certificate_file.as_deref().map(path),
        );
        add("ssl.key.location", self.ssl_key_file.as_deref().map(path));
        out
    }

    /// Reads the SASL password from its file or the environment, without a final line break.
    pub fn read_secrets(&mut self) -> anyhow::Result<()> {
        self.sasl_password = read_secret(
            "kafka.sasl_password_file",
            self.sasl_password_file.as_deref(),
            SASL_PASSWORD_ENV,
        )?;
        Ok(())
    }

    /// The typed security settings agree with each other and their files exist; the table
    /// sets no reserved property and none a typed setting sets; librdkafka accepts every
    /// property and value.
    pub fn validate_connection(&self) -> anyhow::Result<()> {
        self.validate_typed_security()?;
        let names: Vec<&str> = RESERVED.iter().map(|(k, _)| *k).collect();
        let typed = self.typed_properties();
        for key in self.client.0.keys() {
            if let Some((_, owner)) = RESERVED.iter().find(|(k, _)| k == key) {
                bail!(
                    "kafka.client: {key:?} is set by Tally ({owner}); the table cannot set any of: {}",
                    names.join(", ")
                );
            }
            let canonical = ALIASES
                .iter()
                .find(|(alias, _)| alias == key)
                .map_or(key.as_str(), |(_, name)| *name);
            if typed.iter().any(|(k, _)| *k == canonical) {
                bail!("kafka.client: {key:?} is also set by one of the typed kafka settings (kafka.security_protocol, kafka.sasl_*, kafka.ssl_*): set it in one place");
            }
        }
        let mut all = self.client_config();
        all.set("client.id", "tally-config-check");
        all.create_native_config().map_err(|e| match e {
            // The value is left out: it may be a password.
            KafkaError::ClientConfig(_, description, key, _) => {
                anyhow::anyhow!("kafka: librdkafka refuses the property {key:?}: {description}")
            }
            other => anyhow::anyhow!("kafka: librdkafka refuses the settings: {other}"),
        })?;
        Ok(())
    }

    fn validate_typed_security(&self) -> anyhow::Result<()> {
        let protocol = self.security_protocol;
        let sasl = protocol.is_some_and(SecurityProtocol::sasl);
        let tls = protocol.is_some_and(SecurityProtocol::tls);
        let named = protocol.map_or("unset", SecurityProtocol::as_str);
        let sasl_set = [
            ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
            ("kafka.sasl_username", self.sasl_username.is_some()),
            ("kafka.sasl_password_file", self.sasl_password.is_some()),
        ];
        for (key, set) in sasl_set {
            if sasl && !set {
                let key = if key == "kafka.sasl_password_file" {
                    "kafka.sasl_password_file (or TALLY_KAFKA__SASL_PASSWORD)"
                } else {
                    key
                };
                bail!("{key} must be set when kafka.security_protocol is {named}");
            }
            if !sasl && set {
                bail!(
                    "{key} needs kafka.security_protocol sasl_plaintext or sasl_ssl, not {named}"
                );
            }
        }
        let files = [
            ("kafka.ssl_ca_file", &self.ssl_ca_file),
            ("kafka.ssl_certificate_file", &self.ssl_certificate_file),
            ("kafka.ssl_key_file", &self.ssl_key_file),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if !tls {
                bail!("{key} needs kafka.security_protocol ssl or sasl_ssl, not {named}");
            }
            require_files(&[(key, Some(file))])?;
        }
        require_pair(
            (
                "kafka.ssl_certificate_file",
                self.ssl_certificate_file.as_ref(),
            ),
            ("kafka.ssl_key_file", self.ssl_key_file.as_ref()),
        )
    }
}

/// `[kafka.client]`: librdkafka property names and values. Names may be quoted
/// (`"socket.keepalive.enable" = true`) or dotted TOML keys; numbers and booleans are
/// given to librdkafka as text. `Debug` hides the values of passwords and secrets.
#[derive(Clone, Default, PartialEq)]
pub struct ClientProperties(pub BTreeMap<String, String>);

impl ClientProperties {
    /// Whether a property's value is a credential, hidden from `Debug`.
    fn sensitive(key: &str) -> bool {
        ["password", "secret", "jaas", ".pem", "token"]
            .iter()
            .any(|s| key.contains(s))
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = if Self::sensitive(k) { "<redacted>" } else { v };
                (k, v)
            }))
            .finish()
    }
}

impl<'de> Deserialize<'de> for ClientProperties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A value as TOML gives it: text, a number or a boolean, or a table of dotted keys.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            Bool(bool),
            Int(i64),
            Float(f64),
            Text(String),
            Table(BTreeMap<String, Value>),
        }
        fn flatten(prefix: &str, v: Value, out: &mut BTreeMap<String, String>) {
            let text = match v {
                Value::Bool(b) => b.to_string(),
                Value::Int(i) => i.to_string(),
                Value::Float(x) => x.to_string(),
                Value::Text(s) => s,
                Value::Table(t) => {
                    for (k, v) in t {
                        flatten(&format!("{prefix}.{k}"), v, out);
                    }
                    return;
                }
            };
            out.insert(prefix.to_string(), text);
        }
        let table = BTreeMap::<String, Value>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in table {
            flatten(&k, v, &mut out);
        }
        Ok(ClientProperties(out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Dir, NODE};
    use super::*;

    #[test]
    fn typed_settings_become_librdkafka_properties() {
        let dir = Dir::new();
        let ca = dir.file("ca.pem", "not parsed here");
        let pw = dir.file("pw", "s3cret-pw\n");
        let cfg = dir
            .load(&format!(
                "{NODE}[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"tally\"\nsasl_password_file = \"{pw}\"\nssl_ca_file = \"{ca}\"\n"
            ))
            .unwrap();
        let c = cfg.kafka.client_config();
        let get = |k| c.get(k).unwrap_or("-").to_string();
        assert_eq!(get("security.protocol"), "sasl_ssl");
        assert_eq!(get("sasl.mechanisms"), "SCRAM-SHA-512");
        assert_eq!(get("sasl.username"), "tally");
        assert_eq!(get("sasl.password"), "s3cret-pw");
        assert_eq!(get("ssl.ca.location"), ca);
        assert_eq!(get("bootstrap.servers"), "127.0.0.1:9092");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(debug.contains("sasl_password: Some(<redacted>)"), "{debug}");
    }

    #[test]
    fn uppercase_protocols_as_kafka_writes_them_are_accepted() {
        let dir = Dir::new();
        let cfg = dir
            .load(&format!("{NODE}[kafka]\nsecurity_protocol = \"SSL\"\n"))
            .unwrap();
        assert_eq!(cfg.kafka.security_protocol, Some(SecurityProtocol::Ssl));
    }

    #[test]
    fn the_client_table_comes_after_tallys_own_settings() {
        let dir = Dir::new();
        let cfg = dir
            .load(&format!(
                "{NODE}[kafka.client]\n\"linger.ms\" = 20\nsocket.keepalive.enable = true\n\"ssl.key.password\" = \"kp\"\n"
            ))
            .unwrap();
        let mut c = ClientConfig::new();
        c.set("linger.ms", "2");
        cfg.kafka.apply_connection(&mut c);
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        let debug = format!("{:?}", cfg.kafka.client);
        assert!(debug.contains("\"linger.ms\": \"20\""), "{debug}");
        assert!(!debug.contains("kp"), "{debug}");
    }

    #[test]
    fn the_client_table_cannot_set_what_tally_owns() {
        let dir = Dir::new();
        for key in [
            "isolation.level",
            "enable.auto.commit",
            "transactional.id",
            "group.id",
        ] {
            let e = dir.error(&format!("{NODE}[kafka.client]\n\"{key}\" = \"x\"\n"));
            assert!(
                e.contains(&format!("kafka.client: {key:?} is set by Tally")),
                "{e}"
            );
            assert!(
                e.contains("bootstrap.servers, metadata.broker.list, group.id"),
                "{e}"
            );
        }
        let e = dir.error(&format!(
            "{NODE}[kafka.client]\n\"sasl.password\" = \"x\"\n"
        ));
        assert!(
            e.contains("kafka.sasl_password_file or TALLY_KAFKA__SASL_PASSWORD"),
            "{e}"
        );
    }

    #[test]
    fn a_property_set_twice_or_unknown_to_librdkafka_is_refused() {
        let dir = Dir::new();
        let e = dir.error(&format!(
            "{NODE}[kafka]\nsecurity_protocol = \"ssl\"\n[kafka.client]\n\"security.protocol\" = \"ssl\"\n"
        ));
        assert!(e.contains("\"security.protocol\" is also set"), "{e}");
        let e = dir.error(&format!(
            "{NODE}[kafka.client]\n\"no.such.property\" = \"hunter2\"\n"
        ));
        assert!(
            e.contains("librdkafka refuses the property \"no.such.property\""),
            "{e}"
        );
        assert!(
            !e.contains("hunter2"),
            "the value is left out of the message: {e}"
        );
    }

    #[test]
    fn typed_security_settings_must_agree() {
        let dir = Dir::new();
        let pw = dir.file("pw", "pw");
        let cases = [
            (
                "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"".to_string(),
                "kafka.sasl_username must be set when kafka.security_protocol is sasl_ssl",
            ),
            (
                "sasl_username = \"u\"".to_string(),
                "kafka.sasl_username needs kafka.security_protocol sasl_plaintext or sasl_ssl, not unset",
            ),
            (
                format!("security_protocol = \"ssl\"\nsasl_password_file = \"{pw}\""),
                "kafka.sasl_password_file needs kafka.security_protocol sasl_plaintext or sasl_ssl, not ssl",
            ),
            (
                format!("security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_file = \"{pw}\"\nssl_ca_file = \"{pw}\""),
                "kafka.ssl_ca_file needs kafka.security_protocol ssl or sasl_ssl, not sasl_plaintext",
            ),
            (
                "security_protocol = \"ssl\"\nssl_ca_file = \"/no/such/ca.pem\"".to_string(),
                "kafka.ssl_ca_file: /no/such/ca.pem is not a readable file",
            ),
            (
                format!("security_protocol = \"ssl\"\nssl_certificate_file = \"{pw}\""),
                "kafka.ssl_certificate_file and kafka.ssl_key_file go together",
            ),
            (
                "sasl_password = \"inline\"".to_string(),
                "kafka.sasl_password cannot be set in a config file",
            ),
            (
                "security_protocol = \"tls\"".to_string(),
                "expected plaintext, ssl, sasl_plaintext or sasl_ssl, got \"tls\"",
            ),
            (
                "sasl_mechanism = \"GSSAPI\"".to_string(),
                "expected SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN, got \"GSSAPI\"",
            ),
        ];
        for (settings, want) in cases {
            let e = dir.error(&format!("{NODE}[kafka]\n{settings}\n"));
            assert!(e.contains(want), "{settings}: {e}");
        }
    }
}
