//! Access to the two root slots: mounting them, reading and writing their flags,
//! and repairing one from the other (btrfs snapshot or file-level copy).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::mount::MsFlags;

use super::{
    BootError,
    copy::{clear_dir, copy_tree},
    flag::{self, BootFlag, FlagKey, FlagState},
    mount::{Mounts, resolve_device, split_options},
    subvol,
};
use crate::{
    config::{Settings, SlotConf},
    paths::Paths,
};

pub struct Slots<'a> {
    pub paths: &'a Paths,
    pub settings: &'a Settings,
    /// How long to wait for a slot's device to appear.
    pub device_wait: Duration,
}

impl Slots<'_> {
    fn conf(&self, slot: &str) -> Result<&SlotConf, BootError> {
        self.settings
            .boot
            .slots
            .get(slot)
            .ok_or_else(|| BootError::Config(format!("boot.conf defines no slot '{slot}'")))
    }

    /// A private place to mount things during early boot.
    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.paths.slot_mounts().join(name)
    }

    /// Mounts slot `slot` at `target` (read-only unless `rw`) on `mounts`.
    pub fn mount(&self, mounts: &mut Mounts, slot: &str, target: &Path, rw: bool) -> Result<(), BootError> {
        let conf = self.conf(slot)?;
        let dev = resolve_device(&conf.device, self.device_wait)?;
        let mut opts: Vec<String> = Vec::new();
        if conf.fstype == "btrfs" {
            opts.extend(self.settings.btrfs.mount_options.iter().cloned());
            if let Some(sv) = &conf.subvol {
                opts.push(format!("subvol={sv}"));
            }
        }
        let (mut flags, data) = split_options(&opts);
        if !rw {
            flags |= MsFlags::MS_RDONLY;
        }
        let step = format!("slot {slot}");
        mounts.mount(&step, &dev.to_string_lossy(), target, &conf.fstype, flags, &data)?;
        Ok(())
    }

    /// Runs `f` with the slot mounted at a work directory, then unmounts it.
    pub fn with_mounted<T>(
        &self,
        slot: &str,
        rw: bool,
        f: impl FnOnce(&Path) -> Result<T, BootError>,
    ) -> Result<T, BootError> {
        let at = self.work_dir(&format!("slot-{slot}"));
        let mut mounts = Mounts::new();
        self.mount(&mut mounts, slot, &at, rw)?;
        // What was written is on the disk even if the unmount has to detach;
        // a write that did not reach it is a failure, not a success.
        let flush = || if rw { crate::fsutil::syncfs(&at) } else { Ok(()) };
        let out =
            f(&at).and_then(|v| flush().map(|()| v).map_err(|e| BootError::Io(format!("flushing slot {slot}"), e)));
        mounts.unwind();
        out
    }

    /// The flag state of every slot; a slot that cannot be mounted is unreadable.
    pub fn read_flags(&self, key: &FlagKey) -> BTreeMap<String, FlagState> {
        self.settings
            .boot
            .slots
            .keys()
            .map(|s| {
                let state = self
                    .with_mounted(s, false, |root| Ok(flag::read(root, s, key)))
                    .unwrap_or_else(|e| FlagState::Unreadable { why: e.to_string() });
                (s.clone(), state)
            })
            .collect()
    }

    pub fn write_flag(&self, slot: &str, f: &BootFlag, key: &FlagKey) -> Result<(), BootError> {
        self.with_mounted(slot, true, |root| {
            f.write(root, key).map_err(|e| BootError::Io(format!("cannot write the flag of slot {slot}"), e))
        })
    }

    /// Makes `target` a copy of `source` and gives it `fresh` as its flag. The
    /// source is only ever read, so a power cut leaves at least the source usable;
    /// the target's flag is gone until the very end, so an unfinished copy is never
    /// trusted.
    pub fn repair(&self, target: &str, source: &str, fresh: &BootFlag, key: &FlagKey) -> Result<(), BootError> {
        let (t, s) = (self.conf(target)?, self.conf(source)?);
        if t.fstype == "btrfs"
            && s.fstype == "btrfs"
            && t.device == s.device
            && t.subvol.is_some()
            && s.subvol.is_some()
        {
            return self.repair_btrfs(target, t, s, fresh, key);
        }
        let src_at = self.work_dir(&format!("slot-{source}"));
        let mut mounts = Mounts::new();
        self.mount(&mut mounts, source, &src_at, false)?;
        self.with_mounted(target, true, |dst| {
            let io = |what: &str| {
                let what = format!("repair of slot {target}: {what}");
                move |e| BootError::Io(what, e)
            };
            match std::fs::remove_file(flag::flag_path(dst)) {
                Ok(()) => crate::fsutil::syncfs(dst).map_err(io("flushing the removed flag"))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing the old flag")(e)),
            }
            clear_dir(dst, &["lost+found"]).map_err(io("emptying the slot"))?;
            copy_tree(&src_at, dst).map_err(|e| {
                BootError::Io(format!("repair of slot {target}: copying {}", e.path.display()), e.source)
            })?;
            fresh.write(dst, key).map_err(io("writing the fresh flag"))
        })
    }

    fn repair_btrfs(
        &self,
        target: &str,
        t: &SlotConf,
        s: &SlotConf,
        fresh: &BootFlag,
        key: &FlagKey,
    ) -> Result<(), BootError> {
        let top = self.work_dir("btrfs-top");
        let mut mounts = Mounts::new();
        let dev = resolve_device(&t.device, self.device_wait)?;
        mounts.mount("btrfs top level", &dev.to_string_lossy(), &top, "btrfs", MsFlags::empty(), "subvolid=5")?;
        let (tsv, ssv) = (t.subvol.as_deref().unwrap_or_default(), s.subvol.as_deref().unwrap_or_default());
        let (tpath, spath) = (top.join(tsv.trim_start_matches('/')), top.join(ssv.trim_start_matches('/')));
        let keep = self.settings.btrfs.keep_snapshots;
        if tpath.exists() {
            if keep > 0 {
                let dir = top.join(&self.settings.btrfs.snapshots_dir);
                std::fs::create_dir_all(&dir).map_err(|e| BootError::Io(format!("creating {}", dir.display()), e))?;
                let kept = dir.join(format!("{target}-{}", crate::journal::now()));
                std::fs::rename(&tpath, &kept)
                    .map_err(|e| BootError::Io(format!("keeping the broken slot {target}"), e))?;
                prune_snapshots(&dir, target, keep)?;
            } else {
                subvol::delete(&tpath)
                    .map_err(|e| BootError::Io(format!("deleting the broken subvolume {}", tpath.display()), e))?;
            }
        }
        subvol::snapshot(&spath, &tpath)
            .map_err(|e| BootError::Io(format!("snapshotting {} to {}", spath.display(), tpath.display()), e))?;
        fresh.write(&tpath, key).map_err(|e| BootError::Io(format!("writing the fresh flag of slot {target}"), e))?;
        nix::unistd::sync();
        Ok(())
    }
}

fn prune_snapshots(dir: &Path, slot: &str, keep: u32) -> Result<(), BootError> {
    let mut old: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    old.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{slot}-"))));
    old.sort();
    while old.len() > keep as usize {
        let p = old.remove(0);
        subvol::delete(&p).map_err(|e| BootError::Io(format!("deleting the old snapshot {}", p.display()), e))?;
    }
    Ok(())
}
