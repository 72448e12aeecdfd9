//! `gsectl initramfs build`: a self-contained initramfs (cpio newc, zstd) that
//! loads the kernel modules GSE needs, runs the early-boot hook and switches root.
//! It carries gsectl (which is gsed too, under that name) and every shared
//! library `ldd` names for it, a busybox for the shell and tools, the modules
//! with their dependencies from `modules.dep` (those loaded only on demand
//! xz-compressed, for busybox's insmod), and a copy of config.d; with
//! `--controller`, also what a blank machine's install runs (DESIGN §12).
//! Entries are sorted with fixed times and owners, so the same inputs give the
//! same bytes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Args;

use crate::Failure;

/// Modules /init loads on every boot (those built into the kernel are skipped).
pub const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "failover",
    "net_failover",
    "e1000",
    "e1000e",
    "ext4",
    // ext4 and btrfs checksum metadata with crc32c, which the crypto API asks
    // for by alias when a filesystem mounts: no modprobe here answers that, so
    // it is loaded up front (built into some flavours, a module in others).
    "crc32c_intel",
    "crc32c_generic",
    "overlay",
];

/// Modules carried but loaded only when asked for: a filesystem when a mount
/// needs it (the kernel runs the initramfs's `/sbin/modprobe fs-NAME`), so a
/// machine whose slots are ext4 never pays for btrfs; the others by hand
/// (`modprobe loop` in a rescue shell).
pub const ON_DEMAND: &[&str] = &["btrfs", "squashfs", "loop"];

#[derive(Args, Debug)]
pub struct InitramfsBuildArgs {
    /// Kernel version (the directory under lib/modules).
    #[arg(long)]
    kver: String,
    /// Root that holds lib/modules/KVER (default /).
    #[arg(long, default_value = "/")]
    modules_root: PathBuf,
    /// The initramfs to write (zstd-compressed cpio).
    #[arg(long)]
    out: PathBuf,
    /// config.d to carry (default /usr/share/gse/config.d).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The busybox to carry (default: the one on PATH; a static one is best).
    #[arg(long)]
    busybox: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// The installer ("controller", DESIGN §12): also lays out and installs a
    /// blank machine, or runs it diskless. Carries sfdisk, wipefs, partx and
    /// the mkfs tools drives.conf needs, and GRUB's BIOS images made here by
    /// grub-mkimage when drives.conf says loader = "grub".
    #[arg(long)]
    controller: bool,
}

fn say(s: impl AsRef<str>) {
    eprintln!("initramfs: {}", s.as_ref());
}

/// An archive under construction: path inside → (mode, content or link target).
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Node>,
}

enum Node {
    Dir,
    File(Vec<u8>, u32),
    Link(String),
}

impl Tree {
    fn dirs_for(&mut self, path: &str) {
        let mut acc = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries.entry(acc.clone()).or_insert(Node::Dir);
        }
    }
    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.dirs_for(path);
        self.entries.insert(path.to_owned(), Node::File(data, mode));
    }
    fn link(&mut self, path: &str, target: &str) {
        self.dirs_for(path);
        self.entries.entry(path.to_owned()).or_insert(Node::Link(target.to_owned()));
    }
    fn dir(&mut self, path: &str) {
        self.dirs_for(&format!("{path}/x"));
    }
    /// A host file at the same path inside, following symlinks for the content.
    fn host_file(&mut self, host: &Path) -> Result<(), Failure> {
        let data = fs::read(host).map_err(|e| Failure::Error(format!("reading {}: {e}", host.display())))?;
        let mode = fs::metadata(host).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o755);
        self.file(host.to_string_lossy().trim_start_matches('/'), data, mode);
        Ok(())
    }
}

/// The shared libraries (and loader) a dynamic binary needs, from `ldd`.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>, Failure> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| Failure::Error(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        && (text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable"))
    {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        } else if line.contains("not found") {
            return Err(Failure::Error(format!("{}: ldd cannot find {}", binary.display(), line.trim())));
        }
    }
    Ok(libs)
}

/// Modules in load order (dependencies first), as paths relative to the
/// modules directory, resolved from `modules.dep`.
pub fn resolve_modules(modules_dep: &str, wanted: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(module_name(m), (m.trim().to_owned(), d.split_whitespace().map(String::from).collect()));
        }
    }
    let by_path: BTreeMap<String, String> = deps.values().map(|(p, _)| (p.clone(), module_name(p))).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        by_path: &BTreeMap<String, String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        if let Some((path, ds)) = deps.get(name) {
            for d in ds {
                let dn = by_path.get(d).cloned().unwrap_or_else(|| d.clone());
                visit(&dn, deps, by_path, seen, order);
            }
            order.push(path.clone());
        }
    }
    let mut builtin = Vec::new();
    for w in wanted {
        if deps.contains_key(&norm(w)) {
            visit(&norm(w), &deps, &by_path, &mut seen, &mut order);
        } else {
            builtin.push((*w).to_owned());
        }
    }
    (order, builtin)
}

/// A module's name as the kernel and `modules.alias` spell it, from its path
/// in `modules.dep` (`kernel/arch/x86/crypto/crc32c-intel.ko` → `crc32c_intel`).
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    norm(base.split(".ko").next().unwrap_or(base))
}

/// The kernel takes `-` and `_` in a module's name as one: `_` here.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// `/init`: loads the modules, runs the hook (which waits for the devices) and
/// switches root (a shellchecked file beside the hook).
const INIT: &[u8] = include_bytes!("../../init-scripts/initramfs/init");
const MODPROBE: &[u8] = include_bytes!("../../init-scripts/initramfs/modprobe");

pub fn build(args: InitramfsBuildArgs) -> Result<u8, Failure> {
    if args.out.exists() && !args.force {
        return Err(Failure::Error(format!("{} exists; pass --force to replace it", args.out.display())));
    }
    let config = args.config.unwrap_or_else(|| PathBuf::from("/usr/share/gse/config.d"));
    let (entries, size) = write(&args.kver, &args.modules_root, &config, args.busybox, args.controller, &args.out)?;
    say(format!("wrote {} ({entries} entries, {size} bytes)", args.out.display()));
    println!("{}  {size} bytes", args.out.display());
    Ok(0)
}

/// Writes the initramfs for kernel `kver` (modules from `modules_root`,
/// config.d from `config`) to `out`, replacing it; returns its entries and bytes.
pub fn write(
    kver: &str,
    modules_root: &Path,
    config: &Path,
    busybox: Option<PathBuf>,
    controller: bool,
    out: &Path,
) -> Result<(usize, u64), Failure> {
    let mut tree = Tree::default();
    for d in ["proc", "sys", "dev", "run", "sysroot", "tmp", "user-data", "boot", "etc/gse"] {
        tree.dir(d);
    }
    add_modules(&mut tree, modules_root, kver)?;
    let busybox = match busybox {
        Some(b) => b,
        None => which("busybox")
            .ok_or_else(|| Failure::Error("no busybox on PATH (apt-get install busybox-static)".into()))?,
    };
    add_programs(&mut tree, &busybox)?;
    tree.file("init", INIT.to_vec(), 0o755);
    // In place of busybox's applet: see the script.
    tree.file("bin/modprobe", MODPROBE.to_vec(), 0o755);
    tree.file("usr/lib/gse/gse-hook.sh", include_bytes!("../../init-scripts/initramfs/gse-hook.sh").to_vec(), 0o755);
    add_config(&mut tree, config)?;
    if controller {
        add_installer(&mut tree, config)?;
    }

    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let written = write_cpio_zst(&tree, &tmp)
        .and_then(|_| fs::rename(&tmp, out).map_err(|e| Failure::Error(format!("placing {}: {e}", out.display()))));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    Ok((tree.entries.len(), fs::metadata(out).map(|m| m.len()).unwrap_or(0)))
}

/// The modules GSE needs with their dependencies, a `modules.dep` of just
/// those, and the load order for /init.
fn add_modules(tree: &mut Tree, modules_root: &Path, kver: &str) -> Result<(), Failure> {
    let moddir = modules_root.join("lib/modules").join(kver);
    let dep = fs::read_to_string(moddir.join("modules.dep"))
        .map_err(|e| Failure::Error(format!("cannot read {}: {e}", moddir.join("modules.dep").display())))?;
    let (order, builtin) = resolve_modules(&dep, MODULES);
    say(format!(
        "{} modules for kernel {kver} ({} built in or absent: {})",
        order.len(),
        builtin.len(),
        builtin.join(", ")
    ));
    let mut included: BTreeSet<String> = order.iter().cloned().collect();
    let mut on_demand_lists = Vec::new();
    for fs_name in ON_DEMAND {
        let (on_demand, _) = resolve_modules(&dep, &[fs_name]);
        if on_demand.is_empty() {
            continue; // built in, or not in this kernel
        }
        included.extend(on_demand.iter().cloned());
        on_demand_lists.push((fs_name, on_demand));
    }
    // What only a mount or a hand asks for is kept compressed (busybox's insmod
    // unpacks it as it loads it): the kernel then unpacks a quarter less of the
    // archive at every boot (btrfs and its helpers are 4 MB: 0.05 s under qemu).
    let xz = which("xz");
    if xz.is_none() {
        say("no xz on PATH (apt-get install xz-utils): on-demand modules are stored uncompressed");
    }
    let stored = |m: &str| match &xz {
        Some(_) if !order.iter().any(|o| o == m) => format!("{m}.xz"),
        _ => m.to_owned(),
    };
    for m in &included {
        let mut data = fs::read(moddir.join(m)).map_err(|e| Failure::Error(format!("reading module {m}: {e}")))?;
        let name = stored(m);
        if let (Some(xz), true) = (&xz, name != *m) {
            data = xz_compress(xz, &data).map_err(|e| Failure::Error(format!("compressing module {m}: {e}")))?;
        }
        tree.file(&format!("lib/modules/{kver}/{name}"), data, 0o644);
    }
    for (fs_name, list) in on_demand_lists {
        let list: String = list.iter().map(|m| format!("{}\n", stored(m))).collect();
        tree.file(&format!("etc/gse/modules.d/{fs_name}"), list.into_bytes(), 0o644);
    }
    // modules.dep names the files as they are here (as depmod does).
    let dep_lines: String = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(m, _)| included.contains(m.trim()))
        .map(|(m, deps)| {
            let deps: String = deps.split_whitespace().map(|d| format!(" {}", stored(d))).collect();
            format!("{}:{deps}\n", stored(m.trim()))
        })
        .collect();
    tree.file(&format!("lib/modules/{kver}/modules.dep"), dep_lines.into_bytes(), 0o644);
    // Without modules.alias every module loads, as before there was a check.
    let aliases = fs::read_to_string(moddir.join("modules.alias")).unwrap_or_default();
    tree.file("etc/gse/modules", load_list(&order, &aliases).into_bytes(), 0o644);
    Ok(())
}

/// /init's list: a module per line, in load order, followed by the CPU
/// patterns of `modules.alias` when it is for a CPU feature (crc32c_intel
/// needs SSE4.2): /init loads it only on a CPU whose modalias matches one, as
/// udev would; elsewhere its load fails anyway, after about 0.1 s under qemu.
pub fn load_list(order: &[String], modules_alias: &str) -> String {
    let mut cpu: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for line in modules_alias.lines() {
        if let ["alias", pattern, module] = line.split_whitespace().collect::<Vec<_>>()[..]
            && pattern.starts_with("cpu:")
        {
            cpu.entry(norm(module)).or_default().push(pattern);
        }
    }
    order
        .iter()
        .map(|path| match cpu.get(&module_name(path)) {
            Some(patterns) => format!("{path} {}\n", patterns.join(" ")),
            None => format!("{path}\n"),
        })
        .collect()
}

/// gsectl (which is gsed too when called so: one copy of the code, not two),
/// busybox with a link per applet, and every shared library they need. btrfs
/// subvolumes are snapshotted through ioctls: no btrfs-progs here.
fn add_programs(tree: &mut Tree, busybox: &Path) -> Result<(), Failure> {
    let me = std::env::current_exe().map_err(|e| Failure::Error(format!("finding gsectl: {e}")))?;
    // GNU tar unpacks an update installed at the console prompt (busybox's
    // keeps no xattrs and knows no --numeric-owner).
    let gnu_tar = which("tar").filter(|t| {
        Command::new(t).arg("--version").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
    });
    let mut binaries = vec![(me.as_path(), "usr/bin/gsectl"), (busybox, "bin/busybox")];
    if let Some(t) = &gnu_tar {
        binaries.push((t.as_path(), "bin/tar"));
    }
    tree.link("usr/sbin/gsed", "../bin/gsectl");
    let mut libs = BTreeSet::new();
    for (host, inside) in binaries {
        let data = fs::read(host).map_err(|e| Failure::Error(format!("reading {}: {e}", host.display())))?;
        tree.file(inside, data, 0o755);
        libs.extend(libraries(host)?);
    }
    for lib in &libs {
        tree.host_file(lib)?;
    }
    say(format!(
        "gsectl (also gsed), busybox{} and {} shared libraries",
        if gnu_tar.is_some() { ", GNU tar" } else { "" },
        libs.len()
    ));
    let applets =
        Command::new(busybox).arg("--list").output().map_err(|e| Failure::Error(format!("running busybox: {e}")))?;
    let real = |a: &str| a == "busybox" || (a == "tar" && gnu_tar.is_some());
    for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| !a.is_empty() && !real(a)) {
        tree.link(&format!("bin/{applet}"), "busybox");
    }
    tree.link("sbin", "bin");
    Ok(())
}

/// GRUB modules in the core image: the disk, both partition tables, every
/// filesystem drives.conf may give the boot partition, and what grub.cfg uses.
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "xfs",
    "btrfs",
    "search",
    "search_fs_file",
    "normal",
    "linux",
    "configfile",
    "echo",
    "test",
];

/// What a blank machine's install runs: the partitioning and mkfs tools for
/// the filesystems of the carried drives.conf, and GRUB's boot.img and a
/// core.img that finds the boot partition by its grub.cfg.
fn add_installer(tree: &mut Tree, config: &Path) -> Result<(), Failure> {
    let loaded = gsed::config::load(&[config.to_path_buf()]).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Failure::Error(format!("{}: {}", config.display(), list.join("; ")))
    })?;
    let drives = &loaded.settings.drives;
    let mut tools = vec!["sfdisk", "wipefs", "partx"];
    for p in &drives.partition {
        tools.extend_from_slice(match p.fstype.as_str() {
            "ext4" => &["mkfs.ext4", "mke2fs"][..],
            "btrfs" => &["mkfs.btrfs", "btrfs"],
            "xfs" => &["mkfs.xfs"],
            "vfat" => &["mkfs.vfat"],
            "swap" => &["mkswap"],
            _ => &[],
        });
    }
    tools.sort_unstable();
    tools.dedup();
    let mut libs = BTreeSet::new();
    for t in &tools {
        let host = which(t).ok_or_else(|| {
            Failure::Error(format!("the installer needs {t} (util-linux, e2fsprogs or the filesystem's tools) on PATH"))
        })?;
        let data = fs::read(&host).map_err(|e| Failure::Error(format!("reading {}: {e}", host.display())))?;
        tree.file(&format!("usr/sbin/{t}"), data, 0o755);
        libs.extend(libraries(&host)?);
    }
    for lib in &libs {
        tree.host_file(lib)?;
    }
    if Path::new("/etc/mke2fs.conf").is_file() {
        tree.host_file(Path::new("/etc/mke2fs.conf"))?;
    }
    let mut carried = tools.join(", ");
    if drives.loader == "grub" {
        let dir = Path::new("/usr/lib/grub/i386-pc");
        let missing = || {
            Failure::Error(format!(
                "drives.conf says loader = \"grub\": the installer needs GRUB's BIOS files in {} and grub-mkimage \
                 (Debian: grub-pc-bin; Gentoo: sys-boot/grub with GRUB_PLATFORMS=pc)",
                dir.display()
            ))
        };
        let boot = fs::read(dir.join("boot.img")).map_err(|_| missing())?;
        let tmp = std::env::temp_dir().join(format!("gse-grub-{}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(|e| Failure::Error(format!("creating {}: {e}", tmp.display())))?;
        let made = grub_core(dir, &tmp);
        let _ = fs::remove_dir_all(&tmp);
        let core = made?;
        let grub = gsed::boot::loader::GRUB_DIR;
        tree.file(&format!("{grub}/boot.img"), boot, 0o644);
        tree.file(&format!("{grub}/core.img"), core, 0o644);
        carried.push_str(", GRUB (BIOS)");
    }
    say(format!("installer: {carried} and {} shared libraries", libs.len()));
    Ok(())
}

/// GRUB's core image from the modules in `dir`, made in `tmp`: it finds the
/// boot partition by the grub.cfg GSE writes there and reads it.
fn grub_core(dir: &Path, tmp: &Path) -> Result<Vec<u8>, Failure> {
    let early = tmp.join("early.cfg");
    let (cfg, core) = (gsed::boot::loader::CONFIG, tmp.join("core.img"));
    let prefix = Path::new(cfg).parent().map(|p| p.display().to_string()).unwrap_or_default();
    fs::write(&early, format!("search --no-floppy --file --set=root /{cfg}\nset prefix=($root)/{prefix}\n"))
        .map_err(|e| Failure::Error(format!("writing {}: {e}", early.display())))?;
    let out = Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d"])
        .arg(dir)
        .arg("-o")
        .arg(&core)
        .arg("-c")
        .arg(&early)
        .args(["-p", &format!("/{prefix}")])
        .args(GRUB_MODULES)
        .output()
        .map_err(|e| Failure::Error(format!("cannot run grub-mkimage: {e}")))?;
    if !out.status.success() {
        return Err(Failure::Error(format!("grub-mkimage: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    fs::read(&core).map_err(|e| Failure::Error(format!("reading {}: {e}", core.display())))
}

/// A copy of `config` (checked first) as early boot's image defaults.
fn add_config(tree: &mut Tree, config: &Path) -> Result<(), Failure> {
    gsed::config::check_tree(config).map_err(|errors| {
        Failure::Error(format!(
            "{} is not a valid config.d:\n{}",
            config.display(),
            errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
        ))
    })?;
    for f in gsed::config::walk(config) {
        let rel = f.strip_prefix(config).expect("under config").to_string_lossy().into_owned();
        let data = fs::read(&f).map_err(|e| Failure::Error(format!("reading {}: {e}", f.display())))?;
        tree.file(&format!("usr/share/gse/config.d/{rel}"), data, 0o644);
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|p| p.is_file()))
}

/// `data` as xz would store it for busybox's decoder: LZMA2 alone (it has no
/// BCJ filters) and a CRC32 check; preset 6, whose 8 MiB dictionary covers
/// any module.
fn xz_compress(xz: &Path, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new(xz)
        .args(["-6", "--check=crc32", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("xz has no stdin"))?;
    // Written from a thread: xz's output pipe would fill while its input is fed.
    let out = std::thread::scope(|s| {
        let feed = s.spawn(move || stdin.write_all(data));
        let out = child.wait_with_output();
        let fed = feed.join().unwrap_or_else(|_| Err(std::io::Error::other("feeding xz panicked")));
        out.and_then(|o| fed.map(|()| o))
    })?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("xz: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(out.stdout)
}

/// How hard to compress: the kernel unpacks zstd several times faster than gzip,
/// and at this level the archive is half the size of gzip's default.
const ZSTD_LEVEL: i32 = 19;

/// The window may cover the whole archive (the level's own is 8 MiB): gsed's
/// code, libc and the modules then match across files, 4% smaller. The kernel
/// unpacks an initramfs with a window of that size (a one-off allocation while
/// it unpacks; 27 is the most a zstd decoder takes by default).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// cpio "newc" with fixed times and owners, zstd-compressed.
fn write_cpio_zst(tree: &Tree, out: &Path) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Error(format!("writing {}: {e}", out.display()));
    let cpio = cpio_newc(tree).map_err(io)?;
    let file = fs::File::create(out).map_err(io)?;
    let mut z = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), ZSTD_LEVEL).map_err(io)?;
    // With the size known the frame's window is the archive's size, not the maximum.
    z.set_pledged_src_size(Some(cpio.len() as u64)).map_err(io)?;
    z.include_contentsize(true).map_err(io)?;
    z.window_log(ZSTD_WINDOW_LOG_MAX).map_err(io)?;
    z.write_all(&cpio).map_err(io)?;
    let mut w = z.finish().map_err(io)?;
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)
}

/// The tree as a cpio "newc" archive.
fn cpio_newc(tree: &Tree) -> std::io::Result<Vec<u8>> {
    let mut cpio = Vec::new();
    let mut ino = 1u32;
    let mut entry = |w: &mut dyn Write, name: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
        let namesize = name.len() + 1;
        write!(
            w,
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        )?;
        ino += 1;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        w.write_all(&[0u8; 3][..(4 - (110 + namesize) % 4) % 4])?;
        w.write_all(data)?;
        w.write_all(&[0u8; 3][..(4 - data.len() % 4) % 4])
    };
    for (path, node) in &tree.entries {
        let r = match node {
            Node::Dir => entry(&mut cpio, path, 0o040755, &[]),
            Node::File(data, mode) => entry(&mut cpio, path, 0o100000 | mode, data),
            Node::Link(target) => entry(&mut cpio, path, 0o120777, target.as_bytes()),
        };
        r?;
    }
    entry(&mut cpio, "TRAILER!!!", 0, &[])?;
    Ok(cpio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_resolve_with_dependencies_first() {
        let dep = "kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/fs/btrfs/btrfs.ko.xz: kernel/lib/raid6/raid6_pq.ko.xz kernel/crypto/xor.ko.xz\n\
                   kernel/lib/raid6/raid6_pq.ko.xz:\nkernel/crypto/xor.ko.xz:\n";
        let (order, builtin) = resolve_modules(dep, &["virtio_blk", "btrfs", "ext4"]);
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/lib/raid6/raid6_pq.ko.xz",
                "kernel/crypto/xor.ko.xz",
                "kernel/fs/btrfs/btrfs.ko.xz"
            ]
        );
        assert_eq!(builtin, ["ext4"]);
    }

    #[test]
    fn a_module_for_a_cpu_feature_carries_its_cpu_patterns() {
        let alias = "alias crc32c crc32c_intel\n\
                     alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n\
                     alias cpu:type:x86,ven*fam*mod*:feature:*0099* crc32c_intel\n\
                     alias cpu:type:x86,ven0000fam0006mod0086:feature:* intel_uncore\n\
                     alias virtio:d00000001v* virtio_net\n";
        let order =
            ["kernel/arch/x86/crypto/crc32c-intel.ko".to_owned(), "kernel/drivers/net/virtio_net.ko".to_owned()];
        assert_eq!(
            load_list(&order, alias),
            "kernel/arch/x86/crypto/crc32c-intel.ko cpu:type:x86,ven*fam*mod*:feature:*0094* \
             cpu:type:x86,ven*fam*mod*:feature:*0099*\nkernel/drivers/net/virtio_net.ko\n"
        );
        assert_eq!(load_list(&order, ""), "kernel/arch/x86/crypto/crc32c-intel.ko\nkernel/drivers/net/virtio_net.ko\n");
    }
}
