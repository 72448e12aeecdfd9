//! The builder: `gsectl image build` (stage4 tar.zst) checked with GNU tar, and
//! `gsectl initramfs build` checked with cpio against modules.dep and ldd.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::Path,
    process::Command,
};

use gse_tests::{disk::tiny_root, *};

/// A small tree with awkward metadata and the files a build must remove.
fn awkward_tree(dir: &Path) {
    tiny_root(dir, "src");
    fs::create_dir_all(dir.join("srv/shared")).unwrap();
    fs::set_permissions(dir.join("srv/shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(dir.join("srv/odd"), "odd\n").unwrap();
    // chown clears set-id bits, so it comes first.
    std::os::unix::fs::lchown(dir.join("srv/odd"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(dir.join("srv/odd"), fs::Permissions::from_mode(0o2751)).unwrap();
    symlink("../etc/passwd", dir.join("srv/passwd-link")).unwrap();
    assert!(Command::new("mkfifo").arg(dir.join("srv/fifo")).status().unwrap().success());
    for (f, c) in [
        ("etc/ssh/ssh_host_ed25519_key", "secret"),
        ("etc/ssh/sshd_config", "PermitRootLogin no\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("var/log/messages", "old log\n"),
        ("var/log/apt/history.log", "old log\n"),
        ("var/cache/apt/archives/foo.deb", "deb"),
        ("tmp/junk", "junk"),
        ("var/tmp/junk", "junk"),
    ] {
        let p = dir.join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, c).unwrap();
    }
}

/// Every entry with its metadata (not atime), for comparing two trees.
fn listing(dir: &Path) -> Vec<String> {
    require_tool("getfattr", "attr");
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -mindepth 1 -print0 | sort -z | xargs -0 stat -c '%n|%f|%u|%g|%Y|%t:%T|%h|%N' && getfattr -R -P -h -d -m - --absolute-names .")
        .arg("sh")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "listing {} (xattrs included) failed: {}", dir.display(), text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            // A directory's own link count depends on the tree around it.
            let mut f: Vec<&str> = l.split('|').collect();
            if f.len() > 6 && f[1].starts_with("41") {
                f[6] = "dir";
            }
            f.join("|")
        })
        .collect()
}

#[test]
fn image_build_keeps_metadata_removes_per_machine_files_and_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("rootfs");
    awkward_tree(&tree);
    // A second pristine copy (times, owners and xattrs kept) to build again from.
    let pristine = d.path().join("rootfs-copy");
    let cp = Command::new("cp").arg("-a").arg(&tree).arg(&pristine).output().unwrap();
    assert!(cp.status.success(), "{}", text(&cp.stderr));
    let out = d.path().join("image.tar.zst");
    let conf = repo().join("config.d");
    let build_from = |tree: &Path, out: &Path, force: bool| {
        let mut extra = vec!["--install-gse", "--config", conf.to_str().unwrap()];
        if force {
            extra.push("--force");
        }
        image_build(tree, "2026.11.1", out, &extra)
    };
    let build = |force: bool| build_from(&tree, &out, force);
    let first = build(false);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let printed = text(&first.stdout);
    let sha = printed.split_whitespace().next().unwrap().to_owned();
    let err = text(&first.stderr);
    assert!(err.contains("image: installing GSE") && err.contains("image: applying the stateless layout"), "{err}");
    assert_eq!(build(false).status.code(), Some(1), "no overwrite without --force");

    let unpacked = d.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar")
        .args(["--zstd", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&out)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(tar.status.success(), "GNU tar: {}", text(&tar.stderr));
    let (a, b) = (listing(&tree), listing(&unpacked));
    let only_a: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_b: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "tree and unpacked image differ:\n tree: {only_a:#?}\n image: {only_b:#?}"
    );
    let m = |p: &str| fs::symlink_metadata(unpacked.join(p)).unwrap();
    assert_eq!((m("srv/odd").mode() & 0o7777, m("srv/odd").uid(), m("srv/odd").gid()), (0o2751, 1234, 5678));
    assert_eq!(m("etc/passwd").ino(), m("etc/passwd.hardlink").ino(), "hard link");
    assert_eq!(m("dev/null").rdev(), nix::sys::stat::makedev(1, 3));
    assert!(m("srv/fifo").file_type().is_fifo_like());

    for gone in [
        "etc/ssh/ssh_host_ed25519_key",
        "var/lib/dbus/machine-id",
        "var/log/messages",
        "var/log/apt/history.log",
        "var/cache/apt/archives/foo.deb",
        "tmp/junk",
        "var/tmp/junk",
    ] {
        assert!(!unpacked.join(gone).exists(), "{gone} must not be in the image");
    }
    assert!(unpacked.join("var/log/apt").is_dir(), "log directories stay");
    assert_eq!(fs::read(unpacked.join("etc/machine-id")).unwrap(), b"", "machine-id is emptied");
    assert!(unpacked.join("etc/ssh/sshd_config").exists());
    assert_eq!(fs::read_to_string(unpacked.join("etc/gse-release")).unwrap(), "NAME=GSE\nVERSION=2026.11.1\n");
    for installed in [
        "usr/sbin/gsed",
        "usr/bin/gsectl",
        "usr/share/dbus-1/system.d/org.gentoo.Gse1.conf",
        "etc/init.d/gsed",
        "usr/lib/systemd/system/gsed.service",
        "usr/share/gse/config.d/system/boot.conf",
        "usr/lib/gse/gse-hook.sh",
    ] {
        assert!(unpacked.join(installed).is_file(), "{installed} is installed");
    }
    assert_eq!(fs::read_link(unpacked.join("etc/runlevels/default/gsed")).unwrap(), Path::new("/etc/init.d/gsed"));
    assert_eq!(
        fs::read_link(unpacked.join("etc/runlevels/shutdown/gse-unmount")).unwrap(),
        Path::new("/etc/init.d/gse-unmount"),
        "OpenRC leaves user-data clean at power-off"
    );
    assert!(unpacked.join("usr/lib/dracut/modules.d/90gse/gse-root.service").is_file(), "dracut's systemd initrd");
    let groups = fs::read_to_string(unpacked.join("etc/group")).unwrap();
    assert_eq!(
        groups.lines().filter(|l| l.starts_with("gse:x:")).count(),
        1,
        "group gse for the D-Bus policy: {groups}"
    );
    assert!(unpacked.join("user-data").is_dir() && unpacked.join("boot").is_dir());

    let again = build_from(&pristine, &d.path().join("again.tar.zst"), false);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(
        text(&again.stdout).split_whitespace().next().unwrap(),
        sha,
        "two builds from two pristine copies of the same tree are byte-identical"
    );
}

/// A systemd image gets GSE's units enabled (as `systemctl enable` would) and
/// no OpenRC script that would trip `systemctl enable` through
/// systemd-sysv-install.
#[test]
fn install_gse_enables_the_units_on_a_systemd_image() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("rootfs");
    for dir in ["bin", "sbin", "etc", "lib/systemd"] {
        fs::create_dir_all(tree.join(dir)).unwrap();
    }
    fs::write(tree.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(tree.join("lib/systemd/systemd"), "systemd").unwrap();
    std::os::unix::fs::symlink("/lib/systemd/systemd", tree.join("sbin/init")).unwrap();
    let conf = repo().join("config.d");
    let out = image_build(
        &tree,
        "2026.11.2",
        &d.path().join("image.tar.zst"),
        &["--install-gse", "--config", conf.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the image runs systemd"), "{}", text(&out.stderr));
    assert!(!tree.join("etc/init.d/gsed").exists() && !tree.join("etc/runlevels/default/gsed").exists());
    assert!(!tree.join("etc/runlevels/shutdown/gse-unmount").exists(), "no OpenRC script in a systemd image");
    let systemctl = require_tool("systemctl", "systemd");
    for unit in ["gsed.service", "gse-boot-complete.service", "gse-record-shutdown.service"] {
        let state = Command::new(&systemctl)
            .arg(format!("--root={}", tree.display()))
            .args(["is-enabled", unit])
            .output()
            .unwrap();
        assert_eq!(text(&state.stdout).trim(), "enabled", "{unit}: {}", text(&state.stderr));
    }
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

/// A tree's absolute links point into the image, not at the build host.
#[test]
fn image_build_never_writes_outside_its_tree() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("rootfs");
    tiny_root(&tree, "src");
    let host = d.path().join("host");
    fs::create_dir_all(host.join("dir")).unwrap();
    fs::write(host.join("victim"), "host file\n").unwrap();
    fs::write(host.join("dir/keep"), "host dir\n").unwrap();
    let _ = fs::remove_file(tree.join("etc/gse-release"));
    symlink(host.join("victim"), tree.join("etc/gse-release")).unwrap();
    fs::create_dir_all(tree.join("var")).unwrap();
    let _ = fs::remove_dir_all(tree.join("var/tmp"));
    symlink(host.join("dir"), tree.join("var/tmp")).unwrap();
    let out = d.path().join("image.tar.zst");
    let r = image_build(&tree, "7", &out, &["--install-gse", "--config", repo().join("config.d").to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(fs::read_to_string(host.join("victim")).unwrap(), "host file\n", "the host's file is untouched");
    assert_eq!(fs::read_to_string(host.join("dir/keep")).unwrap(), "host dir\n", "the host's directory is not emptied");
    let rel = Command::new("tar").args(["--zstd", "-xOf", out.to_str().unwrap(), "etc/gse-release"]).output().unwrap();
    assert!(text(&rel.stdout).contains("VERSION=7"), "the image has its own release file: {}", text(&rel.stderr));
}

#[test]
fn hooks_run_inside_the_tree_and_a_failing_hook_leaves_no_output() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("rootfs");
    tiny_root(&tree, "src");
    let good = d.path().join("good.sh");
    fs::write(&good, "set -e\necho \"hooked in $(pwd)\" > /etc/hooked\ngrep -q '^Name:' /proc/self/status && echo proc-ok >> /etc/hooked\n").unwrap();
    let out = d.path().join("image.tar.zst");
    let o = out.to_str().unwrap();
    let r = image_build(&tree, "1", &out, &["--hook", good.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let listing = Command::new("tar").args(["--zstd", "-xOf", o, "etc/hooked"]).output().unwrap();
    let hooked = text(&listing.stdout);
    assert!(hooked.contains("hooked in /") && hooked.contains("proc-ok"), "{hooked:?} {}", text(&listing.stderr));
    assert!(!fs::read_to_string("/proc/self/mounts").unwrap().contains(tree.to_str().unwrap()), "binds are gone");

    let bad = d.path().join("bad.sh");
    fs::write(&bad, "echo 'emerge failed: no space left'\nexit 3\n").unwrap();
    let out2 = d.path().join("image2.tar.zst");
    let r = image_build(&tree, "1", &out2, &["--hook", bad.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r.stderr).contains("emerge failed: no space left"), "{}", text(&r.stderr));
    assert!(!out2.exists(), "no output after a failed hook");
    assert!(
        fs::read_dir(d.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".image2")),
        "no temporary left"
    );
}

#[test]
fn initramfs_carries_modules_with_dependencies_libraries_and_init() {
    let d = tempfile::tempdir().unwrap();
    let kver = "6.1.0-gse-test";
    let moddir = d.path().join("modroot/lib/modules").join(kver);
    let dep = "kernel/drivers/virtio/virtio.ko:\n\
               kernel/drivers/virtio/virtio_ring.ko:\n\
               kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
               kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
               kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
               kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
               kernel/net/core/failover.ko:\n\
               kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
               kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
               kernel/lib/raid6/raid6_pq.ko:\nkernel/crypto/xor.ko:\n\
               kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko kernel/crypto/xor.ko\n\
               kernel/fs/overlayfs/overlay.ko:\nkernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:\n\
               kernel/drivers/unrelated/unwanted.ko:\n";
    for line in dep.lines() {
        let (m, _) = line.split_once(':').unwrap();
        let p = moddir.join(m);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("fake module {m}")).unwrap();
    }
    fs::write(moddir.join("modules.dep"), dep).unwrap();
    let out = d.path().join("initramfs.gz");
    let conf = repo().join("config.d");
    let build = || {
        gsectl(
            "system",
            &[
                "initramfs",
                "build",
                "--kver",
                kver,
                "--modules-root",
                d.path().join("modroot").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--config",
                conf.to_str().unwrap(),
            ],
        )
    };
    let first = build();
    assert!(first.status.success(), "{}", text(&first.stderr));

    require_tool("cpio", "cpio");
    let list =
        Command::new("sh").arg("-c").arg("zstd -dcq \"$1\" | cpio -t --quiet").arg("sh").arg(&out).output().unwrap();
    assert!(list.status.success(), "{}", text(&list.stderr));
    let entries: Vec<String> = text(&list.stdout).lines().map(String::from).collect();
    let has = |p: &str| entries.iter().any(|e| e == p);
    assert!(
        has("init")
            && has("usr/sbin/gsed")
            && has("usr/bin/gsectl")
            && has("bin/busybox")
            && has("usr/lib/gse/gse-hook.sh")
    );
    assert!(has("usr/share/gse/config.d/system/boot.conf"));
    // Every module GSE wants, and every dependency modules.dep names for it;
    // what only a mount asks for (btrfs and what it needs) is kept compressed.
    require_tool("xz", "xz-utils");
    let carried = |m: &str| match ["btrfs.ko", "raid6_pq.ko", "xor.ko"].iter().any(|n| m.ends_with(n)) {
        true => format!("lib/modules/{kver}/{m}.xz"),
        false => format!("lib/modules/{kver}/{m}"),
    };
    for line in dep.lines().filter(|l| !l.contains("unwanted")) {
        let (m, deps) = line.split_once(':').unwrap();
        assert!(has(&carried(m)), "{m} missing: {entries:?}");
        for dm in deps.split_whitespace() {
            assert!(has(&carried(dm)), "dependency {dm} missing");
        }
    }
    assert!(!entries.iter().any(|e| e.contains("unwanted")));
    // Every library ldd names for the binaries.
    for b in [bin("gsed"), bin("gsectl")] {
        let ldd = Command::new("ldd").arg(&b).output().unwrap();
        for lib in text(&ldd.stdout)
            .lines()
            .filter_map(|l| l.split("=>").nth(1).or(Some(l)).and_then(|r| r.split_whitespace().next()))
            .filter(|p| p.starts_with('/'))
        {
            assert!(has(lib.trim_start_matches('/')), "{lib} (needed by {}) missing", b.display());
        }
    }
    // Nothing of the host's paths: all entries are relative, none names the build dirs.
    let host = d.path().to_str().unwrap().trim_start_matches('/');
    assert!(entries.iter().all(|e| !e.starts_with('/') && !e.contains(host) && !e.contains("..")), "{entries:?}");
    // /init is a sound shell script.
    let init = Command::new("sh")
        .arg("-c")
        .arg("zstd -dcq \"$1\" | cpio -i --to-stdout --quiet init")
        .arg("sh")
        .arg(&out)
        .output()
        .unwrap();
    let init_file = d.path().join("init");
    fs::write(&init_file, &init.stdout).unwrap();
    let sc =
        Command::new(require_tool("shellcheck", "shellcheck")).args(["-s", "sh"]).arg(&init_file).output().unwrap();
    assert!(sc.status.success(), "shellcheck /init:\n{}", text(&sc.stdout));
    let inside = |path: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dcq \"$1\" | cpio -i --to-stdout --quiet {path}"))
            .arg("sh")
            .arg(&out)
            .output()
            .unwrap();
        text(&out.stdout)
    };
    // The module load order puts dependencies first; btrfs is not loaded at
    // every boot but listed for the kernel's on-demand modprobe.
    let order = inside("etc/gse/modules");
    let pos =
        |list: &str, m: &str| list.lines().position(|l| l.ends_with(m)).unwrap_or_else(|| panic!("{m} not in {list}"));
    assert!(
        pos(&order, "virtio_ring.ko") < pos(&order, "virtio_blk.ko")
            && pos(&order, "failover.ko") < pos(&order, "net_failover.ko")
    );
    assert!(!order.contains("btrfs"), "btrfs is loaded on demand only: {order}");
    let btrfs = inside("etc/gse/modules.d/btrfs");
    assert!(pos(&btrfs, "raid6_pq.ko.xz") < pos(&btrfs, "btrfs.ko.xz"), "{btrfs}");
    assert!(
        inside(&format!("lib/modules/{kver}/modules.dep")).contains("btrfs.ko.xz: kernel/lib/raid6/raid6_pq.ko.xz")
    );
    let modprobe = inside("bin/modprobe");
    assert!(
        modprobe.starts_with("#!/bin/sh") && modprobe.contains("/etc/gse/modules.d/"),
        "GSE's modprobe, not busybox's"
    );
    // It says whether the module is in the kernel, filesystem or not: run in
    // the unpacked archive, in a mount namespace of its own, on this machine's
    // kernel (whose loop the tests' loop devices use).
    let tree = d.path().join("unpacked");
    fs::create_dir(&tree).unwrap();
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg("zstd -dcq \"$1\" | (cd \"$2\" && cpio -id --quiet)")
        .args(["sh", out.to_str().unwrap(), tree.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(unpacked.success());
    // busybox's insmod reads a compressed module through its own xz decoder,
    // which has no BCJ filters: that decoder gives the module back whole.
    let btrfs_ko = tree.join(format!("lib/modules/{kver}/kernel/fs/btrfs/btrfs.ko.xz"));
    let unxz = Command::new(tree.join("bin/busybox")).arg("xzcat").arg(&btrfs_ko).output().unwrap();
    assert!(unxz.status.success(), "busybox xzcat: {}", text(&unxz.stderr));
    assert_eq!(text(&unxz.stdout), "fake module kernel/fs/btrfs/btrfs.ko");
    let modprobe = |name: &str| {
        let script = "mount -t proc proc \"$1/proc\" && mount -t sysfs sysfs \"$1/sys\" && exec chroot \"$1\" /bin/modprobe \"$2\"";
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&tree)
            .arg(name)
            .output()
            .unwrap();
        out.status.code()
    };
    assert!(Path::new("/sys/module/loop").is_dir(), "this machine's kernel has loop");
    assert_eq!(modprobe("loop"), Some(0), "modprobe loop: loop is in the kernel");
    assert_eq!(modprobe("fs-nosuchfs"), Some(1), "an unknown module is not found");
    // A name spelled with - for the kernel's _ (crc32c-intel) is the same module.
    let underscored = fs::read_dir("/sys/module")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.contains('_'))
        .expect("a module with _ in its name");
    assert_eq!(modprobe(&underscored.replace('_', "-")), Some(0), "modprobe {underscored} spelled with -");
    assert_eq!(build().status.code(), Some(1), "no overwrite without --force");
}

#[test]
fn a_reader_never_sees_a_partial_channel_file() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path(), "k");
    let www = d.path().join("www");
    let image = d.path().join("stage4.tar");
    fs::create_dir_all(d.path().join("tree")).unwrap();
    fs::write(d.path().join("tree/data"), vec![7u8; 1 << 16]).unwrap();
    let tar =
        std::process::Command::new("tar").arg("-cf").arg(&image).arg("-C").arg(d.path().join("tree")).arg(".").status();
    assert!(tar.unwrap().success());
    let channel = www.join("gse1/channels/stable.json");
    let publish = |v: &str| {
        let out = publish_image(&image, v, "stable", &www, &d.path().join("k.sec"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    publish("1");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, channel) = (stop.clone(), channel.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = fs::read(&channel).unwrap();
                let v: serde_json::Value = serde_json::from_slice(&data)
                    .unwrap_or_else(|e| panic!("partial channel file ({e}): {:?}", text(&data)));
                assert!(v["version"].is_string());
                reads += 1;
            }
            reads
        })
    };
    for v in 2..12 {
        publish(&v.to_string());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("every read was a whole channel file");
    assert!(reads > 10, "the reader ran alongside ({reads} reads)");
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&channel).unwrap()).unwrap();
    assert_eq!(v["version"], "11");
    assert!(www.join("gse1/images/11/index.json").is_file() && www.join("gse1/images/11/index.json.minisig").is_file());
}
