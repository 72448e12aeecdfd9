//! Finds the block device that `LABEL=`, `UUID=` or `PARTLABEL=` names, in
//! this process: early boot has no udev (so no /dev/disk/by-*), blkid is not in
//! every initramfs and busybox's findfs knows no `PARTLABEL=`. A lookup through
//! a tool is also a process each time, and early boot makes several (tens of
//! milliseconds each in an emulated machine).
//!
//! The superblocks read here are those of the filesystems GSE lays out by
//! default (ext2/3/4 and btrfs); a partition's name is the one the kernel read
//! from the partition table (`PARTNAME` in sysfs), or else the disk's GPT. A
//! lookup that finds no single match here is left to the tools.

use std::{
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// A block device, and its partition name when the partition table has one.
#[derive(Debug, Clone)]
pub struct Device {
    pub path: PathBuf,
    pub partname: Option<String>,
}

/// What a filesystem's superblock says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub label: String,
    /// As blkid prints it: lowercase, 8-4-4-4-12.
    pub uuid: String,
}

/// The one device `spec` names among this machine's block devices; None when
/// no device or several do (or the spec is not of the three kinds).
pub fn find(spec: &str) -> Option<PathBuf> {
    let mut devices = block_devices();
    // Names are read only for a lookup by name: where sysfs has none, each
    // costs a read of the disk's GPT.
    if spec.starts_with("PARTLABEL=") {
        for d in &mut devices {
            d.partname = d.path.file_name().and_then(|n| partname(&Path::new(SYS_BLOCK).join(n)));
        }
    }
    find_among(spec, &devices)
}

/// [`find`] among `devices`. An empty name names nothing (every unlabelled
/// filesystem has one).
pub fn find_among(spec: &str, devices: &[Device]) -> Option<PathBuf> {
    let (kind, value) = spec.split_once('=').filter(|(_, v)| !v.is_empty())?;
    let matches = |d: &Device| match kind {
        "PARTLABEL" => d.partname.as_deref() == Some(value),
        "LABEL" => identify(&d.path).is_some_and(|i| i.label == value),
        "UUID" => identify(&d.path).is_some_and(|i| i.uuid.eq_ignore_ascii_case(value)),
        _ => false,
    };
    let mut found = devices.iter().filter(|d| matches(d));
    match (found.next(), found.next()) {
        (Some(d), None) => Some(d.path.clone()),
        _ => None,
    }
}

/// The filesystem on `dev` (a block device or an image file). None when no
/// known superblock is there, or more than one is: blkid calls such a device
/// ambiguous and names nothing, and neither does this.
pub fn identify(dev: &Path) -> Option<Identity> {
    let f = fs::File::open(dev).ok()?;
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).ok().map(|()| buf)
    };
    let found: Vec<Identity> = [read(1024, 1024).and_then(|b| ext(&b)), read(65536, 4096).and_then(|b| btrfs(&b))]
        .into_iter()
        .flatten()
        .collect();
    match <[Identity; 1]>::try_from(found) {
        Ok([one]) => Some(one),
        Err(_) => None,
    }
}

/// ext2/3/4: the superblock at 1024 (magic 0xEF53 at 56, UUID at 104, label at 120).
fn ext(sb: &[u8]) -> Option<Identity> {
    (sb.get(56..58)? == [0x53, 0xEF]).then(|| Identity { label: cstr(&sb[120..136]), uuid: uuid(&sb[104..120]) })
}

/// btrfs: the superblock at 64 KiB (magic at 64, fsid at 32, label at 299).
fn btrfs(sb: &[u8]) -> Option<Identity> {
    (sb.get(64..72)? == b"_BHRfS_M").then(|| Identity { label: cstr(&sb[299..555]), uuid: uuid(&sb[32..48]) })
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

const SYS_BLOCK: &str = "/sys/class/block";

/// The block devices the kernel lists in /proc/partitions (which leaves out
/// empty drives), without whole disks that are divided into partitions; their
/// partition names are not read (see [`find`]).
pub fn block_devices() -> Vec<Device> {
    let Ok(list) = fs::read_to_string("/proc/partitions") else { return Vec::new() };
    let names: Vec<&str> = list.lines().skip(2).filter_map(|l| l.split_whitespace().nth(3)).collect();
    let sys = |name: &str| Path::new(SYS_BLOCK).join(name);
    names
        .iter()
        .filter(|n| !names.iter().any(|p| p != *n && sys(n).join(p).join("partition").exists()))
        .map(|n| Device { path: Path::new("/dev").join(n), partname: None })
        .collect()
}

/// A partition's name: the kernel's, when it read the partition table itself,
/// else read from the disk's GPT (partitions added by partx have no name in
/// sysfs, nor do any where the kernel has no GPT support).
fn partname(sys: &Path) -> Option<String> {
    let uevent = fs::read_to_string(sys.join("uevent")).ok()?;
    let field = |k: &str| uevent.lines().find_map(|l| l.strip_prefix(k)).map(str::to_owned);
    if let Some(name) = field("PARTNAME=") {
        return Some(name);
    }
    let number: u64 = field("PARTN=")?.parse().ok()?;
    let disk = fs::canonicalize(sys.join("..")).ok()?.file_name().map(|d| Path::new(SYS_BLOCK).join(d))?;
    let sector = fs::read_to_string(disk.join("queue/logical_block_size")).ok()?.trim().parse().ok()?;
    let disk_dev = Path::new("/dev").join(disk.file_name()?);
    gpt_name(&fs::File::open(disk_dev).ok()?, number, sector)
}

/// The name of partition `number` (from 1) in the GPT of `disk`, whose
/// sectors are `sector` bytes.
fn gpt_name(disk: &fs::File, number: u64, sector: u64) -> Option<String> {
    let mut header = [0u8; 92];
    disk.read_exact_at(&mut header, sector).ok()?;
    let le32 = |at: usize| header.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let first = u64::from_le_bytes(header[72..80].try_into().ok()?);
    let (count, size) = (u64::from(le32(80)?), u64::from(le32(84)?));
    if &header[..8] != b"EFI PART" || number == 0 || number > count || size < 128 {
        return None;
    }
    let mut entry = [0u8; 128];
    disk.read_exact_at(&mut entry, first.checked_mul(sector)?.checked_add((number - 1).checked_mul(size)?)?).ok()?;
    let units: Vec<u16> =
        entry[56..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
    String::from_utf16(&units).ok().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str, blocks: &[(u64, &[u8])]) -> PathBuf {
        let p = dir.join(name);
        let f = fs::File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        for (at, data) in blocks {
            f.write_all_at(data, *at).unwrap();
        }
        p
    }

    fn ext_sb(label: &str, id: u8) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[56..58].copy_from_slice(&[0x53, 0xEF]);
        sb[104..120].copy_from_slice(&[id; 16]);
        sb[120..120 + label.len()].copy_from_slice(label.as_bytes());
        sb
    }

    #[test]
    fn one_match_is_found_and_none_or_two_are_not() {
        let d = tempfile::tempdir().unwrap();
        let a = image(d.path(), "a", &[(1024, &ext_sb("gse-a", 0xab))]);
        let b = image(d.path(), "b", &[(1024, &ext_sb("gse-b", 0x01))]);
        let twin = image(d.path(), "twin", &[(1024, &ext_sb("gse-b", 0x02))]);
        let blank = image(d.path(), "blank", &[]);
        let dev = |p: &PathBuf, part: Option<&str>| Device { path: p.clone(), partname: part.map(str::to_owned) };
        let devs = [dev(&blank, None), dev(&a, Some("slot-a")), dev(&b, None)];
        assert_eq!(find_among("LABEL=gse-a", &devs), Some(a.clone()));
        assert_eq!(find_among("UUID=ABABABAB-ABAB-ABAB-ABAB-ABABABABABAB", &devs), Some(a.clone()));
        assert_eq!(find_among("PARTLABEL=slot-a", &devs), Some(a.clone()));
        assert_eq!(find_among("LABEL=gse-c", &devs), None);
        assert_eq!(find_among("PARTUUID=1234", &devs), None);
        assert_eq!(
            find_among(
                "LABEL=",
                &[dev(&blank, None), dev(&image(d.path(), "nolabel", &[(1024, &ext_sb("", 3))]), None)]
            ),
            None,
            "an empty name names nothing"
        );
        assert_eq!(find_among("LABEL=gse-b", &[dev(&b, None), dev(&twin, None)]), None, "two devices match");
        // A device with two superblocks is ambiguous, as blkid says.
        let mut btrfs_sb = vec![0u8; 4096];
        btrfs_sb[64..72].copy_from_slice(b"_BHRfS_M");
        let both = image(d.path(), "both", &[(1024, &ext_sb("gse-a", 0xcd)), (65536, &btrfs_sb)]);
        assert_eq!(identify(&both), None);
        assert_eq!(find_among("LABEL=gse-a", &[dev(&both, None), dev(&a, None)]), Some(a.clone()));
        let short = d.path().join("short");
        fs::File::create(&short).unwrap().set_len(100).unwrap();
        assert_eq!(identify(&short), None, "too short to hold a superblock");
    }
}
