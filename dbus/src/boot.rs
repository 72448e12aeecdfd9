//! `org.gentoo.Gse1.Boot`: served only by `gsed --early`, peer-to-peer on
//! `/run/gse/early.sock`, and driven by the initramfs hook through
//! `gsectl boot prepare`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zbus::proxy;

use crate::DBusError;

/// What early boot decided: `/run/gse/boot.json`, and the reply of `Prepare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The slot that boots.
    pub slot: String,
    /// `normal`, `bailout` or `repair`.
    pub action: String,
    /// Why, in one sentence.
    pub reason: String,
    /// Each slot's flag as found before acting: `valid`, `missing`, `unreadable: …`, `forged: …`.
    pub flags: BTreeMap<String, String>,
    /// The booted slot's flag state in one word.
    pub flag: String,
    /// Healthy cycles of the booted slot according to its (renewed) flag.
    pub healthy_cycles: u64,
    pub image_version: String,
    /// Boots of each slot since its last healthy cycle, this one included.
    pub attempts: BTreeMap<String, u32>,
    /// How the previous boot ended (`healthy-cycle`, `dirty`, `red`, `incomplete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The network in early boot: `not needed: …`, `up: …` or `offline: …`.
    #[serde(default)]
    pub network: String,
    /// The config.d sync in early boot, when it was tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// What early boot skipped (a configured mount point the image lacks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Seconds since the epoch.
    pub time: u64,
}

#[proxy(interface = "org.gentoo.Gse1.Boot", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Boot {
    /// Decides the slot, acts on the failure policy, mounts the new root at
    /// `sysroot` with the stateless layout and writes /run/gse/boot.json.
    /// Returns the boot record as JSON.
    fn prepare(&self, sysroot: &str) -> Result<String, DBusError>;

    /// The boot is handed over: `gsed --early` exits.
    fn finish(&self) -> Result<(), DBusError>;
}
