//! Client-side sync of config.d (DESIGN §8): fetch the MANIFEST from the current
//! server, verify its signature, download only what changed, check every digest,
//! validate the result, then swap it in atomically. Any failure changes nothing,
//! and a sync that finds nothing new writes nothing.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::{
    http::{FetchError, Http},
    manifest::{Entry, Manifest, ManifestError, sha256_hex, verify},
};
use crate::{
    config::{self, ConfigError},
    paths::Paths,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("download failed: {0}")]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {why}")]
    Content { path: String, why: String },
    #[error("the published config.d does not validate here:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("no public_key is configured in server.info.conf")]
    NoKey,
    #[error(
        "the server's MANIFEST has serial {got}, older than serial {have} already accepted: refused (a replayed or stale publish)"
    )]
    Rollback { got: u64, have: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Synced {
    /// Files added, changed or removed (relative paths).
    pub changed: Vec<String>,
    pub downloaded: usize,
    pub reused: usize,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SyncError {
    let what = what.into();
    move |e| SyncError::Io(what, e)
}

/// Syncs the persistent config.d from the server at `base` (the URL above `gse1/`).
pub fn sync_config(http: &Http, base: &str, public_key: &str, paths: &Paths) -> Result<Synced, SyncError> {
    if public_key.trim().is_empty() {
        return Err(SyncError::NoKey);
    }
    let root = format!("{}/gse1/config.d/", base.trim_end_matches('/'));
    let text = http.get(&format!("{root}MANIFEST"), 4 << 20)?;
    let sig = http.get(&format!("{root}MANIFEST.minisig"), 64 << 10)?;
    verify(public_key, &text, &String::from_utf8_lossy(&sig))?;
    let manifest = Manifest::parse(&String::from_utf8_lossy(&text))?;
    let mut accepted = super::accepted::Accepted::load(paths);
    if manifest.serial < accepted.config {
        return Err(SyncError::Rollback { got: manifest.serial, have: accepted.config });
    }

    let current = paths.synced_config();
    let listed: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    let removed: Vec<String> = config::walk(&current)
        .iter()
        .map(|old| old.strip_prefix(&current).unwrap_or(old).to_string_lossy().into_owned())
        .filter(|rel| !listed.contains(&rel.as_str()))
        .collect();
    // The common case, every sync_interval: the tree is already the published
    // one. Compared in place, so nothing is staged, written or swapped.
    if removed.is_empty() && manifest.entries.iter().all(|e| up_to_date(&current.join(&e.path), e)) {
        if manifest.serial > accepted.config {
            accepted.config = manifest.serial;
            accepted.save(paths).map_err(io("recording the accepted MANIFEST serial"))?;
        }
        return Ok(Synced { reused: manifest.entries.len(), ..Synced::default() });
    }

    let work = paths.state_dir().join("sync");
    let staging = work.join("config.d.new");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io(format!("creating {}", staging.display())))?;
    let result = fill(http, &root, &manifest, &current, &staging).and_then(|mut synced| {
        // Removed files count as changes too.
        synced.changed.extend(removed);
        synced.changed.sort();
        if !synced.changed.is_empty() {
            config::load(&[paths.image_config(), staging.clone()]).map_err(SyncError::Invalid)?;
            swap(&staging, &current)?;
        }
        Ok(synced)
    });
    let _ = fs::remove_dir_all(&staging);
    if result.is_ok() && manifest.serial > accepted.config {
        accepted.config = manifest.serial;
        accepted.save(paths).map_err(io("recording the accepted MANIFEST serial"))?;
    }
    result
}

/// The local file is the entry: same size, mode and digest.
fn up_to_date(local: &Path, e: &Entry) -> bool {
    fs::metadata(local).is_ok_and(|m| m.len() == e.size && same_mode(&m, e))
        && fs::read(local).is_ok_and(|d| sha256_hex(&d) == e.sha256)
}

fn same_mode(meta: &fs::Metadata, e: &Entry) -> bool {
    meta.permissions().mode() & 0o7777 == e.mode
}

fn fill(http: &Http, root: &str, manifest: &Manifest, current: &Path, staging: &Path) -> Result<Synced, SyncError> {
    let mut synced = Synced::default();
    for e in &manifest.entries {
        let local = current.join(&e.path);
        let have = fs::read(&local).ok().filter(|d| sha256_hex(d) == e.sha256);
        let data = match have {
            Some(d) => {
                synced.reused += 1;
                if !fs::metadata(&local).is_ok_and(|m| same_mode(&m, e)) {
                    synced.changed.push(e.path.clone()); // the same bytes, a new mode
                }
                d
            }
            None => {
                let d = http.get(&format!("{root}{}", e.path), e.size + 1)?;
                synced.downloaded += 1;
                synced.changed.push(e.path.clone());
                d
            }
        };
        let bad = |why: String| SyncError::Content { path: e.path.clone(), why };
        if data.len() as u64 != e.size {
            return Err(bad(format!("{} bytes, the MANIFEST says {} (truncated?)", data.len(), e.size)));
        }
        if sha256_hex(&data) != e.sha256 {
            return Err(bad("its digest does not match the MANIFEST".into()));
        }
        let to = staging.join(&e.path);
        fs::create_dir_all(to.parent().expect("entry has a parent"))
            .map_err(io(format!("creating {}", to.display())))?;
        fs::write(&to, &data).map_err(io(format!("writing {}", to.display())))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).map_err(io(format!("chmod {}", to.display())))?;
    }
    Ok(synced)
}

/// Puts `staging` in the place of `current` in one step: an exchange when
/// `current` exists, a rename otherwise. The old tree ends up at `staging`.
fn swap(staging: &Path, current: &PathBuf) -> Result<(), SyncError> {
    for f in config::walk(staging) {
        fs::File::open(&f).and_then(|f| f.sync_all()).map_err(io(format!("syncing {}", f.display())))?;
    }
    if current.exists() {
        nix::fcntl::renameat2(None, staging, None, current.as_path(), nix::fcntl::RenameFlags::RENAME_EXCHANGE)
            .map_err(|e| SyncError::Io(format!("replacing {}", current.display()), e.into()))?;
    } else {
        fs::create_dir_all(current.parent().expect("config.d has a parent"))
            .map_err(io("creating the persistent area"))?;
        fs::rename(staging, current).map_err(io(format!("placing {}", current.display())))?;
    }
    if let Some(dir) = current.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
