//! The boot loader a blank machine's install writes (DESIGN §12), so that the
//! next power-on boots from the disk: GRUB for BIOS, embedded the way
//! grub-install embeds it. boot.img's code goes into the MBR (the partition
//! table stays), core.img into the bios-boot partition (gpt) or the gap after
//! the MBR (dos), and the boot partition gets `gse/grub.cfg`, which starts
//! the kernel and GSE initramfs copied next to it from the primary slot.
//!
//! The installer carries boot.img and core.img (`gsectl initramfs build
//! --controller` makes core.img with grub-mkimage); core.img finds the boot
//! partition by its `/gse/grub.cfg`, so no label or partition number is built
//! into it. Early boot on that kernel hands over to a slot whose image carries
//! another kernel (see [`super::kernel`]), so the copy needs no update when
//! the slots change.

use std::{
    fs,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use super::kernel::LOADER_WORDS;
use crate::{
    config::{DrivesConf, drives::BIOS_BOOT},
    fsutil::write_atomic,
};

const SECTOR: usize = 512;
/// boot.img: where the first sector of core.img is (LBA, u64).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: a check of the BIOS drive number that some BIOSes fail; grub-install NOPs it.
const DRIVE_CHECK: usize = 0x66;
/// boot.img: the Windows NT magic, the partition table and the signature, kept from the disk.
const TABLE_START: usize = 0x1b8;
/// boot.img: the BIOS parameter block, kept from the disk as grub-install does.
const BPB: std::ops::Range<usize> = 0x03..0x5a;
/// core.img's first sector (diskboot) ends with the block list of the rest:
/// start (u64), sectors (u16), load segment (u16).
const BLOCKLIST: usize = SECTOR - 12;
/// Where diskboot loads the rest of core.img: 0x800 + one sector.
const LOAD_SEGMENT: u16 = 0x820;

/// The files of the installer's GRUB, relative to its root.
pub const GRUB_DIR: &str = "usr/lib/gse/grub";
/// The boot partition's own files, relative to its root.
pub const KERNEL: &str = "gse/vmlinuz";
pub const INITRAMFS: &str = "gse/initramfs.img";
pub const CONFIG: &str = "gse/grub.cfg";

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    #[error("{0}")]
    Refused(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoaderError {
    let what = what.into();
    move |e| LoaderError::Io(what, e)
}

/// A run of sectors on the disk that GRUB's core image may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embed {
    pub start: u64,
    pub sectors: u64,
}

/// Where core.img goes on the disk drives.conf laid out: the bios-boot
/// partition (its device is `parts[i]`), or on dos the gap between the MBR and
/// the first partition. Read from sysfs, in sectors.
pub fn embed_area(drives: &DrivesConf, parts: &[PathBuf]) -> Result<Embed, LoaderError> {
    let sysfs = |node: &Path, field: &str| -> Result<u64, LoaderError> {
        let name = node.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = format!("/sys/class/block/{name}/{field}");
        let text = fs::read_to_string(&path).map_err(io_err(path.clone()))?;
        text.trim().parse().map_err(|_| LoaderError::Refused(format!("{path}: '{}' is not a number", text.trim())))
    };
    match drives.partition.iter().position(|p| p.fstype == BIOS_BOOT) {
        Some(i) => {
            let node = parts.get(i).ok_or_else(|| LoaderError::Refused("the bios-boot partition is missing".into()))?;
            Ok(Embed { start: sysfs(node, "start")?, sectors: sysfs(node, "size")? })
        }
        None => {
            let first = parts.first().ok_or_else(|| LoaderError::Refused("the disk has no partition".into()))?;
            Ok(Embed { start: 1, sectors: sysfs(first, "start")?.saturating_sub(1) })
        }
    }
}

/// Writes GRUB's `boot_img` into the MBR of `disk` (keeping its partition
/// table) and `core_img` into `at`, linked to each other as grub-install
/// links them. core.img goes first: until the MBR points at it, the disk does
/// not try to start a half-written loader.
pub fn write_grub(disk: &Path, boot_img: &[u8], core_img: &[u8], at: Embed) -> Result<(), LoaderError> {
    if boot_img.len() != SECTOR {
        return Err(LoaderError::Refused(format!("boot.img is {} bytes, not one sector", boot_img.len())));
    }
    let sectors = core_img.len().div_ceil(SECTOR);
    if sectors < 2 || sectors as u64 > at.sectors || sectors > usize::from(u16::MAX) {
        return Err(LoaderError::Refused(format!(
            "GRUB's core image ({sectors} sectors) does not fit the {} sectors at sector {}",
            at.sectors, at.start
        )));
    }
    let mut core = core_img.to_vec();
    core.resize(sectors * SECTOR, 0);
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(at.start + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&LOAD_SEGMENT.to_le_bytes());

    let name = disk.display().to_string();
    let mut d = fs::OpenOptions::new().read(true).write(true).open(disk).map_err(io_err(format!("opening {name}")))?;
    let mut mbr = [0u8; SECTOR];
    d.read_exact(&mut mbr).map_err(io_err(format!("reading the MBR of {name}")))?;
    if mbr[510..] != [0x55, 0xaa] {
        return Err(LoaderError::Refused(format!("{name} has no partition table to keep: refusing to write its MBR")));
    }
    let mut boot = boot_img.to_vec();
    boot[BPB].copy_from_slice(&mbr[BPB]);
    boot[TABLE_START..].copy_from_slice(&mbr[TABLE_START..]);
    boot[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&at.start.to_le_bytes());
    boot[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);

    d.seek(SeekFrom::Start(at.start * SECTOR as u64)).map_err(io_err(format!("seeking in {name}")))?;
    d.write_all(&core).map_err(io_err(format!("writing GRUB's core image to {name}")))?;
    d.sync_data().map_err(io_err(format!("flushing {name}")))?;
    d.seek(SeekFrom::Start(0)).map_err(io_err(format!("seeking in {name}")))?;
    d.write_all(&boot).map_err(io_err(format!("writing the MBR of {name}")))?;
    d.sync_data().map_err(io_err(format!("flushing {name}")))
}

/// Copies `kernel` and `initramfs` onto the boot partition mounted at
/// `boot_dir` and writes the grub.cfg that starts them with `cmdline`. Each
/// file is replaced whole (written aside, then renamed).
pub fn write_boot_files(boot_dir: &Path, kernel: &Path, initramfs: &Path, cmdline: &str) -> Result<(), LoaderError> {
    for (from, to) in [(kernel, KERNEL), (initramfs, INITRAMFS)] {
        let data = fs::read(from).map_err(io_err(format!("reading {}", from.display())))?;
        let to = boot_dir.join(to);
        write_atomic(&to, &data, 0o644).map_err(io_err(format!("writing {}", to.display())))?;
    }
    let cfg = boot_dir.join(CONFIG);
    write_atomic(&cfg, grub_cfg(cmdline).as_bytes(), 0o644).map_err(io_err(format!("writing {}", cfg.display())))
}

fn grub_cfg(cmdline: &str) -> String {
    format!(
        "# Written by GSE's install (DESIGN §12); an install writes it again.\n\
         # The kernel is the primary slot's at install time: early boot hands over\n\
         # to a slot that carries another one.\n\
         set timeout=0\n\
         menuentry \"GSE\" {{\n\
         \tlinux /{KERNEL} {cmdline}\n\
         \tinitrd /{INITRAMFS}\n\
         }}\n"
    )
}

/// The command line an installed machine boots with: the installer's, less
/// what only the installer means (the install mode, the server for a
/// machine without config, a handover, the loader's own words).
///
/// Words GRUB would expand or split (quotes, `$`, `;`, `\`) are left out
/// too, each with a warning.
pub fn installed_cmdline(installer: &str) -> String {
    let handoff = format!("{}=", super::kernel::CMDLINE_KEY);
    let drop = ["gse.install=", "gse.server=", handoff.as_str(), LOADER_WORDS[0], LOADER_WORDS[1]];
    super::kernel::cmdline_without(installer, &drop)
        .filter(|w| {
            let plain = !w.contains(['"', '\'', '$', ';', '\\']);
            if !plain {
                tracing::warn!(word = %w, "left out of the installed command line: GRUB would expand or split it");
            }
            plain
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with_table(sectors: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; sectors * SECTOR];
        data[0x1be..0x1ce].copy_from_slice(&[0x00, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        data[0x1b8..0x1bc].copy_from_slice(b"SIGN");
        data[510] = 0x55;
        data[511] = 0xaa;
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn grub_is_linked_into_the_mbr_and_the_table_kept() {
        let disk = disk_with_table(64);
        let mut boot = vec![0xb0u8; SECTOR];
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let core = vec![0xc0u8; 3 * SECTOR + 100]; // four sectors once padded
        write_grub(disk.path(), &boot, &core, Embed { start: 34, sectors: 20 }).unwrap();
        let d = fs::read(disk.path()).unwrap();
        assert_eq!(&d[0x1b8..0x1bc], b"SIGN", "disk signature kept");
        assert_eq!(d[0x1c2], 0xee, "protective partition kept");
        assert_eq!(u64::from_le_bytes(d[KERNEL_SECTOR..KERNEL_SECTOR + 8].try_into().unwrap()), 34);
        assert_eq!(&d[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert_eq!((d[0x10], d[0x70]), (0, 0xb0), "BPB kept from the disk, boot code written");
        let core_at = 34 * SECTOR;
        let bl = &d[core_at + BLOCKLIST..core_at + SECTOR];
        assert_eq!(u64::from_le_bytes(bl[..8].try_into().unwrap()), 35, "the rest follows the first sector");
        assert_eq!(u16::from_le_bytes(bl[8..10].try_into().unwrap()), 3);
        assert_eq!(u16::from_le_bytes(bl[10..12].try_into().unwrap()), LOAD_SEGMENT);
        assert_eq!(d[core_at + SECTOR], 0xc0);
    }

    #[test]
    fn a_core_too_big_or_a_disk_without_table_is_refused_untouched() {
        let disk = disk_with_table(16);
        let before = fs::read(disk.path()).unwrap();
        let boot = vec![0u8; SECTOR];
        let e = write_grub(disk.path(), &boot, &vec![1u8; 5 * SECTOR], Embed { start: 1, sectors: 4 }).unwrap_err();
        assert!(e.to_string().contains("does not fit the 4 sectors at sector 1"), "{e}");
        let blank = tempfile::NamedTempFile::new().unwrap();
        blank.as_file().set_len(16 * SECTOR as u64).unwrap();
        let e = write_grub(blank.path(), &boot, &[1u8; 2 * SECTOR], Embed { start: 1, sectors: 4 }).unwrap_err();
        assert!(e.to_string().contains("no partition table"), "{e}");
        assert_eq!(fs::read(disk.path()).unwrap(), before);
        assert!(fs::read(blank.path()).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn the_installed_machine_boots_without_the_installers_words() {
        let c = installed_cmdline(
            "BOOT_IMAGE=/x initrd=c.img console=ttyS0 gse.install=auto gse.server=http://192.0.2.1 quiet gse.test=$(x)",
        );
        assert_eq!(c, "console=ttyS0 quiet");
        let cfg = grub_cfg(&c);
        assert!(cfg.contains("linux /gse/vmlinuz console=ttyS0 quiet\n"), "{cfg}");
        assert!(cfg.contains("initrd /gse/initramfs.img\n"), "{cfg}");
    }
}
