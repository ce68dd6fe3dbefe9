//! Passwords in the configuration: a [`Secret`] never shows its value in a log line, an
//! error message or a `Debug` dump of the config, and is never read from the config file
//! itself: it comes from a file the config names, or from one environment variable.
//!
//! Not for: certificates and keys, which stay in their files and are read by the TLS code.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};

/// A password. `Debug` and `Display` print `<redacted>`; [`Secret::expose`] is the one way
/// to the value, used where it is handed to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the client library that needs it. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from: `file_key` names a file (`kafka.sasl_password_file`), `env`
/// the variable that may hold it instead (`TALLY_KAFKA__SASL_PASSWORD`). Reads it, without
/// a final line break (a file written by `echo` has one); at most one of the two may be set,
/// and an empty secret is refused. None if neither is set.
pub fn read_secret(
    file_key: &str,
    file: Option<&Path>,
    env: &str,
) -> anyhow::Result<Option<Secret>> {
    let from_env = std::env::var_os(env);
    let value = match (file, from_env) {
        (Some(_), Some(_)) => {
            bail!("{file_key} and the environment variable {env} are both set: set one")
        }
        (None, None) => return Ok(None),
        (None, Some(v)) => v
            .into_string()
            .map_err(|_| anyhow::anyhow!("the environment variable {env} is not UTF-8"))?,
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{file_key}: read {}", path.display()))?;
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_string()
        }
    };
    if value.is_empty() {
        match file {
            Some(path) => bail!("{file_key}: {} is empty", path.display()),
            None => bail!("the environment variable {env} is empty"),
        }
    }
    Ok(Some(Secret(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_formats_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(
            format!("{s} {s:?} {:?}", Some(&s)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_secret_file_loses_its_final_line_break_only() {
        let dir = std::env::temp_dir().join(format!("tally-secret-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = "TALLY_TEST_SECRET_NEVER_SET";
        for (text, want) in [
            ("pw", "pw"),
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            (" pw \n\n", " pw \n"),
        ] {
            let path = dir.join("pw");
            std::fs::write(&path, text).unwrap();
            let got = read_secret("x.password_file", Some(&path), env)
                .unwrap()
                .unwrap();
            assert_eq!(got.expose(), want, "{text:?}");
        }
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let e = read_secret("x.password_file", Some(&dir.join("empty")), env).unwrap_err();
        assert!(format!("{e:#}").contains("is empty"), "{e:#}");
        let e = read_secret("x.password_file", Some(&dir.join("missing")), env).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("x.password_file: read "),
            "{e:#}"
        );
        assert!(read_secret("x.password_file", None, env).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
