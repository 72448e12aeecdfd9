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
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    http::Http,
    manifest::{sha256_hex, verify},
    publish::Channel,
};
use crate::{
    boot::{decide::backup_of, flag::FlagKey, slots::Slots, state::BootState},
    config::{UpdatePolicy, live::ConfigService},
    fsutil::write_atomic,
    image::{self, Cache, Fetch, ImageError, Index},
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
        let settings = self.config.current().loaded.settings.clone();
        let (channel, key) = (settings.update.channel.clone(), settings.servers.public_key.clone());
        let http = Http::new(settings.servers.probe_timeout.get().max(std::time::Duration::from_secs(5)));
        let (paths, list) = (self.paths.clone(), servers.clone());
        let fetched = tokio::task::spawn_blocking(move || -> Result<Channel, String> {
            let mut why = Vec::new();
            for base in &list {
                let url = format!("{}/gse1/channels/{channel}.json", base.trim_end_matches('/'));
                let got =
                    http.get(&url, 1 << 20).and_then(|json| Ok((http.get(&format!("{url}.minisig"), 64 << 10)?, json)));
                match got {
                    Ok((sig, json)) => {
                        verify(&key, &json, &String::from_utf8_lossy(&sig))
                            .map_err(|e| format!("channel {channel}: {e}"))?;
                        let ch: Channel =
                            serde_json::from_slice(&json).map_err(|e| format!("channel {channel}: {e}"))?;
                        accept_channel(&paths, &channel, &ch)?;
                        return Ok(ch);
                    }
                    Err(e) => why.push(e.to_string()),
                }
            }
            Err(if why.is_empty() { "no server to ask".into() } else { why.join("; ") })
        })
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
        self.decide(UpdateState::Declined, "decline")
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

    /// Download, verify and install `ch` into the slot not running; returns the slot.
    fn apply(&self, ch: &Channel, servers: &[String]) -> Result<String, ImageError> {
        let settings = self.config.current().loaded.settings.clone();
        let boot = BootState::load(&self.paths.boot_state());
        let running = crate::health::read_boot_record(&self.paths.boot_json())
            .map(|b| b.slot)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| boot.primary(&settings.boot).to_owned());
        let target = backup_of(&settings.boot, &running).to_owned();
        if target == running {
            return Err(ImageError::Refused("boot.conf has a single slot: there is nowhere to install".into()));
        }
        let step = |state: UpdateState, total: u64| {
            self.state.send_modify(|s| {
                (s.state, s.target_slot, s.detail) = (state, target.clone(), String::new());
                (s.progress, s.bytes_done, s.bytes_total) = (0.0, 0, total);
            })
        };
        step(UpdateState::Downloading, ch.packed);
        let http = Http::new(std::time::Duration::from_secs(30));
        let index = fetch_index(&http, servers, ch)?;
        let slots = Slots { paths: &self.paths, settings: &settings, device_wait: std::time::Duration::from_secs(5) };
        let fits = |dir: &std::path::Path| {
            image::install::check_fits(dir, &target, &index).map_err(|e| crate::boot::BootError::Tool(e.to_string()))
        };
        slots.with_mounted(&target, false, fits).map_err(|e| ImageError::Refused(e.to_string()))?;
        let cache = Cache::new(self.paths.chunk_cache());
        let progress = Throttle::new(|done, total| self.progress(done, total));
        let fetch = Fetch {
            servers: servers.to_vec(),
            http,
            cache: &cache,
            max_rate: settings.update.max_rate.map(|r| r.0),
            workers: 4,
            progress: &|d, t| progress.call(d, t),
            stop: &self.stop,
        };
        let stats = fetch.run(&index)?;
        info!(version = %ch.version, fetched = stats.fetched_bytes, cached = stats.cached_bytes, "image downloaded");
        // Chunks that rotted in the cache are fetched again, before any slot is touched.
        let damaged = cache.sweep(&index);
        if !damaged.is_empty() {
            warn!(chunks = damaged.len(), "damaged chunks in the cache; fetching them again");
            fetch.run(&index)?;
            if let Some(id) = cache.sweep(&index).first() {
                return Err(ImageError::Chunk { id: id.clone(), why: "damaged in the cache again".into() });
            }
        }

        step(UpdateState::Installing, index.size);
        let key = FlagKey::load(&self.paths.flag_key())
            .or_else(|_| FlagKey::load(&self.paths.run_flag_key()))
            .map_err(|e| {
                ImageError::Io(
                    format!(
                        "the machine key (/boot not mounted, no copy in /run/gse): {}",
                        self.paths.flag_key().display()
                    ),
                    e,
                )
            })?;
        // The target leaves every plan first: a cut from here on leaves it untrusted, never tried.
        let mut state = BootState::load(&self.paths.boot_state());
        state.trial = None;
        save_state(&self.paths, &state)?;
        let progress = Throttle::new(|done, total| self.progress(done, total));
        let version = slots
            .with_mounted(&target, true, |dir| {
                image::install::install(dir, &target, &index, &cache, &key, &|d, t| progress.call(d, t))
                    .map_err(|e| crate::boot::BootError::Tool(e.to_string()))
            })
            .map_err(|e| ImageError::Refused(e.to_string()))?;
        let json = serde_json::to_vec(&index).expect("index serialises");
        let _ = std::fs::create_dir_all(self.paths.slot_index(&target).parent().unwrap_or(&self.paths.state_dir()));
        write_atomic(&self.paths.slot_index(&target), &json, 0o644).map_err(image::io("recording the slot's index"))?;
        let mut state = BootState::load(&self.paths.boot_state());
        state.trial = Some(crate::boot::state::Trial { slot: target.clone(), version, booted: false });
        state.failed = None;
        save_state(&self.paths, &state)?;
        // The cache keeps what the slots hold: the next version costs only its changes.
        let held: Vec<Index> = settings
            .boot
            .slots
            .keys()
            .filter_map(|s| std::fs::read(self.paths.slot_index(s)).ok().and_then(|b| Index::parse(&b).ok()))
            .collect();
        cache.keep_only(&held.iter().collect::<Vec<_>>());
        Ok(target)
    }

    fn progress(&self, done: u64, total: u64) {
        self.state.send_modify(|s| {
            s.bytes_done = done;
            s.bytes_total = total;
            s.progress = if total == 0 { 1.0 } else { done as f64 / total as f64 };
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

fn save_state(paths: &Paths, s: &BootState) -> Result<(), ImageError> {
    s.save(&paths.boot_state()).map_err(image::io(format!("saving {}", paths.boot_state().display())))
}

/// The index the channel names, from the first server that has it; it must be
/// the very file the signed channel names (its digest) and of that version.
fn fetch_index(http: &Http, servers: &[String], ch: &Channel) -> Result<Index, ImageError> {
    if !super::manifest::safe_path(&ch.index) {
        return Err(ImageError::Index(format!("the channel names '{}': refused", ch.index)));
    }
    let mut why = Vec::new();
    for base in servers {
        let url = format!("{}/gse1/{}", base.trim_end_matches('/'), ch.index);
        match http.get(&url, 256 << 20) {
            Ok(data) if sha256_hex(&data) == ch.sha256 => {
                let index = Index::parse(&data)?;
                if index.version != ch.version {
                    return Err(ImageError::Index(format!(
                        "{url} is version {}, the channel says {}: refused",
                        index.version, ch.version
                    )));
                }
                return Ok(index);
            }
            Ok(_) => why.push(format!("{url}: not the index the signed channel names (digest differs)")),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(ImageError::Index(why.join("; ")))
}

/// This machine's place (0-99) in the phased rollout of `version`: stable for a
/// machine and a version, spread over the room (from the machine key's digest).
pub fn bucket(paths: &Paths, version: &str) -> u32 {
    let who = std::fs::read(paths.flag_key())
        .or_else(|_| std::fs::read(paths.run_flag_key()))
        .or_else(|_| std::fs::read(paths.resolve("/etc/machine-id")))
        .unwrap_or_default();
    let d = Sha256::new().chain_update(b"gse rollout\0").chain_update(&who).chain_update(version).finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100
}

/// Calls `f` at most every 200 ms, and always for the last step.
struct Throttle<F: Fn(u64, u64)> {
    f: F,
    last: Mutex<std::time::Instant>,
}

impl<F: Fn(u64, u64)> Throttle<F> {
    fn new(f: F) -> Self {
        Throttle { f, last: Mutex::new(std::time::Instant::now() - std::time::Duration::from_secs(1)) }
    }

    fn call(&self, done: u64, total: u64) {
        let Ok(mut last) = self.last.lock() else { return };
        if done >= total || last.elapsed() >= std::time::Duration::from_millis(200) {
            *last = std::time::Instant::now();
            (self.f)(done, total);
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
