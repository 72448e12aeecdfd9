//! The archive on the persistent area: one zstd-compressed tar a boot, named
//! `<start time>-<boot id>.tar.zst`, whose first member `meta.json` says which boot
//! it was and how it ended, so a listing reads only the head of each file. Plain
//! tools read it too: `zstd -dc FILE | tar -x`.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use gse_dbus::boot::{Action, Verdict};
use serde::{Deserialize, Serialize};

use super::LogsError;

/// The suffix of an archived boot.
pub const SUFFIX: &str = ".tar.zst";
/// The spool's bookkeeping, never archived.
pub const SPOOL_STATE: &str = "state.json";
pub const META: &str = "meta.json";
/// zstd level: logs shrink about tenfold, and a boot's logs pack in milliseconds.
const LEVEL: i32 = 6;
/// Largest member `logs show` reads into memory.
const MAX_MEMBER: u64 = 256 << 20;

/// Which boot a set of logs belongs to and how that boot ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootMeta {
    pub boot_id: String,
    /// Seconds since the epoch when gsed first saw this boot.
    pub started: u64,
    /// When the logs were archived; 0 while the boot runs.
    #[serde(default)]
    pub ended: u64,
    pub slot: String,
    /// What early boot did.
    #[serde(default)]
    pub action: Action,
    pub image_version: String,
    /// Early boot's one-sentence reason.
    #[serde(default)]
    pub reason: String,
    /// How the boot ended; none (written `running`) while it runs.
    #[serde(default, with = "running")]
    pub verdict: Option<Verdict>,
    /// Archived by a later boot, because this one never shut down cleanly.
    #[serde(default)]
    pub recovered: bool,
    /// The spool reached `max_boot_size` and stopped copying.
    #[serde(default)]
    pub truncated: bool,
}

/// A verdict, or `running` for a boot that has none yet.
mod running {
    use gse_dbus::boot::Verdict;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Verdict>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.map_or("running", Verdict::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Verdict>, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "running" | "" => Ok(None),
            other => other.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

impl BootMeta {
    /// Boots whose logs outlive normal ones when the budget is tight.
    pub fn notable(&self) -> bool {
        matches!(self.verdict, Some(Verdict::Red | Verdict::Incomplete))
            || !matches!(self.action, Action::Normal | Action::Diskless)
    }
}

/// One boot in the archive (or the running boot's spool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    #[serde(flatten)]
    pub meta: BootMeta,
    /// Bytes on disk (compressed for an archive).
    pub size: u64,
    pub path: PathBuf,
    /// The spool of a boot that is still running (or not yet archived).
    pub live: bool,
}

/// A boot id as a file name: anything but letters, digits, `-` and `_` becomes `_`.
pub fn safe_name(boot_id: &str) -> String {
    let s: String = boot_id
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogsError + '_ {
    move |source| LogsError::Io { path: path.to_owned(), source }
}

/// Packs the spool directory `spool` into `dir`, crash-safely (a temporary file,
/// synced, renamed, the directory synced). Returns the archive's path.
pub fn write(dir: &Path, meta: &BootMeta, spool: &Path) -> Result<PathBuf, LogsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = format!("{:010}-{}{SUFFIX}", meta.started, safe_name(&meta.boot_id));
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        // Logs may hold what users typed: readable by root only, from the first byte.
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let enc = zstd::Encoder::new(BufWriter::new(file), LEVEL).map_err(io_err(&tmp))?;
        let mut tar = tar::Builder::new(enc);
        let json = serde_json::to_vec_pretty(meta).map_err(|e| LogsError::Format(e.to_string()))?;
        append(&mut tar, META, &json, meta.ended).map_err(io_err(&tmp))?;
        for (rel, file) in spool_files(spool) {
            let mut f = File::open(&file).map_err(io_err(&file))?;
            let len = f.metadata().map_err(io_err(&file))?.len();
            let mut h = header(len, meta.ended);
            tar.append_data(&mut h, &rel, (&mut f).take(len)).map_err(io_err(&tmp))?;
        }
        let enc = tar.into_inner().map_err(io_err(&tmp))?;
        let mut w = enc.finish().map_err(io_err(&tmp))?;
        w.flush().map_err(io_err(&tmp))?;
        w.get_ref().sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

fn header(len: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8], mtime: u64) -> io::Result<()> {
    let mut h = header(data.len() as u64, mtime);
    tar.append_data(&mut h, name, data)
}

/// The log files of a spool directory, by name relative to it, sorted. Only
/// regular files: the spool is gsed's own, but it never follows a link.
pub fn spool_files(spool: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![spool.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let rel = p.strip_prefix(spool).unwrap_or(&p).to_string_lossy().into_owned();
                    if rel != SPOOL_STATE && rel != META {
                        out.push((rel, p));
                    }
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The meta of an archive: its first member.
pub fn read_meta(path: &Path) -> Result<BootMeta, LogsError> {
    let f = File::open(path).map_err(io_err(path))?;
    let dec = zstd::Decoder::new(f).map_err(io_err(path))?;
    let mut tar = tar::Archive::new(dec);
    let mut entries = tar.entries().map_err(io_err(path))?;
    let bad = |why: &str| LogsError::Format(format!("{}: {why}", path.display()));
    let mut first = entries.next().ok_or_else(|| bad("empty archive"))?.map_err(io_err(path))?;
    if first.path().map_err(io_err(path))?.as_os_str() != META {
        return Err(bad("does not start with meta.json"));
    }
    let mut json = Vec::new();
    (&mut first).take(1 << 20).read_to_end(&mut json).map_err(io_err(path))?;
    serde_json::from_slice(&json).map_err(|e| bad(&format!("meta.json: {e}")))
}

/// Every archived boot in `dir`, oldest first, and the spools of boots not yet
/// archived (`live`). Damaged archives and spools are reported in the second list.
pub fn list(dir: &Path, spool: &Path) -> (Vec<Entry>, Vec<LogsError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(SUFFIX) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = e.path();
            match read_meta(&path) {
                Ok(meta) => {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(Entry { meta, size, path, live: false });
                }
                Err(err) => errors.push(err),
            }
        }
    }
    if let Ok(rd) = fs::read_dir(spool) {
        for e in rd.flatten() {
            let path = e.path();
            let Ok(text) = fs::read(path.join(META)) else { continue };
            // Named rather than skipped: the spool of a running boot is not hidden.
            let meta = match serde_json::from_slice::<BootMeta>(&text) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(LogsError::Format(format!("{}: {e}", path.join(META).display())));
                    continue;
                }
            };
            let size = spool_files(&path).iter().filter_map(|(_, p)| fs::metadata(p).ok()).map(|m| m.len()).sum();
            out.push(Entry { meta, size, path, live: true });
        }
    }
    out.sort_by(|a, b| (a.meta.started, &a.meta.boot_id).cmp(&(b.meta.started, &b.meta.boot_id)));
    (out, errors)
}

/// The log files of one boot (archive or spool) as (name, content); `unit` keeps
/// only the file named so (`gsed`, `early`, `kernel`, `var/log/messages`).
pub fn read(entry: &Entry, unit: Option<&str>) -> Result<Vec<(String, Vec<u8>)>, LogsError> {
    let wanted = |name: &str| {
        unit.is_none_or(|u| name == u || name.strip_suffix(".log") == Some(u) || name.ends_with(&format!("/{u}")))
    };
    let mut out = Vec::new();
    if entry.live {
        for (rel, p) in spool_files(&entry.path) {
            if wanted(&rel) {
                let f = File::open(&p).map_err(io_err(&p))?;
                let mut data = Vec::new();
                f.take(MAX_MEMBER).read_to_end(&mut data).map_err(io_err(&p))?;
                out.push((rel, data));
            }
        }
        return Ok(out);
    }
    let path = &entry.path;
    let dec = zstd::Decoder::new(File::open(path).map_err(io_err(path))?).map_err(io_err(path))?;
    let mut tar = tar::Archive::new(dec);
    for e in tar.entries().map_err(io_err(path))? {
        let mut e = e.map_err(io_err(path))?;
        let name = e.path().map_err(io_err(path))?.to_string_lossy().into_owned();
        if name == META || !wanted(&name) {
            continue;
        }
        let mut data = Vec::new();
        (&mut e).take(MAX_MEMBER).read_to_end(&mut data).map_err(io_err(path))?;
        out.push((name, data));
    }
    Ok(out)
}

/// Which archives to delete so that at most `max_boots` remain and their sizes add
/// up to at most `max_size`: the oldest normal boots first, then the oldest notable
/// ones. `keep` (the one just written) is never chosen. `entries` is oldest first.
pub fn prune_plan(entries: &[Entry], max_size: u64, max_boots: usize, keep: Option<&Path>) -> Vec<PathBuf> {
    let archived: Vec<&Entry> = entries.iter().filter(|e| !e.live).collect();
    let mut total: u64 = archived.iter().map(|e| e.size).sum();
    let mut count = archived.len();
    let mut gone = Vec::new();
    let candidates = archived
        .iter()
        .filter(|e| !e.meta.notable())
        .chain(archived.iter().filter(|e| e.meta.notable()))
        .filter(|e| Some(e.path.as_path()) != keep);
    for e in candidates {
        if total <= max_size && count <= max_boots {
            break;
        }
        total -= e.size;
        count -= 1;
        gone.push(e.path.clone());
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_whose_meta_does_not_read_is_named_not_hidden() {
        let d = tempfile::tempdir().unwrap();
        let (dir, spool) = (d.path().join("logs"), d.path().join("logs/spool"));
        for (boot, meta) in [
            ("b1", r#"{"boot_id":"b1","started":1,"slot":"a","image_version":""}"#),
            ("b2", r#"{"boot_id":"b2","verdict":"exploded"}"#),
        ] {
            fs::create_dir_all(spool.join(boot)).unwrap();
            fs::write(spool.join(boot).join(META), meta).unwrap();
        }
        let (entries, errors) = list(&dir, &spool);
        assert_eq!(entries.iter().map(|e| e.meta.boot_id.as_str()).collect::<Vec<_>>(), ["b1"]);
        assert!(entries[0].meta.verdict.is_none(), "a running boot has no verdict");
        assert_eq!(errors.len(), 1);
        let e = errors[0].to_string();
        assert!(e.contains("spool/b2/meta.json") && e.contains("exploded"), "{e}");
    }

    fn entry(name: &str, size: u64, verdict: &str, action: &str) -> Entry {
        let meta = BootMeta {
            boot_id: name.into(),
            verdict: verdict.parse().ok(),
            action: action.parse().unwrap_or_default(),
            ..Default::default()
        };
        Entry { meta, size, path: PathBuf::from(name), live: false }
    }

    #[test]
    fn prune_takes_old_normal_boots_first_and_never_the_new_one() {
        let e = [
            entry("1", 10, "red", "normal"),
            entry("2", 10, "healthy-cycle", "normal"),
            entry("3", 10, "healthy-cycle", "bailout"),
            entry("4", 10, "dirty", "normal"),
            entry("5", 10, "healthy-cycle", "normal"),
        ];
        let names = |v: Vec<PathBuf>| v.into_iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        assert!(prune_plan(&e, 50, 5, None).is_empty(), "within budget: nothing goes");
        assert_eq!(names(prune_plan(&e, 30, 10, None)), ["2", "4"], "size: oldest normal first");
        assert_eq!(
            names(prune_plan(&e, 100, 2, None)),
            ["2", "4", "5"],
            "count: the normal ones go before red and bailout"
        );
        assert_eq!(
            names(prune_plan(&e, 10, 10, Some(Path::new("5")))),
            ["2", "4", "1", "3"],
            "then the oldest notable ones"
        );
    }

    #[test]
    fn an_archive_lists_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("spool/b1");
        fs::create_dir_all(spool.join("var/log")).unwrap();
        fs::write(spool.join("gsed.log"), "gsed line\n").unwrap();
        fs::write(spool.join("var/log/messages"), "system line\n").unwrap();
        fs::write(spool.join(SPOOL_STATE), "{}").unwrap();
        let meta =
            BootMeta { boot_id: "b1/../x".into(), started: 42, verdict: Some(Verdict::Red), ..Default::default() };
        let path = write(&d.path().join("logs"), &meta, &spool).unwrap();
        assert_eq!(path.file_name().unwrap(), "0000000042-b1____x.tar.zst");
        let (list, errors) = list(&d.path().join("logs"), &d.path().join("none"));
        assert!(errors.is_empty());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].meta, meta);
        let files = read(&list[0], None).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["gsed.log", "var/log/messages"], "the spool's bookkeeping is not archived");
        assert_eq!(read(&list[0], Some("gsed")).unwrap(), [("gsed.log".to_owned(), b"gsed line\n".to_vec())]);
        assert_eq!(read(&list[0], Some("messages")).unwrap().len(), 1);
    }
}
