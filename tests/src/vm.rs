//! Whole boots of a real OpenRC or systemd client under qemu (TCG), for the VM
//! suite and the boot benchmark.
//!
//! A [`Kit`] is built once per process and init system ([`kit`] for OpenRC, every
//! lab machine's, and [`systemd_kit`]): a Debian root from `debootstrap` and
//! Debian's cloud kernel (both cached under `target/vm-cache/`, keyed by their
//! recipe), made into a GSE image by `gsectl image build --install-gse`, the GSE
//! initramfs, and a template disk laid out by `gsectl provision --format` with the
//! image in both slots (`gsectl install`). The systemd kit also carries the
//! initrds Debian's dracut builds in that root with `dracut --add gse` (its
//! default systemd initrd, and the shell initrd of `--omit systemd`). Each
//! scenario boots its own copy of that
//! disk ([`Vm`]) with its NIC on a tap device inside its own network namespace
//! ([`Lab`]: dnsmasq and two nginx on TEST-NET addresses).
//!
//! The image carries a test service, `gse-test-report` (`tests/data/vm/`),
//! started by the init system after gsed: it waits for the verdict and prints on the
//! console `gsectl health --json`, `/run/gse/boot.json`, the first line of
//! /etc/motd and what the bus policy let a student and a member of group `gse`
//! do, then powers off (`gse.test=hold` on the kernel command line keeps it
//! running instead, and `gse.test=servers` reports the current server every
//! second until it changes).

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    ProcessGuard,
    disk::{self, Loop, MountNs},
    http::Nginx,
    keygen,
    netns::{Netns, dnsmasq, ip},
    profile_dir, publish_config, repo, require_tool, text,
};

/// The client root: what `debootstrap` is asked for. A change rebuilds the cache.
const SUITE: &str = "bookworm";
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// The other flavour of the same Debian kernel: an image that boots a kernel
/// release of its own (DESIGN §12).
const OTHER_KERNEL_PACKAGE: &str = "linux-image-amd64";
/// The modules an image carries with its kernel: what GSE's initramfs loads
/// (see `gsectl/src/initramfs.rs`), the filesystems it loads on demand, and
/// autofs4, which systemd loads from the root.
const IMAGE_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_net",
    "virtio_pci",
    "e1000",
    "e1000e",
    "ext4",
    "crc32c_intel",
    "crc32c_generic",
    "overlay",
    "loop",
    "btrfs",
    "squashfs",
    "autofs4",
];
/// Disk layout of the lab machine in the VM (MiB): boot, a, b, the rest user-data.
const DISK_MIB: u64 = 1500;
/// Longest a boot may take under TCG before the test gives up on it.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The servers of the lab namespace, as the image's server.info.conf names them.
pub const SERVERS: [(&str, &str); 2] = [("s1", "192.0.2.1"), ("s2", "192.0.2.2")];

/// A `target/release` binary (what ships, and what is small
/// and fast enough for an initramfs under TCG).
pub fn release_bin(name: &str) -> PathBuf {
    let path = target_dir().join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace --bins` before the VM suite (scripts/test.sh does)",
        path.display()
    );
    path
}

fn target_dir() -> PathBuf {
    profile_dir().parent().expect("target/<profile> has a parent").to_owned()
}

fn run(what: &str, c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn sh(what: &str, script: &str) -> String {
    run(what, Command::new("sh").args(["-ec", script]))
}

/// The init system of a client root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    OpenRc,
    Systemd,
}

impl Init {
    /// Packages of its root (`debootstrap --include`), and those kept out.
    fn packages(self) -> (&'static str, &'static str) {
        match self {
            Init::OpenRc => ("openrc,dbus,busybox,iproute2", "systemd-sysv"),
            Init::Systemd => ("systemd-sysv,dbus,udev,iproute2,busybox,dracut", ""),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Init::OpenRc => "openrc",
            Init::Systemd => "systemd",
        }
    }

    /// What the kernel command line needs to start it (systemd is /sbin/init).
    fn cmdline(self) -> &'static str {
        match self {
            Init::OpenRc => " init=/sbin/openrc-init",
            Init::Systemd => "",
        }
    }
}

/// Debian's dracut with GSE's module, run inside the systemd client root.
pub struct Dracut {
    /// `dracut --add gse`: dracut's default on a systemd root, a systemd initrd.
    pub systemd: PathBuf,
    /// `dracut --add gse --omit systemd`: the shell initrd.
    pub shell: PathBuf,
}

/// Everything the scenarios share, built once per process.
pub struct Kit {
    pub init: Init,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The image's config.d: what scenarios start from when they publish.
    pub conf: PathBuf,
    /// The lab server's signing key.
    pub secret: PathBuf,
    /// The image both templates are installed from.
    image: PathBuf,
    template: PathBuf,
    /// `target/vm-cache/run-PID`: this process's image, initramfs and disks.
    pub dir: PathBuf,
    kroot: PathBuf,
    kver: String,
    /// The systemd kit's dracut initrds.
    pub dracut: Option<Dracut>,
    /// The template of a machine whose slots are btrfs subvolumes (made on first use).
    btrfs: OnceLock<PathBuf>,
    /// The installer's initramfs (`--controller`; made on first use).
    controller: OnceLock<PathBuf>,
}

static KITS: [OnceLock<Kit>; 2] = [OnceLock::new(), OnceLock::new()];

/// The OpenRC kit of this process (built on first use).
pub fn kit() -> &'static Kit {
    KITS[0].get_or_init(|| Kit::build(Init::OpenRc))
}

/// The systemd kit of this process (built on first use).
pub fn systemd_kit() -> &'static Kit {
    KITS[1].get_or_init(|| Kit::build(Init::Systemd))
}

/// `target/vm-cache`, shared by every run on this machine.
fn cache_dir() -> PathBuf {
    let d = target_dir().join("vm-cache");
    fs::create_dir_all(&d).expect("mkdir target/vm-cache");
    d
}

static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_run_dir() {
    if let Some(dir) = RUN_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Removes the run directories of processes that are gone (killed before exit).
fn remove_dead_runs(cache: &Path) {
    for e in fs::read_dir(cache).into_iter().flatten().filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("run-") else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Holds the cache lock (another test process may be filling the cache).
struct CacheLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl CacheLock {
    fn take(cache: &Path) -> CacheLock {
        let f = fs::File::create(cache.join("lock")).expect("cache lock file");
        CacheLock(nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).expect("flock"))
    }
}

fn mirror() -> String {
    // The machine's own Debian mirror, if apt names one.
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .find_map(|l| l.strip_prefix("URIs:").map(|u| u.split_whitespace().next().unwrap_or("").to_owned()))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The debootstrapped root for the recipe, built into a temporary directory and
/// renamed into place, so an interrupted build is never taken for a cache.
fn client_root(cache: &Path, init: Init) -> PathBuf {
    let (include, exclude) = init.packages();
    let without = if exclude.is_empty() { String::new() } else { format!("-no-{exclude}") };
    let dir = cache.join(format!("root-{SUITE}-minbase-{}{without}", include.replace(',', "+")));
    if dir.is_dir() {
        return dir;
    }
    require_tool("debootstrap", "debootstrap");
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    run(
        "debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={include}")])
            .args((!exclude.is_empty()).then(|| format!("--exclude={exclude}")))
            .arg(SUITE)
            .arg(&tmp)
            .arg(mirror()),
    );
    fs::rename(&tmp, &dir).expect("place the debootstrap cache");
    dir
}

/// A Debian kernel unpacked with its modules (`boot/vmlinuz-*`, `lib/modules/*`).
fn kernel_root(cache: &Path, package: &str) -> PathBuf {
    let dir = cache.join(format!("kernel-{package}"));
    if dir.join("lib/modules").is_dir() {
        return dir;
    }
    require_tool("depmod", "kmod");
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("debs")).expect("mkdir");
    sh(
        "downloading the kernel package",
        &format!(
            "cd {debs}; apt-get download -q {package}; pkg=$(dpkg-deb -f {package}_*.deb Depends | sed 's/[ ,].*//'); apt-get download -q \"$pkg\"; dpkg -x \"$pkg\"_*.deb ..; cd ..; depmod -b . \"$(ls lib/modules)\"",
            debs = tmp.join("debs").display()
        ),
    );
    fs::remove_dir_all(tmp.join("debs")).expect("rm debs");
    fs::rename(&tmp, &dir).expect("place the kernel cache");
    dir
}

impl Kit {
    fn build(init: Init) -> Kit {
        for (tool, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("debootstrap", "debootstrap"),
            ("depmod", "kmod"),
            ("nginx", "nginx"),
            ("dnsmasq", "dnsmasq"),
        ] {
            require_tool(tool, package);
        }
        let started = Instant::now();
        let gsectl = release_bin("gsectl");
        let cache = cache_dir();
        let (root, kroot) = {
            let _lock = CacheLock::take(&cache);
            remove_dead_runs(&cache);
            (client_root(&cache, init), kernel_root(&cache, KERNEL_PACKAGE))
        };
        let kver = release_of(&kroot);
        let kernel = kroot.join(format!("boot/vmlinuz-{kver}"));

        let run_dir = cache.join(format!("run-{}", std::process::id()));
        let dir = run_dir.join(init.name());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir run dir");
        // The kit lives in a static, which is never dropped: its files go at exit.
        if RUN_DIR.set(run_dir).is_ok() {
            // SAFETY: registers a plain `extern "C" fn` that captures nothing.
            unsafe { nix::libc::atexit(remove_run_dir) };
        }
        let public = keygen(&dir, "lab");
        let secret = dir.join("lab.sec");

        // The image's config.d: the shipped tree, told about the lab's servers and
        // this disk, with the test service in the default runlevel.
        let conf = dir.join("conf");
        run("cp config.d", Command::new("cp").arg("-a").arg(repo().join("config.d")).arg(&conf));
        fs::write(conf.join("controller/services/default-runlevel"), "dbus\ngsed\ngse-test-report\n").unwrap();
        let servers: String = SERVERS
            .iter()
            .map(|(name, ip)| format!("[[server]]\nname = \"{name}\"\nurl = \"http://{ip}\"\n"))
            .collect();
        fs::write(
            conf.join("controller/server/server.info.conf"),
            format!(
                "public_key = \"{public}\"\nprobe_interval = \"2s\"\nprobe_timeout = \"1500ms\"\nfail_after = 2\nswitch_margin = 0.3\njitter = \"2s\"\nsync_interval = \"10m\"\n{servers}"
            ),
        )
        .unwrap();
        let drives = fs::read_to_string(conf.join("controller/drives.conf")).unwrap();
        let drives = drives
            .replace("device = \"/dev/sda\"", "device = \"/dev/vda\"")
            .replace("size = \"1G\"", "size = \"64M\"")
            .replace("size = \"30G\"", "size = \"600M\"");
        fs::write(conf.join("controller/drives.conf"), &drives).unwrap();
        run("gsectl config check", Command::new(&gsectl).args(["config", "check"]).arg(&conf));

        let rootfs = dir.join("rootfs");
        run("copying the client root", Command::new("cp").arg("-a").arg(&root).arg(&rootfs));
        // The reporter goes into the tree; the hook (inside the chroot) installs it.
        let data = repo().join("tests/data/vm");
        for f in ["gse-test-report.initd", "gse-test-report.service", "gse-test-report.sh"] {
            fs::copy(data.join(f), rootfs.join("tmp").join(f)).expect("copy the reporter into the root");
        }
        // The image carries its kernel, which is also the one qemu starts: its
        // slots boot without a kernel change.
        put_kernel(&rootfs, &kroot, &kver);
        let image = dir.join("image.tar.zst");
        run(
            "gsectl image build",
            Command::new(&gsectl)
                .args(["image", "build", "--rootfs"])
                .arg(&rootfs)
                .args(["--version", "vm-1", "--install-gse", "--out"])
                .arg(&image)
                .arg("--config")
                .arg(&conf)
                .arg("--hook")
                .arg(data.join("hook.sh")),
        );
        let dracut = (init == Init::Systemd).then(|| dracut_initrds(&rootfs, &kroot, &kver, &dir));
        fs::remove_dir_all(&rootfs).expect("rm rootfs");
        let initrd = dir.join("initrd.img");
        initramfs(&gsectl, &kroot, &kver, &conf, &initrd);

        // The template disk, laid out and installed the way an administrator does it.
        let template = dir.join("template.img");
        lay_out(&dir, &conf, &image, &template);
        println!(
            "vm kit ({}): client root, kernel {kver}, image, initramfs{} and template disk in {:.1} s",
            init.name(),
            if dracut.is_some() { ", dracut's initrds" } else { "" },
            started.elapsed().as_secs_f64()
        );
        Kit {
            init,
            kernel,
            initrd,
            conf,
            secret,
            image,
            template,
            dir,
            kroot,
            kver,
            dracut,
            btrfs: OnceLock::new(),
            controller: OnceLock::new(),
        }
    }

    /// A new version of the kit's image: its tree, changed by `change`, built
    /// again by `gsectl image build` as version `version` into `dir`.
    pub fn derive_image(&self, version: &str, dir: &Path, change: impl FnOnce(&Path)) -> PathBuf {
        let tree = dir.join(format!("tree-{version}"));
        fs::create_dir_all(&tree).expect("mkdir tree");
        run(
            "unpacking the kit's image",
            Command::new("tar")
                .args(["--zstd", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                .arg(&self.image)
                .arg("-C")
                .arg(&tree),
        );
        change(&tree);
        let out = dir.join(format!("image-{version}.tar.zst"));
        run(
            "gsectl image build",
            Command::new(release_bin("gsectl"))
                .args(["image", "build", "--rootfs"])
                .arg(&tree)
                .args(["--version", version, "--out"])
                .arg(&out)
                .arg("--config")
                .arg(&self.conf),
        );
        fs::remove_dir_all(&tree).expect("rm tree");
        out
    }

    /// The kit's initramfs as another `gsectl` builds it (an older release, for
    /// before/after figures); written to `out`.
    pub fn initramfs_by(&self, gsectl: &Path, out: &Path) {
        initramfs(gsectl, &self.kroot, &self.kver, &self.conf, out);
    }

    /// The template disk of a machine whose slots a and b are the subvolumes
    /// @a and @b of one btrfs partition (see [`btrfs_conf`]).
    fn btrfs_template(&self) -> &Path {
        self.btrfs.get_or_init(|| {
            let conf = self.dir.join("conf-btrfs");
            run("cp conf", Command::new("cp").arg("-a").arg(&self.conf).arg(&conf));
            btrfs_conf(&conf);
            let template = self.dir.join("template-btrfs.img");
            lay_out(&self.dir, &conf, &self.image, &template);
            template
        })
    }

    /// The kit's image (version vm-1), to publish.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The installer a blank machine boots (from a USB stick, by `-kernel`,
    /// or PXE): the kit's kernel with a `--controller` initramfs of the kit's
    /// config.d (GRUB included; grub-pc-bin is needed).
    pub fn controller(&self) -> &Path {
        self.controller.get_or_init(|| {
            require_tool("grub-mkimage", "grub-pc-bin");
            let out = self.dir.join("controller.img");
            run(
                "gsectl initramfs build --controller",
                Command::new(release_bin("gsectl"))
                    .args(["initramfs", "build", "--controller", "--force", "--kver", &self.kver, "--modules-root"])
                    .arg(&self.kroot)
                    .arg("--out")
                    .arg(&out)
                    .arg("--config")
                    .arg(&self.conf),
            );
            out
        })
    }

    /// A copy of the image's config.d to change and publish.
    pub fn conf_copy(&self, into: &Path) -> PathBuf {
        let to = into.join("config.d");
        run("cp conf", Command::new("cp").arg("-a").arg(&self.conf).arg(&to));
        to
    }
}

/// The release of the kernel unpacked at `kroot`.
fn release_of(kroot: &Path) -> String {
    fs::read_dir(kroot.join("lib/modules"))
        .expect("lib/modules")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a kernel version")
}

/// Debian's other kernel flavour (cached like the kit's): its unpacked root
/// and its release, for an image that boots a kernel of its own.
pub fn other_kernel() -> (PathBuf, String) {
    let cache = cache_dir();
    let kroot = {
        let _lock = CacheLock::take(&cache);
        kernel_root(&cache, OTHER_KERNEL_PACKAGE)
    };
    let kver = release_of(&kroot);
    (kroot, kver)
}

/// Installs kernel `kver` from `kroot` into the image tree `tree` as an
/// image builder does: `boot/vmlinuz-KVER` and the modules of
/// [`IMAGE_MODULES`] with their dependencies under `lib/modules/KVER/`
/// (indexed by depmod). Any kernel the tree had goes first.
pub fn put_kernel(tree: &Path, kroot: &Path, kver: &str) {
    sh(
        "installing a kernel into the image tree",
        &format!(
            "set -e; t={t}; k={k}; v={kver}; rm -f $t/boot/vmlinuz-* $t/boot/gse-initramfs-*; \
             rm -rf $t/lib/modules; mkdir -p $t/boot $t/lib/modules/$v; cp $k/boot/vmlinuz-$v $t/boot/; \
             for m in {mods}; do modprobe -d $k -S $v --show-depends $m 2>/dev/null || true; done \
               | awk '$1 == \"insmod\" {{ print $2 }}' | sort -u | while read -r f; do \
                 rel=${{f#$k/lib/modules/$v/}}; mkdir -p $t/lib/modules/$v/$(dirname $rel); cp $f $t/lib/modules/$v/$rel; done; \
             for f in modules.order modules.builtin modules.builtin.modinfo; do cp $k/lib/modules/$v/$f $t/lib/modules/$v/; done; \
             depmod -b $t $v; test -s $t/lib/modules/$v/modules.dep",
            t = tree.display(),
            k = kroot.display(),
            mods = IMAGE_MODULES.join(" ")
        ),
    );
}

/// Partitions, formats and installs `image` on a new disk `template` the way an
/// administrator does it: `gsectl provision --format`, then `gsectl install`,
/// with the config.d `conf` (its drives.conf names /dev/vda: a loop device here).
fn lay_out(dir: &Path, conf: &Path, image: &Path, template: &Path) {
    let gsectl = release_bin("gsectl");
    fs::File::create(template).and_then(|f| f.set_len(DISK_MIB << 20)).expect("template disk");
    let lo = Loop::attach(template);
    let ns = MountNs::new();
    let prov = dir.join("provision-conf");
    let _ = fs::remove_dir_all(&prov);
    run("cp conf", Command::new("cp").arg("-a").arg(conf).arg(&prov));
    let drives = fs::read_to_string(conf.join("controller/drives.conf")).expect("drives.conf");
    let local = drives.replace("device = \"/dev/vda\"", &format!("device = \"{}\"", lo.dev));
    fs::write(prov.join("controller/drives.conf"), local.replace("wipe = false", "wipe = true")).unwrap();
    // Slots and user-data by this loop device's partitions, never by label:
    // another kit may be laying out a disk with the same labels right now.
    let dev = &lo.dev;
    let n = |name: &str| part_number(conf, name);
    let slots = if drives.contains("\"btrfs\"") {
        let r = n("root");
        format!(
            "[slots.a]\ndevice = \"{dev}p{r}\"\nfstype = \"btrfs\"\nsubvol = \"@a\"\n[slots.b]\ndevice = \"{dev}p{r}\"\nfstype = \"btrfs\"\nsubvol = \"@b\"\n"
        )
    } else {
        let (a, b) = (n("a"), n("b"));
        format!(
            "[slots.a]\ndevice = \"{dev}p{a}\"\nfstype = \"ext4\"\n[slots.b]\ndevice = \"{dev}p{b}\"\nfstype = \"ext4\"\n"
        )
    };
    let cboot = prov.join("controller/cboot.conf");
    let kept: String =
        fs::read_to_string(&cboot).unwrap_or_default().split("[slots.").next().unwrap_or_default().to_owned();
    fs::write(&cboot, format!("{kept}\n{slots}")).unwrap();
    let (boot, data) = (n("boot"), n("user-data"));
    let r = dir.join("r");
    let g = gsectl.display();
    ns.ok(&format!(
        "set -e; {g} --root {r} provision --format --config {prov}; mount {dev}p{boot} {r}/boot; mount {dev}p{data} {r}/user-data; {g} --root {r} install --image {image} --config {prov} 2>&1; umount {r}/boot {r}/user-data",
        r = r.display(),
        prov = prov.display(),
        image = image.display(),
    ));
}

/// The number of the partition drives.conf in `conf` calls `name`.
pub fn part_number(conf: &Path, name: &str) -> u32 {
    let loaded = gsed::config::load(&[conf.to_path_buf()]).unwrap_or_else(|e| panic!("{}: {e:?}", conf.display()));
    let i = loaded.settings.drives.partition.iter().position(|p| p.name == name);
    i.map(|i| i as u32 + 1).unwrap_or_else(|| panic!("{}: drives.conf has no partition {name}", conf.display()))
}

/// Makes the config.d `conf` describe a machine whose slots a and b are the
/// subvolumes @a and @b of one btrfs partition: drives.conf lays it out,
/// controller/cboot.conf points the slots at it.
pub fn btrfs_conf(conf: &Path) {
    fs::write(
        conf.join("controller/drives.conf"),
        "device = \"/dev/vda\"\ntable = \"gpt\"\nwipe = false\nloader = \"none\"\n\
         [[partition]]\nname = \"boot\"\nsize = \"64M\"\nfstype = \"ext4\"\nlabel = \"gse-boot\"\n\
         [[partition]]\nname = \"root\"\nsize = \"1100M\"\nfstype = \"btrfs\"\nlabel = \"gse-root\"\nsubvolumes = [\"@a\", \"@b\"]\n\
         [[partition]]\nname = \"user-data\"\nsize = \"rest\"\nfstype = \"ext4\"\nlabel = \"gse-data\"\n",
    )
    .expect("write drives.conf");
    let cboot = conf.join("controller/cboot.conf");
    let mut text = fs::read_to_string(&cboot).unwrap_or_default();
    text.push_str(
        "\n[slots.a]\ndevice = \"LABEL=gse-root\"\nfstype = \"btrfs\"\nsubvol = \"@a\"\n\
         [slots.b]\ndevice = \"LABEL=gse-root\"\nfstype = \"btrfs\"\nsubvol = \"@b\"\n",
    );
    fs::write(&cboot, text).expect("write cboot.conf");
    run("gsectl config check", Command::new(release_bin("gsectl")).args(["config", "check"]).arg(conf));
}

/// What `GSE_VM_APPEND` adds to every kernel command line, the plain boot's
/// too (`loglevel=7` shows the kernel's timestamped messages on the console,
/// to see where a boot spends its time).
fn appended() -> String {
    std::env::var("GSE_VM_APPEND").map(|a| format!(" {a}")).unwrap_or_default()
}

/// Builds both dracut initrds inside the image's tree `rootfs` (GSE installed
/// there by `--install-gse`, module included), as an administrator would on
/// the machine: with the kernel's modules in place, `dracut --add gse`.
fn dracut_initrds(rootfs: &Path, kroot: &Path, kver: &str, dir: &Path) -> Dracut {
    fs::create_dir_all(rootfs.join("lib/modules")).expect("mkdir lib/modules");
    run(
        "copying the kernel's modules into the root",
        Command::new("cp").arg("-a").arg(kroot.join("lib/modules").join(kver)).arg(rootfs.join("lib/modules")),
    );
    let ns = MountNs::new();
    ns.ok(&format!(
        "set -e; mount -t proc proc {r}/proc; \
         chroot {r} dracut --quiet --force --kver {kver} --add gse /tmp/initrd-systemd.img & a=$!; \
         chroot {r} dracut --quiet --force --kver {kver} --add gse --omit systemd /tmp/initrd-shell.img & b=$!; \
         wait $a; wait $b; umount {r}/proc",
        r = rootfs.display()
    ));
    let out = Dracut { systemd: dir.join("initrd-dracut-systemd.img"), shell: dir.join("initrd-dracut-shell.img") };
    fs::rename(rootfs.join("tmp/initrd-systemd.img"), &out.systemd).expect("place the systemd initrd");
    fs::rename(rootfs.join("tmp/initrd-shell.img"), &out.shell).expect("place the shell initrd");
    out
}

fn initramfs(gsectl: &Path, kroot: &Path, kver: &str, conf: &Path, out: &Path) {
    run(
        "gsectl initramfs build",
        Command::new(gsectl)
            .args(["initramfs", "build", "--force", "--kver", kver, "--modules-root"])
            .arg(kroot)
            .arg("--out")
            .arg(out)
            .arg("--config")
            .arg(conf),
    );
}

/// The network a scenario's guest is cabled to: a namespace with the tap device,
/// dnsmasq for DHCP and the two GSE servers as nginx, all on TEST-NET addresses.
pub struct Lab {
    /// Whose signing key the lab's servers publish with.
    kit: &'static Kit,
    pub nginx: Vec<Nginx>,
    _dnsmasq: ProcessGuard,
    pub ns: String,
    pub www: Vec<PathBuf>,
    /// dnsmasq's TFTP root (served in a [`Lab::pxe`] only).
    tftp: PathBuf,
    _dir: tempfile::TempDir,
    // Last: the namespace goes after what runs inside it.
    _netns: Netns,
}

impl Lab {
    /// The lab of OpenRC machines.
    pub fn new(name: &str) -> Lab {
        Lab::of(kit(), name)
    }

    /// The lab of OpenRC machines, whose DHCP server also answers network
    /// boots: dnsmasq's TFTP hands qemu's iPXE the script `gse.ipxe`, which
    /// [`Vm::start_pxe`] writes.
    pub fn pxe(name: &str) -> Lab {
        Lab::with(kit(), name, true)
    }

    /// A lab whose servers publish for machines of `k`'s kind.
    pub fn of(k: &'static Kit, name: &str) -> Lab {
        Lab::with(k, name, false)
    }

    fn with(k: &'static Kit, name: &str, pxe: bool) -> Lab {
        let ns = format!("gse-vm-{name}-{:x}", std::process::id() & 0xffff);
        let netns = Netns::add(&ns);
        let dir = tempfile::Builder::new().prefix("gse-vmlab-").tempdir().expect("tempdir");
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "tuntap", "add", "tap0", "mode", "tap"]);
        for (_, addr) in SERVERS {
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "tap0"]);
        }
        ip(&["-n", &ns, "link", "set", "tap0", "up"]);
        let tftp = dir.path().join("tftp");
        fs::create_dir_all(&tftp).unwrap();
        let root = format!("--tftp-root={}", tftp.display());
        let boot: &[&str] = if pxe { &["--enable-tftp", &root, "--dhcp-boot=gse.ipxe"] } else { &[] };
        let dhcp = dnsmasq(&ns, "tap0", dir.path(), &[&["--no-ping"][..], boot].concat());
        let mut nginx = Vec::new();
        let mut www = Vec::new();
        for (name, addr) in SERVERS {
            let root = dir.path().join(format!("www-{name}"));
            fs::create_dir_all(&root).unwrap();
            nginx.push(Nginx::start_in(&ns, &format!("{addr}:80"), &root));
            www.push(root);
        }
        Lab { kit: k, nginx, _dnsmasq: dhcp, ns, www, tftp, _dir: dir, _netns: netns }
    }

    /// Publishes image `image` as `version` on channel stable of every server
    /// (cut into chunks once, then copied), signed with the lab key.
    pub fn publish_image(&self, image: &Path, version: &str) {
        let out = crate::publish_image_with(image, version, "stable", &self.www[0], &self.kit.secret, &[]);
        assert!(out.status.success(), "gsectl publish image: {}", text(&out.stderr));
        for www in &self.www[1..] {
            for d in ["chunks", "images", "channels"] {
                run(
                    "copying the published image",
                    Command::new("cp").arg("-a").arg(self.www[0].join("gse1").join(d)).arg(www.join("gse1")),
                );
            }
        }
    }

    /// Publishes `tree` on every server, signed with the lab key.
    pub fn publish(&self, tree: &Path) {
        for www in &self.www {
            let out = publish_config(tree, www, &self.kit.secret);
            assert!(out.status.success(), "gsectl publish config: {}", text(&out.stderr));
        }
    }
}

/// One lab machine: its own copy of the template disk, booted as often as the
/// scenario needs. The console logs of its boots are printed if the test fails.
pub struct Vm {
    pub kit: &'static Kit,
    pub scenario: String,
    /// A second disk, attached after the first at every start (see [`Vm::blank`]).
    pub second: Option<PathBuf>,
    /// Slots a and b as subvolumes @a and @b of partition 2 (else partitions 2 and 3).
    btrfs: bool,
    pub disk: PathBuf,
    pub dir: tempfile::TempDir,
    logs: Mutex<Vec<String>>,
}

/// How the guest sees its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    Virtio,
    Nvme,
    /// No disk at all (a diskless machine).
    None,
}

/// What one finished boot showed.
pub struct Boot {
    pub n: usize,
    pub log: String,
    /// qemu start to the health report on the console.
    pub to_report: Duration,
    /// qemu start to OpenRC starting its default runlevel.
    pub to_runlevel: Option<Duration>,
    /// qemu start to GSE's initramfs running (firmware, loader or PXE, kernel).
    pub to_initramfs: Option<Duration>,
    /// qemu start to the root's init (OpenRC's first line): the end of early boot.
    pub to_init: Option<Duration>,
    /// qemu start to its exit (power off, or the power pulled).
    pub total: Duration,
    pub health: Value,
    pub boot: Value,
    pub motd: String,
}

impl Boot {
    pub fn slot(&self) -> &str {
        self.boot["slot"].as_str().unwrap_or("")
    }
    pub fn action(&self) -> &str {
        self.boot["action"].as_str().unwrap_or("")
    }
    pub fn status(&self) -> &str {
        self.health["status"].as_str().unwrap_or("")
    }
    pub fn field(&self, key: &str) -> String {
        match &self.boot[key] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }
}

/// Console markers whose first arrival is timed.
pub const TIMED: [&str; 4] =
    ["GSE-HEALTH-JSON:", "Starting default runlevel", "gse: initramfs for kernel", "OpenRC init version"];

/// What the guest printed so far, and when each of [`TIMED`] first arrived.
#[derive(Default)]
struct Console {
    text: String,
    seen: [Option<Duration>; TIMED.len()],
}

/// A guest that is running.
pub struct Running<'a> {
    vm: &'a Vm,
    qemu: ProcessGuard,
    console: Arc<Mutex<Console>>,
    started: Instant,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The serial console's input (qemu's stdin).
    keyboard: Option<std::process::ChildStdin>,
    kept: bool,
}

impl Vm {
    /// An OpenRC lab machine.
    pub fn new(scenario: &str) -> Vm {
        Vm::of(kit(), scenario)
    }

    /// An OpenRC lab machine whose slots are btrfs subvolumes (partition 2
    /// holds @a and @b; see [`btrfs_conf`]).
    pub fn btrfs(scenario: &str) -> Vm {
        let mut vm = Vm::from_template(kit(), scenario, kit().btrfs_template());
        vm.btrfs = true;
        vm
    }

    /// A lab machine of `k`'s kind.
    pub fn of(k: &'static Kit, scenario: &str) -> Vm {
        Vm::from_template(k, scenario, &k.template)
    }

    /// The number of partition `name` (drives.conf's names) on this machine's disk.
    pub fn part(&self, name: &str) -> u32 {
        let conf = if self.btrfs { self.kit.dir.join("conf-btrfs") } else { self.kit.conf.clone() };
        part_number(&conf, name)
    }

    /// A second blank disk (64 MiB of zeros), attached after the first.
    pub fn with_second_disk(mut self) -> Vm {
        let second = self.dir.path().join("second.img");
        fs::File::create(&second).and_then(|f| f.set_len(64 << 20)).expect("second disk");
        self.second = Some(second);
        self
    }

    /// A new lab machine whose disk is blank (all zeros): nothing installed.
    pub fn blank(scenario: &str) -> Vm {
        Vm::with_disk(kit(), scenario, |disk| {
            fs::File::create(disk).and_then(|f| f.set_len(DISK_MIB << 20)).expect("blank disk");
        })
    }

    /// Powers on the installer (`-kernel` and the controller initramfs, as a
    /// USB stick would start it) with `gse.test=MODE` and `extra` on the
    /// kernel command line.
    pub fn start_installer<'a>(&'a self, lab: &Lab, mode: &str, extra: &str, disk: Disk) -> Running<'a> {
        let cmdline = format!("{} {extra}", self.cmdline(mode));
        self.power_on(lab, Some((Some(self.kit.controller()), &cmdline)), disk)
    }

    /// Powers on a machine with no disk that boots from the network (a
    /// [`Lab::pxe`]): qemu's iPXE gets `gse.ipxe` by TFTP, which fetches the
    /// installer's kernel and initramfs from server s1 over HTTP and starts
    /// them with `gse.test=MODE` and `extra`.
    pub fn start_pxe<'a>(&'a self, lab: &Lab, mode: &str, extra: &str) -> Running<'a> {
        // Under gse1/, which the shipped nginx server block serves.
        let pxe = lab.www[0].join("gse1/boot");
        fs::create_dir_all(&pxe).unwrap();
        fs::copy(&self.kit.kernel, pxe.join("vmlinuz")).expect("kernel for PXE");
        fs::copy(self.kit.controller(), pxe.join("controller.img")).expect("initramfs for PXE");
        let url = format!("http://{}/gse1/boot", SERVERS[0].1);
        let script =
            format!("#!ipxe\nkernel {url}/vmlinuz {} {extra}\ninitrd {url}/controller.img\nboot\n", self.cmdline(mode));
        fs::write(lab.tftp.join("gse.ipxe"), script).unwrap();
        self.power_on(lab, None, Disk::None)
    }

    /// Powers on with no kernel given: the firmware boots the disk (SeaBIOS,
    /// then whatever boot loader the disk has).
    pub fn start_from_disk<'a>(&'a self, lab: &Lab) -> Running<'a> {
        self.power_on(lab, None, Disk::Virtio)
    }

    fn from_template(k: &'static Kit, scenario: &str, template: &Path) -> Vm {
        Vm::with_disk(k, scenario, |disk| {
            run("copying the template disk", Command::new("cp").arg("--sparse=always").arg(template).arg(disk));
        })
    }

    /// A machine of `k`'s kind whose disk `make` writes.
    fn with_disk(k: &'static Kit, scenario: &str, make: impl FnOnce(&Path)) -> Vm {
        let dir = tempfile::Builder::new().prefix(&format!("vm-{scenario}-")).tempdir_in(&k.dir).expect("tempdir");
        let disk = dir.path().join("disk.img");
        make(&disk);
        let logs = Mutex::new(Vec::new());
        Vm { kit: k, scenario: scenario.to_owned(), second: None, btrfs: false, disk, dir, logs }
    }

    /// The kernel command line of a GSE boot with `gse.test=MODE`.
    fn cmdline(&self, mode: &str) -> String {
        format!("console=ttyS0 root=gse{} panic=-1 quiet gse.test={mode}{}", self.kit.init.cmdline(), appended())
    }

    /// Powers the machine on with `gse.test=MODE` on the kernel command line.
    pub fn start<'a>(&'a self, lab: &Lab, mode: &str) -> Running<'a> {
        self.power_on(lab, Some((Some(&self.kit.initrd), &self.cmdline(mode))), Disk::Virtio)
    }

    /// The same kernel and root with no initramfs at all: slot a mounted by the
    /// kernel itself, read-write, from an NVMe disk (built into the kernel,
    /// where virtio is a module). The baseline of the boot bench.
    pub fn start_plain<'a>(&'a self, lab: &Lab) -> Running<'a> {
        // Slot a wherever drives.conf puts it (a boot partition comes first).
        let a = part_number(&self.kit.conf, "a");
        let cmdline = format!(
            "console=ttyS0 root=/dev/nvme0n1p{a} rw rootfstype=ext4 init=/sbin/openrc-init panic=-1 quiet gse.test=hold{}",
            appended()
        );
        self.power_on(lab, Some((None, &cmdline)), Disk::Nvme)
    }

    /// One reporting boot through `initrd` from a disk of the given kind.
    pub fn boot_on(&self, lab: &Lab, disk: Disk, initrd: &Path) -> Boot {
        let mut r = self.power_on(lab, Some((Some(initrd), &self.cmdline("report"))), disk);
        r.wait_line("GSE-HEALTH-JSON:", BOOT_TIMEOUT);
        r.wait_off(Duration::from_secs(120))
    }

    /// Starts qemu: with `kernel` (an initramfs or none, and the command
    /// line) the kit's kernel is started directly, without it the firmware
    /// boots the disk.
    fn power_on<'a>(&'a self, lab: &Lab, kernel: Option<(Option<&Path>, &str)>, disk: Disk) -> Running<'a> {
        let k = self.kit;
        // A machine keeps its MAC across boots (each lab is a network of its own).
        let mac = "52:54:00:47:53:01";
        let mut qemu = Command::new("ip");
        qemu.args(["netns", "exec", &lab.ns, "qemu-system-x86_64", "-accel", "tcg", "-m", "768"])
            .args(["-nographic", "-no-reboot"]);
        // One virtual CPU unless `GSE_VM_SMP` says more (a lab machine has
        // several: the bench can compare both).
        if let Ok(n) = std::env::var("GSE_VM_SMP") {
            qemu.args(["-smp", &n]);
        }
        if kernel.is_none() && disk == Disk::None {
            qemu.args(["-boot", "n"]);
        }
        if let Some((initrd, cmdline)) = kernel {
            qemu.arg("-kernel").arg(&k.kernel);
            if let Some(initrd) = initrd {
                qemu.arg("-initrd").arg(initrd);
            }
            qemu.arg("-append").arg(cmdline);
        }
        match disk {
            Disk::None => &mut qemu,
            Disk::Virtio => qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio", self.disk.display())),
            Disk::Nvme => qemu
                .arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=d0", self.disk.display()))
                .args(["-device", "nvme,drive=d0,serial=gse"]),
        };
        // After the first: the guest sees it as the second disk (vdb).
        if let Some(second) = self.second.as_ref().filter(|_| disk != Disk::None) {
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio", second.display()));
        }
        let mut child = qemu
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device"])
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64");
        let keyboard = child.stdin.take();
        let started = Instant::now();
        let console = Arc::new(Mutex::new(Console::default()));
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (c1, c2) = (console.clone(), console.clone());
        let stamp = std::env::var_os("GSE_VM_STAMP").is_some();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut c = c1.lock().unwrap();
                let chunk = String::from_utf8_lossy(&buf[..n]);
                if stamp {
                    // Each line prefixed with its arrival time (GSE_VM_STAMP).
                    for piece in chunk.split_inclusive('\n') {
                        if c.text.is_empty() || c.text.ends_with('\n') {
                            let at = started.elapsed().as_secs_f64();
                            c.text.push_str(&format!("[+{at:7.3}] "));
                        }
                        c.text.push_str(piece);
                    }
                } else {
                    c.text.push_str(&chunk);
                }
                for (i, marker) in TIMED.iter().enumerate() {
                    if c.seen[i].is_none() && c.text.contains(marker) {
                        c.seen[i] = Some(started.elapsed());
                    }
                }
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            if !s.is_empty() {
                c2.lock().unwrap().text.push_str(&format!("\n[qemu stderr] {s}"));
            }
        });
        Running {
            vm: self,
            qemu: ProcessGuard { child: Some(child), name: "qemu".into() },
            console,
            started,
            reader: Some(reader),
            keyboard,
            kept: false,
        }
    }

    /// Boots once in the default mode: the guest reports and powers itself off.
    pub fn boot(&self, lab: &Lab) -> Boot {
        self.boot_on(lab, Disk::Virtio, &self.kit.initrd)
    }

    /// Runs `script` on the powered-off disk with partition `part` (see
    /// [`Vm::part`]) mounted at $M, read-write; returns its output.
    pub fn on_disk(&self, part: u32, script: &str) -> String {
        let lo = Loop::attach(&self.disk);
        let ns = MountNs::new();
        ns.ok(&format!(
            // The partition nodes appear a moment after the loop device.
            "set -e; for i in $(seq 100); do [ -b {dev}p{part} ] && break; sleep 0.05; done; M=$(mktemp -d); mount {dev}p{part} $M; cd $M; {script}; cd /; umount $M; rmdir $M",
            dev = lo.dev
        ))
    }

    /// `dumpe2fs -h` of partition `part`, read without mounting it (a mount
    /// would replay the journal and hide an unclean shutdown).
    pub fn superblock(&self, part: u32) -> String {
        let lo = Loop::attach(&self.disk);
        run(
            "dumpe2fs -h",
            Command::new("sh").arg("-c").arg(format!(
                "for i in $(seq 100); do [ -b {dev}p{part} ] && break; sleep 0.05; done; dumpe2fs -h {dev}p{part} 2>/dev/null",
                dev = lo.dev
            )),
        )
    }

    /// The user-data partition.
    pub fn data_part(&self) -> u32 {
        self.part("user-data")
    }

    /// Runs `script` in slot `slot` (a or b) of the powered-off disk, whatever
    /// the layout; returns its output.
    pub fn on_slot(&self, slot: &str, script: &str) -> String {
        if self.btrfs {
            self.on_disk(self.part("root"), &format!("cd @{slot}; {script}"))
        } else {
            self.on_disk(self.part(slot), script)
        }
    }

    /// Slot `slot`'s files with their metadata (see `disk::LISTING`).
    pub fn listing(&self, slot: &str) -> String {
        disk::normalize_listing(&self.on_slot(slot, disk::LISTING))
    }

    /// One line for the test output: what this boot did and how long it took.
    pub fn report(&self, b: &Boot, what: &str) {
        println!(
            "vm {}: boot {}: {what}: slot {} ({}), {} after {:.1} s, off after {:.1} s",
            self.scenario,
            b.n,
            b.slot(),
            b.action(),
            b.status(),
            b.to_report.as_secs_f64(),
            b.total.as_secs_f64()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, log) in self.logs.lock().map(|l| l.clone()).unwrap_or_default().iter().enumerate() {
                eprintln!(
                    "===== vm {}: console of boot {} =====\n{log}\n===== end of boot {} =====",
                    self.scenario,
                    i + 1,
                    i + 1
                );
            }
        }
    }
}

/// The rest of the first console line holding `marker`, if any.
fn after(log: &str, marker: &str) -> Option<String> {
    let at = log.find(marker)? + marker.len();
    let line = log[at..].lines().next().unwrap_or("");
    Some(line.trim().to_owned())
}

impl Running<'_> {
    pub fn log(&self) -> String {
        self.console.lock().unwrap().text.clone()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console shows `marker`; returns the rest of that line.
    pub fn wait_line(&mut self, marker: &str, timeout: Duration) -> String {
        self.wait_nth(marker, 1, timeout)
    }

    /// Waits until `marker` has appeared `n` times; returns the rest of the n-th line.
    pub fn wait_nth(&mut self, marker: &str, n: usize, timeout: Duration) -> String {
        let since = Instant::now();
        let find = |log: &str| log.match_indices(marker).nth(n - 1).and_then(|(i, _)| after(&log[i..], marker));
        loop {
            if let Some(line) = find(&self.log()) {
                return line;
            }
            let running = self.qemu.is_running();
            if !running {
                // Whatever qemu printed last is read before giving up.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                if let Some(line) = find(&self.log()) {
                    return line;
                }
            }
            if !running || since.elapsed() > timeout {
                panic!(
                    "vm {}: no `{marker}` (#{n}) on the console {:.0} s after power-on, {:.0} s of waiting ({}); the console log follows",
                    self.vm.scenario,
                    self.started.elapsed().as_secs_f64(),
                    since.elapsed().as_secs_f64(),
                    if running { "still running" } else { "qemu exited" }
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `line` and Enter on the serial console.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let k = self.keyboard.as_mut().expect("the console's input");
        k.write_all(format!("{line}\r").as_bytes()).and_then(|()| k.flush()).expect("typing on the console");
    }

    /// Waits for the guest to power itself off.
    pub fn wait_off(mut self, timeout: Duration) -> Boot {
        let limit = self.started.elapsed() + timeout;
        while self.qemu.is_running() && self.started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !self.qemu.is_running(),
            "vm {}: the guest did not power off within {timeout:?}; the console log follows",
            self.vm.scenario
        );
        self.finish()
    }

    /// Pulls the power: qemu is killed, nothing in the guest gets to react.
    pub fn pull_power(mut self) -> Boot {
        self.qemu.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        self.finish()
    }

    /// Time from power-on to the first arrival of `TIMED[i]`.
    pub fn seen(&self, i: usize) -> Option<Duration> {
        self.console.lock().unwrap().seen[i]
    }

    fn finish(mut self) -> Boot {
        let total = self.started.elapsed();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let log = self.log();
        self.kept = true;
        let n = {
            let mut logs = self.vm.logs.lock().unwrap();
            logs.push(log.clone());
            logs.len()
        };
        let json = |marker: &str| -> Value {
            after(&log, marker).and_then(|l| serde_json::from_str(&l).ok()).unwrap_or(Value::Null)
        };
        Boot {
            n,
            to_report: self.seen(0).unwrap_or(total),
            to_runlevel: self.seen(1),
            to_initramfs: self.seen(2),
            to_init: self.seen(3),
            total,
            health: json("GSE-HEALTH-JSON:"),
            boot: json("GSE-BOOT-JSON:"),
            motd: after(&log, "GSE-MOTD:").unwrap_or_default(),
            log,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.kept {
            // A failed test: stop the guest and keep what it printed for the report.
            self.qemu.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
            let log = self.log();
            if let Ok(mut logs) = self.vm.logs.lock() {
                logs.push(log);
            }
        }
    }
}
