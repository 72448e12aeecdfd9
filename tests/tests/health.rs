//! gsed and gsectl as separate processes on a private dbus-daemon with the real
//! policy: health verdicts, privileges, signals seen by other D-Bus clients,
//! restarts, crash safety of the journal.

use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use gse_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn report(bus: &TestBus) -> Value {
    let out = gsectl(&bus.address, &["health", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}{}", text(&out.stdout), text(&out.stderr)))
}

/// Waits until the status leaves `starting`/`unknown`, returns the report.
fn verdict(bus: &TestBus) -> Value {
    wait_for(Duration::from_secs(20), "a health verdict", || {
        let r = report(bus);
        matches!(r["status"].as_str(), Some("green" | "red")).then_some(r)
    })
}

#[test]
fn passing_required_check_is_green() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"10s\"");
    root.check("required", "10-disk", "df / >/dev/null");
    let _gsed = start_gsed(&bus, &root, "boot-green");
    let r = verdict(&bus);
    assert_eq!(r["status"], "green", "{r:#}");
    assert_eq!(r["checks"][0]["name"], "10-disk");
    assert_eq!(r["checks"][0]["state"], "passed");
    let out = gsectl(&bus.address, &["health"]);
    assert_eq!(out.status.code(), Some(0));
    let human = text(&out.stdout);
    assert!(human.contains("GREEN") && human.contains("slot a"), "{human}");
}

#[test]
fn failing_required_check_is_red_with_its_output() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"2s\"\nretry_interval = \"500ms\"\ncheck_timeout = \"1s\"");
    root.check("required", "home-mounted", "echo '/home is not mounted' >&2; exit 4");
    root.check("required", "ok", "exit 0");
    let _gsed = start_gsed(&bus, &root, "boot-red");
    let r = verdict(&bus);
    assert_eq!(r["status"], "red", "{r:#}");
    let failures: Vec<&str> = r["failures"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(failures, ["required check 'home-mounted' exited with status 4: /home is not mounted"]);
    let out = gsectl(&bus.address, &["health"]);
    assert_eq!(out.status.code(), Some(1));
    let human = text(&out.stdout);
    assert!(human.contains("RED") && human.contains("| /home is not mounted"), "{human}");
}

#[test]
fn hanging_check_is_killed_at_its_timeout() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"3s\"\ncheck_timeout = \"1s\"\nretry_interval = \"5s\"");
    let marker = root.path().join("hang.pid");
    root.check("required", "hangs", &format!("echo $$ > {}; echo stuck; exec sleep 600", marker.display()));
    let _gsed = start_gsed(&bus, &root, "boot-hang");
    let r = verdict(&bus);
    assert_eq!(r["status"], "red");
    assert_eq!(r["checks"][0]["state"], "timed-out", "{r:#}");
    assert!(r["failures"][0].as_str().unwrap().contains("timed out after 1s and was killed"), "{r:#}");
    let pid: i32 = fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the hanging check {pid} is still alive");
}

#[test]
fn failing_wanted_check_stays_green_but_is_reported() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"5s\"");
    root.check("required", "ok", "exit 0");
    root.check("wanted", "printer", "echo 'no printer on lpt1'; exit 1");
    let _gsed = start_gsed(&bus, &root, "boot-wanted");
    let r = verdict(&bus);
    assert_eq!(r["status"], "green", "{r:#}");
    assert_eq!(r["failures"][0], "wanted check 'printer' exited with status 1: no printer on lpt1");
    assert_eq!(gsectl(&bus.address, &["health"]).status.code(), Some(0));
}

#[test]
fn unprivileged_caller_reads_but_cannot_change_state() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"5s\"");
    let _gsed = start_gsed(&bus, &root, "boot-policy");
    verdict(&bus);

    let read = gsectl_as_nobody(&bus.address, &["health", "--json"]);
    assert_eq!(read.status.code(), Some(0), "{}", text(&read.stderr));
    let prop = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address))
        .args(["get-property", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Health", "Status"])
        .output()
        .unwrap();
    assert_eq!(text(&prop.stdout).trim(), "s \"green\"", "{}", text(&prop.stderr));

    let denied = gsectl_as_nobody(&bus.address, &["health", "mark-bad", "student broke it"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(text(&denied.stderr).contains("permission denied"), "{}", text(&denied.stderr));
    let raw = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address))
        .args(["call", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Health", "MarkBad", "s", "x"])
        .output()
        .unwrap();
    assert!(!raw.status.success());
    assert!(
        text(&raw.stderr).contains("only root, members of group 'gse' and users polkit allows"),
        "{}",
        text(&raw.stderr)
    );
    assert_eq!(report(&bus)["status"], "green", "the refused call changed nothing");

    let ok = gsectl(&bus.address, &["health", "mark-bad", "student broke it"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let r = report(&bus);
    assert_eq!(r["status"], "red");
    assert!(r["reason"].as_str().unwrap().contains("student broke it"));
}

#[test]
fn another_projects_client_sees_status_and_its_changes() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"5s\"");
    let _gsed = start_gsed(&bus, &root, "boot-signals");
    verdict(&bus);
    let get = busctl(
        &bus.address,
        &["get-property", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Health", "Status"],
    );
    assert_eq!(text(&get.stdout).trim(), "s \"green\"");

    let gdbus = require_tool("gdbus", "libglib2.0-bin");
    let log = root.path().join("monitor.log");
    let monitor = Command::new(gdbus)
        .args(["monitor", "--address", &bus.address, "--dest", "org.gentoo.Gse1"])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _monitor = ProcessGuard { child: Some(monitor), name: "gdbus monitor".into() };
    wait_for(Duration::from_secs(10), "gdbus monitor to attach", || {
        fs::read_to_string(&log).ok().filter(|l| l.contains("Monitoring signals")).map(|_| ())
    });
    assert!(gsectl(&bus.address, &["health", "mark-bad", "kiosk app missing"]).status.success());
    let seen = wait_for(Duration::from_secs(10), "StatusChanged and PropertiesChanged", || {
        let l = fs::read_to_string(&log).unwrap_or_default();
        (l.contains("org.gentoo.Gse1.Health.StatusChanged ('red',)") && l.contains("{'Status': <'red'>}")).then_some(l)
    });
    assert!(seen.contains("org.freedesktop.DBus.Properties.PropertiesChanged ('org.gentoo.Gse1.Health'"), "{seen}");
}

#[test]
fn restart_in_the_same_boot_is_not_a_new_boot() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"5s\"");
    let count_boots =
        |root: &TestRoot| fs::read_to_string(root.journal()).unwrap().matches("\"event\":\"boot-started\"").count();
    let mut gsed = start_gsed(&bus, &root, "boot-1");
    verdict(&bus);
    let status = gsed.stop_with(Signal::SIGTERM, Duration::from_secs(3)).expect("gsed did not stop on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!bus.gsed_owns_name());

    let _gsed = start_gsed(&bus, &root, "boot-1");
    assert_eq!(report(&bus)["status"], "green", "the verdict of this boot is kept");
    assert_eq!(count_boots(&root), 1);
    drop(_gsed);

    let _gsed = start_gsed(&bus, &root, "boot-2");
    verdict(&bus);
    assert_eq!(count_boots(&root), 2);
}

#[test]
fn sigint_ends_gsed_cleanly_too() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    let mut gsed = start_gsed(&bus, &root, "boot-int");
    let status = gsed.stop_with(Signal::SIGINT, Duration::from_secs(3)).expect("gsed did not stop on SIGINT");
    assert!(status.success());
}

#[test]
fn journal_survives_kill9_and_torn_or_garbage_records() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"5s\"");
    let mut gsed = start_gsed(&bus, &root, "boot-1");
    verdict(&bus);
    // Keep gsed writing, and kill it in the middle of that.
    let addr = bus.address.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..40 {
            let args: &[&str] = if i % 2 == 0 { &["health", "mark-good"] } else { &["health", "mark-bad", "flip"] };
            let _ = gsectl(&addr, args);
        }
    });
    // Killed while the writer is still going: once a few of its records are in.
    let journal = root.journal();
    wait_for(Duration::from_secs(20), "records from the writer", || {
        let n = gsed::journal::Journal::open(&journal).ok()?.0.records().len();
        (n >= 6).then_some(())
    });
    gsed.stop_with(Signal::SIGKILL, Duration::from_secs(3));
    writer.join().unwrap();

    let (before, _) = gsed::journal::Journal::open(&root.journal()).unwrap();
    let before = before.records().to_vec();
    assert!(before.len() >= 3, "some records were written: {}", before.len());
    // A record torn in the middle of its line, then garbage.
    let mut f = fs::OpenOptions::new().append(true).open(root.journal()).unwrap();
    f.write_all(b"1234abcd {\"time\":1,\"boot_id\":\"x\",\"slot\":\"a\",\"event\":\"hea\n").unwrap();
    f.write_all(b"\x00\x01garbage\xff\n{\"truncated").unwrap();
    drop(f);

    let _gsed = start_gsed(&bus, &root, "boot-2");
    let r = verdict(&bus);
    assert_eq!(r["status"], "green");
    let (after, _) = gsed::journal::Journal::open(&root.journal()).unwrap();
    assert_eq!(&after.records()[..before.len()], &before[..], "every earlier record is kept");
    let new: Vec<&str> = after.records()[before.len()..].iter().map(|r| r.event.name()).collect();
    assert_eq!(new, ["boot-started", "healthy"]);
}

#[test]
fn gsectl_without_daemon_says_so_and_exits_3() {
    let bus = TestBus::start();
    let out = gsectl(&bus.address, &["health"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("gsed is not running") && err.contains("rc-service gsed start"), "{err}");

    let out = gsectl("unix:path=/nonexistent/gse-test.sock", &["health"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr).lines().count(), 1, "{}", text(&out.stderr));
}

#[test]
fn second_gsed_refuses_with_a_clear_error() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    let _first = start_gsed(&bus, &root, "boot-1");
    let out = Command::new(bin("gsed"))
        .args(["--bus", &bus.address, "--root"])
        .arg(root.path())
        .args(["--boot-id", "boot-1"])
        .env("GSE_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already owned") && err.contains("another gsed is running"), "{err}");

    let out = Command::new(bin("gsed"))
        .args(["--bus", "unix:path=/nonexistent/gse-test.sock", "--root"])
        .arg(root.path())
        .args(["--boot-id", "boot-1"])
        .env("GSE_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot connect to the bus at unix:path=/nonexistent"), "{}", text(&out.stderr));
}

#[test]
fn readiness_is_notified_only_after_the_name_is_owned() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    let sock_path = root.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let child = Command::new(bin("gsed"))
        .args(["--bus", &bus.address, "--root"])
        .arg(root.path())
        .args(["--boot-id", "boot-n"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _g = ProcessGuard { child: Some(child), name: "gsed".into() };
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 from gsed");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(bus.gsed_owns_name(), "READY came before the name was owned");
}

#[test]
fn openrc_default_runlevel_gates_green() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.write(
        "usr/share/gse/config.d/system/boot.conf",
        "[health]\ninit = \"auto\"\ndeadline = \"20s\"\nretry_interval = \"200ms\"\n",
    );
    for svc in ["dbus", "sshd"] {
        root.write(&format!("etc/runlevels/default/{svc}"), "");
    }
    root.write("run/openrc/started/dbus", "");
    fs::create_dir_all(root.path().join("run/openrc/failed")).unwrap();
    let _gsed = start_gsed(&bus, &root, "boot-rc");
    // Wait for the init check's first verdict rather than for time.
    let r = wait_for(Duration::from_secs(10), "the init check", || {
        let r = report(&bus);
        r["checks"].as_array().is_some_and(|c| !c.is_empty()).then_some(r)
    });
    assert_eq!(r["status"], "starting", "{r:#}");
    assert_eq!(gsectl(&bus.address, &["health"]).status.code(), Some(2));
    assert!(r["checks"][0]["detail"].as_str().unwrap().contains("not started: sshd"), "{r:#}");
    root.write("run/openrc/started/sshd", "");
    assert_eq!(verdict(&bus)["status"], "green");
}

#[test]
fn systemd_boot_complete_gates_green() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.write("usr/share/gse/config.d/system/boot.conf", "[health]\ninit = \"systemd\"\ndeadline = \"30s\"\n");
    let _gsed = start_gsed(&bus, &root, "boot-sd");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(report(&bus)["status"], "starting");
    assert!(gsectl(&bus.address, &["health", "boot-complete"]).status.success());
    assert_eq!(verdict(&bus)["status"], "green");
}

#[test]
fn health_follows_a_config_change_without_a_restart() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"60s\"\nretry_interval = \"200ms\"");
    root.check("required", "needs-printer", "exit 1");
    let _gsed = start_gsed(&bus, &root, "boot-live");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(report(&bus)["status"], "starting");
    // The synced layer points the required checks at a directory whose checks pass.
    root.check("required-lab", "ok", "exit 0");
    root.write(
        "user-data/persistent/config.d/controller/cboot.conf",
        "[health]\nrequired_checks = \"/etc/gse/checks/required-lab\"\n",
    );
    let r = verdict(&bus);
    assert_eq!(r["status"], "green", "{r:#}");
    assert_eq!(r["checks"][0]["name"], "ok");
}
