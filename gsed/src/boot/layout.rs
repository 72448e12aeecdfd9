//! The stateless layout of DESIGN §6 on top of a slot mounted read-only at the new
//! root: RAM-backed /etc and /var filled from the image, empty /tmp and /var/tmp,
//! config.d's /etc overrides, /user-data and the persistent binds, overlays.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use nix::mount::MsFlags;

use super::{
    BootError,
    copy::copy_tree_except,
    mount::{Mounts, split_options},
};
use crate::{
    config::{POPULATED, Settings, TmpfsEntry, Upper, runlevel},
    paths::Paths,
};

fn escape(path: &str) -> String {
    path.trim_matches('/').replace('/', "-")
}

/// Mounts everything below `sysroot`, which already holds the slot read-only.
/// A configured mount point the image does not have is skipped (the slot is
/// read-only, so it cannot be made): returned as a warning for boot.json, so a
/// synced config.d can never break every boot of a room.
pub fn mount_layout(
    mounts: &mut Mounts,
    settings: &Settings,
    paths: &Paths,
    sysroot: &Path,
) -> Result<Vec<String>, BootError> {
    let at = |p: &str| sysroot.join(p.trim_start_matches('/'));
    let stage = paths.layout_stage();
    let mut warnings = Vec::new();
    // The mount point inside the new root (its links followed inside it), made
    // where that is writable (below a tmpfs of the layout); None with a warning
    // when the read-only image lacks it.
    let mut point = |what: &str, dir: &str| -> Option<PathBuf> {
        let made = crate::fsutil::in_root(sysroot, dir.trim_start_matches('/'), true)
            .and_then(|p| if p.is_dir() { Ok(p) } else { fs::create_dir_all(&p).map(|()| p) });
        match made {
            Ok(p) => Some(p),
            Err(e) => {
                let w = format!("{what}: the image has no directory {dir} and it cannot be made ({e}); skipped");
                tracing::warn!("{w}");
                warnings.push(w);
                None
            }
        }
    };

    // Shallow paths first, so /var is in place before /var/tmp.
    // The staging area is a tmpfs of its own with private propagation: under
    // systemd's initrd every mount is shared, and the kernel refuses to move a
    // mount whose parent is shared (EINVAL).
    mounts.mount("staging area", "tmpfs", &stage, "tmpfs", MsFlags::empty(), "mode=0700")?;
    mounts.make_private("staging area", &stage)?;

    let mut tmpfs: Vec<(&String, &TmpfsEntry)> = settings.tmpfs.mount.iter().collect();
    tmpfs.sort_by_key(|(p, _)| p.matches('/').count());
    for (path, t) in tmpfs {
        let mut options = vec![format!("size={}", t.size), format!("mode={:o}", t.mode.0)];
        options.extend(t.options.iter().cloned());
        let (flags, data) = split_options(&options);
        let step = format!("tmpfs {path}");
        let Some(target) = point(&step, path) else { continue };
        if POPULATED.contains(&path.as_str()) {
            // Fill a staged tmpfs from the image, then move it over the image's copy.
            let staged = stage.join(escape(path));
            mounts.mount(&step, "tmpfs", &staged, "tmpfs", flags, &data)?;
            // The read-only directories the image has (a Debian image has no
            // /var/db/pkg); one that is or lies below a symlink is copied.
            let kept: Vec<&Path> = t
                .read_only
                .iter()
                .filter_map(|d| Path::new(d).strip_prefix(path.as_str()).ok())
                .filter(|rel| plain_dir(&target, rel))
                .collect();
            let except: Vec<PathBuf> = kept.iter().map(|rel| target.join(rel)).collect();
            let t0 = std::time::Instant::now();
            let entries = copy_tree_except(&target, &staged, &except).map_err(|e| {
                BootError::Io(format!("{step}: filling from the image: {}", e.path.display()), e.source)
            })?;
            tracing::debug!(dir = %path, entries, ms = t0.elapsed().as_millis() as u64, "filled from the image");
            for rel in kept {
                let what = format!("{step}: {path}/{} read-only from the image", rel.display());
                mounts.bind(&what, &target.join(rel), &staged.join(rel), true)?;
            }
            mounts.move_mount(&step, &staged, &target)?;
        } else {
            mounts.mount(&step, "tmpfs", &target, "tmpfs", flags, &data)?;
        }
    }

    apply_etc(settings, &at("/etc"))?;

    mounts.bind("user data", &paths.user_data(), &at("/user-data"), false)?;
    for dir in &settings.fstab.persistent {
        let Some(target) = point(&format!("persistent {dir}"), dir) else { continue };
        let src = paths.persistent_local().join(escape(dir));
        fs::create_dir_all(&src)
            .map_err(|e| BootError::Io(format!("persistent {dir}: creating {}", src.display()), e))?;
        mounts.bind(&format!("persistent {dir}"), &src, &target, false)?;
    }

    for (dir, o) in &settings.overlays.overlay {
        let step = format!("overlay {dir}");
        let Some(target) = point(&step, dir) else { continue };
        let base = match o.upper {
            Upper::Tmpfs => {
                let base = stage.join(format!("overlay-{}", escape(dir)));
                let size = o.size.map(|s| format!("size={s}")).unwrap_or_default();
                mounts.mount(&step, "tmpfs", &base, "tmpfs", MsFlags::empty(), &size)?;
                base
            }
            Upper::Persistent => paths.persistent_overlays().join(escape(dir)),
        };
        let (upper, work) = (base.join("upper"), base.join("work"));
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(|e| BootError::Io(format!("{step}: creating {}", d.display()), e))?;
        }
        let data = format!("lowerdir={},upperdir={},workdir={}", target.display(), upper.display(), work.display());
        mounts.mount(&step, "overlay", &target, "overlay", MsFlags::empty(), &data)?;
    }
    Ok(warnings)
}

/// Whether `rel` is a directory below `base` with no symlink on the way: the
/// copy never follows one, and a bind through one could land outside the new
/// root (an absolute link resolves in the initramfs).
fn plain_dir(base: &Path, rel: &Path) -> bool {
    let mut p = base.to_path_buf();
    rel.components().all(|c| {
        p.push(c);
        fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
    })
}

/// Writes config.d's view of /etc into the RAM-backed /etc.
pub fn apply_etc(settings: &Settings, etc: &Path) -> Result<(), BootError> {
    let e = &settings.etc;
    if !e.hostname.is_empty() {
        write_etc(etc, "/etc/hostname", format!("{}\n", e.hostname).as_bytes(), 0o644)?;
    }
    if !e.timezone.is_empty() {
        let lt = under(etc, "/etc/localtime")?;
        let _ = fs::remove_file(&lt);
        symlink(Path::new("/usr/share/zoneinfo").join(&e.timezone), &lt).map_err(io("/etc/localtime"))?;
        write_etc(etc, "/etc/timezone", format!("{}\n", e.timezone).as_bytes(), 0o644)?;
    }
    for p in &e.remove {
        match fs::remove_file(under(etc, p)?) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io(p)(err)),
            _ => {}
        }
    }
    for (p, file) in &e.file {
        write_etc(etc, p, file.content.as_bytes(), file.mode.0)?;
    }
    write_etc(etc, "/etc/fstab", fstab(settings).as_bytes(), 0o644)?;
    // default-runlevel is OpenRC's; an image without /etc/runlevels (systemd) has none.
    if let Some(list) = settings.default_runlevel.as_ref().filter(|_| etc.join("runlevels").is_dir()) {
        let applied = runlevel::apply(etc, list).map_err(io("/etc/runlevels/default"))?;
        if !applied.missing.is_empty() {
            tracing::warn!(missing = ?applied.missing, "default-runlevel names services the image does not have");
        }
    }
    Ok(())
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |e| BootError::Io(what.to_owned(), e)
}

/// `/etc/X` in config → `<etc>/X`, with links in the image's /etc followed as the
/// booted system will follow them: inside the new root, never into the initramfs.
fn under(etc: &Path, p: &str) -> Result<PathBuf, BootError> {
    let root = etc.parent().unwrap_or(etc);
    crate::fsutil::in_root(root, format!("etc/{}", p.trim_start_matches("/etc/")), false).map_err(io(p))
}

/// Writes one file of the RAM /etc; a link from the image is replaced by the
/// file, never written through.
fn write_etc(etc: &Path, p: &str, data: &[u8], mode: u32) -> Result<(), BootError> {
    let f = under(etc, p)?;
    if let Some(dir) = f.parent() {
        fs::create_dir_all(dir).map_err(io(p))?;
    }
    if fs::symlink_metadata(&f).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&f).map_err(io(p))?;
    }
    fs::write(&f, data).map_err(io(p))?;
    fs::set_permissions(&f, fs::Permissions::from_mode(mode)).map_err(io(p))
}

/// /etc/fstab as generated from fstab.conf (with cfstab.conf merged in).
pub fn fstab(settings: &Settings) -> String {
    let mut out = String::from(
        "# Generated by GSE early boot from config.d (system/fstab.conf, controller/cfstab.conf).\n# This file is in RAM: edit config.d instead.\n",
    );
    for (at, m) in &settings.fstab.mount {
        let _ = writeln!(out, "{}\t{}\t{}\t{}\t{} {}", m.device, at, m.fstype, m.options.join(","), m.dump, m.pass);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_directories_lie_below_no_symlink() {
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        fs::create_dir_all(var.join("db/pkg")).unwrap();
        fs::create_dir_all(d.path().join("elsewhere/dpkg")).unwrap();
        symlink(d.path().join("elsewhere"), var.join("lib")).unwrap();
        symlink("db/pkg", var.join("pkg")).unwrap();
        assert!(plain_dir(&var, Path::new("db/pkg")));
        assert!(!plain_dir(&var, Path::new("lib/dpkg")), "below a symlink");
        assert!(!plain_dir(&var, Path::new("pkg")), "a symlink itself");
        assert!(!plain_dir(&var, Path::new("db/none")), "absent");
    }

    #[test]
    fn links_in_the_image_etc_are_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "keep me").unwrap();
        let etc = d.path().join("sysroot/etc");
        fs::create_dir_all(&etc).unwrap();
        symlink(&victim, etc.join("motd")).unwrap();
        symlink(&victim, etc.join("hostname")).unwrap();
        let mut settings = Settings::default();
        settings.etc.hostname = "lab-01".into();
        settings.etc.file.insert(
            "/etc/motd".into(),
            crate::config::EtcFile { content: "hello\n".into(), mode: crate::config::values::Mode(0o644) },
        );
        apply_etc(&settings, &etc).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me", "nothing outside the new root is written");
        assert_eq!(fs::read_to_string(etc.join("motd")).unwrap(), "hello\n");
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "lab-01\n");
        assert!(fs::symlink_metadata(etc.join("motd")).unwrap().is_file());
    }
}
