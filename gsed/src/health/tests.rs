use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

use super::*;
use crate::config::{BootConf, Duration as Dur, InitSystem, Loaded, Settings};

fn config(health: HealthConf, primary: &str) -> watch::Receiver<Arc<ConfigState>> {
    let settings =
        Settings { boot: BootConf { primary: primary.into(), health, ..BootConf::default() }, ..Settings::default() };
    let state = ConfigState {
        generation: 1,
        loaded: Arc::new(Loaded { settings, ..Loaded::default() }),
        errors: Vec::new(),
        changed: Vec::new(),
    };
    watch::channel(Arc::new(state)).1
}

fn conf() -> HealthConf {
    HealthConf {
        deadline: Dur(Duration::from_millis(800)),
        check_timeout: Dur(Duration::from_millis(500)),
        retry_interval: Dur(Duration::from_millis(100)),
        init: InitSystem::None,
        ..HealthConf::default()
    }
}

fn check(root: &Path, kind: &str, name: &str, body: &str) {
    let dir = root.join("etc/gse/checks").join(kind);
    fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn passing_checks_give_green_and_wanted_failures_are_reported() {
    let d = tempfile::tempdir().unwrap();
    check(d.path(), "required", "ok", "exit 0");
    check(d.path(), "wanted", "printer", "echo no toner; exit 1");
    let svc = HealthService::new(&Paths::new(d.path()), "boot-1", config(conf(), "a")).unwrap();
    svc.clone().run().await.unwrap();
    let r = svc.report();
    assert_eq!(r.status, Status::Green);
    assert_eq!(r.failures, ["wanted check 'printer' exited with status 1: no toner"]);
    assert_eq!(r.events.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["boot-started", "healthy"]);
}

#[tokio::test]
async fn a_failing_required_check_is_retried_then_red() {
    let d = tempfile::tempdir().unwrap();
    check(d.path(), "required", "mounts", "echo /home missing; exit 2");
    let svc = HealthService::new(&Paths::new(d.path()), "boot-1", config(conf(), "a")).unwrap();
    svc.clone().run().await.unwrap();
    let r = svc.report();
    assert_eq!(r.status, Status::Red);
    assert!(r.checks[0].runs > 1, "retried: {:?}", r.checks[0]);
    assert_eq!(r.failures, ["required check 'mounts' exited with status 2: /home missing"]);
}

#[tokio::test]
async fn healthy_cycles_count_clean_healthy_boots_of_the_slot() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths::new(d.path());
    for (i, clean) in [(1, true), (2, false), (3, true)] {
        let svc = HealthService::new(&paths, &format!("boot-{i}"), config(conf(), "a")).unwrap();
        svc.clone().run().await.unwrap();
        if clean {
            svc.record_shutdown().unwrap();
            svc.record_shutdown().unwrap(); // idempotent
        }
    }
    let svc = HealthService::new(&paths, "boot-4", config(conf(), "a")).unwrap();
    assert_eq!(svc.snapshot().healthy_cycles, 2);
    let other = HealthService::new(&paths, "boot-4", config(conf(), "b")).unwrap();
    assert_eq!(other.snapshot().healthy_cycles, 0);
}

#[tokio::test]
async fn administrator_verdicts_win_and_need_a_reason() {
    let d = tempfile::tempdir().unwrap();
    let svc = HealthService::new(&Paths::new(d.path()), "boot-1", config(conf(), "a")).unwrap();
    svc.clone().run().await.unwrap();
    assert!(matches!(svc.mark_bad("  "), Err(HealthError::EmptyReason)));
    svc.mark_bad("screen flickers").unwrap();
    assert_eq!(svc.snapshot().status, Status::Red);
    assert!(svc.snapshot().reason.contains("screen flickers"));
    svc.mark_good().unwrap();
    assert_eq!(svc.snapshot().status, Status::Green);
}
