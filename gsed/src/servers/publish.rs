//! The server side (DESIGN §8): `gsectl publish` writes a static tree that any
//! HTTP server can serve. Every change becomes visible atomically — config.d by
//! swapping a symlink to a complete, signed directory; channel files by rename.

use std::{
    fs, io,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, ManifestError, sha256_hex, sign};
use crate::{
    config::{self, ConfigError},
    fsutil::write_atomic,
    image::{
        Cache, Index,
        index::{PUBLISH_LEVEL, open_image, write_chunks},
    },
};

/// How many published config.d directories to keep (the current one and the one
/// before, for clients in the middle of a sync).
const KEEP: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the tree is invalid, nothing was published:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    #[error("{0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> PublishError {
    let what = what.into();
    move |e| PublishError::Io(what, e)
}

/// What a channel file says: the newest image of the channel and who may take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub channel: String,
    pub version: String,
    /// The chunk index, relative to `gse1/`.
    pub index: String,
    /// sha256 of the index file: the signature over this file covers the index.
    pub sha256: String,
    /// Bytes of the uncompressed image.
    pub size: u64,
    /// Bytes a client with none of the chunks fetches.
    pub packed: u64,
    pub published: u64,
    /// Percent of the machines that take this version (phased rollout).
    #[serde(default = "all")]
    pub rollout: u8,
}

fn all() -> u8 {
    100
}

/// Publishes config.d from `from` into `tree/gse1/config.d`; returns the id of
/// the published directory and its manifest.
pub fn publish_config(from: &Path, tree: &Path, secret: &Path) -> Result<(String, Manifest), PublishError> {
    config::check_tree(from).map_err(PublishError::Invalid)?;
    let mut manifest = Manifest::from_dir(from)?;
    let gse1 = tree.join("gse1");
    // Later than anything this tree published before, even with a clock that went back.
    let before = fs::read_to_string(gse1.join("config.d/MANIFEST")).ok().and_then(|t| Manifest::parse(&t).ok());
    manifest.serial = crate::journal::now().max(before.map_or(0, |m| m.serial + 1));
    fs::create_dir_all(&gse1).map_err(io(format!("creating {}", gse1.display())))?;
    let link = gse1.join("config.d");
    if fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
        return Err(PublishError::Refused(format!(
            "{} is not a symlink made by gsectl publish; move it away first",
            link.display()
        )));
    }

    let id = format!("config.d.{}-{}", crate::journal::now(), std::process::id());
    let staging = gse1.join(format!(".staging-{id}"));
    let result = (|| -> Result<(), PublishError> {
        for e in &manifest.entries {
            let to = staging.join(&e.path);
            fs::create_dir_all(to.parent().expect("entry has a parent"))
                .map_err(io(format!("creating {}", to.display())))?;
            fs::copy(from.join(&e.path), &to).map_err(io(format!("copying {}", e.path)))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).map_err(io(format!("chmod {}", e.path)))?;
        }
        let text = manifest.encode();
        let sig = sign(secret, text.as_bytes(), &format!("gse config.d {id}"))?;
        fs::write(staging.join("MANIFEST"), &text).map_err(io("writing MANIFEST"))?;
        fs::write(staging.join("MANIFEST.minisig"), sig).map_err(io("writing MANIFEST.minisig"))?;
        fs::rename(&staging, gse1.join(&id)).map_err(io(format!("placing {id}")))?;
        // The switch: one rename of a symlink, seen by readers whole or not at all.
        let tmp_link = gse1.join(format!(".config.d.link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        symlink(&id, &tmp_link).map_err(io("creating the new config.d link"))?;
        fs::rename(&tmp_link, &link).map_err(io("switching config.d"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    prune_config(&gse1, &id);
    Ok((id, manifest))
}

fn prune_config(gse1: &Path, current: &str) {
    let mut old: Vec<PathBuf> =
        fs::read_dir(gse1).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    old.retain(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("config.d.") && n != current));
    old.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    while old.len() > KEEP - 1 {
        let p = old.remove(0);
        let _ = fs::remove_dir_all(p);
    }
}

fn valid_name(s: &str, what: &str, extra: &str) -> Result<(), PublishError> {
    if s.is_empty() || s.starts_with('.') || !s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c)) {
        return Err(PublishError::Refused(format!("'{s}' is not a valid {what} (letters, digits and {extra})")));
    }
    Ok(())
}

/// Cuts `image` into chunks under `gse1/chunks/`, writes the signed index under
/// `gse1/images/VERSION/` and points channel `name` at it.
pub fn publish_image(
    image: &Path,
    version: &str,
    name: &str,
    tree: &Path,
    secret: &Path,
    rollout: u8,
    without_kernel: bool,
) -> Result<Channel, PublishError> {
    valid_name(version, "version", "._-")?;
    valid_name(name, "channel name", "-")?;
    check_rollout(rollout)?;
    // A bad key fails here, before the (long) chunking writes anything.
    sign(secret, b"probe", "gse key check")?;
    check_kernel(image, without_kernel)?;
    let gse1 = tree.join("gse1");
    let stream = open_image(image).map_err(io(format!("reading {}", image.display())))?;
    let index = write_chunks(stream, &gse1.join("chunks"), version, PUBLISH_LEVEL)
        .map_err(|e| PublishError::Refused(e.to_string()))?;
    let json = serde_json::to_vec(&index).expect("index serialises");
    let sig = sign(secret, &json, &format!("gse image {version}"))?;
    let dir = gse1.join("images").join(version);
    write_atomic(&dir.join("index.json.minisig"), sig.as_bytes(), 0o644).map_err(io("writing the index signature"))?;
    write_atomic(&dir.join("index.json"), &json, 0o644).map_err(io("writing the index"))?;
    let channel = Channel {
        channel: name.to_owned(),
        version: version.to_owned(),
        index: format!("images/{version}/index.json"),
        sha256: sha256_hex(&json),
        size: index.size,
        packed: index.packed_total(),
        published: 0,
        rollout,
    };
    write_channel(tree, channel, secret)
}

/// Each slot boots the kernel of its own image (DESIGN §12): an image must
/// carry one, with its modules and GSE initramfs, unless the administrator
/// says its machines boot a kernel from elsewhere (`without_kernel`); one it
/// carries is checked either way.
fn check_kernel(image: &Path, without_kernel: bool) -> Result<(), PublishError> {
    let unreadable =
        |e: io::Error| PublishError::Refused(format!("{}: not a readable tar stream: {e}", image.display()));
    let mut archive = tar::Archive::new(open_image(image).map_err(io(format!("reading {}", image.display())))?);
    let mut names = Vec::new();
    for entry in archive.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?;
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./");
        if name.starts_with("boot/") || (name.contains("lib/modules/") && name.ends_with("/modules.dep")) {
            names.push(name.to_owned());
        }
    }
    let refused = |why: String| PublishError::Refused(format!("{}: {why}; nothing was published", image.display()));
    match crate::boot::kernel::from_names(names.iter().map(String::as_str), true) {
        Err(e) => Err(refused(e.to_string())),
        Ok(None) if !without_kernel => Err(refused(
            "the image carries no kernel (boot/vmlinuz-RELEASE with lib/modules/RELEASE/), so its slot \
             would boot another image's kernel; build it with its kernel, or pass --no-kernel when the \
             machines' own boot loader starts a kernel from elsewhere"
                .into(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Changes the share of machines that take channel `name`'s current version.
pub fn publish_rollout(tree: &Path, name: &str, percent: u8, secret: &Path) -> Result<Channel, PublishError> {
    valid_name(name, "channel name", "-")?;
    check_rollout(percent)?;
    let path = tree.join(format!("gse1/channels/{name}.json"));
    let before: Channel = fs::read(&path).map_err(io(format!("reading {}", path.display()))).and_then(|b| {
        serde_json::from_slice(&b).map_err(|e| PublishError::Refused(format!("{}: {e}", path.display())))
    })?;
    write_channel(tree, Channel { rollout: percent, ..before }, secret)
}

fn check_rollout(p: u8) -> Result<(), PublishError> {
    if p > 100 {
        return Err(PublishError::Refused(format!("rollout {p}: a percentage is 0 to 100")));
    }
    Ok(())
}

/// Signs and places a channel file; `published` only grows (clients refuse a
/// channel file older than one they took).
fn write_channel(tree: &Path, mut channel: Channel, secret: &Path) -> Result<Channel, PublishError> {
    let chdir = tree.join("gse1/channels");
    let name = channel.channel.clone();
    let before: Option<Channel> =
        fs::read(chdir.join(format!("{name}.json"))).ok().and_then(|b| serde_json::from_slice(&b).ok());
    channel.published = crate::journal::now().max(before.map_or(0, |c| c.published + 1));
    let json = serde_json::to_vec_pretty(&channel).expect("channel serialises");
    let sig = sign(secret, &json, &format!("gse channel {name} {}", channel.version))?;
    write_atomic(&chdir.join(format!("{name}.json.minisig")), sig.as_bytes(), 0o644)
        .map_err(io("writing the channel signature"))?;
    write_atomic(&chdir.join(format!("{name}.json")), &json, 0o644).map_err(io("writing the channel file"))?;
    Ok(channel)
}

/// Keeps the `keep` newest image versions (and every version a channel points
/// at); removes the other versions and every chunk no kept index uses.
/// Returns the removed versions and the bytes freed.
pub fn prune_images(tree: &Path, keep: usize) -> Result<(Vec<String>, u64), PublishError> {
    let gse1 = tree.join("gse1");
    let mut pinned: Vec<String> = Vec::new();
    for e in fs::read_dir(gse1.join("channels")).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "json")
            && let Some(ch) = fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<Channel>(&b).ok())
        {
            pinned.push(ch.version);
        }
    }
    let images = gse1.join("images");
    let mut versions: Vec<(std::time::SystemTime, String)> = fs::read_dir(&images)
        .map_err(io(format!("reading {}", images.display())))?
        .flatten()
        .filter_map(|e| {
            let t = fs::metadata(e.path().join("index.json")).and_then(|m| m.modified()).ok()?;
            Some((t, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    versions.sort();
    versions.reverse();
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for (i, (_, v)) in versions.into_iter().enumerate() {
        if i < keep || pinned.contains(&v) { kept.push(v) } else { removed.push(v) }
    }
    let mut indexes = Vec::new();
    for v in &kept {
        let p = images.join(v).join("index.json");
        let data = fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
        indexes.push(Index::parse(&data).map_err(|e| PublishError::Refused(format!("{}: {e}", p.display())))?);
    }
    for v in &removed {
        fs::remove_dir_all(images.join(v)).map_err(io(format!("removing version {v}")))?;
    }
    let freed = Cache::new(gse1.join("chunks")).keep_only(&indexes.iter().collect::<Vec<_>>());
    Ok((removed, freed))
}
