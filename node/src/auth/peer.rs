//! How a node proves to another that a call comes from the cluster: an HMAC-SHA256, keyed
//! with the cluster secret, of the method, the path with its query, and the time.
//!
//! The header [`PEER_AUTH`] reads `v1 <unix ms> <hex mac>`. The receiver recomputes the mac
//! over what it received and compares in constant time; a time more than
//! [`MAX_SKEW_MS`] from its own clock is refused, so a recorded call cannot be replayed
//! later than that. The secret itself never travels, so plain HTTP between nodes does not
//! reveal it (it does reveal the answers: use TLS or a private network for those). A
//! replay within the window asks the same read-only question again, of any node.
//!
//! Not for: deciding what a verified peer may do (everything it asks: see `api::auth`).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying a node's signature on its call to another node.
pub const PEER_AUTH: &str = "x-tally-peer-auth";

/// The most a signature's time may differ from the receiver's clock, in milliseconds.
pub const MAX_SKEW_MS: i64 = 60_000;

/// The fewest bytes a cluster secret may have.
pub const MIN_SECRET_BYTES: usize = 32;

const VERSION: &str = "v1";

/// The cluster secret. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct PeerSecret(Vec<u8>);

impl fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

/// Why a peer credential was refused (for the node's log; the caller sees only 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no {PEER_AUTH} header")]
    Missing,
    #[error("{PEER_AUTH} is not `{VERSION} <unix ms> <hex mac>`")]
    Malformed,
    #[error("{PEER_AUTH} is {0} ms away from this node's clock (at most {MAX_SKEW_MS})")]
    Skewed(i64),
    #[error("{PEER_AUTH} does not match: another cluster secret, or another request")]
    Mismatch,
}

impl PeerSecret {
    /// A secret of at least [`MIN_SECRET_BYTES`] bytes; the error never shows it.
    pub fn new(secret: &[u8]) -> anyhow::Result<PeerSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            anyhow::bail!(
                "the cluster secret must be at least {MIN_SECRET_BYTES} bytes, got {} \
                 (make one with `tally-node keys cluster-secret`)",
                secret.len()
            );
        }
        Ok(PeerSecret(secret.to_vec()))
    }

    fn mac(&self, method: &str, path_and_query: &str, at_ms: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        for part in [VERSION, method, path_and_query, &at_ms.to_string()] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The [`PEER_AUTH`] value for a call of `method` on `path_and_query` at `at_ms`.
    pub fn sign(&self, method: &str, path_and_query: &str, at_ms: i64) -> String {
        let tag = self
            .mac(method, path_and_query, at_ms)
            .finalize()
            .into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{VERSION} {at_ms} {hex}")
    }

    /// Checks a [`PEER_AUTH`] value against the request received, at `now_ms`.
    pub fn verify(
        &self,
        header: Option<&[u8]>,
        method: &str,
        path_and_query: &str,
        now_ms: i64,
    ) -> Result<(), PeerError> {
        let header = header.ok_or(PeerError::Missing)?;
        let text = std::str::from_utf8(header).map_err(|_| PeerError::Malformed)?;
        let mut parts = text.split(' ');
        let (Some(VERSION), Some(at), Some(hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PeerError::Malformed);
        };
        let at_ms: i64 = at.parse().map_err(|_| PeerError::Malformed)?;
        let tag = decode_hex(hex).ok_or(PeerError::Malformed)?;
        let skew = now_ms.saturating_sub(at_ms);
        if skew.abs() > MAX_SKEW_MS {
            return Err(PeerError::Skewed(skew));
        }
        self.mac(method, path_and_query, at_ms)
            .verify_slice(&tag)
            .map_err(|_| PeerError::Mismatch)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> PeerSecret {
        PeerSecret::new(s.repeat(32).as_bytes()).unwrap()
    }

    #[test]
    fn a_signature_holds_for_its_request_only() {
        let s = secret("a");
        let path = "/v1/players/a%2Fb%231?x=1";
        let h = s.sign("GET", path, 1_000_000);
        let ok = |h: &str, method: &str, path: &str, now: i64| {
            s.verify(Some(h.as_bytes()), method, path, now)
        };
        assert_eq!(ok(&h, "GET", path, 1_000_000), Ok(()));
        assert_eq!(ok(&h, "GET", path, 1_000_000 + MAX_SKEW_MS), Ok(()));
        assert_eq!(
            ok(&h, "GET", "/v1/players/a", 1_000_000),
            Err(PeerError::Mismatch)
        );
        assert_eq!(ok(&h, "POST", path, 1_000_000), Err(PeerError::Mismatch));
        assert_eq!(
            ok(&h, "GET", path, 1_000_001 + MAX_SKEW_MS),
            Err(PeerError::Skewed(MAX_SKEW_MS + 1))
        );
        let other = secret("b").sign("GET", path, 1_000_000);
        assert_eq!(ok(&other, "GET", path, 1_000_000), Err(PeerError::Mismatch));
        // The time is signed too: moving it breaks the mac.
        let moved = h.replacen("1000000", "1000001", 1);
        assert_eq!(ok(&moved, "GET", path, 1_000_000), Err(PeerError::Mismatch));
    }

    #[test]
    fn malformed_headers_are_named_as_such() {
        let s = secret("a");
        assert_eq!(s.verify(None, "GET", "/", 0), Err(PeerError::Missing));
        for bad in [
            "",
            "1",
            "v1 1",
            "v2 1 00",
            "v1 x 00",
            "v1 1 zz",
            "v1 1 00 extra",
        ] {
            assert_eq!(
                s.verify(Some(bad.as_bytes()), "GET", "/", 1),
                Err(PeerError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_shows_nothing_of_the_secret() {
        assert_eq!(format!("{:?}", secret("q")), "PeerSecret(..)");
        assert!(PeerSecret::new(b"short").is_err());
    }
}
