//! Bad input and faults, tried as an attacker or a careless administrator would:
//! each test reproduces a defect found that way and shows it fixed.

use std::{fs, io::Write, time::Duration};

use gse_dbus::health::HealthProxy;
use gse_tests::{TestBus, TestRoot, disk::Tmpfs, gsectl, start_gsed, text, wait_for};
use gsed::journal::{Event, Journal};

#[tokio::test]
async fn a_huge_reason_is_refused_and_gsed_stays_on_the_bus() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let _gsed = start_gsed(&bus, &root, "b1");
    let conn = bus.connect().await;
    let health = HealthProxy::new(&conn).await.unwrap();
    // Three of these once made GetReport larger than dbus-daemon's message limit,
    // which then dropped gsed from the bus for good.
    let huge = "x".repeat(12 << 20);
    for _ in 0..3 {
        let err = health.mark_bad(&huge).await.expect_err("refused");
        assert!(err.to_string().contains("at most 1024"), "{err}");
    }
    assert!(bus.gsed_owns_name(), "gsed is still on the bus");
    let report = health.get_report().await.unwrap();
    assert!(report.len() < 64 << 10, "the report stays small: {} bytes", report.len());
    assert!(health.mark_bad("lab share down").await.is_ok(), "a reason of normal length is taken");
}

#[test]
fn gsed_exits_when_its_bus_goes_away_so_the_supervisor_restarts_it() {
    let (mut bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let mut gsed = start_gsed(&bus, &root, "b1");
    bus.kill_daemon();
    let status = gsed.wait_exit(Duration::from_secs(10)).expect("gsed exits by itself");
    assert!(!status.success(), "a non-zero exit, so supervise-daemon/systemd restart it");
    let log = fs::read_to_string(root.path().join("gsed-b1.log")).unwrap();
    assert!(log.contains("lost the connection to the bus"), "and it says why:\n{log}");
}

/// A record that ENOSPC cut in the middle must not swallow the next one (the clean
/// shutdown): a healthy cycle would become a dirty boot.
#[test]
fn a_journal_append_that_fails_on_a_full_disk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("data"), "64k");
    let path = disk.0.join("health.journal");
    let (mut j, _) = Journal::open(&path).unwrap();
    j.append("boot1", "a", Event::BootStarted).unwrap();
    // Leave about 40 bytes free in the journal's last page: the next record (about
    // 100 bytes) can only be written in part.
    let base = fs::metadata(&path).unwrap().len();
    j.append("b", "a", Event::CleanShutdown).unwrap();
    let one = fs::metadata(&path).unwrap().len() - base - 1; // a record with a one-byte boot id, less that byte
    let room = 4096 - fs::metadata(&path).unwrap().len() % 4096;
    let id = "p".repeat((room + 4096 - 40 - one) as usize % 4096);
    j.append(&id, "a", Event::BootStarted).unwrap();
    let room = 4096 - fs::metadata(&path).unwrap().len() % 4096;
    assert!((20..80).contains(&room), "{room} bytes left in the page");
    {
        let mut filler = fs::File::create(disk.0.join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
    }
    let err = j.append("boot1", "a", Event::Healthy { reason: "all checks passed".into() }).expect_err("ENOSPC");
    assert!(err.to_string().contains("No space left"), "{err}");
    fs::remove_file(disk.0.join("filler")).unwrap();
    j.append("boot1", "a", Event::CleanShutdown).unwrap();
    drop(j);
    let (j, rec) = Journal::open(&path).unwrap();
    assert_eq!(rec.skipped, 0, "no fragment was left in the file");
    let last = j.records().last().unwrap();
    assert_eq!((last.boot_id.as_str(), &last.event), ("boot1", &Event::CleanShutdown));
}

#[test]
fn a_second_gsed_leaves_the_journal_alone() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let _first = start_gsed(&bus, &root, "b1");
    wait_for(Duration::from_secs(10), "green", || gsectl(&bus.address, &["health"]).status.success().then_some(()));
    // A torn tail, as if a write were in flight.
    let mut f = fs::OpenOptions::new().append(true).open(root.journal()).unwrap();
    f.write_all(b"0badf00d {\"time\":1,\"bo").unwrap();
    let before = fs::read(root.journal()).unwrap();
    let second = std::process::Command::new(gse_tests::bin("gsed"))
        .args(["--bus", &bus.address, "--root"])
        .arg(root.path())
        .args(["--boot-id", "b1"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("already owned"), "{}", text(&second.stderr));
    assert_eq!(fs::read(root.journal()).unwrap(), before, "the second gsed changed nothing");
}

fn synced(root: &TestRoot, rel: &str) -> std::path::PathBuf {
    let p = root.path().join("user-data/persistent/config.d").join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    p
}

/// A FIFO could block gsed for good, a link to /dev/zero grow it without bound:
/// each is an error naming the file, and gsed goes on serving.
#[tokio::test]
async fn config_files_that_are_fifos_links_or_huge_are_errors_and_gsed_keeps_serving() {
    use gse_dbus::config::ConfigProxy;
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let _gsed = start_gsed(&bus, &root, "b1");
    let conn = bus.connect().await;
    let config = ConfigProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    nix::unistd::mkfifo(&synced(&root, "system/network.conf"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .unwrap();
    std::os::unix::fs::symlink("/dev/zero", synced(&root, "system/etc.conf")).unwrap();
    fs::write(synced(&root, "controller/cboot.conf"), format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    let errors = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = config.errors().await.unwrap();
            if e.len() >= 3 {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the errors are published");
    let all = errors.join("\n");
    assert!(all.contains("network.conf: is not a regular file"), "{all}");
    assert!(all.contains("etc.conf: is a symbolic link"), "{all}");
    assert!(all.contains("cboot.conf: is 2097155 bytes; config.d files are at most 1048576 bytes"), "{all}");
    let health = HealthProxy::new(&conn).await.unwrap();
    assert!(health.get_report().await.is_ok(), "gsed still serves");
}

/// 8000 `[file]` tables (380 KB) once froze D-Bus for 18.7 s: origin tracking
/// rescanned the file for every value, on the thread that serves the bus.
#[tokio::test]
async fn a_config_with_thousands_of_tables_loads_while_the_bus_stays_responsive() {
    use gse_dbus::config::ConfigProxy;
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let _gsed = start_gsed(&bus, &root, "b1");
    let conn = bus.connect().await;
    let config = ConfigProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let health = HealthProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let before = config.generation().await.unwrap();
    let big: String = (0..8000).map(|i| format!("[file.\"/etc/lab/f{i}\"]\ncontent = \"line {i}\"\n")).collect();
    fs::write(synced(&root, "system/etc.conf"), big).unwrap();
    let mut slowest = Duration::ZERO;
    loop {
        let t0 = std::time::Instant::now();
        health.status().await.unwrap();
        slowest = slowest.max(t0.elapsed());
        if config.generation().await.unwrap() > before {
            break;
        }
        assert!(slowest < Duration::from_secs(2), "a call waited {slowest:?}: the bus froze during the load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_secs(2), "a call waited {slowest:?}");
    let shown = gsectl(&bus.address, &["config", "show", "etc.file.\"/etc/lab/f7999\".content", "--origin"]);
    assert!(text(&shown.stdout).contains("etc.conf:16000"), "the origin is still exact: {}", text(&shown.stdout));
}

/// The early socket serves root alone (whatever its mode), and a client that
/// connects and says nothing no longer holds up the hook's own connection.
#[tokio::test]
async fn the_early_socket_serves_root_only_and_a_silent_client_blocks_no_one() {
    use std::os::unix::fs::PermissionsExt;
    let root = TestRoot::new();
    let log = root.path().join("early.log");
    let child = std::process::Command::new(gse_tests::bin("gsed"))
        .arg("--early")
        .arg("--root")
        .arg(root.path())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut early = gse_tests::ProcessGuard { child: Some(child), name: "gsed --early".into() };
    let sock = root.path().join("run/gse/early.sock");
    wait_for(Duration::from_secs(10), "the early socket", || sock.exists().then_some(()));
    let _silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();

    // A careless chmod lets others reach the socket; gsed still refuses them.
    for d in [root.path(), &root.path().join("run"), &root.path().join("run/gse")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(gse_tests::bin("gsectl"))
        .arg("--root")
        .arg(root.path())
        .args(["boot", "prepare", "--sysroot", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody cannot drive early boot");
    wait_for(Duration::from_secs(5), "the refusal in the log", || {
        fs::read_to_string(&log).ok().filter(|l| l.contains("refused a connection to the early socket")).map(|_| ())
    });

    let addr: gse_dbus::BusAddress = format!("unix:path={}", sock.display()).parse().unwrap();
    let conn = addr.connect_peer().await.unwrap();
    gse_dbus::boot::BootProxy::new(&conn).await.unwrap().finish().await.unwrap();
    let status = early.wait_exit(Duration::from_secs(4)).expect("Finish() was served while the silent client waited");
    assert!(status.success());
}
