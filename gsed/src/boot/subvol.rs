//! Btrfs subvolume snapshot and delete through the kernel's ioctls, as
//! `btrfs subvolume snapshot|delete` do: early boot repairs a btrfs slot
//! without btrfs-progs (and its five libraries) in the initramfs.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::Path,
};

const NAME_MAX: usize = 4039;

/// `struct btrfs_ioctl_vol_args_v2` (linux/btrfs.h): 4096 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args`: 4096 bytes.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);

/// The parent directory (opened) and the last component of `path`, checked to
/// fit the kernel's name field.
fn parent_and_name(path: &Path, max: usize) -> io::Result<(File, &OsStr)> {
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?;
    if name.len() > max || name.as_bytes().contains(&0) {
        return Err(io::Error::other(format!("{}: the name is not a valid subvolume name", path.display())));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((File::open(parent)?, name))
}

/// A writable snapshot of the subvolume `source` at `target` (which must not exist).
pub fn snapshot(source: &Path, target: &Path) -> io::Result<()> {
    let src = File::open(source)?;
    let (dir, name) = parent_and_name(target, NAME_MAX)?;
    let mut args =
        VolArgsV2 { fd: i64::from(src.as_raw_fd()), transid: 0, flags: 0, unused: [0; 4], name: [0; NAME_MAX + 1] };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory on the btrfs filesystem and `args` is a
    // fully initialised `btrfs_ioctl_vol_args_v2` (layout and size checked by a
    // test) that outlives the call; the kernel only reads it.
    unsafe { snap_create_v2(dir.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Deletes the subvolume at `path`, contents and all.
pub fn delete(path: &Path) -> io::Result<()> {
    let (dir, name) = parent_and_name(path, 4087)?;
    let mut args = VolArgs { fd: 0, name: [0; 4088] };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: as in `snapshot`: a valid directory fd and a fully initialised
    // `btrfs_ioctl_vol_args` that outlives the call.
    unsafe { snap_destroy(dir.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn argument_structs_match_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<super::VolArgs>(), 4096);
        assert_eq!(std::mem::offset_of!(super::VolArgsV2, name), 56);
    }
}
