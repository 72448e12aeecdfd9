//! The D-Bus contract in `dbus/` against the live daemon: every method through the
//! shared proxies, and the shipped introspection XML equal to what gsed exports.
//! Run with `GSE_BLESS=1` to rewrite the XML after an intended interface change.

use std::{fs, time::Duration};

use futures_util::StreamExt;
use gse_dbus::{
    BUS_NAME, DBusError, INTERFACE_XML, OBJECT_PATH,
    health::{HealthProxy, HealthReport, Status},
};
use gse_tests::*;

#[tokio::test]
async fn every_health_method_through_the_proxy() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    root.health_conf("deadline = \"10s\"");
    let _gsed = start_gsed(&bus, &root, "boot-proxy");
    let conn = bus.connect().await;
    let health = HealthProxy::new(&conn).await.unwrap();

    let mut status_stream = health.receive_status_changed().await;
    let mut signals = health.receive_status_signal().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = health.status().await.unwrap();
            if s == "green" {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("green within 10 s");
    assert_eq!(status, "green");
    assert_eq!(health.booted_slot().await.unwrap(), "a");
    assert_eq!(health.healthy_cycles().await.unwrap(), 0);

    let report: HealthReport = serde_json::from_str(&health.get_report().await.unwrap()).unwrap();
    assert_eq!(report.status, Status::Green);
    assert_eq!(report.boot_id, "boot-proxy");

    health.mark_bad("projector test").await.unwrap();
    let sig = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = signals.next().await.unwrap();
            let status: String = s.args().unwrap().status().to_string();
            if status == "red" {
                return status;
            }
        }
    })
    .await
    .expect("StatusChanged(red)");
    assert_eq!(sig, "red");
    let changed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let c = status_stream.next().await.unwrap();
            if c.get().await.unwrap() == "red" {
                return;
            }
        }
    })
    .await;
    assert!(changed.is_ok(), "PropertiesChanged for Status");

    match health.mark_bad("").await {
        Err(DBusError::InvalidArgs(m)) => assert_eq!(m, "a reason is required"),
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    health.mark_good().await.unwrap();
    // Property reads come from the proxy's cache, which PropertiesChanged updates.
    tokio::time::timeout(Duration::from_secs(5), async {
        while health.status().await.unwrap() != "green" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("green again after MarkGood");
    health.boot_complete().await.unwrap();
    health.record_shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while health.healthy_cycles().await.unwrap() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a healthy, cleanly shut down boot counts as one cycle");
}

/// The `<interface name="...">…</interface>` element for `name` in an XML document.
fn interface_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    Some(&xml[start..end])
}

fn normalise(xml: &str) -> String {
    xml.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

fn check_xml(live: &str, shipped: &[(&str, &str)]) {
    let bless = std::env::var_os("GSE_BLESS").is_some();
    for (name, text) in shipped {
        let element = interface_element(live, name).unwrap_or_else(|| panic!("gsed does not export {name}:\n{live}"));
        let file = repo().join(format!("dbus/interfaces/{name}.xml"));
        let expected = format!(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n{element}\n</node>\n"
        );
        if normalise(text) == normalise(&expected) {
            continue;
        }
        // Blessing rewrites the file and still fails this run, so a run with
        // GSE_BLESS set can never pass over a difference.
        if bless {
            fs::write(&file, &expected).unwrap();
            panic!("{} rewritten from the live interface; review the diff, rebuild and rerun", file.display());
        }
        panic!(
            "{} differs from the live interface; rerun with GSE_BLESS=1 if the change is intended:\n--- shipped\n{}\n+++ live\n{}",
            file.display(),
            normalise(text),
            normalise(&expected)
        );
    }
}

#[tokio::test]
async fn early_boot_interface_matches_and_finish_ends_gsed() {
    let root = TestRoot::new();
    let child = std::process::Command::new(bin("gsed"))
        .arg("--early")
        .arg("--root")
        .arg(root.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut early = ProcessGuard { child: Some(child), name: "gsed --early".into() };
    let sock = root.path().join("run/gse/early.sock");
    wait_for(Duration::from_secs(10), "the early socket", || sock.exists().then_some(()));
    let addr: gse_dbus::BusAddress = format!("unix:path={}", sock.display()).parse().unwrap();
    let conn = addr.connect_peer().await.unwrap();
    let intro =
        zbus::fdo::IntrospectableProxy::builder(&conn).destination(BUS_NAME).path(OBJECT_PATH).build().await.unwrap();
    check_xml(&intro.introspect().await.unwrap(), gse_dbus::EARLY_INTERFACE_XML);

    let boot = gse_dbus::boot::BootProxy::new(&conn).await.unwrap();
    match boot.prepare("relative/path").await {
        Err(DBusError::InvalidArgs(m)) => assert!(m.contains("must be an absolute path"), "{m}"),
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    match boot.prepare(root.path().join("sysroot").to_str().unwrap()).await {
        Err(DBusError::NotPossible(m)) => assert!(m.contains("no machine key"), "{m}"),
        other => panic!("expected NotPossible, got {other:?}"),
    }
    // No server is configured: nothing to install from, nothing to run diskless.
    for r in [boot.install(false).await, boot.prepare_diskless(root.path().join("sysroot").to_str().unwrap()).await] {
        match r {
            Err(DBusError::Failed(m)) => assert!(m.contains("no server to install from"), "{m}"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }
    assert!(
        !root.path().join("sysroot").exists() || fs::read_dir(root.path().join("sysroot")).unwrap().next().is_none()
    );
    match boot.prepare_diskless("relative").await {
        Err(DBusError::InvalidArgs(m)) => assert!(m.contains("must be an absolute path"), "{m}"),
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    boot.finish().await.unwrap();
    let status = early.wait_exit(Duration::from_secs(5)).expect("gsed --early exits after Finish()");
    assert!(status.success());
    assert!(!sock.exists(), "the socket is removed");
}

#[tokio::test]
async fn shipped_xml_equals_live_introspection() {
    let (bus, root) = (TestBus::start(), TestRoot::new());
    let _gsed = start_gsed(&bus, &root, "boot-xml");
    let conn = bus.connect().await;
    let intro =
        zbus::fdo::IntrospectableProxy::builder(&conn).destination(BUS_NAME).path(OBJECT_PATH).build().await.unwrap();
    check_xml(&intro.introspect().await.unwrap(), INTERFACE_XML);
}
