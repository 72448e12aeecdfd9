//! `system/boot.conf` (overridden by `controller/cboot.conf`): the slots, and how
//! health is judged and acted on.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    Duration,
    layer::{Invalid, Validate},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootConf {
    /// The slot that boots when it is healthy.
    pub primary: String,
    pub slots: BTreeMap<String, SlotConf>,
    pub health: HealthConf,
}

impl Default for BootConf {
    fn default() -> Self {
        BootConf {
            primary: "a".into(),
            slots: BTreeMap::from([
                ("a".into(), SlotConf { device: "LABEL=gse-a".into(), fstype: "ext4".into(), subvol: None }),
                ("b".into(), SlotConf { device: "LABEL=gse-b".into(), fstype: "ext4".into(), subvol: None }),
            ]),
            health: HealthConf::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConf {
    /// A path, `LABEL=`, `PARTLABEL=` or `UUID=`.
    pub device: String,
    pub fstype: String,
    /// btrfs only: the subvolume that holds the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subvol: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Boot the backup slot at once.
    Bailout,
    /// Clone the backup over the broken slot, then boot it.
    Repair,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitSystem {
    /// systemd when `/run/systemd/system` exists, OpenRC when `/run/openrc` does, else none.
    Auto,
    Openrc,
    Systemd,
    /// No init-system check.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConf {
    /// Incomplete boots in a row before the failure policy acts.
    pub max_attempts: u32,
    pub on_failure: OnFailure,
    /// Whether a boot that reached healthy but lost power counts as a failed attempt.
    pub dirty_is_failure: bool,
    /// After this long, a boot whose required checks have not all passed is red.
    pub deadline: Duration,
    /// Each check program is killed after this long and counted as failed.
    pub check_timeout: Duration,
    /// Failed checks run again after this pause, until the deadline.
    pub retry_interval: Duration,
    /// Directory of executables that must all exit 0.
    pub required_checks: PathBuf,
    /// Directory of executables whose failures are reported but do not make the boot red.
    pub wanted_checks: PathBuf,
    /// Which init system's verdict is a required check.
    pub init: InitSystem,
}

impl Default for HealthConf {
    fn default() -> Self {
        HealthConf {
            max_attempts: 3,
            on_failure: OnFailure::Bailout,
            dirty_is_failure: false,
            deadline: Duration::secs(300),
            check_timeout: Duration::secs(30),
            retry_interval: Duration::secs(10),
            required_checks: "/etc/gse/checks/required".into(),
            wanted_checks: "/etc/gse/checks/wanted".into(),
            init: InitSystem::Auto,
        }
    }
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

impl Validate for BootConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push(Invalid { key: key.into(), message });
        if !self.slots.contains_key(&self.primary) {
            bad(
                "primary",
                format!(
                    "slot '{}' is not defined in [slots] (defined: {})",
                    self.primary,
                    self.slots.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        if self.slots.len() < 2 {
            bad("slots", format!("needs two slots (a primary and a backup), found {}", self.slots.len()));
        }
        for (name, slot) in &self.slots {
            if !valid_slot_name(name) {
                bad(&format!("slots.{name}"), "slot names are short lowercase words such as \"a\" and \"b\"".into());
            }
            let d = &slot.device;
            if !(d.starts_with('/') || d.starts_with("LABEL=") || d.starts_with("UUID=") || d.starts_with("PARTLABEL="))
                || d.ends_with('=')
            {
                bad(
                    &format!("slots.{name}.device"),
                    format!("'{d}' is not a device: expected a path, LABEL=, PARTLABEL= or UUID="),
                );
            }
            match (slot.fstype.as_str(), &slot.subvol) {
                ("btrfs", _) => {}
                ("ext4" | "xfs" | "f2fs", None) => {}
                ("ext4" | "xfs" | "f2fs", Some(_)) => bad(
                    &format!("slots.{name}.subvol"),
                    format!("subvol only applies to btrfs, this slot is {}", slot.fstype),
                ),
                (other, _) => bad(
                    &format!("slots.{name}.fstype"),
                    format!("'{other}' is not supported: expected ext4, btrfs, xfs or f2fs"),
                ),
            }
        }
        let h = &self.health;
        if !(1..=100).contains(&h.max_attempts) {
            bad("health.max_attempts", format!("{} is out of range: expected 1 to 100", h.max_attempts));
        }
        for (key, d) in [
            ("health.deadline", h.deadline),
            ("health.check_timeout", h.check_timeout),
            ("health.retry_interval", h.retry_interval),
        ] {
            if d.get().is_zero() {
                bad(key, "must be longer than zero".into());
            }
        }
        if h.check_timeout > h.deadline {
            bad("health.check_timeout", format!("{} is longer than the deadline {}", h.check_timeout, h.deadline));
        }
        for (key, p) in [("health.required_checks", &h.required_checks), ("health.wanted_checks", &h.wanted_checks)] {
            if !p.is_absolute() {
                bad(key, format!("'{}' must be an absolute path", p.display()));
            }
        }
        out
    }
}
