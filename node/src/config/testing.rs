//! Config files and the files they name, in a temporary folder removed on drop.

use std::path::PathBuf;

use super::Config;

/// The first lines every test config needs.
pub const NODE: &str = "[node]\nid = \"n1\"\napi_addr = \"127.0.0.1:0\"\n";

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new() -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "tally-config-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Dir(dir)
    }

    /// Writes `name` in the folder; returns its path as TOML text can name it.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path.display().to_string()
    }

    /// Loads `text` as a config file.
    pub fn load(&self, text: &str) -> anyhow::Result<Config> {
        let path = self.0.join(format!("{}.toml", rand::random::<u32>()));
        std::fs::write(&path, text).expect("write temp config");
        Config::load(&path)
    }

    /// The error of loading `text`, with its context.
    pub fn error(&self, text: &str) -> String {
        format!(
            "{:#}",
            self.load(text).expect_err("the config should be refused")
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
