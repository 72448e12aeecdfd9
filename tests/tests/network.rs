//! The wired network with real parts: two network namespaces joined by a veth
//! pair, dnsmasq serving DHCP in one, gsed in the other. TEST-NET addresses only.

use std::{fs, time::Duration};

use futures_util::StreamExt;
use gse_dbus::network::NetworkProxy;
use gse_tests::{netns::NetLab, *};

/// A client root with the shipped config.d and only `network` as network.conf.
fn client(network: &str) -> TestRoot {
    let root = TestRoot::new();
    let image = root.path().join("usr/share/gse/config.d");
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    assert!(
        std::process::Command::new("cp").arg("-a").arg(repo().join("config.d")).arg(&image).status().unwrap().success()
    );
    root.write("usr/share/gse/config.d/controller/cboot.conf", "[health]\ninit = \"none\"\n");
    root.write("user-data/persistent/config.d/system/network.conf", network);
    root
}

fn dhcp_conf(lab: &NetLab) -> String {
    format!("[interface.{}]\nmethod = \"dhcp\"\n", lab.client_if)
}

fn row<'a>(rows: &'a [gse_dbus::network::InterfaceRow], name: &str) -> &'a gse_dbus::network::InterfaceRow {
    rows.iter().find(|r| r.0 == name).unwrap_or_else(|| panic!("{name} not in {rows:?}"))
}

async fn wait_state(net: &NetworkProxy<'_>, name: &str, state: &str, secs: u64) -> gse_dbus::network::InterfaceRow {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Ok(rows) = net.interfaces().await
                && let Some(r) = rows.iter().find(|r| r.0 == name && r.1 == state)
            {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not reach {state} within {secs} s"))
}

/// gsed with DHCP on the lab's client interface, on a bus of its own, once
/// the interface is bound.
struct Bound {
    net: NetworkProxy<'static>,
    root: TestRoot,
    bus: TestBus,
    _gsed: ProcessGuard,
}

async fn bound(lab: &NetLab, boot: &str) -> Bound {
    let root = client(&dhcp_conf(lab));
    let bus = TestBus::start();
    let gsed = start_gsed_in(&bus, &root, boot, Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    wait_state(&net, &lab.client_if, "bound", 15).await;
    Bound { net, root, bus, _gsed: gsed }
}

#[tokio::test]
async fn dhcp_lease_sets_address_route_and_dns() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&[]);
    let c = bound(&lab, "boot-net").await;
    let r = row(&c.net.interfaces().await.unwrap(), &lab.client_if).clone();

    let addrs = lab.client_addresses();
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(addrs[0].starts_with("192.0.2.") && addrs[0].ends_with("/24"), "{addrs:?}");
    let routes = lab.client_ip(&["-4", "route"]);
    assert!(routes.contains(&format!("default via 192.0.2.1 dev {}", lab.client_if)), "{routes}");
    let resolv = fs::read_to_string(c.root.path().join("etc/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
    assert_eq!(r.4, addrs);
    assert_eq!((r.3.as_str(), r.5.as_str()), ("dhcp", "192.0.2.1"));
    assert!(r.7 > 0, "lease expiry is reported");

    let out = gsectl(&c.bus.address, &["network"]);
    let table = text(&out.stdout);
    assert!(
        table.contains(&lab.client_if)
            && table.contains("bound")
            && table.contains(&addrs[0])
            && table.contains("192.0.2.53"),
        "{table}"
    );
}

#[tokio::test]
async fn leases_are_renewed_at_t1() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&["--dhcp-option=58,2", "--dhcp-option=59,4"]);
    let _client = bound(&lab, "boot-renew").await;
    let first = lab.client_addresses();
    let acks = lab.dhcp_log_count("DHCPACK");
    wait_for(Duration::from_secs(10), "two renewals in dnsmasq's log", || {
        (lab.dhcp_log_count("DHCPACK") >= acks + 2).then_some(())
    });
    assert_eq!(lab.client_addresses(), first, "the address stays across renewals");
    assert!(lab.dhcp_log_count("DHCPREQUEST") >= 3);
    let log = fs::read_to_string(lab.dnsmasq_log()).unwrap();
    let after_first_ack = &log[log.find("DHCPACK").unwrap()..];
    assert!(!after_first_ack.contains("DHCPDISCOVER"), "renewals do not start over:\n{log}");
}

#[tokio::test]
async fn carrier_loss_is_reported_and_the_lease_renewed_when_it_returns() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&[]);
    let c = bound(&lab, "boot-carrier").await;
    let mut changes = c.net.receive_interfaces_changed().await;
    let requests = lab.dhcp_log_count("DHCPREQUEST");

    lab.set_peer(false);
    let r = wait_state(&c.net, &lab.client_if, "no-carrier", 10).await;
    assert!(!r.2, "carrier is false");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), changes.next()).await.is_ok(),
        "PropertiesChanged for Interfaces"
    );

    lab.set_peer(true);
    wait_state(&c.net, &lab.client_if, "bound", 15).await;
    assert!(lab.dhcp_log_count("DHCPREQUEST") > requests, "the lease was renewed after the cable came back");
    assert_eq!(lab.client_addresses().len(), 1);
}

#[tokio::test]
async fn an_expired_lease_removes_the_address_and_a_new_server_gives_a_new_one() {
    let mut lab = NetLab::new();
    // dnsmasq's shortest lease is two minutes; T1 and T2 are made short so the
    // client spends them trying to renew and rebind.
    lab.start_dnsmasq(&["--dhcp-option=58,2", "--dhcp-option=59,4"]);
    let c = bound(&lab, "boot-expiry").await;
    lab.stop_dnsmasq();
    let _ = fs::remove_file(lab.dir.path().join("leases"));
    let r = wait_state(&c.net, &lab.client_if, "expired", 150).await;
    assert!(r.4.is_empty() && lab.client_addresses().is_empty(), "the address is removed");
    assert!(r.8.contains("lease ran out"), "{}", r.8);
    lab.start_dnsmasq(&[]);
    wait_state(&c.net, &lab.client_if, "bound", 30).await;
    assert_eq!(lab.client_addresses().len(), 1, "a new lease");
}

/// At T2 a client whose server went away rebinds by broadcast with whichever
/// server answers, and keeps its address (no DISCOVER, no gap).
#[tokio::test]
async fn a_lease_is_rebound_at_t2_through_another_server() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&["--dhcp-option=58,3", "--dhcp-option=59,5"]);
    let c = bound(&lab, "boot-rebind").await;
    let first = lab.client_addresses();
    // The first server is gone (unicast renewals to 192.0.2.1 go nowhere); a
    // second one, with the same lease database, answers broadcasts only.
    lab.stop_dnsmasq();
    fs::write(lab.dnsmasq_log(), "").unwrap();
    lab.move_server("192.0.2.2/24");
    lab.start_dnsmasq(&["--dhcp-option=58,3", "--dhcp-option=59,5"]);
    wait_for(Duration::from_secs(20), "a rebinding ACK from the second server", || {
        (lab.dhcp_log_count("DHCPACK") >= 1).then_some(())
    });
    let log = fs::read_to_string(lab.dnsmasq_log()).unwrap();
    assert!(!log.contains("DHCPDISCOVER"), "rebinding does not start over:\n{log}");
    assert_eq!(lab.client_addresses(), first, "the address stays");
    let r = row(&c.net.interfaces().await.unwrap(), &lab.client_if).clone();
    assert_eq!(r.1, "bound");
    assert!(r.8.contains("lease from 192.0.2.2"), "the lease is now the second server's: {}", r.8);
}

/// A NAK (the network was renumbered: the new server knows none of the old
/// leases) takes the address away at once and a new lease is asked for; the
/// client does not sit on a refused address until the lease expires.
#[tokio::test]
async fn a_nak_drops_the_address_and_a_new_lease_is_taken() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&["--dhcp-option=58,2", "--dhcp-option=59,4"]);
    let c = bound(&lab, "boot-nak").await;
    let first = lab.client_addresses();
    lab.stop_dnsmasq();
    let _ = fs::remove_file(lab.dir.path().join("leases"));
    lab.start_dnsmasq(&[
        "--dhcp-authoritative",
        "--dhcp-range=192.0.2.100,192.0.2.149,255.255.255.0,2m",
        "--dhcp-option=58,2",
        "--dhcp-option=59,4",
    ]);
    c.net.renew().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let a = lab.client_addresses();
        if a.len() == 1 && a[0].starts_with("192.0.2.1") && a[0].len() == "192.0.2.100/24".len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no address from the new range: {a:?}, {:?}\n{}\n{}",
            row(&c.net.interfaces().await.unwrap(), &lab.client_if),
            fs::read_to_string(c.root.path().join("gsed-boot-nak.log")).unwrap_or_default(),
            fs::read_to_string(lab.dnsmasq_log()).unwrap().lines().rev().take(25).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lab.dhcp_log_count("DHCPNAK") >= 1, "{}", fs::read_to_string(lab.dnsmasq_log()).unwrap());
    assert!(!lab.client_addresses().contains(&first[0]), "the refused address is gone");
    wait_state(&c.net, &lab.client_if, "bound", 10).await;
}

/// A system going down (RecordShutdown, then SIGTERM) gives its lease back; a
/// plain restart of the service keeps it and records no clean shutdown.
#[tokio::test]
async fn the_lease_is_released_on_shutdown_but_not_on_a_restart() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&[]);
    let root = client(&dhcp_conf(&lab));
    let bus = TestBus::start();
    let journal = root.journal();
    let clean = |boot: &str| {
        let (j, _) = gsed::journal::Journal::open(&journal).unwrap();
        j.records().iter().any(|r| r.boot_id == boot && r.event == gsed::journal::Event::CleanShutdown)
    };

    let mut gsed = start_gsed_in(&bus, &root, "boot-rel", Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    wait_state(&net, &lab.client_if, "bound", 15).await;
    // A restart: SIGTERM alone.
    let status = gsed.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(lab.dhcp_log_count("DHCPRELEASE"), 0, "a restart keeps the lease");
    assert!(!clean("boot-rel"), "a restart is not a clean shutdown");

    let mut gsed = start_gsed_in(&bus, &root, "boot-rel", Some(&lab.client_ns));
    wait_state(&net, &lab.client_if, "bound", 15).await;
    let out = gsectl(&bus.address, &["health", "record-shutdown"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = gsed.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(clean("boot-rel"));
    wait_for(Duration::from_secs(5), "DHCPRELEASE in dnsmasq's log", || {
        (lab.dhcp_log_count("DHCPRELEASE") == 1).then_some(())
    });
    let leases = fs::read_to_string(lab.dir.path().join("leases")).unwrap_or_default();
    assert!(leases.trim().is_empty(), "the server forgot the lease: {leases}");
}

/// Under --root, interfaces network.conf does not name are never touched: not
/// brought up, given no address, and no DHCP traffic leaves them.
#[tokio::test]
async fn with_root_unnamed_interfaces_are_left_alone() {
    let mut lab = NetLab::new();
    lab.start_dnsmasq(&[]);
    lab.client_ip(&["link", "add", "gse-x0", "type", "veth", "peer", "name", "gse-x1"]);
    let root = client("");
    let bus = TestBus::start();
    let _gsed = start_gsed_in(&bus, &root, "boot-alone", Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let health = gse_dbus::health::HealthProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    // gsed is up and has done its first network pass (its checks ran too).
    tokio::time::timeout(Duration::from_secs(10), async {
        while health.status().await.ok().as_deref() != Some("green") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("gsed's first verdict");
    assert!(net.interfaces().await.unwrap().is_empty(), "nothing is managed or reported");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for link in [lab.client_if.as_str(), "gse-x0", "gse-x1"] {
        assert!(lab.client_ip(&["link", "show", link]).contains("state DOWN"), "{link} was brought up");
    }
    assert!(lab.client_addresses().is_empty());
    assert_eq!(lab.dhcp_log_count("DHCPDISCOVER"), 0, "no DHCP from the client namespace");
}

#[tokio::test]
async fn static_configuration_is_exact_and_idempotent() {
    let lab = NetLab::new();
    let conf = format!(
        "[interface.{}]\nmethod = \"static\"\naddress = \"198.51.100.10/24\"\ngateway = \"198.51.100.1\"\ndns = [\"198.51.100.53\"]\nmtu = 1400\n",
        lab.client_if
    );
    let root = client(&conf);
    let bus = TestBus::start();
    for boot in ["boot-static-1", "boot-static-2"] {
        let gsed = start_gsed_in(&bus, &root, boot, Some(&lab.client_ns));
        let conn = bus.connect().await;
        let net =
            NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
        // The peer is down in the server namespace: static addressing needs no carrier partner,
        // but carrier is needed; bring the peer up once.
        lab.set_peer(true);
        wait_state(&net, &lab.client_if, "static", 10).await;
        assert_eq!(lab.client_addresses(), ["198.51.100.10/24"], "{boot}");
        let routes = lab.client_ip(&["-4", "route", "show", "default"]);
        assert_eq!(routes.lines().count(), 1, "{boot}: {routes}");
        assert!(routes.contains("default via 198.51.100.1"), "{routes}");
        assert!(lab.client_ip(&["link", "show", &lab.client_if]).contains("mtu 1400"));
        assert!(fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap().contains("nameserver 198.51.100.53"));
        drop(gsed);
    }
}

#[tokio::test]
async fn bad_network_conf_is_reported_and_the_last_good_stays() {
    let lab = NetLab::new();
    lab.set_peer(true);
    let good = format!("[interface.{}]\nmethod = \"static\"\naddress = \"198.51.100.20/24\"\n", lab.client_if);
    let root = client(&good);
    let bus = TestBus::start();
    let _gsed = start_gsed_in(&bus, &root, "boot-bad", Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    wait_state(&net, &lab.client_if, "static", 10).await;

    let file = root.path().join("user-data/persistent/config.d/system/network.conf");
    for (bad, expected) in [
        (
            format!("[interface.{}]\nmethod = \"static\"\naddress = \"198.51.100.300/24\"\n", lab.client_if),
            "198.51.100.300\\' is not an IPv4 address",
        ),
        (
            format!("[interface.{}]\nmethod = \"static\"\naddress = \"198.51.100.20/40\"\n", lab.client_if),
            "prefix length 40 is out of range: expected 1 to 32",
        ),
    ] {
        fs::write(&file, &bad).unwrap();
        let errors = wait_for(Duration::from_secs(5), "the error", || {
            let out = busctl(
                &bus.address,
                &["get-property", "org.gentoo.Gse1", "/org/gentoo/Gse1", "org.gentoo.Gse1.Config", "Errors"],
            );
            let t = text(&out.stdout);
            t.contains(expected).then_some(t)
        });
        assert!(errors.contains("network.conf:3"), "{errors}");
        assert_eq!(lab.client_addresses(), ["198.51.100.20/24"], "the last good configuration stays");
    }
    // A name that is not an interface of this machine is reported on the bus.
    fs::write(&file, format!("{good}[interface.gse-none0]\nmethod = \"dhcp\"\n")).unwrap();
    let r = wait_state(&net, "gse-none0", "absent", 10).await;
    assert_eq!(r.8, "network.conf names gse-none0, but there is no such interface");
    assert_eq!(row(&net.interfaces().await.unwrap(), &lab.client_if).1, "static");
}

#[tokio::test]
async fn manage_false_only_reports() {
    let lab = NetLab::new();
    lab.set_peer(true);
    let conf =
        format!("manage = false\n[interface.{}]\nmethod = \"static\"\naddress = \"198.51.100.30/24\"\n", lab.client_if);
    let root = client(&conf);
    let bus = TestBus::start();
    let _gsed = start_gsed_in(&bus, &root, "boot-unmanaged", Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    let r = wait_state(&net, &lab.client_if, "unmanaged", 10).await;
    assert_eq!(r.3, "none");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lab.client_addresses().is_empty(), "another network manager owns the interface: gsed sets nothing");
    assert!(lab.client_ip(&["link", "show", &lab.client_if]).contains("state DOWN"), "not even brought up");
}

/// Under --root gsed manages only the interfaces network.conf names: links that
/// come and go elsewhere cost it no work, and none of their events is an error.
#[tokio::test]
async fn links_gsed_does_not_manage_wake_no_work_and_log_no_errors() {
    let lab = NetLab::new();
    let root = client(&dhcp_conf(&lab));
    let bus = TestBus::start();
    let mut gsed = start_gsed_in(&bus, &root, "boot-quiet", Some(&lab.client_ns));
    let conn = bus.connect().await;
    let net = NetworkProxy::builder(&conn).cache_properties(zbus::proxy::CacheProperties::No).build().await.unwrap();
    net.interfaces().await.unwrap();
    let log = root.path().join("gsed-boot-quiet.log");
    let passes = || fs::read_to_string(&log).unwrap_or_default().matches("network pass").count();
    // An event of the interface it manages does wake it…
    let before = passes();
    lab.client_ip(&["link", "set", &lab.client_if, "mtu", "1400"]);
    wait_for(Duration::from_secs(5), "a pass for the managed interface", || (passes() > before).then_some(()));
    // (one change can come as several events: let them settle)
    let mut settled = (passes(), std::time::Instant::now());
    wait_for(Duration::from_secs(10), "the passes to settle", || {
        let n = passes();
        if n != settled.0 {
            settled = (n, std::time::Instant::now());
        }
        (settled.1.elapsed() > Duration::from_millis(500)).then_some(())
    });
    // …those of the others do not.
    let before = passes();
    for i in 0..20 {
        let (a, b) = (format!("gseq{i}a"), format!("gseq{i}b"));
        lab.client_ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        lab.client_ip(&["link", "set", &a, "up"]);
        lab.client_ip(&["link", "del", &a]);
    }
    // gsed has seen them once it answers after them (events come in order).
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.interfaces().await.unwrap();
    gsed.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(5));
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(passes(), before, "the events of 40 unmanaged links caused no pass:\n{text}");
    assert!(!text.contains("ERROR"), "no link event is an error (RTM_DELLINK parses):\n{text}");
}
