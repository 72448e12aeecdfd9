//! What this client has accepted from its servers: the serial of the last
//! config.d MANIFEST and the publish time of each channel file. Both are signed;
//! anything older than what was accepted is refused, so a mirror or anyone on the
//! plain-HTTP path cannot replay old signed content to roll a room back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{fsutil::write_atomic, paths::Paths};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// `serial` of the newest MANIFEST taken.
    #[serde(default)]
    pub config: u64,
    /// `published` of the newest channel file taken, by channel.
    #[serde(default)]
    pub channels: BTreeMap<String, u64>,
}

impl Accepted {
    pub fn load(paths: &Paths) -> Accepted {
        let path = paths.accepted();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "unreadable; starting from nothing accepted");
                Accepted::default()
            }),
            Err(_) => Accepted::default(),
        }
    }

    pub fn save(&self, paths: &Paths) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&paths.accepted(), &data, 0o644)
    }
}
