//! Writes an image from the chunk cache into a mounted slot. First [`scan`]
//! (or [`scan_following`], while the download runs) reads the whole image once
//! without writing: every chunk whole, every member inside the slot; then the
//! slot must be big enough. Then the slot's flag goes (an interrupted install
//! is never trusted), then the old contents, GNU tar unpacks the stream, the
//! image's own kernel is checked, the slot is flushed, and a fresh flag is
//! written last.

use std::{
    io::{Read, Write},
    path::{Component, Path},
    process::{Command, Stdio},
};

use super::{Cache, Chunk, ImageError, Index, fetch::Handoff};
use crate::boot::{
    copy::clear_dir,
    flag::{self, BootFlag, FlagKey},
    provision::image_version,
};

/// Refuses an image that cannot fit the slot mounted at `dir`, before
/// anything is fetched or changed.
pub fn check_fits(dir: &Path, slot: &str, index: &Index) -> Result<(), ImageError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| ImageError::Io(format!("slot {slot}: statvfs"), std::io::Error::from(e)))?;
    let capacity = st.blocks() as u64 * st.fragment_size() as u64;
    if capacity < index.size {
        return Err(ImageError::Refused(format!(
            "slot {slot} holds {} MB, image {} needs {} MB: nothing was changed",
            capacity >> 20,
            index.version,
            index.size >> 20
        )));
    }
    Ok(())
}

/// The image's tar stream, chunk by chunk from `take`. A damaged chunk
/// (removed from the cache by the read) is noted and read as zeros, so one pass
/// finds every damaged chunk.
struct ChunkReader<'a> {
    take: &'a dyn Fn(&Chunk) -> Result<Vec<u8>, ImageError>,
    chunks: std::slice::Iter<'a, Chunk>,
    buf: Vec<u8>,
    pos: usize,
    damaged: Vec<String>,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.next() else { return Ok(0) };
            self.buf = (self.take)(c).unwrap_or_else(|_| {
                self.damaged.push(c.id.clone());
                vec![0; c.size as usize]
            });
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads the whole image once, writing nothing: every chunk there and whole
/// (its size and zstd checksum; each was checked against its sha256 when it
/// entered the cache), every member's name (and hard link target) inside the
/// slot. Damaged chunks are removed from the cache and reported together, for
/// one more fetch.
pub fn scan(cache: &Cache, index: &Index) -> Result<(), ImageError> {
    scan_with(index, &|c| cache.read(c))
}

/// [`scan`] while a transfer brings the chunks: each is read as it arrives
/// (handed over by the worker that verified it, or from the cache); one
/// that never arrives counts as damaged.
pub fn scan_following(cache: &Cache, index: &Index, handoff: &Handoff) -> Result<(), ImageError> {
    let reader = handoff.reader();
    scan_with(index, &|c| reader.take(cache, c))
}

fn scan_with(index: &Index, take: &dyn Fn(&Chunk) -> Result<Vec<u8>, ImageError>) -> Result<(), ImageError> {
    let outside = |p: &Path| p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    let mut archive = tar::Archive::new(ChunkReader {
        take,
        chunks: index.chunks.iter(),
        buf: Vec::new(),
        pos: 0,
        damaged: Vec::new(),
    });
    let not_tar = |e: std::io::Error| ImageError::Refused(format!("image {}: not a tar stream: {e}", index.version));
    let mut members = || -> Result<(), ImageError> {
        for entry in archive.entries().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            let path = entry.path().map_err(not_tar)?.into_owned();
            let link = entry.link_name().map_err(not_tar)?.filter(|_| entry.header().entry_type().is_hard_link());
            if let Some(p) = std::iter::once(path.as_path()).chain(link.as_deref()).find(|p| outside(p)) {
                return Err(ImageError::Refused(format!(
                    "image {}: member '{}' would land outside the slot: nothing was changed",
                    index.version,
                    p.display()
                )));
            }
        }
        Ok(())
    };
    let members = members();
    // The rest after tar's end marker (or a parse error) is read too: every chunk once.
    let mut reader = archive.into_inner();
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    if !reader.damaged.is_empty() {
        return Err(ImageError::Damaged(std::mem::take(&mut reader.damaged)));
    }
    members
}

/// Where [`install`] takes each chunk's contents from: the cache, or a
/// transfer it follows ([`Reader::take`](super::fetch::Reader::take)).
pub type Source<'a> = &'a (dyn Fn(&Chunk) -> Result<Vec<u8>, ImageError> + Sync);

/// Installs `index` into the slot mounted at `dir`, each chunk from `source`
/// (the cache after [`scan`] passed, or a transfer into a slot that holds
/// nothing to keep); returns the version the slot now holds. `progress` gets
/// (bytes written, image size).
pub fn install(
    dir: &Path,
    slot: &str,
    index: &Index,
    source: Source,
    key: &FlagKey,
    progress: &dyn Fn(u64, u64),
) -> Result<String, ImageError> {
    check_fits(dir, slot, index)?;
    let ctx = |what: &str| super::io(format!("slot {slot}: {what}"));
    let t0 = std::time::Instant::now();
    match std::fs::remove_file(flag::flag_path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ctx("removing the old flag")(e)),
        _ => crate::fsutil::syncfs(dir).map_err(ctx("flushing the removed flag"))?,
    }
    clear_dir(dir, &["lost+found"]).map_err(ctx("emptying the slot"))?;
    tracing::debug!(slot, secs = t0.elapsed().as_secs_f64(), "slot emptied");
    let mut tar = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ctx("running GNU tar"))?;
    let mut stdin = tar.stdin.take().ok_or_else(|| ImageError::Refused("tar has no stdin".into()))?;
    // A bigger pipe: fewer switches between gsed and tar per chunk.
    let _ = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&stdin), nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    let stderr = tar.stderr.take();
    let (fed, err) = std::thread::scope(|s| {
        // tar's complaints are read as they come: a full stderr pipe would stall it.
        let err = s.spawn(move || {
            let mut err = Vec::new();
            if let Some(mut e) = stderr {
                // The first 4 KB for the error message (file names need not be
                // UTF-8); the rest is read and dropped.
                let _ = e.by_ref().take(4096).read_to_end(&mut err);
                let _ = std::io::copy(&mut e, &mut std::io::sink());
            }
            String::from_utf8_lossy(&err).into_owned()
        });
        // Written back as tar goes: otherwise the flush after it would write
        // most of the image while nothing else runs.
        let writeback = crate::fsutil::Writeback::start(s, dir, std::time::Duration::from_millis(500));
        // The next chunks are read and decompressed while tar writes the last ones.
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        s.spawn(move || {
            for c in &index.chunks {
                let data = source(c);
                let failed = data.is_err();
                if tx.send(data).is_err() || failed {
                    return;
                }
            }
        });
        let mut written = 0u64;
        // Err(Some): a chunk could not be had; Err(None): tar stopped reading (it says why).
        let fed = rx.into_iter().try_for_each(|data| {
            let data = data.map_err(Some)?;
            stdin.write_all(&data).map_err(|_| None)?;
            written += data.len() as u64;
            progress(written, index.size);
            Ok(())
        });
        drop(stdin);
        // tar has exited when its stderr closes.
        let err = err.join().unwrap_or_default();
        drop(writeback);
        (fed, err)
    });
    let status = tar.wait().map_err(ctx("waiting for tar"))?;
    if !status.success() || fed.is_err() {
        let _ = clear_dir(dir, &["lost+found"]);
        return Err(match fed {
            // The stream broke first: tar's complaint about a cut archive follows from it.
            Err(Some(e)) => e,
            _ => {
                let tar_says = err.trim();
                let tar_says = if tar_says.is_empty() { "tar stopped reading" } else { tar_says };
                ImageError::Refused(format!("slot {slot}: the image does not unpack: {tar_says}"))
            }
        });
    }
    tracing::debug!(slot, secs = t0.elapsed().as_secs_f64(), "image unpacked");
    // A kernel early boot would refuse to start is refused now, before the
    // slot can be tried (publish checks it too; an older gsectl may not have).
    if let Err(e) = crate::boot::kernel::find(dir, true) {
        let _ = clear_dir(dir, &["lost+found"]);
        return Err(ImageError::Refused(format!("slot {slot}: image {}: {e}; the slot was left empty", index.version)));
    }
    // The image on the disk before the flag that vouches for it: the flag's own
    // fsync would not carry the data tar left to delayed allocation.
    crate::fsutil::syncfs(dir).map_err(ctx("flushing the image"))?;
    tracing::debug!(slot, secs = t0.elapsed().as_secs_f64(), "image flushed");
    let found = image_version(dir);
    let version = if found == "unknown" { index.version.clone() } else { found };
    BootFlag { slot: slot.to_owned(), image_version: version.clone(), healthy_cycles: 0, last_good: 0 }
        .write(dir, key)
        .map_err(ctx("writing the flag"))?;
    Ok(version)
}
