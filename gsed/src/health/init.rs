//! The init system's own verdict on the boot, used as one more required check:
//! on OpenRC every service of the default runlevel has started; on systemd,
//! `boot-complete.target` was reached (a unit tells gsed through `BootComplete()`).

use std::path::PathBuf;

use gse_dbus::health::CheckState;

use crate::{config::InitSystem, paths::Paths};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitCheck {
    None,
    OpenRc { runlevel: PathBuf, started: PathBuf, failed: PathBuf },
    Systemd,
}

impl InitCheck {
    /// Chooses the check from config, detecting the init system under the root for `auto`.
    pub fn detect(init: InitSystem, paths: &Paths) -> InitCheck {
        let openrc = || InitCheck::OpenRc {
            runlevel: paths.openrc_default_runlevel(),
            started: paths.openrc_run().join("started"),
            failed: paths.openrc_run().join("failed"),
        };
        match init {
            InitSystem::None => InitCheck::None,
            InitSystem::Openrc => openrc(),
            InitSystem::Systemd => InitCheck::Systemd,
            InitSystem::Auto if paths.systemd_run().is_dir() => InitCheck::Systemd,
            InitSystem::Auto if paths.openrc_run().is_dir() => openrc(),
            InitSystem::Auto => InitCheck::None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            InitCheck::None => "init",
            InitCheck::OpenRc { .. } => "openrc-default-runlevel",
            InitCheck::Systemd => "systemd-boot-complete",
        }
    }

    /// The current verdict and, when not passed, why.
    pub fn check(&self, boot_complete: bool) -> (CheckState, String) {
        match self {
            InitCheck::None => (CheckState::Passed, String::new()),
            InitCheck::Systemd if boot_complete => (CheckState::Passed, String::new()),
            InitCheck::Systemd => (CheckState::Pending, "boot-complete.target not reached yet".into()),
            InitCheck::OpenRc { runlevel, started, failed } => {
                let services = list(runlevel);
                let failed: Vec<_> = services.iter().filter(|s| failed.join(s).exists()).cloned().collect();
                let missing: Vec<_> =
                    services.iter().filter(|s| !started.join(s).exists() && !failed.contains(s)).cloned().collect();
                match (failed.is_empty(), missing.is_empty()) {
                    (true, true) => (CheckState::Passed, String::new()),
                    (false, _) => (
                        CheckState::Failed,
                        format!("default-runlevel services failed: {}{}", failed.join(", "), not_started(&missing)),
                    ),
                    (true, false) => {
                        (CheckState::Pending, format!("default-runlevel services not started: {}", missing.join(", ")))
                    }
                }
            }
        }
    }
}

fn not_started(missing: &[String]) -> String {
    if missing.is_empty() { String::new() } else { format!("; not started: {}", missing.join(", ")) }
}

fn list(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn openrc_waits_for_every_default_service() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        for dir in ["etc/runlevels/default", "run/openrc/started", "run/openrc/failed"] {
            fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        for svc in ["dbus", "gsed", "sshd"] {
            fs::write(d.path().join("etc/runlevels/default").join(svc), "").unwrap();
        }
        let check = InitCheck::detect(InitSystem::Auto, &paths);
        assert!(matches!(check, InitCheck::OpenRc { .. }));
        fs::write(d.path().join("run/openrc/started/dbus"), "").unwrap();
        let (state, why) = check.check(false);
        assert_eq!(state, CheckState::Pending);
        assert_eq!(why, "default-runlevel services not started: gsed, sshd");
        fs::write(d.path().join("run/openrc/failed/sshd"), "").unwrap();
        assert_eq!(
            check.check(false),
            (CheckState::Failed, "default-runlevel services failed: sshd; not started: gsed".into())
        );
        fs::remove_file(d.path().join("run/openrc/failed/sshd")).unwrap();
        fs::write(d.path().join("run/openrc/started/sshd"), "").unwrap();
        fs::write(d.path().join("run/openrc/started/gsed"), "").unwrap();
        assert_eq!(check.check(false).0, CheckState::Passed);
    }

    #[test]
    fn auto_without_init_markers_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(InitCheck::detect(InitSystem::Auto, &Paths::new(d.path())), InitCheck::None);
        assert_eq!(InitCheck::Systemd.check(false).0, CheckState::Pending);
        assert_eq!(InitCheck::Systemd.check(true).0, CheckState::Passed);
    }
}
