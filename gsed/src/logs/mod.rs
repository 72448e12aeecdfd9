//! Logs of every boot, kept on the persistent area (DESIGN §13).
//!
//! While a boot runs, [`LogService`] copies its logs — early boot's console, gsed's
//! own lines, the files under the configured sources and the kernel's messages —
//! into a spool (`logs/spool/<boot id>/`) every `spool_interval`. At a clean
//! shutdown the spool is packed into one `.tar.zst` ([`archive`]); a spool left by
//! a boot that never shut down cleanly is packed by the next boot, with the
//! verdict the health journal gives it. The archive is kept within the budget of
//! `logs.conf`, normal boots going before red, bailout, repair and rollback ones.
//! Failing to archive (a full disk) is logged and costs nothing else: the spool
//! stays for the next try, and the health of the boot is not touched.

pub mod archive;
pub mod sink;
pub mod spool;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use tracing::{info, warn};

use crate::{
    config::LogsConf,
    config::live::ConfigService,
    health::verdict::judge,
    journal::{Record, now},
    paths::Paths,
};
use archive::{BootMeta, Entry};
use spool::{Sources, Spool};

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Format(String),
    #[error("no boot '{0}' in the log archive (gsectl logs list shows them)")]
    NoSuchBoot(String),
    #[error("'{0}' matches more than one boot: {1}")]
    Ambiguous(String, String),
}

/// What an archive run did, for the log and the figures.
#[derive(Debug, Clone)]
pub struct Archived {
    pub path: PathBuf,
    pub bytes: u64,
    pub wall: std::time::Duration,
    pub cpu: std::time::Duration,
}

pub struct LogService {
    paths: Paths,
    config: Arc<ConfigService>,
    boot_id: String,
    meta: BootMeta,
    spool: Mutex<Option<Spool>>,
}

impl LogService {
    /// `slot`: the booted slot; the rest of the boot's identity comes from boot.json.
    pub fn new(paths: &Paths, config: Arc<ConfigService>, boot_id: &str, slot: &str) -> Arc<Self> {
        let record = crate::health::read_boot_record(&paths.boot_json()).unwrap_or_default();
        let meta = BootMeta {
            boot_id: boot_id.to_owned(),
            started: now(),
            slot: Some(record.slot).filter(|s| !s.is_empty()).unwrap_or_else(|| slot.to_owned()),
            action: record.action,
            image_version: record.image_version,
            reason: record.reason,
            ..Default::default()
        };
        Arc::new(LogService {
            paths: paths.clone(),
            config,
            boot_id: boot_id.to_owned(),
            meta,
            spool: Mutex::new(None),
        })
    }

    fn conf(&self) -> LogsConf {
        self.config.current().loaded.settings.logs.clone()
    }

    fn spool_dir(&self, boot_id: &str) -> PathBuf {
        self.paths.log_spool().join(archive::safe_name(boot_id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Spool>> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Archives what earlier boots left in the spool, then starts this boot's spool
    /// and sends gsed's own lines to it. `records`: the health journal.
    pub fn start(&self, records: &[Record]) {
        if !self.conf().archive {
            sink::detach();
            return;
        }
        self.recover(records);
        self.prune(None); // the budget may have shrunk since the last boot
        let dir = self.spool_dir(&self.boot_id);
        match Spool::open(&dir, &self.meta) {
            Ok(s) => {
                if let Err(e) = sink::attach(&dir.join("gsed.log")) {
                    warn!(error = %e, "cannot keep gsed's log in the spool");
                }
                *self.lock() = Some(s);
            }
            Err(e) => {
                sink::detach();
                warn!(dir = %dir.display(), error = %e, "cannot spool this boot's logs; they will not be archived");
            }
        }
    }

    /// Packs the spools of other boots: they ended without a clean shutdown, or
    /// their archiving failed.
    fn recover(&self, records: &[Record]) {
        let Ok(rd) = std::fs::read_dir(self.paths.log_spool()) else { return };
        let own = archive::safe_name(&self.boot_id);
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == own || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = e.path();
            let mut meta: BootMeta = std::fs::read(dir.join(archive::META))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| BootMeta { boot_id: name.clone(), ..Default::default() });
            meta.verdict = Some(judge(records, &meta.boot_id));
            // No clean shutdown: this is what a power cut or a crash left.
            meta.recovered =
                !records.iter().any(|r| r.boot_id == meta.boot_id && r.event == crate::journal::Event::CleanShutdown);
            meta.ended = now();
            match self.pack(&meta, &dir) {
                Ok(a) => {
                    info!(boot_id = %meta.boot_id, verdict = ?meta.verdict, archive = %a.path.display(), "logs of an earlier boot archived")
                }
                Err(e) => {
                    warn!(boot_id = %meta.boot_id, error = %e, "cannot archive the logs of an earlier boot; they stay in the spool");
                    return; // a full disk fails every other one too
                }
            }
        }
    }

    fn pack(&self, meta: &BootMeta, dir: &Path) -> Result<Archived, LogsError> {
        let t0 = Instant::now();
        let c0 = thread_cpu();
        let spooled =
            archive::spool_files(dir).iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let path = archive::write(&self.paths.logs_dir(), meta, dir)?;
        std::fs::remove_dir_all(dir).map_err(|source| LogsError::Io { path: dir.to_owned(), source })?;
        self.prune(Some(&path));
        Ok(Archived { path, bytes: spooled, wall: t0.elapsed(), cpu: thread_cpu().saturating_sub(c0) })
    }

    /// One spool round: copies what is new. Called every `spool_interval`.
    pub fn round(&self) {
        let conf = self.conf();
        let mut guard = self.lock();
        let Some(spool) = guard.as_mut() else { return };
        if !conf.archive {
            return; // switched off since start: archive_current drops the spool
        }
        let dirs: Vec<PathBuf> = conf.sources.iter().map(|s| self.paths.resolve(s)).collect();
        let sources = Sources {
            files: Sources::discover(self.paths.root(), &dirs, &[(self.paths.early_log(), "early.log")]),
            kmsg: conf.kernel.then(|| self.paths.kmsg()),
            max_bytes: conf.max_boot_size.0,
        };
        if let Err(e) = sink::sync() {
            warn!(error = %e, "cannot sync gsed's log in the spool");
        }
        match spool.round(&sources) {
            Ok(r) if r.newly_truncated => warn!(
                max_boot_size = %conf.max_boot_size,
                "this boot's logs reached max_boot_size (logs.conf); later lines are not archived"
            ),
            Ok(_) => {}
            Err(e) => warn!(dir = %spool.dir().display(), error = %e, "cannot copy logs to the spool"),
        }
    }

    /// Copies logs every `spool_interval` (live from config) until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            let interval = self.conf().spool_interval.get();
            // File copies and fsyncs stay off the thread that serves D-Bus.
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.round()).await;
            tokio::time::sleep(interval).await;
        }
    }

    /// At a clean shutdown: a last round, then this boot's spool becomes an archive.
    /// `records`: the health journal, which says how the boot went.
    pub fn archive_current(&self, records: &[Record]) -> Result<Option<Archived>, LogsError> {
        self.round();
        let Some(spool) = self.lock().take() else { return Ok(None) };
        if !self.conf().archive {
            sink::detach();
            let _ = std::fs::remove_dir_all(spool.dir());
            return Ok(None);
        }
        self.collect_journal(spool.dir());
        sink::detach();
        let mut meta = self.meta.clone();
        meta.verdict = Some(judge(records, &self.boot_id));
        meta.truncated = spool.truncated();
        meta.ended = now();
        let dir = spool.dir().to_owned();
        drop(spool);
        self.pack(&meta, &dir).map(Some)
    }

    /// Where systemd runs, its journal of this boot, as text (its binary files in
    /// /var/log/journal change in place and are not spooled).
    fn collect_journal(&self, dir: &Path) {
        if !self.paths.is_real_root() || !Path::new("/run/systemd/journal/socket").exists() {
            return;
        }
        let Ok(out) = std::fs::File::create(dir.join("journal.log")) else { return };
        let child = std::process::Command::new("journalctl")
            .args(["-b", "-o", "short-iso", "--no-pager", "-q"])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut child) = child else { return };
        let t0 = Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        warn!("journalctl took more than 10 s; this boot's journal is archived as far as it got");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Deletes archives beyond the budget (never `keep`).
    fn prune(&self, keep: Option<&Path>) {
        let conf = self.conf();
        let (entries, _) = archive::list(&self.paths.logs_dir(), &self.paths.log_spool());
        for p in archive::prune_plan(&entries, conf.max_size.0, conf.max_boots as usize, keep) {
            match std::fs::remove_file(&p) {
                Ok(()) => info!(archive = %p.display(), "old boot logs removed (logs.conf budget)"),
                Err(e) => warn!(archive = %p.display(), error = %e, "cannot remove old boot logs"),
            }
        }
    }
}

/// Every boot in the archive under `paths`, oldest first, with the damaged files.
pub fn list(paths: &Paths) -> (Vec<Entry>, Vec<LogsError>) {
    archive::list(&paths.logs_dir(), &paths.log_spool())
}

/// The boot whose id is `id` or starts with it (unique); `-1` is the newest.
pub fn find(paths: &Paths, id: &str) -> Result<Entry, LogsError> {
    let (entries, _) = list(paths);
    if let Some(back) = id.strip_prefix('-').and_then(|n| n.parse::<usize>().ok()) {
        return entries
            .len()
            .checked_sub(back)
            .and_then(|i| entries.get(i).cloned())
            .ok_or_else(|| LogsError::NoSuchBoot(id.to_owned()));
    }
    let exact: Vec<&Entry> = entries.iter().filter(|e| e.meta.boot_id == id).collect();
    let matching: Vec<&Entry> = if exact.is_empty() {
        entries.iter().filter(|e| !id.is_empty() && e.meta.boot_id.starts_with(id)).collect()
    } else {
        exact
    };
    match matching.as_slice() {
        [] => Err(LogsError::NoSuchBoot(id.to_owned())),
        [one] => Ok((*one).clone()),
        many => Err(LogsError::Ambiguous(
            id.to_owned(),
            many.iter().map(|e| e.meta.boot_id.as_str()).collect::<Vec<_>>().join(", "),
        )),
    }
}

fn thread_cpu() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| std::time::Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}
