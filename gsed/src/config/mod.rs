//! config.d: the files that steer every part of GSE (DESIGN §4).
//!
//! Loading goes in three steps, each with errors that name file, line and field:
//! 1. *fragments*: every file that exists is parsed on its own and checked against
//!    its schema (`deny_unknown_fields`), so an error points into the file at fault;
//! 2. *merge*: layers are merged key by key, lowest first — image defaults
//!    (`/usr/share/gse/config.d`), then the synced tree
//!    (`/user-data/persistent/config.d`), and inside each tree `system/FOO.conf`
//!    before `controller/cFOO.conf` — remembering where every value came from;
//! 3. *validate*: the merged view is turned into typed [`Settings`] and checked.
//!
//! Any error rejects the whole load; the caller keeps its last good [`Settings`].

mod boot;
pub mod drives;
mod duration;
mod keys;
mod layer;
pub mod live;
mod logs;
mod mounts;
mod network;
pub mod runlevel;
mod servers;
mod system;
pub mod values;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

pub use boot::{BootConf, HealthConf, InitSystem, OnFailure, SlotConf};
pub use drives::{DrivesConf, Partition};
pub use duration::Duration;
pub use keys::{join_key, split_key};
use layer::LogicalFile;
pub use layer::Origin;
pub use logs::{LogsConf, MetricsConf};
pub use mounts::{
    BtrfsConf, FstabConf, FstabEntry, OverlayEntry, OverlaysConf, POPULATED, TmpfsConf, TmpfsEntry, Upper,
};
pub use network::{InterfaceConf, Method, NetworkConf, parse_cidr};
use serde::Serialize;
pub use servers::{Reboot, Server, ServerInfoConf, UpdateConf, UpdatePolicy};
pub use system::{EtcConf, EtcFile, SourcesConf};
use values::at_or_below;

use crate::paths::Paths;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_owned(), line: None, column: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// The typed, validated, merged configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Settings {
    pub boot: BootConf,
    pub etc: EtcConf,
    pub fstab: FstabConf,
    pub network: NetworkConf,
    pub overlays: OverlaysConf,
    pub btrfs: BtrfsConf,
    pub drives: DrivesConf,
    pub servers: ServerInfoConf,
    pub tmpfs: TmpfsConf,
    pub update: UpdateConf,
    pub sources: SourcesConf,
    pub logs: LogsConf,
    pub metrics: MetricsConf,
    /// OpenRC's default runlevel; `None` leaves the image's as it is.
    pub default_runlevel: Option<Vec<String>>,
}

/// A successful load: settings, the merged values and where each came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub settings: Settings,
    /// Dotted key (`boot.health.max_attempts`) → file and line that set it.
    pub origins: BTreeMap<String, Origin>,
    /// Merged values as TOML, one table per logical file.
    pub merged: toml::Table,
}

const RUNLEVEL_FILE: &str = "controller/services/default-runlevel";

/// Every logical TOML file: key in the merged view, system file, controller override.
const FILES: &[LogicalFile] = &[
    LogicalFile::new("boot", "system/boot.conf", Some("controller/cboot.conf")),
    LogicalFile::new("etc", "system/etc.conf", Some("controller/cetc.conf")),
    LogicalFile::new("fstab", "system/fstab.conf", Some("controller/cfstab.conf")),
    LogicalFile::new("network", "system/network.conf", Some("controller/cnetwork.conf")),
    LogicalFile::new("overlays", "system/overlays.conf", Some("controller/coverlays.conf")),
    LogicalFile::new("btrfs", "controller/btrfs.conf", None),
    LogicalFile::new("drives", "controller/drives.conf", None),
    LogicalFile::new("servers", "controller/server/server.info.conf", None),
    LogicalFile::new("tmpfs", "controller/tmpfs.conf", None),
    LogicalFile::new("update", "controller/update.chk.conf", None),
    LogicalFile::new("sources", "sources/sources.conf", None),
    LogicalFile::new("logs", "system/logs.conf", Some("controller/clogs.conf")),
    LogicalFile::new("metrics", "system/metrics.conf", Some("controller/cmetrics.conf")),
];

/// The config.d trees to read, lowest priority first.
pub fn layers(paths: &Paths) -> Vec<PathBuf> {
    vec![paths.image_config(), paths.synced_config()]
}

/// Early boot's trees: the image's (the initramfs's copy), the copy on the boot
/// partition, then the synced tree on the user-data area.
pub fn early_layers(paths: &Paths) -> Vec<PathBuf> {
    vec![paths.image_config(), paths.boot_config(), paths.synced_config()]
}

/// Loads and validates the whole configuration from `trees` (lowest first).
/// Returns every error found, not just the first.
pub fn load(trees: &[PathBuf]) -> Result<Loaded, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Loaded::default();
    let s = &mut out.settings;
    macro_rules! section {
        ($field:ident, $i:expr) => {
            if let Some(v) = FILES[$i].load(trees, &mut out.origins, &mut out.merged, &mut errors) {
                s.$field = v;
            }
        };
    }
    section!(boot, 0);
    section!(etc, 1);
    section!(fstab, 2);
    section!(network, 3);
    section!(overlays, 4);
    section!(btrfs, 5);
    section!(drives, 6);
    section!(servers, 7);
    section!(tmpfs, 8);
    section!(update, 9);
    section!(sources, 10);
    section!(logs, 11);
    section!(metrics, 12);

    // The runlevel list is plain text: the highest layer that has it wins whole.
    for tree in trees.iter().rev() {
        let path = tree.join(RUNLEVEL_FILE);
        match read_text(&path) {
            Ok(None) => continue,
            Ok(Some(text)) => match runlevel::parse(&path, &text) {
                Ok(list) => {
                    out.merged.insert(
                        "runlevel".into(),
                        toml::Value::Array(list.iter().cloned().map(toml::Value::String).collect()),
                    );
                    out.origins.insert("runlevel".into(), Origin { file: path, line: None });
                    s.default_runlevel = Some(list);
                }
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(e),
        }
        break;
    }

    errors.extend(writes_into_read_only(&out));
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// tmpfs.conf keeps some directories of /etc read-only from the image; early
/// boot writes etc.conf's files and removals and the default runlevel into
/// /etc. A write into a read-only directory would fail every boot, so such a
/// configuration is refused, naming both sides.
fn writes_into_read_only(loaded: &Loaded) -> Vec<ConfigError> {
    let s = &loaded.settings;
    let Some(etc) = s.tmpfs.mount.get("/etc").filter(|m| !m.read_only.is_empty()) else { return Vec::new() };
    let mut writes: Vec<(String, &str)> =
        s.etc.file.keys().map(|p| (format!("etc.conf writes {p}"), p.as_str())).collect();
    writes.extend(s.etc.remove.iter().map(|p| (format!("etc.conf removes {p}"), p.as_str())));
    if s.default_runlevel.is_some() {
        writes.push((format!("{RUNLEVEL_FILE} writes /etc/runlevels/default"), "/etc/runlevels/default"));
    }
    let key = join_key(&["mount", "/etc", "read_only"]);
    let origin = loaded.origins.get(&format!("tmpfs.{key}"));
    let file = origin.map_or_else(|| PathBuf::from("controller/tmpfs.conf"), |o| o.file.clone());
    let mut out = Vec::new();
    for d in &etc.read_only {
        for (what, _) in writes.iter().filter(|(_, p)| at_or_below(p, d) || at_or_below(d, p)) {
            let message = format!("{key}: '{d}' cannot stay read-only: {what}");
            out.push(ConfigError { line: origin.and_then(|o| o.line), ..ConfigError::file(&file, message) });
        }
    }
    out
}

/// Largest config.d file GSE reads: real ones are a few KiB; the limit keeps a
/// mistake or an attack from exhausting gsed's memory.
pub const MAX_FILE: u64 = 1 << 20;

/// Reads a config.d file; `Ok(None)` when it does not exist. Only a regular file
/// of at most [`MAX_FILE`] bytes is read: a FIFO could block gsed forever and a
/// link could lead anywhere (`/dev/zero`), so both are errors naming the file.
fn read_text(path: &Path) -> Result<Option<String>, ConfigError> {
    let m = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError::file(path, format!("cannot read: {e}"))),
        Ok(m) => m,
    };
    let refuse = |why: String| Err(ConfigError::file(path, why));
    if m.file_type().is_symlink() {
        return refuse("is a symbolic link: config.d files must be regular files".into());
    }
    if m.is_dir() {
        return refuse("is a directory, expected a file".into());
    }
    if !m.is_file() {
        return refuse("is not a regular file (a FIFO, socket or device)".into());
    }
    let too_big = |n: u64| format!("is {n} bytes; config.d files are at most {MAX_FILE} bytes");
    if m.len() > MAX_FILE {
        return refuse(too_big(m.len()));
    }
    let cannot = |e: std::io::Error| ConfigError::file(path, format!("cannot read: {e}"));
    // Swapped for something else since the look above: read_regular refuses it.
    let Some(data) = read_regular(path).map_err(cannot)? else {
        return refuse("is not a regular file (a FIFO, socket or device)".into());
    };
    if data.len() as u64 > MAX_FILE {
        return refuse(too_big(data.len() as u64));
    }
    String::from_utf8(data).map(Some).map_err(|_| ConfigError::file(path, "is not UTF-8 text"))
}

/// Opens a config.d file without following a link or blocking on a FIFO and
/// reads at most [`MAX_FILE`] + 1 bytes of it, in one read when it fits;
/// `None` when what it opened is not a regular file.
pub(crate) fn read_regular(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(m.len().min(MAX_FILE) as usize + 1);
    f.take(MAX_FILE + 1).read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Checks one tree on its own, as an administrator does before publishing it:
/// the files GSE reads, every example under `examples/` against the schema of the
/// file it shows, and no `.conf` file that GSE would silently ignore.
pub fn check_tree(dir: &Path) -> Result<Loaded, Vec<ConfigError>> {
    if !dir.is_dir() {
        return Err(vec![ConfigError::file(dir, "is not a directory (expected a config.d tree)")]);
    }
    let mut errors = Vec::new();
    let loaded = load(&[dir.to_owned()]).map_err(|e| errors.extend(e)).ok();
    for file in walk(dir) {
        let rel = file.strip_prefix(dir).unwrap_or(&file).to_string_lossy().into_owned();
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if rel.split('/').any(|c| c == "examples") {
            check_example(&file, &name, &mut errors);
        } else if name.ends_with(".conf") && !is_known(&rel) {
            errors.push(ConfigError::file(&file, "unknown file: GSE does not read it (a typo in the name?)"));
        }
    }
    match loaded {
        Some(l) if errors.is_empty() => Ok(l),
        _ => Err(errors),
    }
}

/// The files GSE reads, relative to a tree.
fn is_known(rel: &str) -> bool {
    FILES.iter().any(|f| f.system == rel || f.controller == Some(rel))
}

/// `examples/cboot.repair.conf` is checked as `boot`, `examples/network.static.conf`
/// as `network`; the longest matching file name wins.
fn check_example(path: &Path, name: &str, errors: &mut Vec<ConfigError>) {
    if !name.ends_with(".conf") {
        return; // READMEs and other notes
    }
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).trim_end_matches(".conf").to_owned();
    let matched = FILES
        .iter()
        .flat_map(|f| std::iter::once(f.system).chain(f.controller).map(move |p| (base(p), f)))
        .filter(|(b, _)| name == format!("{b}.conf") || name.starts_with(&format!("{b}.")))
        .max_by_key(|(b, _)| b.len());
    match matched {
        Some((_, f)) => {
            let mut origins = BTreeMap::new();
            let mut merged = toml::Table::new();
            f.load_file(path, &mut origins, &mut merged, errors);
        }
        None => errors.push(ConfigError::file(
            path,
            "example does not name the file it shows: call it <file>.<variant>.conf, e.g. network.static.conf",
        )),
    }
}

/// Every regular file below `dir`, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

impl Loaded {
    /// The view an unprivileged reader may see: the content of every /etc file
    /// that is not world-readable (`mode = "0600"`: a keytab, a password) is
    /// replaced by a note. Borrowed when there is nothing to hide.
    pub fn for_anyone(&self) -> std::borrow::Cow<'_, Loaded> {
        let private: Vec<&String> =
            self.settings.etc.file.iter().filter(|(_, f)| f.mode.0 & 0o004 == 0).map(|(p, _)| p).collect();
        if private.is_empty() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut out = self.clone();
        if let Some(toml::Value::Table(etc)) = out.merged.get_mut("etc")
            && let Some(toml::Value::Table(files)) = etc.get_mut("file")
        {
            for p in private {
                if let Some(toml::Value::Table(f)) = files.get_mut(p.as_str())
                    && f.contains_key("content")
                {
                    f.insert("content".into(), toml::Value::String("(hidden: the file is not world-readable)".into()));
                }
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// The merged value at a dotted key (`boot.health`, `tmpfs.mount."/tmp".size`).
    pub fn get(&self, key: &str) -> Option<toml::Value> {
        // Walks by reference: a dump looks up every key, and cloning the whole
        // view for each would be quadratic in the size of the configuration.
        let parts = split_key(key);
        let (first, rest) = parts.split_first()?;
        let mut v = self.merged.get(first)?;
        for part in rest {
            v = match v {
                toml::Value::Table(t) => t.get(part)?,
                toml::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v.clone())
    }

    /// Every leaf value as (dotted key, value as TOML), with the origin of its
    /// nearest recorded key. Keys are sorted.
    pub fn flatten(&self, under: Option<&str>) -> Vec<(String, String, Option<Origin>)> {
        fn walk(prefix: &mut Vec<String>, v: &toml::Value, out: &mut Vec<(Vec<String>, String)>) {
            match v {
                toml::Value::Table(t) if !t.is_empty() => {
                    for (k, v) in t {
                        prefix.push(k.clone());
                        walk(prefix, v, out);
                        prefix.pop();
                    }
                }
                other => out.push((prefix.clone(), other.to_string())),
            }
        }
        let mut leaves = Vec::new();
        let start = match under {
            Some(k) => self.get(k).map(|v| (split_key(k), v)),
            None => Some((Vec::new(), toml::Value::Table(self.merged.clone()))),
        };
        if let Some((mut prefix, v)) = start {
            walk(&mut prefix, &v, &mut leaves);
        }
        leaves
            .into_iter()
            .map(|(parts, value)| {
                let origin = (1..=parts.len()).rev().find_map(|n| self.origins.get(&join_key(&parts[..n])).cloned());
                (join_key(&parts), value, origin)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
