//! `org.gentoo.Gse1.Boot`: served only by `gsed --early`, peer-to-peer on
//! `/run/gse/early.sock`, and driven by the initramfs hook through
//! `gsectl boot prepare`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zbus::proxy;

use crate::DBusError;

wire_enum!(
    "boot action",
    /// What early boot did with the slots (DESIGN §5).
    #[derive(Default)]
    pub enum Action {
        /// The primary slot was trusted and boots.
        #[default]
        Normal = "normal",
        /// The backup slot boots; the primary is left for an administrator.
        Bailout = "bailout",
        /// The primary was restored from the backup, then booted.
        Repair = "repair",
        /// A newly installed version boots on probation (DESIGN §11).
        Trial = "trial",
        /// The trial failed; the slot that was good before boots.
        Rollback = "rollback",
        /// No GSE system on the disks: the server's image runs from RAM (DESIGN §12).
        Diskless = "diskless",
    }
);

wire_enum!(
    "boot verdict",
    /// How a boot ended, as far as the health journal knows.
    pub enum Verdict {
        /// Healthy startup and clean shutdown.
        HealthyCycle = "healthy-cycle",
        /// Reached healthy, then lost power (no clean shutdown).
        Dirty = "dirty",
        /// Recorded red.
        Red = "red",
        /// Started, but never reached healthy.
        Incomplete = "incomplete",
    }
);

/// What early boot decided: `/run/gse/boot.json`, and the reply of `Prepare`.
/// Fields missing from a file read as their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootRecord {
    /// The slot that boots.
    pub slot: String,
    pub action: Action,
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
    /// How the previous boot ended, when early boot judged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Verdict>,
    /// The network in early boot: `not needed: …`, `up: …` or `offline: …`.
    pub network: String,
    /// The config.d sync in early boot, when it was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// What early boot skipped (a configured mount point the image lacks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Seconds since the epoch.
    pub time: u64,
    /// The release of the kernel this boot runs.
    pub kernel: String,
    /// In `Prepare`'s reply only: the slot runs a kernel of its own, this
    /// release, which is loaded; the hook releases the disks and starts it
    /// (`gsectl boot kexec`), and the early boot under it carries this
    /// decision out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kexec: Option<String>,
}

#[proxy(interface = "org.gentoo.Gse1.Boot", default_service = "org.gentoo.Gse1", default_path = "/org/gentoo/Gse1")]
pub trait Boot {
    /// Decides the slot, acts on the failure policy, mounts the new root at
    /// `sysroot` with the stateless layout and writes /run/gse/boot.json.
    /// Returns the boot record as JSON. When the slot carries a kernel of its
    /// own, the record names it in `kexec`: that kernel is loaded, nothing is
    /// mounted, and the hook starts it.
    fn prepare(&self, sysroot: &str) -> Result<String, DBusError>;

    /// On a machine with no GSE system (DESIGN §12): lays out the disk of
    /// drives.conf (one that holds data only with `wipe = true`, `force`, or
    /// this machine's own unfinished install; never a GSE system), installs
    /// the server's image into every slot and writes the boot loader.
    /// Returns one line saying what was done.
    fn install(&self, force: bool) -> Result<String, DBusError>;

    /// Diskless (`gse.install=diskless`): unpacks the server's image into RAM
    /// at `sysroot` with the stateless layout and writes /run/gse/boot.json.
    /// Returns the boot record as JSON.
    fn prepare_diskless(&self, sysroot: &str) -> Result<String, DBusError>;

    /// With `prompt_at_boot` under policy `ask`: the version that may be
    /// installed now, as JSON `{"version", "bytes"}`, or an empty string.
    fn offer_update(&self) -> Result<String, DBusError>;

    /// Installs the offered version into the slot that is not primary, in the
    /// background; the next `Prepare` boots it as a trial.
    fn install_update(&self) -> Result<(), DBusError>;

    /// The update's state as JSON, while it installs.
    fn update_status(&self) -> Result<String, DBusError>;

    /// The boot is handed over: `gsed --early` exits.
    fn finish(&self) -> Result<(), DBusError>;
}
