//! The version check (DESIGN §8): read the signed channel file from the current
//! server, compare with the running image, and decide by update.chk.conf —
//! `auto` approves at once, `ask` waits for an administrator, `never` only
//! reports. Applying an image is not done here; the decision is recorded in the
//! state directory for the component that applies it.

use std::sync::Arc;

use gse_dbus::servers::UpdateState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{http::Http, manifest::verify, publish::Channel};
use crate::{config::UpdatePolicy, config::live::ConfigService, fsutil::write_atomic, paths::Paths};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UpdateSnapshot {
    pub local_version: String,
    pub available_version: String,
    pub state: UpdateState,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("there is no new version to {0}")]
    Nothing(&'static str),
    #[error("update.chk.conf says policy = \"never\": new versions are only reported")]
    Never,
}

pub struct UpdateService {
    paths: Paths,
    config: Arc<ConfigService>,
    state: watch::Sender<UpdateSnapshot>,
}

impl UpdateService {
    pub fn new(paths: &Paths, config: Arc<ConfigService>) -> Arc<Self> {
        let local = local_version(paths);
        let snap = UpdateSnapshot { local_version: local, ..Default::default() };
        Arc::new(UpdateService { paths: paths.clone(), config, state: watch::Sender::new(snap) })
    }

    pub fn subscribe(&self) -> watch::Receiver<UpdateSnapshot> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> UpdateSnapshot {
        self.state.borrow().clone()
    }

    fn policy(&self) -> UpdatePolicy {
        self.config.current().loaded.settings.update.policy
    }

    /// Reads the channel from the server at `base` and updates the state.
    pub async fn check(&self, base: &str) {
        let settings = self.config.current().loaded.settings.clone();
        let (channel, key) = (settings.update.channel.clone(), settings.servers.public_key.clone());
        let url = format!("{}/gse1/channels/{channel}.json", base.trim_end_matches('/'));
        let http = Http::new(settings.servers.probe_timeout.get().max(std::time::Duration::from_secs(5)));
        let paths = self.paths.clone();
        let fetched = tokio::task::spawn_blocking(move || -> Result<Channel, String> {
            let json = http.get(&url, 1 << 20).map_err(|e| e.to_string())?;
            let sig = http.get(&format!("{url}.minisig"), 64 << 10).map_err(|e| e.to_string())?;
            verify(&key, &json, &String::from_utf8_lossy(&sig)).map_err(|e| format!("channel {channel}: {e}"))?;
            let ch: Channel = serde_json::from_slice(&json).map_err(|e| format!("channel {channel}: {e}"))?;
            accept_channel(&paths, &channel, &ch)?;
            Ok(ch)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match fetched {
            Ok(ch) => self.seen(&ch.version),
            Err(e) => {
                warn!(error = %e, "version check failed");
                self.state.send_modify(|s| {
                    s.state = UpdateState::Error;
                    s.detail = e;
                });
            }
        }
    }

    fn seen(&self, version: &str) {
        let mut announce = None;
        self.state.send_if_modified(|s| {
            let before = s.clone();
            s.detail.clear();
            if version == s.local_version {
                s.available_version = version.to_owned();
                s.state = UpdateState::UpToDate;
            } else if s.available_version != version
                || !matches!(s.state, UpdateState::Approved | UpdateState::Declined)
            {
                s.available_version = version.to_owned();
                s.state = match self.policy() {
                    UpdatePolicy::Auto => UpdateState::Approved,
                    UpdatePolicy::Ask | UpdatePolicy::Never => UpdateState::Available,
                };
                if before.available_version != version {
                    announce = Some(version.to_owned());
                }
            }
            *s != before
        });
        if let Some(v) = announce {
            info!(version = %v, "a new version is available");
            self.record();
        }
    }

    pub fn approve(&self) -> Result<(), UpdateError> {
        self.decide(UpdateState::Approved, "approve")
    }

    pub fn decline(&self) -> Result<(), UpdateError> {
        self.decide(UpdateState::Declined, "decline")
    }

    fn decide(&self, to: UpdateState, verb: &'static str) -> Result<(), UpdateError> {
        if self.policy() == UpdatePolicy::Never {
            return Err(UpdateError::Never);
        }
        let s = self.snapshot();
        if s.available_version.is_empty() || s.state == UpdateState::UpToDate {
            return Err(UpdateError::Nothing(verb));
        }
        self.state.send_modify(|s| s.state = to);
        self.record();
        Ok(())
    }

    /// Keeps the decision across restarts, for whatever applies images.
    fn record(&self) {
        let s = self.snapshot();
        let path = self.paths.state_dir().join("update.json");
        let data = serde_json::to_vec_pretty(&s).expect("snapshot serialises");
        if let Err(e) = write_atomic(&path, &data, 0o644) {
            warn!(file = %path.display(), error = %e, "cannot record the update decision");
        }
    }
}

/// A channel file is taken only for the channel it was signed for, and never
/// older than one taken before (a replayed or mixed-up file cannot bring an old
/// version back); what is taken is recorded.
fn accept_channel(paths: &Paths, channel: &str, ch: &Channel) -> Result<(), String> {
    if ch.channel != channel {
        return Err(format!("channel {channel}: the file is signed for channel '{}': refused", ch.channel));
    }
    let mut acc = super::accepted::Accepted::load(paths);
    let have = acc.channels.get(channel).copied().unwrap_or(0);
    if ch.published < have {
        return Err(format!(
            "channel {channel}: published at {}, older than {have} already accepted: refused (a replayed file)",
            ch.published
        ));
    }
    if ch.published > have {
        acc.channels.insert(channel.to_owned(), ch.published);
        acc.save(paths).map_err(|e| format!("recording the accepted channel: {e}"))?;
    }
    Ok(())
}

/// The version of the running image: `/etc/gse-release`, else early boot's record.
pub fn local_version(paths: &Paths) -> String {
    let from_release = std::fs::read_to_string(paths.release_file())
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VERSION=").map(|v| v.trim_matches('"').to_owned())));
    from_release
        .or_else(|| {
            let rec = crate::health::read_boot_record(&paths.boot_json())?;
            Some(rec.image_version).filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}
