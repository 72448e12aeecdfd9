//! config.d: the files that steer every part of GSE (DESIGN §4).
//!
//! Loading goes in three steps, each with errors that name file, line and field:
//! 1. *fragments*: every file that exists is parsed on its own and checked against
//!    its schema (`deny_unknown_fields`), so an error points into the file at fault;
//! 2. *merge*: layers are merged key by key, lowest first — image defaults
//!    (`/usr/share/gse/config.d`), then the synced tree
//!    (`/user-data/persistent/config.d`), and inside each tree `system/FOO.conf`
//!    before `controller/cFOO.conf` — remembering where every value came from;
//! 3. *validate*: the merged view is turned into typed [`Settings`] and checked as a
//!    whole (ranges, cross-field rules).
//!
//! Any error rejects the whole load; the caller keeps its last good [`Settings`].

mod boot;
mod duration;
mod layer;

use std::{collections::BTreeMap, fmt, path::PathBuf};

pub use boot::{BootConf, HealthConf, InitSystem, OnFailure, SlotConf};
pub use duration::Duration;
use layer::{LogicalFile, Origin};
use serde::Serialize;

use crate::paths::Paths;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// The typed, validated, merged configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Settings {
    pub boot: BootConf,
}

/// A successful load: settings plus where each value came from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub settings: Settings,
    /// Dotted key (`boot.health.max_attempts`) → file and line that set it.
    pub origins: BTreeMap<String, Origin>,
    /// Merged values as TOML, by the same dotted keys as `origins`' prefixes.
    pub merged: toml::Table,
}

/// The config.d trees to read, lowest priority first.
pub fn layers(paths: &Paths) -> Vec<PathBuf> {
    vec![paths.image_config(), paths.synced_config()]
}

/// Loads and validates the whole configuration from `trees` (lowest first).
/// Returns every error found, not just the first.
pub fn load(trees: &[PathBuf]) -> Result<Loaded, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut loaded = Loaded::default();

    let boot = LogicalFile::new("boot", "system/boot.conf", Some("controller/cboot.conf"));
    if let Some(b) = boot.load::<BootConf>(trees, &mut loaded, &mut errors) {
        loaded.settings.boot = b;
    }

    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// Checks one tree on its own, as an administrator does before publishing it.
pub fn check_tree(dir: &std::path::Path) -> Result<Loaded, Vec<ConfigError>> {
    if !dir.is_dir() {
        return Err(vec![ConfigError {
            file: dir.to_owned(),
            line: None,
            column: None,
            message: "is not a directory (expected a config.d tree)".into(),
        }]);
    }
    load(&[dir.to_owned()])
}
