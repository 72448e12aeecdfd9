//! Figures that are measured, not asserted (run as root, release build):
//!
//!   cargo build --release --workspace --bins
//!   target/release/gse-bench config
//!
//! `boot`: wall time of `gsectl boot prepare` on the healthy path without
//! network (median of 10), and of a repair per GiB of root (file copy on ext4,
//! snapshot on btrfs).
//!
//! `sim`: the room-scale simulation of server selection, one line per round.
//!
//! `servers`: sync time of the shipped config.d over loopback, and failover time
//! (current server killed -> Switched signal), median of 10.
//!
//! `network`: time from gsed's start to a DHCP address on its interface
//! (dnsmasq on the other end of a veth in namespaces), next to busybox udhcpc.
//!
//! `vm`: whole boots of the VM suite's client under qemu (TCG): power on to
//! OpenRC with the GSE initramfs and with a plain one (same kernel, modules and
//! root), to the root's init alone (the part early boot adds), and to the
//! green verdict and power-off (median of 3).
//!
//! `logs`: a clean shutdown with the log archive on and off (same logs, same run:
//! SIGTERM to exit, median of 7), the CPU time and size of the archive; and the
//! time from a health change (MarkBad/MarkGood over D-Bus) to the metrics file
//! showing it (median of 20).
//!
//! `update`: an image (`GSE_BENCH_IMAGE_MIB`, default 1024 MiB of text-like
//! files) published as chunks: the bytes a client fetches when 1% of the files
//! change, the time gsed takes to download and install it in full from nginx
//! on loopback next to `curl | zstd -d | tar -x` and to `curl -o F && sha256sum
//! -c && zstd -d < F | tar -x` into the same slot (each timed from the slot
//! unmounted to the image on its disk and the slot unmounted again, as gsed
//! does it), and gsed's peak RSS
//! meanwhile. The target slot holds the backup, which gsed keeps until the
//! whole image is verified; with `GSE_BENCH_BLANK=1` it holds nothing trusted,
//! and gsed writes it as the chunks arrive. The chunk cache is on an ext4 of
//! its own, as on a client's user-data partition. `GSE_BENCH_PERF=FILE` records the
//! whole machine (gsed, tar, nginx, the kernel's writeback) with `perf record
//! -a -g` over the update (a release build with
//! `CARGO_PROFILE_RELEASE_STRIP=false` keeps the symbols).
//!
//! `sync`: a config.d sync that finds nothing new (2000 extra files, 54 MB)
//! next to `wget -N` of the same files, and the bytes gsed wrote meanwhile.
//!
//! `room`: 300 clients taking a 2 GB image with 2% of its chunks changed from 3
//! servers on 1 Gbit/s links (simulated, with the real selection and index code).
//!
//! `config`: time from a file write in the synced config.d to the `Changed`
//! signal at a client (median of 20), and the CPU time gsed uses over 10 s in
//! which nothing changes.

use std::{fs, time::Duration, time::Instant};

use futures_util::StreamExt;
use gse_dbus::config::ConfigProxy;
use gse_tests::{TestBus, TestRoot, client::Client, start_gsed};

fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

async fn config_bench() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let boot = root.write("user-data/persistent/config.d/system/boot.conf", "[health]\ninit = \"none\"\n");
    let gsed = start_gsed(&bus, &root, "bench");
    let conn = bus.connect().await;
    let proxy = ConfigProxy::new(&conn).await.expect("proxy");
    let mut changed = proxy.receive_changed().await.expect("signal stream");
    let mut samples = Vec::new();
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        fs::write(&boot, format!("[health]\ninit = \"none\"\nmax_attempts = {}\n", 1 + i % 9)).expect("write");
        tokio::time::timeout(Duration::from_secs(5), changed.next()).await.expect("Changed within 5 s");
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "config write -> Changed at the client: median {:.1} ms over {} writes (min {:.1}, max {:.1})",
        median(samples.clone()),
        samples.len(),
        samples.iter().cloned().fold(f64::MAX, f64::min),
        samples.iter().cloned().fold(0.0, f64::max)
    );
    let pid = gsed.pid();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ticks = cpu_ticks(pid) - before;
    println!("gsed CPU while nothing changes: {ticks} clock ticks in 10 s ({:.2} ms)", ticks as f64 * 10.0);
}

/// A root with about the logs of one lab boot: 150 KiB of system log, 50 KiB of
/// kernel messages, early boot's console.
fn logs_root(archive: bool) -> TestRoot {
    let root = TestRoot::new();
    root.health_conf("");
    root.write(
        "usr/share/gse/config.d/system/logs.conf",
        &format!("archive = {archive}\nspool_interval = \"100ms\"\n"),
    );
    let messages: String = (0..2800)
        .map(|i| {
            format!(
                "Nov 26 10:{:02}:{:02} lab-01 daemon[{i}]: event {i} handled in {} ms\n",
                i / 60 % 60,
                i % 60,
                i % 97
            )
        })
        .collect();
    root.write("var/log/messages", &messages);
    let kmsg: String = (0..800)
        .map(|i| format!("6,{i},{},-;virtio_blk virtio{}: [vda] message number {i}\n", i * 1500, i % 4))
        .collect();
    root.write("dev/kmsg", &kmsg);
    root.write("run/gse/early.log", &"gse: early boot line\n".repeat(60));
    root
}

async fn logs_bench() {
    use gse_dbus::health::HealthProxy;
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut cpu = Vec::new();
    let mut sizes = (0u64, 0u64);
    for i in 0..14 {
        let archive = i % 2 == 0;
        let (bus, root) = (TestBus::start(), logs_root(archive));
        let mut gsed = start_gsed(&bus, &root, "bench");
        let spooled = root.path().join("user-data/persistent/logs/spool/bench/var/log/messages");
        // Both kinds of run stop a daemon that has finished starting.
        let prom = root.path().join("var/lib/node_exporter/textfile_collector/gse.prom");
        gse_tests::wait_for(Duration::from_secs(10), "gsed up", || {
            fs::read_to_string(&prom).ok().filter(|t| t.contains("status=\"green\"} 1")).map(|_| ())
        });
        let source = fs::metadata(root.path().join("var/log/messages")).map(|m| m.len()).unwrap_or(0);
        gse_tests::wait_for(Duration::from_secs(10), "spooled", || {
            (!archive || fs::metadata(&spooled).map(|m| m.len() == source).unwrap_or(false)).then_some(())
        });
        let conn = bus.connect().await;
        HealthProxy::new(&conn).await.expect("proxy").record_shutdown().await.expect("record-shutdown");
        let t0 = Instant::now();
        let mut child = gsed.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        assert!(child.wait().expect("wait").success());
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if archive {
            on.push(ms);
            let log = fs::read_to_string(root.path().join("gsed-bench.log")).unwrap_or_default();
            let field = |k: &str| {
                log.lines().find(|l| l.contains("logs archived")).and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{k}=")).and_then(|v| v.parse::<f64>().ok()))
                })
            };
            cpu.push(field("cpu_ms").unwrap_or(f64::NAN));
            sizes = (field("spooled_bytes").unwrap_or(0.0) as u64, field("archive_bytes").unwrap_or(0.0) as u64);
        } else {
            off.push(ms);
        }
    }
    println!(
        "clean shutdown (record-shutdown, SIGTERM -> exit), median of 7: archive on {:.1} ms, off {:.1} ms (ratio {:.2})",
        median(on.clone()),
        median(off.clone()),
        median(on) / median(off)
    );
    println!(
        "archiving one boot: {} bytes spooled -> {} bytes archived ({:.1}x), CPU median {:.2} ms",
        sizes.0,
        sizes.1,
        sizes.0 as f64 / sizes.1.max(1) as f64,
        median(cpu)
    );

    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("");
    let _gsed = start_gsed(&bus, &root, "bench");
    let file = root.path().join("var/lib/node_exporter/textfile_collector/gse.prom");
    let conn = bus.connect().await;
    let health = HealthProxy::new(&conn).await.expect("proxy");
    gse_tests::wait_for(Duration::from_secs(10), "metrics", || {
        fs::read_to_string(&file).ok().filter(|t| t.contains("status=\"green\"} 1"))
    });
    let mut samples = Vec::new();
    for i in 0..20 {
        let (call, want) = if i % 2 == 0 { ("bad", "status=\"red\"} 1") } else { ("good", "status=\"green\"} 1") };
        let t0 = Instant::now();
        if call == "bad" {
            health.mark_bad("bench").await.expect("MarkBad");
        } else {
            health.mark_good().await.expect("MarkGood");
        }
        while !fs::read_to_string(&file).unwrap_or_default().contains(want) {
            assert!(t0.elapsed() < Duration::from_secs(5), "metrics did not follow");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "health change -> metrics file: median {:.2} ms over 20 (max {:.2} ms), from the D-Bus call",
        median(samples.clone()),
        samples.iter().cloned().fold(0.0, f64::max)
    );
}

/// Wall time of one `gsectl boot prepare` on `c` (gsed --early already listening).
fn timed_prepare(c: &Client) -> (f64, serde_json::Value) {
    let early = c.start_early();
    let t0 = Instant::now();
    let out = c.gsectl(&["boot", "prepare", "--sysroot", c.sysroot.to_str().expect("utf-8 path")]);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "boot prepare: {}", String::from_utf8_lossy(&out.stderr));
    drop(early);
    (ms, serde_json::from_slice(&out.stdout).expect("boot record"))
}

fn boot_bench() {
    let c = Client::new(false, "[health]\ninit = \"none\"\n");
    c.provision();
    let mut samples = Vec::new();
    for i in 0..10 {
        let (ms, record) = timed_prepare(&c);
        assert_eq!(record["action"], "normal");
        samples.push(ms);
        // A healthy cycle in between, so each boot also renews the flag.
        c.run_system(&format!("bench-{i}"), true);
        c.power_off();
    }
    println!(
        "gsectl boot prepare, healthy path with flag renewal, ext4 slots, no network: median {:.1} ms over 10 boots (min {:.1}, max {:.1})",
        median(samples.clone()),
        samples.iter().cloned().fold(f64::MAX, f64::min),
        samples.iter().cloned().fold(0.0, f64::max)
    );

    for btrfs in [false, true] {
        let mib = 256;
        let c = Client::new_sized(btrfs, "[health]\ninit = \"none\"\non_failure = \"repair\"\n", 3 * mib / 2);
        c.on_slot(
            "b",
            &format!(
                "mkdir -p data; i=0; while [ $i -lt {} ]; do head -c 1048576 /dev/urandom > data/f$i; i=$((i+1)); done",
                mib
            ),
        );
        c.provision();
        c.on_slot("a", "rm .gse/bootflag");
        let (ms, record) = timed_prepare(&c);
        assert_eq!(record["action"], "repair");
        let gib = f64::from(mib as u32) / 1024.0;
        println!(
            "repair of a {mib} MiB root ({}): {:.0} ms, {:.1} s per GiB",
            if btrfs { "btrfs snapshot" } else { "ext4 file copy" },
            ms,
            ms / 1000.0 / gib
        );
        c.power_off();
    }
}

fn sim_bench() {
    use gse_tests::sim::{Scenario, run, table};
    let sc = Scenario::default();
    println!(
        "{} clients, {} servers (capacity {} clients at load 1.0), probe every {} s, fail_after {}, margin {}, jitter {} s",
        sc.clients,
        sc.servers,
        sc.capacity,
        sc.probe_interval_ms / 1000,
        sc.policy.fail_after,
        sc.policy.margin,
        sc.policy.jitter_ms / 1000
    );
    print!("{}", table(&sc, &run(&sc)));
}

/// A key pair, config.d published to `n` nginx servers, and a client root listing them.
fn server_room(n: usize, dir: &std::path::Path) -> (Vec<gse_tests::http::Nginx>, TestRoot, String) {
    use gse_tests::{bin, repo};
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("gsectl")).args(args).output().expect("gsectl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (sec, publ) = (dir.join("k.sec"), dir.join("k.pub"));
    let line = run(&["keygen", "--secret", sec.to_str().expect("utf-8"), "--public", publ.to_str().expect("utf-8")]);
    let key = line.trim().trim_start_matches("public_key = \"").trim_end_matches('"').to_owned();
    let servers: Vec<_> = (0..n)
        .map(|i| {
            let root = dir.join(format!("s{i}"));
            fs::create_dir_all(&root).expect("mkdir");
            gse_tests::http::Nginx::start(&format!("127.0.0.{}", 21 + i), &root)
        })
        .collect();
    let src = dir.join("source");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(repo().join("config.d"))
            .arg(&src)
            .status()
            .expect("cp")
            .success()
    );
    let mut info = format!(
        "public_key = \"{key}\"\nprobe_interval = \"1s\"\nprobe_timeout = \"500ms\"\nfail_after = 2\njitter = \"10s\"\n"
    );
    for (i, s) in servers.iter().enumerate() {
        info.push_str(&format!("[[server]]\nname = \"s{i}\"\nurl = \"{}\"\n", s.url()));
    }
    fs::write(src.join("controller/server/server.info.conf"), info).expect("write");
    for s in &servers {
        run(&[
            "publish",
            "config",
            "--from",
            src.to_str().expect("utf-8"),
            "--to",
            s.docroot.to_str().expect("utf-8"),
            "--secret",
            sec.to_str().expect("utf-8"),
        ]);
    }
    let client = TestRoot::new();
    fs::create_dir_all(client.path().join("usr/share/gse")).expect("mkdir");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(client.path().join("usr/share/gse/config.d"))
            .status()
            .expect("cp")
            .success()
    );
    (servers, client, key)
}

async fn servers_bench() {
    use gse_dbus::servers::ServersProxy;
    use gsed::{
        paths::Paths,
        servers::{http::Http, sync::sync_config},
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut servers, client, key) = server_room(2, dir.path());

    // Sync of the shipped config.d into an empty persistent area, over loopback.
    let mut samples = Vec::new();
    for _ in 0..10 {
        let fresh = TestRoot::new();
        let t0 = Instant::now();
        let r = sync_config(&Http::new(Duration::from_secs(5)), &servers[0].url(), &key, &Paths::new(fresh.path()))
            .expect("sync");
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(r.downloaded > 20);
    }
    println!(
        "sync of the shipped config.d (30 files) over loopback from nginx: median {:.1} ms over 10",
        median(samples)
    );

    // Failover: the current server is killed; time until the Switched signal.
    let bus = TestBus::start();
    let _gsed = start_gsed(&bus, &client, "bench-failover");
    let conn = bus.connect().await;
    let proxy =
        ServersProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.expect("proxy");
    let mut switched = proxy.receive_switched().await.expect("stream");
    let mut samples = Vec::new();
    for _ in 0..10 {
        let current = loop {
            let c = proxy.current().await.expect("current");
            if !c.is_empty() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let i: usize = current.trim_start_matches('s').parse().expect("sN");
        let t0 = Instant::now();
        servers[i].stop();
        tokio::time::timeout(Duration::from_secs(10), switched.next()).await.expect("a switch within 10 s");
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        servers[i].restart();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    println!(
        "failover (server killed -> Switched at the client), probe_interval 1s, fail_after 2: median {:.0} ms over 10 (min {:.0}, max {:.0})",
        median(samples.clone()),
        samples.iter().cloned().fold(f64::MAX, f64::min),
        samples.iter().cloned().fold(0.0, f64::max)
    );
}

fn network_bench() {
    use gse_tests::{netns::NetLab, start_gsed_in};
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&[]);
    let root = TestRoot::new();
    root.health_conf("");
    root.write(
        "user-data/persistent/config.d/system/network.conf",
        &format!("[interface.{}]\nmethod = \"dhcp\"\n", lab.client_if),
    );
    let bus = TestBus::start();
    let reset = |lab: &NetLab| {
        let run = |args: &[&str]| {
            std::process::Command::new("ip").args(["-n", &lab.client_ns]).args(args).output().expect("ip");
        };
        run(&["addr", "flush", "dev", &lab.client_if]);
        run(&["link", "set", &lab.client_if, "down"]);
    };
    let until_address = |lab: &NetLab, t0: Instant| loop {
        if !lab.client_addresses().is_empty() {
            return t0.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no address within 20 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    // One lease first, so dnsmasq's ping check of a new address is out of the figures.
    let warm = start_gsed_in(&bus, &root, "bench-net-warm", Some(&lab.client_ns));
    until_address(&lab, Instant::now());
    drop(warm);
    let mut gsed_ms = Vec::new();
    for i in 0..10 {
        reset(&lab);
        let t0 = Instant::now();
        let g = start_gsed_in(&bus, &root, &format!("bench-net-{i}"), Some(&lab.client_ns));
        gsed_ms.push(until_address(&lab, t0));
        drop(g);
    }
    let script = root.path().join("udhcpc.script");
    fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n")
        .expect("script");
    std::process::Command::new("chmod").arg("755").arg(&script).status().expect("chmod");
    let mut udhcpc_ms = Vec::new();
    for _ in 0..10 {
        reset(&lab);
        std::process::Command::new("ip")
            .args(["-n", &lab.client_ns, "link", "set", &lab.client_if, "up"])
            .status()
            .expect("ip");
        let t0 = Instant::now();
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "busybox", "udhcpc", "-q", "-n", "-f", "-i", &lab.client_if, "-s"])
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("udhcpc");
        udhcpc_ms.push(until_address(&lab, t0));
        let _ = child.wait();
    }
    println!(
        "gsed start -> DHCP address (dnsmasq in a netns): median {:.0} ms over 10; busybox udhcpc -q -n (link already up): median {:.0} ms over 10",
        median(gsed_ms),
        median(udhcpc_ms)
    );
}

/// Whole boots under qemu (TCG), side by side in one run: the same kernel and
/// root with no initramfs at all (the kernel mounts slot a itself, from NVMe),
/// against GSE's early boot (DHCP, config.d sync, the slot decision, the
/// stateless layout), both timed to OpenRC's "Starting default runlevel"; and
/// GSE's boot to a green verdict. With `GSE_BENCH_OLD_GSECTL=FILE` (an older
/// release's gsectl, its gsed beside it), the same boots through the initramfs
/// that one builds too (before/after figures).
fn vm_bench() {
    use gse_tests::vm::{Disk, Lab, Vm, kit};
    let k = kit();
    let lab = Lab::new("bench");
    let gse_vm = Vm::new("bench-gse");
    let old_vm = Vm::new("bench-old");
    let conf = k.conf_copy(gse_vm.dir.path());
    lab.publish(&conf);
    let old = std::env::var_os("GSE_BENCH_OLD_GSECTL").map(|gsectl| {
        let out = old_vm.dir.path().join("old-initrd.img");
        k.initramfs_by(std::path::Path::new(&gsectl), &out);
        out
    });
    let ms = |d: Option<Duration>| d.expect("the marker was seen").as_secs_f64();
    let (mut plain, mut gse, mut green, mut old_rl, mut old_green) = (vec![], vec![], vec![], vec![], vec![]);
    // Power on to the root's init: the part early boot adds, without
    // OpenRC's run (which varies by more than a second between boots).
    let (mut plain_init, mut gse_init, mut old_init) = (vec![], vec![], vec![]);
    let rounds: usize = std::env::var("GSE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let log = std::env::var_os("GSE_BENCH_LOG").is_some();
    let green_boot = |vm: &Vm, initrd: &std::path::Path, what: &str, round: usize| {
        let b = vm.boot_on(&lab, Disk::Nvme, initrd);
        assert_eq!(b.status(), "green", "{}", b.log);
        if log {
            println!("--- {what} boot, round {round} ---\n{}", b.log);
        }
        b
    };
    for round in 1..=rounds {
        // The boots of a round run in turns, reversed every other round, so
        // that no build always boots right after another one (the host's
        // caches could favour it).
        let mut order = vec!["plain", "gse", "old"];
        if round % 2 == 0 {
            order.reverse();
        }
        for which in order {
            match (which, &old) {
                ("plain", _) => {
                    // A fresh disk each time: the plain boot writes to its root.
                    let plain_vm = Vm::new("bench-plain");
                    let mut r = plain_vm.start_plain(&lab);
                    r.wait_line("Starting default runlevel", gse_tests::vm::BOOT_TIMEOUT);
                    plain.push(ms(r.seen(1)));
                    plain_init.push(ms(r.seen(3)));
                    if log {
                        println!("--- plain boot, round {round} ---\n{}", r.log());
                    }
                    r.pull_power();
                }
                ("gse", _) => {
                    let b = green_boot(&gse_vm, &k.initrd, "GSE", round);
                    gse.push(ms(b.to_runlevel));
                    gse_init.push(ms(b.to_init));
                    green.push(b.to_report.as_secs_f64());
                }
                (_, Some(old)) => {
                    let b = green_boot(&old_vm, old, "older GSE", round);
                    old_rl.push(ms(b.to_runlevel));
                    old_init.push(ms(b.to_init));
                    old_green.push(b.to_report.as_secs_f64());
                }
                _ => {}
            }
        }
        println!(
            "  round {round}: -> init: no initramfs {:.2} s, GSE {:.2} s; -> default runlevel: no initramfs {:.1} s, GSE {:.1} s{}",
            plain_init[round - 1],
            gse_init[round - 1],
            plain[round - 1],
            gse[round - 1],
            old_rl
                .get(round - 1)
                .map(|o| format!(", older {o:.1} s (-> init {:.2} s)", old_init[round - 1]))
                .unwrap_or_default()
        );
    }
    let size = |p: &std::path::Path| fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let (p, g) = (median(plain.clone()), median(gse.clone()));
    println!(
        "qemu TCG, NVMe disk, median of {rounds}: power on -> default runlevel: no initramfs {p:.1} s, GSE {g:.1} s (ratio {:.2}); GSE -> green {:.1} s; GSE initramfs {:.1} MB",
        g / p,
        median(green),
        size(&k.initrd)
    );
    // The boots of a round run within a minute of each other, so pairing them
    // takes out most of the host's drift between rounds (a shared machine's
    // load moves every boot of a round alike).
    let paired = |a: &[f64], b: &[f64], f: fn(f64, f64) -> f64| {
        let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        (median(v), lo, hi)
    };
    let (r, lo, hi) = paired(&gse, &plain, |g, p| g / p);
    println!("  paired by round: ratio median {r:.2} (rounds {lo:.2} to {hi:.2})");
    let (a, lo, hi) = paired(&gse_init, &plain_init, |g, p| g - p);
    let (pi, gi) = (median(plain_init), median(gse_init));
    println!(
        "  power on -> init (OpenRC's first line): no initramfs {pi:.2} s, GSE {gi:.2} s: early boot adds {a:.2} s (paired; rounds {lo:.2} to {hi:.2})"
    );
    if let Some(old) = &old {
        let (paired_ratio, _, _) = paired(&old_rl, &plain, |g, p| g / p);
        println!(
            "  older initramfs {} ({:.1} MB): -> init {:.2} s, -> default runlevel {:.1} s (ratio {:.2}, paired {paired_ratio:.2}), -> green {:.1} s",
            old.display(),
            size(old),
            median(old_init),
            median(old_rl.clone()),
            median(old_rl) / p,
            median(old_green)
        );
    }
}

/// Pseudo-text that compresses about as well as a system's files do.
fn text_file(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "lab", "client", "static", "const", "return", "fn", "the", "config", "value", "error", "#include", "int",
        "struct", "0x7f", "while", "GSE",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.u8(..) < 20 { b'\n' } else { b' ' });
        if rng.u8(..) < 6 {
            out.extend_from_slice(&rng.u64(..).to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Runs a shell snippet, which must succeed; returns its wall time in seconds.
fn timed_sh(what: &str, script: &str) -> f64 {
    let t0 = Instant::now();
    let out = std::process::Command::new("sh").args(["-c", script]).output().expect("sh");
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    t0.elapsed().as_secs_f64()
}

/// The update bench's two images in `w`: v1, a tree of `size_mib` in 2000
/// files, and v2 with 1% of the files changed, both published under
/// `w/www` with a key made there; returns the public key.
fn publish_update_images(w: &std::path::Path, size_mib: usize) -> String {
    use gse_tests::{keygen, publish_image};
    let tree = w.join("tree");
    let mut rng = fastrand::Rng::with_seed(1);
    let files = 2000;
    for i in 0..files {
        let p = tree.join(format!("usr/lib/pkg{:03}/file{i:04}", i % 97));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, text_file(&mut rng, size_mib * (1 << 20) / files)).expect("write");
    }
    fs::create_dir_all(tree.join("etc")).expect("mkdir");
    fs::write(tree.join("etc/gse-release"), "VERSION=1\n").expect("write");
    let pack = |v: &str| {
        let out = w.join(format!("v{v}.tar.zst"));
        timed_sh(
            "packing",
            &format!(
                "tar --sort=name --numeric-owner --mtime=@0 -C {} -cf - . | zstd -q -f -3 -T0 -o {}",
                tree.display(),
                out.display()
            ),
        );
        out
    };
    let v1 = pack("1");
    for i in (0..files).step_by(100) {
        let p = tree.join(format!("usr/lib/pkg{:03}/file{i:04}", i % 97));
        let mut data = fs::read(&p).expect("read");
        data.extend_from_slice(b"\n# changed in v2\n");
        fs::write(&p, data).expect("write");
    }
    fs::write(tree.join("etc/gse-release"), "VERSION=2\n").expect("write");
    let v2 = pack("2");
    fs::remove_dir_all(&tree).expect("rm tree");

    let _ = fs::remove_dir_all(w.join("www"));
    let key = keygen(w, "k");
    let t_publish = Instant::now();
    for (img, v) in [(&v1, "1"), (&v2, "2")] {
        let out = publish_image(img, v, "stable", &w.join("www"), &w.join("k.sec"));
        assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("publish of two {size_mib} MiB versions (chunking, zstd -12): {:.1} s", t_publish.elapsed().as_secs_f64());
    key
}

fn update_bench() {
    use gse_tests::http::Nginx;
    use gsed::image::Index;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let size_mib: usize = std::env::var("GSE_BENCH_IMAGE_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    // GSE_BENCH_KEEP=DIR: the images and the server tree stay in DIR, and a
    // later run with the same DIR and image size skips making and publishing them.
    let keep = std::env::var_os("GSE_BENCH_KEEP").map(std::path::PathBuf::from);
    let work = tempfile::Builder::new().prefix("gse-bench-update-").tempdir().expect("tempdir");
    let w = keep.as_deref().unwrap_or(work.path());
    fs::create_dir_all(w).expect("work dir");
    let www = w.join("www");
    let v2 = w.join("v2.tar.zst");
    // Named by the size: images kept for another size are published again.
    let published = w.join(format!("published-{size_mib}MiB.key"));
    let key = match fs::read_to_string(&published) {
        Ok(key) if keep.is_some() => {
            println!("images as published in {} (GSE_BENCH_KEEP)", w.display());
            key
        }
        _ => {
            for old in fs::read_dir(w).expect("work dir").flatten() {
                if old.file_name().to_string_lossy().starts_with("published-") {
                    let _ = fs::remove_file(old.path());
                }
            }
            let key = publish_update_images(w, size_mib);
            fs::write(&published, &key).expect("write key");
            key
        }
    };
    let index = |v: &str| {
        Index::parse(&fs::read(www.join(format!("gse1/images/{v}/index.json"))).expect("index")).expect("parse")
    };
    let (i1, i2) = (index("1"), index("2"));
    let have: std::collections::HashSet<&str> = i1.chunks.iter().map(|c| c.id.as_str()).collect();
    let delta: u64 = i2.unique().iter().filter(|c| !have.contains(c.id.as_str())).map(|c| u64::from(c.packed)).sum();
    println!(
        "v1 -> v2 with 1% of the files changed: {:.2} MiB fetched of {:.1} MiB published in full = {:.2}% (tar.zst -3 of v2: {:.1} MiB)",
        mb(delta),
        mb(i2.packed_total()),
        100.0 * delta as f64 / i2.packed_total() as f64,
        mb(fs::metadata(&v2).expect("v2").len())
    );

    // A client takes v2 in full (empty cache) into slot b; then the anchor.
    // nginx's GSE block serves gse1/ only.
    fs::copy(&v2, www.join("gse1/v2.tar.zst")).expect("copy");
    let nginx = Nginx::start("127.0.0.61", &www);
    let slot_mib = (size_mib as u64 * 13 / 10).max(256);
    // The persistent area (and the chunk cache on it) on its own ext4, as on a
    // lab machine's user-data partition, not on the host's aged file system.
    // Declared before the client: detached after the client's mount namespace is gone.
    let data = gse_tests::disk::Loop::new(work.path(), "user-data", slot_mib);
    data.mkfs_ext4("gse-bench-data", None);
    let c = Client::new_sized(false, "[health]\ninit = \"none\"\n", slot_mib);
    c.ns.ok(&format!("mkdir -p {r}/user-data && mount {} {r}/user-data", data.dev, r = c.root.path().display()));
    c.root.write(
        "usr/share/gse/config.d/controller/server/server.info.conf",
        &format!("public_key = \"{key}\"\n[[server]]\nname = \"s\"\nurl = \"{}\"\n", nginx.url()),
    );
    c.root.write("usr/share/gse/config.d/controller/update.chk.conf", "policy = \"auto\"\n");
    c.provision();
    // GSE_BENCH_BLANK=1: slot b holds nothing trusted, so gsed writes it as the chunks arrive.
    let blank = std::env::var("GSE_BENCH_BLANK").is_ok_and(|v| v == "1");
    if blank {
        c.on_slot("b", "rm .gse/bootflag");
    }
    let bus = TestBus::start();
    let gsed = c.start_gsed(&bus, "bench");
    let pid = gsed.pid();
    let state = || {
        let out = gse_tests::gsectl(&bus.address, &["update", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let perf = std::env::var("GSE_BENCH_PERF")
        .ok()
        .map(|out| std::process::Command::new("perf").args(["record", "-a", "-g", "-o", &out]).spawn().expect("perf"));
    // In clock ticks, 100 a second.
    let cpu = || cpu_ticks(pid) as f64 / 100.0;
    let cpu0 = cpu();
    // `gsectl update wait` (one process, on PropertiesChanged) rather than
    // polling: on two cores a poll every 50 ms takes CPU from the update.
    let t0 = Instant::now();
    let _ = gse_tests::gsectl(&bus.address, &["update", "check"]);
    let waited = gse_tests::gsectl(&bus.address, &["update", "wait"]);
    let t_gse = t0.elapsed().as_secs_f64();
    let cpu_gse = cpu() - cpu0;
    if let Some(p) = perf {
        let _ = std::process::Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        let _ = p.wait_with_output();
    }
    assert!(waited.status.success(), "update wait: {}", String::from_utf8_lossy(&waited.stderr));
    assert_eq!(state(), "installed");
    // Where the time went, from gsed's own log.
    let log = fs::read_to_string(c.root.path().join("gsed-bench.log")).unwrap_or_default();
    let marks = ["image downloaded", "slot emptied", "image unpacked", "image flushed", "image installed"];
    for l in log.lines().filter(|l| marks.iter().any(|m| l.contains(m))) {
        println!("  gsed: {}", l.split_once(": ").map_or(l, |(_, m)| m).trim());
    }
    let hwm = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    drop(gsed);
    // Two anchors into the same slot: the stream, which writes while it
    // downloads, and by hand what gsed promises (nothing written before the
    // whole download is verified), the file kept next to gsed's chunk cache.
    // Each is timed as gsed is, from an unmounted slot to the image on the
    // disk and the slot unmounted again (the unmount drops the new files'
    // pages: a tenth to half a second for 2000 files).
    let dev = &c.slot_dev[1];
    let anchor = |timed: &str| {
        let script = format!(
            "set -e; M=$(mktemp -d); mount {dev} $M; find $M -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {{}} +; umount $M; sync; \
             t0=$(date +%s%N); mount {dev} $M; {timed}; sync; umount $M; t1=$(date +%s%N); rm -f {file}; echo $(( (t1 - t0) / 1000000 ))",
            file = c.root.path().join("user-data/v2.tar.zst").display()
        );
        c.ns.ok(&script).trim().parse::<f64>().expect("ms") / 1000.0
    };
    let url = format!("{}/gse1/v2.tar.zst", nginx.url());
    let streamed = anchor(&format!("curl -sf {url} | zstd -dq | tar -x --numeric-owner -C $M"));
    let sum = gsed::servers::manifest::sha256_hex(&fs::read(&v2).expect("v2"));
    let f = c.root.path().join("user-data/v2.tar.zst");
    let f = f.display();
    let staged = anchor(&format!(
        "curl -sf -o {f} {url}; echo '{sum}  {f}' | sha256sum -c --quiet; zstd -dq < {f} | tar -x --numeric-owner -C $M"
    ));
    println!(
        "full image ({:.0} MiB to fetch, {:.0} MiB unpacked) from nginx on loopback into an ext4 slot {}: gsed download + install {:.2} s; \
         `curl | zstd -d | tar -x` {:.2} s (ratio {:.2}); `curl -o F && sha256sum -c && zstd -d < F | tar -x` {:.2} s (ratio {:.2})",
        mb(i2.packed_total()),
        mb(i2.size),
        if blank {
            "holding nothing trusted (written as it arrives)"
        } else {
            "holding the backup (kept until all is verified)"
        },
        t_gse,
        streamed,
        t_gse / streamed,
        staged,
        t_gse / staged
    );
    println!("gsed peak RSS (VmHWM) over that update: {hwm}; gsed's CPU time: {cpu_gse:.2} s");
}

fn room_bench() {
    use gse_tests::update_sim::{Room, run};
    let gb = |b: f64| b / 1e9;
    for spread_s in [0.0, 60.0] {
        let room = Room { spread_s, ..Room::default() };
        let o = run(&room);
        println!(
            "room: {} clients, {} servers, {:.0} Gbit/s links, a {:.1} GB image with {:.0}% of its chunks changed, checks spread over {:.0} s:",
            room.clients,
            room.servers,
            room.server_bps * 8.0 / 1e9,
            gb(room.image_bytes as f64),
            room.changed * 100.0,
            room.spread_s
        );
        println!(
            "  each client fetches {:.1} MB; last client done after {:.1} s; ideal (total bytes / total server bandwidth) {:.1} s ({:.2}x); \
             everyone fetching the full image from one server {:.0} s",
            o.per_client as f64 / 1e6,
            o.last_done_s,
            o.ideal_s,
            o.last_done_s / o.ideal_s,
            o.one_server_full_s
        );
        let sent: Vec<String> =
            o.sent.iter().enumerate().map(|(i, s)| format!("s{i} {:.2} GB", gb(*s as f64))).collect();
        println!("  bytes sent: {}", sent.join(", "));
    }
}

/// Bytes this process has caused to be written to storage so far.
fn written_bytes() -> u64 {
    fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn sync_bench() {
    use gse_tests::{http::Nginx, keygen, publish_config};
    use gsed::{
        paths::Paths,
        servers::{http::Http, sync::sync_config},
    };
    let work = tempfile::Builder::new().prefix("gse-bench-sync-").tempdir().expect("tempdir");
    let w = work.path();
    // config.d with 2000 more files of 27 KB (valid examples), 54 MB in all.
    let tree = w.join("config.d");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(gse_tests::repo().join("config.d"))
            .arg(&tree)
            .status()
            .expect("cp")
            .success()
    );
    let example = fs::read_to_string(tree.join("system/examples/network.static.conf")).expect("example");
    let pad: String =
        (0..400).map(|i| format!("# padding line {i:04} of a large example file for the sync bench\n")).collect();
    for i in 0..2000 {
        fs::write(tree.join(format!("system/examples/network.b{i:04}.conf")), format!("{example}{pad}"))
            .expect("write");
    }
    let key = keygen(w, "k");
    let www = w.join("www");
    let out = publish_config(&tree, &www, &w.join("k.sec"));
    assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    let nginx = Nginx::start("127.0.0.62", &www);
    let client = TestRoot::new();
    let paths = Paths::new(client.path());
    let http = Http::new(Duration::from_secs(30));
    sync_config(&http, &nginx.url(), &key, &paths).expect("first sync");

    // wget -N of the same files (by the published MANIFEST: no directory listings).
    let manifest = fs::read_to_string(www.join("gse1/config.d/MANIFEST")).expect("MANIFEST");
    let urls: String = manifest
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| p.contains('/') || p.ends_with(".conf") || p.ends_with("README"))
        .map(|p| format!("{}/gse1/config.d/{p}\n", nginx.url()))
        .collect();
    fs::write(w.join("urls"), urls).expect("urls");
    let wget_dir = w.join("wget");
    let wget = || {
        timed_sh(
            "wget",
            &format!(
                "cd {} 2>/dev/null || mkdir -p {0} && cd {0}; wget -q -N -x -nH -i {}",
                wget_dir.display(),
                w.join("urls").display()
            ),
        )
    };
    wget();
    let files = walk_count(&wget_dir);
    let (mut gse, mut wg, mut wrote) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let (b0, t0) = (written_bytes(), Instant::now());
        let r = sync_config(&http, &nginx.url(), &key, &paths).expect("sync");
        gse.push(t0.elapsed().as_secs_f64() * 1000.0);
        wrote.push(written_bytes() - b0);
        assert!(r.changed.is_empty());
        wg.push(wget() * 1000.0);
    }
    println!(
        "no-change sync of a {} file config.d (54 MB) from nginx on loopback into ext4: gsed {:.1} ms, `wget -N -i` of the same {files} files {:.1} ms (median of 5): ratio {:.3}; bytes gsed wrote: {}",
        2000 + walk_count(&gse_tests::repo().join("config.d")),
        median(gse.clone()),
        median(wg.clone()),
        median(gse) / median(wg),
        wrote.iter().max().copied().unwrap_or(0)
    );
}

fn walk_count(dir: &std::path::Path) -> usize {
    gsed::config::walk(dir).len()
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match which.as_str() {
        "config" => rt.block_on(config_bench()),
        "logs" => rt.block_on(logs_bench()),
        "boot" => boot_bench(),
        "sim" => sim_bench(),
        "servers" => rt.block_on(servers_bench()),
        "network" => network_bench(),
        "vm" => vm_bench(),
        "update" => update_bench(),
        "room" => room_bench(),
        "sync" => sync_bench(),
        _ => {
            eprintln!("usage: gse-bench config|boot|sim|servers|network|vm|update|room|sync");
            std::process::exit(2);
        }
    }
}
