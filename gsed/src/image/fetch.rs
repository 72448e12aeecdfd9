//! The download engine: fetches the chunks of an index that the local cache
//! lacks, from several servers, verified, resumable, rate-limited.
//!
//! A chunk enters the cache only once verified, by rename, so a restart (kill,
//! power cut) fetches again only what was not finished. A server that fails a
//! request hands the rest of the transfer to the next one; nothing verified is
//! fetched again. Every request has its own time limit ("no progress for that
//! long"), the transfer as a whole has none. A reader can follow the transfer in
//! image order ([`Handoff`]): the check before install runs while chunks
//! arrive, on the chunks the workers have just verified, and workers stay a
//! bounded stretch of the image ahead of it, so each chunk is decompressed once.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Chunk, ImageError, Index, index::place};
use crate::servers::http::Http;

/// The verified chunks on this machine, stored as fetched.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, c: &Chunk) -> PathBuf {
        self.dir.join(c.rel_path())
    }

    /// A chunk counts as present when a file of it is there (packed here or by a
    /// server); it is verified when read.
    pub fn has(&self, c: &Chunk) -> bool {
        fs::metadata(self.path(c)).is_ok_and(|m| m.len() > 0)
    }

    /// The chunk's contents, decompressed to its declared size (and checked
    /// against the frame's checksum, where it has one) but not hashed again:
    /// every chunk was verified against its sha256 before it entered the cache.
    pub fn read(&self, c: &Chunk) -> Result<Vec<u8>, ImageError> {
        let path = self.path(c);
        let packed = fs::read(&path).map_err(super::io(format!("reading cached chunk {}", path.display())))?;
        let data = super::index::decompress(&packed, c.size as usize);
        match data {
            Ok(d) if d.len() == c.size as usize => Ok(d),
            // Damaged: gone from the cache, so the next transfer fetches it again.
            other => {
                let _ = fs::remove_file(&path);
                let why = other.err().map_or_else(|| "shorter than its declared size".into(), |e| e.to_string());
                Err(ImageError::Chunk { id: c.id.clone(), why: format!("damaged in the cache: {why}") })
            }
        }
    }

    fn put(&self, c: &Chunk, packed: &[u8]) -> Result<(), ImageError> {
        let path = self.path(c);
        place(&path, packed).map_err(super::io(format!("caching chunk {}", path.display())))
    }

    /// Drops every cached chunk that none of `keep` uses (and stray temporary files).
    pub fn keep_only(&self, keep: &[&Index]) -> u64 {
        let wanted: HashSet<String> =
            keep.iter().flat_map(|i| i.chunks.iter().map(|c| format!("{}.zst", c.id))).collect();
        let mut freed = 0;
        for sub in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if !wanted.contains(&*f.file_name().to_string_lossy()) {
                    freed += f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(f.path());
                }
            }
        }
        freed
    }
}

/// What a transfer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Chunks and (packed) bytes fetched from servers.
    pub fetched: u64,
    pub fetched_bytes: u64,
    /// Chunks and bytes already in the cache.
    pub cached: u64,
    pub cached_bytes: u64,
}

/// One transfer's settings.
pub struct Fetch<'a> {
    /// Server base URLs, the preferred one first.
    pub servers: Vec<String>,
    /// Each request must finish within the client's timeout.
    pub http: Http,
    pub cache: &'a Cache,
    /// Bytes per second over all connections; `None` for no limit.
    pub max_rate: Option<u64>,
    /// Connections at once.
    pub workers: usize,
    /// Called with (bytes done, bytes to fetch) as chunks arrive.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
    /// Set to stop the transfer (gsed shutting down).
    pub stop: &'a AtomicBool,
}

impl Fetch<'_> {
    /// Brings every chunk of `index` into the cache; hands each fetched chunk's
    /// contents to `follow`, when given, and ends it when the transfer ends.
    pub fn run(&self, index: &Index, follow: Option<&Handoff>) -> Result<FetchStats, ImageError> {
        let _end = follow.map(Ending);
        let mut stats = FetchStats::default();
        let mut missing = Vec::new();
        for (c, start) in index.unique_at() {
            if self.cache.has(c) {
                stats.cached += 1;
                stats.cached_bytes += u64::from(c.packed);
            } else {
                missing.push((c, start));
            }
        }
        let total: u64 = missing.iter().map(|(c, _)| u64::from(c.packed)).sum();
        if self.servers.is_empty() && !missing.is_empty() {
            return Err(ImageError::Refused("no server to fetch the image from".into()));
        }
        self.check_room(total)?;
        (self.progress)(0, total);
        let next = AtomicUsize::new(0);
        let preferred = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let failed: Mutex<Option<ImageError>> = Mutex::new(None);
        let limiter = Limiter::new(self.max_rate);
        // Verified chunks reach the disk as they come: a chunk renamed into
        // place is not on it until its data is, and a power cut would
        // otherwise lose the last half minute of the transfer (one `syncfs` a
        // second costs far less than an `fsync` per chunk). It flushes once
        // more after the last worker.
        std::thread::scope(|s| {
            let writeback = crate::fsutil::Writeback::start(s, self.cache.dir(), Duration::from_secs(1));
            let mut workers = Vec::new();
            for _ in 0..self.workers.max(1).min(missing.len().max(1)) {
                workers.push(s.spawn(|| {
                    let give_up = || self.stop.load(Ordering::Relaxed) || failed.lock().is_ok_and(|f| f.is_some());
                    loop {
                        if give_up() {
                            return;
                        }
                        let Some(&(c, start)) = missing.get(next.fetch_add(1, Ordering::Relaxed)) else { return };
                        if let Some(h) = follow {
                            h.wait_for_reader(start, &give_up);
                        }
                        limiter.take(u64::from(c.packed));
                        match self.one(c, &preferred, follow) {
                            Ok(()) => {
                                let d = done.fetch_add(u64::from(c.packed), Ordering::Relaxed) + u64::from(c.packed);
                                (self.progress)(d, total);
                            }
                            Err(e) => {
                                if let Ok(mut f) = failed.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                }));
            }
            for w in workers {
                if let Err(panic) = w.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            drop(writeback);
        });
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(e);
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(ImageError::Stopped);
        }
        stats.fetched = missing.len() as u64;
        stats.fetched_bytes = total;
        Ok(stats)
    }

    /// A full persistent area fails here, before any transfer, not half-way.
    fn check_room(&self, bytes: u64) -> Result<(), ImageError> {
        let dir = self.cache.dir();
        fs::create_dir_all(dir).map_err(super::io(format!("creating {}", dir.display())))?;
        let st = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| ImageError::Io(format!("statvfs {}", dir.display()), e.into()))?;
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        // Room for the chunks, their file system blocks, and some to spare.
        let need = bytes + bytes / 8 + (16 << 20);
        if free < need {
            return Err(ImageError::Refused(format!(
                "{} has {} MB free, the download needs {} MB: nothing was fetched",
                dir.display(),
                free >> 20,
                need >> 20
            )));
        }
        Ok(())
    }

    /// One chunk, from the preferred server or, failing that, from each other
    /// one in turn; the one that delivers becomes the preferred one.
    fn one(&self, c: &Chunk, preferred: &AtomicUsize, follow: Option<&Handoff>) -> Result<(), ImageError> {
        let first = preferred.load(Ordering::Relaxed);
        let mut why = Vec::new();
        for k in 0..self.servers.len() {
            let i = (first + k) % self.servers.len();
            let url = format!("{}/gse1/chunks/{}", self.servers[i].trim_end_matches('/'), c.rel_path());
            let got = self.http.get(&url, u64::from(c.packed)).map_err(|e| e.to_string()).and_then(|packed| {
                // A server that serves wrong bytes is as good as a dead one.
                c.unpack(&packed).map(|data| (packed, data)).map_err(|e| format!("{url}: {e}"))
            });
            match got {
                Ok((packed, data)) => {
                    if i != first {
                        tracing::warn!(from = %self.servers[first], to = %self.servers[i], "image transfer moves to another server");
                        preferred.store(i, Ordering::Relaxed);
                    }
                    // Offered before it is cached: a reader that finds it cached finds no offer left behind.
                    if let Some(h) = follow {
                        h.offer(c, data);
                    }
                    self.cache.put(c, &packed)?;
                    if let Some(h) = follow {
                        h.notify();
                    }
                    return Ok(());
                }
                Err(e) => why.push(e),
            }
        }
        Err(ImageError::Unreachable { id: c.id.clone(), why: why.join("; ") })
    }
}

/// Verified chunks on their way from a transfer to a reader that follows it
/// in image order. The reader takes a chunk from here when a worker offered
/// it, else from the cache once it is there. Workers fetch no chunk that
/// starts more than [`Handoff::HOLD`] bytes of the image past the reader, so
/// memory stays bounded and no offer is dropped: a dropped one would be
/// decompressed a second time, from the cache, by a reader that already lags.
#[derive(Default)]
pub struct Handoff {
    state: Mutex<Held>,
    changed: Condvar,
}

#[derive(Default)]
struct Held {
    chunks: HashMap<String, Vec<u8>>,
    bytes: usize,
    /// Bytes of the image the reader has taken: where it reads next.
    taken: u64,
    /// The transfer ended.
    ended: bool,
    /// The reader is gone (done, failed): nothing waits for it.
    left: bool,
}

impl Handoff {
    const HOLD: usize = 16 << 20;

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the reader is close enough to a chunk that starts `start`
    /// bytes into the image (or is gone, or `give_up` says so). The chunk the
    /// reader waits for is always claimed before any chunk that waits here.
    fn wait_for_reader(&self, start: u64, give_up: &dyn Fn() -> bool) {
        let mut held = self.lock();
        while !held.left && start >= held.taken + Self::HOLD as u64 {
            if give_up() {
                return;
            }
            // Timed: a stop or another worker's failure does not notify.
            held =
                self.changed.wait_timeout(held, Duration::from_millis(100)).map_or_else(|e| e.into_inner().0, |r| r.0);
        }
    }

    fn offer(&self, c: &Chunk, data: Vec<u8>) {
        let mut held = self.lock();
        // The bound only guards against a reader that never takes what it asked for.
        if !held.left && held.bytes <= 2 * Self::HOLD && !held.chunks.contains_key(&c.id) {
            held.bytes += data.len();
            held.chunks.insert(c.id.clone(), data);
            self.changed.notify_all();
        }
    }

    fn notify(&self) {
        let _held = self.lock();
        self.changed.notify_all();
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// The one reader, which takes the chunks in image order. Workers wait for
    /// it while it lives; once it drops, however the reading ends (done, an
    /// error, a panic), they no longer wait nor hold for it.
    pub fn reader(&self) -> Reader<'_> {
        Reader(self)
    }
}

/// The reader of a [`Handoff`], for as long as it reads.
pub struct Reader<'a>(&'a Handoff);

impl Reader<'_> {
    /// `c`'s contents, waiting for the transfer to bring it; an error once the
    /// transfer ended without it (or its cached copy is damaged).
    pub fn take(&self, cache: &Cache, c: &Chunk) -> Result<Vec<u8>, ImageError> {
        let h = self.0;
        let mut held = h.lock();
        held.taken += u64::from(c.size);
        h.changed.notify_all();
        loop {
            if let Some(data) = held.chunks.remove(&c.id) {
                held.bytes -= data.len();
                return Ok(data);
            }
            if cache.has(c) {
                drop(held);
                return cache.read(c);
            }
            if held.ended {
                return Err(ImageError::Chunk { id: c.id.clone(), why: "the transfer ended without it".into() });
            }
            held = h.changed.wait(held).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut held = self.0.lock();
        held.left = true;
        held.chunks.clear();
        held.bytes = 0;
        self.0.changed.notify_all();
    }
}

/// Ends a [`Handoff`] however the transfer returns.
struct Ending<'a>(&'a Handoff);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A shared budget of bytes per second (a leaky bucket over all workers). A
/// chunk is paid for before it is fetched, so B bytes take at least B / rate
/// even when the whole transfer is a few large chunks.
struct Limiter {
    rate: Option<u64>,
    next: Mutex<Instant>,
}

impl Limiter {
    fn new(rate: Option<u64>) -> Limiter {
        Limiter { rate: rate.filter(|r| *r > 0), next: Mutex::new(Instant::now()) }
    }

    fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let Ok(mut next) = self.next.lock() else { return };
            let now = Instant::now();
            *next = (*next).max(now) + Duration::from_secs_f64(bytes as f64 / rate as f64);
            *next - now
        };
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::manifest::sha256_hex;

    fn chunk(seed: u8, len: usize) -> (Chunk, Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let packed = zstd::bulk::compress(&data, 3).unwrap();
        let c = Chunk {
            id: sha256_hex(&data),
            size: len as u32,
            packed: packed.len() as u32,
            packed_sha256: Some(sha256_hex(&packed)),
        };
        (c, data, packed)
    }

    #[test]
    fn a_follower_gets_each_chunk_from_memory_or_the_cache_and_hears_when_the_transfer_ends() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let h = Handoff::default();
        let r = h.reader();
        let (a, a_data, _) = chunk(3, 1000);
        let (b, b_data, b_packed) = chunk(5, 2000);
        let (c, _, _) = chunk(7, 3000);
        // Offered and never cached: only memory can have it.
        h.offer(&a, a_data.clone());
        assert_eq!(r.take(&cache, &a).unwrap(), a_data);
        // Cached by a worker on another thread while the follower waits for it.
        std::thread::scope(|s| {
            let waiting = s.spawn(|| r.take(&cache, &b));
            std::thread::sleep(Duration::from_millis(50));
            cache.put(&b, &b_packed).unwrap();
            h.notify();
            assert_eq!(waiting.join().unwrap().unwrap(), b_data);
        });
        h.end();
        let e = r.take(&cache, &c).unwrap_err().to_string();
        assert!(e.contains("ended without it"), "{e}");
    }

    #[test]
    fn workers_stay_a_bounded_stretch_ahead_of_the_reader_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let h = Handoff::default();
        let r = h.reader();
        let far = Handoff::HOLD as u64 + 500;
        // Near the reader: no wait (a wait here would never end).
        h.wait_for_reader(Handoff::HOLD as u64 - 1, &|| false);
        // Far ahead: the worker goes on only once the reader has moved on.
        let (a, a_data, _) = chunk(3, 1000);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                h.wait_for_reader(far, &|| false);
                Instant::now()
            });
            std::thread::sleep(Duration::from_millis(50));
            h.offer(&a, a_data.clone());
            let before_take = Instant::now();
            assert_eq!(r.take(&cache, &a).unwrap(), a_data);
            assert!(worker.join().unwrap() >= before_take, "the worker ran ahead of the reader");
        });
        // A worker told to give up (gsed stops) does not wait.
        h.wait_for_reader(u64::MAX / 2, &|| true);
        // Once the reader is gone nothing waits for it, and nothing is held for it.
        drop(r);
        h.wait_for_reader(u64::MAX / 2, &|| false);
        let (b, b_data, _) = chunk(5, 2000);
        h.offer(&b, b_data);
        assert_eq!(h.lock().bytes, 0, "an offer was held for a reader that is gone");
    }
}
