//! Applying an approved version: fetch the index and the chunks the cache
//! lacks, read the whole image once as they arrive, then install into the slot
//! this machine is not running from (or, when that slot holds nothing
//! trusted, install while the chunks arrive) and record the trial for early boot.

use std::sync::Mutex;

use gse_dbus::servers::UpdateState;
use tracing::{info, warn};

use super::UpdateService;
use crate::{
    boot::{
        decide::backup_of,
        flag::{self, FlagKey},
        slots::Slots,
        state::BootState,
    },
    image::{self, Cache, Fetch, ImageError, Index, fetch::Handoff},
    paths::Paths,
    servers::{http::Http, manifest::sha256_hex, publish::Channel},
};

/// One version on its way into one slot.
struct Job<'a> {
    target: &'a str,
    index: &'a Index,
    fetch: &'a Fetch<'a>,
    key: &'a FlagKey,
}

/// A chunk request that makes no progress for this long fails (and goes to the next server).
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

impl UpdateService {
    /// Downloads, verifies and installs `ch` into the slot not running; returns the slot.
    ///
    /// A target that holds a trusted system (the backup) is kept until the
    /// whole download is verified, then replaced (staged). A target that holds
    /// nothing trusted (no valid flag: a blank or broken slot) is written while
    /// the chunks arrive (streamed): nothing is lost if the transfer fails, and
    /// the install takes the download's time rather than adding to it.
    pub(super) fn apply(&self, ch: &Channel, servers: &[String]) -> Result<String, ImageError> {
        let settings = self.config.current().loaded.settings.clone();
        let boot = BootState::load(&self.paths.boot_state());
        let running = crate::health::read_boot_record(&self.paths.boot_json())
            .map(|b| b.slot)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| boot.primary(&settings.boot).to_owned());
        if running == crate::boot::blank::RAM_SLOT {
            return Err(ImageError::Refused("diskless: the next boot runs the newest version from the server".into()));
        }
        let target = backup_of(&settings.boot, &running).to_owned();
        if target == running {
            return Err(ImageError::Refused("boot.conf has a single slot: there is nowhere to install".into()));
        }
        self.step(UpdateState::Downloading, &target, ch.packed);
        let t0 = std::time::Instant::now();
        let http = Http::new(STALL);
        let index = fetch_index(&http, servers, ch)?;
        let key = FlagKey::load_running(&self.paths);
        let slots = Slots { paths: &self.paths, settings: &settings, device_wait: std::time::Duration::from_secs(5) };
        let keep = slots
            .with_mounted(&target, false, |dir| {
                image::install::check_fits(dir, &target, &index)
                    .map_err(|e| crate::boot::BootError::Tool(e.to_string()))?;
                Ok(key.as_ref().is_ok_and(|key| flag::read(dir, &target, key).is_valid()))
            })
            .map_err(|e| ImageError::Refused(format!("slot {target}: {e}")))?;
        let key = key.map_err(image::io(format!("the machine key {}", self.paths.flag_key().display())))?;
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
        let job = Job { target: &target, index: &index, fetch: &fetch, key: &key };
        if keep {
            self.verify_whole(&job)?;
            info!(version = %ch.version, secs = t0.elapsed().as_secs_f64(), "image downloaded");
            self.step(UpdateState::Installing, &target, index.size);
        } else {
            info!(slot = %target, "the slot holds no trusted system: the image is written as it arrives");
        }
        // The target leaves every plan first: a cut from here on leaves it untrusted, never tried.
        let mut state = BootState::load(&self.paths.boot_state());
        state.trial = None;
        save_state(&self.paths, &state)?;
        let progress = Throttle::new(|done, total| self.progress(done, total));
        let installed = slots
            .with_mounted(&target, true, |dir| {
                Ok(if keep {
                    image::install::install(dir, &target, &index, &|c| cache.read(c), &key, &|d, t| progress.call(d, t))
                } else {
                    self.stream(dir, &job)
                })
            })
            .map_err(|e| ImageError::Refused(e.to_string()))?;
        let version = installed?;
        info!(version = %ch.version, slot = %target, secs = t0.elapsed().as_secs_f64(), "image installed");
        image::record_slot(&self.paths, &target, &index)?;
        let mut state = BootState::load(&self.paths.boot_state());
        state.trial = Some(crate::boot::state::Trial { slot: target.clone(), version, booted: false });
        state.failed = None;
        save_state(&self.paths, &state)?;
        // The cache keeps what the slots hold: the next version costs only its changes.
        let held = image::slot_indexes(&self.paths, settings.boot.slots.keys());
        cache.keep_only(&held.iter().collect::<Vec<_>>());
        Ok(target)
    }

    /// For a machine with nothing installed (DESIGN §12): the channel's
    /// version and its index, from the first of `servers` that has them.
    pub fn latest(&self, servers: &[String]) -> Result<(Channel, Index), ImageError> {
        let settings = self.config.current().loaded.settings.clone();
        let ch = super::read_channel(&self.paths, &settings, servers).map_err(ImageError::Index)?;
        let index = fetch_index(&Http::new(STALL), servers, &ch)?;
        Ok((ch, index))
    }

    /// Writes the version of `index` into `dir`, slot `slot`, which holds
    /// nothing, as its chunks arrive from `servers` (the chunk cache keeps
    /// them); with a fresh flag signed by `key`. Returns the version.
    pub fn install_fresh(
        &self,
        dir: &std::path::Path,
        slot: &str,
        index: &Index,
        servers: &[String],
        key: &FlagKey,
    ) -> Result<String, ImageError> {
        let settings = self.config.current().loaded.settings.clone();
        let cache = Cache::new(self.paths.chunk_cache());
        self.step(UpdateState::Downloading, slot, index.chunks.iter().map(|c| u64::from(c.packed)).sum());
        self.state.send_modify(|s| s.available_version = index.version.clone());
        let progress = Throttle::new(|done, total| self.progress(done, total));
        let fetch = Fetch {
            servers: servers.to_vec(),
            http: Http::new(STALL),
            cache: &cache,
            max_rate: settings.update.max_rate.map(|r| r.0),
            workers: 4,
            progress: &|d, t| progress.call(d, t),
            stop: &self.stop,
        };
        self.stream(dir, &Job { target: slot, index, fetch: &fetch, key })
    }

    /// Staged: every chunk fetched and the whole image read once (following
    /// the transfer) before any slot is touched; chunks that rotted in the
    /// cache (removed by the read) are fetched again, once.
    fn verify_whole(&self, job: &Job) -> Result<(), ImageError> {
        let cache = job.fetch.cache;
        let handoff = Handoff::default();
        let (fetched, scanned) = std::thread::scope(|s| {
            let scan = s.spawn(|| image::install::scan_following(cache, job.index, &handoff));
            (job.fetch.run(job.index, Some(&handoff)), scan.join())
        });
        fetched?;
        match scanned.unwrap_or_else(|_| Err(ImageError::Refused("the image check panicked".into()))) {
            Err(ImageError::Damaged(ids)) => {
                warn!(chunks = ids.len(), "damaged chunks in the cache; fetching them again");
                job.fetch.run(job.index, None)?;
                image::install::scan(cache, job.index)
            }
            other => other,
        }
    }

    /// Streamed into the slot mounted at `dir`: GNU tar unpacks each chunk as
    /// soon as a worker has verified it (tar itself keeps every member inside
    /// the slot). A chunk found damaged in the cache (and removed by the read)
    /// is fetched by the next attempt, which starts the install over; the same
    /// chunk damaged twice ends it.
    fn stream(&self, dir: &std::path::Path, job: &Job) -> Result<String, ImageError> {
        let mut damaged = std::collections::HashSet::new();
        loop {
            let handoff = Handoff::default();
            let (fetched, installed) = std::thread::scope(|s| {
                let fetching = s.spawn(|| {
                    let r = job.fetch.run(job.index, Some(&handoff));
                    if r.is_ok() {
                        self.step(UpdateState::Installing, job.target, job.index.size);
                    }
                    r
                });
                // The reader drops as the install returns, so no worker waits for it after.
                let installed = {
                    let reader = handoff.reader();
                    let take = |c: &image::Chunk| reader.take(job.fetch.cache, c);
                    image::install::install(dir, job.target, job.index, &take, job.key, &|_, _| {})
                };
                (fetching.join(), installed)
            });
            // When the transfer failed, its own error says why.
            fetched.unwrap_or_else(|_| Err(ImageError::Refused("the download panicked".into())))?;
            match installed {
                Err(ImageError::Chunk { id, why }) if damaged.insert(id.clone()) => {
                    warn!(chunk = %id, %why, "a chunk in the cache is damaged; fetching it again");
                }
                other => return other,
            }
        }
    }

    fn step(&self, state: UpdateState, target: &str, total: u64) {
        self.state.send_modify(|s| {
            (s.state, s.target_slot, s.detail) = (state, target.to_owned(), String::new());
            (s.progress, s.bytes_done, s.bytes_total) = (0.0, 0, total);
        })
    }

    fn progress(&self, done: u64, total: u64) {
        self.state.send_modify(|s| {
            s.bytes_done = done;
            s.bytes_total = total;
            s.progress = if total == 0 { 1.0 } else { done as f64 / total as f64 };
        });
    }
}

fn save_state(paths: &Paths, s: &BootState) -> Result<(), ImageError> {
    s.save(&paths.boot_state()).map_err(image::io(format!("saving {}", paths.boot_state().display())))
}

/// The index the channel names, from the first server that has it; it must be
/// the very file the signed channel names (its digest) and of that version.
fn fetch_index(http: &Http, servers: &[String], ch: &Channel) -> Result<Index, ImageError> {
    if !crate::servers::manifest::safe_path(&ch.index) {
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

/// Calls `f` at most every 200 ms, and always for the last step.
pub(super) struct Throttle<F: Fn(u64, u64)> {
    f: F,
    last: Mutex<std::time::Instant>,
}

impl<F: Fn(u64, u64)> Throttle<F> {
    pub(super) fn new(f: F) -> Self {
        Throttle { f, last: Mutex::new(std::time::Instant::now() - std::time::Duration::from_secs(1)) }
    }

    pub(super) fn call(&self, done: u64, total: u64) {
        let Ok(mut last) = self.last.lock() else { return };
        if done >= total || last.elapsed() >= std::time::Duration::from_millis(200) {
            *last = std::time::Instant::now();
            (self.f)(done, total);
        }
    }
}
