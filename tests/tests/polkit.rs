//! Authorization inside gsed (DESIGN §2) with the real polkitd on the test's
//! private bus: the bus policy lets everyone call, gsed lets in root, group `gse`
//! and whoever polkit authorizes for the action, and keeps files that are not
//! world-readable out of what unprivileged callers read.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use gse_tests::{ProcessGuard, TestBus, TestRoot, busctl, gsectl, gsectl_as_nobody, repo, start_gsed, text, wait_for};

/// A file placed in a system directory for the test, removed on drop.
struct Placed(PathBuf);

impl Placed {
    fn new(path: &Path, content: &[u8]) -> Placed {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        Placed(path.to_owned())
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn start_polkitd(bus: &TestBus) -> ProcessGuard {
    let polkitd = Path::new("/usr/lib/polkit-1/polkitd");
    assert!(polkitd.exists(), "polkitd is not installed: apt-get install -y polkitd (.ci/run does this)");
    // Started as root, it drops to its own user before it claims its name.
    let child = Command::new(polkitd)
        .arg("--no-debug")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdout(Stdio::null())
        .stderr(fs::File::create(bus.dir.path().join("polkitd.log")).unwrap())
        .spawn()
        .unwrap();
    let guard = ProcessGuard { child: Some(child), name: "polkitd".into() };
    wait_for(Duration::from_secs(15), "polkitd on the bus", || {
        busctl(&bus.address, &["status", "org.freedesktop.PolicyKit1"]).status.success().then_some(())
    });
    guard
}

#[test]
fn gsed_asks_polkit_for_callers_who_are_neither_root_nor_in_group_gse() {
    let pid = std::process::id();
    let _actions = Placed::new(
        Path::new(&format!("/usr/share/polkit-1/actions/org.gentoo.gse1-test{pid}.policy")),
        &fs::read(repo().join("dbus/org.gentoo.gse1.policy")).unwrap(),
    );
    // A lab's rule: user nobody may choose the server, nothing else.
    let _rule = Placed::new(
        Path::new(&format!("/etc/polkit-1/rules.d/50-gse-test{pid}.rules")),
        b"polkit.addRule(function(action, subject) {\n  if (action.id == \"org.gentoo.gse1.servers\" && subject.user == \"nobody\") {\n    return polkit.Result.YES;\n  }\n});\n",
    );
    let bus = TestBus::start_with(&[Path::new("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")]);
    let _polkitd = start_polkitd(&bus);
    let root = TestRoot::new();
    root.health_conf("");
    root.write(
        "usr/share/gse/config.d/system/etc.conf",
        "[file.\"/etc/krb5.keytab\"]\ncontent = \"secret key material\"\nmode = \"0600\"\n[file.\"/etc/motd\"]\ncontent = \"welcome\"\n",
    );
    let _gsed = start_gsed(&bus, &root, "b1");

    let unpin = gsectl_as_nobody(&bus.address, &["servers", "unpin"]);
    assert!(unpin.status.success(), "polkit's rule lets nobody choose the server: {}", text(&unpin.stderr));
    let bad = gsectl_as_nobody(&bus.address, &["health", "mark-bad", "nobody was here"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(err.contains("permission denied") && err.contains("polkit allows for org.gentoo.gse1.health"), "{err}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&gsectl(&bus.address, &["health", "--json"]).stdout).unwrap()["status"],
        "green",
        "the refused call changed nothing"
    );
    assert!(gsectl(&bus.address, &["health", "mark-bad", "root may"]).status.success());

    // Config.Get/Dump: a keytab's content is for root only; the motd for anyone.
    let shown = text(&gsectl_as_nobody(&bus.address, &["config", "show", "etc.file"]).stdout);
    assert!(!shown.contains("secret key material") && shown.contains("hidden"), "{shown}");
    assert!(shown.contains("welcome"), "{shown}");
    let shown = text(&gsectl(&bus.address, &["config", "show", "etc.file"]).stdout);
    assert!(shown.contains("secret key material"), "root sees it: {shown}");
    let raw = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address))
        .args(["call", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Config", "Get", "s", "etc"])
        .output()
        .unwrap();
    assert!(raw.status.success() && !text(&raw.stdout).contains("secret key material"), "{}", text(&raw.stdout));
}
