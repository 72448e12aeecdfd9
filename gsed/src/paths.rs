//! Every file and directory GSE uses, under one root (DESIGN §3).
//!
//! Production uses `/`; tests and demos pass `--root DIR` so nothing outside a
//! temporary tree is touched. Device names are never prefixed.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::new("/")
    }
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when running on a real client (no `--root`): only then may gsed act on
    /// interfaces it was not told about by name (DESIGN §7).
    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// An absolute path from configuration or this table, placed under the root.
    /// `..` components are dropped so a configured path cannot leave the root.
    pub fn resolve(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in absolute.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    /// Defaults shipped inside the image (lowest layer of config.d).
    pub fn image_config(&self) -> PathBuf {
        self.resolve("/usr/share/gse/config.d")
    }

    /// config.d as last synced from the server; survives reboots.
    pub fn synced_config(&self) -> PathBuf {
        self.resolve("/user-data/persistent/config.d")
    }

    /// Health journal, attempt counters, server choice.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve("/user-data/persistent/gse")
    }

    pub fn health_journal(&self) -> PathBuf {
        self.state_dir().join("health.journal")
    }

    /// What this client accepted from its servers (MANIFEST serial, channel times).
    pub fn accepted(&self) -> PathBuf {
        self.state_dir().join("accepted.json")
    }

    /// The update's state and the administrator's last decision.
    pub fn update_record(&self) -> PathBuf {
        self.state_dir().join("update.json")
    }

    /// Who is logged in (`reboot = "window"` never reboots a machine in use).
    pub fn utmp(&self) -> PathBuf {
        self.resolve("/run/utmp")
    }

    /// What reboots the machine to start an installed version.
    pub fn reboot_command(&self) -> PathBuf {
        self.resolve("/sbin/reboot")
    }

    /// Verified image chunks, kept for the next update (DESIGN §11).
    pub fn chunk_cache(&self) -> PathBuf {
        self.state_dir().join("chunks")
    }

    /// The chunk index of the image installed into `slot` by an update.
    pub fn slot_index(&self, slot: &str) -> PathBuf {
        self.state_dir().join("images").join(format!("{slot}.json"))
    }

    /// Early boot's attempt counters and unfinished repair.
    pub fn boot_state(&self) -> PathBuf {
        self.state_dir().join("boot-state.json")
    }

    /// The decision early boot hands to the slot's own kernel (see `boot::kernel`).
    pub fn kexec_handoff(&self) -> PathBuf {
        self.state_dir().join("kexec-handoff.json")
    }

    /// The running kernel's release. The kernel's own file, so not prefixed on a
    /// real client; under `--root` a plain file there stands in for it.
    pub fn kernel_release(&self) -> PathBuf {
        self.kernel_file("/proc/sys/kernel/osrelease")
    }

    /// The running kernel's command line (prefixed under `--root`, as above).
    pub fn kernel_cmdline(&self) -> PathBuf {
        self.kernel_file("/proc/cmdline")
    }

    fn kernel_file(&self, path: &str) -> PathBuf {
        if self.is_real_root() { PathBuf::from(path) } else { self.resolve(path) }
    }

    /// The machine key that signs the boot flags, on the boot partition.
    pub fn flag_key(&self) -> PathBuf {
        self.resolve("/boot/gse/flag.key")
    }

    /// On the boot partition while a blank machine installs itself (DESIGN
    /// §12): a disk with it is an install to start again, not a system.
    pub fn install_unfinished(&self) -> PathBuf {
        self.resolve("/boot/gse/install-unfinished")
    }

    /// Early boot's copy of the machine key for the running gsed (which installs
    /// updates and signs their flags) when the boot partition is not mounted.
    pub fn run_flag_key(&self) -> PathBuf {
        self.resolve("/run/gse/flag.key")
    }

    /// The copy of config.d on the boot partition, for early boot.
    pub fn boot_config(&self) -> PathBuf {
        self.resolve("/boot/gse/config.d")
    }

    /// The peer-to-peer socket of `gsed --early`.
    pub fn early_socket(&self) -> PathBuf {
        self.resolve("/run/gse/early.sock")
    }

    /// What early boot decided, for the running system.
    pub fn boot_json(&self) -> PathBuf {
        self.resolve("/run/gse/boot.json")
    }

    /// Early boot's console output, kept by the initramfs `/init` (in /run, which
    /// moves into the running system).
    pub fn early_log(&self) -> PathBuf {
        self.resolve("/run/gse/early.log")
    }

    /// The archive of every boot's logs, one `.tar.zst` a boot.
    pub fn logs_dir(&self) -> PathBuf {
        self.resolve("/user-data/persistent/logs")
    }

    /// Where the running boot's logs are copied as they grow, one directory a boot.
    pub fn log_spool(&self) -> PathBuf {
        self.logs_dir().join("spool")
    }

    /// The kernel's log. A device, so not prefixed on a real client; under `--root`
    /// a plain file there stands in for it (tests), and the host's is never read.
    pub fn kmsg(&self) -> PathBuf {
        if self.is_real_root() { PathBuf::from("/dev/kmsg") } else { self.resolve("/dev/kmsg") }
    }

    /// The syslog socket, if a syslog daemon runs; under `--root`, the one there.
    pub fn syslog_socket(&self) -> PathBuf {
        self.resolve("/dev/log")
    }

    /// The persistent area: user data, kept across reboots and images.
    pub fn user_data(&self) -> PathBuf {
        self.resolve("/user-data")
    }

    /// GSE's part of the persistent area (state, logs, config.d, overlays).
    pub fn persistent(&self) -> PathBuf {
        self.resolve("/user-data/persistent")
    }

    /// Per-directory persistent copies (`mounts.conf` `local`).
    pub fn persistent_local(&self) -> PathBuf {
        self.persistent().join("local")
    }

    /// Upper layers of persistent overlays (`mounts.conf` `overlay`, upper = persistent).
    pub fn persistent_overlays(&self) -> PathBuf {
        self.persistent().join("overlays")
    }

    /// Where early boot mounts slots it reads or repairs (not the booted one).
    pub fn slot_mounts(&self) -> PathBuf {
        self.resolve("/run/gse/mnt")
    }

    /// Early boot's staging area for the layout's tmpfs mounts.
    pub fn layout_stage(&self) -> PathBuf {
        self.resolve("/run/gse/stage")
    }

    /// The resolver configuration gsed writes from DHCP or static DNS.
    pub fn resolv_conf(&self) -> PathBuf {
        self.resolve("/etc/resolv.conf")
    }

    /// The running image's release file (`VERSION=`).
    pub fn release_file(&self) -> PathBuf {
        self.resolve("/etc/gse-release")
    }

    /// OpenRC's default runlevel and its run-time state, and systemd's marker.
    pub fn openrc_default_runlevel(&self) -> PathBuf {
        self.resolve("/etc/runlevels/default")
    }

    pub fn openrc_run(&self) -> PathBuf {
        self.resolve("/run/openrc")
    }

    pub fn systemd_run(&self) -> PathBuf {
        self.resolve("/run/systemd/system")
    }
}

/// The kernel's id of this boot (never under `--root`: it is the kernel's).
pub const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Reads [`KERNEL_BOOT_ID`].
pub fn kernel_boot_id() -> std::io::Result<String> {
    std::fs::read_to_string(KERNEL_BOOT_ID)
        .map(|s| s.trim().to_owned())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read {KERNEL_BOOT_ID}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_under_root() {
        let p = Paths::new("/tmp/x");
        assert_eq!(p.resolve("/etc/gse"), PathBuf::from("/tmp/x/etc/gse"));
        assert_eq!(p.resolve("/../../etc/shadow"), PathBuf::from("/tmp/x/etc/shadow"));
        assert_eq!(Paths::default().health_journal(), PathBuf::from("/user-data/persistent/gse/health.journal"));
        assert!(Paths::default().is_real_root());
        assert!(!p.is_real_root());
    }
}
