//! Early boot's own memory between boots, in the persistent state directory:
//! attempt counters per slot, which boot was judged last, and an unfinished
//! repair. Written atomically; a missing or damaged file starts fresh (the flags
//! still protect the slots).

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

    pub fn attempts(&self, slot: &str) -> u32 {
        self.attempts.get(slot).copied().unwrap_or(0)
    }
}
