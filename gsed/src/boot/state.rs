//! Early boot's own memory between boots, in the persistent state directory:
//! attempt counters per slot, which boot was judged last, an unfinished repair,
//! and the image update's part (DESIGN §11): which slot is primary since the
//! last committed update, a pending trial, the version that failed its trial.
//! Written atomically; a missing or damaged file starts fresh (the flags still
//! protect the slots).

use std::{collections::BTreeMap, io, path::Path};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootState {
    /// Boots of each slot since its last healthy cycle, this one included.
    pub attempts: BTreeMap<String, u32>,
    /// The boot_id whose outcome was last taken into account.
    pub judged: Option<String>,
    /// A repair that was started and not finished: target slot and source slot.
    pub repair: Option<RepairMarker>,
    /// The primary slot since an update was committed (boot.conf's is the first choice).
    pub primary: Option<String>,
    /// A new version installed into a slot, waiting for or in its trial boot.
    pub trial: Option<Trial>,
    /// The last version whose trial failed: not tried again until a newer one
    /// is published or an administrator approves it again.
    pub failed: Option<Failed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: String,
    pub version: String,
    /// Set by the early boot that starts the trial: if it finds this set, the
    /// trial never went green (gsed clears the trial when it commits).
    pub booted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub version: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairMarker {
    pub target: String,
    pub source: String,
    pub started: u64,
}

impl BootState {
    pub fn load(path: &Path) -> BootState {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "boot state is damaged; starting with fresh counters");
                BootState::default()
            }),
            Err(_) => BootState::default(),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomic(path, &data, 0o644)
    }

    /// The slot to boot first: the committed one, else boot.conf's.
    pub fn primary<'a>(&'a self, conf: &'a crate::config::BootConf) -> &'a str {
        self.primary.as_deref().filter(|p| conf.slots.contains_key(*p)).unwrap_or(&conf.primary)
    }

    pub fn attempts(&self, slot: &str) -> u32 {
        self.attempts.get(slot).copied().unwrap_or(0)
    }
}
