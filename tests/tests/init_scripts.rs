//! The shipped init integration passes the tools that judge it.

use std::{fs, process::Command};

use gse_tests::*;

#[test]
fn openrc_script_and_confd_pass_shellcheck() {
    let shellcheck = require_tool("shellcheck", "shellcheck");
    let dir = repo().join("init-scripts/openrc");
    let out = Command::new(shellcheck)
        .arg(dir.join("gsed"))
        .arg(dir.join("gsed.confd"))
        .arg(dir.join("gse-unmount"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    let script = fs::read_to_string(dir.join("gsed")).unwrap();
    assert!(script.starts_with("#!/sbin/openrc-run\n"));
    assert!(script.contains("need dbus"));
    assert!(script.contains("yesno \"${RC_GOINGDOWN}\""), "the shutdown is recorded only when going down");
}

/// The shell scripts (files with a `#!` line) of the project's directory `dir`.
fn scripts_in(dir: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && fs::read_to_string(p).is_ok_and(|t| t.starts_with("#!")))
        .collect();
    out.sort();
    out
}

#[test]
fn project_scripts_pass_shellcheck() {
    let shellcheck = require_tool("shellcheck", "shellcheck");
    let mut c = Command::new(shellcheck);
    for dir in ["scripts", "tests/data/vm", "init-scripts/initramfs", "init-scripts/initramfs/dracut/90gse"] {
        let found = scripts_in(dir);
        assert!(!found.is_empty(), "no scripts in {dir}");
        c.args(found);
    }
    let out = c.arg(repo().join(".ci/run")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let tmp = tempfile::tempdir().unwrap();
    // verify insists that ExecStart binaries exist: point them at the built ones.
    for entry in fs::read_dir(repo().join("init-scripts/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let unit = fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/sbin/gsed", &bin("gsed").display().to_string())
            .replace("/usr/bin/gsectl", &bin("gsectl").display().to_string());
        fs::write(tmp.path().join(path.file_name().unwrap()), unit).unwrap();
    }
    let units: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(units.len(), 3);
    let out = Command::new(analyze).args(["verify", "--man=no"]).args(&units).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn dbus_policy_and_activation_file_are_well_formed() {
    let policy = fs::read_to_string(repo().join("dbus/org.gentoo.Gse1.conf")).unwrap();
    assert!(policy.contains("<allow own=\"org.gentoo.Gse1\"/>"));
    let service = fs::read_to_string(repo().join("dbus/org.gentoo.Gse1.service")).unwrap();
    assert!(service.contains("Name=org.gentoo.Gse1") && service.contains("SystemdService=gsed.service"));
    // dbus-daemon itself must accept the policy: a private bus that includes it starts.
    let bus = TestBus::start();
    assert!(busctl(&bus.address, &["list"]).status.success());
}
