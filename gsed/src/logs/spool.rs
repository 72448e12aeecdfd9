//! The running boot's spool: a directory on the persistent area that live logs are
//! copied into every `spool_interval` and synced, so a power cut loses at most that
//! much. Each source is copied from where the last round stopped (by device, inode
//! and offset; a rotated or truncated file starts again from its beginning).
//! Only regular files are read: a FIFO, socket or symbolic link among the sources
//! is skipped, so no log file can block gsed or lead it out of its tree.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::archive::{BootMeta, META, SPOOL_STATE};
use crate::fsutil::write_atomic;

/// How deep below a source directory files are collected.
const MAX_DEPTH: usize = 3;
/// Read at most this much of one source in one round (the rest follows next round).
const CHUNK: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    dev: u64,
    ino: u64,
    offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, Position>,
    /// Sequence number of the last kernel record copied.
    kernel_seq: Option<u64>,
    /// Bytes copied so far.
    used: u64,
    truncated: bool,
}

/// Where a round copies from.
pub struct Sources {
    /// (file in the running system, name in the spool).
    pub files: Vec<(PathBuf, String)>,
    /// The kernel log device (or its stand-in), when it is collected.
    pub kmsg: Option<PathBuf>,
    /// What the whole boot may spool.
    pub max_bytes: u64,
}

impl Sources {
    /// Every regular file below `dirs` (as seen under `root`), named by its path
    /// in the running system, plus `extra` files under fixed names.
    pub fn discover(root: &Path, dirs: &[PathBuf], extra: &[(PathBuf, &str)]) -> Vec<(PathBuf, String)> {
        let mut out: Vec<(PathBuf, String)> =
            extra.iter().filter(|(p, _)| is_regular(p)).map(|(p, n)| (p.clone(), (*n).to_owned())).collect();
        for dir in dirs {
            let mut stack = vec![(dir.clone(), 0)];
            while let Some((d, depth)) = stack.pop() {
                let Ok(rd) = fs::read_dir(&d) else { continue };
                for e in rd.flatten() {
                    let Ok(t) = e.file_type() else { continue };
                    let p = e.path();
                    // systemd's binary journal changes in place: it is archived
                    // as text at shutdown instead.
                    if t.is_dir() && depth < MAX_DEPTH && e.file_name() != "journal" {
                        stack.push((p, depth + 1));
                    } else if t.is_file() {
                        let rel =
                            p.strip_prefix(root).unwrap_or(&p).to_string_lossy().trim_start_matches('/').to_owned();
                        out.push((p, rel));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out.dedup_by(|a, b| a.1 == b.1);
        out
    }
}

fn is_regular(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

pub struct Spool {
    dir: PathBuf,
    state: State,
    kmsg: Option<File>,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub bytes: u64,
    /// The budget ran out in this round.
    pub newly_truncated: bool,
}

impl Spool {
    /// Opens (or creates) the spool `dir` of a boot; `meta` is written once, at creation.
    pub fn open(dir: &Path, meta: &BootMeta) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
            write_atomic(&meta_path, &json, 0o600)?;
        }
        let state =
            fs::read(dir.join(SPOOL_STATE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Ok(Spool { dir: dir.to_owned(), state, kmsg: None })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn truncated(&self) -> bool {
        self.state.truncated
    }

    /// Copies what is new in every source, syncs it, and records how far it got.
    pub fn round(&mut self, sources: &Sources) -> io::Result<Round> {
        let before = self.state.clone();
        let mut round = Round::default();
        let mut touched: BTreeMap<String, File> = BTreeMap::new();
        for (path, name) in &sources.files {
            let room = sources.max_bytes.saturating_sub(self.state.used);
            if room == 0 {
                break;
            }
            match self.copy_file(path, name, room, &mut touched) {
                Ok(n) => round.bytes += n,
                // A source that vanished or cannot be read is no reason to stop.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!(file = %path.display(), error = %e, "log source skipped"),
            }
        }
        if let Some(kmsg) = &sources.kmsg {
            let room = sources.max_bytes.saturating_sub(self.state.used);
            round.bytes += self.copy_kernel(kmsg, room, &mut touched)?;
        }
        if self.state.used >= sources.max_bytes && !self.state.truncated {
            self.state.truncated = true;
            round.newly_truncated = true;
        }
        for f in touched.values() {
            f.sync_data()?;
        }
        if self.state != before {
            let json = serde_json::to_vec(&self.state).map_err(io::Error::other)?;
            write_atomic(&self.dir.join(SPOOL_STATE), &json, 0o600)?;
        }
        Ok(round)
    }

    fn out<'a>(&self, name: &str, touched: &'a mut BTreeMap<String, File>) -> io::Result<&'a mut File> {
        if !touched.contains_key(name) {
            let p = self.dir.join(name);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d)?;
            }
            let f = OpenOptions::new().create(true).append(true).mode(0o600).open(&p)?;
            touched.insert(name.to_owned(), f);
        }
        Ok(touched.get_mut(name).expect("inserted above"))
    }

    fn copy_file(
        &mut self,
        path: &Path,
        name: &str,
        room: u64,
        touched: &mut BTreeMap<String, File>,
    ) -> io::Result<u64> {
        let mut f =
            OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path)?;
        let m = f.metadata()?;
        if !m.is_file() {
            return Ok(0);
        }
        let pos = self.state.files.get(name).cloned().unwrap_or_default();
        let start = if pos.dev == m.dev() && pos.ino == m.ino() && pos.offset <= m.len() { pos.offset } else { 0 };
        let want = (m.len() - start).min(room).min(CHUNK);
        if want == 0 {
            // Record a new (empty) file's identity, so its first bytes count from 0.
            self.state.files.insert(name.to_owned(), Position { dev: m.dev(), ino: m.ino(), offset: start });
            return Ok(0);
        }
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity(want as usize);
        (&mut f).take(want).read_to_end(&mut buf)?;
        self.out(name, touched)?.write_all(&buf)?;
        let n = buf.len() as u64;
        self.state.files.insert(name.to_owned(), Position { dev: m.dev(), ino: m.ino(), offset: start + n });
        self.state.used += n;
        Ok(n)
    }

    /// Kernel records (`prio,seq,usec,flags;text`) as `[seconds] text` lines. The
    /// device is kept open so each round reads on from the last; records already
    /// copied (by an earlier gsed of the same boot) are skipped by sequence number.
    fn copy_kernel(&mut self, kmsg: &Path, room: u64, touched: &mut BTreeMap<String, File>) -> io::Result<u64> {
        if self.kmsg.is_none() {
            match OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(kmsg) {
                Ok(f) => self.kmsg = Some(f),
                Err(_) => return Ok(0),
            }
        }
        let Some(dev) = self.kmsg.as_mut() else { return Ok(0) };
        let mut text = String::new();
        let mut buf = vec![0u8; 16 << 10];
        let mut pending = String::new();
        loop {
            if text.len() as u64 >= room.min(CHUNK) {
                break;
            }
            match dev.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // The device returns whole records; a stand-in file may end mid-line.
            while let Some(nl) = pending.find('\n') {
                let line: String = pending.drain(..=nl).collect();
                if let Some((seq, formatted)) = kernel_line(line.trim_end_matches('\n'))
                    && self.state.kernel_seq.is_none_or(|last| seq > last)
                {
                    self.state.kernel_seq = Some(seq);
                    text.push_str(&formatted);
                    text.push('\n');
                }
            }
        }
        if text.is_empty() {
            return Ok(0);
        }
        let n = text.len() as u64;
        self.out("kernel.log", touched)?.write_all(text.as_bytes())?;
        self.state.used += n;
        Ok(n)
    }
}

/// `6,1234,5678901,-;message` → (1234, `[    5.678901] message`). Continuation
/// lines (starting with a space) and anything unparsable give None.
pub fn kernel_line(line: &str) -> Option<(u64, String)> {
    let (head, msg) = line.split_once(';')?;
    let mut f = head.split(',');
    let _prio: u32 = f.next()?.parse().ok()?;
    let seq: u64 = f.next()?.parse().ok()?;
    let usec: u64 = f.next()?.parse().ok()?;
    Some((seq, format!("[{:5}.{:06}] {msg}", usec / 1_000_000, usec % 1_000_000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_records_are_formatted_and_junk_ignored() {
        assert_eq!(kernel_line("6,12,5678901,-;virtio_net: ok"), Some((12, "[    5.678901] virtio_net: ok".into())));
        assert_eq!(kernel_line(" SUBSYSTEM=net"), None);
        assert_eq!(kernel_line("x,1,2;y"), None);
        assert_eq!(kernel_line("no separator"), None);
    }

    #[test]
    fn rounds_copy_only_what_is_new_and_restart_where_they_stopped() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("var/log");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("messages"), "one\n").unwrap();
        let kmsg = d.path().join("kmsg");
        fs::write(&kmsg, "6,1,1000,-;first\n").unwrap();
        let spool_dir = d.path().join("spool/b1");
        let meta = BootMeta { boot_id: "b1".into(), ..Default::default() };
        let sources = || Sources {
            files: Sources::discover(d.path(), std::slice::from_ref(&src), &[]),
            kmsg: Some(kmsg.clone()),
            max_bytes: 1 << 20,
        };
        let mut s = Spool::open(&spool_dir, &meta).unwrap();
        assert_eq!(s.round(&sources()).unwrap().bytes, 4 + "[    0.001000] first\n".len() as u64);
        assert_eq!(s.round(&sources()).unwrap().bytes, 0, "nothing new, nothing copied");
        fs::OpenOptions::new().append(true).open(src.join("messages")).unwrap().write_all(b"two\n").unwrap();
        fs::OpenOptions::new().append(true).open(&kmsg).unwrap().write_all(b"6,2,2000,-;second\n").unwrap();
        drop(s);
        // A restarted gsed (same boot) goes on where the last one stopped.
        let mut s = Spool::open(&spool_dir, &meta).unwrap();
        s.round(&sources()).unwrap();
        assert_eq!(fs::read_to_string(spool_dir.join("var/log/messages")).unwrap(), "one\ntwo\n");
        assert_eq!(
            fs::read_to_string(spool_dir.join("kernel.log")).unwrap(),
            "[    0.001000] first\n[    0.002000] second\n"
        );
        // Rotated: a new file under the same name starts from its beginning.
        fs::remove_file(src.join("messages")).unwrap();
        fs::write(src.join("messages"), "three\n").unwrap();
        s.round(&sources()).unwrap();
        assert_eq!(fs::read_to_string(spool_dir.join("var/log/messages")).unwrap(), "one\ntwo\nthree\n");
    }

    #[test]
    fn the_budget_stops_copying_and_says_so_once() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("log");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("big"), vec![b'x'; 10_000]).unwrap();
        let mut s = Spool::open(&d.path().join("spool"), &BootMeta::default()).unwrap();
        let sources = Sources { files: Sources::discover(d.path(), &[src], &[]), kmsg: None, max_bytes: 4096 };
        let r = s.round(&sources).unwrap();
        assert_eq!((r.bytes, r.newly_truncated), (4096, true));
        assert_eq!(s.round(&sources).unwrap(), Round::default());
        assert!(s.truncated());
    }

    #[test]
    fn fifos_and_links_out_of_the_tree_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("log");
        fs::create_dir_all(&src).unwrap();
        nix::unistd::mkfifo(&src.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("escape")).unwrap();
        fs::write(src.join("real.log"), "ok\n").unwrap();
        let found: Vec<String> = Sources::discover(d.path(), &[src], &[]).into_iter().map(|(_, n)| n).collect();
        assert_eq!(found, ["log/real.log"]);
    }
}
