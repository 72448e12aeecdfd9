//! Crash-safe file writes for everything GSE writes into persistent trees.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Replaces `path` with `data` so that a reader, or the next boot after a power
/// cut, sees either the old or the new content, never a mix: write a temporary file
/// in the same directory, sync it, rename it over, then sync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    // Unique per call: two threads replacing the same file must not share a temporary.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = create_private(&tmp, mode)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `rel` inside `root` as a program chrooted to `root` would find it: symbolic
/// links on the way are followed with `root` as `/`, so an absolute target or a
/// `..` never leads out of the tree. With `follow_last`, a link in the last
/// component is followed too; without, the link itself is returned, to be
/// replaced rather than written through. Images and the RAM /etc are full of
/// absolute links (`/etc/mtab -> /proc/self/mounts`): followed on the host, they
/// would make GSE write, empty or read the host's files.
pub fn in_root(root: &Path, rel: impl AsRef<Path>, follow_last: bool) -> io::Result<PathBuf> {
    use std::{collections::VecDeque, ffi::OsString, path::Component};
    fn push(parts: &mut VecDeque<OsString>, p: &Path, front: bool) {
        let comps: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        if front {
            for c in comps.into_iter().rev() {
                parts.push_front(c);
            }
        } else {
            parts.extend(comps);
        }
    }
    let mut parts = VecDeque::new();
    push(&mut parts, rel.as_ref(), false);
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = parts.pop_front() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&part);
        let last = parts.is_empty();
        let host = root.join(&cand);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!("{}: too many levels of symbolic links", host.display())));
                }
                let target = fs::read_link(&host)?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                push(&mut parts, &target, true);
            }
            _ => cur = cand,
        }
    }
    Ok(root.join(cur))
}

/// Creates `path` anew (never an existing file or link) with at most `mode`'s
/// permissions from the first byte: a secret written into it is never readable
/// by anyone `mode` does not allow, not even while it is being written.
pub fn create_private(path: &Path, mode: u32) -> io::Result<File> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_file(path)?, // a temporary left by a crash
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(path)
}

/// Flushes the file system that holds `dir`, and no other: a `sync(2)` would
/// also wait for everything the rest of the machine has written.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    let d = std::fs::File::open(dir)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)).map_err(std::io::Error::from)
}

/// Writes back the file system that holds a directory every so often, from
/// a thread of a [`std::thread::Scope`], until dropped; then once more. What
/// is written reaches the disk as the writing goes, rather than when the
/// kernel's dirty threshold (a share of RAM) is reached or a final flush
/// has it all to do at once, and a power cut loses at most one period.
pub struct Writeback {
    /// Dropped, it ends the thread's wait.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Writeback {
    pub fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        dir: &Path,
        every: std::time::Duration,
    ) -> Writeback {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Opened once: it is flushed many times.
        let dir = File::open(dir).ok();
        scope.spawn(move || {
            let Some(dir) = dir else { return };
            let flush = || nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir));
            // Errors are the caller's to find with its own checked flush.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let _ = flush();
            }
            let _ = flush();
        });
        Writeback { _stop: stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_a_root_never_leave_it() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir_all(r.join("run")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("/run", r.join("var-run")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("victim")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc", r.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(in_root(r, "lib/x.so", false).unwrap(), r.join("usr/lib/x.so"));
        assert_eq!(in_root(r, "/var-run/gse", false).unwrap(), r.join("run/gse"), "absolute targets stay inside");
        assert_eq!(in_root(r, "victim", false).unwrap(), r.join("victim"), "the last link is not followed");
        assert_eq!(in_root(r, "victim", true).unwrap(), r.join("etc/passwd"), "or followed inside");
        assert_eq!(in_root(r, "up/shadow", false).unwrap(), r.join("etc/shadow"), ".. stops at the root");
        assert!(in_root(r, "loop/x", false).is_err());
    }

    #[test]
    fn a_secret_is_private_before_its_first_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.tmp");
        fs::write(&p, "stale").unwrap();
        let f = create_private(&p, 0o600).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0, "a stale temporary is replaced, not reused");
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o077, 0, "no group or other bits, whatever the umask");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let f = create_private(&d.path().join("link"), 0o600).unwrap();
        assert!(f.metadata().unwrap().is_file());
        assert!(fs::read_to_string("/etc/passwd").unwrap().len() > 5, "the link's target is untouched");
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.conf");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }
}
