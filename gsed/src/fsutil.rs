//! Crash-safe file writes for everything GSE writes into persistent trees.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Replaces `path` with `data` so that a reader, or the next boot after a power
/// cut, sees either the old or the new content, never a mix: write a temporary file
/// in the same directory, sync it, rename it over, then sync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
