//! `gsectl provision [--format]`: prepares a client's disk for GSE — partitions
//! and filesystems from drives.conf (with `--format`), the user-data tree, the
//! machine key that signs boot flags, and a first flag in each slot. A disk it
//! formats carries the "install unfinished" mark until an install of every
//! slot removes it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use nix::mount::MsFlags;

use super::{
    BootError,
    flag::{self, BootFlag, FlagKey},
    mount::Mounts,
    slots::Slots,
};
use crate::{
    config::{DrivesConf, Partition, Settings, drives::BIOS_BOOT, values::PartSize},
    paths::Paths,
};

pub struct Options {
    /// Partition and format the disk of drives.conf first.
    pub format: bool,
    /// Overwrite a disk that holds data even when drives.conf says `wipe = false`.
    pub force: bool,
}

/// Progress goes to `say`, one line a step. With `format`, the new boot and
/// user-data filesystems stay mounted through `mounts` (where fstab.conf puts
/// them), and the partitions are returned in drives.conf's order.
pub fn provision(
    paths: &Paths,
    settings: &Settings,
    opts: &Options,
    mounts: &mut Mounts,
    say: &mut dyn FnMut(String),
) -> Result<Vec<PathBuf>, BootError> {
    let mut parts = Vec::new();
    if opts.format {
        parts = format_disk(&settings.drives, opts.force, say)?;
        // The new boot and user-data filesystems, where fstab.conf puts them.
        for at in ["/boot", "/user-data"] {
            if let Some(m) = settings.fstab.mount.get(at) {
                let dev =
                    partition_for(&settings.drives, &parts, &m.device).unwrap_or_else(|| PathBuf::from(&m.device));
                say(format!("mounting {} at {at}", dev.display()));
                mounts.mount(
                    &format!("provision {at}"),
                    &dev.to_string_lossy(),
                    &paths.resolve(at),
                    &m.fstype,
                    MsFlags::empty(),
                    "",
                )?;
            }
        }
        // A new disk holds no system until an install has filled every slot
        // (`gsectl install`, or a blank machine's own); until then early boot
        // treats it as blank, never as a system to boot.
        let marker = paths.install_unfinished();
        crate::fsutil::write_atomic(&marker, b"this disk was laid out; no install has finished on it\n", 0o644)
            .map_err(|e| BootError::Io(format!("writing {}", marker.display()), e))?;
    }

    let persistent = paths.persistent();
    let mut dirs: Vec<PathBuf> =
        ["gse", "config.d", "logs", "overlays", "local"].iter().map(|d| persistent.join(d)).collect();
    dirs.extend(
        settings.fstab.persistent.iter().map(|p| persistent.join("local").join(p.trim_matches('/').replace('/', "-"))),
    );
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| BootError::Io(format!("creating {}", d.display()), e))?;
    }
    say(format!("user-data tree ready under {}", persistent.display()));

    let key_path = paths.flag_key();
    let key = if key_path.exists() {
        say(format!("keeping the machine key {}", key_path.display()));
        FlagKey::load(&key_path).map_err(|e| BootError::Io(format!("reading {}", key_path.display()), e))?
    } else {
        say(format!("creating the machine key {}", key_path.display()));
        FlagKey::create(&key_path).map_err(|e| BootError::Io(format!("creating {}", key_path.display()), e))?
    };

    let slots = Slots { paths, settings, device_wait: Duration::from_secs(10) };
    for slot in settings.boot.slots.keys() {
        slots.with_mounted(slot, true, |root| {
            if flag::read(root, slot, &key).is_valid() {
                say(format!("slot {slot}: keeping its valid flag"));
                return Ok(());
            }
            let f =
                BootFlag { slot: slot.clone(), image_version: image_version(root), healthy_cycles: 0, last_good: 0 };
            f.write(root, &key).map_err(|e| BootError::Io(format!("writing the flag of slot {slot}"), e))?;
            say(format!("slot {slot}: first flag written (image {})", f.image_version));
            Ok(())
        })?;
    }
    if opts.format {
        let _ = fs::remove_file(paths.boot_state());
    }
    nix::unistd::sync();
    Ok(parts)
}

/// `VERSION=` from the image's `/etc/gse-release`, or `unknown`.
pub fn image_version(root: &Path) -> String {
    fs::read_to_string(root.join("etc/gse-release"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("VERSION=").map(|v| v.trim_matches('"').to_owned())))
        .unwrap_or_else(|| "unknown".into())
}

/// The partition a `LABEL=`/`PARTLABEL=` of drives.conf names, by its device path.
fn partition_for(drives: &DrivesConf, parts: &[PathBuf], spec: &str) -> Option<PathBuf> {
    let label = spec.strip_prefix("LABEL=").or_else(|| spec.strip_prefix("PARTLABEL="))?;
    drives.partition.iter().position(|p| p.label == label).and_then(|i| parts.get(i).cloned())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, BootError> {
    let out = cmd.output().map_err(|e| BootError::Io(format!("{what}: cannot run {:?}", cmd.get_program()), e))?;
    if !out.status.success() {
        return Err(BootError::Tool(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Partitions and formats the disk; returns the partition devices in order.
pub fn format_disk(drives: &DrivesConf, force: bool, say: &mut dyn FnMut(String)) -> Result<Vec<PathBuf>, BootError> {
    let dev = &drives.device;
    if !Path::new(dev).exists() {
        return Err(BootError::Tool(format!(
            "no disk {dev} (controller/drives.conf device); this machine has: {}",
            disks().join(", ")
        )));
    }
    refuse_or_wipe(drives, force, say)?;
    say(format!("partitioning {dev} ({}, {} partitions)", drives.table, drives.partition.len()));
    partition(drives)?;
    let parts: Vec<PathBuf> = (1..=drives.partition.len()).map(|n| partition_node(dev, n)).collect::<Result<_, _>>()?;
    for (p, node) in drives.partition.iter().zip(&parts).filter(|(p, _)| p.fstype != BIOS_BOOT) {
        say(format!("formatting {} as {} ({}, label {})", node.display(), p.fstype, p.name, p.label));
        mkfs(p, node)?;
        if !p.subvolumes.is_empty() {
            let top = std::env::temp_dir().join(format!("gse-provision-{}", std::process::id()));
            let mut m = Mounts::new();
            m.mount("btrfs subvolumes", &node.to_string_lossy(), &top, "btrfs", MsFlags::empty(), "")?;
            for sv in &p.subvolumes {
                say(format!("creating btrfs subvolume {sv}"));
                run(Command::new("btrfs").args(["subvolume", "create"]).arg(top.join(sv)), "btrfs subvolume create")?;
            }
            m.unwind();
            let _ = fs::remove_dir(&top);
        }
    }
    Ok(parts)
}

/// The whole disks this machine has (no partitions, no loop or RAM devices), or "none".
pub fn disks() -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir("/sys/block")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    found.retain(|d| !["loop", "ram", "zram", "sr", "fd"].iter().any(|p| d.starts_with(p)));
    found.sort();
    if found.is_empty() {
        return vec!["none".into()];
    }
    found.iter().map(|d| format!("/dev/{d}")).collect()
}

/// What a disk holds now, as wipefs names it (partition tables, filesystems); empty when blank.
pub fn signatures(dev: &str) -> Result<Vec<String>, BootError> {
    let out = run(
        Command::new("wipefs").args(["--no-act", "--noheadings", "--output", "TYPE", dev]),
        &format!("inspecting {dev}"),
    )?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Never formats a mounted disk; a disk that holds data is wiped only when
/// drives.conf says `wipe = true` or the administrator passed `--force`.
fn refuse_or_wipe(drives: &DrivesConf, force: bool, say: &mut dyn FnMut(String)) -> Result<(), BootError> {
    let dev = &drives.device;
    let mounted = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounted.lines().any(|l| l.split_whitespace().next().is_some_and(|d| d.starts_with(dev.as_str()))) {
        return Err(BootError::Tool(format!("refusing to format {dev}: it or one of its partitions is mounted")));
    }
    let found = signatures(dev)?;
    if !(found.is_empty() || force || drives.wipe) {
        return Err(BootError::Tool(format!(
            "refusing to format {dev}: it holds data ({}); set wipe = true in controller/drives.conf or pass --force",
            found.join(", ")
        )));
    }
    if !found.is_empty() {
        say(format!("wiping {dev} ({})", found.join(", ")));
        run(Command::new("wipefs").args(["--all", "--quiet", dev]), &format!("wiping {dev}"))?;
    }
    Ok(())
}

/// Writes the partition table drives.conf describes, through sfdisk.
fn partition(drives: &DrivesConf) -> Result<(), BootError> {
    let dev = &drives.device;
    let mut script = format!("label: {}\n", drives.table);
    for p in &drives.partition {
        let size = match p.size {
            PartSize::Fixed(s) => format!("size={}KiB, ", s.0 / 1024),
            PartSize::Rest => String::new(),
        };
        let name = if drives.table == "gpt" { format!(", name={}", p.label) } else { String::new() };
        let ty = match p.fstype.as_str() {
            "swap" => "S",
            BIOS_BOOT => "21686148-6449-6E6F-744E-656564454649",
            _ => "L",
        };
        script.push_str(&format!("{size}type={ty}{name}\n"));
    }
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", dev])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BootError::Io("cannot run sfdisk (fdisk package)".into(), e))?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| BootError::Io("writing to sfdisk".into(), e))?;
    let out = child.wait_with_output().map_err(|e| BootError::Io("waiting for sfdisk".into(), e))?;
    if !out.status.success() {
        return Err(BootError::Tool(format!("sfdisk {dev}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let _ = Command::new("partx").args(["--update", dev]).output();
    Ok(())
}

fn mkfs(p: &Partition, node: &Path) -> Result<(), BootError> {
    let mut cmd = match p.fstype.as_str() {
        "ext4" => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-L", &p.label]);
            c
        }
        "btrfs" => {
            let mut c = Command::new("mkfs.btrfs");
            c.args(["-q", "-f", "-L", &p.label]);
            c
        }
        "xfs" => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-L", &p.label]);
            c
        }
        "vfat" => {
            let mut c = Command::new("mkfs.vfat");
            c.args(["-n", &p.label]);
            c
        }
        _ => {
            let mut c = Command::new("mkswap");
            c.args(["-L", &p.label]);
            c
        }
    };
    run(cmd.arg(node), &format!("mkfs.{} {}", p.fstype, node.display())).map(|_| ())
}

/// The device node of partition `n` of `disk`, made from sysfs when no udev
/// creates it (early boot, containers).
fn partition_node(disk: &str, n: usize) -> Result<PathBuf, BootError> {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
    let node = PathBuf::from(format!("{disk}{sep}{n}"));
    let name = node.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if node.exists() {
            return Ok(node);
        }
        if let Ok(devno) = fs::read_to_string(format!("/sys/class/block/{name}/dev")) {
            let (major, minor) = devno.trim().split_once(':').unwrap_or(("0", "0"));
            let (major, minor) = (major.parse().unwrap_or(0), minor.parse().unwrap_or(0));
            let _ = nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(major, minor),
            );
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(BootError::Tool(format!("partition {} did not appear after partitioning {disk}", node.display())))
}
