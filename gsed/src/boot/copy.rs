//! File-level copy of a root tree that keeps what a root needs: owners, modes,
//! timestamps, symlinks, hard links, device nodes, FIFOs and extended attributes.
//! Used to repair a slot on filesystems without snapshots, and to fill the
//! RAM-backed /etc and /var from the image. Never follows symlinks and never
//! leaves the source filesystem.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs, io,
    os::fd::AsRawFd,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, fchown, lchown, symlink},
    path::{Path, PathBuf},
};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mknod, utimensat};
use nix::sys::time::TimeSpec;
use xattr::FileExt;

#[derive(Debug, thiserror::Error)]
#[error("cannot copy {path}: {source}")]
pub struct CopyError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError { path: path.to_owned(), source }
}

/// Copies the contents of `src` into the existing directory `dst` (which should be
/// empty but for directories it keeps, such as `lost+found`).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<u64, CopyError> {
    copy_tree_except(src, dst, &[])
}

/// As [`copy_tree`], but the directories in `except` (paths below `src`) are
/// made empty, with their owner, mode and times, and not descended into.
pub fn copy_tree_except(src: &Path, dst: &Path, except: &[PathBuf]) -> Result<u64, CopyError> {
    let dev = fs::symlink_metadata(src).map_err(err(src))?.dev();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut count = 0;
    copy_dir(src, dst, &Walk { dev, except }, &mut links, &mut count)?;
    copy_meta(src, dst, &fs::symlink_metadata(src).map_err(err(src))?)?;
    Ok(count)
}

/// What bounds a copy: its source filesystem, and the directories left empty.
struct Walk<'a> {
    dev: u64,
    except: &'a [PathBuf],
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    walk: &Walk,
    links: &mut HashMap<(u64, u64), PathBuf>,
    count: &mut u64,
) -> Result<(), CopyError> {
    let mut entries: Vec<_> = fs::read_dir(src).map_err(err(src))?.collect::<Result<_, _>>().map_err(err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dst.join(e.file_name());
        let meta = e.metadata().map_err(err(&from))?; // lstat, relative to the directory
        let ft = meta.file_type();
        *count += 1;
        if !ft.is_dir() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to).map_err(err(&to))?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        if ft.is_dir() {
            // A directory the target keeps (lost+found) is merged into.
            if !to.is_dir() {
                fs::create_dir(&to).map_err(err(&to))?;
            }
            // A mount point inside the tree is copied as an empty directory.
            if meta.dev() == walk.dev && !walk.except.contains(&from) {
                copy_dir(&from, &to, walk, links, count)?;
            }
        } else if ft.is_symlink() {
            symlink(fs::read_link(&from).map_err(err(&from))?, &to).map_err(err(&to))?;
        } else if ft.is_file() {
            copy_file(&from, &to, &meta)?;
            continue; // its metadata went through its descriptors
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
            mknod(&to, kind, Mode::from_bits_truncate(meta.mode() & 0o7777), meta.rdev())
                .map_err(|e| CopyError { path: to.clone(), source: e.into() })?;
        }
        copy_meta(&from, &to, &meta)?;
    }
    Ok(())
}

/// A regular file's bytes and then, as [`copy_meta`] does, its metadata, but
/// through the two open descriptors: no path is looked up again (a repair
/// copies a whole root, and early boot fills /etc and /var this way).
fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
    let mut src = fs::File::open(from).map_err(err(from))?;
    // Never through a link already at `to` (a directory merged into).
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)
        .map_err(err(to))?;
    io::copy(&mut src, &mut dst).map_err(err(from))?;
    fchown(&dst, Some(meta.uid()), Some(meta.gid())).map_err(err(to))?;
    copy_xattrs(src.list_xattr(), |n| src.get_xattr(n), |n, v| dst.set_xattr(n, v)).map_err(err(to))?;
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err(to))?;
    futimens(
        dst.as_raw_fd(),
        &TimeSpec::new(meta.atime(), meta.atime_nsec()),
        &TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    )
    .map_err(|e| CopyError { path: to.to_owned(), source: e.into() })
}

/// Sets on the copy every extended attribute the source lists and still has.
fn copy_xattrs(
    names: io::Result<xattr::XAttrs>,
    get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
    set: impl Fn(&OsStr, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for name in names.into_iter().flatten() {
        if let Ok(Some(value)) = get(&name) {
            set(&name, &value)?;
        }
    }
    Ok(())
}

/// Owner, extended attributes, mode (after chown, which clears set-id bits), times.
fn copy_meta(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
    lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(err(to))?;
    copy_xattrs(xattr::list(from), |n| xattr::get(from, n), |n, v| xattr::set(to, n, v)).map_err(err(to))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err(to))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, to, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| CopyError { path: to.to_owned(), source: e.into() })
}

/// Removes everything inside `dir` except the names in `keep`.
pub fn clear_dir(dir: &Path, keep: &[&str]) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if keep.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn keeps_links_nodes_modes_owners_times_and_xattrs() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        fs::create_dir_all(src.join("etc/sub")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("etc/shadow"), "root:*:").unwrap();
        fs::set_permissions(src.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        lchown(src.join("etc/shadow"), Some(0), Some(42)).unwrap();
        fs::write(src.join("bin"), "x").unwrap();
        fs::set_permissions(src.join("bin"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(src.join("bin"), src.join("etc/sub/bin-link")).unwrap();
        symlink("../bin", src.join("etc/link")).unwrap();
        mknod(&src.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3))
            .unwrap();
        xattr::set(src.join("bin"), "user.gse", b"yes").unwrap();
        let t = TimeSpec::new(1_000_000, 0);
        utimensat(None, &src.join("etc/shadow"), &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
        // Directories: a sticky world-writable one with an owner, times set
        // after their contents; a symlink's own owner; the top's mode.
        fs::create_dir(src.join("tmp")).unwrap();
        fs::write(src.join("tmp/x"), "").unwrap();
        lchown(src.join("tmp"), Some(7), Some(8)).unwrap();
        fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        let dt = TimeSpec::new(2_000_000, 0);
        utimensat(None, &src.join("tmp"), &dt, &dt, UtimensatFlags::NoFollowSymlink).unwrap();
        lchown(src.join("etc/link"), Some(5), Some(6)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();
        // A directory the target already has is merged into.
        fs::create_dir(src.join("lost+found")).unwrap();
        fs::write(src.join("lost+found/found"), "f").unwrap();
        fs::create_dir(dst.join("lost+found")).unwrap();

        assert_eq!(copy_tree(&src, &dst).unwrap(), 11);

        let m = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!(m("etc/shadow").mode() & 0o7777, 0o640);
        assert_eq!(m("etc/shadow").gid(), 42);
        assert_eq!(m("etc/shadow").mtime(), 1_000_000);
        assert_eq!(m("bin").mode() & 0o7777, 0o4755);
        assert_eq!(m("bin").ino(), m("etc/sub/bin-link").ino(), "hard link kept");
        assert_eq!(fs::read_link(dst.join("etc/link")).unwrap(), Path::new("../bin"));
        assert!(m("null").file_type().is_char_device());
        assert_eq!(m("null").rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(xattr::get(dst.join("bin"), "user.gse").unwrap().as_deref(), Some(&b"yes"[..]));
        assert_eq!((m("tmp").mode() & 0o7777, m("tmp").uid(), m("tmp").gid()), (0o1777, 7, 8));
        assert_eq!(m("tmp").mtime(), 2_000_000, "a directory's time is set after its contents");
        assert_eq!((m("etc/link").uid(), m("etc/link").gid()), (5, 6));
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o7777, 0o751);
        assert_eq!(fs::read_to_string(dst.join("lost+found/found")).unwrap(), "f");

        // A link already in a directory merged into is not written through.
        let (src2, dst2) = (d.path().join("src2"), d.path().join("dst2"));
        fs::create_dir_all(src2.join("lost+found")).unwrap();
        fs::write(src2.join("lost+found/found"), "f").unwrap();
        fs::create_dir_all(dst2.join("lost+found")).unwrap();
        fs::write(d.path().join("outside"), "kept").unwrap();
        symlink(d.path().join("outside"), dst2.join("lost+found/found")).unwrap();
        let e = copy_tree(&src2, &dst2).unwrap_err();
        assert_eq!(e.path, dst2.join("lost+found/found"), "{e}");
        assert_eq!(fs::read_to_string(d.path().join("outside")).unwrap(), "kept");

        clear_dir(&dst, &["etc"]).unwrap();
        let left: Vec<_> = fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["etc"]);
    }
}
