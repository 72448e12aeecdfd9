//! Early boot on real disks: loop devices with real ext4 and btrfs, every mount in
//! a private mount namespace, `gsed --early` driven by `gsectl boot prepare`, and
//! the running system simulated by gsed on a private bus with `--boot-id`.

use std::{fs, time::Duration};

use gse_tests::{
    client::Client,
    disk::Loop,
    disk::{self, *},
    *,
};
use nix::sys::signal::Signal;
use serde_json::Value;

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
    c.ns.ok(&format!("touch {sys}/var/lib/gse-test/state"));
    // tmpfs.conf's read_only: the image's package database, not a copy.
    let pkg = format!("{sys}/var/db/pkg/app-misc/gse-test-1/CONTENTS");
    assert_eq!(c.ns.ok(&format!("cat {pkg}")), "obj /bin/busybox\n");
    let ro = c.in_ns(&format!("touch {pkg}"));
    assert!(!ro.status.success() && text(&ro.stderr).contains("Read-only file system"), "{}", text(&ro.stderr));
    let mounts = c.ns.ok(&format!("awk '$2 ~ \"^{sys}\" {{print $2, $3, $4}}' /proc/self/mounts"));
    for (at, fs) in [
        ("/etc", "tmpfs"),
        ("/var", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/var/tmp", "tmpfs"),
        ("/var/db/pkg", ""),
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

/// Both slots untrustworthy: no repair from a bad source and no bailout to a
/// bad backup; the primary boots as it is, loudly, and nothing is overwritten.
#[test]
fn with_both_slots_bad_the_primary_boots_as_it_is() {
    let c = Client::new(false, "[health]\ninit = \"none\"\non_failure = \"repair\"\n");
    c.provision();
    c.on_slot("b", "rm .gse/bootflag");
    c.on_slot("a", "echo only-on-a > marker");
    let b = corrupt_and_boot(&c, "flipped");
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"), "{b:#}");
    assert_eq!((s(&b["flags"]["a"]), s(&b["flags"]["b"])), ("forged: its MAC does not verify", "missing"));
    assert_eq!(
        s(&b["reason"]),
        "the flag of slot a is forged: its MAC does not verify, and the backup's flag is missing; booting slot a as it is"
    );
    c.power_off();
    assert_eq!(c.on_slot("a", "cat marker").trim(), "only-on-a", "slot a was not repaired from a bad backup");
    assert!(c.on_slot("b", "ls .gse").trim().is_empty(), "slot b got no flag");
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
    // Freeze gsed --early the moment the repair marker is on disk (the copy of
    // 25 MB has only begun), then cut it off: the kill always lands mid-repair.
    let started = std::time::Instant::now();
    while !fs::read_to_string(&state).is_ok_and(|t| t.contains("\"repair\": {")) {
        assert!(started.elapsed() < Duration::from_secs(10), "the repair did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(early.pid()), Signal::SIGSTOP).unwrap();
    early.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    c.power_off();
    c.ns.ok("true");
    assert!(
        fs::read_to_string(&state).unwrap().contains("\"repair\": {"),
        "the repair marker survives the kill (the copy was cut off)"
    );

    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "repair"), "{b:#}");
    assert!(s(&b["reason"]).contains("finishing an interrupted repair of slot a from slot b"), "{b:#}");
    c.power_off();
    c.assert_same_tree("a", "b");
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"));
    c.power_off();
}

fn hook(c: &Client, gsed: &std::path::Path) -> std::process::Output {
    hook_cmd(c, gsed).output().unwrap()
}

fn hook_cmd(c: &Client, gsed: &std::path::Path) -> std::process::Command {
    hook_in(c, gsed, &["sh"])
}

/// The hook under `shell` (e.g. `busybox sh`, the initramfs's).
fn hook_in(c: &Client, gsed: &std::path::Path, shell: &[&str]) -> std::process::Command {
    let mut cmd = c.ns.command(shell[0]);
    cmd.args(&shell[1..])
        .arg(repo().join("init-scripts/initramfs/gse-hook.sh"))
        .arg(&c.sysroot)
        .env("GSE_ROOT", c.root.path())
        .env("GSED", gsed)
        .env("GSECTL", bin("gsectl"))
        .env("GSE_BOOT_DEV", "")
        .env("GSE_DATA_DEV", "")
        .env("GSE_FALLBACK_DEV", &c.slot_dev[0])
        .env("GSE_RESCUE", "0");
    cmd
}

#[test]
fn the_generic_hook_boots_through_gse_and_falls_back_loudly() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.provision();
    let out = hook(&c, &bin("gsed"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("gse: booting slot a (normal)"), "{}", text(&out.stderr));
    assert!(c.root.path().join("run/gse/boot.json").exists());
    assert!(!c.root.path().join("run/gse/early.sock").exists(), "gsed --early is gone");
    c.power_off();

    // gsed itself broken: a loud message, and the primary mounted as it is.
    let out = hook(&c, std::path::Path::new("/bin/false"));
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("EARLY BOOT FAILED: gsed --early exited at start"), "{err}");
    assert!(err.contains(&format!("booting the primary slot as it is: {}", c.slot_dev[0])), "{err}");
    let sys = c.sysroot.display();
    assert_eq!(c.ns.ok(&format!("cat {sys}/etc/gse-release")).lines().nth(1), Some("VERSION=test-1"));
    assert!(!c.in_ns(&format!("touch {sys}/x")).status.success(), "read-only");
    assert!(!c.root.path().join("run/gse/boot.json").exists());
    c.power_off();

    // With gse.rescue, a shell comes first; leaving it goes on to the fallback.
    let mut child = hook_cmd(&c, std::path::Path::new("/bin/false"))
        .env("GSE_RESCUE", "1")
        .env("GSE_CONSOLE", "-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo rescue-$((6 * 7)) in $(pwd)\nexit\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert!(err.contains("gse.rescue is set: starting a rescue shell"), "{err}");
    assert!(stdout.contains("rescue-42 in /"), "the shell ran what was typed: {stdout}\n{err}");
    assert!(err.contains("booting the primary slot as it is"), "then the boot goes on: {err}");
    assert_eq!(c.ns.ok(&format!("cat {sys}/etc/gse-release")).lines().nth(1), Some("VERSION=test-1"));
    c.power_off();
}

#[test]
fn early_boot_reports_clear_errors_and_leaves_nothing_mounted() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    // No provisioning: no machine key.
    let mut early = c.start_early();
    let out = c.gsectl(&["boot", "prepare", "--sysroot", c.sysroot.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no machine key at") && text(&out.stderr).contains("run `gsectl provision` first"),
        "{}",
        text(&out.stderr)
    );
    assert!(early.wait_exit(Duration::from_secs(5)).is_some(), "Finish() is sent even after a failure");
    c.power_off();

    // A tmpfs that cannot be mounted half way through the layout: everything is unwound.
    c.provision();
    c.root.write("usr/share/gse/config.d/controller/tmpfs.conf", "[mount.\"/etc\"]\nsize = \"64M\"\n[mount.\"/var\"]\nsize = \"64M\"\n[mount.\"/tmp\"]\nsize = \"64M\"\noptions = [\"no-such-option\"]\n");
    let _early = c.start_early();
    let out = c.gsectl(&["boot", "prepare", "--sysroot", c.sysroot.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("tmpfs /tmp") && err.contains("Invalid argument"), "{err}");
    let sys = c.sysroot.display().to_string();
    let left = c.ns.ok(&format!("awk '$2 ~ \"^{sys}\"' /proc/self/mounts"));
    assert_eq!(left, "", "nothing is left mounted");
}

/// A machine with no GSE boot partition (DESIGN §12): the hook says so, and
/// without gse.install boots no further; an install with no server to ask is
/// tried GSE_INSTALL_TRIES times and then given up loudly; a mode it does not
/// know is named.
#[test]
fn a_machine_without_gse_says_so_and_gives_up_on_a_silent_server() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    let missing = format!("LABEL=gse-none-{:x}", std::process::id());
    let run = |install: &str| {
        let out = hook_cmd(&c, &bin("gsed"))
            .env("GSE_BOOT_DEV", &missing)
            .env("GSE_DEVICE_WAIT", "0")
            .env("GSE_INSTALL", install)
            .env("GSE_INSTALL_TRIES", "2")
            .env("GSE_RETRY_WAIT", "0")
            .output()
            .unwrap();
        c.power_off();
        text(&out.stderr)
    };
    let err = run("");
    assert!(err.contains(&format!("no GSE system is found locally: no {missing} after 0 s")), "{err}");
    assert!(err.contains("boot with gse.install=auto (install it), ask (a menu) or diskless (run from RAM)"), "{err}");

    for mode in ["auto", "diskless"] {
        let err = run(mode);
        assert!(err.contains("no server to install from (network: not needed: no server is configured"), "{err}");
        assert!(err.contains("trying again in 0 s (attempt 2 of 2)"), "{err}");
        assert!(err.contains("EARLY BOOT FAILED: gave up after 2 attempts (see above)"), "{err}");
        assert!(!err.contains("attempt 3"), "{err}");
    }
    let err = run("sometimes");
    assert!(err.contains("gse.install=sometimes is not auto, ask or diskless"), "{err}");
    for (url, why) in
        [("ftp://192.0.2.1", "is not an http:// or https:// URL"), ("http://x\"y", "quotes and backslashes")]
    {
        let out = hook_cmd(&c, &bin("gsed"))
            .env("GSE_BOOT_DEV", &missing)
            .env("GSE_DEVICE_WAIT", "0")
            .env("GSE_INSTALL", "auto")
            .env("GSE_SERVER", url)
            .output()
            .unwrap();
        c.power_off();
        let err = text(&out.stderr);
        assert!(err.contains(&format!("gse.server={url}")) && err.contains(why), "{err}");
        assert!(!err.contains("gsed --early ready"), "refused before anything started: {err}");
    }

    // gse.install=ask, under the initramfs's shell (busybox: `read -t`): the
    // menu names what the disk holds; installing over data needs "erase"
    // typed, anything else erases nothing; no answer runs diskless.
    let dir = tempfile::Builder::new().prefix("gse-ask-").tempdir().unwrap();
    let disk = Loop::new(dir.path(), "disk", 64);
    disk.mkfs_ext4("gse-old-data", None);
    c.root.write(
        "usr/share/gse/config.d/controller/drives.conf",
        &format!(
            "device = \"{}\"\nloader = \"none\"\n[[partition]]\nname = \"all\"\nsize = \"rest\"\nfstype = \"ext4\"\nlabel = \"x\"\n",
            disk.dev
        ),
    );
    let ask = |typed: &str| {
        let mut child = hook_in(&c, &bin("gsed"), &["busybox", "sh"])
            .env("GSE_BOOT_DEV", &missing)
            .env("GSE_DEVICE_WAIT", "0")
            .env("GSE_INSTALL", "ask")
            .env("GSE_CONSOLE", "-")
            .env("GSE_ASK_WAIT", "5")
            .env("GSE_INSTALL_TRIES", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), typed.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        c.power_off();
        text(&out.stderr)
    };
    let err = ask("i\nno\n");
    assert!(err.contains(&format!("{} holds ext4: ALL OF IT IS ERASED", disk.dev)), "{err}");
    assert!(err.contains("type erase to confirm that everything on the disk is lost"), "{err}");
    assert!(err.contains("EARLY BOOT FAILED: not confirmed: nothing was erased"), "{err}");
    assert_eq!(c.ns.ok(&format!("blkid -o value -s LABEL {}", disk.dev)).trim(), "gse-old-data", "untouched");
    let err = ask("");
    assert!(err.contains("your choice [i/d/s] (diskless in 5 s)"), "{err}");
    assert!(err.contains("no server to install from"), "diskless was tried: {err}");
}

#[test]
fn provision_format_refuses_data_then_lays_out_the_disk() {
    let ns = MountNs::new();
    let dir = tempfile::Builder::new().prefix("gse-fmt-").tempdir().unwrap();
    let disk = Loop::new(dir.path(), "disk", 320);
    disk.mkfs_ext4("gse-old-data", None);
    let tag = format!("{:x}", std::process::id() % 0xffff);
    let conf = dir.path().join("config.d");
    let w = |rel: &str, t: &str| {
        let p = conf.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, t).unwrap();
    };
    w(
        "controller/drives.conf",
        &format!(
            "device = \"{d}\"\nloader = \"none\"\n[[partition]]\nname = \"boot\"\nsize = \"32M\"\nfstype = \"ext4\"\nlabel = \"gb-{tag}\"\n\
             [[partition]]\nname = \"root\"\nsize = \"180M\"\nfstype = \"btrfs\"\nlabel = \"gr-{tag}\"\nsubvolumes = [\"@a\", \"@b\"]\n\
             [[partition]]\nname = \"data\"\nsize = \"rest\"\nfstype = \"ext4\"\nlabel = \"gd-{tag}\"\n",
            d = disk.dev
        ),
    );
    w(
        "system/boot.conf",
        &format!(
            "[slots.a]\ndevice = \"{d}p2\"\nfstype = \"btrfs\"\nsubvol = \"@a\"\n[slots.b]\ndevice = \"{d}p2\"\nfstype = \"btrfs\"\nsubvol = \"@b\"\n",
            d = disk.dev
        ),
    );
    w(
        "system/fstab.conf",
        &format!(
            "[mount.\"/boot\"]\ndevice = \"LABEL=gb-{tag}\"\nfstype = \"ext4\"\n[mount.\"/user-data\"]\ndevice = \"LABEL=gd-{tag}\"\nfstype = \"ext4\"\n"
        ),
    );
    let root = TestRoot::new();
    // gsectl on this root with `config` as its config.d.
    let gsectl = |args: &[&str], config: &std::path::Path| {
        ns.command(bin("gsectl"))
            .arg("--root")
            .arg(root.path())
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let provision = |force: bool| {
        gsectl(if force { &["provision", "--format", "--force"] } else { &["provision", "--format"] }, &conf)
    };

    let p = text(&gsectl(&["boot", "plan"], &conf).stdout);
    assert!(
        p.contains(&format!(
            "disk {} (gpt): boot 32M ext4, root 180M btrfs, data rest ext4; boot loader: none",
            disk.dev
        )),
        "{p}"
    );
    assert!(p.contains(&format!("{} holds ext4: ALL OF IT IS ERASED", disk.dev)), "{p}");

    // A disk drives.conf names that this machine does not have.
    let absent = dir.path().join("absent.d");
    assert!(std::process::Command::new("cp").arg("-a").arg(&conf).arg(&absent).status().unwrap().success());
    let drives = fs::read_to_string(conf.join("controller/drives.conf")).unwrap();
    fs::write(absent.join("controller/drives.conf"), drives.replace(&disk.dev, "/dev/gse-no-such-disk")).unwrap();
    let err = text(&gsectl(&["provision", "--format"], &absent).stderr);
    assert!(
        err.contains("no disk /dev/gse-no-such-disk (controller/drives.conf device); this machine has: /dev/"),
        "{err}"
    );

    let out = provision(false);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("refusing to format {}: it holds data (ext4)", disk.dev)) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(ns.ok(&format!("blkid -o value -s LABEL {}", disk.dev)).trim(), "gse-old-data", "untouched");

    let out = provision(true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let labels = ns.ok(&format!("for p in 1 2 3; do blkid -o value -s LABEL {}p$p; done", disk.dev));
    assert_eq!(
        labels.split_whitespace().collect::<Vec<_>>(),
        [format!("gb-{tag}"), format!("gr-{tag}"), format!("gd-{tag}")]
    );
    let d = &disk.dev;
    let check = ns.ok(&format!(
        "set -e; m=$(mktemp -d); mount {d}p1 $m; stat -c %a $m/gse/flag.key; ls $m/gse/install-unfinished; umount $m; \
         mount {d}p3 $m; ls $m/persistent | tr '\\n' ' '; echo; ls $m/persistent/local | tr '\\n' ' '; echo; umount $m; \
         mount {d}p2 $m; btrfs subvolume list $m | awk '{{print $NF}}' | tr '\\n' ' '; echo; head -2 $m/@a/.gse/bootflag | tail -1; head -2 $m/@b/.gse/bootflag | tail -1; umount $m"
    ));
    let lines: Vec<&str> = check.lines().collect();
    assert_eq!(lines[0], "600", "the flag key is private");
    assert!(lines[1].ends_with("gse/install-unfinished"), "no system until an install: {}", lines[1]);
    assert_eq!(lines[2].trim(), "config.d gse local logs overlays");
    assert_eq!(lines[3].trim(), "home root");
    assert_eq!(lines[4].trim(), "@a @b");
    assert_eq!(&lines[5..7], ["slot=a", "slot=b"]);
    assert_eq!(ns.ok(&format!("awk '$1 ~ \"^{d}\"' /proc/self/mounts")), "", "provision unmounts what it mounted");
}

/// A client whose config.d names a server on the lab's server side and the
/// lab's client interface (DHCP, short wait).
fn online_client(lab: &gse_tests::netns::NetLab, public_key: &str) -> Client {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.root.write(
        "usr/share/gse/config.d/controller/server/server.info.conf",
        &format!("public_key = \"{public_key}\"\nprobe_timeout = \"2s\"\n[[server]]\nname = \"lab\"\nurl = \"http://192.0.2.1:8080\"\n"),
    );
    c.root.write(
        "usr/share/gse/config.d/system/network.conf",
        &format!("wait = \"5s\"\n[interface.{}]\nmethod = \"dhcp\"\n", lab.client_if),
    );
    c.provision();
    c
}

#[test]
fn early_boot_goes_online_syncs_config_d_or_boots_offline() {
    use gse_tests::{http::Nginx, netns::NetLab};
    let mut lab = NetLab::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keygen(keys.path(), "k");
    let sec = keys.path().join("k.sec");

    // Offline: nobody answers DHCP; the boot goes on after the bounded wait.
    let c = online_client(&lab, &key);
    let b = c.early_boot_in(Some(&lab.client_ns));
    assert_eq!(s(&b["network"]), "offline: no address within 5s", "{b:#}");
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"));
    assert!(b.get("sync").is_none());
    c.power_off();

    // Online: DHCP from dnsmasq, and a published config.d whose motd reaches /etc.
    lab.start_dnsmasq(&[]);
    let www = keys.path().join("www");
    let tree = keys.path().join("config.d");
    assert!(
        std::process::Command::new("cp").arg("-a").arg(repo().join("config.d")).arg(&tree).status().unwrap().success()
    );
    fs::write(tree.join("system/etc.conf"), "[file.\"/etc/motd\"]\ncontent = \"synced from the lab server\\n\"\n")
        .unwrap();
    fs::write(
        tree.join("controller/server/server.info.conf"),
        format!("public_key = \"{key}\"\nprobe_timeout = \"2s\"\nboot_deadline = \"3s\"\n[[server]]\nname = \"lab\"\nurl = \"http://192.0.2.1:8080\"\n"),
    )
    .unwrap();
    fs::write(
        tree.join("system/network.conf"),
        format!("wait = \"5s\"\n[interface.{}]\nmethod = \"dhcp\"\n", lab.client_if),
    )
    .unwrap();
    // The synced layer wins over the image's: it carries this machine's slots too.
    fs::copy(c.root.path().join("usr/share/gse/config.d/controller/cboot.conf"), tree.join("controller/cboot.conf"))
        .unwrap();
    let out = publish_config(&tree, &www, &sec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut nginx = Nginx::start_in(&lab.server_ns, "192.0.2.1:8080", &www);
    let b = c.early_boot_in(Some(&lab.client_ns));
    assert!(s(&b["network"]).starts_with(&format!("up: {} 192.0.2.", lab.client_if)), "{b:#}");
    assert!(s(&b["sync"]).starts_with("synced config.d from lab:"), "{b:#}");
    let motd = c.ns.ok(&format!("cat {}/etc/motd", c.sysroot.display()));
    assert_eq!(motd, "synced from the lab server\n", "the synced etc.conf is applied in the same boot");
    c.power_off();

    // A server that answers probes but sends files at a trickle holds the boot no
    // longer than boot_deadline (3 s; a request alone may take 10 s), and nothing
    // of the slow sync lands behind the boot's back.
    fs::write(tree.join("system/etc.conf"), "[file.\"/etc/motd\"]\ncontent = \"too late\\n\"\n").unwrap();
    let out = publish_config(&tree, &www, &sec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    nginx.limit_rate = Some(50);
    nginx.restart();
    let t0 = std::time::Instant::now();
    let b = c.early_boot_in(Some(&lab.client_ns));
    let took = t0.elapsed();
    assert!(s(&b["sync"]).contains("using the cached config.d"), "{b:#}");
    assert!(took < Duration::from_secs(9), "the boot waited {took:?} for a stalled sync");
    let motd = c.ns.ok(&format!("cat {}/etc/motd", c.sysroot.display()));
    assert_eq!(motd, "synced from the lab server\n");
    c.power_off(); // gsed --early is gone, and with it any thread still fetching
    let kept = fs::read_to_string(c.root.path().join("user-data/persistent/config.d/system/etc.conf")).unwrap();
    assert!(!kept.contains("too late"), "the abandoned sync changed nothing: {kept}");
}

#[test]
fn an_image_installed_into_both_slots_boots() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.provision();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("rootfs");
    disk::tiny_root(&tree, "unused");
    let image = work.path().join("lab-2.0.tar.zst");
    let out = image_build(&tree, "2.0", &image, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // As `provision --format` leaves a new disk: no system until every slot is installed.
    let marker = c.root.path().join("boot/gse/install-unfinished");
    fs::write(&marker, "laid out\n").unwrap();
    let out = c.gsectl(&["install", "--image", image.to_str().unwrap(), "--slot", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marker.exists(), "one slot of two is not a whole install");
    let out = c.gsectl(&["install", "--image", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("install: slot b: image 2.0 installed"), "{}", text(&out.stderr));
    assert!(!marker.exists(), "a whole install makes the disk a system");
    c.assert_same_tree("a", "b");
    let b = c.early_boot();
    assert_eq!(
        (s(&b["slot"]), s(&b["action"]), s(&b["flag"]), s(&b["image_version"])),
        ("a", "normal", "valid", "2.0"),
        "{b:#}"
    );
    assert!(c.ns.ok(&format!("cat {}/etc/gse-release", c.sysroot.display())).contains("VERSION=2.0"));
    c.power_off();
}

/// A published config.d that names mount points the image does not have must not
/// break the boot of a whole room: they are skipped with a warning.
#[test]
fn mount_points_the_image_lacks_are_skipped_with_a_warning() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.root
        .write("usr/share/gse/config.d/controller/coverlays.conf", "[overlay.\"/srv/lab-tools\"]\nupper = \"tmpfs\"\n");
    c.root.write("usr/share/gse/config.d/controller/cfstab.conf", "persistent = [\"/home\", \"/scratch\"]\n");
    c.provision();
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"), "{b:#}");
    let warnings = b["warnings"].to_string();
    assert!(warnings.contains("/srv/lab-tools") && warnings.contains("/scratch"), "{b:#}");
    let sys = c.sysroot.display().to_string();
    let mounts = c.ns.ok(&format!("awk '$2 ~ \"^{sys}\" {{print $2, $3}}' /proc/self/mounts"));
    assert!(mounts.contains(&format!("{sys}/etc tmpfs")) && mounts.contains(&format!("{sys}/home ")), "{mounts}");
}

/// systemd's initrd makes every mount shared, and the kernel refuses to move a
/// mount out of a shared parent: the layout still mounts there.
#[test]
fn early_boot_mounts_the_layout_where_every_mount_is_shared() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.provision();
    c.ns.ok("mount --make-rshared /");
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"]), s(&b["flag"])), ("a", "normal", "valid"), "{b:#}");
    let sys = c.sysroot.display().to_string();
    assert_eq!(c.ns.ok(&format!("cat {sys}/etc/image-only")), "from the image\n", "/etc is filled from the image");
    let etc = c.ns.ok(&format!("awk '$2 == \"{sys}/etc\" {{print $3}}' /proc/self/mounts"));
    assert_eq!(etc.trim(), "tmpfs", "/etc is in RAM");
    c.power_off();
}

/// One early boot that stops at `gsectl boot prepare`: its output, and
/// whether gsed --early then exited cleanly.
fn prepare(c: &Client) -> std::process::Output {
    let mut early = c.start_early();
    let out = c.gsectl(&["boot", "prepare", "--sysroot", c.sysroot.to_str().unwrap()]);
    let status = early.wait_exit(Duration::from_secs(5)).expect("gsed --early exits after Finish()");
    assert!(status.success());
    out
}

/// Each slot boots its own kernel (DESIGN §12): the early boot under the
/// kernel the machine started decides and counts the boot, and when the slot
/// carries another kernel it hands the decision over (nothing mounted, exit
/// 4); the early boot under the slot's kernel carries the decision out
/// without counting again. A kernel without its modules is not started.
#[test]
fn a_slot_with_its_own_kernel_is_handed_over_and_the_decision_kept() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.provision();
    let kernel = |release: &str, modules: &str| {
        c.on_slot(
            "a",
            &format!(
                "rm -rf boot lib/modules; mkdir -p boot lib/modules/{modules}; echo kernel > boot/vmlinuz-{release}; \
                 echo initramfs > boot/gse-initramfs-{release}.img; : > lib/modules/{modules}/modules.dep"
            ),
        )
    };
    kernel("9.9-slot", "9.9-slot");
    c.root.write("proc/sys/kernel/osrelease", "9.8-stick\n");
    c.root.write("proc/cmdline", "console=ttyS0 quiet\n");
    let state = || -> Value {
        serde_json::from_slice(&fs::read(c.root.path().join("user-data/persistent/gse/boot-state.json")).unwrap())
            .unwrap()
    };

    let out = prepare(&c);
    assert_eq!(out.status.code(), Some(4), "exit 4: start the slot's kernel; {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("slot a (normal) runs its own kernel 9.9-slot; starting it"),
        "{}",
        text(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s(&r["slot"]), s(&r["kernel"]), s(&r["kexec"])), ("a", "9.8-stick", "9.9-slot"), "{r:#}");
    let mounts = c.ns.ok("cat /proc/self/mounts");
    assert!(!mounts.contains(c.sysroot.to_str().unwrap()), "nothing stays mounted for the next kernel:\n{mounts}");
    assert!(!c.root.path().join("run/gse/boot.json").exists(), "this kernel does not boot the system");
    assert_eq!(state()["attempts"]["a"], 1, "the boot is counted before the kernel changes");
    let handoff_file = c.root.path().join("user-data/persistent/gse/kexec-handoff.json");
    let handoff: Value = serde_json::from_slice(&fs::read(&handoff_file).unwrap()).unwrap();
    assert_eq!(s(&handoff["release"]), "9.9-slot");
    // Under --root no kernel is ever started on this machine.
    let kexec = c.gsectl(&["boot", "kexec"]);
    assert!(
        !kexec.status.success() && text(&kexec.stderr).contains("not starting another kernel"),
        "{}",
        text(&kexec.stderr)
    );

    // The slot's kernel, started with the handoff named on its command line.
    c.root.write("proc/sys/kernel/osrelease", "9.9-slot\n");
    c.root.write("proc/cmdline", &format!("console=ttyS0 quiet gse.handoff={}\n", s(&handoff["nonce"])));
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"]), s(&b["kernel"])), ("a", "normal", "9.9-slot"), "{b:#}");
    assert!(b.get("kexec").is_none(), "{b:#}");
    assert_eq!(state()["attempts"]["a"], 1, "not counted twice");
    assert!(!handoff_file.exists(), "a handoff is taken once");
    c.power_off();

    // Started again by the stick, with a stale handoff word on the command
    // line: decided (and counted) afresh.
    c.root.write("proc/sys/kernel/osrelease", "9.8-stick\n");
    assert_eq!(prepare(&c).status.code(), Some(4));
    assert_eq!(state()["attempts"]["a"], 2);

    // A kernel whose modules are another release's: not started; the slot
    // boots on the running kernel, and the record says why.
    kernel("9.9-slot", "9.7-other");
    c.root.write("proc/cmdline", "console=ttyS0 quiet\n");
    let b = c.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["kernel"])), ("a", "9.8-stick"), "{b:#}");
    let warnings = b["warnings"].to_string();
    assert!(
        warnings.contains("not starting its own kernel")
            && warnings.contains("lib/modules/9.9-slot/")
            && warnings.contains("9.7-other"),
        "{warnings}"
    );
    assert!(!handoff_file.exists());
    c.power_off();
}

/// Early boot finds slots by LABEL=, UUID= and PARTLABEL= itself (no udev, no
/// blkid in the initramfs, and busybox's findfs knows no PARTLABEL=): what it
/// reads from real ext4 and btrfs superblocks and a GPT agrees with blkid.
#[test]
fn devices_are_found_by_label_uuid_and_partlabel_as_blkid_finds_them() {
    use gsed::boot::devices;
    let dir = tempfile::Builder::new().prefix("gse-devs-").tempdir().unwrap();
    let disk = Loop::new(dir.path(), "disk", 300);
    // Names of this run only: the lookups see every block device of the machine.
    let tag = format!("{:x}", std::process::id() % 0xffff);
    let (ext_name, btrfs_name) = (format!("pe-{tag}"), format!("pb-{tag}"));
    let layout = format!("label: gpt\nsize=40M, name={ext_name}\nname={btrfs_name}\n");
    let mut sfdisk = std::process::Command::new(require_tool("sfdisk", "fdisk"))
        .args(["-q", &disk.dev])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sfdisk.stdin.take().unwrap(), layout.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success(), "sfdisk");
    let _ = std::process::Command::new("partx").args(["--update", &disk.dev]).output();
    let part = |n: u32| {
        let p = format!("{}p{n}", disk.dev);
        wait_for(Duration::from_secs(5), &p, || std::path::Path::new(&p).exists().then_some(()));
        p
    };
    let (ext, btrfs) = (part(1), part(2));
    disk::mkfs_ext4(&ext, &format!("le-{tag}"), None);
    disk::mkfs_btrfs(&btrfs, &format!("lb-{tag}"));
    for (p, label, name) in [(&ext, format!("le-{tag}"), &ext_name), (&btrfs, format!("lb-{tag}"), &btrfs_name)] {
        let blkid = |tag: &str| {
            let out = std::process::Command::new(require_tool("blkid", "util-linux"))
                .args(["-p", "-o", "value", "-s", tag, p])
                .output();
            text(&out.unwrap().stdout).trim().to_owned()
        };
        let id = devices::identify(std::path::Path::new(p)).expect("a superblock is read");
        assert_eq!((id.label.as_str(), id.uuid.as_str()), (blkid("LABEL").as_str(), blkid("UUID").as_str()));
        assert_eq!(id.label, label);
        let dev = Some(std::path::PathBuf::from(p));
        assert_eq!(devices::find(&format!("LABEL={label}")), dev);
        assert_eq!(devices::find(&format!("UUID={}", id.uuid.to_uppercase())), dev, "UUIDs match in any case");
        assert_eq!(devices::find(&format!("PARTLABEL={name}")), dev);
    }
    let listed = devices::block_devices();
    assert!(!listed.iter().any(|d| d.path.to_string_lossy() == disk.dev), "a partitioned disk is not a candidate");
}
