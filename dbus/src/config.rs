//! `org.gentoo.Gse1.Config`: the configuration in force and what is wrong with
//! the files on disk.

use serde::{Deserialize, Serialize};
use zbus::proxy;

use crate::DBusError;

/// One merged value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigValue {
    /// Dotted key, e.g. `boot.health.max_attempts` or `tmpfs.mount."/tmp".size`.
    pub key: String,
    pub value: serde_json::Value,
    /// `file:line` that set it; absent for built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `Dump()`: the whole configuration in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDump {
    pub generation: u64,
    /// Errors of the files as they are now (the values below are the last good ones).
    pub errors: Vec<String>,
    pub values: Vec<ConfigValue>,
}

#[proxy(interface = "org.gentoo.Gse1.Config", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Config {
    /// +1 on every applied change of config.d.
    #[zbus(property)]
    fn generation(&self) -> Result<u64, DBusError>;

    /// Errors of the current files (`file:line:column: message`); empty when valid.
    #[zbus(property)]
    fn errors(&self) -> Result<Vec<String>, DBusError>;

    /// The merged value at a dotted key, as JSON.
    fn get(&self, key: &str) -> Result<String, DBusError>;

    /// The whole configuration as JSON (a [`ConfigDump`]), with origins.
    fn dump(&self) -> Result<String, DBusError>;

    /// Reads config.d again now; fails with `InvalidConfig` naming every error.
    fn reload(&self) -> Result<(), DBusError>;

    /// The files whose change was just applied.
    #[zbus(signal)]
    fn changed(&self, files: Vec<String>) -> zbus::Result<()>;
}
