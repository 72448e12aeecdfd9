//! Servers end to end: trees published by `gsectl publish` and served by real
//! nginx on 127.0.0.x, and a gsed that probes them, syncs config.d from the best,
//! fails over, follows list changes, and refuses anything tampered with.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use futures_util::StreamExt;
use gse_dbus::servers::{ServersProxy, UpdateProxy};
use gse_tests::{http::*, *};

struct Room {
    keys: tempfile::TempDir,
    public_key: String,
    docroots: tempfile::TempDir,
    servers: Vec<Nginx>,
    source: PathBuf,
    client: TestRoot,
    bus: TestBus,
}

fn server_info(public_key: &str, servers: &[(&str, String)]) -> String {
    let mut s = format!(
        "public_key = \"{public_key}\"\nprobe_interval = \"1s\"\nprobe_timeout = \"900ms\"\nfail_after = 2\nswitch_margin = 0.3\njitter = \"2s\"\nsync_interval = \"1m\"\n"
    );
    for (name, url) in servers {
        s.push_str(&format!("[[server]]\nname = \"{name}\"\nurl = \"{url}\"\n"));
    }
    s
}

impl Room {
    /// `n` servers on 127.0.0.11.. with `loads`, all publishing the same config.d.
    fn new(loads: &[f64]) -> Room {
        let keys = tempfile::tempdir().unwrap();
        let public_key = keygen(keys.path(), "k");
        let docroots = tempfile::tempdir().unwrap();
        let servers: Vec<Nginx> = loads
            .iter()
            .enumerate()
            .map(|(i, load)| {
                let root = docroots.path().join(format!("s{i}"));
                fs::create_dir_all(&root).unwrap();
                let n = Nginx::start(&format!("127.0.0.{}", 11 + i), &root);
                n.set_load(*load);
                n
            })
            .collect();
        let source = docroots.path().join("source");
        cp(&repo().join("config.d"), &source);
        let list: Vec<(&str, String)> =
            ["s0", "s1", "s2", "s3"].iter().zip(&servers).map(|(n, s)| (*n, s.url())).collect();
        fs::write(source.join("controller/server/server.info.conf"), server_info(&public_key, &list)).unwrap();
        let client = TestRoot::new();
        cp(&source, &client.path().join("usr/share/gse/config.d"));
        client.write("etc/gse-release", "VERSION=1.0\n");
        let room = Room { keys, public_key, docroots, servers, source, client, bus: TestBus::start() };
        for i in 0..room.servers.len() {
            room.publish(i, &room.source, "k");
        }
        room
    }

    fn secret(&self, key: &str) -> PathBuf {
        self.keys.path().join(format!("{key}.sec"))
    }

    fn publish(&self, server: usize, tree: &Path, key: &str) {
        let to = &self.servers[server].docroot;
        let out = publish_config(tree, to, &self.secret(key));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn synced(&self) -> PathBuf {
        self.client.path().join("user-data/persistent/config.d")
    }
}

fn cp(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

/// Every file under `dir` with its content, to compare trees byte for byte.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    gsed::config::walk(dir)
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().to_owned(), fs::read(&p).unwrap()))
        .collect()
}

async fn eventually<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {secs} s waiting for {what}"))
}

/// The next Switched signal, skipping a first choice that may have been queued
/// before the test looked (old server empty).
async fn next_switch(stream: &mut gse_dbus::servers::SwitchedStream, secs: u64) -> Option<(String, String, String)> {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            let sig = stream.next().await?;
            let a = sig.args().ok()?;
            if !a.old().is_empty() {
                return Some((a.old().to_string(), a.new().to_string(), a.reason().to_string()));
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn uncached<'a>(b: zbus::proxy::Builder<'a, ServersProxy<'a>>) -> zbus::proxy::Builder<'a, ServersProxy<'a>> {
    b.cache_properties(zbus::proxy::CacheProperties::No)
}

#[tokio::test]
async fn syncs_from_the_best_fails_over_and_moves_back_only_with_hysteresis() {
    let mut room = tokio::task::spawn_blocking(|| Room::new(&[0.9, 0.1, 0.5])).await.unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-servers");
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    let mut switched = servers.receive_switched().await.unwrap();

    // The first choice may be signalled before this client subscribed: read the property.
    let first = eventually("a first choice", 10, async || servers.current().await.ok().filter(|c| !c.is_empty())).await;
    assert_eq!(first, "s1", "the least loaded server");
    let synced = eventually("the first sync", 10, async || {
        let l: serde_json::Value = serde_json::from_str(&servers.last_sync().await.ok()?).ok()?;
        (l["result"] == "ok").then_some(l)
    })
    .await;
    assert_eq!(synced["server"], "s1");
    assert_eq!(snapshot(&room.synced()), snapshot(&room.source), "the synced tree is the published one");
    let table = gsectl(&room.bus.address, &["servers"]);
    let table = text(&table.stdout);
    assert!(table.contains("* s1") && table.contains("Current: s1") && table.contains("Last sync:"), "{table}");

    // s1 dies: gsed leaves it by itself and keeps syncing from the next best.
    room.servers[1].stop();
    let t0 = std::time::Instant::now();
    let (old, new, reason) = next_switch(&mut switched, 10).await.expect("a failover");
    assert_eq!((old.as_str(), new.as_str()), ("s1", "s2"));
    assert_eq!(reason, "s1 failed 2 probes in a row");
    assert!(t0.elapsed() < Duration::from_secs(5), "failover took {:?}", t0.elapsed());
    // A switch syncs by itself from the new server, unasked.
    let switched_at = gsed::journal::now();
    eventually("a sync from s2 after the failover", 10, async || {
        let l: serde_json::Value = serde_json::from_str(&servers.last_sync().await.ok()?).ok()?;
        (l["server"] == "s2" && l["time"].as_u64()? >= switched_at.saturating_sub(1) && l["result"] == "unchanged")
            .then_some(())
    })
    .await;

    // s1 returns about as loaded as s2: within the margin, nobody moves.
    room.servers[1].restart();
    room.servers[1].set_load(0.45);
    if let Ok(Some(sig)) = tokio::time::timeout(Duration::from_secs(5), switched.next()).await {
        let a = sig.args().unwrap();
        panic!("no flapping within the margin, but {} -> {}: {}", a.old(), a.new(), a.reason());
    }
    // s1 becomes clearly better: gsed moves back after its jitter.
    room.servers[1].set_load(0.05);
    let (old, new, reason) = next_switch(&mut switched, 10).await.expect("a move back");
    assert_eq!((old.as_str(), new.as_str()), ("s2", "s1"));
    assert!(reason.starts_with("rebalancing: s1 scores"), "{reason}");
}

/// Sets `sync_interval` in the room's published server.info.conf and in the
/// client's image defaults, and publishes it everywhere.
fn sync_every(room: &Room, interval: &str) {
    let file = room.source.join("controller/server/server.info.conf");
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("sync_interval = \"1m\"", &format!("sync_interval = \"{interval}\""));
    fs::write(&file, &text).unwrap();
    room.client.write("usr/share/gse/config.d/controller/server/server.info.conf", &text);
    for i in 0..room.servers.len() {
        room.publish(i, &room.source, "k");
    }
}

/// Every sync_interval the client syncs by itself: a change published on the
/// server arrives without anyone asking.
#[tokio::test]
async fn a_new_publish_arrives_by_the_periodic_sync() {
    let room = tokio::task::spawn_blocking(|| {
        let room = Room::new(&[0.1]);
        sync_every(&room, "10s");
        room
    })
    .await
    .unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-periodic");
    eventually("the first sync", 10, async || (snapshot(&room.synced()) == snapshot(&room.source)).then_some(())).await;
    fs::write(room.source.join("controller/update.chk.conf"), "channel = \"beta\"\n").unwrap();
    room.publish(0, &room.source, "k");
    eventually("the new publish, by the periodic sync", 25, async || {
        (snapshot(&room.synced()) == snapshot(&room.source)).then_some(())
    })
    .await;
}

/// Every file and directory under `dir` (itself included) with what any write
/// moves: inode, modification and change times.
fn stamps(dir: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(p) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        out.push((
            p.clone(),
            m.ino(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000,
        ));
        if m.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// A sync that finds the tree as published (what happens every sync_interval)
/// writes nothing: no file, no directory, no staging area is touched.
#[tokio::test]
async fn a_sync_with_nothing_new_writes_nothing() {
    let room = tokio::task::spawn_blocking(|| Room::new(&[0.1])).await.unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-nowrite");
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    eventually("the first sync", 10, async || (snapshot(&room.synced()) == snapshot(&room.source)).then_some(())).await;
    let work = room.client.path().join("user-data/persistent/gse/sync");
    let before = (stamps(&room.synced()), stamps(&work));
    for _ in 0..3 {
        servers.sync().await.expect("a sync");
        let last: serde_json::Value = serde_json::from_str(&servers.last_sync().await.unwrap()).unwrap();
        assert_eq!(last["result"], "unchanged", "{last}");
    }
    assert!((stamps(&room.synced()), stamps(&work)) == before, "a sync with nothing new wrote to the disk");

    // A change of mode alone (644 -> 755) is a change: it is applied.
    let file = room.source.join("controller/README");
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    room.publish(0, &room.source, "k");
    servers.sync().await.expect("a sync");
    let mode = fs::metadata(room.synced().join("controller/README")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777, 0o755);
}

/// A tree signed by the right key that does not validate on this client (say,
/// published by a newer gsectl) is refused: the synced tree and the config in
/// force stay as they were, and the error names the file.
#[tokio::test]
async fn a_signed_tree_that_does_not_validate_here_is_refused() {
    let room = tokio::task::spawn_blocking(|| Room::new(&[0.1])).await.unwrap();
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-invalid");
    eventually("the first sync", 10, async || (snapshot(&room.synced()) == snapshot(&room.source)).then_some(())).await;
    let before = snapshot(&room.synced());

    // Sign, by hand, a copy of the published tree with a boot.conf this gsed rejects.
    let gse1 = room.servers[0].docroot.join("gse1");
    let bad = gse1.join("config.d.bad");
    cp(&gse1.join("config.d/"), &bad);
    for f in ["MANIFEST", "MANIFEST.minisig"] {
        fs::remove_file(bad.join(f)).unwrap();
    }
    fs::write(bad.join("system/boot.conf"), "[health]\nmax_attempts = \"many\"\n").unwrap();
    let old =
        gsed::servers::manifest::Manifest::parse(&fs::read_to_string(gse1.join("config.d/MANIFEST")).unwrap()).unwrap();
    let mut m = gsed::servers::manifest::Manifest::from_dir(&bad).unwrap();
    m.serial = old.serial + 1;
    fs::write(bad.join("MANIFEST"), m.encode()).unwrap();
    let sign = Command::new(require_tool("minisign", "minisign"))
        .arg("-S")
        .arg("-s")
        .arg(room.secret("k"))
        .arg("-m")
        .arg(bad.join("MANIFEST"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(sign.status.success(), "minisign -S: {}", text(&sign.stderr));
    fs::remove_file(gse1.join("config.d")).unwrap();
    std::os::unix::fs::symlink("config.d.bad", gse1.join("config.d")).unwrap();

    let err = servers.sync().await.expect_err("an invalid tree is refused").to_string();
    assert!(err.contains("does not validate here") && err.contains("boot.conf"), "{err}");
    assert!(snapshot(&room.synced()) == before, "the synced tree is untouched");
    let config = gse_dbus::config::ConfigProxy::new(&conn).await.unwrap();
    assert!(config.errors().await.unwrap().is_empty(), "the configuration in force is untouched");
    assert_eq!(config.get("boot.health.max_attempts").await.unwrap(), "3");
}

/// A server that dies in the middle of a sync leaves the synced tree exactly as
/// it was (nothing half-written), and the next server brings the new tree.
#[tokio::test]
async fn a_server_dying_mid_transfer_changes_nothing_and_the_next_one_syncs() {
    let mut room = tokio::task::spawn_blocking(|| Room::new(&[0.1, 0.5])).await.unwrap();
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-midway");
    eventually("the first sync from s0", 10, async || {
        let l: serde_json::Value = serde_json::from_str(&servers.last_sync().await.ok()?).ok()?;
        (l["server"] == "s0" && l["result"] == "ok").then_some(())
    })
    .await;
    let before = snapshot(&room.synced());

    // A bigger tree, published on both; s0 now sends it slowly.
    let mut rng = 0x2545f4914f6cdd1du64;
    for i in 0..3 {
        let data: Vec<u8> = (0..900_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                b'a' + (rng % 26) as u8
            })
            .collect();
        fs::create_dir_all(room.source.join("etc/lab")).unwrap();
        fs::write(room.source.join(format!("etc/lab/blob{i}")), data).unwrap();
    }
    room.publish(0, &room.source, "k");
    room.publish(1, &room.source, "k");
    room.servers[0].limit_rate = Some(200_000);
    room.servers[0].restart();
    let sync = tokio::spawn({
        let conn = conn.clone();
        async move {
            let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
            servers.sync().await
        }
    });
    // Once the signed manifest is fetched, the files are under way (the first
    // takes 4.5 s at this rate): then s0 goes away.
    let logged = room.servers[0].access_log().matches("MANIFEST").count();
    eventually("the manifest fetched from s0", 10, async || {
        (room.servers[0].access_log().matches("MANIFEST").count() > logged).then_some(())
    })
    .await;
    room.servers[0].stop();
    let r = sync.await.unwrap();
    assert!(r.is_err(), "the sync cannot have finished: {r:?}");
    assert!(snapshot(&room.synced()) == before, "a transfer cut off midway changes nothing");
    // gsed leaves s0 and syncs the new tree from s1. The record of that sync
    // is written after the files: wait for both.
    eventually("the new tree from s1, and its record", 20, async || {
        let l: serde_json::Value = serde_json::from_str(&servers.last_sync().await.ok()?).ok()?;
        (snapshot(&room.synced()) == snapshot(&room.source) && l["server"] == "s1").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_server_list_change_applies_without_a_restart() {
    let room = tokio::task::spawn_blocking(|| Room::new(&[0.1, 0.8])).await.unwrap();
    let _gsed = start_gsed(&room.bus, &room.client, "boot-list");
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    let mut switched = servers.receive_switched().await.unwrap();
    let first = eventually("a first choice", 10, async || servers.current().await.ok().filter(|c| !c.is_empty())).await;
    assert_eq!(first, "s0");

    // The administrator publishes a list without s0, on both servers.
    let list = [("s1", room.servers[1].url())];
    fs::write(room.source.join("controller/server/server.info.conf"), server_info(&room.public_key, &list)).unwrap();
    room.publish(0, &room.source, "k");
    room.publish(1, &room.source, "k");
    servers.sync().await.unwrap();
    let (old, new, reason) = next_switch(&mut switched, 5).await.expect("leaves s0");
    assert_eq!((old.as_str(), new.as_str(), reason.as_str()), ("s0", "s1", "s0 was removed from the server list"));
    let rows = servers.servers().await.unwrap();
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["s1"]);
}

#[tokio::test]
async fn tampered_or_broken_publishes_change_nothing() {
    let room = tokio::task::spawn_blocking(|| Room::new(&[0.1])).await.unwrap();
    let bad500 = BadServer::start(false);
    let hang = BadServer::start(true);
    // Two more entries the test pins to: one answers 500, one never answers.
    let mut list = vec![("s0", room.servers[0].url()), ("broken", bad500.url()), ("hangs", hang.url())];
    let conf = server_info(&room.public_key, &list);
    fs::write(room.source.join("controller/server/server.info.conf"), &conf).unwrap();
    room.client.write("usr/share/gse/config.d/controller/server/server.info.conf", &conf);
    room.publish(0, &room.source, "k");
    let _gsed = start_gsed(&room.bus, &room.client, "boot-tamper");
    let conn = room.bus.connect().await;
    let servers = uncached(ServersProxy::builder(&conn)).build().await.unwrap();
    eventually("the first sync", 10, async || {
        let l: serde_json::Value = serde_json::from_str(&servers.last_sync().await.ok()?).ok()?;
        (l["result"] == "ok" && l["server"] == "s0").then_some(())
    })
    .await;
    servers.switch("s0").await.unwrap();
    let live = room.servers[0].docroot.join("gse1/config.d");
    // An older publish, validly signed, replayed by a mirror or on the plain-HTTP
    // path, cannot take config.d back.
    let old = (fs::read(live.join("MANIFEST")).unwrap(), fs::read(live.join("MANIFEST.minisig")).unwrap());
    fs::write(room.source.join("system/etc.conf"), "[file.\"/etc/motd\"]\ncontent = \"newer\\n\"\n").unwrap();
    room.publish(0, &room.source, "k");
    let out = gsectl(&room.bus.address, &["servers", "sync"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before_replay = snapshot(&room.synced());
    let dir = fs::canonicalize(&live).unwrap();
    fs::write(dir.join("MANIFEST"), &old.0).unwrap();
    fs::write(dir.join("MANIFEST.minisig"), &old.1).unwrap();
    let out = gsectl(&room.bus.address, &["servers", "sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already accepted: refused"), "{}", text(&out.stderr));
    assert!(snapshot(&room.synced()) == before_replay, "the replay changed nothing");

    let good = snapshot(&room.synced());
    let live = room.servers[0].docroot.join("gse1/config.d");
    let key = room.secret("k");
    let sync_fails = async |expect: &str| {
        let out = gsectl(&room.bus.address, &["servers", "sync"]);
        assert_eq!(out.status.code(), Some(1), "{expect}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(snapshot(&room.synced()) == good, "{expect}: the persistent config.d is unchanged");
    };
    let changed = room.source.join("controller/update.chk.conf");
    let mut edited = fs::read_to_string(&changed).unwrap();
    edited.push_str("\n# a change\n");
    fs::write(&changed, &edited).unwrap();

    // Signed by another key.
    keygen(room.keys.path(), "other");
    room.publish(0, &room.source, "other");
    sync_fails("does not verify with the configured public key").await;
    // A file whose digest does not match.
    room.publish(0, &room.source, "k");
    fs::write(live.join("controller/update.chk.conf"), edited.replace("a change", "b change")).unwrap();
    sync_fails("controller/update.chk.conf: its digest does not match the MANIFEST").await;
    // A truncated download.
    fs::write(live.join("controller/update.chk.conf"), &edited[..edited.len() / 2]).unwrap();
    sync_fails("(truncated?)").await;
    // A MANIFEST naming a path outside the tree, properly signed.
    let evil = format!("# GSE config.d manifest 2\nserial 99999999999\n{} 5 644 ../../etc/shadow\n", "a".repeat(64));
    let sig = gsed::servers::manifest::sign(&key, evil.as_bytes(), "evil").unwrap();
    let dir = fs::canonicalize(&live).unwrap();
    fs::write(dir.join("MANIFEST"), &evil).unwrap();
    fs::write(dir.join("MANIFEST.minisig"), sig).unwrap();
    sync_fails("MANIFEST names '../../etc/shadow', which escapes the config.d tree").await;
    assert!(
        !room.client.path().join("etc/shadow").exists() && !room.client.path().join("user-data/etc/shadow").exists()
    );
    // A server that answers 500, and one that hangs.
    servers.switch("broken").await.unwrap();
    sync_fails("HTTP 500").await;
    servers.switch("hangs").await.unwrap();
    sync_fails("timed out").await;
    list.truncate(1);
    let _ = list;
}

#[tokio::test]
async fn version_check_asks_and_records_the_decision() {
    let room = tokio::task::spawn_blocking(|| Room::new(&[0.1])).await.unwrap();
    // Not a bootable image (one file), but signed and hashed like one.
    let image = room.docroots.path().join("stage4-2.0.tar");
    let tree = room.docroots.path().join("tree-2.0");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data"), b"not really an image").unwrap();
    let tar = Command::new("tar").arg("-cf").arg(&image).arg("-C").arg(&tree).arg(".").status();
    assert!(tar.unwrap().success());
    let out = publish_image(&image, "2.0", "stable", &room.servers[0].docroot, &room.secret("k"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let channel = room.servers[0].docroot.join("gse1/channels/stable.json");
    let v = Command::new(require_tool("minisign", "minisign"))
        .arg("-V")
        .arg("-p")
        .arg(room.keys.path().join("k.pub"))
        .arg("-m")
        .arg(&channel)
        .output()
        .unwrap();
    assert!(v.status.success(), "minisign -V: {}", text(&v.stderr));

    let _gsed = start_gsed(&room.bus, &room.client, "boot-update");
    let conn = room.bus.connect().await;
    let update = UpdateProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let mut available = update.receive_update_available().await.unwrap();
    let state = eventually("a version check", 10, async || {
        let s = update.state().await.ok()?;
        (s != "unknown").then_some(s)
    })
    .await;
    assert_eq!(state, "available", "{:?}", update.detail().await);
    assert_eq!(update.local_version().await.unwrap(), "1.0");
    assert_eq!(update.available_version().await.unwrap(), "2.0");
    let _ = tokio::time::timeout(Duration::from_secs(2), available.next()).await;

    let denied = gsectl_as_nobody(&room.bus.address, &["update", "approve"]);
    assert!(text(&denied.stderr).contains("permission denied"), "{}", text(&denied.stderr));
    // The machine key, as provisioning leaves it (the flags of an installed slot need it).
    let key = room.client.path().join("boot/gse/flag.key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    fs::write(&key, [7u8; 32]).unwrap();
    let out = gsectl(&room.bus.address, &["update", "approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Approved, it goes for the slot that is not running: this room's client
    // has no slot devices, so the attempt ends in an error that says so, and
    // the approval stands for the next check.
    let detail = eventually("the attempt to end", 20, async || {
        (update.state().await.ok()? == "error").then_some(update.detail().await.ok()?)
    })
    .await;
    assert!(detail.contains("slot b"), "{detail}");
    let recorded: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(room.client.path().join("user-data/persistent/gse/update.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((recorded["available_version"].as_str(), recorded["state"].as_str()), (Some("2.0"), Some("error")));
    let status = text(&gsectl(&room.bus.address, &["update"]).stdout);
    assert!(status.contains("Available: 2.0") && status.contains("State:     error"), "{status}");

    // A channel file is taken only for its own channel, and never older than one
    // taken before: neither a replayed stable.json nor testing's served as stable.
    let www = room.servers[0].docroot.clone();
    let publish = |version: &str, channel: &str| {
        let out = publish_image(&image, version, channel, &www, &room.secret("k"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let chan = |name: &str| {
        let p = www.join(format!("gse1/channels/{name}.json"));
        (fs::read(&p).unwrap(), fs::read(p.with_extension("json.minisig")).unwrap())
    };
    let serve_as_stable = |(json, sig): &(Vec<u8>, Vec<u8>)| {
        fs::write(www.join("gse1/channels/stable.json"), json).unwrap();
        fs::write(www.join("gse1/channels/stable.json.minisig"), sig).unwrap();
    };
    let old = chan("stable");
    publish("3.0", "stable");
    publish("9.0", "testing");
    let check = || {
        let out = gsectl(&room.bus.address, &["update", "check"]);
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    };
    let version = || text(&gsectl(&room.bus.address, &["update"]).stdout);
    let (ok, said) = check();
    assert!(ok && version().contains("Available: 3.0"), "{said} {}", version());
    serve_as_stable(&old);
    let (ok, said) = check();
    assert!(!ok && said.contains("older than") && said.contains("refused"), "{said}");
    assert!(version().contains("Available: 3.0"), "still 3.0: {}", version());
    serve_as_stable(&chan("testing"));
    let (ok, said) = check();
    assert!(!ok && said.contains("signed for channel 'testing'"), "{said}");
    assert!(version().contains("Available: 3.0"), "testing's 9.0 is not taken for stable: {}", version());
}

#[test]
fn keys_work_with_minisign_and_publish_refuses_an_invalid_tree() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k");
    let minisign = require_tool("minisign", "minisign");
    let file = dir.path().join("note");
    fs::write(&file, "signed by minisign with a key from gsectl keygen\n").unwrap();
    let sign = Command::new(&minisign)
        .arg("-S")
        .arg("-s")
        .arg(dir.path().join("k.sec"))
        .arg("-m")
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(sign.status.success(), "minisign -S: {}", text(&sign.stderr));
    let verify = Command::new(&minisign)
        .arg("-V")
        .arg("-p")
        .arg(dir.path().join("k.pub"))
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(verify.status.success(), "minisign -V: {}", text(&verify.stderr));

    let tree = dir.path().join("config.d");
    cp(&repo().join("config.d"), &tree);
    let to = dir.path().join("www");
    let publish = || publish_config(&tree, &to, &dir.path().join("k.sec"));
    assert!(publish().status.success());
    let before = fs::read_link(to.join("gse1/config.d")).unwrap();
    fs::write(tree.join("system/network.conf"), "[interface.eth0]\nmethod = \"static\"\n").unwrap();
    let out = publish();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("network.conf") && text(&out.stderr).contains("needs an address"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_link(to.join("gse1/config.d")).unwrap(), before, "the published tree is unchanged");
}
