//! The whole-boot proof: a real Debian OpenRC client booted under qemu (TCG)
//! through GSE's initramfs, again and again, through every health path; and a
//! systemd client, through GSE's initramfs and through Debian's dracut. Each test
//! is one scenario with its own disk and its own lab network (see `gse_tests::vm`);
//! it asserts on what the guest reports on its console and on the disk afterwards,
//! and prints one line per boot. A failing test prints the console of every boot.

use std::{fs, path::Path, time::Duration};

use gse_tests::vm::{Boot, Disk, Lab, SERVERS, Vm, kit, systemd_kit};

/// Writes `text` to `rel` inside the config.d tree `conf`.
fn put(conf: &Path, rel: &str, text: &str) {
    let p = conf.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn motd(conf: &Path, line: &str) {
    put(conf, "system/etc.conf", &format!("[file.\"/etc/motd\"]\ncontent = \"{line}\\n\"\n"));
}

fn cycles(b: &Boot) -> u64 {
    b.health["healthy_cycles"].as_u64().unwrap_or(u64::MAX)
}

/// After a clean poweroff, the boot partition and the user-data area were
/// unmounted cleanly: their ext4 journals need no replay.
fn assert_clean_filesystems(vm: &Vm) {
    for (part, what) in [(vm.part("boot"), "the boot partition"), (vm.data_part(), "the user-data area")] {
        let sb = vm.superblock(part);
        let line = |key: &str| sb.lines().find(|l| l.starts_with(key)).unwrap_or("").to_owned();
        let (features, state) = (line("Filesystem features:"), line("Filesystem state:"));
        assert!(
            !features.contains("needs_recovery") && state.ends_with(" clean"),
            "vm {}: {what} was left unclean by a clean poweroff: {state}; {features}",
            vm.scenario
        );
    }
}

/// The rest of the console line after `marker`.
fn line_of(b: &Boot, marker: &str) -> String {
    b.log.lines().find_map(|l| l.split(marker).nth(1)).unwrap_or("").trim().to_owned()
}

/// The boot flag of slot `slot` as it is on the disk.
fn flag_on_disk(vm: &Vm, slot: &str) -> String {
    vm.on_slot(slot, "cat .gse/bootflag")
}

/// Boots with slot a's flag already corrupted and `repair` in force, and pulls
/// the power once the repair has begun: qemu is killed, so whatever the guest
/// had not written out is lost, as on a lab machine. Then the boot after it.
fn cut_power_during_repair(vm: &Vm, lab: &Lab) -> Boot {
    let mut r = vm.start(lab, "report");
    r.wait_line("repairing target=a source=b", gse_tests::vm::BOOT_TIMEOUT);
    let cut = r.pull_power();
    vm.report(&cut, "power cut during the repair");
    assert!(!cut.log.contains("GSE-HEALTH-JSON"), "the cut came before the system was up");
    let b = vm.boot(lab);
    vm.report(&b, "repair finished after the power cut");
    b
}

#[test]
fn vm_first_boot_syncs_renews_and_follows_the_published_config() {
    let (vm, lab) = (Vm::new("first-boot"), Lab::new("first"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    motd(&conf, "lab motd v1");
    lab.publish(&conf);

    let b1 = vm.boot(&lab);
    vm.report(&b1, "first boot");
    // Early boot lets go of what it mounted; OpenRC's shutdown runlevel
    // (gse-unmount) unmounts the rest.
    assert_clean_filesystems(&vm);
    assert_eq!((b1.slot(), b1.action(), b1.status()), ("a", "normal", "green"), "{}", b1.boot);
    let filesystems = line_of(&b1, "GSE-FILESYSTEMS: ");
    assert!(
        filesystems.contains("ext4") && !filesystems.split(',').any(|f| f == "btrfs"),
        "an ext4 machine never loads btrfs (the initramfs loads it on demand): {filesystems}"
    );
    // qemu's CPU has no SSE4.2: /init skips crc32c-intel, which would only fail.
    assert!(!b1.log.contains("gse: could not load"), "/init loads only the modules this machine takes:\n{}", b1.log);
    assert!(b1.field("network").starts_with("up: "), "{}", b1.boot);
    assert!(b1.field("sync").starts_with("synced config.d from s"), "{}", b1.boot);
    assert_eq!(b1.motd, "lab motd v1", "the published /etc/motd is in the guest's /etc");
    let (dbus, gsed) = (b1.log.find("Starting system message bus"), b1.log.find("Starting gsed"));
    assert!(dbus.is_some() && gsed.is_some() && dbus < gsed, "OpenRC starts dbus, then gsed");
    assert!(b1.log.contains("Recording the clean shutdown for GSE"), "the OpenRC script records the shutdown");
    // The shipped D-Bus policy on the guest's real system bus: anyone reads, only
    // root and group gse change state (exit 0 = allowed).
    let policy = b1.log.lines().find_map(|l| l.split("GSE-POLICY: ").nth(1)).unwrap_or("").trim().to_owned();
    let rc = |who: &str| policy.split(' ').find_map(|kv| kv.strip_prefix(&format!("{who}="))).unwrap_or("?").to_owned();
    assert_eq!(rc("student-read"), "0", "{policy}");
    assert_ne!(rc("student-unpin"), "0", "a student may not change state: {policy}");
    let denied = b1.log.lines().find_map(|l| l.split("GSE-POLICY-DENIED: ").nth(1)).unwrap_or("").trim().to_owned();
    assert!(
        denied.starts_with("gsectl: permission denied: cannot unpin: only root, members of group 'gse'")
            && denied.contains("org.gentoo.gse1.servers"),
        "a student is refused by gsed's authorization, not by some other failure: {denied}"
    );
    assert_eq!(rc("labadmin-unpin"), "0", "group gse may: {policy}");
    let boot_id = b1.health["boot_id"].as_str().unwrap().to_owned();
    let journal = vm.on_disk(vm.data_part(), "cat persistent/gse/health.journal");
    for event in ["boot-started", "healthy", "clean-shutdown"] {
        assert!(
            journal.lines().any(|l| l.contains(&format!("\"event\":\"{event}\"")) && l.contains(&boot_id)),
            "the journal on user-data has {event} for boot 1:\n{journal}"
        );
    }

    motd(&conf, "lab motd v2");
    lab.publish(&conf);
    let b2 = vm.boot(&lab);
    vm.report(&b2, "flag renewed, new config");
    assert_eq!((b2.slot(), b2.action(), b2.status()), ("a", "normal", "green"), "{}", b2.boot);
    assert_eq!(b2.field("previous"), "healthy-cycle", "{}", b2.boot);
    assert_eq!(cycles(&b2), 1, "HealthyCycles grew: {}", b2.health);
    assert_eq!(b2.motd, "lab motd v2", "the change published between boots is in /etc");
    assert!(flag_on_disk(&vm, "a").contains("healthy_cycles=1"));

    // A tampered publish: a file and its MANIFEST line are changed on the servers,
    // the signature cannot be.
    for www in &lab.www {
        let dir = fs::canonicalize(www.join("gse1/config.d")).unwrap();
        let etc = dir.join("system/etc.conf");
        fs::write(&etc, "[file.\"/etc/motd\"]\ncontent = \"tampered\\n\"\n").unwrap();
        let (sha, size) = gsed::servers::manifest::hash_file(&etc).unwrap();
        let manifest = fs::read_to_string(dir.join("MANIFEST")).unwrap();
        let edited: String = manifest
            .lines()
            .map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
                [_, _, mode, "system/etc.conf"] => format!("{sha} {size} {mode} system/etc.conf\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(edited, manifest);
        fs::write(dir.join("MANIFEST"), edited).unwrap();
    }
    let b3 = vm.boot(&lab);
    vm.report(&b3, "tampered publish refused");
    assert_eq!((b3.slot(), b3.status()), ("a", "green"), "{}", b3.boot);
    let sync = b3.field("sync");
    assert!(sync.contains("failed, using the cached config.d") && sync.contains("does not verify"), "{sync}");
    assert_eq!(b3.motd, "lab motd v2", "the last good config.d stays");
    assert_eq!(cycles(&b3), 2, "{}", b3.health);
    let kept = vm.on_disk(vm.data_part(), "cat persistent/config.d/system/etc.conf");
    assert!(kept.contains("lab motd v2") && !kept.contains("tampered"), "{kept}");
}

#[test]
fn vm_corrupt_flag_bails_out_then_repairs() {
    let (vm, lab) = (Vm::new("flag"), Lab::new("flag"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    put(&conf, "controller/cboot.conf", "[health]\non_failure = \"bailout\"\n");
    lab.publish(&conf);
    vm.on_slot("a", "printf 'GSE-BOOTFLAG-1\\nslot=a\\nnot a flag' >.gse/bootflag");

    let b1 = vm.boot(&lab);
    vm.report(&b1, "flag of a corrupted, bailout");
    assert_eq!((b1.slot(), b1.action(), b1.status()), ("b", "bailout", "green"), "{}", b1.boot);
    let why = b1.health["boot"]["reason"].as_str().unwrap_or("");
    assert!(why.contains("running on backup b") && why.contains("flag of slot a"), "gsectl health says why: {why}");

    put(&conf, "controller/cboot.conf", "[health]\non_failure = \"repair\"\n");
    lab.publish(&conf);
    let b2 = cut_power_during_repair(&vm, &lab);
    assert_eq!((b2.slot(), b2.action(), b2.status()), ("a", "repair", "green"), "{}", b2.boot);
    assert!(b2.field("reason").contains("finishing an interrupted repair of slot a from slot b"), "{}", b2.boot);
    let flag = flag_on_disk(&vm, "a");
    assert!(flag.contains("slot=a") && flag.contains("mac="), "a fresh flag: {flag}");
    gse_tests::disk::assert_same_listing(("a", &vm.listing("a")), ("b", &vm.listing("b")));
}

#[test]
fn vm_failing_required_check_turns_red_then_the_policy_acts() {
    let (vm, lab) = (Vm::new("red"), Lab::new("red"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    put(
        &conf,
        "controller/cboot.conf",
        "[health]\nmax_attempts = 2\non_failure = \"bailout\"\ndeadline = \"10s\"\ncheck_timeout = \"5s\"\nretry_interval = \"2s\"\n",
    );
    put(
        &conf,
        "controller/cetc.conf",
        "[file.\"/etc/gse/checks/required/lab-share\"]\ncontent = \"#!/bin/sh\\necho 'the lab share is not mounted'\\nexit 1\\n\"\nmode = \"0755\"\n",
    );
    lab.publish(&conf);

    let mut b1_id = serde_json::Value::Null;
    for n in 1..=2 {
        let b = vm.boot(&lab);
        if n == 1 {
            b1_id = b.health["boot_id"].clone();
        }
        vm.report(&b, "required check fails");
        assert_eq!((b.slot(), b.action(), b.status()), ("a", "normal", "red"), "{}", b.health);
        assert_eq!(b.boot["attempts"]["a"], n, "{}", b.boot);
        let failures = b.health["failures"].to_string();
        assert!(failures.contains("lab-share") && failures.contains("the lab share is not mounted"), "{failures}");
    }
    // The room is fixed on the server; slot a has used up its attempts all the same.
    fs::remove_file(conf.join("controller/cetc.conf")).unwrap();
    lab.publish(&conf);
    let b3 = vm.boot(&lab);
    vm.report(&b3, "max_attempts reached");
    assert_eq!((b3.slot(), b3.action(), b3.status()), ("b", "bailout", "green"), "{}", b3.boot);
    assert!(b3.field("reason").contains("slot a did not complete a healthy cycle in 2 boot(s)"), "{}", b3.boot);

    // The next boot finds every earlier boot's logs on the persistent area.
    let mut r = vm.start(&lab, "logs");
    r.wait_line("GSE-HEALTH-JSON:", vm_timeout());
    let b4 = r.wait_off(Duration::from_secs(120));
    vm.report(&b4, "logs of the earlier boots");
    let listed: Vec<&str> = b4.log.lines().filter_map(|l| l.split("GSE-LOGS: ").nth(1)).collect();
    let row = |id: &serde_json::Value| {
        let id = id.as_str().unwrap_or("?");
        listed.iter().find(|l| l.starts_with(id)).map(|l| l.split_whitespace().collect::<Vec<_>>()).unwrap_or_default()
    };
    // BOOT, date, time, SLOT, VERSION, ACTION, VERDICT, size, unit
    let red = row(&b1_id);
    assert_eq!((red.get(3), red.get(5), red.get(6)), (Some(&"a"), Some(&"normal"), Some(&"red")), "{listed:#?}");
    let bailout = row(&b3.health["boot_id"]);
    assert_eq!(
        (bailout.get(3), bailout.get(5), bailout.get(6)),
        (Some(&"b"), Some(&"bailout"), Some(&"healthy-cycle")),
        "{listed:#?}"
    );
    assert!(row(&b4.health["boot_id"]).get(6) == Some(&"running"), "{listed:#?}");
    for l in listed.iter().skip(1) {
        println!("vm red: archived {l}");
    }
    let shown: Vec<&str> = b4.log.lines().filter_map(|l| l.split("GSE-LOGSHOW: ").nth(1)).collect();
    assert!(
        shown.iter().any(|l| l.contains("the lab share is not mounted")),
        "the red boot's check output: {shown:#?}"
    );
    assert!(
        shown.iter().any(|l| l.contains("gse: initramfs") || l.contains("gsed --early ready")),
        "early boot's lines: {shown:#?}"
    );
}

#[test]
fn vm_power_pulled_after_healthy_is_dirty() {
    let (vm, lab) = (Vm::new("power"), Lab::new("power"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    lab.publish(&conf);

    let hold = |what: &str| {
        let mut r = vm.start(&lab, "hold");
        r.wait_line("GSE-HOLDING", vm_timeout());
        let b = r.pull_power();
        vm.report(&b, what);
        assert_eq!(b.status(), "green", "{}", b.health);
        assert!(!b.log.contains("Recording the clean shutdown"));
        b
    };
    let b1 = hold("healthy, then the power is pulled");
    assert_eq!(b1.slot(), "a");

    // dirty_is_failure = false (the shipped default): a dirty boot costs nothing.
    let b2 = hold("dirty, not a failure; power pulled again");
    assert_eq!((b2.slot(), b2.action(), b2.field("previous")), ("a", "normal", "dirty".into()), "{}", b2.boot);
    assert_eq!(b2.boot["attempts"]["a"], 1, "{}", b2.boot);
    assert_eq!(cycles(&b2), 0, "a dirty boot is no healthy cycle");

    // dirty_is_failure = true with one attempt: the same dirty boot sends the room to b.
    put(&conf, "controller/cboot.conf", "[health]\ndirty_is_failure = true\nmax_attempts = 1\n");
    lab.publish(&conf);
    let b3 = vm.boot(&lab);
    vm.report(&b3, "dirty counted as a failure");
    assert_eq!((b3.slot(), b3.action(), b3.field("previous")), ("b", "bailout", "dirty".into()), "{}", b3.boot);
    assert!(b3.field("reason").contains("did not complete a healthy cycle in 1 boot(s)"), "{}", b3.boot);
    let journal = vm.on_disk(vm.data_part(), "cat persistent/gse/health.journal");
    let b1_id = b1.health["boot_id"].as_str().unwrap();
    assert!(
        !journal.lines().any(|l| l.contains(b1_id) && l.contains("clean-shutdown")),
        "no clean shutdown was recorded for a boot that lost power"
    );
}

#[test]
fn vm_server_dies_and_gsed_moves_to_the_other_without_a_restart() {
    let (vm, mut lab) = (Vm::new("failover"), Lab::new("failover"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    lab.publish(&conf);

    let mut r = vm.start(&lab, "servers");
    let current = |line: &str| line.split("current=").nth(1).unwrap_or("").trim().to_owned();
    let mut n = 1;
    let mut line = r.wait_line("GSE-SERVERS:", vm_timeout());
    while current(&line) == "none" || current(&line).is_empty() {
        n += 1;
        line = r.wait_nth("GSE-SERVERS:", n, Duration::from_secs(60));
    }
    let was = current(&line);
    let dead = SERVERS.iter().position(|(name, _)| *name == was).expect("a known server");
    lab.nginx[dead].stop();
    let killed_at = r.elapsed();
    let moved = loop {
        n += 1;
        let l = r.wait_nth("GSE-SERVERS:", n, Duration::from_secs(240));
        if current(&l) != was {
            break l;
        }
    };
    let took = r.elapsed() - killed_at;
    let b = r.wait_off(Duration::from_secs(120));
    vm.report(&b, "server died");
    println!("vm failover: {was} stopped; gsed moved to {} within {:.1} s", current(&moved), took.as_secs_f64());
    assert_eq!(b.status(), "green");
    assert_eq!(current(&moved), SERVERS[1 - dead].0, "{moved}");
    let pids: Vec<&str> = b
        .log
        .lines()
        .filter_map(|l| l.split("GSE-SERVERS: pid=").nth(1))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(pids.len() >= 2 && pids.iter().all(|p| !p.is_empty() && *p == pids[0]), "one gsed all along: {pids:?}");
}

fn vm_timeout() -> Duration {
    gse_tests::vm::BOOT_TIMEOUT
}

/// A systemd client as the README sets it up (`image build --install-gse`
/// enables the units): green through GSE's initramfs, no failed unit, gsed a
/// `Type=notify` service, the clean poweroff recorded, clean filesystems.
#[test]
fn vm_systemd_client_boots_green_and_shuts_down_clean() {
    let k = systemd_kit();
    let (vm, lab) = (Vm::of(k, "systemd"), Lab::of(k, "systemd"));
    let work = tempfile::tempdir().unwrap();
    let conf = k.conf_copy(work.path());
    motd(&conf, "systemd lab");
    lab.publish(&conf);

    let b1 = vm.boot(&lab);
    vm.report(&b1, "systemd, GSE initramfs");
    println!("vm systemd: boot 1: {}", line_of(&b1, "GSE-ANALYZE: "));
    println!("vm systemd: boot 1: GSE's units: {}", line_of(&b1, "GSE-BLAME: "));
    assert_eq!((b1.slot(), b1.action(), b1.status()), ("a", "normal", "green"), "{}", b1.boot);
    assert_eq!(b1.motd, "systemd lab");
    assert_eq!(
        line_of(&b1, "GSE-SYSTEMD: "),
        "state=running gsed=notify/active boot-complete=success/1/0 failed=none",
        "systemd's own view of the boot"
    );
    assert_clean_filesystems(&vm);
    let journal = vm.on_disk(vm.data_part(), "cat persistent/gse/health.journal");
    let id = b1.health["boot_id"].as_str().unwrap_or("?");
    assert!(
        journal.lines().any(|l| l.contains("\"event\":\"clean-shutdown\"") && l.contains(id)),
        "gse-record-shutdown recorded the poweroff:\n{journal}"
    );

    let b2 = vm.boot(&lab);
    vm.report(&b2, "systemd, second boot");
    assert_eq!((b2.slot(), b2.status(), b2.field("previous")), ("a", "green", "healthy-cycle".into()), "{}", b2.boot);
    assert_eq!(cycles(&b2), 1, "{}", b2.health);
    assert_clean_filesystems(&vm);
}

/// The same systemd root with Debian's dracut: `dracut --add gse` (its default
/// systemd initrd) and `--omit systemd` (the shell initrd), `root=gse`.
#[test]
fn vm_dracut_initrds_boot_the_systemd_client_green() {
    let k = systemd_kit();
    let dracut = k.dracut.as_ref().expect("the systemd kit has dracut's initrds");
    let (vm, lab) = (Vm::of(k, "dracut"), Lab::of(k, "dracut"));
    let work = tempfile::tempdir().unwrap();
    lab.publish(&k.conf_copy(work.path()));
    for (n, (initrd, what)) in
        [(&dracut.systemd, "dracut, systemd initrd"), (&dracut.shell, "dracut, shell initrd")].into_iter().enumerate()
    {
        let b = vm.boot_on(&lab, Disk::Virtio, initrd);
        vm.report(&b, what);
        println!("vm dracut: boot {}: {}", n + 1, line_of(&b, "GSE-ANALYZE: "));
        assert_eq!((b.slot(), b.action(), b.status()), ("a", "normal", "green"), "{what}: {}", b.boot);
        let sync = b.field("sync");
        assert!(
            sync.starts_with("synced config.d from s") || sync.starts_with("config.d is up to date with s"),
            "{what}: gsed --early reached a server from dracut's initrd: {}",
            b.boot
        );
        let sd = line_of(&b, "GSE-SYSTEMD: ");
        assert!(sd.ends_with("failed=none") && sd.starts_with("state=running"), "{what}: {sd}");
        assert_clean_filesystems(&vm);
    }
}

/// Slots as btrfs subvolumes: btrfs is loaded only when early boot mounts the
/// slot (the kernel asks the initramfs's modprobe), and a repair (a snapshot of
/// b) cut by a real power loss still leaves a machine that boots a good slot.
#[test]
fn vm_btrfs_slots_load_on_demand_and_survive_a_power_cut_in_the_repair() {
    let (vm, lab) = (Vm::btrfs("btrfs"), Lab::new("btrfs"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    gse_tests::vm::btrfs_conf(&conf);
    let mut cboot = fs::read_to_string(conf.join("controller/cboot.conf")).unwrap();
    cboot.insert_str(0, "[health]\non_failure = \"repair\"\n");
    put(&conf, "controller/cboot.conf", &cboot);
    lab.publish(&conf);

    // The repair is a snapshot of b: the cut may land inside or just after it.
    vm.on_slot("a", "printf 'GSE-BOOTFLAG-1\\nslot=a\\nnot a flag' >.gse/bootflag");
    let b = cut_power_during_repair(&vm, &lab);
    println!("vm btrfs: after the cut: {} ({})", b.action(), b.field("reason"));
    assert_eq!((b.slot(), b.status()), ("a", "green"), "{}", b.boot);
    let filesystems = line_of(&b, "GSE-FILESYSTEMS: ");
    assert!(filesystems.split(',').any(|f| f == "btrfs"), "btrfs was loaded on demand: {filesystems}");
    assert_clean_filesystems(&vm);
    let flag = flag_on_disk(&vm, "a");
    assert!(flag.contains("slot=a") && flag.contains("mac="), "a fresh, valid flag on a: {flag}");
    gse_tests::disk::assert_same_listing(("a", &vm.listing("a")), ("b", &vm.listing("b")));
}

/// The last `GSE-UPDATE:` report of a boot (`gsectl update --json`).
fn last_update(b: &Boot) -> serde_json::Value {
    let line = b.log.lines().rev().find_map(|l| l.split("GSE-UPDATE: ").nth(1)).unwrap_or("null");
    serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null)
}

/// A boot with `gse.test=update`: the reporter checks the channel and follows
/// the update until it settles, then powers off.
fn update_boot(vm: &Vm, lab: &Lab, what: &str) -> (Boot, serde_json::Value) {
    let mut r = vm.start(lab, "update");
    r.wait_line("GSE-HEALTH-JSON:", gse_tests::vm::BOOT_TIMEOUT);
    let b = r.wait_off(Duration::from_secs(900));
    vm.report(&b, what);
    let u = last_update(&b);
    println!("vm {}: boot {}: update {} {} ({})", vm.scenario, b.n, u["state"], u["available_version"], u["detail"]);
    (b, u)
}

/// Chunk requests nginx served in the lab so far, and their bytes.
fn chunk_requests(lab: &Lab) -> (usize, u64) {
    let lines: Vec<String> = lab
        .nginx
        .iter()
        .flat_map(|n| {
            n.access_log().lines().filter(|l| l.contains("/gse1/chunks/")).map(String::from).collect::<Vec<_>>()
        })
        .collect();
    // "combined" format: ... "GET /... HTTP/1.1" STATUS BYTES "referer" "agent"
    let bytes = lines.iter().filter_map(|l| l.split('"').nth(2)?.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
    (lines.len(), bytes)
}

/// The chunks of a published version: id and bytes as fetched (packed).
fn chunk_ids(lab: &Lab, version: &str) -> std::collections::HashMap<String, u64> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(lab.www[0].join(format!("gse1/images/{version}/index.json"))).unwrap())
            .unwrap();
    index["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["id"].as_str()?.to_owned(), c["packed"].as_u64()?)))
        .collect()
}

/// A published version reaches the machine by itself: downloaded while it runs,
/// installed into the other slot, tried at the next boot, committed at green.
/// A later version whose required check fails, and which carries a kernel
/// release of its own, is tried on that kernel (kexec from the one qemu
/// starts), goes red, is rolled back onto the old version's kernel and not
/// tried again; its download survives a power cut half-way.
#[test]
fn vm_images_update_by_themselves_trial_commit_and_roll_back() {
    let (vm, mut lab) = (Vm::new("update"), Lab::new("update"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    put(&conf, "controller/update.chk.conf", "channel = \"stable\"\npolicy = \"auto\"\n");
    // A trial that cannot go green goes red within a minute (the shipped deadline is 5).
    let mut cboot = fs::read_to_string(conf.join("controller/cboot.conf")).unwrap_or_default();
    cboot.insert_str(0, "[health]\ndeadline = \"60s\"\n");
    put(&conf, "controller/cboot.conf", &cboot);
    lab.publish(&conf);
    // v2 adds a package (a 1 MB program and its data).
    let v2 = kit().derive_image("vm-2", work.path(), |t| {
        let pkg = t.join("opt/lab-tool");
        fs::create_dir_all(&pkg).unwrap();
        let mut rng = fastrand::Rng::with_seed(2);
        fs::write(pkg.join("data"), (0..1 << 20).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
        fs::write(pkg.join("VERSION"), "lab-tool 1.0\n").unwrap();
    });
    lab.publish_image(&v2, "vm-2");
    let packed = |v: &str| {
        let ch: serde_json::Value =
            serde_json::from_slice(&fs::read(lab.www[0].join("gse1/channels/stable.json")).unwrap()).unwrap();
        assert_eq!(ch["version"], v);
        ch["packed"].as_u64().unwrap()
    };
    let v2_packed = packed("vm-2");

    let (b1, u1) = update_boot(&vm, &lab, "v1 running, v2 downloaded and installed");
    assert_eq!((b1.slot(), b1.action(), b1.status()), ("a", "normal", "green"), "{}", b1.boot);
    assert_eq!((u1["state"].as_str(), u1["target_slot"].as_str()), (Some("installed"), Some("b")), "{u1}");
    let (requests, fetched) = chunk_requests(&lab);
    println!(
        "vm update: v1 -> v2: {requests} chunk requests, {fetched} bytes = {:.1}% of the full image ({v2_packed} bytes)",
        fetched as f64 * 100.0 / v2_packed as f64
    );
    assert!(fetched * 10 < v2_packed, "the chunks installed with v1 were not fetched again");
    assert!(vm.on_slot("b", "cat opt/lab-tool/VERSION").contains("lab-tool 1.0"));
    assert!(vm.on_slot("a", "test -e opt/lab-tool && echo yes || echo no").contains("no"), "slot a untouched");

    let (b2, u2) = update_boot(&vm, &lab, "v2 on trial");
    assert_eq!((b2.slot(), b2.action(), b2.status()), ("b", "trial", "green"), "{}", b2.boot);
    assert_eq!(b2.field("image_version"), "vm-2");
    assert_eq!(u2["state"], "up-to-date", "committed at green: {u2}");
    assert_clean_filesystems(&vm);

    // v3 ships a required check that fails, and Debian's other kernel flavour
    // (a kernel release of its own); its download is cut by a power loss.
    let (other_kroot, other_kernel) = gse_tests::vm::other_kernel();
    let v3 = kit().derive_image("vm-3", work.path(), |t| {
        gse_tests::vm::put_kernel(t, &other_kroot, &other_kernel);
        let check = t.join("etc/gse/checks/required/lab-tool");
        fs::create_dir_all(check.parent().unwrap()).unwrap();
        fs::write(&check, "#!/bin/sh\necho 'lab-tool 2.0 does not start' >&2\nexit 1\n").unwrap();
        assert!(std::process::Command::new("chmod").arg("755").arg(&check).status().unwrap().success());
        fs::create_dir_all(t.join("opt/lab-tool")).unwrap();
        fs::write(t.join("opt/lab-tool/VERSION"), "lab-tool 2.0\n").unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        fs::write(t.join("opt/lab-tool/data3"), (0..2 << 20).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
    });
    lab.publish_image(&v3, "vm-3");
    for n in &mut lab.nginx {
        n.limit_rate = Some(256 << 10);
        n.restart();
    }
    let (before, before_bytes) = chunk_requests(&lab);
    let mut r = vm.start(&lab, "update");
    r.wait_line("GSE-HEALTH-JSON:", gse_tests::vm::BOOT_TIMEOUT);
    loop {
        let line = r.wait_nth("GSE-UPDATE: ", r.log().matches("GSE-UPDATE: ").count() + 1, Duration::from_secs(120));
        let u: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if u["state"] == "downloading" && u["progress"].as_f64().unwrap_or(0.0) > 0.5 {
            break;
        }
    }
    let cut = r.pull_power();
    vm.report(&cut, "v3 download cut by a power loss");
    let (at_cut, cut_bytes) = chunk_requests(&lab);
    let (at_cut, cut_bytes) = (at_cut - before, cut_bytes - before_bytes);
    for n in &mut lab.nginx {
        n.limit_rate = None;
        n.restart();
    }
    let (b4, u4) = update_boot(&vm, &lab, "v3 download resumed and installed");
    assert_eq!((b4.slot(), b4.action(), b4.status()), ("b", "normal", "green"), "{}", b4.boot);
    assert_eq!((u4["state"].as_str(), u4["target_slot"].as_str()), (Some("installed"), Some("a")), "{u4}");
    let (old, new) = (chunk_ids(&lab, "vm-2"), chunk_ids(&lab, "vm-3"));
    let fresh: Vec<u64> = new.iter().filter(|(id, _)| !old.contains_key(*id)).map(|(_, p)| *p).collect();
    let (needed, needed_bytes) = (fresh.len(), fresh.iter().sum::<u64>());
    let (total, total_bytes) = chunk_requests(&lab);
    let (total, again) = (total - before, (total_bytes - before_bytes).saturating_sub(needed_bytes));
    println!(
        "vm update: v2 -> v3: {total} chunk requests ({at_cut} before the cut) for {needed} new chunks; \
         {again} bytes fetched twice of {needed_bytes}"
    );
    // Half of the bytes is not half of the chunks (a kernel's chunks pack worse).
    assert!(at_cut * 3 >= needed && at_cut < needed, "the cut came mid-way ({at_cut} of {needed})");
    // The cache is flushed about once a second: what arrived since the last
    // flush, and what was in flight, travels twice (four workers, 256 KiB/s
    // each before the cut); without a resume everything before the cut would.
    let (workers, rate) = (4, 256 << 10);
    let allowance = 2 * workers * rate + workers * u64::from(gsed::image::index::MAX_CHUNK);
    assert!(cut_bytes > allowance, "the cut came late enough to tell a resume from none ({cut_bytes} bytes)");
    assert!(again <= allowance, "what was verified before the cut was not fetched again ({again} > {allowance} bytes)");

    let mut r = vm.start(&lab, "report");
    r.wait_line("GSE-HEALTH-JSON:", gse_tests::vm::BOOT_TIMEOUT);
    let b5 = r.wait_off(Duration::from_secs(120));
    vm.report(&b5, "v3 on trial");
    assert_eq!((b5.slot(), b5.action(), b5.status()), ("a", "trial", "red"), "{}", b5.boot);
    // The trial runs v3's own kernel: the kit's kernel decided, counted the
    // boot and handed over to it.
    let running = |b: &Boot| line_of(b, "GSE-UNAME:");
    assert_eq!(running(&b5), other_kernel, "the trial runs the new image's kernel");
    assert_eq!(b5.field("kernel"), other_kernel, "{}", b5.boot);
    assert!(b5.log.contains(&format!("runs its own kernel {other_kernel}; starting it")), "handed over by kexec");

    let (b6, u6) = update_boot(&vm, &lab, "back on v2");
    assert_eq!((b6.slot(), b6.action(), b6.status()), ("b", "rollback", "green"), "{}", b6.boot);
    assert!(b6.field("reason").contains("version vm-3 on slot a did not go green"), "{}", b6.boot);
    assert_eq!(running(&b6), running(&b2), "rolling back rolled the kernel back");
    assert_ne!(running(&b6), other_kernel);
    assert!(!b6.log.contains("runs its own kernel"), "the kit's kernel is v2's: no kernel change");
    assert_eq!(
        (u6["state"].as_str(), u6["local_version"].as_str()),
        (Some("failed"), Some("vm-2")),
        "not retried: {u6}"
    );
    assert_clean_filesystems(&vm);

    // prompt_at_boot: early boot asks on the console; the answer typed there
    // installs v4 before the boot goes on, and the boot is its trial.
    put(&conf, "controller/update.chk.conf", "channel = \"stable\"\npolicy = \"ask\"\nprompt_at_boot = true\n");
    lab.publish(&conf);
    let v4 = kit().derive_image("vm-4", work.path(), |t| {
        fs::create_dir_all(t.join("opt/lab-tool")).unwrap();
        fs::write(t.join("opt/lab-tool/VERSION"), "lab-tool 2.1\n").unwrap();
    });
    lab.publish_image(&v4, "vm-4");
    let mut r = vm.start(&lab, "report");
    r.wait_line("Install it now? [y/N]", gse_tests::vm::BOOT_TIMEOUT);
    r.type_line("y");
    r.wait_line("GSE-HEALTH-JSON:", Duration::from_secs(900));
    let b7 = r.wait_off(Duration::from_secs(120));
    vm.report(&b7, "v4 installed at the console prompt, on trial");
    assert!(b7.log.contains("gse: version vm-4 installed; booting it as a trial"), "progress on the console");
    assert_eq!((b7.slot(), b7.action(), b7.status()), ("a", "trial", "green"), "{}", b7.boot);
    assert_eq!(b7.field("image_version"), "vm-4");
}

/// A blank machine with two disks joins by itself (DESIGN §12). The installer (the kit's
/// kernel with a `--controller` initramfs, started as a USB stick would start
/// it, with `gse.install=auto gse.server=URL`) finds no GSE system, lays out
/// the disk by drives.conf, installs the server's image into both slots and
/// GRUB, and restarts. A power cut in the middle means the next start installs
/// again. Then the machine starts with no kernel given: SeaBIOS, GRUB from the
/// disk, the slot's kernel and GSE initramfs, green.
#[test]
fn vm_blank_machine_installs_itself_and_boots_from_its_disk() {
    // Two disks: drives.conf names /dev/vda; the other is never written.
    let (vm, lab) = (Vm::blank("install").with_second_disk(), Lab::new("install"));
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    motd(&conf, "installed from the network");
    lab.publish(&conf);
    lab.publish_image(kit().image(), "vm-1");
    let install = format!("gse.install=auto gse.server=http://{}", SERVERS[0].1);

    let mut r = vm.start_installer(&lab, "report", &install, Disk::Virtio);
    r.wait_line("no GSE system is found locally", gse_tests::vm::BOOT_TIMEOUT);
    loop {
        let line = r.wait_nth("gse: downloading", r.log().matches("gse: downloading").count() + 1, T_INSTALL);
        let pct: u32 = line.split('%').next().and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0);
        if pct >= 20 {
            break;
        }
    }
    let cut = r.pull_power();
    vm.report(&cut, "install cut by a power loss while downloading");

    let r = vm.start_installer(&lab, "report", &install, Disk::Virtio);
    let b2 = r.wait_off(T_INSTALL);
    vm.report(&b2, "install started again, finished, restart");
    assert!(b2.log.contains("the install of this machine was cut short: starting it again"), "the cut was seen");
    assert!(b2.log.contains("the disk holds an install of this machine that did not finish"), "gsed saw its mark");
    assert!(b2.log.contains("installed: restarting from the disk"), "the install finished");
    assert!(b2.log.contains("GRUB on /dev/vda starts kernel"), "the boot loader was written");
    // Where the install's time goes (gsed's own timestamps).
    for l in b2
        .log
        .lines()
        .filter(|l| l.contains("gsed::boot::blank: install:") || l.contains("gsed::boot: early boot online"))
    {
        println!("vm install:   {}", l.split(" INFO ").collect::<Vec<_>>().join(" "));
    }
    let second = fs::read(vm.second.as_ref().unwrap()).unwrap();
    assert!(second.iter().all(|b| *b == 0), "the disk drives.conf does not name is untouched");

    let mut r = vm.start_from_disk(&lab);
    r.wait_line("GSE-HEALTH-JSON:", gse_tests::vm::BOOT_TIMEOUT);
    let b3 = r.wait_off(Duration::from_secs(120));
    vm.report(&b3, "no stick: from its own disk through GRUB");
    assert!(b3.log.contains("GRUB loading"), "SeaBIOS started GRUB from the disk");
    assert_eq!((b3.slot(), b3.action(), b3.status()), ("a", "normal", "green"), "{}", b3.boot);
    assert_eq!(b3.field("image_version"), "vm-1", "{}", b3.boot);
    assert!(b3.field("flags").contains(r#""b":"valid"#), "the backup slot was installed too: {}", b3.boot);
    assert_eq!(b3.motd, "installed from the network", "config.d came from the server and stayed on the disk");
    assert!(line_of(&b3, "GSE-ROOTFS:").starts_with("/ ext4"), "/ is the slot on the disk");
    assert!(vm.on_slot("b", "cat etc/gse-release").contains("VERSION=vm-1"), "slot b holds the image");
    // The installer's words are not the installed machine's.
    assert!(!b3.log.contains("gse.install=auto"), "the installed machine boots without gse.install");
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "vm install: blank to green: {:.1} s (install {:.1} s, GSE's initramfs at {:.1} s; then from the disk to green {:.1} s, GSE's initramfs at {:.1} s)",
        (b2.total + b3.to_report).as_secs_f64(),
        b2.total.as_secs_f64(),
        secs(b2.to_initramfs),
        b3.to_report.as_secs_f64(),
        secs(b3.to_initramfs)
    );
}

/// A blank install may take minutes under TCG (mkfs, the image twice, GRUB).
const T_INSTALL: Duration = Duration::from_secs(600);

/// Diskless (`gse.install=diskless`): a machine with no disk at all boots
/// from the network (qemu's iPXE, dnsmasq's TFTP, the installer from the
/// server over HTTP) and runs the server's image from RAM with the same
/// stateless layout, config.d synced, health green; next to a normal disk
/// boot in the same run.
#[test]
fn vm_diskless_machine_boots_from_the_network_and_runs_from_ram() {
    let lab = Lab::pxe("diskless");
    let work = tempfile::tempdir().unwrap();
    let conf = kit().conf_copy(work.path());
    motd(&conf, "diskless from the server");
    lab.publish(&conf);
    lab.publish_image(kit().image(), "vm-1");
    let vm = Vm::blank("diskless");
    let mut r = vm.start_pxe(&lab, "report", "gse.install=diskless");
    r.wait_line("GSE-HEALTH-JSON:", gse_tests::vm::BOOT_TIMEOUT);
    let b = r.wait_off(Duration::from_secs(120));
    vm.report(&b, "diskless, no disk at all, by PXE");
    assert!(b.log.contains("gse.ipxe"), "iPXE ran the lab's script");
    assert!(b.log.contains("no GSE system is found locally"), "said so on the console");
    assert_eq!((b.slot(), b.action(), b.status()), ("ram", "diskless", "green"), "{}", b.boot);
    assert_eq!(b.field("image_version"), "vm-1", "{}", b.boot);
    assert!(b.field("sync").contains("synced config.d"), "{}", b.boot);
    assert_eq!(b.motd, "diskless from the server", "the published /etc/motd is in the guest's /etc");
    assert_eq!(line_of(&b, "GSE-ROOTFS:"), "/ tmpfs, /user-data tmpfs", "nothing is on a disk");

    let disk = Vm::new("diskless-anchor");
    let n = disk.boot(&lab);
    disk.report(&n, "the same image from a disk (anchor)");
    assert_eq!(n.status(), "green");
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "vm diskless: power-on to green {:.1} s (GSE's initramfs at {:.1} s); the same image from a disk {:.1} s (at {:.1} s): {:.2}x",
        b.to_report.as_secs_f64(),
        secs(b.to_initramfs),
        n.to_report.as_secs_f64(),
        secs(n.to_initramfs),
        b.to_report.as_secs_f64() / n.to_report.as_secs_f64()
    );
}
