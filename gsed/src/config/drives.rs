//! `controller/drives.conf`: how `gsectl provision --format` (and a blank
//! machine installing itself, DESIGN §12) partitions and formats a client's
//! disk, and which boot loader the install puts on it.

use serde::{Deserialize, Serialize};

use super::{
    layer::{Invalid, Validate},
    values::PartSize,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrivesConf {
    /// The disk to lay out (never prefixed by --root).
    pub device: String,
    /// Partition table type.
    pub table: String,
    /// Allow `provision --format` to overwrite a disk that already holds data.
    pub wipe: bool,
    /// The boot loader a blank machine's install writes: "grub" (BIOS) or
    /// "none" (the administrator's own loader starts GSE's kernel).
    pub loader: String,
    pub partition: Vec<Partition>,
}

/// The partition type that holds GRUB's core image on a gpt disk (no filesystem).
pub const BIOS_BOOT: &str = "bios-boot";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub name: String,
    /// A size like "512M", or "rest" for the remaining space (last partition only).
    pub size: PartSize,
    pub fstype: String,
    pub label: String,
    /// btrfs only: subvolumes to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subvolumes: Vec<String>,
}

impl Default for DrivesConf {
    fn default() -> Self {
        let part = |name: &str, size: &str, label: &str| Partition {
            name: name.into(),
            size: if size == "rest" { PartSize::Rest } else { PartSize::Fixed(size.parse().expect("built-in size")) },
            fstype: "ext4".into(),
            label: label.into(),
            subvolumes: Vec::new(),
        };
        DrivesConf {
            device: "/dev/sda".into(),
            table: "gpt".into(),
            wipe: false,
            loader: "grub".into(),
            partition: vec![
                Partition {
                    name: "bios".into(),
                    size: PartSize::Fixed("1M".parse().expect("built-in size")),
                    fstype: BIOS_BOOT.into(),
                    label: "gse-bios".into(),
                    subvolumes: Vec::new(),
                },
                part("boot", "1G", "gse-boot"),
                part("a", "30G", "gse-a"),
                part("b", "30G", "gse-b"),
                part("user-data", "rest", "gse-data"),
            ],
        }
    }
}

impl Validate for DrivesConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        if !self.device.starts_with("/dev/") && !self.device.starts_with('/') {
            out.push(Invalid::new("device", format!("'{}' is not a device path such as /dev/sda", self.device)));
        }
        if !["gpt", "dos"].contains(&self.table.as_str()) {
            out.push(Invalid::new("table", format!("'{}' is not supported: expected \"gpt\" or \"dos\"", self.table)));
        }
        if self.partition.is_empty() {
            out.push(Invalid::new("partition", "at least one [[partition]] is needed".into()));
        }
        let mut seen_names = Vec::new();
        let mut seen_labels = Vec::new();
        for (i, p) in self.partition.iter().enumerate() {
            let key = |f: &str| format!("partition.{i}.{f}");
            if seen_names.contains(&&p.name) {
                out.push(Invalid::new(key("name"), format!("'{}' is used by two partitions", p.name)));
            }
            seen_names.push(&p.name);
            if seen_labels.contains(&&p.label) {
                out.push(Invalid::new(key("label"), format!("'{}' is used by two partitions", p.label)));
            }
            seen_labels.push(&p.label);
            if p.label.is_empty() || p.label.len() > 16 {
                out.push(Invalid::new(key("label"), "must be 1 to 16 characters (ext4's limit)".into()));
            }
            if p.size == PartSize::Rest && i + 1 != self.partition.len() {
                out.push(Invalid::new(key("size"), "\"rest\" is only allowed for the last partition".into()));
            }
            if matches!(p.size, PartSize::Fixed(s) if s.0 < 1 << 20) {
                out.push(Invalid::new(key("size"), "must be at least 1M".into()));
            }
            if !["ext4", "btrfs", "xfs", "vfat", "swap", BIOS_BOOT].contains(&p.fstype.as_str()) {
                out.push(Invalid::new(
                    key("fstype"),
                    format!("'{}' is not supported: expected ext4, btrfs, xfs, vfat, swap or bios-boot", p.fstype),
                ));
            }
            if p.fstype == BIOS_BOOT && self.table != "gpt" {
                let why = "a bios-boot partition belongs on a gpt disk (on dos, GRUB uses the gap after the MBR)";
                out.push(Invalid::new(key("fstype"), why.into()));
            }
            if !p.subvolumes.is_empty() && p.fstype != "btrfs" {
                out.push(Invalid::new(key("subvolumes"), "subvolumes need fstype = \"btrfs\"".into()));
            }
        }
        if !["grub", "none"].contains(&self.loader.as_str()) {
            out.push(Invalid::new(
                "loader",
                format!("'{}' is not supported: expected \"grub\" or \"none\"", self.loader),
            ));
        }
        if self.loader == "grub" && self.table == "gpt" && !self.partition.iter().any(|p| p.fstype == BIOS_BOOT) {
            let why =
                "GRUB on a gpt disk needs a partition with fstype = \"bios-boot\" (1M is plenty), or loader = \"none\"";
            out.push(Invalid::new("loader", why.into()));
        }
        out
    }
}

impl DrivesConf {
    /// The partitions that get a filesystem (all but the bios-boot one).
    pub fn with_filesystem(&self) -> impl Iterator<Item = (usize, &Partition)> {
        self.partition.iter().enumerate().filter(|(_, p)| p.fstype != BIOS_BOOT)
    }
}
