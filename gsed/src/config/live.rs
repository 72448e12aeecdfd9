//! The live config.d: the last good configuration, the errors of the current
//! files, and a watcher that reloads on change.
//!
//! Consumers hold a `watch::Receiver` and read the newest [`ConfigState`] whenever
//! they act, so a change applies without a restart. A load that fails publishes its
//! errors and keeps the last good configuration in force.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify::{EventKind, RecursiveMode, Watcher, event::AccessKind};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::{
    config::{self, ConfigError, Loaded},
    paths::Paths,
};

/// A burst of events ends after this much quiet…
const QUIET: Duration = Duration::from_millis(150);
/// …or after this long at most, so a constant writer cannot starve reloads.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ConfigState {
    /// +1 on every applied change.
    pub generation: u64,
    /// The configuration in force (the last good one).
    pub loaded: Arc<Loaded>,
    /// What is wrong with the files as they are now; empty when they are valid.
    pub errors: Vec<ConfigError>,
    /// Files that changed in the last applied change.
    pub changed: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reload {
    Unchanged,
    Applied(Vec<PathBuf>),
    Rejected(Vec<ConfigError>),
}

pub struct ConfigService {
    trees: Vec<PathBuf>,
    state: watch::Sender<Arc<ConfigState>>,
    files: Mutex<Files>,
}

/// What the service knows of the files, so a reload reads only files whose
/// metadata moved and parses only when some content changed.
#[derive(Default)]
struct Files {
    /// Content hashes of the files behind the configuration in force.
    in_force: BTreeMap<PathBuf, u64>,
    /// Content hashes at the last reload (valid or not).
    seen: BTreeMap<PathBuf, u64>,
    /// Per file: the metadata its hash was taken at (hashed, not ordered: a
    /// path compares component by component, and a lookup in order took
    /// more than hashing the files).
    hashes: HashMap<PathBuf, (Stamp, u64)>,
    /// Files read to hash them, in total (for tests and the bench).
    reads: u64,
}

/// A file's identity and last change; a rewrite, a rename over it or a change
/// of size moves it.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

impl ConfigService {
    /// Loads the layers under `paths`; with errors, runs on built-in defaults and
    /// publishes them.
    pub fn new(paths: &Paths) -> Arc<Self> {
        Self::with_trees(config::layers(paths))
    }

    pub fn with_trees(trees: Vec<PathBuf>) -> Arc<Self> {
        let mut files = Files::default();
        let fp = files.fingerprint(&trees);
        let (loaded, errors) = match config::load(&trees) {
            Ok(l) => (l, Vec::new()),
            Err(errors) => {
                for e in &errors {
                    warn!("config: {e}");
                }
                warn!("configuration has {} error(s); running on built-in defaults", errors.len());
                (Loaded::default(), errors)
            }
        };
        let state = ConfigState { generation: 1, loaded: Arc::new(loaded), errors, changed: Vec::new() };
        (files.in_force, files.seen) = (fp.clone(), fp);
        Arc::new(ConfigService { trees, state: watch::Sender::new(Arc::new(state)), files: Mutex::new(files) })
    }

    pub fn current(&self) -> Arc<ConfigState> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.state.subscribe()
    }

    /// Applies the files if they changed and are valid. Only files whose
    /// metadata moved are read, and nothing is parsed when no content changed
    /// since the last reload: the watcher's reload after a sync's own is free.
    pub fn reload(&self) -> Reload {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let now = files.fingerprint(&self.trees);
        if now == files.seen {
            let errors = self.current().errors.clone();
            return if errors.is_empty() { Reload::Unchanged } else { Reload::Rejected(errors) };
        }
        files.seen = now.clone();
        match config::load(&self.trees) {
            Err(errors) => {
                for e in &errors {
                    warn!("config: {e}");
                }
                warn!("configuration change rejected; the last good configuration stays in force");
                self.state.send_if_modified(|s| {
                    if s.errors == errors {
                        return false;
                    }
                    *s = Arc::new(ConfigState { errors: errors.clone(), changed: Vec::new(), ..(**s).clone() });
                    true
                });
                Reload::Rejected(errors)
            }
            Ok(loaded) => {
                let changed = diff(&files.in_force, &now);
                if changed.is_empty() {
                    // Back to the files in force: only the errors go away.
                    self.state.send_if_modified(|s| {
                        let had = !s.errors.is_empty();
                        if had {
                            *s = Arc::new(ConfigState { errors: Vec::new(), changed: Vec::new(), ..(**s).clone() });
                        }
                        had
                    });
                    return Reload::Unchanged;
                }
                files.in_force = now;
                let generation = self.current().generation + 1;
                let names: Vec<std::path::Display<'_>> = changed.iter().map(|p| p.display()).collect();
                info!(generation, files = %crate::logging::brief(&names), "configuration applied");
                self.state.send_replace(Arc::new(ConfigState {
                    generation,
                    loaded: Arc::new(loaded),
                    errors: Vec::new(),
                    changed: changed.clone(),
                }));
                Reload::Applied(changed)
            }
        }
    }

    /// Registers inotify watches on the trees before it returns, so no change made
    /// after this call is missed (gsed calls it before it claims its bus name);
    /// one reload catches a change made since the configuration was first loaded.
    pub fn watch(self: &Arc<Self>) -> notify::Result<ConfigWatch> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let _ = tx.send(ev);
        })?;
        let mut watched = BTreeMap::new();
        self.rewatch(&mut watcher, &mut watched);
        self.reload();
        Ok(ConfigWatch { service: self.clone(), watcher, rx, watched })
    }

    fn rewatch(&self, watcher: &mut impl Watcher, watched: &mut BTreeMap<PathBuf, Option<(u64, u64)>>) {
        for tree in &self.trees {
            let id = std::fs::metadata(tree).ok().map(|m| (m.dev(), m.ino()));
            if watched.get(tree) == Some(&id) {
                continue;
            }
            let _ = watcher.unwatch(tree);
            // The parent sees the tree itself appear, vanish or be renamed over.
            if let Some(parent) = tree.parent().filter(|p| p.is_dir()) {
                let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
            }
            if id.is_some()
                && let Err(e) = watcher.watch(tree, RecursiveMode::Recursive)
            {
                warn!(tree = %tree.display(), error = %e, "cannot watch config.d; changes apply on Reload()");
            }
            watched.insert(tree.clone(), id);
        }
    }
}

/// The registered watches of [`ConfigService::watch`].
pub struct ConfigWatch {
    service: Arc<ConfigService>,
    watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    watched: BTreeMap<PathBuf, Option<(u64, u64)>>,
}

impl ConfigWatch {
    /// Reloads after each burst of changes; uses no CPU while nothing changes
    /// (inotify, no polling). Runs until the watcher goes away.
    pub async fn run(mut self) {
        while let Some(ev) = self.rx.recv().await {
            if !relevant(&ev) {
                continue;
            }
            let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
            loop {
                match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + QUIET), self.rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // A tree replaced by rename (a sync) is a new directory: watch it anew.
            self.service.rewatch(&mut self.watcher, &mut self.watched);
            // Parsing is off the thread that serves D-Bus: a large tree never freezes the bus.
            let svc = self.service.clone();
            let outcome = tokio::task::spawn_blocking(move || svc.reload()).await;
            debug!(?outcome, "reload after file change");
        }
    }
}

fn relevant(ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        Ok(e) => !matches!(
            e.kind,
            EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Other | AccessKind::Any)
                | EventKind::Access(AccessKind::Close(notify::event::AccessMode::Read))
        ),
        Err(_) => true,
    }
}

impl Files {
    /// Hash of every file's content in the trees, by path; a file whose stamp
    /// did not move keeps its hash without being read.
    fn fingerprint(&mut self, trees: &[PathBuf]) -> BTreeMap<PathBuf, u64> {
        let mut out = Vec::new();
        let mut hashes = HashMap::with_capacity(self.hashes.len());
        for p in trees.iter().flat_map(|t| config::walk(t)) {
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            let stamp = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
            let hash = match self.hashes.get(&p) {
                Some((s, h)) if *s == stamp => *h,
                _ => {
                    self.reads += 1;
                    let Some(h) = hash_file(&p) else { continue };
                    h
                }
            };
            hashes.insert(p.clone(), (stamp, hash));
            out.push((p, hash));
        }
        // Only the files still there are remembered.
        self.hashes = hashes;
        // Each tree's walk is sorted: collecting merges the runs.
        out.into_iter().collect()
    }
}

/// Hash of a file's content (walk lists regular files only; a huge one is
/// hashed by its head, and loading it reports it).
fn hash_file(p: &std::path::Path) -> Option<u64> {
    let data = config::read_regular(p).ok()??;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    Some(h.finish())
}

fn diff(old: &BTreeMap<PathBuf, u64>, new: &BTreeMap<PathBuf, u64>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = new.iter().filter(|(p, h)| old.get(*p) != Some(h)).map(|(p, _)| p.clone()).collect();
    out.extend(old.keys().filter(|p| !new.contains_key(*p)).cloned());
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reload_applies_rejects_and_recovers() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("config.d");
        let boot = tree.join("system/boot.conf");
        fs::create_dir_all(boot.parent().unwrap()).unwrap();
        fs::write(&boot, "[health]\nmax_attempts = 3\n").unwrap();
        let svc = ConfigService::with_trees(vec![tree.clone()]);
        assert_eq!(svc.current().generation, 1);
        assert_eq!(svc.reload(), Reload::Unchanged);

        fs::write(&boot, "[health]\nmax_attempts = 4\n").unwrap();
        assert_eq!(svc.reload(), Reload::Applied(vec![boot.clone()]));
        assert_eq!(svc.current().generation, 2);
        assert_eq!(svc.current().loaded.settings.boot.health.max_attempts, 4);

        fs::write(&boot, "[health]\nmax_attempts = \"many\"\n").unwrap();
        assert!(matches!(svc.reload(), Reload::Rejected(e) if e.len() == 1));
        let s = svc.current();
        assert_eq!((s.generation, s.loaded.settings.boot.health.max_attempts), (2, 4), "last good stays");
        assert_eq!(s.errors[0].line, Some(2));

        fs::write(&boot, "[health]\nmax_attempts = 4\n").unwrap();
        assert_eq!(svc.reload(), Reload::Unchanged);
        assert!(svc.current().errors.is_empty(), "fixing the file clears the errors");

        fs::remove_file(&boot).unwrap();
        assert_eq!(svc.reload(), Reload::Applied(vec![boot]));
        assert_eq!(svc.current().loaded.settings.boot.health.max_attempts, 3, "back to the default");
    }

    #[test]
    fn hashing_refuses_what_is_not_a_regular_file_without_blocking() {
        // A file swapped for a FIFO or a link after the walk listed it: an open
        // that waited for a writer would hang gsed's reload for good.
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("boot.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(hash_file(&fifo), None);
        std::os::unix::fs::symlink("/dev/zero", d.path().join("link.conf")).unwrap();
        assert_eq!(hash_file(&d.path().join("link.conf")), None);
        fs::write(d.path().join("ok.conf"), "x").unwrap();
        assert!(hash_file(&d.path().join("ok.conf")).is_some());
    }

    #[test]
    fn a_reload_reads_only_files_that_moved_and_a_second_one_nothing() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("config.d");
        let etc = tree.join("etc");
        fs::create_dir_all(&etc).unwrap();
        for i in 0..200 {
            fs::write(etc.join(format!("f{i}")), format!("{i}\n")).unwrap();
        }
        let svc = ConfigService::with_trees(vec![tree.clone()]);
        let reads = || svc.files.lock().unwrap().reads;
        assert_eq!(reads(), 200);
        assert_eq!(svc.reload(), Reload::Unchanged);
        assert_eq!(reads(), 200, "nothing moved: nothing read");

        // A sync replaces one file by rename: one read, one apply, and the
        // watcher's reload that follows finds nothing to do.
        fs::write(etc.join(".new"), "changed\n").unwrap();
        fs::rename(etc.join(".new"), etc.join("f7")).unwrap();
        let generation = svc.current().generation;
        assert_eq!(svc.reload(), Reload::Applied(vec![etc.join("f7")]));
        assert_eq!(reads(), 201);
        assert_eq!(svc.reload(), Reload::Unchanged);
        assert_eq!((reads(), svc.current().generation), (201, generation + 1), "applied once");

        // Touched but equal content: read again, nothing applied.
        fs::write(etc.join("f8"), "8\n").unwrap();
        assert_eq!(svc.reload(), Reload::Unchanged);
        assert_eq!(svc.current().generation, generation + 1);
    }
}
