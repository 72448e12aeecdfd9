//! Writes an image from the chunk cache into a mounted slot. First [`scan`]
//! reads the whole image once without writing: every chunk whole, every member
//! inside the slot; then the slot must be big enough. Then the slot's flag goes (an
//! interrupted install is never trusted), then the old contents, GNU tar
//! unpacks the stream, and a fresh flag is written last.

use std::{
    io::{Read, Write},
    path::{Component, Path},
    process::{Command, Stdio},
};

use super::{Cache, ImageError, Index};
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

/// The image's tar stream, read chunk by chunk from the cache. A damaged chunk
/// (removed from the cache by the read) is noted and read as zeros, so one pass
/// finds every damaged chunk.
struct ChunkReader<'a> {
    cache: &'a Cache,
    chunks: std::slice::Iter<'a, super::Chunk>,
    buf: Vec<u8>,
    pos: usize,
    damaged: Vec<String>,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(c) = self.chunks.next() else { return Ok(0) };
            self.buf = self.cache.read(c).unwrap_or_else(|_| {
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
    let outside = |p: &Path| p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    let mut archive = tar::Archive::new(ChunkReader {
        cache,
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

/// Installs `index` from `cache`, which [`scan`] passed, into the slot mounted
/// at `dir`; returns the version the slot now holds. `progress` gets (bytes
/// written, image size).
pub fn install(
    dir: &Path,
    slot: &str,
    index: &Index,
    cache: &Cache,
    key: &FlagKey,
    progress: &dyn Fn(u64, u64),
) -> Result<String, ImageError> {
    check_fits(dir, slot, index)?;
    let ctx = |what: &str| super::io(format!("slot {slot}: {what}"));
    match std::fs::remove_file(flag::flag_path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ctx("removing the old flag")(e)),
        _ => nix::unistd::sync(),
    }
    clear_dir(dir, &["lost+found"]).map_err(ctx("emptying the slot"))?;
    let mut tar = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ctx("running GNU tar"))?;
    let mut stdin = tar.stdin.take().ok_or_else(|| ImageError::Refused("tar has no stdin".into()))?;
    let mut written = 0u64;
    let mut fed = Ok(());
    for c in &index.chunks {
        let data = match cache.read(c) {
            Ok(d) => d,
            Err(e) => {
                fed = Err(e);
                break;
            }
        };
        if let Err(e) = stdin.write_all(&data) {
            fed = Err(ctx("feeding tar")(e));
            break;
        }
        written += data.len() as u64;
        progress(written, index.size);
    }
    drop(stdin);
    let mut err = String::new();
    if let Some(mut e) = tar.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = tar.wait().map_err(ctx("waiting for tar"))?;
    if !status.success() || fed.is_err() {
        let _ = clear_dir(dir, &["lost+found"]);
        let tar_says = err.trim();
        return Err(match fed {
            Err(e) if tar_says.is_empty() => e,
            Err(e) => ImageError::Refused(format!("slot {slot}: {e} (tar: {tar_says})")),
            Ok(()) => ImageError::Refused(format!("slot {slot}: the image does not unpack: {tar_says}")),
        });
    }
    let found = image_version(dir);
    let version = if found == "unknown" { index.version.clone() } else { found };
    BootFlag { slot: slot.to_owned(), image_version: version.clone(), healthy_cycles: 0, last_good: 0 }
        .write(dir, key)
        .map_err(ctx("writing the flag"))?;
    nix::unistd::sync();
    Ok(version)
}
