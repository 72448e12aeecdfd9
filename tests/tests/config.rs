//! config.d end to end: the shipped tree, `gsectl config check`, and a running
//! gsed that follows edits live (Generation, Errors, Changed) on a private bus.

use std::{fs, path::Path, process::Command, time::Duration};

use futures_util::StreamExt;
use gse_dbus::config::ConfigProxy;
use gse_tests::*;

#[test]
fn every_file_of_the_shipped_tree_is_valid_and_nothing_is_missing() {
    let tree = repo().join("config.d");
    let out = gsectl("system", &["config", "check", tree.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    // The layout of DESIGN §4, each with its README.
    for f in [
        "README",
        "controller/README",
        "controller/btrfs.conf",
        "controller/cfstab.conf",
        "controller/drives.conf",
        "controller/server/server.info.conf",
        "controller/services/default-runlevel",
        "controller/tmpfs.conf",
        "controller/update.chk.conf",
        "sources/README",
        "sources/sources.conf",
        "system/README",
        "system/boot.conf",
        "system/etc.conf",
        "system/fstab.conf",
        "system/network.conf",
        "system/overlays.conf",
    ] {
        assert!(tree.join(f).is_file(), "config.d/{f} is missing");
    }
    assert!(fs::read_dir(tree.join("system/examples")).unwrap().count() > 1);
    assert!(fs::read_dir(tree.join("controller/examples")).unwrap().count() > 1);
    // Every file the walk finds is one GSE reads, an example, a README or the runlevel list;
    // check_tree (above) fails on anything else, so a new file cannot be forgotten.
    let files = gsed::config::walk(&tree);
    assert!(files.len() >= 25, "{files:?}");
    let shipped = gsed::config::check_tree(&tree).unwrap();
    assert!(shipped.settings.servers.server.is_empty(), "the shipped tree configures no server");
    assert!(shipped.settings.network.interface.is_empty());
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
    assert!(out.status.success());
}

#[test]
fn config_check_prints_every_error_with_file_and_line() {
    let root = TestRoot::new();
    let tree = root.path().join("config.d");
    copy_tree(&repo().join("config.d"), &tree);
    fs::write(tree.join("controller/update.chk.conf"), "channel = \"Stable!\"\npolicy = \"sometimes\"\n").unwrap();
    fs::write(tree.join("system/network.conf"), "[interface.eth0]\nmethod = \"static\"\naddress = \"192.0.2.9/33\"\n")
        .unwrap();
    fs::write(tree.join("system/boot.conf"), "primary = \"a\"\n[health\n").unwrap();
    let out = gsectl("system", &["config", "check", tree.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let t = tree.display().to_string();
    assert!(lines.iter().any(|l| l.starts_with(&format!("{t}/system/boot.conf:2:"))), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{t}/controller/update.chk.conf:2:10: unknown variant `sometimes`"))),
        "{stdout}"
    );
    assert!(
        lines.contains(
            &format!(
                "{t}/system/network.conf:3: interface.eth0.address: prefix length 33 is out of range: expected 1 to 32"
            )
            .as_str()
        ),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("3 error(s)"));
}

struct Live {
    bus: TestBus,
    root: TestRoot,
    _gsed: ProcessGuard,
}

impl Live {
    fn start() -> Live {
        let (bus, root) = (TestBus::start(), TestRoot::new());
        copy_tree(&repo().join("config.d"), &root.path().join("usr/share/gse/config.d"));
        root.write("user-data/persistent/config.d/system/boot.conf", "[health]\ninit = \"none\"\nmax_attempts = 4\n");
        let gsed = start_gsed(&bus, &root, "boot-cfg");
        Live { bus, root, _gsed: gsed }
    }
    fn synced(&self, rel: &str) -> std::path::PathBuf {
        self.root.path().join("user-data/persistent/config.d").join(rel)
    }
}

/// Waits for the next Changed signal (or none within `within`).
async fn next_changed(stream: &mut gse_dbus::config::ChangedStream, within: Duration) -> Option<Vec<String>> {
    let s = tokio::time::timeout(within, stream.next()).await.ok()??;
    Some(s.args().ok()?.files().clone())
}

#[tokio::test]
async fn live_edits_apply_and_bad_ones_keep_the_last_good_config() {
    let live = tokio::task::spawn_blocking(Live::start).await.unwrap();
    let conn = live.bus.connect().await;
    let config = ConfigProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let mut changed = config.receive_changed().await.unwrap();
    let g0 = config.generation().await.unwrap();
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "4");

    // A valid edit.
    let boot = live.synced("system/boot.conf");
    fs::write(&boot, "[health]\ninit = \"none\"\nmax_attempts = 5\n").unwrap();
    let files = next_changed(&mut changed, Duration::from_secs(2)).await.expect("Changed within a second");
    assert_eq!(files, [boot.display().to_string()]);
    assert_eq!(config.generation().await.unwrap(), g0 + 1);
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "5");

    // An invalid edit: nothing applied, the error published with file and line.
    fs::write(&boot, "[health]\ninit = \"none\"\nmax_attempts = 500\n").unwrap();
    let errors = wait_errors(&config, |e| !e.is_empty()).await;
    assert_eq!(errors, [format!("{}:3: health.max_attempts: 500 is out of range: expected 1 to 100", boot.display())]);
    assert_eq!(config.generation().await.unwrap(), g0 + 1);
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "5");
    assert!(next_changed(&mut changed, Duration::from_millis(300)).await.is_none());

    // Fixing it clears the errors and applies.
    fs::write(&boot, "[health]\ninit = \"none\"\nmax_attempts = 6\n").unwrap();
    wait_errors(&config, Vec::is_empty).await;
    next_changed(&mut changed, Duration::from_secs(2)).await.expect("Changed after the fix");
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "6");
    let g1 = config.generation().await.unwrap();
    assert_eq!(g1, g0 + 2);

    // An editor's save: write a temporary file, rename it over. One reload.
    let tmp = boot.with_file_name(".boot.conf.swp");
    fs::write(&tmp, "[health]\ninit = \"none\"\nmax_attempts = 7\n").unwrap();
    fs::rename(&tmp, &boot).unwrap();
    next_changed(&mut changed, Duration::from_secs(2)).await.expect("Changed after rename");
    assert!(next_changed(&mut changed, Duration::from_millis(500)).await.is_none(), "one reload only");
    assert_eq!(config.generation().await.unwrap(), g1 + 1);

    // A burst of 20 writes to two files is coalesced: a reload or two (a loaded
    // machine may pause the writer past the quiet window), never one per write,
    // and together they name both files and end on the last values.
    fs::create_dir_all(live.synced("controller")).unwrap();
    for i in 0..10 {
        fs::write(&boot, format!("[health]\ninit = \"none\"\nmax_attempts = {}\n", 10 + i)).unwrap();
        fs::write(live.synced("controller/update.chk.conf"), format!("channel = \"c{i}\"\n")).unwrap();
    }
    let mut named = std::collections::BTreeSet::new();
    let mut reloads = 0;
    let mut within = Duration::from_secs(3);
    while let Some(files) = next_changed(&mut changed, within).await {
        named.extend(files);
        reloads += 1;
        within = Duration::from_millis(500);
    }
    assert!((1..=2).contains(&reloads), "20 writes gave {reloads} reloads");
    assert_eq!(named.len(), 2, "{named:?}");
    assert_eq!(config.generation().await.unwrap(), g1 + 1 + reloads);
    assert_eq!(config.get("update.channel").await.unwrap(), "\"c9\"");
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "19");

    // Removing the synced file falls back to the image's layer.
    fs::remove_file(&boot).unwrap();
    next_changed(&mut changed, Duration::from_secs(2)).await.expect("Changed after removal");
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "3", "the image's boot.conf value");
}

async fn wait_errors(config: &ConfigProxy<'_>, done: impl Fn(&Vec<String>) -> bool) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let e = config.errors().await.unwrap();
            if done(&e) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("Errors property as expected")
}

#[test]
fn bad_files_of_every_kind_are_reported_and_gsed_keeps_running() {
    let live = Live::start();
    let bad = [
        ("system/network.conf", "[interface.eth0]\nmethod = \"dhcp\"\nspeed = 100\n", "unknown field `speed`"),
        ("controller/tmpfs.conf", "[mount.\"/tmp\"]\nsize = 5\n", "invalid type: integer `5`, expected a string"),
        ("controller/update.chk.conf", "check_interval = \"1s\"\n", "check_interval: must be at least 1m"),
        ("controller/btrfs.conf", "", "is a directory, expected a file"),
    ];
    for (rel, content, expected) in bad {
        let p = live.synced(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        if expected.contains("directory") {
            fs::create_dir_all(&p).unwrap();
        } else {
            fs::write(&p, content).unwrap();
        }
        let errors = wait_for(Duration::from_secs(5), &format!("an error for {rel}"), || {
            let out = busctl(
                &live.bus.address,
                &["get-property", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Config", "Errors"],
            );
            let t = text(&out.stdout);
            t.contains(expected).then_some(t)
        });
        assert!(errors.contains(&p.display().to_string()), "{errors}");
        assert!(live.bus.gsed_owns_name(), "gsed survived {rel}");
        if p.is_dir() {
            fs::remove_dir(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let out = gsectl(&live.bus.address, &["health"]);
    assert_ne!(out.status.code(), Some(3), "gsed still answers");
}

#[test]
fn config_show_prints_values_with_origins() {
    let live = Live::start();
    let out = gsectl(&live.bus.address, &["config", "show", "boot.health", "--origin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let synced = live.synced("system/boot.conf").display().to_string();
    assert!(stdout.contains(&format!("boot.health.max_attempts = 4    # {synced}:3")), "{stdout}");
    let image = live.root.path().join("usr/share/gse/config.d/system/boot.conf").display().to_string();
    assert!(
        stdout.lines().any(|l| l.starts_with("boot.health.on_failure = \"bailout\"") && l.contains(&image)),
        "{stdout}"
    );
    let one = gsectl(&live.bus.address, &["config", "show", "tmpfs.mount./tmp.mode"]);
    assert_eq!(text(&one.stdout).trim(), "tmpfs.mount.\"/tmp\".mode = \"1777\"");
    let none = gsectl(&live.bus.address, &["config", "show", "no.such.key"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none.stderr).contains("no configuration key 'no.such.key'"));
}

#[test]
fn reload_is_refused_to_unprivileged_users() {
    let live = Live::start();
    let out = gsectl_as_nobody(&live.bus.address, &["config", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    let show = gsectl_as_nobody(&live.bus.address, &["config", "show", "update.channel"]);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    assert!(gsectl(&live.bus.address, &["config", "reload"]).status.success());
}
