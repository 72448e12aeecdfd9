//! The log archive (DESIGN §13) with the real gsed and gsectl: a clean boot's logs
//! are packed at shutdown, an unclean boot's by the next one, the budget keeps red
//! boots longest, and a full disk costs nothing but the archive.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::Path,
    process::Command,
    time::Duration,
};

use gse_tests::{ProcessGuard, TestBus, TestRoot, bin, gsectl, start_gsed, text, wait_for};
use nix::sys::signal::Signal;

/// A root whose gsed spools fast and has every kind of log source.
fn root() -> TestRoot {
    let root = TestRoot::new();
    root.health_conf("");
    root.write("usr/share/gse/config.d/system/logs.conf", "spool_interval = \"100ms\"\n");
    root.write("var/log/messages", "hello from the system log\n");
    root.write("run/gse/early.log", "gse: early boot was here\n");
    root.write("dev/kmsg", "6,1,1000,-;kernel says hello\n");
    root
}

fn logs(root: &TestRoot, args: &[&str]) -> std::process::Output {
    Command::new(bin("gsectl")).arg("--root").arg(root.path()).arg("logs").args(args).output().expect("gsectl logs")
}

fn list(root: &TestRoot) -> Vec<serde_json::Value> {
    let out = logs(root, &["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("logs list --json")
}

fn show(root: &TestRoot, args: &[&str]) -> String {
    let out = logs(root, &[&["show"], args].concat());
    assert!(out.status.success(), "logs show {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn green(bus: &TestBus) {
    wait_for(Duration::from_secs(20), "a green verdict", || {
        gsectl(&bus.address, &["health"]).status.success().then_some(())
    });
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(line.as_bytes()).unwrap();
}

fn spool(root: &TestRoot, boot: &str) -> std::path::PathBuf {
    root.path().join("user-data/persistent/logs/spool").join(boot)
}

/// Shuts down as the init system does: record the clean shutdown, then SIGTERM.
fn clean_shutdown(bus: &TestBus, gsed: &mut ProcessGuard) {
    let out = gsectl(&bus.address, &["health", "record-shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = gsed.stop_with(Signal::SIGTERM, Duration::from_secs(10)).expect("gsed stops");
    assert!(status.success(), "gsed exits 0 at shutdown");
}

#[test]
fn a_clean_boot_is_archived_at_shutdown_with_every_log() {
    let (bus, root) = (TestBus::start(), root());
    // A syslog daemon listens: gsed's lines go there too.
    let syslog = UnixDatagram::bind(root.path().join("dev/log")).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // What a careless administrator or an attacker leaves in /var/log.
    nix::unistd::mkfifo(&root.path().join("var/log/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.path().join("var/log/escape")).unwrap();

    let mut gsed = start_gsed(&bus, &root, "b1");
    green(&bus);
    let mut buf = vec![0u8; 8192];
    let n = syslog.recv(&mut buf).expect("a line on syslog");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(line.starts_with('<') && line.contains("gsed["), "a syslog line: {line}");

    let live = list(&root);
    assert_eq!(
        (live.len(), live[0]["boot_id"].as_str(), live[0]["verdict"].as_str()),
        (1, Some("b1"), Some("running"))
    );
    append(&root.path().join("var/log/messages"), "a line just before shutdown\n");
    clean_shutdown(&bus, &mut gsed);

    let boots = list(&root);
    assert_eq!(boots.len(), 1, "{boots:?}");
    let b = &boots[0];
    assert_eq!(
        (b["boot_id"].as_str(), b["verdict"].as_str(), b["live"].as_bool(), b["recovered"].as_bool()),
        (Some("b1"), Some("healthy-cycle"), Some(false), Some(false)),
        "{b}"
    );
    assert!(b["path"].as_str().unwrap().ends_with("-b1.tar.zst"), "{b}");
    let mode = fs::metadata(b["path"].as_str().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "logs are for root only");
    let all = show(&root, &["b1"]);
    for want in [
        "hello from the system log",
        "a line just before shutdown",
        "gse: early boot was here",
        "kernel says hello",
        "gsed ready",
        "==> var/log/messages <==",
    ] {
        assert!(all.contains(want), "logs show b1 has '{want}':\n{all}");
    }
    assert!(!all.contains("var/log/fifo") && !all.contains("var/log/escape"), "FIFOs and links are skipped:\n{all}");
    let own = show(&root, &["b1", "--unit", "gsed"]);
    assert!(own.contains("gsed ready") && !own.contains("hello from the system log"), "{own}");
    assert!(!spool(&root, "b1").exists(), "the spool is gone once archived");
    let missing = logs(&root, &["show", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no boot 'nope'"), "{}", text(&missing.stderr));
}

#[test]
fn a_boot_that_lost_power_is_archived_by_the_next_boot() {
    let (bus, root) = (TestBus::start(), root());
    let mut gsed = start_gsed(&bus, &root, "b1");
    green(&bus);
    append(&root.path().join("var/log/messages"), "written before the power cut\n");
    // Wait until the spool on the persistent area has it, as a power cut would find it.
    let spooled = spool(&root, "b1").join("var/log/messages");
    wait_for(Duration::from_secs(10), "the line in the spool", || {
        fs::read_to_string(&spooled).ok().filter(|t| t.contains("before the power cut")).map(|_| ())
    });
    gsed.stop_with(Signal::SIGKILL, Duration::from_secs(5));

    let _gsed2 = start_gsed(&bus, &root, "b2");
    // b2 archives b1 and lists itself as it starts, in either order.
    let boots = wait_for(Duration::from_secs(10), "b1 archived by b2, and b2 listed as running", || {
        let l = list(&root);
        let archived = l.iter().any(|b| b["boot_id"] == "b1" && b["live"] == false);
        let running = l.iter().any(|b| b["boot_id"] == "b2" && b["verdict"] == "running");
        (archived && running).then_some(l)
    });
    let b1 = boots.iter().find(|b| b["boot_id"] == "b1").unwrap();
    assert_eq!((b1["verdict"].as_str(), b1["recovered"].as_bool()), (Some("dirty"), Some(true)), "{b1}");
    let out = show(&root, &["b1", "--unit", "messages"]);
    assert!(out.contains("written before the power cut"), "{out}");
    let table = text(&logs(&root, &["list"]).stdout);
    assert!(table.contains("dirty*") && table.contains("no clean shutdown"), "{table}");
}

#[test]
fn the_budget_removes_old_normal_boots_and_keeps_red_ones() {
    let root = root();
    let dir = root.path().join("user-data/persistent/logs");
    // Six earlier boots of about 400 KiB each (random data does not compress).
    for (i, verdict) in
        ["red", "healthy-cycle", "healthy-cycle", "red", "healthy-cycle", "healthy-cycle"].iter().enumerate()
    {
        let spool = root.path().join(format!("fake/{i}"));
        fs::create_dir_all(&spool).unwrap();
        let noise: Vec<u8> = (0..400 << 10).map(|_| fastrand_byte()).collect();
        fs::write(spool.join("gsed.log"), noise).unwrap();
        let meta = gsed::logs::archive::BootMeta {
            boot_id: format!("old{i}"),
            started: 1_000 + i as u64,
            verdict: verdict.parse().ok(),
            action: gse_dbus::boot::Action::Normal,
            ..Default::default()
        };
        gsed::logs::archive::write(&dir, &meta, &spool).unwrap();
    }
    root.write("usr/share/gse/config.d/system/logs.conf", "spool_interval = \"100ms\"\nmax_size = \"1M\"\n");
    let bus = TestBus::start();
    let _gsed = start_gsed(&bus, &root, "b1");
    let kept = wait_for(Duration::from_secs(10), "the budget applied", || {
        let l: Vec<serde_json::Value> = list(&root).into_iter().filter(|b| b["live"] == false).collect();
        (l.len() <= 2).then_some(l)
    });
    let ids: Vec<&str> = kept.iter().map(|b| b["boot_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["old0", "old3"], "under 1M only the two red boots remain");
    let total: u64 = kept.iter().map(|b| b["size"].as_u64().unwrap()).sum();
    assert!(total <= 1 << 20, "{total}");
}

fn fastrand_byte() -> u8 {
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x as u8
    })
}

#[test]
fn a_full_disk_fails_the_archive_loudly_and_nothing_else() {
    let (bus, root) = (TestBus::start(), root());
    let dir = root.path().join("user-data/persistent/logs");
    let _disk = gse_tests::disk::Tmpfs::mount(&dir, "2M");
    let mut gsed = start_gsed(&bus, &root, "b1");
    green(&bus);
    wait_for(Duration::from_secs(10), "the spool", || spool(&root, "b1").join("early.log").exists().then_some(()));
    // Fill the disk to the last byte.
    let _ = fs::write(dir.join("filler"), vec![0u8; 4 << 20]);
    clean_shutdown(&bus, &mut gsed);
    let log = fs::read_to_string(root.path().join("gsed-b1.log")).unwrap();
    assert!(log.contains("cannot archive this boot's logs") && log.contains("No space left"), "a clear line:\n{log}");
    let journal = fs::read_to_string(root.journal()).unwrap();
    assert!(journal.contains("clean-shutdown"), "the health record is whole: {journal}");
    assert!(spool(&root, "b1").join("early.log").exists(), "the spool stays for the next try");
    assert!(
        fs::read_dir(&dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with('.')),
        "no temporary left"
    );

    // Space again: the next boot archives it, as a clean boot.
    fs::remove_file(dir.join("filler")).unwrap();
    let _gsed2 = start_gsed(&bus, &root, "b2");
    let b1 = wait_for(Duration::from_secs(10), "b1 archived", || {
        list(&root).into_iter().find(|b| b["boot_id"] == "b1" && b["live"] == false)
    });
    assert_eq!((b1["verdict"].as_str(), b1["recovered"].as_bool()), (Some("healthy-cycle"), Some(false)), "{b1}");
    assert!(gsectl(&bus.address, &["health"]).status.success(), "the new boot is green");
}
