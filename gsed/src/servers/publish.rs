//! The server side (DESIGN §8): `gsectl publish` writes a static tree that any
//! HTTP server can serve. Every change becomes visible atomically — config.d by
//! swapping a symlink to a complete, signed directory; channel files by rename.

use std::{
    fs, io,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, ManifestError, hash_file, sign};
use crate::{
    config::{self, ConfigError},
    fsutil::write_atomic,
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

/// What a channel file says: the newest image of the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub channel: String,
    pub version: String,
    /// Relative to `gse1/`.
    pub image: String,
    pub sha256: String,
    pub size: u64,
    pub published: u64,
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
    prune(&gse1, &id);
    Ok((id, manifest))
}

fn prune(gse1: &Path, current: &str) {
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

/// Places `image` under `gse1/images/VERSION/` and points channel `name` at it.
pub fn publish_image(
    image: &Path,
    version: &str,
    name: &str,
    tree: &Path,
    secret: &Path,
) -> Result<Channel, PublishError> {
    valid_name(version, "version", "._-")?;
    valid_name(name, "channel name", "-")?;
    let file_name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| super::manifest::safe_path(n))
        .ok_or_else(|| PublishError::Refused(format!("{}: unusual image file name", image.display())))?;
    let (sha256, size) = hash_file(image).map_err(io(format!("reading {}", image.display())))?;
    let chdir = tree.join("gse1/channels");
    // `published` only grows (clients refuse a channel file older than one they took).
    let before: Option<Channel> =
        fs::read(chdir.join(format!("{name}.json"))).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let channel = Channel {
        channel: name.to_owned(),
        version: version.to_owned(),
        image: format!("images/{version}/{file_name}"),
        sha256: sha256.clone(),
        size,
        published: crate::journal::now().max(before.map_or(0, |c| c.published + 1)),
    };
    // Signed before anything is written: a bad key leaves the tree untouched.
    let json = serde_json::to_vec_pretty(&channel).expect("channel serialises");
    let sig = sign(secret, &json, &format!("gse channel {name} {version}"))?;
    let gse1 = tree.join("gse1");
    let dir = gse1.join("images").join(version);
    let dest = dir.join(&file_name);
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    if hash_file(&dest).ok() != Some((sha256, size)) {
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        fs::copy(image, &tmp).map_err(io(format!("copying {}", image.display())))?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("syncing the image"))?;
        fs::rename(&tmp, &dest).map_err(io(format!("placing {}", dest.display())))?;
    }
    write_atomic(&chdir.join(format!("{name}.json.minisig")), sig.as_bytes(), 0o644)
        .map_err(io("writing the channel signature"))?;
    write_atomic(&chdir.join(format!("{name}.json")), &json, 0o644).map_err(io("writing the channel file"))?;
    Ok(channel)
}
