//! Checks of the files the config names (certificates, keys, CAs): they exist when the
//! config is read, so a wrong path fails the start, or `check-config`, with the setting
//! named, rather than a later handshake.
//!
//! Not for: reading them (see `tls`, and librdkafka for Kafka's).

use std::path::PathBuf;

use anyhow::bail;

/// Every file set in `files` (setting, path) is a readable file.
pub fn require_files(files: &[(&str, Option<&PathBuf>)]) -> anyhow::Result<()> {
    for (key, file) in files {
        if let Some(f) = file.filter(|f| !f.is_file()) {
            bail!("{key}: {} is not a readable file", f.display());
        }
    }
    Ok(())
}

/// A certificate and its key are set together or not at all.
pub fn require_pair(
    (cert_key, cert): (&str, Option<&PathBuf>),
    (key_key, key): (&str, Option<&PathBuf>),
) -> anyhow::Result<()> {
    if cert.is_some() != key.is_some() {
        bail!("{cert_key} and {key_key} go together: set both or neither");
    }
    Ok(())
}
