//! `gsectl image build`: turns a root tree into a GSE system image (stage4,
//! `tar.zst`). The tree is changed in place — it becomes the image: make.conf
//! from config.d, GSE installed on request, the administrator's hooks run inside
//! it, the stateless layout applied and per-machine files removed. Every
//! step is idempotent, and the archive is written in a fixed order with numeric
//! owners, so two builds of the same tree give the same bytes.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use clap::Args;
use gsed::boot::mount::Mounts;
use nix::mount::MsFlags;

use crate::Failure;

#[derive(Args, Debug)]
pub struct ImageBuildArgs {
    /// The root tree (changed in place: it becomes the image).
    #[arg(long)]
    rootfs: PathBuf,
    /// Version written to /etc/gse-release.
    #[arg(long)]
    version: String,
    /// The stage4 to write (.tar.zst).
    #[arg(long)]
    out: PathBuf,
    /// Install gsed, gsectl, the D-Bus policy, init scripts and config.d into the image.
    #[arg(long)]
    install_gse: bool,
    /// A script to run inside the tree (chroot, with /proc, /sys and /dev); repeatable.
    #[arg(long = "hook")]
    hooks: Vec<PathBuf>,
    /// config.d to install and to take sources/make.conf from (default /usr/share/gse/config.d).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

fn say(s: impl AsRef<str>) {
    eprintln!("image: {}", s.as_ref());
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure::Error(format!("{what}: {e}"))
}

/// `rel` inside the tree `root`, links followed as the image will follow them
/// (never out of the tree): see `gsed::fsutil::in_root`.
fn at(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf, Failure> {
    gsed::fsutil::in_root(root, rel.trim_start_matches('/'), follow_last).map_err(fail(format!("resolving /{rel}")))
}

/// Writes `data` at `rel` under `root` unless it is already there (keeps the
/// tree, and so the image, unchanged on a rebuild). A link there is replaced by
/// the file, never written through.
fn put(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), Failure> {
    let p = at(root, rel, false)?;
    let meta = fs::symlink_metadata(&p).ok();
    if meta.as_ref().is_some_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == mode)
        && fs::read(&p).is_ok_and(|d| d == data)
    {
        return Ok(());
    }
    if meta.is_some_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&p).map_err(fail(format!("replacing the link /{rel}")))?;
    }
    fs::create_dir_all(p.parent().expect("a path under the root"))
        .map_err(fail(format!("creating the parent of {rel}")))?;
    fs::write(&p, data).map_err(fail(format!("writing {rel}")))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(fail(format!("chmod {rel}")))
}

fn link(root: &Path, rel: &str, target: &str) -> Result<(), Failure> {
    let p = at(root, rel, false)?;
    if fs::read_link(&p).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    let _ = fs::remove_file(&p);
    fs::create_dir_all(p.parent().expect("a path under the root"))
        .map_err(fail(format!("creating the parent of {rel}")))?;
    symlink(target, &p).map_err(fail(format!("linking {rel}")))
}

pub fn build(args: ImageBuildArgs) -> Result<u8, Failure> {
    let root = &args.rootfs;
    if !root.join("bin").exists() && !root.join("usr/bin").exists() {
        return Err(Failure::Error(format!("{} does not look like a root tree (no bin/ or usr/bin/)", root.display())));
    }
    if args.out.exists() && !args.force {
        return Err(Failure::Error(format!("{} exists; pass --force to replace it", args.out.display())));
    }
    if args.version.is_empty() || !args.version.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return Err(Failure::Error(format!("'{}' is not a valid version (letters, digits, . _ -)", args.version)));
    }
    let config = args.config.clone().unwrap_or_else(|| PathBuf::from("/usr/share/gse/config.d"));
    // Everything the build writes gets this time, so two builds of the same
    // tree give the same bytes whenever they run.
    let epoch = build_epoch(root)?;

    if let Ok(make_conf) = fs::read(config.join("sources/make.conf")) {
        say("copying sources/make.conf to /etc/portage/make.conf");
        put(root, "etc/portage/make.conf", &make_conf, 0o644)?;
    }
    // GSE first, so that hooks can build on it (add users to group gse, add
    // health checks, change its conf.d).
    if args.install_gse {
        say(format!("installing GSE (config.d from {})", config.display()));
        install_gse(root, &config)?;
    }
    for (i, hook) in args.hooks.iter().enumerate() {
        say(format!("running hook {}", hook.display()));
        run_hook(root, hook, i)?;
    }
    own_kernel(root, &config)?;
    say("applying the stateless layout");
    stateless(root, &args.version)?;
    clamp_times(root, epoch)?;

    say(format!("writing {}", args.out.display()));
    let (sha, size, entries) = write_stage4(root, &args.out)?;
    say(format!("{entries} entries"));
    println!("{sha}  {}  {size} bytes", args.out.display());
    Ok(0)
}

/// The image's own kernel (DESIGN §12) gets the GSE initramfs that early
/// boot starts it with; a kernel without its modules is refused.
fn own_kernel(root: &Path, config: &Path) -> Result<(), Failure> {
    match gsed::boot::kernel::find(root, false) {
        Err(e) => Err(Failure::Error(format!("{}: {e}", root.display()))),
        Ok(None) => {
            say("no kernel in boot/ (boot/vmlinuz-RELEASE): the machines boot whatever kernel their loader starts, \
                 and `gsectl publish image` takes the image only with --no-kernel");
            Ok(())
        }
        Ok(Some(k)) => {
            let out = root.join(k.initramfs());
            say(format!("kernel {}: writing its GSE initramfs /{}", k.release, k.initramfs()));
            crate::initramfs::write(&k.release, root, config, None, false, &out)?;
            Ok(())
        }
    }
}

/// `SOURCE_DATE_EPOCH` when set (the reproducible-builds convention), else the
/// newest time in the tree as it was given: the same for every copy of it.
fn build_epoch(root: &Path) -> Result<(i64, i64), Failure> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let secs = v.to_string_lossy().trim().parse::<i64>().map_err(|_| {
            Failure::Error(format!("SOURCE_DATE_EPOCH='{}' is not a number of seconds", v.to_string_lossy()))
        })?;
        return Ok((secs, 0));
    }
    let mut newest = (0, 0);
    walk_same_fs(root, &mut |_, m| newest = newest.max((m.mtime(), m.mtime_nsec())))?;
    Ok(newest)
}

/// Sets every time newer than `epoch` (what the build wrote) to `epoch`.
fn clamp_times(root: &Path, epoch: (i64, i64)) -> Result<(), Failure> {
    use nix::sys::{
        stat::{UtimensatFlags, utimensat},
        time::TimeSpec,
    };
    let mut newer = Vec::new();
    walk_same_fs(root, &mut |p, m| {
        if (m.mtime(), m.mtime_nsec()) > epoch {
            newer.push(p.to_owned());
        }
    })?;
    let at = TimeSpec::new(epoch.0, epoch.1);
    for p in newer {
        utimensat(None, &p, &at, &at, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| Failure::Error(format!("setting the time of {}: {e}", p.display())))?;
    }
    Ok(())
}

/// Calls `f` on `root` and everything below it on the same filesystem.
fn walk_same_fs(root: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<(), Failure> {
    let meta = fs::symlink_metadata(root).map_err(fail(root.display()))?;
    let dev = meta.dev();
    f(root, &meta);
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).map_err(fail(dir.display()))?.flatten() {
            let path = e.path();
            let m = fs::symlink_metadata(&path).map_err(fail(path.display()))?;
            f(&path, &m);
            if m.is_dir() && m.dev() == dev {
                dirs.push(path);
            }
        }
    }
    Ok(())
}

fn run_hook(root: &Path, hook: &Path, i: usize) -> Result<(), Failure> {
    let script = fs::read(hook).map_err(fail(format!("reading hook {}", hook.display())))?;
    let inside = format!("tmp/.gse-hook-{i}");
    put(root, &inside, &script, 0o755)?;
    let mut mounts = Mounts::new();
    let result = (|| {
        for (src, dst) in [("/proc", "proc"), ("/sys", "sys"), ("/dev", "dev")] {
            mounts
                .mount(
                    &format!("hook {}", hook.display()),
                    src,
                    &at(root, dst, true)?,
                    "none",
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    "",
                )
                .map_err(|e| Failure::Error(e.to_string()))?;
        }
        let out = Command::new("chroot")
            .arg(root)
            .arg("/bin/sh")
            .arg(format!("/{inside}"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .map_err(fail("running chroot"))?;
        if !out.status.success() {
            return Err(Failure::Error(format!(
                "hook {} failed ({}); its output:\n{}{}",
                hook.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    })();
    // Recursive binds that cannot come down plainly are detached.
    mounts.unwind();
    if let Ok(p) = at(root, &inside, false) {
        let _ = fs::remove_file(p);
    }
    result
}

/// GSE's systemd units (installed in every image; enabled where systemd runs).
const UNITS: [(&str, &[u8]); 3] = [
    ("gsed.service", include_bytes!("../../init-scripts/systemd/gsed.service")),
    ("gse-boot-complete.service", include_bytes!("../../init-scripts/systemd/gse-boot-complete.service")),
    ("gse-record-shutdown.service", include_bytes!("../../init-scripts/systemd/gse-record-shutdown.service")),
];

/// The init system an image boots.
/// The dracut module (`dracut --add gse`).
const DRACUT_MODULE: [(&str, &[u8]); 4] = [
    ("module-setup.sh", include_bytes!("../../init-scripts/initramfs/dracut/90gse/module-setup.sh")),
    ("parse-gse.sh", include_bytes!("../../init-scripts/initramfs/dracut/90gse/parse-gse.sh")),
    ("mount-gse.sh", include_bytes!("../../init-scripts/initramfs/dracut/90gse/mount-gse.sh")),
    ("gse-root.service", include_bytes!("../../init-scripts/initramfs/dracut/90gse/gse-root.service")),
];

#[derive(Debug, PartialEq, Eq)]
enum Init {
    OpenRc,
    Systemd,
}

/// Where the image's `/sbin/init` leads: to systemd, or (anything else, as on
/// every OpenRC lab machine) OpenRC.
fn init_system(root: &Path) -> Result<Init, Failure> {
    let init = at(root, "sbin/init", true)?;
    let systemd = init.file_name().is_some_and(|n| n == "systemd") && init.exists();
    Ok(if systemd { Init::Systemd } else { Init::OpenRc })
}

fn install_gse(root: &Path, config: &Path) -> Result<(), Failure> {
    let me = std::env::current_exe().map_err(fail("finding gsectl"))?;
    let gsed = me.with_file_name("gsed");
    let bin = |p: &Path| fs::read(p).map_err(fail(format!("reading {}", p.display())));
    put(root, "usr/sbin/gsed", &bin(&gsed)?, 0o755)?;
    put(root, "usr/bin/gsectl", &bin(&me)?, 0o755)?;
    put(root, "usr/share/dbus-1/system.d/org.gentoo.Gse1.conf", gse_dbus::POLICY.as_bytes(), 0o644)?;
    put(
        root,
        "usr/share/polkit-1/actions/org.gentoo.gse1.policy",
        include_bytes!("../../dbus/org.gentoo.gse1.policy"),
        0o644,
    )?;
    put(
        root,
        "usr/share/dbus-1/system-services/org.gentoo.Gse1.service",
        include_bytes!("../../dbus/org.gentoo.Gse1.service"),
        0o644,
    )?;
    for (unit, data) in UNITS {
        put(root, &format!("usr/lib/systemd/system/{unit}"), data, 0o644)?;
    }
    match init_system(root)? {
        // What `systemctl enable` does, from each unit's [Install]: the image
        // boots with GSE's units on, and no SysV-looking script stands in the
        // way of an administrator's own `systemctl enable`.
        Init::Systemd => {
            let names: Vec<&str> = UNITS.iter().map(|(unit, _)| *unit).collect();
            say(format!("the image runs systemd: enabling {}", names.join(", ")));
            for (unit, _) in UNITS {
                link(
                    root,
                    &format!("etc/systemd/system/multi-user.target.wants/{unit}"),
                    &format!("/usr/lib/systemd/system/{unit}"),
                )?;
            }
        }
        Init::OpenRc => {
            put(root, "etc/init.d/gsed", include_bytes!("../../init-scripts/openrc/gsed"), 0o755)?;
            put(root, "etc/conf.d/gsed", include_bytes!("../../init-scripts/openrc/gsed.confd"), 0o644)?;
            link(root, "etc/runlevels/default/gsed", "/etc/init.d/gsed")?;
            put(root, "etc/init.d/gse-unmount", include_bytes!("../../init-scripts/openrc/gse-unmount"), 0o755)?;
            link(root, "etc/runlevels/shutdown/gse-unmount", "/etc/init.d/gse-unmount")?;
        }
    }
    put(root, "usr/lib/gse/gse-hook.sh", include_bytes!("../../init-scripts/initramfs/gse-hook.sh"), 0o755)?;
    for (f, data) in DRACUT_MODULE {
        put(
            root,
            &format!("usr/lib/dracut/modules.d/90gse/{f}"),
            data,
            if f.ends_with(".sh") { 0o755 } else { 0o644 },
        )?;
    }
    add_group(root, "gse")?;
    let checked = gsed::config::check_tree(config).map_err(|errors| {
        Failure::Error(format!(
            "{} is not a valid config.d:\n{}",
            config.display(),
            errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
        ))
    })?;
    drop(checked);
    for f in gsed::config::walk(config) {
        let rel = f.strip_prefix(config).expect("under config").to_string_lossy().into_owned();
        let mode =
            fs::metadata(&f).map(|m| if m.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 }).unwrap_or(0o644);
        let data = fs::read(&f).map_err(fail(format!("reading {}", f.display())))?;
        put(root, &format!("usr/share/gse/config.d/{rel}"), &data, mode)?;
    }
    Ok(())
}

/// Adds a system group (for the D-Bus policy: members may change state) unless
/// the image has it, with the first free gid from 100 up; idempotent.
fn add_group(root: &Path, name: &str) -> Result<(), Failure> {
    let path = at(root, "etc/group", true)?;
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    if text.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    let used: Vec<u32> = text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect();
    let gid = (100..1000)
        .find(|g| !used.contains(g))
        .ok_or_else(|| Failure::Error("no free system gid for group gse".into()))?;
    let mut new = text;
    if !new.ends_with('\n') && !new.is_empty() {
        new.push('\n');
    }
    new.push_str(&format!("{name}:x:{gid}:\n"));
    let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    put(root, "etc/group", new.as_bytes(), mode)?;
    let gshadow_path = at(root, "etc/gshadow", true)?;
    if let Ok(gshadow) = fs::read_to_string(&gshadow_path) {
        let mode = fs::metadata(&gshadow_path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o640);
        put(root, "etc/gshadow", format!("{gshadow}{name}:!::\n").as_bytes(), mode)?;
    }
    Ok(())
}

/// What every client must regenerate for itself, relative to the root.
const PER_MACHINE: &[&str] = &[
    "var/lib/dbus/machine-id",
    "root/.bash_history",
    "root/.lesshst",
    "var/lib/random-seed",
    "var/lib/systemd/random-seed",
];
/// Directories emptied (caches, logs, temporary files).
const EMPTIED: &[&str] = &[
    "tmp",
    "var/tmp",
    "var/log",
    "var/cache/apt/archives",
    "var/cache/distfiles",
    "var/cache/binpkgs",
    "var/cache/edb/dep",
    "var/lib/apt/lists",
];

fn stateless(root: &Path, version: &str) -> Result<(), Failure> {
    for d in ["user-data", "boot", "proc", "sys", "dev", "run", "tmp", "var/tmp", "home", "root"] {
        fs::create_dir_all(at(root, d, true)?).map_err(fail(format!("creating /{d}")))?;
    }
    put(root, "etc/gse-release", format!("NAME=GSE\nVERSION={version}\n").as_bytes(), 0o644)?;
    let mut removed = 0;
    let rm = |p: &Path, removed: &mut usize| -> Result<(), Failure> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(fail(format!("removing {}", p.display())))?,
            Ok(_) => fs::remove_file(p).map_err(fail(format!("removing {}", p.display())))?,
            Err(_) => return Ok(()),
        }
        *removed += 1;
        Ok(())
    };
    for f in PER_MACHINE {
        rm(&at(root, f, false)?, &mut removed)?;
    }
    // An empty machine-id makes systemd (and dbus through it) create one at boot.
    if at(root, "etc/machine-id", true)?.exists() {
        put(root, "etc/machine-id", b"", 0o444)?;
    }
    if let Ok(rd) = fs::read_dir(at(root, "etc/ssh", true)?) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                rm(&e.path(), &mut removed)?;
            }
        }
    }
    for d in EMPTIED {
        let Ok(rd) = fs::read_dir(at(root, d, true)?) else { continue };
        for e in rd.flatten() {
            // Keep the directory layout of /var/log (services expect it), drop the files.
            if *d == "var/log" && e.file_type().is_ok_and(|t| t.is_dir()) {
                for f in gsed::config::walk(&e.path()) {
                    rm(&f, &mut removed)?;
                }
                continue;
            }
            if *d == "var/cache/apt/archives" && e.file_name() == "partial" {
                continue;
            }
            rm(&e.path(), &mut removed)?;
        }
    }
    say(format!("removed {removed} per-machine, cache, log and temporary entries"));
    Ok(())
}

/// Writes the tree as a tar.zst to a temporary name, then renames it into place.
/// Returns the sha256, the size and the number of entries.
fn write_stage4(root: &Path, out: &Path) -> Result<(String, u64, usize), Failure> {
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> Result<usize, Failure> {
        let file = File::create(&tmp).map_err(fail(format!("creating {}", tmp.display())))?;
        let zst = zstd::Encoder::new(BufWriter::new(file), 3).map_err(fail("starting zstd"))?;
        let mut tar = tar::Builder::new(zst);
        let n = append_tree(&mut tar, root)?;
        let zst = tar.into_inner().map_err(fail("finishing the archive"))?;
        let mut w = zst.finish().map_err(fail("finishing zstd"))?;
        w.flush().map_err(fail("writing the image"))?;
        w.get_ref().sync_all().map_err(fail("syncing the image"))?;
        Ok(n)
    })();
    let entries = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).map_err(fail(format!("placing {}", out.display())))?;
    let (sha, size) = gsed::servers::manifest::hash_file(out).map_err(fail("reading the image back"))?;
    Ok((sha, size, entries))
}

/// Appends the tree in pre-order (each directory right before its contents, as
/// tar expects for restoring directory times), children in name order.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, root: &Path) -> Result<usize, Failure> {
    let meta = fs::symlink_metadata(root).map_err(fail(root.display()))?;
    let dev = meta.dev();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // The root itself first: unpacked, it gives every slot the image's mode and
    // times, so two slots installed seconds apart still compare equal.
    append_entry(tar, root, Path::new("./"), &meta, &mut links)?;
    let mut count = 1;
    append_dir(tar, root, Path::new(""), dev, &mut links, &mut count)?;
    Ok(count)
}

fn append_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
    count: &mut usize,
) -> Result<(), Failure> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir).map_err(fail(dir.display()))?.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(fail(path.display()))?;
        append_entry(tar, &path, &rel, &meta, links)?;
        *count += 1;
        // Another filesystem mounted inside (a leftover bind) is not part of the image.
        if meta.is_dir() && meta.dev() == dev {
            append_dir(tar, root, &rel, dev, links, count)?;
        }
    }
    Ok(())
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    meta: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), Failure> {
    let err = fail(format!("archiving {}", rel.display()));
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    let ft = meta.file_type();
    // Extended attributes travel as PAX records GNU tar reads with --xattrs.
    let names: Vec<_> = xattr_list(path);
    let pairs: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .filter_map(|n| {
            let v = xattr_get(path, &n)?;
            Some((format!("SCHILY.xattr.{}", n.to_string_lossy()), v))
        })
        .collect();
    if !pairs.is_empty() {
        tar.append_pax_extensions(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(fail(format!("archiving the xattrs of {}", rel.display())))?;
    }
    if !ft.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            h.set_entry_type(tar::EntryType::Link);
            return tar.append_link(&mut h, rel, first).map_err(err);
        }
        links.insert((meta.dev(), meta.ino()), rel.to_owned());
    }
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        tar.append_data(&mut h, rel, io::empty()).map_err(err)
    } else if ft.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        let target = fs::read_link(path).map_err(fail(format!("reading the link {}", rel.display())))?;
        tar.append_link(&mut h, rel, target).map_err(err)
    } else if ft.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        let f = File::open(path).map_err(fail(format!("reading {}", rel.display())))?;
        tar.append_data(&mut h, rel, f).map_err(err)
    } else {
        let (ty, major, minor) = if ft.is_char_device() {
            (tar::EntryType::Char, nix::sys::stat::major(meta.rdev()), nix::sys::stat::minor(meta.rdev()))
        } else if ft.is_block_device() {
            (tar::EntryType::Block, nix::sys::stat::major(meta.rdev()), nix::sys::stat::minor(meta.rdev()))
        } else if ft.is_fifo() {
            (tar::EntryType::Fifo, 0, 0)
        } else {
            say(format!("skipping the socket {}", rel.display()));
            return Ok(());
        };
        h.set_entry_type(ty);
        h.set_device_major(major as u32).map_err(fail("device major"))?;
        h.set_device_minor(minor as u32).map_err(fail("device minor"))?;
        tar.append_data(&mut h, rel, io::empty()).map_err(err)
    }
}

/// Extended attribute names (never following symlinks), sorted for a stable archive.
fn xattr_list(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = xattr::list(p).map(|l| l.collect()).unwrap_or_default();
    v.sort();
    v
}

fn xattr_get(p: &Path, name: &std::ffi::OsStr) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}
