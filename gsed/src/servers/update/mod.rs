//! Image updates (DESIGN §11): read the signed channel file, decide by
//! update.chk.conf (`auto` takes a version at once, phased by the channel's
//! rollout; `ask` waits for an administrator; `never` only reports), then
//! download the new version's chunks and install it into the slot this machine
//! is not running from. Early boot starts it as a trial; [`UpdateService::commit`]
//! makes it primary once it is green.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use gse_dbus::{boot::Action, servers::UpdateState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

mod apply;
mod channel;

pub use channel::{bucket, local_version};

use super::{http::Http, manifest::verify, publish::Channel};
use crate::{
    boot::state::BootState,
    config::{UpdatePolicy, live::ConfigService},
    fsutil::write_atomic,
    paths::Paths,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UpdateSnapshot {
    pub local_version: String,
    pub available_version: String,
    pub state: UpdateState,
    pub detail: String,
    /// 0.0-1.0 of the current step (download or install).
    pub progress: f64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The slot the new version goes (or went) into.
    pub target_slot: String,
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
    /// The last channel taken, and the servers it can be fetched from (best first).
    offer: Mutex<Option<(Channel, Vec<String>)>>,
    /// The version an administrator approved: it stays approved when an
    /// attempt fails, and is tried again at the next check.
    approved: Mutex<Option<String>>,
    /// One check at a time (the daemon's own and one asked for over D-Bus).
    checking: tokio::sync::Mutex<()>,
    busy: AtomicBool,
    stop: AtomicBool,
}

impl UpdateService {
    pub fn new(paths: &Paths, config: Arc<ConfigService>) -> Arc<Self> {
        let mut snap = UpdateSnapshot { local_version: local_version(paths), ..Default::default() };
        let boot = crate::health::read_boot_record(&paths.boot_json());
        let state = BootState::load(&paths.boot_state());
        match (&boot, &state) {
            (Some(b), _) if b.action == Action::Trial => {
                snap.state = UpdateState::Trial;
                snap.target_slot = b.slot.clone();
                snap.detail = "running the new version on probation until it is green".into();
            }
            (Some(b), BootState { failed: Some(f), .. }) if b.action == Action::Rollback => {
                snap.state = UpdateState::Failed;
                snap.available_version = f.version.clone();
                snap.detail = f.reason.clone();
            }
            (_, BootState { trial: Some(t), .. }) => {
                snap.state = UpdateState::Installed;
                snap.available_version = t.version.clone();
                snap.target_slot = t.slot.clone();
            }
            _ => {
                // An administrator's decision outlives a restart of gsed.
                let recorded: Option<UpdateSnapshot> =
                    std::fs::read(paths.update_record()).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(r) = recorded.filter(|r| matches!(r.state, UpdateState::Approved | UpdateState::Declined)) {
                    (snap.state, snap.available_version) = (r.state, r.available_version);
                }
            }
        }
        Arc::new(UpdateService {
            paths: paths.clone(),
            config,
            state: watch::Sender::new(snap),
            offer: Mutex::new(None),
            approved: Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            busy: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<UpdateSnapshot> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> UpdateSnapshot {
        self.state.borrow().clone()
    }

    /// Ends a running transfer (the daemon is stopping); verified chunks stay.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn policy(&self) -> UpdatePolicy {
        self.config.current().loaded.settings.update.policy
    }

    /// Reads the channel from the first of `servers` that answers, updates the
    /// state, and starts the download when the version is approved.
    pub async fn check(self: &Arc<Self>, servers: Vec<String>) {
        let _one = self.checking.lock().await;
        let settings = self.config.current().loaded.settings.clone();
        let (paths, list) = (self.paths.clone(), servers.clone());
        let fetched = tokio::task::spawn_blocking(move || read_channel(&paths, &settings, &list))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match fetched {
            Ok(ch) => {
                if let Ok(mut o) = self.offer.lock() {
                    *o = Some((ch.clone(), servers));
                }
                self.seen(&ch);
                self.start_if_approved();
            }
            Err(e) if !self.busy.load(Ordering::Relaxed) => {
                warn!(error = %e, "version check failed");
                self.state.send_modify(|s| {
                    s.state = UpdateState::Error;
                    s.detail = e;
                });
            }
            Err(e) => warn!(error = %e, "version check failed"),
        }
    }

    fn seen(&self, ch: &Channel) {
        if self.busy.load(Ordering::Relaxed) {
            return;
        }
        let boot = BootState::load(&self.paths.boot_state());
        let in_rollout = bucket(&self.paths, &ch.version) < u32::from(ch.rollout);
        let policy = self.policy();
        let approved = self.approved.lock().ok().and_then(|a| a.clone());
        let mut announce = false;
        self.state.send_if_modified(|s| {
            let before = s.clone();
            let again = s.available_version == ch.version;
            s.available_version = ch.version.clone();
            s.detail.clear();
            s.state = if s.state == UpdateState::Trial {
                UpdateState::Trial
            } else if ch.version == s.local_version {
                UpdateState::UpToDate
            } else if boot.trial.as_ref().is_some_and(|t| t.version == ch.version) {
                UpdateState::Installed
            } else if approved.as_deref() == Some(ch.version.as_str()) {
                UpdateState::Approved
            } else if again && matches!(s.state, UpdateState::Approved | UpdateState::Declined) {
                s.state
            } else if let Some(f) = boot.failed.as_ref().filter(|f| f.version == ch.version) {
                s.detail = f.reason.clone();
                UpdateState::Failed
            } else if policy == UpdatePolicy::Auto && in_rollout {
                UpdateState::Approved
            } else {
                if policy == UpdatePolicy::Auto {
                    s.detail = format!(
                        "phased rollout: version {} goes to {}% of the machines so far",
                        ch.version, ch.rollout
                    );
                }
                UpdateState::Available
            };
            announce = !again && s.state != UpdateState::UpToDate;
            *s != before
        });
        if announce {
            info!(version = %ch.version, "a new version is available");
            self.record();
        }
    }

    /// The channel file taken at the last check.
    pub fn offered(&self) -> Option<Channel> {
        self.offer.lock().ok()?.as_ref().map(|(c, _)| c.clone())
    }

    /// Whether a checked channel is at hand (else an approval needs a check to act).
    pub fn has_offer(&self) -> bool {
        self.offer.lock().is_ok_and(|o| o.is_some())
    }

    pub fn approve(self: &Arc<Self>) -> Result<(), UpdateError> {
        self.decide(UpdateState::Approved, "approve")?;
        if let Ok(mut a) = self.approved.lock() {
            *a = Some(self.snapshot().available_version);
        }
        // Approving a version that failed its trial is the administrator asking again.
        let mut boot = BootState::load(&self.paths.boot_state());
        if boot.failed.take().is_some()
            && let Err(e) = boot.save(&self.paths.boot_state())
        {
            warn!(error = %e, "cannot clear the failed version");
        }
        self.start_if_approved();
        Ok(())
    }

    pub fn decline(&self) -> Result<(), UpdateError> {
        self.decide(UpdateState::Declined, "decline")?;
        if let Ok(mut a) = self.approved.lock() {
            *a = None;
        }
        Ok(())
    }

    fn decide(&self, to: UpdateState, verb: &'static str) -> Result<(), UpdateError> {
        if self.policy() == UpdatePolicy::Never {
            return Err(UpdateError::Never);
        }
        let s = self.snapshot();
        if s.available_version.is_empty()
            || self.busy.load(Ordering::Relaxed)
            || matches!(s.state, UpdateState::UpToDate | UpdateState::Installed | UpdateState::Trial)
        {
            return Err(UpdateError::Nothing(verb));
        }
        self.state.send_modify(|s| {
            s.state = to;
            s.detail.clear();
        });
        self.record();
        Ok(())
    }

    /// Commits a trial once the boot is green: the trial slot becomes primary,
    /// the slot it came from keeps the previous version as the backup.
    pub fn commit(&self, booted_slot: &str) {
        let path = self.paths.boot_state();
        let mut boot = BootState::load(&path);
        let Some(t) = boot.trial.take_if(|t| t.booted && t.slot == booted_slot) else { return };
        boot.primary = Some(t.slot.clone());
        boot.failed = None;
        if let Err(e) = boot.save(&path) {
            warn!(file = %path.display(), error = %e, "cannot commit the trial; the next boot rolls back");
            return;
        }
        info!(version = %t.version, slot = %t.slot, "trial is green: committed, slot is now primary");
        self.state.send_modify(|s| {
            s.state = UpdateState::UpToDate;
            s.detail = format!("version {} committed: slot {} is primary", t.version, t.slot);
        });
        self.record();
    }

    fn start_if_approved(self: &Arc<Self>) {
        if self.snapshot().state != UpdateState::Approved || self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some((ch, servers)) = self.offer.lock().ok().and_then(|o| o.clone()) else {
            self.busy.store(false, Ordering::SeqCst);
            return;
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = me.apply(&ch, &servers);
            me.busy.store(false, Ordering::SeqCst);
            me.state.send_modify(|s| match result {
                Ok(slot) => {
                    s.state = UpdateState::Installed;
                    s.detail = format!("version {} is in slot {slot}; the next boot tries it", ch.version);
                }
                Err(e) => {
                    warn!(version = %ch.version, error = %e, "update failed");
                    s.state = UpdateState::Error;
                    s.detail = e.to_string();
                }
            });
            me.record();
        });
    }

    /// Keeps the decision across restarts.
    fn record(&self) {
        let s = self.snapshot();
        let path = self.paths.update_record();
        let data = serde_json::to_vec_pretty(&s).expect("snapshot serialises");
        if let Err(e) = write_atomic(&path, &data, 0o644) {
            warn!(file = %path.display(), error = %e, "cannot record the update decision");
        }
    }
}

/// The signed channel file update.chk.conf names, from the first of `servers`
/// that has it; verified with the servers' key and never older than one taken
/// before.
fn read_channel(paths: &Paths, settings: &crate::config::Settings, servers: &[String]) -> Result<Channel, String> {
    let (channel, key) = (&settings.update.channel, &settings.servers.public_key);
    let http = Http::new(settings.servers.probe_timeout.get().max(std::time::Duration::from_secs(5)));
    let mut why = Vec::new();
    for base in servers {
        let url = format!("{}/gse1/channels/{channel}.json", base.trim_end_matches('/'));
        let got = http.get(&url, 1 << 20).and_then(|json| Ok((http.get(&format!("{url}.minisig"), 64 << 10)?, json)));
        match got {
            Ok((sig, json)) => {
                verify(key, &json, &String::from_utf8_lossy(&sig)).map_err(|e| format!("channel {channel}: {e}"))?;
                let ch: Channel = serde_json::from_slice(&json).map_err(|e| format!("channel {channel}: {e}"))?;
                channel::accept_channel(paths, channel, &ch)?;
                return Ok(ch);
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(if why.is_empty() { "no server to ask".into() } else { why.join("; ") })
}
