//! A simulated lab client for early-boot tests and benchmarks: two slots on loop
//! devices (ext4, or btrfs subvolumes), a `--root` tree holding /boot and
//! /user-data, and a sysroot, all inside a private mount namespace.

use std::{fs, path::PathBuf, time::Duration};

use serde_json::Value;

use crate::{
    ProcessGuard, TestBus, TestRoot, bin,
    disk::{self, Loop, MountNs, tiny_root},
    gsectl, repo, text, wait_for,
};

/// One lab client: two slots on loop devices, a `--root` tree holding /boot and
/// /user-data, and a sysroot where early boot mounts the new root.
pub struct Client {
    pub ns: MountNs,
    pub root: TestRoot,
    pub sysroot: PathBuf,
    _devs: Vec<Loop>,
    pub slot_dev: [String; 2],
    pub btrfs: bool,
    _images: tempfile::TempDir,
}

impl Client {
    pub fn new(btrfs: bool, boot_conf: &str) -> Client {
        Self::new_sized(btrfs, boot_conf, 48)
    }

    /// Like `new`, with slots of `mib` MiB each.
    pub fn new_sized(btrfs: bool, boot_conf: &str, mib: u64) -> Client {
        let ns = MountNs::new();
        let images = tempfile::Builder::new().prefix("gse-disk-").tempdir().unwrap();
        let tree = images.path().join("tree");
        tiny_root(&tree, "test-1");
        let root = TestRoot::new();
        let mut devs = Vec::new();
        let slot_dev;
        if btrfs {
            let d = Loop::new(images.path(), "root", (2 * mib).max(160));
            d.mkfs_btrfs("gse-test-root");
            ns.ok(&format!(
                "set -e; m=$(mktemp -d); mount {dev} $m; for s in @a @b; do btrfs -q subvolume create $m/$s; cp -a {tree}/. $m/$s/; done; umount $m",
                dev = d.dev,
                tree = tree.display()
            ));
            slot_dev = [d.dev.clone(), d.dev.clone()];
            devs.push(d);
        } else {
            for s in ["a", "b"] {
                let d = Loop::new(images.path(), s, mib);
                d.mkfs_ext4(&format!("gse-test-{s}"), Some(&tree));
                devs.push(d);
            }
            slot_dev = [devs[0].dev.clone(), devs[1].dev.clone()];
        }
        let image_conf = root.path().join("usr/share/gse/config.d");
        fs::create_dir_all(image_conf.parent().unwrap()).unwrap();
        let out =
            std::process::Command::new("cp").arg("-a").arg(repo().join("config.d")).arg(&image_conf).output().unwrap();
        assert!(out.status.success());
        let sysroot = images.path().join("sysroot");
        fs::create_dir_all(&sysroot).unwrap();
        let c = Client { ns, root, sysroot, _devs: devs, slot_dev, btrfs, _images: images };
        c.conf(boot_conf);
        c
    }

    /// Sets controller/cboot.conf in the image's config.d: the slots, plus `extra`.
    pub fn conf(&self, extra: &str) {
        let slot = |name: &str, dev: &str| {
            if self.btrfs {
                format!("[slots.{name}]\ndevice = \"{dev}\"\nfstype = \"btrfs\"\nsubvol = \"@{name}\"\n")
            } else {
                format!("[slots.{name}]\ndevice = \"{dev}\"\nfstype = \"ext4\"\n")
            }
        };
        let text = format!("{extra}\n{}{}", slot("a", &self.slot_dev[0]), slot("b", &self.slot_dev[1]));
        self.root.write("usr/share/gse/config.d/controller/cboot.conf", &text);
    }

    pub fn gsectl(&self, args: &[&str]) -> std::process::Output {
        self.ns.command(bin("gsectl")).arg("--root").arg(self.root.path()).args(args).output().unwrap()
    }

    pub fn provision(&self) {
        let out = self.gsectl(&["provision"]);
        assert!(out.status.success(), "provision: {}", text(&out.stderr));
    }

    pub fn start_early(&self) -> ProcessGuard {
        self.start_early_in(None)
    }

    /// gsed --early in this client's mount namespace and, when given, network namespace.
    pub fn start_early_in(&self, netns: Option<&str>) -> ProcessGuard {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nsenter", "-t", &self.ns.holder_pid().to_string(), "-m", "--"])
                    .arg(bin("gsed"));
                c
            }
            None => self.ns.command(bin("gsed")),
        };
        let child = cmd
            .arg("--early")
            .arg("--root")
            .arg(self.root.path())
            .stderr(fs::File::create(self.root.path().join("gsed-early.log")).unwrap())
            .spawn()
            .unwrap();
        let guard = ProcessGuard { child: Some(child), name: "gsed --early".into() };
        let sock = self.root.path().join("run/gse/early.sock");
        wait_for(Duration::from_secs(10), "the early socket", || sock.exists().then_some(()));
        guard
    }

    /// One early boot; returns /run/gse/boot.json.
    pub fn early_boot(&self) -> Value {
        self.early_boot_in(None)
    }

    /// One early boot with gsed --early in network namespace `netns`.
    pub fn early_boot_in(&self, netns: Option<&str>) -> Value {
        let mut early = self.start_early_in(netns);
        let out = self.gsectl(&["boot", "prepare", "--sysroot", self.sysroot.to_str().unwrap()]);
        let log = fs::read_to_string(self.root.path().join("gsed-early.log")).unwrap_or_default();
        assert!(out.status.success(), "boot prepare: {}\n{log}", text(&out.stderr));
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
        let status = early.wait_exit(Duration::from_secs(5)).expect("gsed --early exits after Finish()");
        assert!(status.success());
        let record: Value =
            serde_json::from_str(&fs::read_to_string(self.root.path().join("run/gse/boot.json")).unwrap()).unwrap();
        assert_eq!(record, stdout);
        record
    }

    /// The running system's gsed, in this client's mount namespace (it mounts
    /// the slot an update goes into).
    pub fn start_gsed(&self, bus: &TestBus, boot_id: &str) -> ProcessGuard {
        self.start_gsed_in(bus, boot_id, None)
    }

    /// Like [`Client::start_gsed`], inside network namespace `netns` when given.
    pub fn start_gsed_in(&self, bus: &TestBus, boot_id: &str, netns: Option<&str>) -> ProcessGuard {
        let cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nsenter", "-t", &self.ns.holder_pid().to_string(), "-m", "--"])
                    .arg(bin("gsed"));
                c
            }
            None => self.ns.command(bin("gsed")),
        };
        crate::spawn_gsed(cmd, bus, &self.root, boot_id)
    }

    /// The running system: gsed records this boot; `clean` adds the shutdown record.
    pub fn run_system(&self, boot_id: &str, clean: bool) -> Value {
        let bus = TestBus::start();
        let gsed = self.start_gsed(&bus, boot_id);
        let report = wait_for(Duration::from_secs(20), "a verdict", || {
            let out = gsectl(&bus.address, &["health", "--json"]);
            let r: Value = serde_json::from_slice(&out.stdout).ok()?;
            matches!(r["status"].as_str(), Some("green" | "red")).then_some(r)
        });
        if clean {
            assert!(gsectl(&bus.address, &["health", "record-shutdown"]).status.success());
        }
        drop(gsed);
        report
    }

    /// Unmounts the new root and forgets the RAM of this boot (/run).
    pub fn power_off(&self) {
        let (s, r) = (self.sysroot.display().to_string(), self.root.path().join("run").display().to_string());
        self.ns.ok(&format!(
            "for m in $(awk '{{print $2}}' /proc/self/mounts | grep -E '^({s}|{r})' | sort -r); do umount $m || umount -l $m; done; rm -rf {r}/gse"
        ));
    }

    /// Runs `script` with slot `slot` mounted read-write at $M.
    pub fn on_slot(&self, slot: &str, script: &str) -> String {
        let (dev, opts) = if self.btrfs {
            (&self.slot_dev[0], format!("-o subvol=@{slot}"))
        } else {
            (&self.slot_dev[if slot == "a" { 0 } else { 1 }], String::new())
        };
        self.ns
            .ok(&format!("set -e; M=$(mktemp -d); mount {opts} {dev} $M; cd $M; {script}; cd /; umount $M; rmdir $M"))
    }

    /// Asserts that two slots hold the same tree, showing only the lines that differ.
    pub fn assert_same_tree(&self, x: &str, y: &str) {
        disk::assert_same_listing((x, &self.listing(x)), (y, &self.listing(y)));
    }

    pub fn in_ns(&self, script: &str) -> std::process::Output {
        self.ns.sh(script)
    }

    /// Files of a slot with their metadata, for comparing two slots.
    pub fn listing(&self, slot: &str) -> String {
        disk::normalize_listing(&self.on_slot(slot, disk::LISTING))
    }
}
