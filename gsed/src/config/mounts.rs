//! The stateless mount layout: `system/fstab.conf` (+ `controller/cfstab.conf`),
//! `controller/tmpfs.conf`, `system/overlays.conf` (+ `controller/coverlays.conf`)
//! and `controller/btrfs.conf`. Early boot reads them when it mounts the new root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    layer::{Invalid, Validate},
    values::{Mode, TmpfsSize, at_or_below, clean_absolute},
};

/// Extra mounts for the client's `/etc/fstab`, by mount point, and the
/// directories kept on the persistent area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FstabConf {
    /// Bind-mounted from `/user-data/persistent/local/<name>` at early boot.
    pub persistent: Vec<String>,
    pub mount: BTreeMap<String, FstabEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FstabEntry {
    pub device: String,
    pub fstype: String,
    #[serde(default = "defaults")]
    pub options: Vec<String>,
    #[serde(default)]
    pub dump: u8,
    #[serde(default)]
    pub pass: u8,
}

impl Default for FstabConf {
    fn default() -> Self {
        FstabConf { persistent: vec!["/home".into(), "/root".into()], mount: BTreeMap::new() }
    }
}

fn defaults() -> Vec<String> {
    vec!["defaults".into()]
}

impl Validate for FstabConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        for p in &self.persistent {
            if !clean_absolute(p) || p == "/" {
                out.push(Invalid::new("persistent", format!("'{p}' must be an absolute directory such as \"/home\"")));
            }
        }
        for (at, m) in &self.mount {
            let key = |f: &str| format!("mount.\"{at}\".{f}");
            if !clean_absolute(at) {
                out.push(Invalid::new(format!("mount.\"{at}\""), "the mount point must be an absolute path".into()));
            }
            if m.device.trim().is_empty() {
                out.push(Invalid::new(key("device"), "must name a device, LABEL=, UUID= or a remote share".into()));
            }
            if m.fstype.trim().is_empty() || m.fstype.contains(char::is_whitespace) {
                out.push(Invalid::new(key("fstype"), format!("'{}' is not a filesystem type", m.fstype)));
            }
            check_options(&m.options, &key("options"), &mut out);
            if m.pass > 2 {
                out.push(Invalid::new(key("pass"), format!("{} is out of range: expected 0, 1 or 2", m.pass)));
            }
        }
        out
    }
}

fn check_options(options: &[String], key: &str, out: &mut Vec<Invalid>) {
    for o in options {
        if o.is_empty() || o.contains([',', ' ', '\t']) {
            out.push(Invalid::new(key, format!("'{o}' is not one mount option: give each option as its own string")));
        }
    }
}

/// RAM-backed mounts of the stateless layout, by mount point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TmpfsConf {
    pub mount: BTreeMap<String, TmpfsEntry>,
}

/// The tmpfs mounts early boot fills from the image's own directory.
pub const POPULATED: &[&str] = &["/etc", "/var"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsEntry {
    pub size: TmpfsSize,
    #[serde(default = "mode_755")]
    pub mode: Mode,
    #[serde(default)]
    pub options: Vec<String>,
    /// Directories below a populated mount that stay the image's, read-only,
    /// rather than copied into RAM (package databases: the root is read-only,
    /// so nothing on the client can change them anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
}

fn mode_755() -> Mode {
    Mode(0o755)
}

impl Default for TmpfsConf {
    fn default() -> Self {
        let entry = |size: &str, mode: u32, options: &[&str]| TmpfsEntry {
            size: size.parse().expect("built-in size"),
            mode: Mode(mode),
            options: options.iter().map(|s| s.to_string()).collect(),
            read_only: Vec::new(),
        };
        TmpfsConf {
            mount: BTreeMap::from([
                ("/etc".into(), entry("64M", 0o755, &[])),
                ("/var".into(), entry("25%", 0o755, &[])),
                ("/tmp".into(), entry("25%", 0o1777, &["nosuid", "nodev"])),
                ("/var/tmp".into(), entry("10%", 0o1777, &["nosuid", "nodev"])),
            ]),
        }
    }
}

impl Validate for TmpfsConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        for required in ["/etc", "/var", "/tmp"] {
            if !self.mount.contains_key(required) {
                out.push(Invalid::new("mount", format!("{required} must be a tmpfs on a stateless client")));
            }
        }
        for (at, m) in &self.mount {
            if !clean_absolute(at) || at == "/" {
                out.push(Invalid::new(
                    format!("mount.\"{at}\""),
                    "the mount point must be an absolute path other than /".into(),
                ));
            }
            check_options(&m.options, &format!("mount.\"{at}\".options"), &mut out);
            check_read_only(at, &m.read_only, &mut out);
            if m.options.iter().any(|o| o.starts_with("size=") || o.starts_with("mode=")) {
                out.push(Invalid::new(
                    format!("mount.\"{at}\".options"),
                    "set size and mode with their own keys".into(),
                ));
            }
        }
        out
    }
}

/// A mount's `read_only` list: directories strictly below it, for /etc and
/// /var only (the mounts filled from the image), none inside another.
fn check_read_only(at: &str, dirs: &[String], out: &mut Vec<Invalid>) {
    let key = format!("mount.\"{at}\".read_only");
    if dirs.is_empty() {
        return;
    }
    if !POPULATED.contains(&at) {
        out.push(Invalid::new(&key, format!("only {} are filled from the image", POPULATED.join(" and "))));
        return;
    }
    for (i, d) in dirs.iter().enumerate() {
        if !clean_absolute(d) || d == at || !at_or_below(d, at) {
            out.push(Invalid::new(&key, format!("'{d}' must be an absolute directory below {at}")));
        } else if let Some(outer) = dirs[..i].iter().chain(&dirs[i + 1..]).find(|o| at_or_below(d, o)) {
            // A second bind of the same tree: one entry says it all.
            out.push(Invalid::new(&key, format!("'{d}' is already kept by '{outer}'")));
        }
    }
}

/// Writable layers over read-only directories of the image, by directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlaysConf {
    pub overlay: BTreeMap<String, OverlayEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upper {
    /// Changes live in RAM and are gone at the next boot.
    Tmpfs,
    /// Changes are kept under `/user-data/persistent/overlays/`.
    Persistent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayEntry {
    pub upper: Upper,
    /// Only for `upper = "tmpfs"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TmpfsSize>,
}

impl Validate for OverlaysConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        for (at, o) in &self.overlay {
            if !clean_absolute(at) || at == "/" {
                out.push(Invalid::new(
                    format!("overlay.\"{at}\""),
                    "must be an absolute directory other than /".into(),
                ));
            }
            if ["/etc", "/var", "/tmp", "/user-data"].iter().any(|p| at_or_below(at, p)) {
                out.push(Invalid::new(
                    format!("overlay.\"{at}\""),
                    "is already writable (tmpfs or user data); no overlay needed".into(),
                ));
            }
            if o.upper == Upper::Persistent && o.size.is_some() {
                out.push(Invalid::new(
                    format!("overlay.\"{at}\".size"),
                    "size only applies to upper = \"tmpfs\"".into(),
                ));
            }
        }
        out
    }
}

/// How btrfs slots are mounted and how repairs keep snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BtrfsConf {
    pub mount_options: Vec<String>,
    /// Where snapshots of repaired slots are kept, relative to the filesystem's top.
    pub snapshots_dir: String,
    /// How many old snapshots of a repaired slot to keep.
    pub keep_snapshots: u32,
}

impl Default for BtrfsConf {
    fn default() -> Self {
        BtrfsConf {
            mount_options: vec!["noatime".into(), "compress=zstd:3".into()],
            snapshots_dir: ".gse/snapshots".into(),
            keep_snapshots: 1,
        }
    }
}

impl Validate for BtrfsConf {
    fn validate(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        check_options(&self.mount_options, "mount_options", &mut out);
        if self.mount_options.iter().any(|o| o.starts_with("subvol")) {
            out.push(Invalid::new("mount_options", "set the subvolume per slot in boot.conf, not here".into()));
        }
        if self.snapshots_dir.starts_with('/') || self.snapshots_dir.split('/').any(|c| c == ".." || c.is_empty()) {
            out.push(Invalid::new(
                "snapshots_dir",
                format!("'{}' must be a relative path without ..", self.snapshots_dir),
            ));
        }
        if self.keep_snapshots > 10 {
            out.push(Invalid::new(
                "keep_snapshots",
                format!("{} is out of range: expected 0 to 10", self.keep_snapshots),
            ));
        }
        out
    }
}
