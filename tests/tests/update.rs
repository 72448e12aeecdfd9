//! Image updates end to end (DESIGN §11): images published as chunks by
//! `gsectl publish image`, served by real nginx on 127.0.0.x, taken by a gsed
//! whose slots are ext4 on loop devices in its own mount namespace; early boot
//! starts the new version as a trial, gsed commits it at green, a failed trial
//! rolls back. Faults: kill -9 mid-download, a server dying mid-download, and
//! bad input of every kind, none of which may touch the running slot.

use std::{fs, path::PathBuf, time::Duration};

use gse_tests::{client::Client, http::Nginx, netns::NetLab, *};
use serde_json::Value;

/// A lab of one client and `n` nginx servers sharing one published tree. The
/// client's gsed runs in its own network namespace with a static address on a
/// veth cable; the servers listen on 192.0.2.1 in the namespace at its other end.
struct Lab {
    c: Client,
    net: NetLab,
    www: PathBuf,
    servers: Vec<Nginx>,
    keys: tempfile::TempDir,
    work: tempfile::TempDir,
    bus: TestBus,
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

impl Lab {
    fn new(n: usize, policy: &str, rate: Option<u32>) -> Lab {
        let c = Client::new(false, "[health]\ninit = \"none\"\n");
        let net = NetLab::new();
        c.root.write(
            "usr/share/gse/config.d/system/network.conf",
            &format!("wait = \"5s\"\n[interface.{}]\nmethod = \"static\"\naddress = \"192.0.2.2/24\"\n", net.client_if),
        );
        c.provision();
        let keys = tempfile::tempdir().unwrap();
        let public_key = keygen(keys.path(), "k");
        let work = tempfile::tempdir().unwrap();
        let www = work.path().join("www");
        fs::create_dir_all(&www).unwrap();
        let servers: Vec<Nginx> = (0..n)
            .map(|i| {
                let mut x = Nginx::start_in(&net.server_ns, &format!("192.0.2.1:{}", 8080 + i), &www);
                if rate.is_some() {
                    x.limit_rate = rate;
                    x.restart();
                }
                x
            })
            .collect();
        let mut list = format!(
            "public_key = \"{public_key}\"\nprobe_interval = \"1s\"\nprobe_timeout = \"900ms\"\nfail_after = 2\nsync_interval = \"1h\"\n"
        );
        for (i, x) in servers.iter().enumerate() {
            list.push_str(&format!("[[server]]\nname = \"s{i}\"\nurl = \"{}\"\n", x.url()));
        }
        let conf = "usr/share/gse/config.d/controller";
        c.root.write(&format!("{conf}/server/server.info.conf"), &list);
        c.root.write(&format!("{conf}/update.chk.conf"), &format!("channel = \"stable\"\npolicy = \"{policy}\"\n"));
        let lab = Lab { c, net, www, servers, keys, work, bus: TestBus::start() };
        lab.publish_config();
        lab
    }

    /// The server publishes the client's own config.d, so a sync changes nothing.
    fn publish_config(&self) {
        let conf = self.c.root.path().join("usr/share/gse/config.d");
        let out = publish_config(&conf, &self.www, &self.keys.path().join("k.sec"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// Builds an image of version `v` (a tiny root plus `extra` files) and publishes it.
    fn publish(&self, v: &str, extra: &[(&str, Vec<u8>)]) {
        let tree = self.work.path().join(format!("tree-{v}"));
        disk::tiny_root(&tree, v);
        for (path, data) in extra {
            let p = tree.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        let image = self.work.path().join(format!("lab-{v}.tar.zst"));
        let out = image_build(&tree, v, &image, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = publish_image(&image, v, "stable", &self.www, &self.keys.path().join("k.sec"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    fn early_boot(&self) -> Value {
        self.c.early_boot_in(Some(&self.net.client_ns))
    }

    /// gsed, once it has chosen a server (a check before that has nowhere to go).
    fn start_gsed(&self, boot_id: &str) -> ProcessGuard {
        let g = self.c.start_gsed_in(&self.bus, boot_id, Some(&self.net.client_ns));
        wait_for(Duration::from_secs(10), "a current server", || {
            text(&gsectl(&self.bus.address, &["servers"]).stdout).contains("Current: s").then_some(())
        });
        g
    }

    fn gsectl(&self, args: &[&str]) -> (bool, String) {
        let out = gsectl(&self.bus.address, args);
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    }

    fn update(&self) -> Value {
        let out = gsectl(&self.bus.address, &["update", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn boot_state(&self) -> Value {
        let p = self.c.root.path().join("user-data/persistent/gse/boot-state.json");
        serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
    }

    fn channel(&self) -> Value {
        serde_json::from_str(&fs::read_to_string(self.www.join("gse1/channels/stable.json")).unwrap()).unwrap()
    }

    /// Publishes as version `v` an image whose only member is `../../escaped`.
    fn publish_escaping(&self, v: &str) {
        let evil = self.work.path().join(format!("evil-{v}.tar"));
        let made = self.c.in_ns(&format!(
            "set -e; d={w}/evil-{v}.d; mkdir -p $d/x/y; echo evil > $d/escaped; cd $d/x/y; tar -P -cf {e} ../../escaped",
            w = self.work.path().display(),
            e = evil.display()
        ));
        assert!(made.status.success(), "{}", text(&made.stderr));
        let out = publish_image(&evil, v, "stable", &self.www, &self.keys.path().join("k.sec"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// Whether `../../escaped` landed anywhere a slot's mount could lead it.
    fn escaped(&self) -> bool {
        let root = self.c.root.path().display();
        self.c.in_ns(&format!("ls {root}/run/gse/escaped {root}/run/escaped 2>&1")).status.success()
    }

    /// How many different chunks version `v`'s published index names.
    fn unique_chunks(&self, v: &str) -> usize {
        let path = self.www.join(format!("gse1/images/{v}/index.json"));
        let index: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let ids: std::collections::HashSet<&str> =
            index["chunks"].as_array().unwrap().iter().map(|c| s(&c["id"])).collect();
        ids.len()
    }

    /// Chunk requests served so far, over every server.
    fn chunk_requests(&self) -> usize {
        self.servers.iter().map(|x| x.access_log().lines().filter(|l| l.contains("/gse1/chunks/")).count()).sum()
    }
}

/// Random bytes: a "package" that compresses to its own size.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[test]
fn a_published_version_is_installed_tried_committed_and_a_failed_trial_rolls_back() {
    let lab = Lab::new(1, "auto", None);
    let first = lab.early_boot();
    assert_eq!((s(&first["slot"]), s(&first["action"])), ("a", "normal"));
    let a_before = lab.c.listing("a");

    // v2 adds a package (a dozen chunks); the running gsed takes it into slot b by itself.
    lab.publish("2.0", &[("opt/pkg/data", blob(3 << 20, 1))]);
    let gsed = lab.start_gsed("boot-1");
    let (ok, said) = lab.gsectl(&["update", "check"]);
    assert!(ok, "{said}{}", fs::read_to_string(lab.c.root.path().join("gsed-boot-1.log")).unwrap_or_default());
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    let u = lab.update();
    assert_eq!((s(&u["state"]), s(&u["available_version"]), s(&u["target_slot"])), ("installed", "2.0", "b"), "{u:#}");
    assert_eq!(lab.c.listing("a"), a_before, "the running slot is untouched");
    assert!(lab.c.on_slot("b", "cat etc/gse-release; wc -c < opt/pkg/data").contains("VERSION=2.0\n3145728"));
    // A check while it waits for the reboot does not start it again.
    let before = lab.chunk_requests();
    assert!(lab.gsectl(&["update", "check"]).1.contains("installed"));
    assert_eq!(lab.chunk_requests(), before);
    assert!(lab.gsectl(&["health", "record-shutdown"]).0);
    drop(gsed);
    lab.c.power_off();

    // The next boot tries it; green commits it; the boot after is a normal one on b.
    let trial = lab.early_boot();
    assert_eq!((s(&trial["slot"]), s(&trial["action"]), s(&trial["image_version"])), ("b", "trial", "2.0"));
    let gsed = lab.start_gsed("boot-2");
    let committed = wait_for(Duration::from_secs(20), "the trial to be committed", || {
        let u = lab.update();
        (s(&u["state"]) == "up-to-date").then_some(u)
    });
    assert_eq!(s(&committed["local_version"]), "2.0");
    let log = fs::read_to_string(lab.c.root.path().join("gsed-boot-2.log")).unwrap();
    assert!(log.contains("trial is green: committed, slot is now primary version=2.0 slot=b"), "{log}");
    assert_eq!(s(&lab.boot_state()["primary"]), "b");
    assert!(lab.gsectl(&["health", "record-shutdown"]).0);
    drop(gsed);
    lab.c.power_off();
    let third = lab.early_boot();
    assert_eq!((s(&third["slot"]), s(&third["action"])), ("b", "normal"), "{third:#}");

    // v3 changes one small file: only its chunks travel, into slot a (now the backup).
    lab.publish("3.0", &[("opt/pkg/data", blob(3 << 20, 1)), ("opt/pkg/NEWS", b"3.0\n".to_vec())]);
    let before = lab.chunk_requests();
    let gsed = lab.start_gsed("boot-3");
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok, "{said}");
    let u = lab.update();
    assert_eq!(s(&u["target_slot"]), "a");
    let fetched = lab.chunk_requests() - before;
    let all = lab.channel()["packed"].as_u64().unwrap();
    let index: Value =
        serde_json::from_str(&fs::read_to_string(lab.www.join("gse1/images/3.0/index.json")).unwrap()).unwrap();
    let chunks = index["chunks"].as_array().unwrap().len();
    assert!(fetched * 4 < chunks, "{fetched} of {chunks} chunks fetched for a one-file change ({all} bytes in all)");
    assert!(lab.gsectl(&["health", "record-shutdown"]).0);
    drop(gsed);
    lab.c.power_off();

    // Its trial never reaches gsed (say the kernel panics): the next boot goes back.
    let trial = lab.early_boot();
    assert_eq!((s(&trial["slot"]), s(&trial["action"])), ("a", "trial"));
    lab.c.power_off();
    let back = lab.early_boot();
    assert_eq!((s(&back["slot"]), s(&back["action"])), ("b", "rollback"), "{back:#}");
    assert!(s(&back["reason"]).contains("version 3.0 on slot a did not go green"), "{back:#}");
    let gsed = lab.start_gsed("boot-5");
    let u = lab.update();
    assert_eq!((s(&u["state"]), s(&u["local_version"])), ("failed", "2.0"), "{u:#}");
    // Not tried again by itself...
    let before = lab.chunk_requests();
    let (_, said) = lab.gsectl(&["update", "check"]);
    assert!(said.contains("failed"), "{said}");
    assert_eq!(s(&lab.update()["state"]), "failed");
    // ...until an administrator asks: the chunks are still here, nothing is fetched.
    assert!(lab.gsectl(&["update", "approve"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok, "{said}");
    assert_eq!(lab.chunk_requests(), before);
    drop(gsed);
}

#[test]
fn ask_waits_for_approval_and_decline_installs_nothing() {
    let lab = Lab::new(1, "ask", None);
    lab.early_boot();
    lab.publish("2.0", &[]);
    let _gsed = lab.start_gsed("boot-1");
    let (ok, said) = lab.gsectl(&["update", "check"]);
    assert!(ok && said.contains("available"), "{said}");
    assert!(lab.gsectl(&["update", "decline"]).0);
    assert_eq!(s(&lab.update()["state"]), "declined");
    assert!(lab.gsectl(&["update", "check"]).1.contains("declined"), "a decline holds across checks");
    assert_eq!(lab.chunk_requests(), 0);
    let b = lab.c.on_slot("b", "cat etc/gse-release");
    assert!(b.contains("test-1"), "{b}");

    assert!(lab.gsectl(&["update", "approve"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    assert!(lab.c.on_slot("b", "cat etc/gse-release").contains("VERSION=2.0"));
}

#[test]
fn a_phased_rollout_reaches_a_machine_only_when_its_bucket_is_in() {
    let lab = Lab::new(1, "auto", None);
    lab.early_boot();
    lab.publish("2.0", &[]);
    let paths = gsed::paths::Paths::new(lab.c.root.path());
    let bucket = gsed::servers::update::bucket(&paths, "2.0");
    let sec = lab.keys.path().join("k.sec");
    let rollout = |p: u32| {
        let out = std::process::Command::new(bin("gsectl"))
            .args(["publish", "rollout", "--channel", "stable", "--percent", &p.to_string(), "--to"])
            .arg(&lab.www)
            .arg("--secret")
            .arg(&sec)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    // Up to this machine's bucket, not including it: not this machine yet.
    rollout(bucket);
    let _gsed = lab.start_gsed("boot-1");
    let (_, said) = lab.gsectl(&["update", "check"]);
    assert!(said.contains("available"), "bucket {bucket} is not below {bucket}%: {said}");
    assert!(s(&lab.update()["detail"]).contains("phased rollout"));
    assert_eq!(lab.chunk_requests(), 0);
    rollout(bucket + 1);
    let (_, said) = lab.gsectl(&["update", "check"]);
    assert!(said.contains("approved") || said.contains("downloading"), "bucket {bucket} < {}%: {said}", bucket + 1);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok, "{said}");
}

#[test]
fn a_download_resumes_after_kill_9_and_fails_over_when_its_server_dies() {
    // 4 connections at 256 KB/s each: about 2 s for the 2 MB package.
    let mut lab = Lab::new(2, "auto", Some(256 << 10));
    lab.early_boot();
    lab.publish("2.0", &[("opt/pkg/data", blob(2 << 20, 7))]);
    let unique = lab.unique_chunks("2.0");
    let mut gsed = lab.start_gsed("boot-1");
    assert!(lab.gsectl(&["update", "check"]).0);
    wait_for(Duration::from_secs(20), "half of the download", || {
        let u = lab.update();
        (u["progress"].as_f64().unwrap_or(0.0) > 0.5 && s(&u["state"]) == "downloading").then_some(())
    });
    gsed.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    let before_restart = lab.chunk_requests();
    assert!(before_restart * 2 >= unique, "{before_restart} of {unique} chunks before the kill");

    let _gsed = lab.start_gsed("boot-1");
    assert!(lab.gsectl(&["update", "check"]).0);
    wait_for(Duration::from_secs(20), "the download to go on", || {
        let u = lab.update();
        (u["bytes_done"].as_u64().unwrap_or(0) > 0 && s(&u["state"]) == "downloading").then_some(())
    });
    // The server in use dies half-way: the other one finishes the transfer.
    lab.servers[0].stop();
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    let served = |x: &Nginx| x.access_log().lines().filter(|l| l.contains("/gse1/chunks/")).count();
    assert!(served(&lab.servers[1]) > 0, "the second server delivered the rest");
    // What was verified before the kill was not fetched again: at most the
    // chunks in flight at the kill and at the server's death travel twice.
    let total = served(&lab.servers[0]) + served(&lab.servers[1]);
    assert!(total <= unique + 8, "{total} chunk requests for {unique} chunks, {before_restart} before the kill");
    assert!(lab.c.on_slot("b", "wc -c < opt/pkg/data").contains("2097152"));
}

/// Runs one tampered publication through a fresh check; the download must fail
/// with `expect` in its detail and leave both slots as they were.
fn refused(lab: &Lab, expect: &str) {
    let a = lab.c.listing("a");
    let b_flag = lab.c.on_slot("b", "cat .gse/bootflag 2>/dev/null || true");
    let (_, said) = lab.gsectl(&["update", "check"]);
    let u = wait_for(Duration::from_secs(20), "the update to end", || {
        let u = lab.update();
        matches!(s(&u["state"]), "error" | "installed" | "failed").then_some(u)
    });
    assert_eq!(s(&u["state"]), "error", "{said} {u:#}");
    assert!(s(&u["detail"]).contains(expect), "expected '{expect}' in: {}", s(&u["detail"]));
    assert_eq!(lab.c.listing("a"), a, "the running slot is untouched");
    let b_now = lab.c.on_slot("b", "cat .gse/bootflag 2>/dev/null || true");
    assert_eq!(b_now, b_flag, "the backup slot keeps its flag: {expect}");
}

#[test]
fn bad_input_is_refused_before_any_slot_is_touched() {
    let lab = Lab::new(1, "auto", None);
    lab.early_boot();
    lab.publish("2.0", &[("opt/pkg/data", blob(300 << 10, 3))]);
    let index_path = lab.www.join("gse1/images/2.0/index.json");
    let index: Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    let chunk = |i: usize| {
        let id = s(&index["chunks"][i]["id"]).to_owned();
        lab.www.join(format!("gse1/chunks/{}/{id}.zst", &id[..2]))
    };
    let big = (0..index["chunks"].as_array().unwrap().len())
        .max_by_key(|i| index["chunks"][*i]["packed"].as_u64().unwrap())
        .unwrap();

    // A chunk whose bytes changed on the server (same length: only the digest tells).
    let good = fs::read(chunk(big)).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    fs::write(chunk(big), &bad).unwrap();
    // Started only now: under `auto` gsed checks the channel as it starts.
    let _gsed = lab.start_gsed("boot-1");
    refused(&lab, "no server could deliver chunk");
    // A truncated chunk.
    fs::write(chunk(big), &good[..good.len() - 10]).unwrap();
    refused(&lab, "no server could deliver chunk");
    fs::write(chunk(big), &good).unwrap();

    // An index that is not the one the signed channel names.
    let text_index = fs::read_to_string(&index_path).unwrap();
    fs::write(&index_path, text_index.replace("\"version\":\"2.0\"", "\"version\":\"2.0\" ")).unwrap();
    refused(&lab, "not the index the signed channel names");
    fs::write(&index_path, &text_index).unwrap();

    // A channel signed by another key.
    let other = tempfile::tempdir().unwrap();
    keygen(other.path(), "x");
    let image = lab.work.path().join("lab-2.0.tar.zst");
    let out = publish_image(&image, "2.0", "stable", &lab.www, &other.path().join("x.sec"));
    assert!(out.status.success());
    let (ok, said) = lab.gsectl(&["update", "check"]);
    assert!(!ok && said.contains("does not verify with the configured public key"), "{said}");

    // An image whose tar names a path outside the slot.
    lab.publish_escaping("2.1");
    refused(&lab, "would land outside the slot");
    assert!(!lab.escaped(), "nothing was written outside the slot");

    // An image larger than the slot: refused before the slot is emptied.
    lab.publish("2.2", &[("opt/pkg/huge", blob(60 << 20, 9))]);
    refused(&lab, "nothing was changed");

    // A properly signed index of a newer format, with a field this gsed does
    // not know: refused for its format, not for the field.
    lab.publish("2.3", &[("opt/pkg/data", blob(100 << 10, 4))]);
    let index_path = lab.www.join("gse1/images/2.3/index.json");
    let newer = fs::read_to_string(&index_path).unwrap().replacen('{', "{\"format\":2,\"packs\":[],", 1);
    fs::write(&index_path, &newer).unwrap();
    let channel_path = lab.www.join("gse1/channels/stable.json");
    let mut channel: Value = serde_json::from_str(&fs::read_to_string(&channel_path).unwrap()).unwrap();
    channel["sha256"] = gsed::servers::manifest::sha256_hex(newer.as_bytes()).into();
    let json = serde_json::to_vec_pretty(&channel).unwrap();
    let sig = gsed::servers::manifest::sign(&lab.keys.path().join("k.sec"), &json, "gse channel stable 2.3").unwrap();
    fs::write(lab.www.join("gse1/channels/stable.json.minisig"), sig).unwrap();
    fs::write(&channel_path, json).unwrap();
    refused(&lab, "index format 2 is newer than this gsed reads (1): update GSE on this machine");
}

#[test]
fn an_idle_machine_reboots_inside_the_window_and_never_under_a_logged_in_user() {
    let lab = Lab::new(1, "auto", None);
    // The window starts this hour, in the machine's time zone.
    let now = text(&std::process::Command::new("date").arg("+%H").output().unwrap().stdout);
    let h: u32 = now.trim().parse().unwrap();
    let window = format!("{:02}:00-{:02}:00", h, (h + 2) % 24);
    lab.c.root.write(
        "usr/share/gse/config.d/controller/update.chk.conf",
        &format!("channel = \"stable\"\npolicy = \"auto\"\nreboot = \"window\"\nwindow = \"{window}\"\n"),
    );
    lab.publish_config();
    let marker = lab.c.root.path().join("rebooted");
    lab.c.root.write("sbin/reboot", &format!("#!/bin/sh\necho rebooted > {}\n", marker.display()));
    assert!(
        std::process::Command::new("chmod")
            .arg("755")
            .arg(lab.c.root.path().join("sbin/reboot"))
            .status()
            .unwrap()
            .success()
    );
    // A student is logged in: a live USER_PROCESS record in utmp.
    let mut session = ProcessGuard {
        child: Some(std::process::Command::new("sleep").arg("600").spawn().unwrap()),
        name: "a login session".into(),
    };
    let mut rec = vec![0u8; 384];
    rec[0..2].copy_from_slice(&7i16.to_ne_bytes());
    rec[4..8].copy_from_slice(&session.pid().to_ne_bytes());
    rec[44..51].copy_from_slice(b"student");
    fs::create_dir_all(lab.c.root.path().join("run")).unwrap();
    fs::write(lab.c.root.path().join("run/utmp"), &rec).unwrap();

    lab.early_boot();
    lab.publish("2.0", &[]);
    let _gsed = lab.start_gsed("boot-1");
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok, "{said}");
    let log = lab.c.root.path().join("gsed-boot-1.log");
    wait_for(Duration::from_secs(20), "gsed to hold back the reboot", || {
        fs::read_to_string(&log).unwrap_or_default().contains("outside the window or in use").then_some(())
    });
    assert!(!marker.exists(), "no reboot under a logged-in user");
    // The student logs out: the machine reboots into its trial.
    session.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    wait_for(Duration::from_secs(30), "the reboot", || marker.exists().then_some(()));
    assert!(fs::read_to_string(&log).unwrap().contains("idle inside the update window"));
}

/// One early boot whose console answers `answer` to any question; returns
/// boot.json and what gsectl said on the console.
fn early_boot_answering(lab: &Lab, answer: &str) -> (Value, String) {
    use std::io::Write;
    let mut early = lab.c.start_early_in(Some(&lab.net.client_ns));
    let mut child = lab
        .c
        .ns
        .command(bin("gsectl"))
        .arg("--root")
        .arg(lab.c.root.path())
        .args(["boot", "prepare", "--sysroot", lab.c.sysroot.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let console = text(&out.stderr);
    assert!(out.status.success(), "boot prepare: {console}");
    early.wait_exit(Duration::from_secs(5)).expect("gsed --early exits after Finish()");
    (serde_json::from_slice(&out.stdout).unwrap(), console)
}

#[test]
fn prompt_at_boot_asks_on_the_console_and_installs_before_booting() {
    let lab = Lab::new(1, "ask", None);
    // The setting comes with the published config.d, not with the image.
    let conf = lab.work.path().join("published-conf");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(lab.c.root.path().join("usr/share/gse/config.d"))
            .arg(&conf)
            .status()
            .unwrap()
            .success()
    );
    fs::write(
        conf.join("controller/update.chk.conf"),
        "channel = \"stable\"\npolicy = \"ask\"\nprompt_at_boot = true\n",
    )
    .unwrap();
    let out = publish_config(&conf, &lab.www, &lab.keys.path().join("k.sec"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.publish("2.0", &[("opt/pkg/data", blob(200 << 10, 5))]);
    let (b, console) = early_boot_answering(&lab, "n\n");
    let log = fs::read_to_string(lab.c.root.path().join("gsed-early.log")).unwrap_or_default();
    assert!(
        console.contains("version 2.0 is available") && console.contains("Install it now? [y/N]"),
        "{console}{log}"
    );
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"), "no: the boot goes on as it was");
    assert_eq!(lab.chunk_requests(), 0);
    lab.c.power_off();

    let (b, console) = early_boot_answering(&lab, "y\n");
    assert!(console.contains("gse: installed 100%"), "progress on the console: {console}");
    assert!(console.contains("version 2.0 installed; booting it as a trial"), "{console}");
    assert_eq!((s(&b["slot"]), s(&b["action"]), s(&b["image_version"])), ("b", "trial", "2.0"), "{b:#}");
    assert!(lab.c.ns.ok(&format!("cat {}/opt/pkg/data | wc -c", lab.c.sysroot.display())).contains("204800"));
    lab.c.power_off();
}

#[test]
fn prune_keeps_the_newest_versions_and_the_chunks_they_use() {
    let work = tempfile::tempdir().unwrap();
    keygen(work.path(), "k");
    let www = work.path().join("www");
    for v in ["1", "2", "3"] {
        let tree = work.path().join(format!("tree-{v}"));
        disk::tiny_root(&tree, v);
        fs::write(tree.join("opt/data"), blob(300 << 10, v.parse().unwrap())).unwrap();
        let image = work.path().join(format!("{v}.tar.zst"));
        assert!(image_build(&tree, v, &image, &[]).status.success());
        let out = publish_image(&image, v, "stable", &www, &work.path().join("k.sec"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Distinct modification times order the versions.
        std::thread::sleep(Duration::from_millis(20));
    }
    let chunks_of = |v: &str| -> std::collections::HashSet<String> {
        let i: Value =
            serde_json::from_str(&fs::read_to_string(www.join(format!("gse1/images/{v}/index.json"))).unwrap())
                .unwrap();
        i["chunks"].as_array().unwrap().iter().map(|c| s(&c["id"]).to_owned()).collect()
    };
    let (c2, c3) = (chunks_of("2"), chunks_of("3"));
    let stored = || -> std::collections::HashSet<String> {
        walk(&www.join("gse1/chunks")).iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect()
    };
    let prune = |keep: &str| {
        let out = std::process::Command::new(bin("gsectl"))
            .args(["publish", "prune", "--keep", keep, "--to"])
            .arg(&www)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let said = prune("2");
    assert!(said.contains("removed 1 version(s) [\"1\"]"), "{said}");
    assert!(!www.join("gse1/images/1").exists() && www.join("gse1/images/2/index.json").exists());
    assert_eq!(stored(), c2.union(&c3).cloned().collect(), "exactly the chunks of the kept versions");
    // The channel's version stays even when it is not among the newest.
    prune("0");
    assert!(www.join("gse1/images/3/index.json").exists() && !www.join("gse1/images/2").exists());
    assert_eq!(stored(), c3);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn chunks_damaged_in_the_cache_are_fetched_again_before_any_slot_is_touched() {
    let log = damaged_chunks_in_the_cache(false);
    assert!(log.contains("damaged chunks in the cache; fetching them again chunks=2"), "{log}");
}

#[test]
fn chunks_damaged_in_the_cache_are_fetched_again_when_the_image_is_written_as_it_arrives() {
    let log = damaged_chunks_in_the_cache(true);
    assert_eq!(log.matches("a chunk in the cache is damaged; fetching it again").count(), 2, "{log}");
}

/// Two rotten copies of v2's chunks sit in the cache; the update (into a slot
/// holding the backup, or into one with nothing trusted) still installs v2,
/// fetching every chunk exactly once. Returns gsed's log.
fn damaged_chunks_in_the_cache(blank: bool) -> String {
    let lab = Lab::new(1, "auto", None);
    lab.early_boot();
    if blank {
        lab.c.on_slot("b", "rm .gse/bootflag");
    }
    lab.publish("2.0", &[("opt/pkg/data", blob(300 << 10, 8))]);
    let index: Value =
        serde_json::from_str(&fs::read_to_string(lab.www.join("gse1/images/2.0/index.json")).unwrap()).unwrap();
    let cache = lab.c.root.path().join("user-data/persistent/gse/chunks");
    for c in index["chunks"].as_array().unwrap().iter().take(2) {
        let id = s(&c["id"]);
        let p = cache.join(&id[..2]).join(format!("{id}.zst"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut good = fs::read(lab.www.join(format!("gse1/chunks/{}/{id}.zst", &id[..2]))).unwrap();
        let mid = good.len() / 2;
        good[mid] ^= 0x10;
        fs::write(&p, good).unwrap();
    }
    // Counted before gsed starts: under `auto` its first check may begin the download.
    let before = lab.chunk_requests();
    let _gsed = lab.start_gsed("boot-1");
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    assert_eq!(
        lab.chunk_requests() - before,
        lab.unique_chunks("2.0"),
        "every chunk fetched exactly once (the two rotten ones once found)"
    );
    assert!(lab.c.on_slot("b", "wc -c < opt/pkg/data").contains("307200"));
    fs::read_to_string(lab.c.root.path().join("gsed-boot-1.log")).unwrap()
}

#[test]
fn max_rate_holds_a_download_to_its_budget() {
    let lab = Lab::new(1, "auto", None);
    lab.c.root.write(
        "usr/share/gse/config.d/controller/update.chk.conf",
        "channel = \"stable\"\npolicy = \"auto\"\nmax_rate = \"256K\"\n",
    );
    lab.publish_config();
    lab.early_boot();
    lab.publish("2.0", &[("opt/pkg/data", blob(1 << 20, 4))]);
    let packed = lab.channel()["packed"].as_u64().unwrap();
    let _gsed = lab.start_gsed("boot-1");
    let t0 = std::time::Instant::now();
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok, "{said}");
    // A lower bound only: a loaded machine makes it slower, never faster.
    let budget = Duration::from_secs_f64(packed as f64 / f64::from(256u32 << 10));
    assert!(t0.elapsed() >= budget.mul_f64(0.9), "{packed} bytes in {:?}, the budget allows {budget:?}", t0.elapsed());
}

#[test]
fn a_power_cut_while_installing_leaves_the_running_slot_and_installs_next_time() {
    let lab = Lab::new(1, "auto", None);
    lab.early_boot();
    lab.publish("2.0", &[("opt/pkg/data", blob(24 << 20, 6))]);
    let a_before = lab.c.listing("a");
    let mut gsed = lab.start_gsed("boot-1");
    assert!(lab.gsectl(&["update", "check"]).0);
    wait_for(Duration::from_secs(60), "the install to begin", || {
        (s(&lab.update()["state"]) == "installing").then_some(())
    });
    gsed.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    let fetched = lab.chunk_requests();
    lab.c.power_off();
    let b = lab.early_boot();
    if s(&b["action"]) == "trial" {
        // The kill landed after the install had finished: b is whole.
        assert_eq!(s(&b["slot"]), "b");
        assert!(lab.c.on_slot("b", "wc -c < opt/pkg/data").contains(&(24u32 << 20).to_string()));
        return;
    }
    // The next boot runs the slot it ran: no trial of a half-written slot.
    assert_eq!((s(&b["slot"]), s(&b["action"])), ("a", "normal"), "{b:#}");
    assert_eq!(lab.c.listing("a"), a_before, "the running slot is untouched");
    // Cut during the read-through, b is as it was; cut later, it lost its flag
    // first: never a flagged slot with half an image.
    let b_now = lab.c.on_slot("b", "if test -e .gse/bootflag; then cat etc/gse-release; else echo no flag; fi");
    assert!(b_now.contains("no flag") || b_now.contains("VERSION=test-1"), "{b_now}");
    // The next attempt installs from the cache: nothing is fetched again.
    let _gsed = lab.start_gsed("boot-2");
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    assert_eq!(lab.chunk_requests(), fetched, "every chunk was in the cache");
    let b = lab.early_boot();
    assert_eq!((s(&b["slot"]), s(&b["action"]), s(&b["image_version"])), ("b", "trial", "2.0"), "{b:#}");
}

#[test]
fn a_slot_with_nothing_trusted_is_written_as_the_image_arrives_and_a_cut_transfer_costs_it_nothing() {
    // 4 connections at 256 KB/s each: about 2 s for the 2 MB package.
    let mut lab = Lab::new(2, "auto", Some(256 << 10));
    lab.early_boot();
    // The backup slot is broken (its flag gone): there is nothing in it to keep.
    lab.c.on_slot("b", "rm .gse/bootflag");
    let a = lab.c.listing("a");
    let _gsed = lab.start_gsed("boot-1");

    // Written as it arrives, an image that names a path outside the slot is
    // stopped by tar itself: nothing lands outside, the running slot is as it was.
    lab.publish_escaping("1.9");
    let _ = lab.gsectl(&["update", "check"]);
    let (_, said) = lab.gsectl(&["update", "wait"]);
    let u = lab.update();
    assert_eq!(s(&u["state"]), "error", "{said} {u:#}");
    assert!(s(&u["detail"]).contains("Member name contains '..'"), "{u:#}");
    assert!(!lab.escaped(), "nothing was written outside the slot");
    assert_eq!(lab.c.listing("a"), a, "the running slot is untouched");

    let before = lab.chunk_requests();
    lab.publish("2.0", &[("opt/pkg/data", blob(2 << 20, 9))]);
    let unique = lab.unique_chunks("2.0");
    assert!(lab.gsectl(&["update", "check"]).0);
    wait_for(Duration::from_secs(20), "a third of the download", || {
        let u = lab.update();
        (u["progress"].as_f64().unwrap_or(0.0) > 0.3 && s(&u["state"]) == "downloading").then_some(())
    });
    // Both servers die: the transfer fails, and so does the install it fed.
    lab.servers.iter_mut().for_each(Nginx::stop);
    let (_, said) = lab.gsectl(&["update", "wait"]);
    let u = lab.update();
    assert_eq!(s(&u["state"]), "error", "{said} {u:#}");
    assert!(s(&u["detail"]).contains("no server could deliver chunk"), "{u:#}");
    assert_eq!(lab.c.listing("a"), a, "the running slot is untouched");
    assert_eq!(lab.c.on_slot("b", "test -e .gse/bootflag && echo flag || echo no flag").trim(), "no flag");
    let log = fs::read_to_string(lab.c.root.path().join("gsed-boot-1.log")).unwrap();
    assert!(log.contains("written as it arrives"), "{log}");

    // The servers are back: the next check finishes it; what was verified is not fetched again.
    lab.servers.iter_mut().for_each(Nginx::restart);
    assert!(lab.gsectl(&["update", "check"]).0);
    let (ok, said) = lab.gsectl(&["update", "wait"]);
    assert!(ok && said.contains("installed"), "{said}");
    assert!(lab.c.on_slot("b", "wc -c < opt/pkg/data").contains("2097152"));
    assert_eq!(s(&lab.boot_state()["trial"]["slot"]), "b");
    let total = lab.chunk_requests() - before;
    assert!(total <= unique + 8, "{total} chunk requests for {unique} chunks");
    assert_eq!(lab.early_boot()["action"], "trial");
}

/// The first bytes of a bzImage whose setup header names kernel `release`.
fn bzimage(release: &str) -> Vec<u8> {
    let mut bz = vec![0u8; 0x800];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x20e..0x210].copy_from_slice(&0x400u16.to_le_bytes());
    let version = format!("{release} (builder@lab) #1 SMP\0");
    bz[0x600..0x600 + version.len()].copy_from_slice(version.as_bytes());
    bz
}

/// Each slot boots its own image's kernel (DESIGN §12), so an image must carry
/// one that early boot can start: publish refuses one without a kernel (unless
/// told the machines boot a kernel from elsewhere) or whose kernel has no
/// modules; a kernel whose header names another release gets past the
/// names, and the install refuses it before the slot can be tried.
#[test]
fn a_kernel_early_boot_could_not_start_is_refused_at_publish_and_at_install() {
    let lab = Lab::new(1, "auto", None);
    lab.early_boot();
    let secret = lab.keys.path().join("k.sec");
    let tar = |name: &str, files: &[(&str, Vec<u8>)]| -> PathBuf {
        let tree = lab.work.path().join(name);
        disk::tiny_root(&tree, name);
        for (path, data) in files {
            let p = tree.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        let image = lab.work.path().join(format!("{name}.tar.zst"));
        let out = std::process::Command::new("tar")
            .args(["--zstd", "--numeric-owner", "-cf"])
            .arg(&image)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        image
    };
    let publish = |image: &PathBuf, v: &str, extra: &[&str]| {
        let out = publish_image_with(image, v, "stable", &lab.www, &secret, extra);
        (out.status.success(), text(&out.stderr))
    };

    let bare = tar("bare", &[]);
    let (ok, said) = publish(&bare, "3.0", &[]);
    assert!(!ok && said.contains("carries no kernel") && said.contains("--no-kernel"), "{said}");
    assert!(!lab.www.join("gse1/channels/stable.json").exists(), "nothing was published");
    assert!(publish(&bare, "3.0", &["--no-kernel"]).0, "the administrator's word for a kernel from elsewhere");

    let other_modules = tar(
        "other-modules",
        &[
            ("boot/vmlinuz-9.9", bzimage("9.9")),
            ("boot/gse-initramfs-9.9.img", b"initramfs".to_vec()),
            ("lib/modules/9.8/modules.dep", Vec::new()),
        ],
    );
    for extra in [&[][..], &["--no-kernel"][..]] {
        let (ok, said) = publish(&other_modules, "3.1", extra);
        assert!(!ok && said.contains("lib/modules/9.9/") && said.contains("modules for 9.8"), "{extra:?}: {said}");
    }
    let no_initramfs =
        tar("no-initramfs", &[("boot/vmlinuz-9.9", bzimage("9.9")), ("lib/modules/9.9/modules.dep", Vec::new())]);
    let (ok, said) = publish(&no_initramfs, "3.1", &[]);
    assert!(!ok && said.contains("boot/gse-initramfs-9.9.img"), "{said}");
    // `gsectl image build` refuses the kernel without its modules too.
    let tree = lab.work.path().join("tree-build");
    disk::tiny_root(&tree, "3.1");
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::write(tree.join("boot/vmlinuz-9.9"), bzimage("9.9")).unwrap();
    let out = image_build(&tree, "3.1", &lab.work.path().join("built.tar.zst"), &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("lib/modules/9.9/"), "{}", text(&out.stderr));

    // Named 9.9, but the header says 9.8: published, then refused at install.
    let misnamed = tar(
        "misnamed",
        &[
            ("boot/vmlinuz-9.9", bzimage("9.8")),
            ("boot/gse-initramfs-9.9.img", b"initramfs".to_vec()),
            ("lib/modules/9.9/modules.dep", Vec::new()),
        ],
    );
    let (ok, said) = publish(&misnamed, "3.2", &[]);
    assert!(ok, "{said}");
    let a = lab.c.listing("a");
    let _gsed = lab.start_gsed("boot-1");
    let u = wait_for(Duration::from_secs(30), "the update to end", || {
        let u = lab.update();
        (s(&u["available_version"]) == "3.2" && matches!(s(&u["state"]), "error" | "installed" | "failed")).then_some(u)
    });
    assert_eq!(s(&u["state"]), "error", "{u:#}");
    assert!(s(&u["detail"]).contains("boot/vmlinuz-9.9 is kernel 9.8"), "{}", s(&u["detail"]));
    assert_eq!(lab.c.listing("a"), a, "the running slot is untouched");
    let b_flag = lab.c.on_slot("b", "test -e .gse/bootflag && echo flag || echo none");
    assert_eq!(b_flag.trim(), "none", "b holds nothing early boot would try");
    assert!(lab.boot_state()["trial"].is_null(), "no trial: {}", lab.boot_state());
}
