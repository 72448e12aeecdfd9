//! Early boot on real disks: loop devices with real ext4 and btrfs, every mount in
//! a private mount namespace, `gsed --early` driven by `gsectl boot prepare`, and
//! the running system simulated by gsed on a private bus with `--boot-id`.

use std::{fs, path::PathBuf, time::Duration};

use gse_tests::{disk::*, *};
use nix::sys::signal::Signal;
use serde_json::Value;

/// One lab client: two slots on loop devices, a `--root` tree holding /boot and
/// /user-data, and a sysroot where early boot mounts the new root.
struct Client {
    ns: MountNs,
    root: TestRoot,
    sysroot: PathBuf,
    _devs: Vec<Loop>,
    slot_dev: [String; 2],
    btrfs: bool,
    _images: tempfile::TempDir,
}

impl Client {
    fn new(btrfs: bool, boot_conf: &str) -> Client {
        let ns = MountNs::new();
        let images = tempfile::Builder::new().prefix("gse-disk-").tempdir().unwrap();
        let tree = images.path().join("tree");
        tiny_root(&tree, "test-1");
        let root = TestRoot::new();
        let mut devs = Vec::new();
        let slot_dev;
        if btrfs {
            let d = Loop::new(images.path(), "root", 160);
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
                let d = Loop::new(images.path(), s, 48);
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
    fn conf(&self, extra: &str) {
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

    fn gsectl(&self, args: &[&str]) -> std::process::Output {
        self.ns.command(bin("gsectl")).arg("--root").arg(self.root.path()).args(args).output().unwrap()
    }

    fn provision(&self) {
        let out = self.gsectl(&["provision"]);
        assert!(out.status.success(), "provision: {}", text(&out.stderr));
    }

    fn start_early(&self) -> ProcessGuard {
        let child = self
            .ns
            .command(bin("gsed"))
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
    fn early_boot(&self) -> Value {
        let mut early = self.start_early();
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

    /// The running system: gsed records this boot; `clean` adds the shutdown record.
    fn run_system(&self, boot_id: &str, clean: bool) -> Value {
        let bus = TestBus::start();
        let gsed = start_gsed(&bus, &self.root, boot_id);
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
    fn power_off(&self) {
        let (s, r) = (self.sysroot.display().to_string(), self.root.path().join("run").display().to_string());
        self.ns.ok(&format!(
            "for m in $(awk '{{print $2}}' /proc/self/mounts | grep -E '^({s}|{r})' | sort -r); do umount $m || umount -l $m; done; rm -rf {r}/gse"
        ));
    }

    /// Runs `script` with slot `slot` mounted read-write at $M.
    fn on_slot(&self, slot: &str, script: &str) -> String {
        let (dev, opts) = if self.btrfs {
            (&self.slot_dev[0], format!("-o subvol=@{slot}"))
        } else {
            (&self.slot_dev[if slot == "a" { 0 } else { 1 }], String::new())
        };
        self.ns
            .ok(&format!("set -e; M=$(mktemp -d); mount {opts} {dev} $M; cd $M; {script}; cd /; umount $M; rmdir $M"))
    }

    /// Asserts that two slots hold the same tree, showing only the lines that differ.
    fn assert_same_tree(&self, x: &str, y: &str) {
        let (lx, ly) = (self.listing(x), self.listing(y));
        let only =
            |a: &str, b: &str| a.lines().filter(|l| !b.lines().any(|m| m == *l)).map(String::from).collect::<Vec<_>>();
        let (ox, oy) = (only(&lx, &ly), only(&ly, &lx));
        assert!(
            ox.is_empty() && oy.is_empty(),
            "slot {x} and slot {y} differ:\n only in {x}: {ox:#?}\n only in {y}: {oy:#?}"
        );
    }

    fn in_ns(&self, script: &str) -> std::process::Output {
        self.ns.sh(script)
    }

    /// Files of a slot with their metadata, for comparing two slots. A directory's
    /// size is how the filesystem laid it out, not content, so it is left out.
    fn listing(&self, slot: &str) -> String {
        let raw = self.on_slot(
            slot,
            "find . -xdev \\( -path ./lost+found -o -path ./.gse \\) -prune -o -print0 | sort -z | xargs -0 stat -c '%n|%f|%u|%g|%s|%Y|%t:%T|%h|%N'; getfattr -R -d -m - --absolute-names . 2>/dev/null | grep -v '^# file: ./.gse' || true",
        );
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
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn healthy_cycle_and_layout(btrfs: bool) {
    let c = Client::new(btrfs, "[health]\ninit = \"none\"\ndeadline = \"10s\"\ncheck_timeout = \"5s\"\n");
    c.provision();

    let b1 = c.early_boot();
    assert_eq!((s(&b1["slot"]), s(&b1["action"]), s(&b1["flag"])), ("a", "normal", "valid"), "{b1:#}");
    assert_eq!(b1["healthy_cycles"], 0);
    assert_eq!(s(&b1["image_version"]), "test-1");

    // The stateless layout.
    let sys = c.sysroot.display().to_string();
    let ro = c.in_ns(&format!("touch {sys}/bin/new-file"));
    assert!(!ro.status.success() && text(&ro.stderr).contains("Read-only file system"), "{}", text(&ro.stderr));
    c.ns.ok(&format!("touch {sys}/etc/written-at-runtime"));
    let motd = c.ns.ok(&format!("cat {sys}/etc/motd"));
    assert!(motd.contains("This is a GSE lab machine"), "etc.conf's motd: {motd}");
    assert_eq!(c.ns.ok(&format!("cat {sys}/etc/image-only")), "from the image\n", "/etc is filled from the image");
    assert!(
        c.ns.ok(&format!("cat {sys}/etc/fstab")).contains("LABEL=gse-data\t/user-data\text4\tdefaults,noatime\t0 2")
    );
    assert_eq!(
        c.ns.ok(&format!("ls {sys}/etc/runlevels/default")).split_whitespace().collect::<Vec<_>>(),
        ["dbus", "gsed", "local"]
    );
    assert_eq!(c.ns.ok(&format!("cat {sys}/var/lib/gse-test/state")), "image var\n");
    let mounts = c.ns.ok(&format!("awk '$2 ~ \"^{sys}\" {{print $2, $3, $4}}' /proc/self/mounts"));
    for (at, fs) in [
        ("/etc", "tmpfs"),
        ("/var", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/var/tmp", "tmpfs"),
        ("/home", ""),
        ("/user-data", ""),
        ("/opt", "overlay"),
    ] {
        assert!(mounts.lines().any(|l| l.starts_with(&format!("{sys}{at} {fs}"))), "{at} {fs} missing in:\n{mounts}");
    }
    assert!(mounts.lines().any(|l| l.starts_with(&format!("{sys}/tmp tmpfs rw,nosuid,nodev"))), "{mounts}");
    c.ns.ok(&format!("mkdir -p {sys}/home/alice && echo thesis > {sys}/home/alice/work.txt && echo junk > {sys}/tmp/junk && echo x > {sys}/opt/tool"));

    let r1 = c.run_system("boot-1", true);
    assert_eq!(s(&r1["status"]), "green");
    c.power_off();

    let b2 = c.early_boot();
    assert_eq!((s(&b2["slot"]), s(&b2["action"]), s(&b2["previous"])), ("a", "normal", "healthy-cycle"), "{b2:#}");
    assert_eq!(b2["healthy_cycles"], 1, "the flag was renewed");
    assert_eq!(c.ns.ok(&format!("cat {sys}/home/alice/work.txt")), "thesis\n", "/home survives");
    assert!(c.in_ns(&format!("test -e {sys}/tmp/junk")).status.code() == Some(1), "/tmp is empty again");
    assert!(c.in_ns(&format!("test -e {sys}/opt/tool")).status.code() == Some(1), "the tmpfs overlay is gone");
    assert!(c.in_ns(&format!("test -e {sys}/etc/written-at-runtime")).status.code() == Some(1), "/etc is fresh");

    let r2 = c.run_system("boot-2", false);
    assert_eq!(r2["healthy_cycles"], 1);
    assert_eq!(s(&r2["boot"]["reason"]), "the primary slot is healthy");
    c.power_off();
}

#[test]
fn ext4_healthy_cycle_and_stateless_layout() {
    healthy_cycle_and_layout(false);
}

#[test]
fn btrfs_healthy_cycle_and_stateless_layout() {
    healthy_cycle_and_layout(true);
}

/// Corrupts slot a's flag one way, boots, and returns boot.json.
fn corrupt_and_boot(c: &Client, how: &str) -> Value {
    match how {
        "flipped" => c.on_slot("a", "sed -i 's/healthy_cycles=0/healthy_cycles=7/' .gse/bootflag"),
        "deleted" => c.on_slot("a", "rm .gse/bootflag"),
        "copied" => {
            let other = c.on_slot("b", "cat .gse/bootflag");
            let tmp = c.root.path().join("flag-b");
            fs::write(&tmp, other).unwrap();
            c.on_slot("a", &format!("cp {} .gse/bootflag", tmp.display()))
        }
        _ => unreachable!(),
    };
    c.early_boot()
}

fn flag_corruption(btrfs: bool) {
    for (how, word) in [
        ("flipped", "forged: its MAC does not verify"),
        ("deleted", "missing"),
        ("copied", "forged: it belongs to slot b"),
    ] {
        let c = Client::new(btrfs, "[health]\ninit = \"none\"\non_failure = \"bailout\"\n");
        c.provision();
        let b = corrupt_and_boot(&c, how);
        assert_eq!((s(&b["slot"]), s(&b["action"])), ("b", "bailout"), "{how}: {b:#}");
        assert_eq!(s(&b["flags"]["a"]), word, "{how}");
        assert_eq!(s(&b["reason"]), format!("running on backup b: the flag of slot a is {word}"));
        let r = c.run_system("boot-bailout", true);
        assert_eq!(s(&r["booted_slot"]), "b");
        assert!(s(&r["boot"]["reason"]).starts_with("running on backup b: the flag of slot a is"));
        c.power_off();
    }
    // Repair: a is restored from b, file by file with metadata (or by snapshot), and boots.
    let c = Client::new(btrfs, "[health]\ninit = \"none\"\non_failure = \"repair\"\n");
    c.provision();
    c.on_slot("a", "rm -rf etc/motd var/lib && echo broken > bin/busybox && echo stray > stray-file");
    let b = corrupt_and_boot(&c, "flipped");
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "repair"), "{b:#}");
    assert!(s(&b["reason"]).starts_with("slot a restored from backup b: the flag of slot a is forged"), "{b:#}");
    c.power_off();
    c.assert_same_tree("a", "b");
    let b2 = c.early_boot();
    assert_eq!((s(&b2["slot"]), s(&b2["action"]), s(&b2["flag"])), ("a", "normal", "valid"));
    c.power_off();
}

#[test]
fn ext4_flag_corruption_bailout_and_repair() {
    flag_corruption(false);
}

#[test]
fn btrfs_flag_corruption_bailout_and_repair() {
    flag_corruption(true);
}

#[test]
fn max_attempts_and_dirty_boots() {
    let c = Client::new(
        false,
        "[health]\ninit = \"none\"\nmax_attempts = 2\ndeadline = \"1s\"\ncheck_timeout = \"1s\"\nretry_interval = \"200ms\"\n",
    );
    c.provision();
    c.root.check("required", "always-fails", "echo broken; exit 1");
    for i in 0..2 {
        let b = c.early_boot();
        assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"), "boot {i}");
        assert_eq!(s(&c.run_system(&format!("red-{i}"), true)["status"]), "red");
        c.power_off();
    }
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("b", "bailout"), "{b:#}");
    assert_eq!(s(&b["reason"]), "running on backup b: slot a did not complete a healthy cycle in 2 boot(s)");
    c.power_off();

    // A dirty boot: healthy, then the power is pulled (no clean shutdown).
    let c = Client::new(false, "[health]\ninit = \"none\"\nmax_attempts = 1\ndirty_is_failure = false\n");
    c.provision();
    c.early_boot();
    assert_eq!(s(&c.run_system("dirty-1", false)["status"]), "green");
    c.power_off();
    let b = c.early_boot();
    assert_eq!((s(&b["action"]), s(&b["previous"])), ("normal", "dirty"), "{b:#}");
    assert_eq!(b["healthy_cycles"], 0, "a dirty boot does not renew the flag");
    c.power_off();
    c.conf("[health]\ninit = \"none\"\nmax_attempts = 1\ndirty_is_failure = true\n");
    c.run_system("dirty-2", false);
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"]), s(&b["previous"])), ("b", "bailout", "dirty"), "{b:#}");
    c.power_off();
}

#[test]
fn a_repair_killed_halfway_is_finished_next_boot() {
    let c = Client::new(false, "[health]\ninit = \"none\"\non_failure = \"repair\"\n");
    // Enough data that the copy takes a while.
    c.on_slot(
        "b",
        "mkdir -p big; i=0; while [ $i -lt 400 ]; do head -c 65536 /dev/urandom > big/f$i; i=$((i+1)); done",
    );
    c.provision();
    c.on_slot("a", "rm .gse/bootflag");
    let mut early = c.start_early();
    let prepare =
        c.ns.command(bin("gsectl"))
            .arg("--root")
            .arg(c.root.path())
            .args(["boot", "prepare", "--sysroot", c.sysroot.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let _prepare = ProcessGuard { child: Some(prepare), name: "gsectl boot prepare".into() };
    let state = c.root.path().join("user-data/persistent/gse/boot-state.json");
    wait_for(Duration::from_secs(10), "the repair to start", || {
        fs::read_to_string(&state).ok().filter(|t| t.contains("\"repair\": {")).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(50));
    early.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    c.power_off();
    c.ns.ok("true");

    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "repair"), "{b:#}");
    assert!(s(&b["reason"]).contains("interrupted repair") || s(&b["reason"]).starts_with("slot a restored"), "{b:#}");
    c.power_off();
    c.assert_same_tree("a", "b");
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"));
    c.power_off();
}
