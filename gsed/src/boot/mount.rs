//! Mounting with a memory: every mount made through [`Mounts`] is undone, in
//! reverse order, unless the caller keeps them — so a failure half way never
//! leaves the new root half-mounted. Errors say which step, what and where.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{step}: cannot mount {what} on {target}: {errno}")]
    Mount { step: String, what: String, target: PathBuf, errno: nix::Error },
    #[error("{step}: {target}: {source}")]
    Io { step: String, target: PathBuf, source: std::io::Error },
    #[error("cannot find device {spec}: {why}")]
    NoDevice { spec: String, why: String },
}

#[derive(Default)]
pub struct Mounts {
    stack: Vec<PathBuf>,
    kept: bool,
}

impl Mounts {
    pub fn new() -> Mounts {
        Mounts::default()
    }

    /// `mount -t fstype -o data source target` with `flags`.
    pub fn mount(
        &mut self,
        step: &str,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), MountError> {
        std::fs::create_dir_all(target).map_err(|source| MountError::Io {
            step: step.into(),
            target: target.to_owned(),
            source,
        })?;
        let data = (!data.is_empty()).then_some(data);
        mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| MountError::Mount {
            step: step.into(),
            what: format!("{source} ({fstype}{})", data.map(|d| format!(", {d}")).unwrap_or_default()),
            target: target.to_owned(),
            errno,
        })?;
        self.stack.push(target.to_owned());
        Ok(())
    }

    pub fn bind(&mut self, step: &str, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
        let src = source.to_string_lossy().into_owned();
        self.mount(step, &src, target, "none", MsFlags::MS_BIND, "")?;
        if read_only {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|errno| MountError::Mount {
                step: step.into(),
                what: format!("{src} (read-only bind)"),
                target: target.to_owned(),
                errno,
            })?;
        }
        Ok(())
    }

    /// Gives the mount at `target` private propagation: nothing mounted below
    /// it is shared with other mounts, so mounts below it can be moved.
    pub fn make_private(&mut self, step: &str, target: &Path) -> Result<(), MountError> {
        mount(None::<&str>, target, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(|errno| {
            MountError::Mount {
                step: step.into(),
                what: "private propagation".into(),
                target: target.to_owned(),
                errno,
            }
        })
    }

    /// Moves the mount at `from` (made through this stack) to `to`.
    pub fn move_mount(&mut self, step: &str, from: &Path, to: &Path) -> Result<(), MountError> {
        mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|errno| MountError::Mount {
            step: step.into(),
            what: from.display().to_string(),
            target: to.to_owned(),
            errno,
        })?;
        if let Some(entry) = self.stack.iter_mut().rev().find(|p| *p == from) {
            *entry = to.to_owned();
        }
        Ok(())
    }

    /// Leaves everything mounted (the boot goes on with it).
    pub fn keep(mut self) -> Vec<PathBuf> {
        self.kept = true;
        std::mem::take(&mut self.stack)
    }

    /// Unmounts everything in reverse order; a busy mount is detached.
    pub fn unwind(&mut self) {
        while let Some(target) = self.stack.pop() {
            if umount2(&target, MntFlags::empty()).is_err() {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if !self.kept {
            self.unwind();
        }
    }
}

/// Splits mount options as written in config (`noatime`, `nosuid`, `size=1G`) into
/// the kernel's flags and the filesystem's data string.
pub fn split_options<S: AsRef<str>>(options: &[S]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let o = o.as_ref();
        match o {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Resolves `LABEL=`, `UUID=`, `PARTLABEL=` or a path to a device node, waiting
/// up to `wait` for it to appear (devices show up a moment after their driver).
pub fn resolve_device(spec: &str, wait: Duration) -> Result<PathBuf, MountError> {
    let start = Instant::now();
    loop {
        match try_resolve(spec) {
            Some(p) if p.exists() => return Ok(p),
            _ if start.elapsed() >= wait => {
                return Err(MountError::NoDevice { spec: spec.into(), why: format!("not present after {wait:?}") });
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn try_resolve(spec: &str) -> Option<PathBuf> {
    if spec.starts_with('/') {
        return Some(PathBuf::from(spec));
    }
    let (kind, value) = spec.split_once('=')?;
    let by = match kind {
        "LABEL" => "by-label",
        "UUID" => "by-uuid",
        "PARTLABEL" => "by-partlabel",
        _ => return None,
    };
    if let Some(link) = udev_name(value).map(|n| Path::new("/dev/disk").join(by).join(n))
        && link.exists()
    {
        return Some(link);
    }
    // No udev (early boot, containers): the superblocks, read here; for a
    // filesystem not read here, blkid or busybox's findfs.
    if let Some(dev) = super::devices::find(spec) {
        return Some(dev);
    }
    for (tool, args) in [("blkid", vec!["-l", "-o", "device", "-t", spec]), ("findfs", vec![spec])] {
        if let Ok(out) = Command::new(tool).args(&args).output()
            && out.status.success()
        {
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dev.is_empty() {
                return Some(PathBuf::from(dev));
            }
        }
    }
    None
}

/// `value` as udev names its link in /dev/disk/by-*: bytes other than
/// letters, digits, `#+-.:=@_` and UTF-8 beyond ASCII as `\xNN` (a label may
/// hold a space or a `/`). None for `.` and `..`, which name no link but a
/// directory.
fn udev_name(value: &str) -> Option<String> {
    if value == "." || value == ".." {
        return None;
    }
    Some(
        value
            .chars()
            .map(|c| match c {
                c if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() => c.to_string(),
                c => format!("\\x{:02x}", c as u32),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_udev_links_them() {
        assert_eq!(udev_name("gse-a").as_deref(), Some("gse-a"));
        assert_eq!(udev_name("lab 1/root").as_deref(), Some("lab\\x201\\x2froot"));
        assert_eq!(udev_name("../../null"), Some("..\\x2f..\\x2fnull".into()), "no way out of by-label");
        assert_eq!(udev_name("Bücher").as_deref(), Some("Bücher"));
        assert_eq!(udev_name(".."), None);
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = split_options(&["nosuid", "nodev", "size=25%", "mode=1777", "defaults"]);
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(d, "size=25%,mode=1777");
    }
}
