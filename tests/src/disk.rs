//! Disks and mount namespaces for early-boot tests: loop devices on image files
//! with real filesystems, and a private mount namespace that every mount of a test
//! lives in, so nothing leaks into the machine even when a test fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{ProcessGuard, require_tool, text, wait_for};

/// A loop device over a sparse image file; detached on drop.
pub struct Loop {
    pub dev: String,
    pub image: PathBuf,
}

impl Loop {
    /// A new zeroed image of `mib` MiB in `dir`, attached (with partition scan).
    pub fn new(dir: &Path, name: &str, mib: u64) -> Loop {
        require_tool("losetup", "mount");
        let image = dir.join(format!("{name}.img"));
        let f = fs::File::create(&image).expect("create image");
        f.set_len(mib << 20).expect("size image");
        Self::attach(&image)
    }

    /// An existing image file, attached with partition scan.
    pub fn attach(image: &Path) -> Loop {
        require_tool("losetup", "mount");
        let out =
            Command::new("losetup").args(["--find", "--show", "--partscan"]).arg(image).output().expect("losetup");
        assert!(out.status.success(), "losetup {}: {}", image.display(), text(&out.stderr));
        let dev = text(&out.stdout).trim().to_owned();
        // --partscan does not always make the partitions known here; partx does
        // (and fails harmlessly on an image without a partition table).
        let _ = Command::new("partx").args(["--update", &dev]).output();
        Loop { dev, image: image.to_owned() }
    }

    /// `mkfs.ext4` with the files of `tree` (may be None for an empty filesystem).
    pub fn mkfs_ext4(&self, label: &str, tree: Option<&Path>) {
        mkfs_ext4(&self.dev, label, tree);
    }

    pub fn mkfs_btrfs(&self, label: &str) {
        mkfs_btrfs(&self.dev, label);
    }
}

/// `mkfs.ext4` on `dev` with the files of `tree` (may be None for an empty filesystem).
pub fn mkfs_ext4(dev: &str, label: &str, tree: Option<&Path>) {
    require_tool("mkfs.ext4", "e2fsprogs");
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", label]);
    if let Some(t) = tree {
        c.arg("-d").arg(t);
    }
    let out = c.arg(dev).output().expect("mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4: {}", text(&out.stderr));
}

pub fn mkfs_btrfs(dev: &str, label: &str) {
    require_tool("mkfs.btrfs", "btrfs-progs");
    let out = Command::new("mkfs.btrfs").args(["-q", "-f", "-L", label]).arg(dev).output().expect("mkfs.btrfs");
    assert!(out.status.success(), "mkfs.btrfs: {}", text(&out.stderr));
}

impl Drop for Loop {
    fn drop(&mut self) {
        // A device still mounted in a dying namespace is freed once that goes.
        for _ in 0..50 {
            let out = Command::new("losetup").args(["-d", &self.dev]).output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A small tmpfs mounted at a test's directory (to run out of space on purpose),
/// unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).expect("mkdir");
        let out = Command::new(require_tool("mount", "mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "gse-test"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs at {}: {}", at.display(), text(&out.stderr));
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// A private mount namespace, held open by a sleeping process; every command run
/// through it sees (and makes) the same mounts. Dropping it frees them all.
pub struct MountNs {
    holder: ProcessGuard,
}

impl MountNs {
    pub fn new() -> MountNs {
        require_tool("unshare", "util-linux");
        require_tool("nsenter", "util-linux");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let holder = ProcessGuard { child: Some(child), name: "mount namespace".into() };
        let pid = holder.pid();
        // Wait until the holder is inside its own namespace.
        let own = fs::read_link("/proc/self/ns/mnt").expect("own ns");
        wait_for(Duration::from_secs(5), "the mount namespace", || {
            fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().filter(|ns| *ns != own).map(|_| ())
        });
        MountNs { holder }
    }

    pub fn holder_pid(&self) -> i32 {
        self.holder.pid()
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.pid().to_string()).arg("-m").arg("--").arg(program);
        c
    }

    /// Runs a shell snippet in the namespace.
    pub fn sh(&self, script: &str) -> Output {
        self.command("sh").args(["-c", script]).output().expect("nsenter sh")
    }

    /// Like `sh`, but the snippet must succeed.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }
}

impl Default for MountNs {
    fn default() -> Self {
        Self::new()
    }
}

/// Shell that lists the tree under the current directory with the metadata a
/// repair must keep, xattrs included (GSE's own `.gse/` and `lost+found` left
/// out). A missing or failing getfattr fails the listing rather than silently
/// leaving the xattrs uncompared.
pub const LISTING: &str = "find . -xdev \\( -path ./lost+found -o -path ./.gse \\) -prune -o -print0 | sort -z | xargs -0 stat -c '%n|%f|%u|%g|%s|%Y|%t:%T|%h|%N'; x=$(getfattr -R -P -h -d -m - --absolute-names .) || { echo 'getfattr failed: the xattrs were not compared' >&2; exit 1; }; printf '%s\\n' \"$x\" | sed '/^# file: .\\/.gse/d'";

/// A directory's size is how the filesystem laid it out, not content, so it is left out.
pub fn normalize_listing(raw: &str) -> String {
    raw.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('|').collect();
            if f.len() > 4 && f[1].starts_with("41") {
                f[4] = "dir";
            }
            f.join("|")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that two listings are equal, showing only the lines that differ.
pub fn assert_same_listing((x, lx): (&str, &str), (y, ly): (&str, &str)) {
    let only =
        |a: &str, b: &str| a.lines().filter(|l| !b.lines().any(|m| m == *l)).map(String::from).collect::<Vec<_>>();
    let (ox, oy) = (only(lx, ly), only(ly, lx));
    assert!(
        ox.is_empty() && oy.is_empty(),
        "slot {x} and slot {y} differ:\n only in {x}: {ox:#?}\n only in {y}: {oy:#?}"
    );
}

/// A tiny root tree for a slot: busybox, an /etc to fill the RAM /etc from, the
/// mount points of the stateless layout, and files with awkward metadata (hard
/// link, symlink, device node, xattr, set-uid) for repair comparisons.
pub fn tiny_root(dir: &Path, version: &str) {
    let busybox = require_tool("busybox", "busybox-static");
    for d in [
        "bin",
        "etc/runlevels/default",
        "etc/init.d",
        "var/lib/gse-test",
        "tmp",
        "home",
        "root",
        "user-data",
        "opt",
        "run",
        "proc",
        "sys",
        "dev",
        "boot",
        ".gse",
    ] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    fs::copy(busybox, dir.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).expect("symlink");
    fs::write(dir.join("etc/gse-release"), format!("NAME=GSE\nVERSION={version}\n")).unwrap();
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nusers:x:100:\n").unwrap();
    fs::write(dir.join("etc/motd"), "image motd\n").unwrap();
    fs::write(dir.join("etc/image-only"), "from the image\n").unwrap();
    for s in ["dbus", "gsed", "local", "cupsd"] {
        fs::write(dir.join("etc/init.d").join(s), "#!/sbin/openrc-run\n").unwrap();
    }
    std::os::unix::fs::symlink("/etc/init.d/cupsd", dir.join("etc/runlevels/default/cupsd")).unwrap();
    fs::write(dir.join("var/lib/gse-test/state"), "image var\n").unwrap();
    // A package database, which config.d keeps read-only from the image.
    fs::create_dir_all(dir.join("var/db/pkg/app-misc/gse-test-1")).expect("mkdir");
    fs::write(dir.join("var/db/pkg/app-misc/gse-test-1/CONTENTS"), "obj /bin/busybox\n").unwrap();
    fs::hard_link(dir.join("etc/passwd"), dir.join("etc/passwd.hardlink")).unwrap();
    let out = Command::new("mknod").arg(dir.join("dev/null")).args(["c", "1", "3"]).output().unwrap();
    assert!(out.status.success());
    let out = Command::new("setfattr").args(["-n", "user.gse", "-v", "kept"]).arg(dir.join("etc/motd")).output();
    assert!(out.is_ok_and(|o| o.status.success()), "setfattr (package attr) is needed");
    let out = Command::new("chmod").arg("4755").arg(dir.join("bin/busybox")).output().unwrap();
    assert!(out.status.success());
}
