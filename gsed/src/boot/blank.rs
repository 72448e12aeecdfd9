//! A machine with no GSE system on its disks (DESIGN §12), booted from the
//! installer (a USB stick or PXE with GSE's kernel and `--controller`
//! initramfs): either it installs itself — disk laid out by drives.conf, the
//! channel's image from the server into every slot, a boot loader — or it runs
//! diskless, the image unpacked into RAM under the same stateless layout.
//!
//! Both fetch through the update's download engine (verified chunks, several
//! servers, resumable), and both need a server: early boot has gone online
//! first (config.d synced into RAM, `gse.server=` honoured by the hook).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use gse_dbus::boot::{Action, BootRecord};
use nix::mount::MsFlags;
use tracing::{info, warn};

use super::{
    BootError, BootService, Online, copy, kernel,
    loader::{self, GRUB_DIR},
    mount::Mounts,
    provision::{self, Options},
    slots::Slots,
    state::BootState,
};
use crate::{
    image::{self, Cache},
    servers::ServersService,
};

/// What is found where fstab.conf puts the boot partition.
enum BootPartition {
    /// This machine's own install, cut short.
    Unfinished,
    /// A GSE system on that device.
    System(PathBuf),
}

/// The slot name a diskless boot reports: the image lives in RAM.
pub const RAM_SLOT: &str = "ram";

impl BootService {
    /// The servers early boot picked; an error that says why when none answered.
    fn picked(&self, online: &Online) -> Result<(std::sync::Arc<ServersService>, Vec<String>), BootError> {
        let servers = self.servers.lock().ok().and_then(|s| s.clone());
        match servers.map(|s| (s.urls_current_first(), s)) {
            Some((urls, s)) if !s.snapshot().current.is_empty() => Ok((s, urls)),
            _ => Err(BootError::Tool(format!(
                "no server to install from (network: {}; {})",
                online.network,
                online.sync.as_deref().unwrap_or("no server is configured: boot with gse.server=URL")
            ))),
        }
    }

    /// Installs this blank machine: partitions and filesystems from
    /// drives.conf (a disk that holds data only with `wipe = true`, `force`
    /// or this machine's own unfinished install), what early boot synced into RAM moved onto the new user-data
    /// area, the channel's version into every slot (the primary written as
    /// its chunks arrive, the others from the cache), and the boot loader.
    /// The mark provision leaves on the boot partition stays until the loader
    /// is written, so a power cut means "install again", never "boot this".
    /// Returns one line for the console.
    pub fn install(&self, online: &Online, force: bool) -> Result<String, BootError> {
        let (servers, urls) = self.picked(online)?;
        let cfg = self.config_now();
        let settings = &cfg.loaded.settings;
        // This machine's own install that did not finish (a power cut, a
        // server lost half way) is laid out again; any other boot partition
        // here (a slow disk the hook gave up on) is a system, never a blank disk.
        let force = match self.boot_partition(settings) {
            Some(BootPartition::Unfinished) => {
                info!("install: the disk holds an install of this machine that did not finish: laying it out again");
                true
            }
            Some(BootPartition::System(dev)) if !force => {
                return Err(BootError::Tool(format!(
                    "{} is here after all: this machine has a GSE system; not installing over it",
                    dev.display()
                )));
            }
            _ => force,
        };
        let mut say = |line: String| info!("install: {line}");
        // What early boot wrote in RAM (config.d, the accepted manifest) goes onto the disk.
        let ram = self.paths.resolve("/run/gse/install-persistent");
        let _ = fs::remove_dir_all(&ram);
        fs::create_dir_all(&ram).map_err(|e| BootError::Io(format!("creating {}", ram.display()), e))?;
        if self.paths.persistent().is_dir() {
            copy::copy_tree(&self.paths.persistent(), &ram).map_err(|e| BootError::Tool(e.to_string()))?;
        }
        let mut mounts = Mounts::new();
        let parts =
            provision::provision(&self.paths, settings, &Options { format: true, force }, &mut mounts, &mut say)?;
        let marker = self.paths.install_unfinished();
        copy::copy_tree(&ram, &self.paths.persistent()).map_err(|e| BootError::Tool(e.to_string()))?;
        let _ = fs::remove_dir_all(&ram);

        let key = super::FlagKey::load(&self.paths.flag_key())
            .map_err(|e| BootError::Io(format!("reading {}", self.paths.flag_key().display()), e))?;
        let update = &servers.update;
        let (ch, index) = update.latest(&urls).map_err(|e| BootError::Tool(format!("the image: {e}")))?;
        say(format!("version {} from {} ({} chunks)", ch.version, urls.join(", "), index.chunks.len()));
        let slots = Slots { paths: &self.paths, settings, device_wait: Duration::from_secs(10) };
        let primary = settings.boot.primary.clone();
        let cache = Cache::new(self.paths.chunk_cache());
        let mut order: Vec<&String> = settings.boot.slots.keys().collect();
        order.sort_by_key(|s| **s != primary);
        for (i, slot) in order.iter().enumerate() {
            let version = slots.with_mounted(slot, true, |dir| {
                let r = if i == 0 {
                    update.install_fresh(dir, slot, &index, &urls, &key)
                } else {
                    image::install::install(dir, slot, &index, &|c| cache.read(c), &key, &|_, _| {})
                };
                r.map_err(|e| BootError::Tool(format!("slot {slot}: {e}")))
            })?;
            image::record_slot(&self.paths, slot, &index).map_err(|e| BootError::Tool(e.to_string()))?;
            say(format!("slot {slot}: version {version} installed with a fresh flag"));
        }
        BootState::default()
            .save(&self.paths.boot_state())
            .map_err(|e| BootError::Io(format!("saving {}", self.paths.boot_state().display()), e))?;

        let loader = slots.with_mounted(&primary, false, |dir| self.install_loader(settings, dir, &parts))?;
        say(loader.clone());
        fs::remove_file(&marker).map_err(|e| BootError::Io(format!("removing {}", marker.display()), e))?;
        nix::unistd::sync();
        mounts.unwind();
        Ok(format!("version {} installed in slots {}; {loader}", ch.version, join(&order)))
    }

    /// The boot partition fstab.conf names, if it is here: this machine's own
    /// unfinished install (the mark provision leaves) or a system.
    fn boot_partition(&self, settings: &crate::config::Settings) -> Option<BootPartition> {
        let m = settings.fstab.mount.get("/boot")?;
        let dev = super::mount::resolve_device(&m.device, Duration::ZERO).ok()?;
        let mark = self.paths.install_unfinished();
        let mark = mark.strip_prefix(self.paths.resolve("/boot")).ok()?;
        let at = self.paths.resolve("/run/gse/install-check");
        let mut mounts = Mounts::new();
        let step = "looking for an unfinished install";
        let mounted = mounts.mount(step, &dev.to_string_lossy(), &at, &m.fstype, MsFlags::MS_RDONLY, "");
        let unfinished = mounted.is_ok() && at.join(mark).exists();
        mounts.unwind();
        Some(if unfinished { BootPartition::Unfinished } else { BootPartition::System(dev) })
    }

    /// The kernel and GSE initramfs of the slot mounted at `slot_dir` onto the
    /// boot partition, and GRUB when drives.conf says so.
    fn install_loader(
        &self,
        settings: &crate::config::Settings,
        slot_dir: &Path,
        parts: &[PathBuf],
    ) -> Result<String, BootError> {
        let k = kernel::find(slot_dir, true)
            .map_err(|e| BootError::Tool(e.to_string()))?
            .ok_or_else(|| BootError::Tool("the image carries no kernel for the boot loader to start".into()))?;
        let cmdline = fs::read_to_string(self.paths.kernel_cmdline()).unwrap_or_default();
        let cmdline = loader::installed_cmdline(&cmdline);
        let boot = self.paths.resolve("/boot");
        let lerr = |e: loader::LoaderError| BootError::Tool(e.to_string());
        loader::write_boot_files(&boot, &slot_dir.join(k.vmlinuz()), &slot_dir.join(k.initramfs()), &cmdline)
            .map_err(lerr)?;
        let drives = &settings.drives;
        if drives.loader != "grub" {
            return Ok(format!(
                "kernel {} on the boot partition; loader = \"none\": no boot loader written",
                k.release
            ));
        }
        let grub = self.paths.resolve(GRUB_DIR);
        let read = |f: &str| {
            fs::read(grub.join(f)).map_err(|e| {
                let why = "this installer carries no GRUB (gsectl initramfs build --controller)";
                BootError::Io(format!("{}: {why}", grub.join(f).display()), e)
            })
        };
        let at = loader::embed_area(drives, parts).map_err(lerr)?;
        loader::write_grub(Path::new(&drives.device), &read("boot.img")?, &read("core.img")?, at).map_err(lerr)?;
        Ok(format!("GRUB on {} starts kernel {} ({cmdline})", drives.device, k.release))
    }

    /// Diskless (`gse.install=diskless`): the channel's version unpacked into
    /// RAM at `sysroot`, then the same stateless layout as a disk slot. The
    /// user-data area is RAM too (the hook mounts it), so nothing survives a
    /// power-off but what the server holds. The boot runs the installer's
    /// kernel: a kernel change would lose the RAM.
    pub fn prepare_diskless(&self, sysroot: &Path, online: Online) -> Result<BootRecord, BootError> {
        let (servers, urls) = self.picked(&online)?;
        let cfg = self.config_now();
        let settings = &cfg.loaded.settings;
        let key_path = self.paths.flag_key();
        let key = match super::FlagKey::load(&key_path) {
            Ok(k) => k,
            Err(_) => super::FlagKey::create(&key_path)
                .map_err(|e| BootError::Io(format!("creating {}", key_path.display()), e))?,
        };
        self.hand_key_to_system();
        let update = &servers.update;
        let (ch, index) = update.latest(&urls).map_err(|e| BootError::Tool(format!("the image: {e}")))?;
        let mut mounts = Mounts::new();
        mounts.mount("diskless root", "tmpfs", sysroot, "tmpfs", MsFlags::empty(), "mode=0755")?;
        info!(version = %ch.version, "diskless: unpacking the image into RAM");
        let version = update
            .install_fresh(sysroot, RAM_SLOT, &index, &urls, &key)
            .map_err(|e| BootError::Tool(format!("diskless: {e}")))?;
        // The chunks are in the tree now; RAM is better spent on the system.
        let _ = fs::remove_dir_all(self.paths.chunk_cache());
        let running = kernel::running_release(&self.paths);
        let mut record = BootRecord {
            slot: RAM_SLOT.into(),
            action: Action::Diskless,
            reason: format!("diskless: version {version} runs from RAM; nothing on this machine's disks is used"),
            flag: "valid".into(),
            image_version: version,
            network: online.network,
            sync: online.sync,
            time: crate::journal::now(),
            kernel: running.clone(),
            ..BootRecord::default()
        };
        if let Ok(Some(k)) =
            kernel::find(sysroot, false).inspect_err(|e| warn!(error = %e, "diskless: the image's kernel"))
            && k.release != running
        {
            record
                .warnings
                .push(format!("diskless: runs the installer's kernel {running}, not the image's {}", k.release));
        }
        // The fstab of a disk client would mount partitions this machine does
        // not have (network filesystems stay).
        let mut settings = settings.clone();
        let on_disk =
            |d: &str| ["LABEL=", "UUID=", "PARTLABEL=", "PARTUUID=", "/dev/"].iter().any(|p| d.starts_with(p));
        settings.fstab.mount.retain(|_, m| !on_disk(&m.device));
        self.finish(mounts, &settings, sysroot, record)
    }
}

fn join(slots: &[&String]) -> String {
    slots.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}
